//! Palyra: the security control plane of a personal node.
//!
//! One binary that keeps a node's secrets and decides who may touch them:
//!
//! - [`auth`] — auth profiles: API keys and OAuth 2.0 grants (PKCE, single-flight refresh)
//!   for external providers, their secrets sealed in the vault;
//! - [`vault`] — scoped, versioned secrets, envelope-encrypted (ChaCha20-Poly1305, HKDF
//!   sub-keys), the root key in the OS keychain or a 0600 key file;
//! - [`identity`] — the node's Ed25519/X25519 identity, the sealed identity store, the device
//!   CA (mTLS certificates) and the types of the device registry;
//! - [`policy`] — Cedar: the schema, the default policies (DESIGN.md §3's authorization
//!   matrix), the engine every call is decided by, and the versioned policy store;
//! - [`storage`] — SQLite (WAL, `synchronous=FULL`, group commit), the only module that knows
//!   rusqlite;
//! - [`pairing`] — the pairing codes and the SPAKE2 handshake as sans-IO state machines;
//! - [`events`] — the event log: changes and their events commit together, replay + live
//!   subscriptions that never skip an event;
//! - [`access`] — certificate → peer, and the one Cedar gate with its audit record, shared by
//!   the edges;
//! - [`admin`] — the operator's pairing and revocation actions, shared by the gRPC services
//!   and the console;
//! - [`rpc`] — the gRPC edge (tonic, mTLS); [`quic`] — the QUIC data plane (quinn, mTLS);
//! - [`console`] — the operator web console (axum, loopback HTTP), signed in with one-time
//!   links ([`login`]) and decided by the same gate;
//! - [`node`] — assembles the parts from a data directory;
//! - [`integrity`] — the row MACs of the rows that decide what is served;
//! - [`fsutil`] — private files and atomic writes; [`limits`] — the open-files limit.
//!
//! See ARCHITECTURE.md for the map and the invariants.

#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod console;
pub mod datadir_lock;
pub mod events;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod integrity;
pub mod limits;
pub mod login;
pub mod net_limits;
pub mod node;
pub mod pairing;
pub mod policy;
pub mod quic;
pub mod ratelimit;
pub mod rpc;
pub mod storage;
pub mod unix_time;
pub mod vault;
