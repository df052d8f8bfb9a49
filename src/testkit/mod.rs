//! The one harness of the integration tests, the benches and the fuzz targets (compiled only with
//! the `testkit` feature, which `cargo test` and `cargo bench` turn on through the crate's
//! dev-dependency on itself).
//!
//! One way each to: make a private temp data dir ([`private_tempdir`]), open a node in it
//! ([`open_node`], [`open_core`]) or start one serving gRPC on `127.0.0.1:0` ([`TestNode`],
//! [`GrpcServing`], [`QuicServing`]), run the `palyra` binary and `palyra serve` as a child and
//! read its addresses ([`Palyra`], [`palyra_bin!`](crate::palyra_bin)), mint a registered device
//! of any role and scopes ([`mint`], [`Creds`]), build client TLS ([`tls`]), and draw
//! reproducible random numbers ([`Rng`]). [`NodeInternals`] is the one door tests use to reach
//! inside a node (the store) for what no service offers: revoke behind the edges' back, read a
//! pairing code's row, close the database before reopening it.
//!
//! It does not assert anything about behaviour, and nothing outside tests, benches and fuzz
//! targets may use it: it unwraps freely (a failed set-up is a failed test) and writes device
//! rows straight into the registry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod device;
pub mod fuzz;
mod node;
mod rng;
mod serve;
pub mod tls;

pub use device::{Creds, DeviceKeys, Minting, issue, mint, mint_with};
pub use node::{
    GrpcServing, NodeInternals, QuicServing, TestNode, audit_records, fill_audit_log, node_options,
    open_core, open_node, try_open_core, try_open_node, uncached_node_options,
};
pub use rng::{Rng, seed_from_env, time_seed};
pub use serve::{Palyra, Serving, parse_serving, spawn_serving};

#[doc(inline)]
pub use crate::palyra_bin;

/// A temp dir that passes the node's permission checks (0700).
pub fn private_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    dir
}

/// Installs the ring provider as the process default (what `palyra serve` does at start); a
/// second call is a no-op.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The `ErrorInfo.reason` of a status, or "".
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status.get_error_details().error_info().map(|i| i.reason.clone()).unwrap_or_default()
}
