//! The identity domain's one error type.

use crate::fsutil::FsError;
use crate::store_error::StoreError;

use super::DeviceId;

/// Why an identity operation failed. Messages are lower case and never carry key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// No device with this id is registered.
    #[error("device {0} not found")]
    NotFound(DeviceId),
    /// The thing to create exists already (a device id or fingerprint, a sealed file).
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// A certificate signing request was refused; the reason says why.
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),
    /// Another argument was refused (a server name, a validity, a store entry name).
    #[error("{0}")]
    InvalidArgument(String),
    /// Sealed data failed authentication: tampered, truncated, renamed or sealed with another
    /// key. Never returned as garbage plaintext.
    #[error("{name} failed its integrity check (tampered, truncated, renamed or sealed with another key)")]
    Integrity {
        /// The sealed item concerned (a file name in the identity store).
        name: String,
    },
    /// Authenticated stored data that this code cannot have written (a wrong length, an
    /// unknown version, a certificate that does not parse).
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was being read.
        what: &'static str,
        /// What is wrong with it (never key material).
        detail: String,
    },
    /// Building or signing a certificate failed.
    #[error("certificate error: {0}")]
    Certificate(String),
    /// A file or directory of the identity store is unusable (loose permissions name the fix).
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The registry's database failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
}

impl From<rcgen::Error> for IdentityError {
    fn from(e: rcgen::Error) -> Self {
        IdentityError::Certificate(e.to_string())
    }
}
