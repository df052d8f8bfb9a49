//! Exit codes: the one mapping from what went wrong to the process's exit status (API.md,
//! "Exit codes"). Every [`CliError`](super::CliError) carries one; a gRPC status gets its code
//! from [`Exit::of_status`], by its `ErrorInfo` reason first and its status code second.

use tonic::Code;

use crate::wire::pb::common::v1::ErrorReason;

/// What kind of failure ended the command; the discriminant is the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Anything not below.
    Failure = 1,
    /// The command line or an input the user gave is malformed (clap's usage errors are 2 too).
    Usage = 2,
    /// The node's policy denied the call, or the caller's device is revoked or unknown.
    Denied = 3,
    /// The secret, device, request or version does not exist.
    NotFound = 4,
    /// Stored data failed its integrity check, or a backup is damaged, cut short, foreign or
    /// newer, or its recovery code does not open it.
    Integrity = 5,
    /// The node is down or unreachable, or asks to retry later.
    Unavailable = 6,
    /// A check-and-set lost: someone else wrote first.
    Conflict = 7,
}

/// The table for `palyra --help` and the README.
pub const TABLE: &str = "\
Exit codes:
  0  ok
  1  failure (anything below does not cover; also a failing `policy test` case)
  2  usage: a malformed command line, reference, scope or argument (also a malformed
     `policy test` cases file or a bad file for `config check`)
  3  denied: the node's policy refused the call, or this device is revoked or unknown
     (also `policy check` answering DENY)
  4  not found: no such secret, version, device or request
  5  integrity: stored data failed its integrity check (also `audit verify` finding a break,
     and `restore` of a damaged, truncated or foreign backup, or with the wrong code)
  6  unavailable: the node is down or unreachable, or asks to retry later
  7  conflict: a check-and-set (--expected-version) lost to another write
  palyra run exits with its command's status (128+N when it died of signal N).";

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The exit of a gRPC status: [`Exit::of_status`] with its `ErrorInfo` reason. tonic
    /// reports a channel that cannot reach the node any more as `UNKNOWN` "Service was not
    /// ready" (its generated clients' fixed text): that is the node unreachable, 6.
    pub fn of(status: &tonic::Status) -> Exit {
        use tonic_types::StatusExt;
        if status.code() == Code::Unknown && status.message().starts_with("Service was not ready") {
            return Exit::Unavailable;
        }
        let reason = status.get_error_details().error_info().map(|i| i.reason.clone());
        Exit::of_status(status.code(), reason.as_deref())
    }

    /// The exit of a gRPC status with `reason` (its `ErrorInfo.reason`, if any): the reason
    /// decides when it is one of ours; the status code otherwise (a proxy, tonic itself, or a
    /// reason newer than this CLI).
    pub fn of_status(code: Code, reason: Option<&str>) -> Exit {
        let by_reason = reason.and_then(ErrorReason::from_str_name).and_then(|reason| match reason {
            ErrorReason::InvalidArgument | ErrorReason::ValueTooLarge | ErrorReason::PolicyInvalid => {
                Some(Exit::Usage)
            }
            ErrorReason::PolicyDenied
            | ErrorReason::DeviceRevoked
            | ErrorReason::UnknownDevice
            | ErrorReason::PairingProofInvalid
            | ErrorReason::RenewalProofInvalid => Some(Exit::Denied),
            ErrorReason::NotFound => Some(Exit::NotFound),
            ErrorReason::Integrity => Some(Exit::Integrity),
            ErrorReason::Unavailable | ErrorReason::AuthProviderUnavailable | ErrorReason::RateLimited => {
                Some(Exit::Unavailable)
            }
            ErrorReason::VersionConflict => Some(Exit::Conflict),
            _ => None,
        });
        by_reason.unwrap_or(match code {
            Code::InvalidArgument => Exit::Usage,
            Code::PermissionDenied | Code::Unauthenticated => Exit::Denied,
            Code::NotFound => Exit::NotFound,
            Code::DataLoss => Exit::Integrity,
            Code::Unavailable | Code::DeadlineExceeded => Exit::Unavailable,
            Code::AlreadyExists | Code::Aborted => Exit::Conflict,
            _ => Exit::Failure,
        })
    }
}

impl Exit {
    /// The exit of a QUIC data-plane failure (`palyra node ...`): an `Error` frame by its code,
    /// a close by its application code, no connection as unavailable.
    pub fn of_quic(error: &crate::quic::ClientError) -> Exit {
        use crate::quic::{
            CLOSE_CONNECTION_LIMIT, CLOSE_DEVICE_REVOKED, CLOSE_SHUTDOWN, CLOSE_UNKNOWN_DEVICE, ClientError,
        };
        match error {
            ClientError::Connect(_) | ClientError::Lost(_) => Exit::Unavailable,
            ClientError::Closed { code, .. } => match u32::try_from(*code) {
                Ok(CLOSE_UNKNOWN_DEVICE | CLOSE_DEVICE_REVOKED) => Exit::Denied,
                Ok(CLOSE_CONNECTION_LIMIT | CLOSE_SHUTDOWN) => Exit::Unavailable,
                _ => Exit::Failure,
            },
            ClientError::Remote { code, .. } => match code.as_str() {
                "permission_denied" => Exit::Denied,
                "invalid_request" | "frame_too_large" | "unsupported_method" => Exit::Usage,
                _ => Exit::Failure,
            },
            _ => Exit::Failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_maps_as_its_documented_status_code_does() {
        // Each reason with the status code errors.proto sends it with.
        let sent_with = |r: ErrorReason| match r {
            ErrorReason::Unspecified => Code::Unknown,
            ErrorReason::InvalidArgument | ErrorReason::PolicyInvalid | ErrorReason::ValueTooLarge => {
                Code::InvalidArgument
            }
            ErrorReason::NotFound => Code::NotFound,
            ErrorReason::Integrity => Code::DataLoss,
            ErrorReason::PolicyDenied => Code::PermissionDenied,
            ErrorReason::DeviceRevoked
            | ErrorReason::UnknownDevice
            | ErrorReason::PairingProofInvalid
            | ErrorReason::RenewalProofInvalid => Code::Unauthenticated,
            ErrorReason::RateLimited => Code::ResourceExhausted,
            ErrorReason::Unavailable | ErrorReason::AuthProviderUnavailable => Code::Unavailable,
            ErrorReason::Internal => Code::Internal,
            ErrorReason::EventsTruncated => Code::OutOfRange,
            _ => Code::FailedPrecondition,
        };
        let mut seen = 0;
        for n in 0..64 {
            let Ok(reason) = ErrorReason::try_from(n) else { continue };
            seen += 1;
            let code = sent_with(reason);
            let want = match reason {
                ErrorReason::VersionConflict => Exit::Conflict,
                ErrorReason::RateLimited => Exit::Unavailable,
                _ => Exit::of_status(code, None),
            };
            assert_eq!(Exit::of_status(code, Some(reason.as_str_name())), want, "{reason:?}");
        }
        assert!(seen >= 29, "{seen} reasons");
    }

    #[test]
    fn quic_failures() {
        use crate::quic::ClientError;
        let remote = |code: &str| ClientError::Remote {
            code: code.into(),
            message: String::new(),
            oldest_available_sequence: 0,
        };
        let closed = |code: u64| ClientError::Closed { code, reason: String::new() };
        for (error, want) in [
            (ClientError::Connect("timed out".into()), Exit::Unavailable),
            (ClientError::Lost("reset".into()), Exit::Unavailable),
            (closed(0x3), Exit::Denied),
            (closed(0x2), Exit::Denied),
            (closed(0x1), Exit::Unavailable),
            (closed(0x4), Exit::Failure),
            (closed(u64::MAX), Exit::Failure),
            (remote("permission_denied"), Exit::Denied),
            (remote("invalid_request"), Exit::Usage),
            (remote("events_truncated"), Exit::Failure),
        ] {
            assert_eq!(Exit::of_quic(&error), want, "{error}");
        }
    }

    #[test]
    fn the_table() {
        let cases = [
            (Code::PermissionDenied, Some("ERROR_REASON_POLICY_DENIED"), 3),
            (Code::Unauthenticated, Some("ERROR_REASON_POLICY_DENIED"), 3),
            (Code::Unauthenticated, Some("ERROR_REASON_DEVICE_REVOKED"), 3),
            (Code::NotFound, Some("ERROR_REASON_NOT_FOUND"), 4),
            (Code::DataLoss, Some("ERROR_REASON_INTEGRITY"), 5),
            (Code::Unavailable, None, 6),
            (Code::Unavailable, Some("ERROR_REASON_UNAVAILABLE"), 6),
            (Code::ResourceExhausted, Some("ERROR_REASON_RATE_LIMITED"), 6),
            (Code::DeadlineExceeded, None, 6),
            (Code::FailedPrecondition, Some("ERROR_REASON_VERSION_CONFLICT"), 7),
            (Code::FailedPrecondition, Some("ERROR_REASON_LOCKOUT"), 1),
            (Code::FailedPrecondition, Some("ERROR_REASON_PAIRING_CODE_EXPIRED"), 1),
            (Code::InvalidArgument, Some("ERROR_REASON_INVALID_ARGUMENT"), 2),
            (Code::InvalidArgument, Some("ERROR_REASON_VALUE_TOO_LARGE"), 2),
            (Code::Internal, Some("ERROR_REASON_INTERNAL"), 1),
            (Code::Unknown, None, 1),
            (Code::Ok, None, 1),
            // A reason this CLI does not know: the status code decides.
            (Code::NotFound, Some("ERROR_REASON_FROM_THE_FUTURE"), 4),
            (Code::Internal, Some("ERROR_REASON_FROM_THE_FUTURE"), 1),
        ];
        for (code, reason, want) in cases {
            assert_eq!(Exit::of_status(code, reason).code(), want, "{code:?} {reason:?}");
        }
        let not_ready = tonic::Status::unknown("Service was not ready: transport error");
        assert_eq!(Exit::of(&not_ready), Exit::Unavailable);
        assert_eq!(Exit::of(&tonic::Status::unknown("something else")), Exit::Failure);
        let denied = crate::wire::status::policy_denied(false, "no");
        assert_eq!(Exit::of(&denied), Exit::Denied);
        for n in 1..=7 {
            assert!(TABLE.contains(&format!("\n  {n}  ")), "{n}");
        }
    }
}
