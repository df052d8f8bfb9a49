//! The device registry's application service: who is registered, revocation, and certificate
//! renewal (over mTLS before expiry, or anonymously with a signed challenge after).
//!
//! `Registry` owns the flows and their limits: the resource checks (through the access `Gate`,
//! which also records them in the audit log), the audit flush before a write, the renewal
//! challenges (`renewal`), issuing certificates with the node's CA, and keeping the peer cache
//! current after a change. The rows are behind `DeviceStore` (`store`); the gRPC and console
//! edges parse, call and convert.
//!
//! - `renewal` — the renewal challenges and their limits, the proof a device sends;
//! - `store` — what the registry needs from a database (`DeviceStore`);
//! - `error` — `RegistryError`, the service's refusals around the domain's `IdentityError`.
//!
//! This module knows no transport and no SQL. The domain it serves (device ids, keys, the CA,
//! the node's identity) is `crate::identity`, which knows nothing of this service, the gate or
//! policy; `RegistryError` is mapped to the wire in `wire::status`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use ring::rand::SecureRandom;

mod error;
mod renewal;
pub(crate) mod store;

pub(crate) use error::RegistryError;
pub(crate) use renewal::{RenewalChallenge, RenewalProof};
pub(crate) use store::DeviceStore;

use renewal::{CHALLENGE_TTL, Challenges};

use crate::access::{Denied, Gate, Peer};
use crate::identity::ca::{Csr, IssuedCert};
use crate::identity::{
    Device, DeviceId, DeviceStatus, IdentityError, NodeIdentity, Principal, renewal_proof_message,
    verify_signature,
};
use crate::identity::MAX_REASON_BYTES;
use crate::policy::{Resource, actions};

/// The device registry.
#[derive(Debug)]
pub(crate) struct Registry {
    node: Arc<NodeIdentity>,
    store: Arc<dyn DeviceStore>,
    gate: Gate,
    challenges: Mutex<Challenges>,
}

impl Registry {
    /// The registry of `node` (whose CA issues the certificates), with its rows in `store`;
    /// resource checks, audit and the peer cache through `gate`.
    pub(crate) fn new(node: Arc<NodeIdentity>, store: Arc<dyn DeviceStore>, gate: Gate) -> Self {
        Registry { node, store, gate, challenges: Mutex::default() }
    }

    /// The node's identity and CA.
    pub(crate) fn node(&self) -> &Arc<NodeIdentity> {
        &self.node
    }

    /// Every registered device, revoked ones included, oldest pairing first.
    pub(crate) async fn devices(&self) -> Result<Vec<Device>, RegistryError> {
        Ok(self.store.list().await?)
    }

    /// Device `id` for `caller` (resource check on the device).
    pub(crate) async fn device(&self, caller: &Peer, id: DeviceId) -> Result<Device, RegistryError> {
        self.check(caller, actions::GET_DEVICE, id, None)?;
        Ok(self.store.get(id).await?.ok_or(IdentityError::NotFound(id))?)
    }

    /// Revokes device `id` for `caller` (resource check on the device; never the caller's own
    /// device): its next request is refused and its open streams end.
    pub(crate) async fn revoke(
        &self,
        caller: &Peer,
        id: DeviceId,
        why: &str,
    ) -> Result<Device, RegistryError> {
        if why.len() > MAX_REASON_BYTES {
            return Err(RegistryError::InvalidField {
                field: "reason",
                message: "longer than 1024 bytes".to_owned(),
            });
        }
        self.gate
            .decide(caller, actions::REVOKE_DEVICE, &Resource::Device(id), None)
            .map_err(refused_device)?;
        if caller.principal.device_id() == Some(id) {
            return Err(RegistryError::SelfRevocation);
        }
        self.gate.audit_before_write().await.map_err(refused_device)?;
        let device = self.store.revoke(id, why.to_owned(), SystemTime::now()).await?;
        self.gate.peers.revoked(id);
        tracing::warn!(device_id = %id, reason = %why, "device revoked");
        Ok(device)
    }

    /// A new certificate for the key of `csr_pem`: for the calling device over mTLS (no
    /// `proof`), or for the device a `proof` names when the caller has no valid certificate.
    pub(crate) async fn renew(
        &self,
        caller: &Peer,
        csr_pem: &str,
        proof: Option<RenewalProof>,
    ) -> Result<IssuedCert, RegistryError> {
        let now = SystemTime::now();
        match (&caller.principal, proof) {
            (Principal::Device { id, .. }, None) => {
                self.check(caller, actions::RENEW_CERTIFICATE, *id, None)?;
                let device = self.store.get(*id).await?.ok_or(IdentityError::NotFound(*id))?;
                self.issue(csr_pem, &device, now).await
            }
            (Principal::Device { .. }, Some(_)) => Err(RegistryError::InvalidField {
                field: "proof",
                message: "a proof is only for renewing without a valid certificate".to_owned(),
            }),
            (Principal::Anonymous, None) => Err(RegistryError::RenewalProofInvalid(
                "renewing without a valid client certificate needs a proof (see GetRenewalChallenge)",
            )),
            (Principal::Anonymous, Some(proof)) => {
                let id = DeviceId::parse(&proof.device_id).map_err(|e| RegistryError::InvalidField {
                    field: "proof.device_id",
                    message: e.to_string(),
                })?;
                let bad_proof = || RegistryError::RenewalProofInvalid("the renewal proof does not verify");
                if !self.redeem(&proof.challenge, id, now) {
                    return Err(bad_proof());
                }
                let csr = Csr::parse_pem(csr_pem)?;
                let device = self.store.get(id).await?.ok_or(RegistryError::UnknownDevice(id))?;
                if device.status == DeviceStatus::Revoked {
                    return Err(RegistryError::Revoked(id));
                }
                let message = renewal_proof_message(&proof.challenge, csr.der());
                if !verify_signature(&device.signing_public_key, &message, &proof.signature) {
                    return Err(bad_proof());
                }
                let context = serde_json::json!({ "renewal_proof": true });
                self.check(caller, actions::RENEW_CERTIFICATE, id, Some(&context))?;
                self.issue(csr_pem, &device, now).await
            }
        }
    }

    /// A fresh renewal challenge for device `id`, charged to `caller`'s address (see
    /// [`renewal`]).
    pub(crate) async fn renewal_challenge(
        &self,
        caller: &Peer,
        id: DeviceId,
    ) -> Result<RenewalChallenge, RegistryError> {
        let peer = caller.address.map(|a| a.ip());
        let now = SystemTime::now();
        self.challenges()?.admit(peer, Instant::now())?;
        let mut challenge = [0u8; 32];
        ring::rand::SystemRandom::new().fill(&mut challenge).map_err(|_| IdentityError::Random)?;
        // Only a registered device gets a stored challenge (a revoked one too, so that its
        // renewal is told it is revoked); any other id gets one that nothing redeems
        // (RenewCertificate then refuses the proof as for a wrong challenge).
        if self.store.get(id).await?.is_some() {
            self.challenges()?.insert(challenge, id, peer, now)?;
        }
        Ok(RenewalChallenge { challenge, expires_at: now + CHALLENGE_TTL })
    }

    fn challenges(&self) -> Result<MutexGuard<'_, Challenges>, RegistryError> {
        self.challenges.lock().map_err(|_| RegistryError::Internal("challenge table poisoned"))
    }

    /// Takes a challenge out of the table (single use) if it was issued for `id` and is fresh.
    fn redeem(&self, challenge: &[u8], id: DeviceId, now: SystemTime) -> bool {
        let Ok(mut challenges) = self.challenges.lock() else { return false };
        challenges.redeem(challenge, id, now)
    }

    /// Asks the gate about `action` on device `id` for `caller`.
    fn check(
        &self,
        caller: &Peer,
        action: &str,
        id: DeviceId,
        context: Option<&serde_json::Value>,
    ) -> Result<(), RegistryError> {
        self.gate.decide(caller, action, &Resource::Device(id), context).map_err(|denied| {
            RegistryError::Denied { denied, anonymous: matches!(caller.principal, Principal::Anonymous) }
        })
    }

    async fn issue(
        &self,
        csr_pem: &str,
        device: &Device,
        now: SystemTime,
    ) -> Result<IssuedCert, RegistryError> {
        let issued = self.node.ca().issue_client_certificate(
            csr_pem,
            device.id,
            device.role,
            self.node.device_certificate_lifetime(),
            now,
        )?;
        self.store.set_certificate_expiry(device.id, issued.not_after).await?;
        self.gate.peers.invalidate(device.id);
        tracing::info!(device_id = %device.id, "certificate renewed");
        Ok(issued)
    }
}

/// A refusal of an operator's action, answered as to a device (the edge's method gate has
/// already refused anonymous callers).
fn refused_device(denied: Denied) -> RegistryError {
    RegistryError::Denied { denied, anonymous: false }
}
