//! Helpers shared by the benches: a private data dir, a registered peer, the Cedar workload and
//! the QUIC scenario (its raw quinn baseline included). Each bench uses part of it.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod policy;
pub mod quic;

use std::time::{Duration, SystemTime};

use palyra::identity::ca::generate_tls_key_and_csr;
use palyra::identity::{Device, DeviceId, DeviceIdentity, DeviceStatus, Role};
use palyra::node::Node;
use palyra::vault::Scope;

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

/// Client TLS material of a registered device.
#[derive(Debug, Clone)]
pub struct Creds {
    pub id: DeviceId,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Registers a device with `role` and `scopes` (as pairing approval would) and returns its
/// client certificate and key.
pub async fn register_device(node: &Node, role: Role, scopes: &[&str]) -> Creds {
    let identity = DeviceIdentity::generate().unwrap();
    let id = identity.id();
    let (key_pem, csr_pem) = generate_tls_key_and_csr(id).unwrap();
    let now = SystemTime::now();
    let issued = node
        .identity
        .ca()
        .issue_client_certificate(&csr_pem, id, role, Duration::from_secs(3600), now)
        .unwrap();
    node.core
        .store
        .insert_device(&Device {
            id,
            name: "bench-peer".into(),
            fingerprint: identity.fingerprint(),
            signing_public_key: identity.signing_public_key(),
            role,
            status: DeviceStatus::Active,
            paired_at: now,
            certificate_expires_at: issued.not_after,
            revoked_at: None,
            revoke_reason: None,
            scopes: scopes.iter().map(|s| Scope::parse(s).unwrap()).collect(),
        })
        .await
        .unwrap();
    Creds { id, cert_pem: issued.cert_pem, key_pem: key_pem.to_string() }
}
