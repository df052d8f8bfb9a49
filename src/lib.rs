//! Palyra: the security control plane of a personal node.
//!
//! One binary, `palyra`, that keeps a node's secrets and decides who may touch them. This
//! crate is that binary's library: its public surface is the composition root ([`node`]), the
//! wire types a client needs ([`wire`]), the command line ([`cli`], which `main.rs` runs), and
//! — behind the `testkit` feature, for this crate's own tests, benches and fuzz targets — the
//! `testkit`. Everything else is crate-private in a default build; ARCHITECTURE.md is the
//! map of it, bottom up:
//!
//! - leaves: `store_error` (what every store trait shares), `fsutil` (private files, atomic
//!   writes), `limits` (process limits), `datadir_lock`, `net_limits` and `ratelimit` (budgets
//!   and buckets per address), `unix_time`, `error_chain` (an error with its causes), `config` (`palyra.toml`, pure parsing), `metrics` (the Prometheus
//!   metrics handle);
//! - domain, each with its store trait and its application service: `vault` (scoped,
//!   versioned, envelope-encrypted secrets; the root key), `identity` (device and node keys,
//!   the device CA, the sealed identity store), `pairing` (codes and the SPAKE2 handshake,
//!   sans-IO; the `Pairing` service), `policy` (Cedar: schema, default policies, the engine;
//!   the `Policies` service), `audit` (the hash chain and its sealed head; the `Audit`
//!   service), `auth` (auth profiles; the `Profiles` service), `events` (the event log),
//!   `integrity` (row MACs), `login` (console sign-in tokens);
//! - services above the domain: `access` (certificate → peer, the one Cedar gate with its
//!   audit record), `devices` (the device registry: revocation, renewal);
//! - `storage`: SQLite, implementing the domain's store traits — the only module that knows
//!   rusqlite;
//! - the composition root [`node`], which builds every service once;
//! - [`wire`]: generated protobuf/gRPC code, conversions, the one error mapping;
//! - edges that translate and decide nothing: `rpc` (gRPC, tonic), `quic` (the QUIC data
//!   plane, quinn), `console` (the operator web console, axum), [`cli`].
//!
//! It does not: talk to any network but its own listeners and configured OAuth token
//! endpoints, or keep state outside its data directory and the OS keychain.

#![forbid(unsafe_code)]

/// Declares crate-private modules that the `testkit` feature opens to this crate's own tests,
/// benches and fuzz targets (white-box tests reach into the domain through them). A default
/// build — the binary, and any other user of the library — sees only what lib.rs exports.
macro_rules! internal_modules {
    ($($(#[$meta:meta])* $name:ident;)*) => {$(
        $(#[$meta])*
        #[cfg(feature = "testkit")]
        pub mod $name;
        $(#[$meta])*
        #[cfg(not(feature = "testkit"))]
        pub(crate) mod $name;
    )*};
}

internal_modules! {
    access;
    audit;
    auth;
    backup;
    config;
    console;
    datadir_lock;
    devices;
    error_chain;
    events;
    fsutil;
    identity;
    integrity;
    limits;
    login;
    metrics;
    net_limits;
    node_backup;
    pairing;
    policy;
    quic;
    ratelimit;
    rpc;
    storage;
    store_error;
    unix_time;
    vault;
}

pub mod cli;
#[doc(hidden)]
pub mod fuzzing;
pub mod node;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod wire;
