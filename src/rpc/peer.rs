//! Who is on the other end of a gRPC connection: the typed [`Peer`] from [`crate::access`],
//! resolved once per request by the gate from the client certificate rustls verified and the
//! registry. Refusals map to `Status` in `wire/status.rs`.

pub use crate::access::{Peer, PeerResolver};
