//! The one place where errors become `tonic::Status`.
//!
//! Every status carries `google.rpc.ErrorInfo { reason: <palyra.common.v1.ErrorReason name>,
//! domain: "palyra.dev" }` so clients can branch on a stable reason instead of parsing text.
//! Internal failures are logged here with their detail and sent as a bare "internal error".

use std::collections::HashMap;
use std::time::SystemTime;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::pb::common::v1::ErrorReason;
use crate::access::{DenialKind, Denied, Refusal};
use crate::auth::AuthError;
use crate::devices::RegistryError;
use crate::events::EventsError;
use crate::identity::{DeviceId, IdentityError};
use crate::login::LoginError;
use crate::pairing::{PairingError, ServiceError as PairingServiceError};
use crate::policy::PolicyError;
use crate::unix_time::unix_ms;
use crate::vault::VaultError;

/// The `ErrorInfo.domain` of every Palyra error.
pub const ERROR_DOMAIN: &str = "palyra.dev";

/// A status with its reason (and optional `ErrorInfo.metadata`).
pub fn status(code: Code, reason: ErrorReason, message: impl Into<String>) -> Status {
    status_with(code, reason, message, HashMap::new())
}

/// A status with its reason and `ErrorInfo.metadata` entries.
pub fn status_with(
    code: Code,
    reason: ErrorReason,
    message: impl Into<String>,
    metadata: HashMap<String, String>,
) -> Status {
    let details = ErrorDetails::with_error_info(reason.as_str_name(), ERROR_DOMAIN, metadata);
    Status::with_error_details(code, message, details)
}

/// `INVALID_ARGUMENT` naming the field at fault.
pub fn invalid_argument(field: &str, message: impl std::fmt::Display) -> Status {
    status_with(
        Code::InvalidArgument,
        ErrorReason::InvalidArgument,
        format!("{field}: {message}"),
        HashMap::from([("field".to_owned(), field.to_owned())]),
    )
}

/// `INVALID_ARGUMENT`: a request message that is not protobuf of its type (prost says which
/// field and why, e.g. `GetSecretRequest.scope: invalid string value: data is not UTF-8
/// encoded`). Used by the codec, `rpc::codec`.
pub fn undecodable_request(e: &prost::DecodeError) -> Status {
    status(Code::InvalidArgument, ErrorReason::InvalidArgument, format!("malformed request message: {e}"))
}

/// `INTERNAL`: a response message that does not decode (only ever seen by a client of a
/// broken server). The message says what prost found; nothing is logged (it is the client's
/// side, and the server that sent it is at fault).
pub fn undecodable_response(e: &prost::DecodeError) -> Status {
    status(Code::Internal, ErrorReason::Internal, e.to_string())
}

/// How a request body broke gRPC's message framing (checked by `rpc::framing` before tonic
/// reads a message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    /// The compressed-flag byte is set, but this node accepts no compression.
    #[error("compressed request messages are not accepted (compressed-flag {flag}; send them uncompressed)")]
    Compressed {
        /// The flag byte as sent.
        flag: u8,
    },
    /// The length prefix announces more than the method accepts.
    #[error("the request message is {size} bytes; this method accepts at most {limit}")]
    TooLarge {
        /// The announced length.
        size: u64,
        /// The method's limit.
        limit: usize,
    },
    /// The body ended inside a length prefix or a message.
    #[error("the request ended inside a message: {announced} bytes announced, {arrived} arrived")]
    Truncated {
        /// Bytes the prefix announced (5 when it ended inside the prefix itself).
        announced: u64,
        /// Bytes that arrived.
        arrived: u64,
    },
    /// A unary method got no message, or more than one.
    #[error("a call to this method carries exactly one request message; got {0}")]
    MessageCount(&'static str),
}

impl From<FramingError> for Status {
    fn from(e: FramingError) -> Self {
        match e {
            // Over the limit is "too large", whatever the method: the reason clients already
            // handle for a vault value over the limit, with the limit in `metadata.limit`.
            FramingError::TooLarge { limit, .. } => status_with(
                Code::InvalidArgument,
                ErrorReason::ValueTooLarge,
                e.to_string(),
                HashMap::from([("limit".to_owned(), limit.to_string())]),
            ),
            other => status(Code::InvalidArgument, ErrorReason::InvalidArgument, other.to_string()),
        }
    }
}

/// `UNAUTHENTICATED` + `UNKNOWN_DEVICE`: a certificate of no registered device.
pub fn unknown_device(id: Option<DeviceId>) -> Status {
    let message = match id {
        Some(id) => format!("device {id} is not registered"),
        None => "the client certificate names no palyra device".to_owned(),
    };
    status(Code::Unauthenticated, ErrorReason::UnknownDevice, message)
}

/// `UNAUTHENTICATED` + `DEVICE_REVOKED`.
pub fn device_revoked(id: DeviceId) -> Status {
    status(Code::Unauthenticated, ErrorReason::DeviceRevoked, format!("device {id} is revoked"))
}

/// `UNAUTHENTICATED` + `DEVICE_REVOKED`, as the trailers of a stream whose device was revoked
/// while it was open.
pub fn stream_revoked() -> Status {
    status(Code::Unauthenticated, ErrorReason::DeviceRevoked, "this device was revoked; the stream is closed")
}

/// A policy denial: `UNAUTHENTICATED` for an anonymous caller (a certificate might help),
/// `PERMISSION_DENIED` for a device; reason `POLICY_DENIED`.
pub fn policy_denied(anonymous: bool, message: impl Into<String>) -> Status {
    let code = if anonymous { Code::Unauthenticated } else { Code::PermissionDenied };
    status(code, ErrorReason::PolicyDenied, message)
}

/// A refusal of the gate: a policy denial ([`policy_denied`]), `UNAVAILABLE` + `UNAVAILABLE`
/// when the audit log cannot record the call, `RESOURCE_EXHAUSTED` + `RATE_LIMITED` for an
/// anonymous address over its rate of audited calls.
pub fn denied(anonymous: bool, denied: Denied) -> Status {
    match denied.kind {
        DenialKind::AuditUnavailable => status(Code::Unavailable, ErrorReason::Unavailable, denied.message),
        DenialKind::RateLimited => status(Code::ResourceExhausted, ErrorReason::RateLimited, denied.message),
        _ => policy_denied(anonymous, denied.message),
    }
}

impl From<crate::audit::AuditUnavailable> for Status {
    fn from(e: crate::audit::AuditUnavailable) -> Self {
        status(Code::Unavailable, ErrorReason::Unavailable, e.0)
    }
}

impl From<crate::audit::PruneError> for Status {
    fn from(e: crate::audit::PruneError) -> Self {
        match e {
            crate::audit::PruneError::Unavailable(e) => e.into(),
            crate::audit::PruneError::Store(e) if e.is_integrity() || e.is_unavailable() => storage(&e),
            other => internal(other),
        }
    }
}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::UnknownDevice(id) => unknown_device(id),
            Refusal::Revoked(id) => device_revoked(id),
            Refusal::Internal(detail) => internal(detail),
        }
    }
}

/// A storage error with a meaning of its own: a row that failed its integrity check, or a
/// write refused because the audit log could not record (UNAVAILABLE, like the gate's).
fn storage(e: &crate::store_error::StoreError) -> Status {
    if e.is_unavailable() {
        return status(Code::Unavailable, ErrorReason::Unavailable, e.to_string());
    }
    row_integrity(e)
}

/// A database row that failed its MAC or contradicts another row (`crate::integrity`): DATA_LOSS
/// + INTEGRITY, naming the row (ids and versions only, never a value).
fn row_integrity(e: &crate::store_error::StoreError) -> Status {
    tracing::error!(error = %e, "a database row failed its integrity check");
    status(Code::DataLoss, ErrorReason::Integrity, e.to_string())
}

/// `INTERNAL`, with the detail logged and not sent.
pub fn internal(detail: impl std::fmt::Display) -> Status {
    tracing::error!(error = %detail, "internal error");
    status(Code::Internal, ErrorReason::Internal, "internal error")
}

impl From<VaultError> for Status {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::InvalidName(name) => {
                status(Code::InvalidArgument, ErrorReason::InvalidArgument, name.to_string())
            }
            VaultError::InvalidArgument(m) => status(Code::InvalidArgument, ErrorReason::InvalidArgument, m),
            e @ VaultError::ValueTooLarge { max, .. } => status_with(
                Code::InvalidArgument,
                ErrorReason::ValueTooLarge,
                e.to_string(),
                HashMap::from([("limit".to_owned(), max.to_string())]),
            ),
            e @ VaultError::NotFound { .. } => status(Code::NotFound, ErrorReason::NotFound, e.to_string()),
            VaultError::VersionConflict { actual, ref scope, ref key, expected } => status_with(
                Code::FailedPrecondition,
                ErrorReason::VersionConflict,
                format!("expected version {expected} of {scope}/{key}, but the latest is {actual}"),
                HashMap::from([("latest_version".to_owned(), actual.to_string())]),
            ),
            e @ VaultError::Integrity { .. } => {
                tracing::error!(error = %e, "stored secret failed its integrity check");
                status(Code::DataLoss, ErrorReason::Integrity, e.to_string())
            }
            VaultError::Storage(e) if e.is_integrity() || e.is_unavailable() => storage(&e),
            other => internal(other),
        }
    }
}

/// An event stream (VaultService.WatchSecrets) that cannot start or go on: `OUT_OF_RANGE` +
/// `EVENTS_TRUNCATED` with `metadata.oldest_available_sequence` when the asked-for start (or a
/// reader that fell that far behind) is no longer retained; `INVALID_ARGUMENT` for a start
/// ahead of the log; `UNAVAILABLE` when the node is shutting down.
impl From<EventsError> for Status {
    fn from(e: EventsError) -> Self {
        match e {
            EventsError::Truncated { since, oldest_available } => status_with(
                Code::OutOfRange,
                ErrorReason::EventsTruncated,
                format!(
                    "changes after sequence {since} are no longer retained; re-read the scope, then resume with since_sequence {}",
                    oldest_available.saturating_sub(1)
                ),
                HashMap::from([("oldest_available_sequence".to_owned(), oldest_available.to_string())]),
            ),
            e @ EventsError::AheadOfLog { .. } => status_with(
                Code::InvalidArgument,
                ErrorReason::InvalidArgument,
                e.to_string(),
                HashMap::from([("field".to_owned(), "since_sequence".to_owned())]),
            ),
            EventsError::Closed => stream_shutdown(),
            EventsError::Storage(e) if e.is_integrity() || e.is_unavailable() => storage(&e),
            other => internal(other),
        }
    }
}

/// An audit export that cannot start or go on: `OUT_OF_RANGE` (metadata
/// `oldest_available_sequence`) when records it needs were pruned, `INVALID_ARGUMENT` for a
/// start past the end, `UNAVAILABLE` when the log stopped.
impl From<crate::audit::ExportError> for Status {
    fn from(e: crate::audit::ExportError) -> Self {
        use crate::audit::ExportError;
        match e {
            ExportError::Pruned { oldest, .. } => status_with(
                Code::OutOfRange,
                ErrorReason::InvalidArgument,
                e.to_string(),
                HashMap::from([
                    ("field".to_owned(), "since_sequence".to_owned()),
                    ("oldest_available_sequence".to_owned(), oldest.to_string()),
                ]),
            ),
            ExportError::AheadOfLog { .. } => invalid_argument("since_sequence", &e),
            ExportError::Closed => stream_shutdown(),
            ExportError::Storage(e) if e.is_integrity() || e.is_unavailable() => storage(&e),
            ExportError::Storage(e) => internal(e),
        }
    }
}

/// `UNAVAILABLE`: the node is shutting down and ends its open streams; reconnect and resume.
pub fn stream_shutdown() -> Status {
    status(Code::Unavailable, ErrorReason::Unavailable, "the node is shutting down; reconnect to resume")
}

impl From<IdentityError> for Status {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::NotFound(id) => {
                status(Code::NotFound, ErrorReason::NotFound, format!("device {id} not found"))
            }
            IdentityError::InvalidCsr(m) => invalid_argument("csr_pem", m),
            IdentityError::InvalidArgument(m) => {
                status(Code::InvalidArgument, ErrorReason::InvalidArgument, m)
            }
            IdentityError::AlreadyExists(m) => status(Code::AlreadyExists, ErrorReason::InvalidArgument, m),
            e @ IdentityError::Integrity { .. } => {
                tracing::error!(error = %e, "identity integrity failure");
                status(Code::DataLoss, ErrorReason::Integrity, e.to_string())
            }
            IdentityError::Storage(e) if e.is_integrity() || e.is_unavailable() => storage(&e),
            other => internal(other),
        }
    }
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::InvalidField { field, message } => invalid_argument(field, message),
            RegistryError::UnknownDevice(id) => unknown_device(Some(id)),
            RegistryError::Revoked(id) => device_revoked(id),
            RegistryError::RenewalProofInvalid(m) => {
                status(Code::Unauthenticated, ErrorReason::RenewalProofInvalid, m)
            }
            RegistryError::RateLimited(m) => status(Code::ResourceExhausted, ErrorReason::RateLimited, m),
            RegistryError::Denied { denied: d, anonymous } => denied(anonymous, d),
            e @ RegistryError::SelfRevocation => {
                status(Code::FailedPrecondition, ErrorReason::Lockout, e.to_string())
            }
            RegistryError::Identity(e) => e.into(),
            other => internal(other),
        }
    }
}

impl From<PolicyError> for Status {
    fn from(e: PolicyError) -> Self {
        match e {
            e @ PolicyError::Invalid { .. } => {
                status(Code::InvalidArgument, ErrorReason::PolicyInvalid, e.to_string())
            }
            PolicyError::VersionConflict { expected, actual } => status_with(
                Code::FailedPrecondition,
                ErrorReason::VersionConflict,
                format!("expected policy version {expected}, but the current one is {actual}"),
                HashMap::from([("latest_version".to_owned(), actual.to_string())]),
            ),
            e @ PolicyError::Lockout => status(Code::FailedPrecondition, ErrorReason::Lockout, e.to_string()),
            e @ PolicyError::NotFound(_) => status(Code::NotFound, ErrorReason::NotFound, e.to_string()),
            PolicyError::Storage(e) if e.is_integrity() || e.is_unavailable() => storage(&e),
            e @ PolicyError::InvalidEntityRef { .. } => {
                status(Code::InvalidArgument, ErrorReason::InvalidArgument, e.to_string())
            }
            PolicyError::AuditUnavailable(e) => e.into(),
            other => internal(other),
        }
    }
}

impl From<PairingError> for Status {
    fn from(e: PairingError) -> Self {
        let failed = |reason, message: String| status(Code::FailedPrecondition, reason, message);
        match e {
            PairingError::InvalidArgument { field, message } => invalid_argument(field, message),
            e @ PairingError::CodeInvalid => failed(ErrorReason::PairingCodeInvalid, e.to_string()),
            e @ (PairingError::CodeExpired | PairingError::EnrollmentKeyExpired) => {
                failed(ErrorReason::PairingCodeExpired, e.to_string())
            }
            e @ PairingError::EnrollmentKeyUsedUp => failed(ErrorReason::EnrollmentKeyUsedUp, e.to_string()),
            e @ PairingError::EnrollmentKeyRevoked => {
                failed(ErrorReason::EnrollmentKeyRevoked, e.to_string())
            }
            e @ PairingError::EnrollmentKeyNotFound(_) => {
                status(Code::NotFound, ErrorReason::NotFound, e.to_string())
            }
            e @ PairingError::AttemptsExhausted => {
                failed(ErrorReason::PairingAttemptsExhausted, e.to_string())
            }
            e @ (PairingError::ProofInvalid | PairingError::ServerProofInvalid) => {
                status(Code::Unauthenticated, ErrorReason::PairingProofInvalid, e.to_string())
            }
            e @ PairingError::SessionExpired => failed(ErrorReason::PairingSessionExpired, e.to_string()),
            e @ PairingError::UnexpectedMessage(_) => {
                failed(ErrorReason::PairingSessionExpired, e.to_string())
            }
            e @ PairingError::ClockSkew { .. } => status_with(
                Code::FailedPrecondition,
                ErrorReason::ClockSkew,
                e.to_string(),
                HashMap::from([("server_time_unix_ms".to_owned(), unix_ms(SystemTime::now()).to_string())]),
            ),
            e @ PairingError::RequestNotFound(_) => {
                status(Code::NotFound, ErrorReason::NotFound, e.to_string())
            }
            e @ PairingError::RequestNotPending { .. } => {
                failed(ErrorReason::PairingRequestNotPending, e.to_string())
            }
            e @ PairingError::CaMismatch { .. } => invalid_argument("ca_fingerprint", e),
            e @ PairingError::Integrity => {
                tracing::error!(error = %e, "pairing integrity failure");
                status(Code::DataLoss, ErrorReason::Integrity, e.to_string())
            }
            other => internal(other),
        }
    }
}

impl From<PairingServiceError> for Status {
    fn from(e: PairingServiceError) -> Self {
        match e {
            PairingServiceError::Pairing(e) => e.into(),
            PairingServiceError::Identity(e) => e.into(),
            PairingServiceError::Denied(d) => denied(false, d),
            PairingServiceError::RateLimited(message) => {
                status(Code::ResourceExhausted, ErrorReason::RateLimited, message)
            }
            // The attempts left ride in `metadata.attempts_left`, so a client can say how many
            // guesses remain.
            e @ PairingServiceError::ProofRefused { attempts_left } => status_with(
                Code::Unauthenticated,
                ErrorReason::PairingProofInvalid,
                e.to_string(),
                HashMap::from([("attempts_left".to_owned(), attempts_left.to_string())]),
            ),
            PairingServiceError::Internal(detail) => internal(detail),
        }
    }
}

impl From<LoginError> for Status {
    fn from(e: LoginError) -> Self {
        match e {
            e @ LoginError::ConsoleDisabled => {
                status(Code::FailedPrecondition, ErrorReason::ConsoleDisabled, e.to_string())
            }
            other => internal(other),
        }
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidArgument { field, message } => invalid_argument(field, message),
            e @ AuthError::NotFound(_) => status(Code::NotFound, ErrorReason::NotFound, e.to_string()),
            e @ AuthError::AlreadyExists(_) => {
                status(Code::AlreadyExists, ErrorReason::InvalidArgument, e.to_string())
            }
            // The profile named is of the other kind: the argument is wrong, code and reason alike.
            e @ AuthError::WrongKind { .. } => invalid_argument("name", e),
            e @ AuthError::StateInvalid => {
                status(Code::FailedPrecondition, ErrorReason::AuthStateInvalid, e.to_string())
            }
            AuthError::NeedsAuthorization { ref name, .. } => {
                let profile = name.to_string();
                status_with(
                    Code::FailedPrecondition,
                    ErrorReason::AuthReauthorizationRequired,
                    e.to_string(),
                    HashMap::from([("profile".to_owned(), profile)]),
                )
            }
            e @ AuthError::InvalidGrant { .. } => {
                status(Code::FailedPrecondition, ErrorReason::AuthReauthorizationRequired, e.to_string())
            }
            AuthError::Provider { status: http, ref error, .. } => {
                let mut metadata = HashMap::new();
                if let Some(http) = http {
                    metadata.insert("provider_status".to_owned(), http.to_string());
                }
                if let Some(error) = error {
                    metadata.insert("provider_error".to_owned(), error.clone());
                }
                status_with(Code::Unavailable, ErrorReason::AuthProviderUnavailable, e.to_string(), metadata)
            }
            AuthError::Vault(v) => v.into(),
            other => internal(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::{Scope, SecretKey};

    fn reason_of(s: &Status) -> String {
        s.get_error_details().error_info().map(|i| i.reason.clone()).unwrap_or_default()
    }

    #[test]
    fn an_auth_call_on_the_wrong_kind_of_profile_is_invalid_argument_in_code_and_reason() {
        let name = crate::auth::ProfileName::parse("openai").expect("name");
        let e: Status =
            AuthError::WrongKind { name, kind: "an API key", message: "login is for OAuth" }.into();
        assert_eq!(
            (e.code(), reason_of(&e).as_str()),
            (Code::InvalidArgument, "ERROR_REASON_INVALID_ARGUMENT")
        );
    }

    #[test]
    fn vault_errors_map_to_codes_and_reasons() {
        let scope = Scope::parse("a").expect("scope");
        let key = SecretKey::parse("k").expect("key");
        let conflict: Status =
            VaultError::VersionConflict { scope: scope.clone(), key: key.clone(), expected: 0, actual: 3 }
                .into();
        assert_eq!(conflict.code(), Code::FailedPrecondition);
        assert_eq!(reason_of(&conflict), "ERROR_REASON_VERSION_CONFLICT");
        assert_eq!(
            conflict.get_error_details().error_info().map(|i| i.domain.clone()).as_deref(),
            Some(ERROR_DOMAIN)
        );
        let nf: Status = VaultError::NotFound { scope, key, version: None }.into();
        assert_eq!((nf.code(), reason_of(&nf).as_str()), (Code::NotFound, "ERROR_REASON_NOT_FOUND"));
        let big: Status = VaultError::ValueTooLarge { size: 2, max: 1 }.into();
        assert_eq!(reason_of(&big), "ERROR_REASON_VALUE_TOO_LARGE");
        let internal: Status = VaultError::Random.into();
        assert_eq!(internal.message(), "internal error");
    }
}
