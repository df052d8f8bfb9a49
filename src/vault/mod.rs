//! The vault: scoped, versioned secrets, envelope-encrypted at rest.
//!
//! [`Vault`] is the domain API (put, get, list, delete, destroy, metadata, key rotation). It
//! seals and opens values ([`envelope`]) with KEKs derived from the root key ([`keys`]) and keeps
//! the sealed bytes in a [`BlobBackend`] (SQLite, implemented in `crate::storage`). It knows
//! nothing of gRPC, QUIC or SQL, does not name `storage`, and does not authorize: callers ask
//! the policy engine first.
//!
//! Files: this one holds the values and the error; `service` the [`Vault`]; `watch` the
//! [`Watch`] of a scope's changes (from the event log); `store` the [`BlobBackend`] trait and
//! its records; [`envelope`], [`keys`], [`keychain`] and [`scope`] the pure parts; [`reference`]
//! and [`dotenv`] the text that names secrets outside the node (`palyra://SCOPE/KEY`
//! references, templates, `.env` files).

pub mod dotenv;
pub mod envelope;
pub mod keychain;
pub mod keys;
pub mod reference;
pub mod scope;
mod service;
mod store;
mod watch;

use std::fmt;
use std::time::SystemTime;

use zeroize::Zeroizing;

pub use envelope::{Binding, EnvelopeError};
#[cfg_attr(not(feature = "testkit"), allow(unused_imports))]
pub use keys::{KeyBackend, KeyError, KeyHierarchy, KeyProvider, Locked, RootKey, locked_pages};
pub use scope::{NameError, ObjectId, Scope, SecretKey};
pub use service::{DEFAULT_READ_CACHE, Vault, VaultConfig};
pub use watch::{ChangeKind, Watch, Watched};
#[cfg_attr(not(feature = "testkit"), allow(unused_imports))]
pub use watch::{PROGRESS_INTERVAL, SecretChange};
pub use store::{
    BlobBackend, BoxFuture, ListQuery, PutRecord, RewrapFn, RewrapProgress, SealFn, StoredVersion,
};

use crate::store_error::StoreError;

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
    Storage(#[from] StoreError),
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
}
