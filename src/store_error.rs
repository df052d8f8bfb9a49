//! What every store trait shares. The domain defines its store traits (`vault::BlobBackend`,
//! the registry's, the pairing flow's, …) and `storage` implements them on SQLite; they all
//! fail with [`StoreError`] and return a [`BoxFuture`]. The domain sees these types, never
//! `storage` or rusqlite.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The future every store trait method returns (object-safe, so services hold `Arc<dyn …Store>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A database failure. Cheap to clone, so one commit failure can be reported to every write
/// of its batch.
#[derive(Debug, Clone, thiserror::Error)]
#[error("database error: {message}")]
pub struct StoreError {
    message: Arc<str>,
    integrity: bool,
    unavailable: bool,
}

impl StoreError {
    pub(crate) fn new(message: impl fmt::Display) -> Self {
        StoreError { message: message.to_string().into(), integrity: false, unavailable: false }
    }

    /// A row whose MAC does not verify, or rows that contradict each other: an edit of the
    /// database by someone without the root key. Never served as if it were sound.
    pub(crate) fn integrity(what: impl fmt::Display) -> Self {
        StoreError { message: format!("integrity check failed: {what}").into(), integrity: true, unavailable: false }
    }

    /// Whether this is an integrity failure (the edges answer DATA_LOSS + INTEGRITY).
    pub fn is_integrity(&self) -> bool {
        self.integrity
    }

    /// A write refused because the audit log could not record the decisions it depends on
    /// (the batch it was in failed its audit append): the caller may retry later.
    pub(crate) fn unavailable(why: impl fmt::Display) -> Self {
        StoreError { message: why.to_string().into(), integrity: false, unavailable: true }
    }

    /// See [`StoreError::unavailable`].
    pub fn is_unavailable(&self) -> bool {
        self.unavailable
    }

    /// A stored value that cannot be what this code wrote (corruption or tampering).
    pub(crate) fn corrupt(what: impl fmt::Display) -> Self {
        StoreError::new(format_args!("corrupt row: {what}"))
    }
}
