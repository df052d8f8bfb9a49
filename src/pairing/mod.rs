//! Pairing: how a new device joins a node with a short PIN (docs/pairing-protocol.md).
//!
//! - [`code`] — pairing codes: the random `code_id` and PIN (never a trivial one), the code's
//!   life (expiry, attempts, single use), PIN sealing, and the `palyra://pair?...` URI;
//! - [`enrollment`] — enrollment keys for headless machines: a reusable code whose
//!   high-entropy secret is the handshake's password, approving at once with the key's grants;
//!   the secret sealed bound to the grants and use count; the one-line token;
//! - [`handshake`] — the SPAKE2 handshake as two sans-IO state machines ([`DevicePairing`],
//!   [`NodeSession`]), the transcript hash, HKDF confirmation keys, HMAC confirmations,
//!   Ed25519 finish and status signatures, and bounded, panic-free decoders of every message;
//! - [`session`] — a node's handshake session between StartPairing and FinishPairing as a
//!   versioned, bounded byte encoding, sealed under the node's internal seal key and bound
//!   to the session id, so sessions survive a restart;
//! - [`name`] — [`DeviceName`](name::DeviceName): the name a device asks to be shown by, refused
//!   when it could disguise itself (control, bidi, invisible characters), NFC, bounded;
//! - [`request`] — the pairing request an admin approves or rejects, and the rules on the
//!   decision (request ids, pairable roles, granted scopes, rejection reasons);
//! - [`store`] — [`PairingStore`](store::PairingStore), what the flow needs kept (implemented
//!   on SQLite outside this module);
//! - [`service`] — [`Pairing`], the application service: the node's side of the flow, its rate
//!   limits, attempt counting and audit, and the operator's approve/reject.
//!
//! What it does not do: network IO, wire formats or SQL. The domain modules (all but
//! `service`) read no clock either: time is passed in as `now`. The node's edges call
//! [`Pairing`]; the device's side of the handshake ([`DevicePairing`]) is driven by the
//! command-line client.

pub mod code;
pub mod enrollment;
pub mod handshake;
pub mod name;
pub mod request;
pub(crate) mod service;
pub mod session;
pub(crate) mod store;

pub use code::{CodeId, CodeState, PairingCode, PairingUri, PakePassword, Pin};
pub use enrollment::{EnrollmentKey, EnrollmentToken};
#[cfg_attr(not(feature = "testkit"), allow(unused_imports))]
pub use enrollment::EnrollmentSecret;
#[cfg_attr(not(feature = "testkit"), allow(unused_imports))]
pub use handshake::{
    DeviceName, DevicePairing, FinishMessage, NodeSession, StartMessage, StartReply, StatusPoll,
    VerifiedPairing,
};
pub use request::{PairingRequest, RequestState};
pub(crate) use service::{CreatedCode, Pairing, ServiceError};
pub use session::{open_session, seal_session};

use std::time::Duration;

/// Protocol label: the first transcript field and the prefix of every domain tag.
pub const PROTOCOL: &str = "palyra-pairing-v1";
/// Default lifetime of a pairing code.
pub const DEFAULT_CODE_TTL: Duration = Duration::from_secs(600);
/// Shortest code lifetime accepted.
pub const MIN_CODE_TTL: Duration = Duration::from_secs(30);
/// Longest code lifetime accepted.
pub const MAX_CODE_TTL: Duration = Duration::from_secs(86_400);
/// Default number of attempts (PIN guesses) per code.
pub const DEFAULT_ATTEMPTS: u32 = 5;
/// Largest number of attempts per code.
pub const MAX_ATTEMPTS: u32 = 10;
/// Lifetime of a handshake session (StartPairing → FinishPairing).
pub const SESSION_TTL: Duration = Duration::from_secs(120);
/// Lifetime of a PENDING pairing request.
pub const REQUEST_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Largest clock difference accepted on a signed status poll.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Why a pairing step failed. Messages are lower case and never carry a PIN, a key or a
/// confirmation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PairingError {
    /// A field of a message is malformed; `field` names it.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The offending field (its wire name).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The code does not exist or was already used.
    #[error("unknown or already used pairing code")]
    CodeInvalid,
    /// The code's lifetime has passed.
    #[error("the pairing code has expired")]
    CodeExpired,
    /// The code has no attempts left and is burned.
    #[error("the pairing code has no attempts left")]
    AttemptsExhausted,
    /// A confirmation or signature did not verify: a wrong PIN, an impostor, or a transcript
    /// altered in transit.
    #[error("the pairing proof does not verify")]
    ProofInvalid,
    /// The node's confirmation did not verify on the device: the PIN is wrong or the node is
    /// an impostor.
    #[error("the node's confirmation does not verify: wrong PIN or impostor node")]
    ServerProofInvalid,
    /// The session is unknown, finished, failed or older than its lifetime.
    #[error("the pairing session has expired or is unknown")]
    SessionExpired,
    /// A signed timestamp is too far from the node's clock.
    #[error("the signed timestamp is {skew_ms} ms away from the node's clock")]
    ClockSkew {
        /// The absolute difference.
        skew_ms: u64,
    },
    /// A message arrived in a state that does not expect it (a replay or a message out of
    /// order).
    #[error("unexpected pairing message: {0}")]
    UnexpectedMessage(&'static str),
    /// The CA fingerprint from the URI does not match the node's.
    #[error("the node's CA fingerprint {actual} does not match the expected {expected}")]
    CaMismatch {
        /// From the URI or the command line.
        expected: String,
        /// What the node presented.
        actual: String,
    },
    /// A sealed PIN or session did not open or decode (tampered, moved to another row, or
    /// sealed with another key).
    #[error("a sealed pairing value failed its integrity check")]
    Integrity,
    /// No pairing request has this id.
    #[error("pairing request {0} not found")]
    RequestNotFound(String),
    /// The pairing request was already decided or has expired.
    #[error("pairing request {id} is {state}, not pending")]
    RequestNotPending {
        /// The request.
        id: String,
        /// Where it stands.
        state: &'static str,
    },
    /// The enrollment key paired as many devices as it allows.
    #[error("the enrollment key is used up")]
    EnrollmentKeyUsedUp,
    /// The enrollment key's lifetime has passed.
    #[error("the enrollment key has expired")]
    EnrollmentKeyExpired,
    /// An admin revoked the enrollment key.
    #[error("the enrollment key was revoked")]
    EnrollmentKeyRevoked,
    /// No enrollment key has this id.
    #[error("enrollment key {0} not found")]
    EnrollmentKeyNotFound(String),
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
}

impl PairingError {
    /// An `InvalidArgument` naming `field`.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        PairingError::InvalidArgument { field, message: message.into() }
    }
}
