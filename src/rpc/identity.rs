//! `palyra.identity.v1.IdentityService`: the node's identity, who the caller is, the device
//! registry, revocation, and certificate renewal (over mTLS before expiry, or anonymously with
//! a signed challenge after).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ring::rand::SecureRandom;
use tonic::{Code, Request, Response, Status};

use super::authz::{Gate, GateExt, peer_of};
use super::convert::{device_id, timestamp};
use super::pb::common::v1::ErrorReason;
use super::pb::identity::v1::{self as pb, identity_service_server::IdentityService};
use super::peer::Peer;
use super::status::{device_revoked, internal, invalid_argument, status, unknown_device};
use crate::admin::Admin;
use crate::identity::ca::{Csr, DEFAULT_CLIENT_CERT_VALIDITY};
use crate::identity::{
    Device, DeviceId, DeviceStatus, IdentityError, NodeIdentity, Principal, renewal_proof_message,
    verify_signature,
};
use crate::policy::Resource;
use crate::storage::Store;

const SERVICE: &str = "palyra.identity.v1.IdentityService";
/// How long a renewal challenge may be used.
const CHALLENGE_TTL: Duration = Duration::from_secs(60);
/// Most outstanding challenges; beyond this, new ones are refused until old ones expire.
const MAX_CHALLENGES: usize = 10_000;
/// Most outstanding challenges for one device id.
const MAX_CHALLENGES_PER_DEVICE: usize = 4;

/// A device as the wire shows it.
pub fn device_to_pb(d: &Device) -> pb::Device {
    pb::Device {
        device_id: d.id.to_string(),
        name: d.name.clone(),
        fingerprint: d.fingerprint.clone(),
        role: d.role.to_string(),
        status: match d.status {
            DeviceStatus::Active => pb::DeviceStatus::Active,
            DeviceStatus::Revoked => pb::DeviceStatus::Revoked,
        } as i32,
        paired_at: Some(timestamp(d.paired_at)),
        certificate_expires_at: Some(timestamp(d.certificate_expires_at)),
        revoked_at: d.revoked_at.map(timestamp),
        revoke_reason: d.revoke_reason.clone().unwrap_or_default(),
        scopes: d.scopes.iter().map(ToString::to_string).collect(),
    }
}

/// The identity service.
#[derive(Debug, Clone)]
pub struct IdentityApi {
    node: Arc<NodeIdentity>,
    store: Store,
    gate: Gate,
    admin: Admin,
    challenges: Arc<Mutex<Challenges>>,
}

/// Outstanding renewal challenges: challenge → (device it was issued for, expiry).
type Challenges = HashMap<[u8; 32], (DeviceId, SystemTime)>;

impl IdentityApi {
    /// The service for `node`, with its registry in `store`; the operator's actions through
    /// `admin`.
    pub fn new(node: Arc<NodeIdentity>, store: Store, gate: Gate, admin: Admin) -> Self {
        IdentityApi { node, store, gate, admin, challenges: Arc::default() }
    }

    fn check_device(&self, peer: &Peer, method: &str, id: DeviceId) -> Result<(), Status> {
        self.gate.check(peer, &format!("{SERVICE}/{method}"), &Resource::Device(id))
    }

    /// Takes a challenge out of the table (single use) if it was issued for `id` and is fresh.
    fn redeem(&self, challenge: &[u8], id: DeviceId, now: SystemTime) -> bool {
        let Ok(key) = <[u8; 32]>::try_from(challenge) else { return false };
        let Ok(mut table) = self.challenges.lock() else { return false };
        matches!(table.remove(&key), Some((for_id, expires)) if for_id == id && expires > now)
    }

    async fn issue(
        &self,
        csr_pem: &str,
        device: &Device,
        now: SystemTime,
    ) -> Result<pb::RenewCertificateResponse, Status> {
        let issued = self.node.ca().issue_client_certificate(
            csr_pem,
            device.id,
            device.role,
            DEFAULT_CLIENT_CERT_VALIDITY,
            now,
        )?;
        self.store.set_certificate_expiry(device.id, issued.not_after).await?;
        self.gate.peers.invalidate(device.id);
        tracing::info!(device_id = %device.id, "certificate renewed");
        Ok(pb::RenewCertificateResponse {
            certificate_pem: issued.cert_pem,
            ca_certificate_pem: self.node.ca().certificate_pem().to_owned(),
            expires_at: Some(timestamp(issued.not_after)),
        })
    }
}

#[tonic::async_trait]
impl IdentityService for IdentityApi {
    async fn get_node_identity(
        &self,
        _request: Request<pb::GetNodeIdentityRequest>,
    ) -> Result<Response<pb::GetNodeIdentityResponse>, Status> {
        let device = self.node.device();
        Ok(Response::new(pb::GetNodeIdentityResponse {
            device_id: self.node.id().to_string(),
            signing_public_key: device.signing_public_key().to_vec(),
            agreement_public_key: device.agreement_public_key().to_vec(),
            fingerprint: device.fingerprint(),
            ca_certificate_pem: self.node.ca().certificate_pem().to_owned(),
            ca_fingerprint: self.node.ca().fingerprint().to_owned(),
        }))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let peer = peer_of(&request)?;
        Ok(Response::new(match peer.principal {
            Principal::Anonymous => {
                pb::WhoAmIResponse { principal_type: "Anonymous".into(), ..Default::default() }
            }
            Principal::Device { id, role, fingerprint } => pb::WhoAmIResponse {
                principal_type: "Device".into(),
                device_id: id.to_string(),
                role: role.to_string(),
                fingerprint,
            },
        }))
    }

    async fn list_devices(
        &self,
        _request: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let devices = self.store.devices().await?;
        Ok(Response::new(pb::ListDevicesResponse { devices: devices.iter().map(device_to_pb).collect() }))
    }

    async fn get_device(
        &self,
        request: Request<pb::GetDeviceRequest>,
    ) -> Result<Response<pb::GetDeviceResponse>, Status> {
        let id = device_id("device_id", &request.get_ref().device_id)?;
        self.check_device(&peer_of(&request)?, "GetDevice", id)?;
        let device = self.store.device(id).await?.ok_or(IdentityError::NotFound(id))?;
        Ok(Response::new(pb::GetDeviceResponse { device: Some(device_to_pb(&device)) }))
    }

    async fn revoke_device(
        &self,
        request: Request<pb::RevokeDeviceRequest>,
    ) -> Result<Response<pb::RevokeDeviceResponse>, Status> {
        let peer = peer_of(&request)?;
        let req = request.into_inner();
        let id = device_id("device_id", &req.device_id)?;
        let device = self.admin.revoke_device(&peer, id, &req.reason).await?;
        Ok(Response::new(pb::RevokeDeviceResponse { device: Some(device_to_pb(&device)) }))
    }

    async fn renew_certificate(
        &self,
        request: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::RenewCertificateResponse>, Status> {
        let peer = peer_of(&request)?;
        let req = request.into_inner();
        let now = SystemTime::now();
        match (&peer.principal, req.proof) {
            (Principal::Device { id, .. }, None) => {
                self.check_device(&peer, "RenewCertificate", *id)?;
                let device = self.store.device(*id).await?.ok_or(IdentityError::NotFound(*id))?;
                Ok(Response::new(self.issue(&req.csr_pem, &device, now).await?))
            }
            (Principal::Device { .. }, Some(_)) => {
                Err(invalid_argument("proof", "a proof is only for renewing without a valid certificate"))
            }
            (Principal::Anonymous, None) => Err(status(
                Code::Unauthenticated,
                ErrorReason::RenewalProofInvalid,
                "renewing without a valid client certificate needs a proof (see GetRenewalChallenge)",
            )),
            (Principal::Anonymous, Some(proof)) => {
                let id = device_id("proof.device_id", &proof.device_id)?;
                let bad_proof = || {
                    status(
                        Code::Unauthenticated,
                        ErrorReason::RenewalProofInvalid,
                        "the renewal proof does not verify",
                    )
                };
                if !self.redeem(&proof.challenge, id, now) {
                    return Err(bad_proof());
                }
                let csr = Csr::parse_pem(&req.csr_pem)?;
                let device = self.store.device(id).await?.ok_or_else(|| unknown_device(Some(id)))?;
                if device.status == DeviceStatus::Revoked {
                    return Err(device_revoked(id));
                }
                let message = renewal_proof_message(&proof.challenge, csr.der());
                if !verify_signature(&device.signing_public_key, &message, &proof.signature) {
                    return Err(bad_proof());
                }
                let context = serde_json::json!({ "renewal_proof": true });
                self.gate.check_with(
                    &peer,
                    &format!("{SERVICE}/RenewCertificate"),
                    &Resource::Device(id),
                    Some(&context),
                )?;
                Ok(Response::new(self.issue(&req.csr_pem, &device, now).await?))
            }
        }
    }

    async fn get_renewal_challenge(
        &self,
        request: Request<pb::GetRenewalChallengeRequest>,
    ) -> Result<Response<pb::GetRenewalChallengeResponse>, Status> {
        let id = device_id("device_id", &request.get_ref().device_id)?;
        let now = SystemTime::now();
        let mut challenge = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut challenge)
            .map_err(|_| internal("random generator failed"))?;
        let expires = now + CHALLENGE_TTL;
        {
            let mut table = self.challenges.lock().map_err(|_| internal("challenge table poisoned"))?;
            table.retain(|_, (_, expires)| *expires > now);
            // Per device, so that flooding one id cannot starve the renewals of the others.
            if table.values().filter(|(for_id, _)| *for_id == id).count() >= MAX_CHALLENGES_PER_DEVICE {
                return Err(status(
                    Code::ResourceExhausted,
                    ErrorReason::RateLimited,
                    format!(
                        "too many outstanding renewal challenges for device {id}; use one or wait a minute"
                    ),
                ));
            }
            if table.len() >= MAX_CHALLENGES {
                return Err(status(
                    Code::ResourceExhausted,
                    ErrorReason::RateLimited,
                    "too many outstanding renewal challenges; retry in a minute",
                ));
            }
            table.insert(challenge, (id, expires));
        }
        Ok(Response::new(pb::GetRenewalChallengeResponse {
            challenge: challenge.to_vec(),
            expires_at: Some(timestamp(expires)),
        }))
    }
}
