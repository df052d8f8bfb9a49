//! The node's own identity: its [`DeviceIdentity`], its [`DeviceCa`] and its current TLS
//! server certificate, created on first run and sealed in a [`SecretStore`].
//!
//! Creation is idempotent and never overwrites: an existing identity or CA is always loaded,
//! and a concurrent creator that wins the race is deferred to. Only the server certificate is
//! ever replaced: when it nears expiry, no longer lists the configured names, or was not
//! issued by this CA.
//!
//! This module does not build rustls configs (the edges do, from
//! [`NodeIdentity::server_cert_chain`] and [`NodeIdentity::server_private_key`]) and reads no
//! clock.

use std::time::{Duration, SystemTime};

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::ca::{self, DeviceCa, IssuedKeyPair};
use super::device::DeviceIdentity;
use super::sealed::SecretStore;
use super::{DeviceId, IdentityError};

/// Identity-store entry of the node's [`DeviceIdentity`].
pub const DEVICE_IDENTITY_STORE_NAME: &str = "device.identity";
/// Identity-store entry of the server certificate and key (one PEM bundle).
pub const SERVER_STORE_NAME: &str = "server.pem";

/// The node's keys, CA and server certificate, and how long the device certificates its CA
/// issues are valid.
#[derive(Debug)]
pub struct NodeIdentity {
    device: DeviceIdentity,
    ca: DeviceCa,
    server: IssuedKeyPair,
    device_certificate_lifetime: Duration,
}

impl NodeIdentity {
    /// Loads the node's identity from `store`, creating what is missing; re-issues the server
    /// certificate when it needs renewal or its names differ from `extra_names` (plus the
    /// defaults of [`ca::server_names`]), and stores the new one.
    pub fn load_or_create(
        store: &dyn SecretStore,
        extra_names: &[String],
        now: SystemTime,
    ) -> Result<Self, IdentityError> {
        let device = load_or_create_device(store)?;
        let ca = load_or_create_ca(store, device.id(), now)?;
        let device_certificate_lifetime = ca::DEFAULT_CLIENT_CERT_VALIDITY;
        let server = match store.get(SERVER_STORE_NAME)? {
            Some(bytes) => Some(IssuedKeyPair::from_pem_bundle(utf8(&bytes, "server bundle")?)?),
            None => None,
        };
        let mut identity = match server {
            Some(server) => NodeIdentity { device, ca, server, device_certificate_lifetime },
            None => {
                let server = ca.issue_server_certificate(extra_names, now)?;
                store.put(SERVER_STORE_NAME, server.to_pem_bundle().as_bytes())?;
                return Ok(NodeIdentity { device, ca, server, device_certificate_lifetime });
            }
        };
        identity.renew_server_certificate_if_needed(store, extra_names, now)?;
        Ok(identity)
    }

    /// Re-issues and stores the server certificate if it needs renewal, lacks or has extra
    /// names, or was not issued by this CA. Returns whether it did. A long-running server
    /// calls this periodically and reloads its TLS config when it returns `true`.
    pub fn renew_server_certificate_if_needed(
        &mut self,
        store: &dyn SecretStore,
        extra_names: &[String],
        now: SystemTime,
    ) -> Result<bool, IdentityError> {
        let current = &self.server;
        let stale = current.needs_renewal(now)
            || !self.ca.signed(&current.cert_der)
            || ca::certificate_server_names(&current.cert_der)? != ca::server_names(extra_names)?;
        if !stale {
            return Ok(false);
        }
        let server = self.ca.issue_server_certificate(extra_names, now)?;
        store.put(SERVER_STORE_NAME, server.to_pem_bundle().as_bytes())?;
        tracing::info!(not_after = ?server.not_after, "issued a new server certificate");
        self.server = server;
        Ok(true)
    }

    /// The node's device identity (its id, Ed25519 and X25519 keys).
    pub fn device(&self) -> &DeviceIdentity {
        &self.device
    }

    /// The node's id.
    pub fn id(&self) -> DeviceId {
        self.device.id()
    }

    /// The device CA.
    pub fn ca(&self) -> &DeviceCa {
        &self.ca
    }

    /// How long the client certificates issued to devices (at pairing approval and at
    /// renewal) are valid: [`ca::DEFAULT_CLIENT_CERT_VALIDITY`] unless configured with
    /// [`Self::with_device_certificate_lifetime`].
    pub fn device_certificate_lifetime(&self) -> Duration {
        self.device_certificate_lifetime
    }

    /// This identity issuing device certificates valid for `lifetime` (`palyra.toml`
    /// `device_certificate_lifetime_seconds`, bounded there).
    #[must_use]
    pub fn with_device_certificate_lifetime(mut self, lifetime: Duration) -> Self {
        self.device_certificate_lifetime = lifetime;
        self
    }

    /// The current server certificate and key.
    pub fn server_certificate(&self) -> &IssuedKeyPair {
        &self.server
    }

    /// The certificate chain to serve: the server certificate alone (clients hold the CA
    /// certificate as their root).
    pub fn server_cert_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.server.cert_der.clone()]
    }

    /// The server's private key for rustls.
    pub fn server_private_key(&self) -> Result<PrivateKeyDer<'static>, IdentityError> {
        self.server.private_key_der()
    }
}

fn load_or_create_device(store: &dyn SecretStore) -> Result<DeviceIdentity, IdentityError> {
    if let Some(bytes) = store.get(DEVICE_IDENTITY_STORE_NAME)? {
        return DeviceIdentity::from_bytes(&bytes);
    }
    let fresh = DeviceIdentity::generate()?;
    match store.create(DEVICE_IDENTITY_STORE_NAME, &fresh.to_bytes()) {
        Ok(()) => {
            tracing::info!(device_id = %fresh.id(), "created the node identity");
            Ok(fresh)
        }
        // Another process created it first: theirs is the identity.
        Err(IdentityError::AlreadyExists(_)) => {
            let bytes = store.get(DEVICE_IDENTITY_STORE_NAME)?.ok_or_else(|| IdentityError::Malformed {
                what: "identity store",
                detail: format!("{DEVICE_IDENTITY_STORE_NAME} vanished while being created"),
            })?;
            DeviceIdentity::from_bytes(&bytes)
        }
        Err(e) => Err(e),
    }
}

fn load_or_create_ca(
    store: &dyn SecretStore,
    node_id: DeviceId,
    now: SystemTime,
) -> Result<DeviceCa, IdentityError> {
    if let Some(ca) = DeviceCa::load(store)? {
        return Ok(ca);
    }
    let fresh = DeviceCa::create(node_id, now)?;
    match fresh.save(store) {
        Ok(()) => {
            tracing::info!(fingerprint = fresh.fingerprint(), "created the device CA");
            Ok(fresh)
        }
        Err(IdentityError::AlreadyExists(_)) => {
            DeviceCa::load(store)?.ok_or_else(|| IdentityError::Malformed {
                what: "identity store",
                detail: format!("{} vanished while being created", ca::CA_STORE_NAME),
            })
        }
        Err(e) => Err(e),
    }
}

fn utf8<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a str, IdentityError> {
    std::str::from_utf8(bytes).map_err(|_| IdentityError::Malformed { what, detail: "not UTF-8".into() })
}

#[cfg(all(test, unix))]
#[allow(clippy::expect_used, reason = "test setup fails loudly")]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use super::*;
    use crate::identity::ca::SERVER_CERT_VALIDITY;
    use crate::identity::sealed::{FilesystemSecretStore, InMemorySecretStore};
    use crate::vault::{KeyHierarchy, RootKey};

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn created_once_then_loaded_unchanged() -> Result<(), IdentityError> {
        let store = InMemorySecretStore::new();
        let now = SystemTime::now();
        let first = NodeIdentity::load_or_create(&store, &[], now)?;
        let again = NodeIdentity::load_or_create(&store, &[], now + DAY)?;
        assert_eq!(again.id(), first.id());
        assert_eq!(again.device().signing_public_key(), first.device().signing_public_key());
        assert_eq!(again.ca().fingerprint(), first.ca().fingerprint());
        assert_eq!(again.server_certificate().cert_der, first.server_certificate().cert_der);
        assert!(first.ca().certificate_pem().contains("BEGIN CERTIFICATE"));
        assert_eq!(first.server_cert_chain(), vec![first.server_certificate().cert_der.clone()]);
        first.server_private_key()?;
        let shown = format!("{first:?}");
        assert!(!shown.contains("PRIVATE KEY") && shown.contains("redacted"), "{shown}");
        Ok(())
    }

    #[test]
    fn the_server_certificate_is_renewed_and_stored() -> Result<(), IdentityError> {
        let store = InMemorySecretStore::new();
        let now = SystemTime::now();
        let mut node = NodeIdentity::load_or_create(&store, &[], now)?;
        let original = node.server_certificate().cert_der.clone();
        assert!(!node.renew_server_certificate_if_needed(&store, &[], now + 59 * DAY)?);

        // With less than a third of its lifetime left, a new one is issued and stored.
        let later = now + SERVER_CERT_VALIDITY - 29 * DAY;
        let renewed = NodeIdentity::load_or_create(&store, &[], later)?;
        assert_ne!(renewed.server_certificate().cert_der, original);
        assert!(renewed.ca().signed(&renewed.server_certificate().cert_der));
        let reloaded = NodeIdentity::load_or_create(&store, &[], later)?;
        assert_eq!(reloaded.server_certificate().cert_der, renewed.server_certificate().cert_der);
        assert_eq!(reloaded.ca().fingerprint(), node.ca().fingerprint());

        // New configured names make a new certificate too.
        let names = vec!["node.example".to_owned()];
        assert!(node.renew_server_certificate_if_needed(&store, &names, now)?);
        let stored = NodeIdentity::load_or_create(&store, &names, now)?;
        assert_eq!(stored.server_certificate().cert_der, node.server_certificate().cert_der);
        Ok(())
    }

    #[test]
    fn a_server_certificate_from_another_ca_is_replaced() -> Result<(), IdentityError> {
        let store = InMemorySecretStore::new();
        let now = SystemTime::now();
        let node = NodeIdentity::load_or_create(&store, &[], now)?;
        let stranger = DeviceCa::create(DeviceId::generate(), now)?;
        let foreign = stranger.issue_server_certificate(&[], now)?;
        store.put(SERVER_STORE_NAME, foreign.to_pem_bundle().as_bytes())?;
        let again = NodeIdentity::load_or_create(&store, &[], now)?;
        assert_ne!(again.server_certificate().cert_der, foreign.cert_der);
        assert!(node.ca().signed(&again.server_certificate().cert_der));
        Ok(())
    }

    #[test]
    fn survives_a_restart_on_disk_and_refuses_tampering() -> Result<(), IdentityError> {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let dir = tmp.path().join("identity");
        let key = || KeyHierarchy::new(&RootKey::from_bytes([9; 32])).identity_store_key();
        let now = SystemTime::now();

        let first = NodeIdentity::load_or_create(&FilesystemSecretStore::open(&dir, key())?, &[], now)?;
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("read dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["ca.pem", "device.identity", "server.pem"]);

        let store = FilesystemSecretStore::open(&dir, key())?;
        let again = NodeIdentity::load_or_create(&store, &[], now)?;
        assert_eq!(again.id(), first.id());
        assert_eq!(again.ca().fingerprint(), first.ca().fingerprint());
        assert_eq!(again.server_certificate().cert_der, first.server_certificate().cert_der);

        // A tampered CA is an integrity error, never a reason to make a new CA.
        let path = dir.join("ca.pem");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[40] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(
            NodeIdentity::load_or_create(&store, &[], now),
            Err(IdentityError::Integrity { .. })
        ));
        Ok(())
    }
}
