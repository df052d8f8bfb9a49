//! Device minting: an identity, a TLS key and CSR, a certificate from a CA, and (for a
//! registered device) the registry row pairing approval would write.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::identity::ca::{DeviceCa, generate_tls_key_and_csr};
use crate::identity::{Device, DeviceId, DeviceIdentity, DeviceStatus, Role};
use crate::node::Node;
use crate::vault::Scope;

/// A registered device's client credentials.
#[derive(Debug, Clone)]
pub struct Creds {
    /// Its id.
    pub id: DeviceId,
    /// Its client certificate, PEM.
    pub cert_pem: String,
    /// Its TLS key, PKCS#8 PEM.
    pub key_pem: String,
    /// Its Ed25519/X25519 identity (renewal proofs, pairing polls).
    pub identity: Arc<DeviceIdentity>,
}

/// A device's keys before it has a certificate: what a device brings to pairing.
#[derive(Debug)]
pub struct DeviceKeys {
    /// Its identity.
    pub identity: DeviceIdentity,
    /// Its TLS key, PKCS#8 PEM.
    pub key_pem: String,
    /// A CSR for the TLS key, naming the device id.
    pub csr_pem: String,
}

impl DeviceKeys {
    /// A fresh identity with a TLS key and CSR.
    pub fn generate() -> DeviceKeys {
        let identity = DeviceIdentity::generate().unwrap();
        let (key_pem, csr_pem) = generate_tls_key_and_csr(identity.id()).unwrap();
        DeviceKeys { identity, key_pem: key_pem.to_string(), csr_pem }
    }
}

/// A certificate for `id` with a fresh TLS key, issued by `ca` at `at` for `lifetime`:
/// `(cert_pem, key_pem, not_after)`. Nothing is registered.
pub fn issue(
    ca: &DeviceCa,
    id: DeviceId,
    role: Role,
    lifetime: Duration,
    at: SystemTime,
) -> (String, String, SystemTime) {
    let (key_pem, csr_pem) = generate_tls_key_and_csr(id).unwrap();
    let issued = ca.issue_client_certificate(&csr_pem, id, role, lifetime, at).unwrap();
    (issued.cert_pem, key_pem.to_string(), issued.not_after)
}

/// What to mint: [`Minting::new`] is an active device certificated now for an hour.
#[derive(Debug, Clone)]
pub struct Minting<'a> {
    /// Its role.
    pub role: Role,
    /// Its name in the registry.
    pub name: &'a str,
    /// Its scopes.
    pub scopes: &'a [&'a str],
    /// When its certificate was issued (and it was paired).
    pub issued_at: SystemTime,
    /// How long its certificate is valid.
    pub lifetime: Duration,
}

impl<'a> Minting<'a> {
    /// A device with `role`, `name` and `scopes`, issued now for an hour.
    pub fn new(role: Role, name: &'a str, scopes: &'a [&'a str]) -> Self {
        Minting { role, name, scopes, issued_at: SystemTime::now(), lifetime: Duration::from_secs(3600) }
    }
}

/// Registers a device with `role` and `scopes` on `node` (as pairing approval would) and
/// returns its credentials.
pub async fn mint(node: &Node, role: Role, name: &str, scopes: &[&str]) -> Creds {
    mint_with(node, &Minting::new(role, name, scopes)).await.0
}

/// [`mint`] with every detail chosen; also returns the registry row.
pub async fn mint_with(node: &Node, minting: &Minting<'_>) -> (Creds, Device) {
    let identity = DeviceIdentity::generate().unwrap();
    let id = identity.id();
    let (cert_pem, key_pem, not_after) =
        issue(node.identity.ca(), id, minting.role, minting.lifetime, minting.issued_at);
    let device = Device {
        id,
        name: minting.name.to_owned(),
        fingerprint: identity.fingerprint(),
        signing_public_key: identity.signing_public_key(),
        role: minting.role,
        status: DeviceStatus::Active,
        paired_at: minting.issued_at,
        certificate_expires_at: not_after,
        revoked_at: None,
        revoke_reason: None,
        scopes: minting.scopes.iter().map(|s| Scope::parse(s).unwrap()).collect(),
    };
    node.core.store.insert_device(&device).await.unwrap();
    (Creds { id, cert_pem, key_pem, identity: Arc::new(identity) }, device)
}
