//! The vault: scoped, versioned secrets, envelope-encrypted at rest.
//!
//! [`Vault`] is the domain API (put, get, list, delete, destroy, metadata, key rotation). It
//! seals and opens values ([`envelope`]) with KEKs derived from the root key ([`keys`]) and keeps
//! the sealed bytes in a [`BlobBackend`] (SQLite, implemented in `crate::storage`). It knows
//! nothing of gRPC, QUIC or SQL, and does not authorize: callers ask the policy engine first.

pub mod envelope;
pub mod keychain;
pub mod keys;
pub mod scope;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use ring::aead::LessSafeKey;
use zeroize::Zeroizing;

pub use envelope::{Binding, EnvelopeError};
pub use keys::{KeyBackend, KeyError, KeyHierarchy, KeyProvider, Locked, RootKey, locked_pages};
pub use scope::{NameError, ObjectId, Scope, SecretKey};

use crate::storage::StorageError;

/// Default largest value, in bytes (64 KiB).
pub const DEFAULT_MAX_VALUE_LEN: usize = 64 * 1024;
/// Largest page a list call returns.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Page size when the caller asks for none.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// A secret value. Zeroized on drop; `Debug` prints `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    /// Takes ownership of `bytes` (no copy is left behind).
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretValue(Zeroizing::new(bytes))
    }

    pub(crate) fn from_zeroizing(bytes: Zeroizing<Vec<u8>>) -> Self {
        SecretValue(bytes)
    }

    /// The plaintext. Callers must not log it or copy it into anything that is not zeroized.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Moves the plaintext out, for handing to a transport that will send it.
    pub fn into_inner(self) -> Zeroizing<Vec<u8>> {
        self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// What the vault tells about a secret (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMetadata {
    /// The secret's scope.
    pub scope: Scope,
    /// The secret's key.
    pub key: SecretKey,
    /// Its storage locator.
    pub object_id: ObjectId,
    /// The latest version (versions count from 1).
    pub version: u64,
    /// When version 1 was written.
    pub created_at: SystemTime,
    /// When the latest change (write, delete, destroy) happened.
    pub updated_at: SystemTime,
    /// Whether the secret is deleted (soft or destroyed).
    pub deleted: bool,
    /// Size in bytes of the latest value.
    pub size: u32,
}

/// One version in a secret's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretVersion {
    /// The version number.
    pub version: u64,
    /// When it was written.
    pub created_at: SystemTime,
    /// Its size in bytes.
    pub size: u32,
    /// Whether its ciphertext and DEK were erased.
    pub destroyed: bool,
}

/// Result of a key rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// The new KEK generation.
    pub generation: u32,
    /// How many secret versions had their DEK rewrapped.
    pub rewrapped: u64,
}

/// Why a vault operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// A scope or key broke the grammar.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// Another argument was invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// The value exceeds the configured limit.
    #[error("value is {size} bytes; the limit is {max} bytes")]
    ValueTooLarge {
        /// Size of the refused value.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// No such secret, or it is deleted, or that version is destroyed or does not exist.
    #[error("secret {scope}/{key}{} not found", version.map(|v| format!(" version {v}")).unwrap_or_default())]
    NotFound {
        /// Scope asked for.
        scope: Scope,
        /// Key asked for.
        key: SecretKey,
        /// Version asked for, when one was.
        version: Option<u64>,
    },
    /// A check-and-set put found another version than expected.
    #[error("expected version {expected} of {scope}/{key}, but the latest is {actual}")]
    VersionConflict {
        /// Scope written.
        scope: Scope,
        /// Key written.
        key: SecretKey,
        /// Version the caller expected (0: none).
        expected: u64,
        /// The latest live version (0: none).
        actual: u64,
    },
    /// Stored ciphertext failed authentication: tampering or corruption. Never wrong plaintext.
    #[error("secret {object_id} version {version} failed its integrity check")]
    Integrity {
        /// The secret concerned.
        object_id: ObjectId,
        /// The version concerned.
        version: u64,
    },
    /// The root key could not be had.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
}

/// A boxed future, so [`BlobBackend`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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
    /// The scope listed.
    pub scope: Scope,
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
    /// The last (object id, version) examined; `None` when nothing was left to examine.
    pub last: Option<(ObjectId, u64)>,
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
    /// Reads the latest live version (`None`) or the given one.
    fn get(
        &self,
        scope: Scope,
        key: SecretKey,
        version: Option<u64>,
    ) -> BoxFuture<'_, Result<StoredVersion, VaultError>>;
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
    /// (object id, version) order after `after`.
    fn rewrap_batch(
        &self,
        after: Option<(ObjectId, u64)>,
        limit: usize,
        rewrap: RewrapFn,
    ) -> BoxFuture<'_, Result<RewrapProgress, VaultError>>;
    /// Envelopes not yet at the current generation (an interrupted rotation).
    fn pending_rewrap(&self) -> BoxFuture<'_, Result<u64, VaultError>>;
    /// The scopes holding a live secret, in order, at most `limit`.
    fn scopes(&self, limit: usize) -> BoxFuture<'_, Result<Vec<Scope>, VaultError>>;
}

/// Vault settings.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// Largest value accepted, in bytes.
    pub max_value_len: usize,
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig { max_value_len: DEFAULT_MAX_VALUE_LEN }
    }
}

/// Most KEK generations kept derived in memory.
const MAX_CACHED_KEKS: usize = 64;

/// KEKs by generation, derived once each.
struct Keks {
    hierarchy: Arc<KeyHierarchy>,
    cache: RwLock<HashMap<u32, Arc<LessSafeKey>>>,
}

impl Keks {
    fn get(&self, generation: u32) -> Arc<LessSafeKey> {
        if let Ok(cache) = self.cache.read()
            && let Some(kek) = cache.get(&generation)
        {
            return Arc::clone(kek);
        }
        let kek = Arc::new(self.hierarchy.vault_kek(generation));
        // The generation comes from stored bytes: never let tampered rows grow the cache.
        if let Ok(mut cache) = self.cache.write()
            && cache.len() < MAX_CACHED_KEKS
        {
            cache.insert(generation, Arc::clone(&kek));
        }
        kek
    }
}

/// The vault.
#[derive(Clone)]
pub struct Vault {
    backend: Arc<dyn BlobBackend>,
    keks: Arc<Keks>,
    config: VaultConfig,
    /// One rotation at a time.
    rotation: Arc<tokio::sync::Mutex<()>>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault").field("backend", &self.backend).field("config", &self.config).finish()
    }
}

/// How many envelopes one rotation transaction rewraps.
const REWRAP_BATCH: usize = 256;

impl Vault {
    /// A vault over `backend`, with KEKs from `keys`.
    pub fn new(backend: Arc<dyn BlobBackend>, keys: Arc<KeyHierarchy>, config: VaultConfig) -> Self {
        Vault {
            backend,
            keks: Arc::new(Keks { hierarchy: keys, cache: RwLock::new(HashMap::new()) }),
            config,
            rotation: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &VaultConfig {
        &self.config
    }

    /// Writes a new version of `scope`/`key`. `expected_version`: see [`PutRecord`].
    pub async fn put(
        &self,
        scope: &Scope,
        key: &SecretKey,
        value: SecretValue,
        expected_version: Option<u64>,
    ) -> Result<SecretMetadata, VaultError> {
        if value.len() > self.config.max_value_len {
            return Err(VaultError::ValueTooLarge { size: value.len(), max: self.config.max_value_len });
        }
        let record = PutRecord {
            scope: scope.clone(),
            key: key.clone(),
            object_id: ObjectId::new(scope, key),
            expected_version,
            size: u32::try_from(value.len())
                .map_err(|_| VaultError::InvalidArgument("value too large".into()))?,
            now: SystemTime::now(),
        };
        let keks = Arc::clone(&self.keks);
        let (scope, key) = (scope.clone(), key.clone());
        let seal: SealFn = Box::new(move |version, generation| {
            let binding = Binding { scope: &scope, key: &key, version };
            envelope::seal(&keks.get(generation), generation, binding, value.expose()).map_err(|e| match e {
                EnvelopeError::Random => VaultError::Random,
                other => VaultError::InvalidArgument(other.to_string()),
            })
        });
        self.backend.put(record, seal).await
    }

    /// Reads the latest version (`version == None`) or a given one.
    pub async fn get(
        &self,
        scope: &Scope,
        key: &SecretKey,
        version: Option<u64>,
    ) -> Result<(SecretValue, SecretMetadata), VaultError> {
        let stored = self.backend.get(scope.clone(), key.clone(), version.filter(|&v| v != 0)).await?;
        let binding = Binding { scope, key, version: stored.version };
        let value = envelope::open(&stored.envelope, binding, |generation| Some(self.keks.get(generation)))
            .map_err(|_| VaultError::Integrity {
            object_id: stored.metadata.object_id.clone(),
            version: stored.version,
        })?;
        Ok((value, stored.metadata))
    }

    /// Lists metadata under `scope` (its sub-scopes too with `recursive`), in (scope, key)
    /// order, `page_size` at a time (0 = default, at most [`MAX_PAGE_SIZE`]). Returns the page
    /// and the cursor of the next one.
    pub async fn list(
        &self,
        scope: &Scope,
        recursive: bool,
        include_deleted: bool,
        page_size: usize,
        after: Option<(Scope, SecretKey)>,
    ) -> Result<(Vec<SecretMetadata>, Option<(Scope, SecretKey)>), VaultError> {
        let limit = if page_size == 0 { DEFAULT_PAGE_SIZE } else { page_size.min(MAX_PAGE_SIZE) };
        // One extra row tells whether another page follows without a second query.
        let mut rows = self
            .backend
            .list(ListQuery { scope: scope.clone(), recursive, include_deleted, after, limit: limit + 1 })
            .await?;
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|m| (m.scope.clone(), m.key.clone()))
        } else {
            None
        };
        Ok((rows, next))
    }

    /// Deletes a secret. Soft delete keeps its history (a later put makes the next version);
    /// `destroy` also erases every version's ciphertext and DEK.
    pub async fn delete(
        &self,
        scope: &Scope,
        key: &SecretKey,
        destroy: bool,
    ) -> Result<SecretMetadata, VaultError> {
        self.backend.delete(scope.clone(), key.clone(), destroy, SystemTime::now()).await
    }

    /// The scopes that hold at least one live secret, in order, at most `limit` (for a
    /// browsable tree; never values).
    pub async fn scopes(&self, limit: usize) -> Result<Vec<Scope>, VaultError> {
        self.backend.scopes(limit).await
    }

    /// Metadata and every version's summary.
    pub async fn history(
        &self,
        scope: &Scope,
        key: &SecretKey,
    ) -> Result<(SecretMetadata, Vec<SecretVersion>), VaultError> {
        self.backend.history(scope.clone(), key.clone()).await
    }

    /// Starts a new KEK generation and rewraps every DEK under it, without re-encrypting any
    /// value. Online: reads and writes go on meanwhile. Crash-safe: each batch is one
    /// transaction and every envelope records its generation, so an interrupted rotation
    /// leaves every secret readable; the next rotation (or [`Vault::resume_rotation`])
    /// finishes it.
    pub async fn rotate_key(&self) -> Result<Rotation, VaultError> {
        let _one_at_a_time = self.rotation.lock().await;
        let mut rewrapped = self.rewrap_all().await?;
        let generation = self.backend.begin_rotation().await?;
        rewrapped += self.rewrap_all().await?;
        Ok(Rotation { generation, rewrapped })
    }

    /// Finishes a rotation that a crash interrupted. Returns how many envelopes it rewrapped.
    pub async fn resume_rotation(&self) -> Result<u64, VaultError> {
        let _one_at_a_time = self.rotation.lock().await;
        self.rewrap_all().await
    }

    async fn rewrap_all(&self) -> Result<u64, VaultError> {
        let keks = Arc::clone(&self.keks);
        let rewrap: RewrapFn = Arc::new(move |binding: Binding<'_>, bytes: &[u8], target: u32| {
            let old = envelope::parse(bytes)?.generation;
            envelope::rewrap(bytes, binding, &keks.get(old), &keks.get(target), target)
        });
        let mut total = 0;
        let mut after = None;
        loop {
            let progress = self.backend.rewrap_batch(after, REWRAP_BATCH, Arc::clone(&rewrap)).await?;
            total += progress.rewrapped;
            if progress.failed > 0 {
                tracing::warn!(
                    failed = progress.failed,
                    "rotation left envelopes that failed their integrity check"
                );
            }
            match progress.last {
                Some(last) => after = Some(last),
                None => return Ok(total),
            }
        }
    }
}
