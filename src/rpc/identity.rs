//! `palyra.identity.v1.IdentityService`: the node's identity, who the caller is, the device
//! registry, revocation, and certificate renewal (over mTLS before expiry, or anonymously with
//! a signed challenge after).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

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
use crate::net_limits::address_key;
use crate::pairing::DeviceName;
use crate::policy::Resource;
use crate::ratelimit::{AddressLimiter, Refused};
use crate::storage::Store;

const SERVICE: &str = "palyra.identity.v1.IdentityService";
/// How long a renewal challenge may be used.
const CHALLENGE_TTL: Duration = Duration::from_secs(60);
/// Most outstanding challenges; beyond this, new ones are refused until old ones expire.
/// Filling it takes [`MAX_CHALLENGES`] / ([`CHALLENGES_BURST_PER_PEER`] + one TTL of refill)
/// = 625 addresses (IPv6: /64s) at once.
const MAX_CHALLENGES: usize = 10_000;
/// Most outstanding challenges for one device id asked for from one address.
const MAX_CHALLENGES_PER_DEVICE: usize = 4;
/// GetRenewalChallenge calls one address (IPv6: one /64) may make at once...
const CHALLENGES_BURST_PER_PEER: u32 = 8;
/// ...and then one per this period (8 a minute).
const CHALLENGE_REFILL: Duration = Duration::from_millis(7_500);
/// Most addresses the challenge limiter tracks.
const MAX_CHALLENGE_PEERS: usize = 4_096;

/// A device as the wire shows it.
pub fn device_to_pb(d: &Device) -> pb::Device {
    pb::Device {
        device_id: d.id.to_string(),
        name: DeviceName::shown(&d.name),
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

/// An outstanding renewal challenge.
#[derive(Debug, Clone, Copy)]
struct Challenge {
    /// The device it was issued for.
    device: DeviceId,
    /// The rate-limit key of the address that asked for it.
    asked_from: Option<IpAddr>,
    expires: SystemTime,
}

/// Outstanding renewal challenges and who may ask for more.
///
/// GetRenewalChallenge is anonymous (a device whose certificate expired has nothing else), so
/// its table is charged to the caller's address, never to the device named: the id is parsed
/// first (free), then the address's bucket is charged, and only challenges for a registered
/// device are kept (others get a challenge that is not stored, which no proof can
/// redeem, so the answer does not say whether the id exists). Per device, the cap counts only
/// the challenges one address asked for, so naming a victim's id from elsewhere cannot lock
/// the victim out. Expired challenges are dropped on every call.
#[derive(Debug)]
struct Challenges {
    table: HashMap<[u8; 32], Challenge>,
    by_peer: AddressLimiter,
}

impl Default for Challenges {
    fn default() -> Self {
        Challenges {
            table: HashMap::new(),
            by_peer: AddressLimiter::new(CHALLENGES_BURST_PER_PEER, CHALLENGE_REFILL, MAX_CHALLENGE_PEERS),
        }
    }
}

fn too_many(message: String) -> Status {
    status(Code::ResourceExhausted, ErrorReason::RateLimited, message)
}

impl Challenges {
    /// Charges one GetRenewalChallenge to `peer`.
    fn admit(&mut self, peer: Option<IpAddr>, now: Instant) -> Result<(), Status> {
        let Some(ip) = peer else { return Ok(()) };
        self.by_peer.admit(ip, now).map_err(|refused| match refused {
            Refused::Address(wait) => too_many(format!(
                "too many renewal challenges asked for from this address; retry in {} s",
                wait.as_secs().max(1)
            )),
            Refused::Table => {
                too_many("too many addresses asking for renewal challenges; retry in a minute".to_owned())
            }
        })
    }

    /// Stores `challenge` for `device`, asked for from `peer`, unless a cap is reached.
    fn insert(
        &mut self,
        challenge: [u8; 32],
        device: DeviceId,
        peer: Option<IpAddr>,
        now: SystemTime,
    ) -> Result<(), Status> {
        self.table.retain(|_, c| c.expires > now);
        let asked_from = peer.map(address_key);
        let same = self.table.values().filter(|c| c.device == device && c.asked_from == asked_from).count();
        if same >= MAX_CHALLENGES_PER_DEVICE {
            return Err(too_many(format!(
                "too many outstanding renewal challenges for device {device} from this address; use one or wait a minute"
            )));
        }
        if self.table.len() >= MAX_CHALLENGES {
            return Err(too_many("too many outstanding renewal challenges; retry in a minute".to_owned()));
        }
        self.table.insert(challenge, Challenge { device, asked_from, expires: now + CHALLENGE_TTL });
        Ok(())
    }

    /// Takes `challenge` out (single use); whether it was issued for `device` and is fresh.
    fn redeem(&mut self, challenge: &[u8], device: DeviceId, now: SystemTime) -> bool {
        let Ok(key) = <[u8; 32]>::try_from(challenge) else { return false };
        matches!(self.table.remove(&key), Some(c) if c.device == device && c.expires > now)
    }
}

impl IdentityApi {
    /// The service for `node`, with its registry in `store`; the operator's actions through
    /// `admin`.
    pub fn new(node: Arc<NodeIdentity>, store: Store, gate: Gate, admin: Admin) -> Self {
        IdentityApi { node, store, gate, admin, challenges: Arc::default() }
    }

    fn challenges(&self) -> Result<std::sync::MutexGuard<'_, Challenges>, Status> {
        self.challenges.lock().map_err(|_| internal("challenge table poisoned"))
    }

    fn check_device(&self, peer: &Peer, method: &str, id: DeviceId) -> Result<(), Status> {
        self.gate.check(peer, &format!("{SERVICE}/{method}"), &Resource::Device(id))
    }

    /// Takes a challenge out of the table (single use) if it was issued for `id` and is fresh.
    fn redeem(&self, challenge: &[u8], id: DeviceId, now: SystemTime) -> bool {
        let Ok(mut challenges) = self.challenges.lock() else { return false };
        challenges.redeem(challenge, id, now)
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
        let peer = peer_of(&request)?.address.map(|a| a.ip());
        let id = device_id("device_id", &request.get_ref().device_id)?;
        let now = SystemTime::now();
        self.challenges()?.admit(peer, Instant::now())?;
        let mut challenge = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut challenge)
            .map_err(|_| internal("random generator failed"))?;
        let expires = now + CHALLENGE_TTL;
        // Only a registered device gets a stored challenge (a revoked one too, so that its
        // renewal is told it is revoked); any other id gets one that nothing redeems
        // (RenewCertificate then refuses the proof as for a wrong challenge).
        if self.store.device(id).await?.is_some() {
            self.challenges()?.insert(challenge, id, peer, now)?;
        }
        Ok(Response::new(pb::GetRenewalChallengeResponse {
            challenge: challenge.to_vec(),
            expires_at: Some(timestamp(expires)),
        }))
    }
}
