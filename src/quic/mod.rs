//! The QUIC data plane (`palyra-node/1`, PROTOCOLS.md §2): the only module that knows quinn.
//!
//! [`server::QuicServer`] serves `node.health` and `node.stream_events` to peers that present a
//! client certificate from the node's CA (required) and are active in the registry; each call
//! is authorized by the one Cedar engine through [`crate::access::Gate`] and audited like a
//! gRPC call. [`client::QuicClient`] is the other side, used by the CLI and tests. Frames are a
//! 4-byte big-endian length and a `palyra.node.v1` protobuf message ([`frame`]).
//!
//! It does not decide access itself, know SQL, or hold events: it streams what
//! [`crate::events::EventLog`] delivers.

pub mod client;
pub mod frame;
pub mod server;

use std::net::SocketAddr;
use std::time::Duration;

pub use client::{ClientError, QuicClient};
pub use server::{QuicError, QuicLoad, QuicServer, QuicStats, serve};

/// The generated `palyra.node.v1` messages.
pub use crate::rpc::pb::node::v1 as pb;

/// The ALPN protocol id of the data plane.
pub const ALPN: &[u8] = b"palyra-node/1";
/// Application close code: too many connections.
pub const CLOSE_CONNECTION_LIMIT: u32 = 0x1;
/// Application close code: the certificate names no registered device.
pub const CLOSE_UNKNOWN_DEVICE: u32 = 0x2;
/// Application close code: the device is (or was just) revoked.
pub const CLOSE_DEVICE_REVOKED: u32 = 0x3;
/// Application close code: the node could not check the device (an internal error, logged).
pub const CLOSE_INTERNAL: u32 = 0x4;
/// Application close code: the node is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 0x0;

/// The methods of `palyra-node/1`; each is also its Cedar action id.
pub const METHOD_HEALTH: &str = "node.health";
/// Replay then follow the event log.
pub const METHOD_STREAM_EVENTS: &str = "node.stream_events";

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

/// Default listen address.
pub const DEFAULT_ADDR: &str = crate::config::DEFAULT_QUIC_ADDR;
/// Default largest frame (1 MiB).
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024;
/// Default connection limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Default connections of one address (an IPv6 /64) at most.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 32;
/// Default handshakes in progress at most (a budget of their own, apart from connections).
pub const DEFAULT_MAX_HANDSHAKES: usize = 64;
/// Default handshakes in progress from one address at most.
pub const DEFAULT_MAX_HANDSHAKES_PER_ADDRESS: usize = 8;

/// When a connecting client must first prove it receives packets at its address (a QUIC Retry:
/// one more round trip, no state kept on the node until the client returns the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AddressValidation {
    /// Every connection (the default): per-address budgets then count addresses that answered,
    /// not spoofed ones.
    #[default]
    Always,
    /// Only while at least half the handshake budget is in use.
    UnderLoad,
}

/// Settings of the QUIC endpoint.
#[derive(Debug, Clone)]
pub struct QuicConfig {
    /// Where to listen (UDP).
    pub addr: SocketAddr,
    /// Concurrent connections at most; the next one is closed with code 0x1. A slot is taken
    /// only once the handshake is done and the device is known.
    pub max_connections: usize,
    /// Concurrent connections of one address (IPv6: its /64) at most; also code 0x1.
    pub max_connections_per_address: usize,
    /// Handshakes in progress at most; beyond that a new connection is refused at once.
    pub max_handshakes: usize,
    /// Handshakes in progress from one address at most.
    pub max_handshakes_per_address: usize,
    /// When clients must validate their address with a Retry first.
    pub address_validation: AddressValidation,
    /// Largest frame accepted, in bytes.
    pub max_frame: usize,
    /// Concurrent bidirectional streams per connection.
    pub max_streams: u32,
    /// Time a client has to finish the handshake (and the node to know the device): a
    /// handshake still in progress then is dropped and its budget freed.
    pub handshake_timeout: Duration,
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
    /// Keep-alive interval (keeps quiet event streams open).
    pub keep_alive: Duration,
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 7444)),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_handshakes_per_address: DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
            address_validation: AddressValidation::Always,
            max_frame: DEFAULT_MAX_FRAME,
            max_streams: 32,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
        }
    }
}

/// Converts a committed event to its wire form.
pub fn event_to_pb(event: &crate::events::Event) -> pb::Event {
    let since_epoch = event.at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    pb::Event {
        sequence: event.sequence,
        at: Some(prost_types::Timestamp {
            seconds: i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(since_epoch.subsec_nanos()).unwrap_or(0),
        }),
        kind: event.kind.clone(),
        subject: event.subject.clone(),
        attributes: event.attributes.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// Converts a received event to the domain type.
pub fn event_from_pb(event: pb::Event) -> crate::events::Event {
    // Untrusted: a peer may send any numbers; out-of-range times become the epoch.
    let at = event
        .at
        .and_then(|t| {
            let secs = Duration::from_secs(u64::try_from(t.seconds).ok()?);
            let nanos = Duration::from_nanos(u64::try_from(t.nanos).ok()?.min(999_999_999));
            std::time::UNIX_EPOCH.checked_add(secs)?.checked_add(nanos)
        })
        .unwrap_or(std::time::UNIX_EPOCH);
    crate::events::Event {
        sequence: event.sequence,
        at,
        kind: event.kind,
        subject: event.subject,
        attributes: event.attributes.into_iter().collect(),
    }
}

#[cfg(test)]
mod wire_time_tests {
    use super::*;

    #[test]
    fn hostile_event_times_do_not_panic() {
        for (seconds, nanos) in
            [(i64::MAX, 999_999_999), (i64::MAX, i32::MAX), (-1, -1), (0, i32::MIN), (i64::MIN, 5)]
        {
            let event =
                pb::Event { at: Some(prost_types::Timestamp { seconds, nanos }), ..Default::default() };
            let _ = event_from_pb(event);
        }
        let now = std::time::SystemTime::now();
        let round = event_from_pb(event_to_pb(&crate::events::Event {
            sequence: 1,
            at: now,
            kind: "k".into(),
            subject: "s".into(),
            attributes: Default::default(),
        }));
        assert_eq!(round.at, now);
    }
}
