//! [`BlobBackend`]: where the vault keeps sealed secrets, and the records that cross it.
//! Implemented over SQLite by `crate::storage`; it stores and returns envelopes and never
//! sees a plaintext or a key (sealing and rewrapping are closures the vault hands in).

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use super::{Binding, EnvelopeError, ObjectId, Scope, SecretKey, SecretMetadata, SecretVersion, VaultError};
pub use crate::store_error::BoxFuture;

/// Seals the value once the backend knows the version number and the current KEK generation
/// (it runs inside the write transaction, so rotation and concurrent puts cannot race it).
pub type SealFn = Box<dyn FnOnce(u64, u32) -> Result<Vec<u8>, VaultError> + Send>;

/// Rewraps one stored envelope to the target KEK generation: (binding, envelope, target) →
/// new envelope.
pub type RewrapFn = Arc<dyn Fn(Binding<'_>, &[u8], u32) -> Result<Vec<u8>, EnvelopeError> + Send + Sync>;

/// A new version to store.
#[derive(Debug, Clone)]
pub struct PutRecord {
    /// Where the secret lives.
    pub scope: Scope,
    /// Its key.
    pub key: SecretKey,
    /// Its object id.
    pub object_id: ObjectId,
    /// Check-and-set: `Some(0)` = no live secret may exist; `Some(n)` = the latest live version
    /// must be `n`; `None` = unconditional.
    pub expected_version: Option<u64>,
    /// Plaintext size in bytes.
    pub size: u32,
    /// Time of the write.
    pub now: SystemTime,
}

/// A stored version read back.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    /// The secret's metadata.
    pub metadata: SecretMetadata,
    /// The version read.
    pub version: u64,
    /// Its envelope.
    pub envelope: Vec<u8>,
}

/// A page of metadata to list.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// The scope listed; `None`: every scope (recursive implied).
    pub scope: Option<Scope>,
    /// Include sub-scopes.
    pub recursive: bool,
    /// Include deleted secrets.
    pub include_deleted: bool,
    /// Start after this (scope, key), exclusive.
    pub after: Option<(Scope, SecretKey)>,
    /// Most rows to return.
    pub limit: usize,
}

/// Progress of one rewrap batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewrapProgress {
    /// Where the last version examined is in the backend's order (its secret's row id and its
    /// version), to go on after; `None` when nothing was left to examine.
    pub last: Option<(i64, u64)>,
    /// The generation envelopes are rewrapped to (the current one).
    pub generation: u32,
    /// Versions moved to the target generation.
    pub rewrapped: u64,
    /// Versions whose envelope failed to open (corrupt); left at their old generation, where
    /// they stay exactly as readable (or not) as before.
    pub failed: u64,
}

/// Where sealed secrets are kept. Implemented over SQLite in `crate::storage`.
///
/// Every method is one transaction; `put` assigns the version inside it.
pub trait BlobBackend: Send + Sync + fmt::Debug {
    /// Stores a new version sealed by `seal(version, generation)`.
    fn put(&self, record: PutRecord, seal: SealFn) -> BoxFuture<'_, Result<SecretMetadata, VaultError>>;
    /// Reads the latest live version (`None`) or the given one (shared: a backend may keep
    /// what it read, as `SqliteBlobBackend`'s read cache does).
    fn get(
        &self,
        scope: Scope,
        key: SecretKey,
        version: Option<u64>,
    ) -> BoxFuture<'_, Result<Arc<StoredVersion>, VaultError>>;
    /// Lists metadata in (scope, key) order.
    fn list(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<SecretMetadata>, VaultError>>;
    /// Soft-deletes (or with `destroy`, erases every version's envelope).
    fn delete(
        &self,
        scope: Scope,
        key: SecretKey,
        destroy: bool,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<SecretMetadata, VaultError>>;
    /// Metadata and the version history.
    fn history(
        &self,
        scope: Scope,
        key: SecretKey,
    ) -> BoxFuture<'_, Result<(SecretMetadata, Vec<SecretVersion>), VaultError>>;
    /// Makes a new KEK generation current and returns it.
    fn begin_rotation(&self) -> BoxFuture<'_, Result<u32, VaultError>>;
    /// Rewraps up to `limit` envelopes whose generation is below the current one, in
    /// the backend's order after `after` (a [`RewrapProgress::last`]).
    fn rewrap_batch(
        &self,
        after: Option<(i64, u64)>,
        limit: usize,
        rewrap: RewrapFn,
    ) -> BoxFuture<'_, Result<RewrapProgress, VaultError>>;
    /// Whether a rotation may have left envelopes below the current generation (it began and
    /// did not record its end with [`BlobBackend::rewrap_finished`]).
    fn rewrap_pending(&self) -> BoxFuture<'_, Result<bool, VaultError>>;
    /// Records that every envelope is at generation `generation` (a rewrap found none below).
    fn rewrap_finished(&self, generation: u32) -> BoxFuture<'_, Result<(), VaultError>>;
    /// The scopes holding a live secret, in order, at most `limit`.
    fn scopes(&self, limit: usize) -> BoxFuture<'_, Result<Vec<Scope>, VaultError>>;
    /// Live (not deleted) secrets.
    fn count_live(&self) -> BoxFuture<'_, Result<u64, VaultError>>;
}
