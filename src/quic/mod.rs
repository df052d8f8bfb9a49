//! The QUIC data plane (`palyra-node/1`, docs/quic-data-plane.md): the only module that knows quinn.
//!
//! [`server::QuicServer`] serves `node.health`, `node.stream_events` and
//! `node.audit_checkpoint` to peers that present a
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

#[cfg_attr(not(feature = "testkit"), allow(unused_imports))]
pub use client::{ClientError, QuicClient};
#[cfg_attr(not(feature = "testkit"), allow(unused_imports))]
pub use server::{QuicError, QuicLoad, QuicServer, QuicStats, serve};

/// The generated `palyra.node.v1` messages.
pub use crate::wire::pb::node::v1 as pb;
/// Events to and from `pb::Event`, converted in `wire::convert` (named here too: the benches
/// and the CLI use them through the data plane).
pub use crate::wire::convert::{event_from_pb, event_to_pb};

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
/// `since_sequence` that asks `node.stream_events` for the events committed from now on only
/// (nothing replayed): the largest uint64, which no event ever reaches.
pub const EVENTS_FROM_NOW: u64 = u64::MAX;

/// The latest signed audit checkpoint, for witnesses.
pub const METHOD_AUDIT_CHECKPOINT: &str = "node.audit_checkpoint";

/// `Error.code` values (chosen in `wire::quic`).
pub use crate::wire::quic::codes;

/// Default listen address.
#[cfg_attr(not(feature = "testkit"), allow(dead_code))]
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
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
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
