//! The device registry service's error: the refusals of its flows (a field, a proof, a limit,
//! the gate, a self-revocation), and the identity domain's errors for the rest.

use crate::access::Denied;
use crate::identity::{DeviceId, IdentityError};

/// Why a registry call failed. Messages are lower case and never carry key material; they are
/// the ones `IdentityError` carried for the same cases before the service left `identity`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A request field was refused; `field` is its wire name.
    #[error("{field}: {message}")]
    InvalidField {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A certificate names a device the registry does not know (anonymous renewal).
    #[error("device {0} is not registered")]
    UnknownDevice(DeviceId),
    /// The device is revoked: it gets no new certificate.
    #[error("device {0} is revoked")]
    Revoked(DeviceId),
    /// An anonymous renewal's proof is missing, or its challenge or signature does not verify.
    #[error("{0}")]
    RenewalProofInvalid(&'static str),
    /// Over a limit of the renewal challenges (per address, per device, or the table's size);
    /// the message says when to retry.
    #[error("{0}")]
    RateLimited(String),
    /// The gate refused: the policy denied, or the audit log cannot record the call.
    /// `anonymous` is whether the caller had no certificate (a certificate might help).
    #[error("{}", .denied.message)]
    Denied {
        /// The gate's refusal.
        denied: Denied,
        /// Whether the caller was anonymous.
        anonymous: bool,
    },
    /// The caller tried to revoke the device it calls with.
    #[error("refusing to revoke the device making the call: you would lock yourself out")]
    SelfRevocation,
    /// An in-memory table of the registry is unusable (a lock poisoned by a panic).
    #[error("{0}")]
    Internal(&'static str),
    /// The identity domain failed: an unknown device, a refused CSR, the CA, the device rows'
    /// store, the random generator.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}
