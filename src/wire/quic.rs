//! The QUIC data plane's errors on the wire: the `palyra.node.v1.Error` codes and frames, and
//! the one mapping from the event log's errors to them (what [`super::status`] is for gRPC).
//! The endpoint (`quic::server`) sends what it is handed and decides none of it.

use crate::events::EventsError;
use crate::wire::pb::node::v1 as pb;

/// `Error.code` values.
pub mod codes {
    /// The frame length was 0 or above the maximum.
    pub const FRAME_TOO_LARGE: &str = "frame_too_large";
    /// The frame did not decode as a `Request`.
    pub const INVALID_REQUEST: &str = "invalid_request";
    /// Not a method of this protocol.
    pub const UNSUPPORTED_METHOD: &str = "unsupported_method";
    /// The policy denies this device the method.
    pub const PERMISSION_DENIED: &str = "permission_denied";
    /// `since_sequence` is older than retention.
    pub const EVENTS_TRUNCATED: &str = "events_truncated";
    /// Something failed on the node.
    pub const INTERNAL: &str = "internal";
}

/// An `Error` frame (`oldest_available_sequence` is 0 unless the code is `events_truncated`).
pub fn error_frame(code: &str, message: impl Into<String>, oldest_available_sequence: u64) -> pb::Response {
    pb::Response {
        body: Some(pb::response::Body::Error(pb::Error {
            code: code.to_owned(),
            message: message.into(),
            oldest_available_sequence,
        })),
    }
}

/// The frame that refuses an event stream asked to start after `since`: `events_truncated`
/// with the sequence to resume from, `invalid_request` for a start ahead of the log, else
/// `internal` (the detail is logged, not sent).
pub fn events_refused(e: &EventsError, since: u64) -> pb::Response {
    match e {
        EventsError::Truncated { oldest_available, .. } => {
            let message = format!(
                "events after {since} are no longer retained; resume from {}",
                oldest_available.saturating_sub(1)
            );
            error_frame(codes::EVENTS_TRUNCATED, message, *oldest_available)
        }
        EventsError::AheadOfLog { .. } => error_frame(codes::INVALID_REQUEST, e.to_string(), 0),
        e => {
            tracing::error!(error = %e, "cannot start an event stream");
            error_frame(codes::INTERNAL, "internal error", 0)
        }
    }
}

/// The frame that ends a running event stream: `events_truncated` when the subscriber fell
/// behind retention, else `internal` (logged); `None` when the log closed (the node is
/// shutting down), which ends the stream without an error.
pub fn events_failed(e: &EventsError) -> Option<pb::Response> {
    match e {
        EventsError::Truncated { since, oldest_available } => {
            let message = format!(
                "fell behind retention after {since}; resume from {}",
                oldest_available.saturating_sub(1)
            );
            Some(error_frame(codes::EVENTS_TRUNCATED, message, *oldest_available))
        }
        EventsError::Closed => None,
        e => {
            tracing::error!(error = %e, "event stream failed");
            Some(error_frame(codes::INTERNAL, "internal error", 0))
        }
    }
}
