//! [`Pairing`], the application service of pairing (docs/pairing-protocol.md): the one owner of the
//! flow, its limits and its audit, called alike by the node's edges (the gRPC pairing service
//! and the web console).
//!
//! - The operator's side: a code is made ([`Pairing::create_code`]), requests are listed,
//!   approved (the device registered and its certificate issued from the CSR) or rejected.
//!   Every write first makes the queued audit records durable, and an approval keeps the peer
//!   cache current.
//! - The device's side: StartPairing ([`Pairing::start`]), FinishPairing ([`Pairing::finish`])
//!   and GetPairingStatus ([`Pairing::status`]). The handshake itself is the pure
//!   [`NodeSession`]; here it is driven: PINs and sessions are sealed with the internal seal
//!   key, a session is stored by StartPairing and taken out (single use) by FinishPairing
//!   before it is checked, attempts are spent and counted, and the anonymous calls are rate
//!   limited in memory (StartPairing: 10 a minute per peer address, charged only once the
//!   request validates, and 1,024 a minute per node on codes that exist; FinishPairing and
//!   GetPairingStatus: 10 a second per peer address; GetPairingStatus also 4 a second per
//!   request; peer addresses by [`crate::ratelimit`], IPv6 by /64).
//!
//! What it does not do: decode wire messages (the edge hands it decoded domain messages), map
//! errors to a transport (the wire's one error mapping does), or know SQL (its store is a
//! [`PairingStore`]). The method gate of each call is the edge's. Nothing here logs a PIN, a
//! key or a confirmation.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use super::code::{open_pin, seal_pin};
use super::enrollment::{self, EnrollmentKey, EnrollmentSecret, EnrollmentToken, Grants};
use super::handshake::code_expiry;
use super::request::{check_reason, granted_scopes, pairable_role, request_id};
use super::store::PairingStore;
use super::{
    CodeId, CodeState, DEFAULT_ATTEMPTS, DEFAULT_CODE_TTL, FinishMessage, MAX_ATTEMPTS, NodeSession,
    PairingCode, PairingError, PairingRequest, PairingUri, Pin, REQUEST_TTL, RequestState, StartMessage,
    StartReply, StatusPoll, open_session, seal_session,
};
use crate::metrics::PairingOutcome;
use crate::access::{Denied, Gate, Peer};
use crate::audit::{AuditDecision, AuditEntry};
use crate::policy::actions::FINISH_PAIRING;
use crate::identity::{Device, DeviceId, DeviceStatus, IdentityError, NodeIdentity, Role};
use crate::ratelimit::{AddressLimiter, Refused};
use crate::store_error::StoreError;
use crate::vault::KeyHierarchy;

/// StartPairing calls per minute, node-wide, on codes that exist.
pub const STARTS_PER_MINUTE: usize = 1024;
/// StartPairing calls per minute from one peer address (IPv6: one /64), the burst allowed.
pub const STARTS_PER_MINUTE_PER_PEER: u32 = 10;
/// GetPairingStatus calls per second for one request.
pub const POLLS_PER_SECOND: usize = 4;
/// FinishPairing and GetPairingStatus calls from one peer address, the burst allowed; then
/// [`ANON_CALLS_PER_SECOND_PER_PEER`] a second.
pub const ANON_CALLS_BURST_PER_PEER: u32 = 40;
/// FinishPairing and GetPairingStatus calls per second from one peer address, sustained.
pub const ANON_CALLS_PER_SECOND_PER_PEER: u32 = 10;
/// Most requests tracked by the poll limiter before it forgets idle ones.
const MAX_TRACKED: usize = 10_000;
/// Most peer addresses tracked by each per-address limiter.
const MAX_TRACKED_PEERS: usize = 4_096;

/// Why a pairing call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ServiceError {
    /// A pairing rule or argument (`InvalidArgument` names the field).
    #[error(transparent)]
    Pairing(#[from] PairingError),
    /// A registry or certificate error (on approval).
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The audit log could not record the write.
    #[error("{}", .0.message)]
    Denied(Denied),
    /// An anonymous call over one of its rate limits; the message says which and when to retry.
    #[error("{0}")]
    RateLimited(String),
    /// A FinishPairing whose proof does not verify, on a code with attempts left.
    #[error("the pairing proof does not verify (wrong PIN, or the handshake was altered)")]
    ProofRefused {
        /// PIN attempts the code has left.
        attempts_left: u32,
    },
    /// Storage failed (detail logged by the edge, not sent).
    #[error("internal error")]
    Internal(String),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        ServiceError::Internal(e.to_string())
    }
}

/// A pairing code just made: everything to show the operator once. Holds the PIN: `Debug`
/// redacts it (through [`Pin`] and [`PairingUri`]).
#[derive(Debug, Clone)]
pub(crate) struct CreatedCode {
    /// The code, its PIN and the node's address and CA fingerprint.
    pub uri: PairingUri,
    /// The role a device paired with it gets.
    pub role: Role,
    /// When it stops being accepted.
    pub expires_at: SystemTime,
    /// PIN attempts before it burns.
    pub max_attempts: u32,
}

/// An enrollment key just made: the token to show the operator once (it holds the secret:
/// `Debug` redacts it) and the key as listed.
#[derive(Debug, Clone)]
pub(crate) struct CreatedKey {
    /// Address, key id, secret and CA fingerprint.
    pub token: EnrollmentToken,
    /// The key.
    pub key: EnrollmentKey,
}

/// What a verified handshake says of the device to register.
struct Applicant<'a> {
    csr_pem: &'a str,
    name: &'a str,
    fingerprint: &'a str,
    signing_public_key: [u8; 32],
}

/// Where a request stands, as its device's signed poll learns it.
#[derive(Debug, Clone)]
pub(crate) struct PairingStatus {
    /// The request's state now.
    pub state: RequestState,
    /// Once approved: what the device needs to connect.
    pub issued: Option<Issued>,
}

/// What an approved device collects.
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    /// The registered device.
    pub device_id: Option<DeviceId>,
    /// Its certificate (PEM).
    pub certificate_pem: Option<String>,
    /// The node's CA certificate (PEM).
    pub ca_certificate_pem: String,
}

/// The rate limits of the anonymous pairing calls, in memory.
///
/// StartPairing is charged in this order, each step only if the previous admitted it: the
/// request decodes and validates (free, at the edge: garbage spends nobody's budget), then the
/// caller's address bucket, then the code must exist (one read; an unknown code is refused as
/// any unusable code is), then the node-wide window. So a flood from one address spends only
/// that address's bucket, and a flood of made-up codes from many addresses never reaches the
/// node-wide window, which is left to bound the real handshakes (SPAKE2 and a stored session
/// each) on codes an attacker would have to know.
#[derive(Debug)]
struct Limits {
    starts: VecDeque<SystemTime>,
    starts_by_peer: AddressLimiter,
    anon_by_peer: AddressLimiter,
    polls: HashMap<String, VecDeque<SystemTime>>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            starts: VecDeque::new(),
            starts_by_peer: AddressLimiter::new(
                STARTS_PER_MINUTE_PER_PEER,
                Duration::from_secs(60) / STARTS_PER_MINUTE_PER_PEER,
                MAX_TRACKED_PEERS,
            ),
            anon_by_peer: AddressLimiter::new(
                ANON_CALLS_BURST_PER_PEER,
                Duration::from_secs(1) / ANON_CALLS_PER_SECOND_PER_PEER,
                MAX_TRACKED_PEERS,
            ),
            polls: HashMap::new(),
        }
    }
}

/// Whether `window` has room for one more event at `now` (fewer than `max` within `span`),
/// forgetting the events older than `span`.
fn has_room(window: &mut VecDeque<SystemTime>, now: SystemTime, span: Duration, max: usize) -> bool {
    while window.front().is_some_and(|t| now.duration_since(*t).unwrap_or_default() >= span) {
        window.pop_front();
    }
    window.len() < max
}

/// Admits one event at `now` into `window` if fewer than `max` happened within `span`.
fn admit(window: &mut VecDeque<SystemTime>, now: SystemTime, span: Duration, max: usize) -> bool {
    let room = has_room(window, now, span, max);
    if room {
        window.push_back(now);
    }
    room
}

fn peer_refused(what: &str, refused: Refused) -> ServiceError {
    ServiceError::RateLimited(match refused {
        Refused::Address(wait) => {
            format!("too many {what} calls from this address; retry in {} s", wait.as_secs().max(1))
        }
        Refused::Table => format!("too many addresses calling {what} at once; retry in a minute"),
    })
}

impl Limits {
    /// Charges a (validated) StartPairing to its peer address.
    fn admit_start_from(&mut self, peer: Option<IpAddr>, now: Instant) -> Result<(), ServiceError> {
        match peer {
            Some(ip) => self.starts_by_peer.admit(ip, now).map_err(|r| peer_refused("StartPairing", r)),
            None => Ok(()),
        }
    }

    /// Charges a StartPairing on a code that exists to the node-wide window.
    fn admit_start_node_wide(&mut self, now: SystemTime) -> Result<(), ServiceError> {
        if !admit(&mut self.starts, now, Duration::from_secs(60), STARTS_PER_MINUTE) {
            return Err(ServiceError::RateLimited(
                "too many StartPairing calls on this node; retry in a minute".to_owned(),
            ));
        }
        Ok(())
    }

    /// Charges a (decoded) FinishPairing or GetPairingStatus to its peer address.
    fn admit_anonymous_from(
        &mut self,
        peer: Option<IpAddr>,
        what: &str,
        now: Instant,
    ) -> Result<(), ServiceError> {
        match peer {
            Some(ip) => self.anon_by_peer.admit(ip, now).map_err(|r| peer_refused(what, r)),
            None => Ok(()),
        }
    }

    fn admit_poll(&mut self, request_id: &str, now: SystemTime) -> Result<(), ServiceError> {
        let second = Duration::from_secs(1);
        if self.polls.len() > MAX_TRACKED {
            self.polls
                .retain(|_, w| w.back().is_some_and(|t| now.duration_since(*t).unwrap_or_default() < second));
        }
        let window = self.polls.entry(request_id.to_owned()).or_default();
        if !admit(window, now, second, POLLS_PER_SECOND) {
            return Err(ServiceError::RateLimited(
                "more than 4 status polls a second for this request; slow down".to_owned(),
            ));
        }
        Ok(())
    }
}

/// The pairing service: built once per node (`crate::node`), shared by the edges.
#[derive(Debug)]
pub(crate) struct Pairing {
    store: Arc<dyn PairingStore>,
    /// The node's identity: its CA issues the certificates and names the fingerprint.
    identity: Arc<NodeIdentity>,
    keys: Arc<KeyHierarchy>,
    /// Audit before writes, and the peer cache an approval keeps current.
    gate: Gate,
    limits: Mutex<Limits>,
    /// One enrollment at a time: each takes a use of its key in a compare-and-set write whose
    /// audit record is queued just before it, so uses are never raced within the node.
    enrolling: tokio::sync::Mutex<()>,
}

impl Pairing {
    /// The service over `store`, issuing from `identity`'s CA, sealing PINs and sessions with
    /// `keys`' internal seal key, auditing and caching peers through `gate`.
    pub(crate) fn new(
        store: Arc<dyn PairingStore>,
        identity: Arc<NodeIdentity>,
        keys: Arc<KeyHierarchy>,
        gate: Gate,
    ) -> Self {
        Pairing { store, identity, keys, gate, limits: Mutex::default(), enrolling: tokio::sync::Mutex::new(()) }
    }

    fn limits(&self) -> Result<MutexGuard<'_, Limits>, ServiceError> {
        self.limits.lock().map_err(|_| ServiceError::Internal("rate limiter poisoned".to_owned()))
    }

    /// Records what time has decided (expired codes, sessions and requests); the node calls it
    /// when it starts serving, for what expired while it was down.
    pub(crate) async fn expire(&self, now: SystemTime) -> Result<(), ServiceError> {
        Ok(self.store.expire(now).await?)
    }

    // --- The operator's side ----------------------------------------------------------------

    /// A single-use pairing code for `role` (empty: device), living `ttl` (default 10 min,
    /// 30 s–24 h), with `max_attempts` PIN attempts (default 5, 1–10); `server` is the
    /// `HOST:PORT` its URI names.
    pub(crate) async fn create_code(
        &self,
        role: &str,
        ttl: Option<Duration>,
        max_attempts: Option<u32>,
        server: String,
    ) -> Result<CreatedCode, ServiceError> {
        let now = SystemTime::now();
        let expires_at = code_expiry(now, ttl.unwrap_or(DEFAULT_CODE_TTL))?;
        let role = pairable_role("role", role)?.unwrap_or(Role::Device);
        let max_attempts = max_attempts.unwrap_or(DEFAULT_ATTEMPTS);
        if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
            return Err(PairingError::invalid("max_attempts", "a code allows 1 to 10 attempts").into());
        }
        self.store.expire(now).await?;
        let code_id = CodeId::generate()?;
        let pin = Pin::generate()?;
        let sealed = seal_pin(&self.keys.internal_seal_key(), &code_id, &pin)?;
        let code = PairingCode {
            code_id: code_id.clone(),
            sealed_pin: Some(sealed),
            role,
            created_at: now,
            expires_at,
            max_attempts,
            attempts_left: max_attempts,
            state: CodeState::Active,
        };
        self.store.insert_code(&code).await?;
        tracing::info!(code_id = %code_id, role = %role, max_attempts, "pairing code created");
        let uri =
            PairingUri { server, code_id, pin, ca_fingerprint: self.identity.ca().fingerprint().to_owned() };
        Ok(CreatedCode { uri, role, expires_at, max_attempts })
    }

    /// Pairing requests (newest first), optionally in one state; expired ones are marked first.
    pub(crate) async fn requests(
        &self,
        state: Option<RequestState>,
    ) -> Result<Vec<PairingRequest>, ServiceError> {
        let now = SystemTime::now();
        self.store.expire(now).await?;
        Ok(self.store.requests(state, now).await?)
    }

    /// Approves pending request `id` for `approver`: registers the device ACTIVE with `role`
    /// (empty: the code's) and the granted `scopes`, and issues its certificate from the CSR.
    pub(crate) async fn approve(
        &self,
        approver: &Peer,
        id: &str,
        role: &str,
        scopes: &[String],
    ) -> Result<PairingRequest, ServiceError> {
        let id = request_id(id)?;
        let override_role = pairable_role("role", role)?;
        let granted = granted_scopes(scopes)?;
        let now = SystemTime::now();
        let pending =
            self.store.request(&id).await?.ok_or_else(|| PairingError::RequestNotFound(id.clone()))?;
        let state = pending.state_at(now);
        if state != RequestState::Pending {
            return Err(PairingError::RequestNotPending { id, state: state.as_str() }.into());
        }
        let role = override_role.unwrap_or(pending.role);
        let applicant = Applicant {
            csr_pem: &pending.csr_pem,
            name: &pending.device_name,
            fingerprint: &pending.fingerprint,
            signing_public_key: pending.signing_public_key,
        };
        let (device, issued) = self.new_device(&applicant, role, granted, now)?;
        let device_id = device.id;
        self.gate.audit_before_write().await.map_err(ServiceError::Denied)?;
        let approved = self.store.approve(&id, &device, &issued.cert_pem, now).await??;
        self.gate.peers.invalidate(device_id);
        let approver = approver.principal.label();
        tracing::info!(request_id = %id, device_id = %device_id, role = %role, approver = %approver, "pairing approved");
        self.gate.metrics.pairing(PairingOutcome::Paired);
        Ok(approved)
    }

    /// A new ACTIVE device for `applicant` with `role` and `scopes`, and its certificate issued
    /// from the CSR for the node's device-certificate lifetime (approval and enrollment alike).
    fn new_device(
        &self,
        applicant: &Applicant<'_>,
        role: Role,
        scopes: Vec<crate::vault::Scope>,
        now: SystemTime,
    ) -> Result<(Device, crate::identity::ca::IssuedCert), ServiceError> {
        let id = DeviceId::generate();
        let lifetime = self.identity.device_certificate_lifetime();
        let issued = self.identity.ca().issue_client_certificate(applicant.csr_pem, id, role, lifetime, now)?;
        let device = Device {
            id,
            name: applicant.name.to_owned(),
            fingerprint: applicant.fingerprint.to_owned(),
            signing_public_key: applicant.signing_public_key,
            role,
            status: DeviceStatus::Active,
            paired_at: now,
            certificate_expires_at: issued.not_after,
            revoked_at: None,
            revoke_reason: None,
            scopes,
        };
        Ok((device, issued))
    }

    /// Rejects pending request `id` with `reason` (kept; not shown to the device).
    pub(crate) async fn reject(&self, id: &str, why: &str) -> Result<PairingRequest, ServiceError> {
        let id = request_id(id)?;
        check_reason(why)?;
        let now = SystemTime::now();
        self.gate.audit_before_write().await.map_err(ServiceError::Denied)?;
        let rejected = self.store.reject(&id, why, now).await??;
        tracing::info!(request_id = %id, reason = %why, "pairing rejected");
        self.gate.metrics.pairing(PairingOutcome::Rejected);
        Ok(rejected)
    }

    /// An enrollment key for `role` (empty: device) granting `scopes`, pairing up to
    /// `max_uses` devices (default 1, at most 10,000) within `ttl` (default a day, 60 s to a
    /// year); `server` is the `HOST:PORT` its token names.
    pub(crate) async fn create_enrollment_key(
        &self,
        role: &str,
        scopes: &[String],
        max_uses: Option<u32>,
        ttl: Option<Duration>,
        server: String,
    ) -> Result<CreatedKey, ServiceError> {
        self.create_enrollment_key_at(role, scopes, max_uses, ttl, server, SystemTime::now()).await
    }

    /// [`Self::create_enrollment_key`] as if made at `now` (the testkit makes expired keys).
    pub(crate) async fn create_enrollment_key_at(
        &self,
        role: &str,
        scopes: &[String],
        max_uses: Option<u32>,
        ttl: Option<Duration>,
        server: String,
        now: SystemTime,
    ) -> Result<CreatedKey, ServiceError> {
        let role = pairable_role("role", role)?.unwrap_or(Role::Device);
        let scopes = granted_scopes(scopes)?;
        let (max_uses, expires_at) = enrollment::check_new_key(max_uses, ttl, now)?;
        let grants = Grants { role, scopes, max_uses, created_at: now, expires_at };
        let key_id = CodeId::generate()?;
        let secret = EnrollmentSecret::generate()?;
        let sealed = enrollment::seal_secret(&self.keys.internal_seal_key(), &key_id, &grants, 0, &secret)?;
        let key = EnrollmentKey { key_id: key_id.clone(), grants, uses: 0, revoked_at: None, sealed_secret: Some(sealed) };
        self.gate.audit_before_write().await.map_err(ServiceError::Denied)?;
        self.store.insert_enrollment_key(&key).await?;
        tracing::info!(key_id = %key_id, role = %role, max_uses, "enrollment key created");
        let token = EnrollmentToken {
            server,
            key_id,
            secret,
            ca_fingerprint: self.identity.ca().fingerprint().to_owned(),
        };
        Ok(CreatedKey { token, key })
    }

    /// Enrollment keys, newest first: only those that can still pair unless `include_inactive`.
    pub(crate) async fn enrollment_keys(&self, include_inactive: bool) -> Result<Vec<EnrollmentKey>, ServiceError> {
        Ok(self.store.enrollment_keys(!include_inactive, SystemTime::now()).await?)
    }

    /// Revokes enrollment key `key_id`: no device pairs with it from now on (devices paired
    /// with it stay).
    pub(crate) async fn revoke_enrollment_key(&self, key_id: &str) -> Result<EnrollmentKey, ServiceError> {
        let key_id = CodeId::parse(key_id).map_err(|_| PairingError::invalid("key_id", "not an enrollment key id"))?;
        // Not while an enrollment is between its audit record and its write.
        let _one_at_a_time = self.enrolling.lock().await;
        self.gate.audit_before_write().await.map_err(ServiceError::Denied)?;
        let revoked = self.store.revoke_enrollment_key(&key_id, SystemTime::now()).await??;
        tracing::info!(key_id = %key_id, "enrollment key revoked");
        Ok(revoked)
    }

    /// The enrollment key `code_id` names, if it names one and no pairing code.
    async fn enrollment_key_named(&self, code_id: &CodeId) -> Result<Option<EnrollmentKey>, ServiceError> {
        if self.store.code(code_id).await?.is_some() {
            return Ok(None);
        }
        Ok(self.store.enrollment_key(code_id).await?)
    }

    /// FinishPairing with an enrollment key: takes one use of the key and registers the
    /// device with the key's grants at once, its audit record in the same commit. Returns the
    /// (approved) request's id.
    async fn enroll(
        &self,
        key_id: &CodeId,
        verified: &super::VerifiedPairing,
        peer_address: String,
    ) -> Result<String, ServiceError> {
        let _one_at_a_time = self.enrolling.lock().await;
        // The key's state is read under the lock: time too.
        let now = SystemTime::now();
        let seal_key = self.keys.internal_seal_key();
        let key = self.store.enrollment_key(key_id).await?.ok_or(PairingError::CodeInvalid)?;
        key.check_usable(now)?;
        // Opening checks that the row's grants and use count are the ones the node sealed.
        let secret = enrollment::open_secret(&seal_key, &key)?;
        let uses = key.uses + 1;
        let resealed = (uses < key.grants.max_uses)
            .then(|| enrollment::seal_secret(&seal_key, key_id, &key.grants, uses, &secret))
            .transpose()?;
        drop(secret);
        let Grants { role, scopes, max_uses, .. } = key.grants.clone();
        let fingerprint = verified.fingerprint();
        let applicant = Applicant {
            csr_pem: &verified.csr_pem,
            name: verified.device_name.as_str(),
            fingerprint: &fingerprint,
            signing_public_key: verified.signing_public_key,
        };
        let (device, issued) = self.new_device(&applicant, role, scopes.clone(), now)?;
        let device_id = device.id;
        let request = PairingRequest {
            id: new_request_id(),
            code_id: key_id.to_string(),
            device_name: device.name.clone(),
            fingerprint: device.fingerprint.clone(),
            signing_public_key: verified.signing_public_key,
            agreement_public_key: verified.agreement_public_key,
            csr_pem: verified.csr_pem.clone(),
            role,
            state: RequestState::Approved,
            created_at: now,
            expires_at: now + REQUEST_TTL,
            decided_at: Some(now),
            peer_address,
            device_id: Some(device_id),
            certificate_pem: Some(issued.cert_pem.clone()),
            reject_reason: String::new(),
            scopes,
        };
        // The record goes into the same commit as the enrollment (the writer appends queued
        // records first); no record, no enrollment.
        let granted: Vec<&str> = device.scopes.iter().map(|s| s.as_str()).collect();
        self.gate
            .record(AuditEntry {
                at: now,
                principal: format!("device:{device_id}"),
                action: FINISH_PAIRING.to_owned(),
                resource: format!("EnrollmentKey:{key_id}"),
                decision: AuditDecision::Allow,
                reason: format!(
                    "enrolling with key {key_id} (use {uses} of {max_uses}) as {role}, scopes [{}]",
                    granted.join(", ")
                ),
            })
            .map_err(ServiceError::Denied)?;
        let enrolled: Result<(), ServiceError> =
            match self.store.enroll(key_id, key.uses, resealed, &request, &device, now).await {
                Ok(Ok(true)) => Ok(()),
                Ok(Ok(false)) => Err(ServiceError::Internal(format!(
                    // Not while this service holds `enrolling`; another process would need the
                    // data dir's lock.
                    "enrollment key {key_id} changed during the enrollment"
                ))),
                Ok(Err(e)) => Err(e.into()),
                Err(e) => Err(e.into()),
            };
        if let Err(e) = enrolled {
            // The decision above is recorded; so is the outcome when the write refused it.
            let _ = self.gate.record(AuditEntry {
                at: SystemTime::now(),
                principal: format!("device:{device_id}"),
                action: FINISH_PAIRING.to_owned(),
                resource: format!("EnrollmentKey:{key_id}"),
                decision: AuditDecision::Deny,
                reason: format!("enrollment with key {key_id} did not complete: {e}"),
            });
            return Err(e);
        }
        self.gate.peers.invalidate(device_id);
        tracing::info!(request_id = %request.id, device_id = %device_id, key_id = %key_id, role = %role, "device enrolled");
        Ok(request.id)
    }

    // --- The device's side ------------------------------------------------------------------

    /// StartPairing: a validated `start` from `peer` spends one attempt of its code and opens
    /// a handshake session, stored sealed until FinishPairing.
    pub(crate) async fn start(
        &self,
        start: StartMessage,
        peer: Option<SocketAddr>,
    ) -> Result<StartReply, ServiceError> {
        let started = self.start_handshake(start, peer).await;
        if started.is_err() {
            self.gate.metrics.pairing(PairingOutcome::Refused);
        }
        started
    }

    /// [`Self::start`], uncounted.
    async fn start_handshake(
        &self,
        start: StartMessage,
        peer: Option<SocketAddr>,
    ) -> Result<StartReply, ServiceError> {
        let now = SystemTime::now();
        self.limits()?.admit_start_from(peer.map(|a| a.ip()), Instant::now())?;
        // An unknown code is refused before the node-wide window, so made-up codes (from any
        // number of addresses) cannot use it up; the answer is the one for any unusable code.
        let key = match self.store.code(&start.code_id).await? {
            Some(_) => None,
            None => {
                let key = self.store.enrollment_key(&start.code_id).await?.ok_or(PairingError::CodeInvalid)?;
                // A key that can no longer pair is refused before the node-wide window too.
                key.check_usable(now)?;
                Some(key)
            }
        };
        self.limits()?.admit_start_node_wide(now)?;
        let ca = self.identity.ca().fingerprint();
        let (machine, reply) = match key {
            // An enrollment key: no attempt is spent (its secret cannot be guessed online);
            // it must be usable, and its row what the node sealed.
            Some(key) => {
                let secret = enrollment::open_secret(&self.keys.internal_seal_key(), &key)?;
                NodeSession::start(&key.as_code(), &secret, ca, start, now)?
            }
            None => {
                let code = self.store.take_attempt(&start.code_id, now).await??;
                let sealed = code.sealed_pin.as_deref().ok_or(PairingError::CodeInvalid)?;
                let pin = open_pin(&self.keys.internal_seal_key(), &code.code_id, sealed)?;
                NodeSession::start(&code, &pin, ca, start, now)?
            }
        };
        // The attempt is already spent (committed) above; the session is stored, in its own
        // transaction, before the reply leaves. If this fails or the node dies in between, the
        // device gets an error or no answer and has only lost that attempt: fail closed.
        let peer_address = peer.map(|a| a.to_string()).unwrap_or_default();
        let code_id = machine.code_id().clone();
        let sealed = seal_session(&self.keys.internal_seal_key(), &machine, &peer_address)?;
        drop(machine);
        self.store.insert_session(&reply.session_id, sealed, reply.expires_at, now).await?;
        tracing::info!(code_id = %code_id, "pairing handshake started");
        Ok(reply)
    }

    /// FinishPairing: takes the session out (single use), checks the device's proof and, if it
    /// verifies, consumes the code and leaves a PENDING request, whose id (and state) it returns. A proof
    /// that does not verify counts against the code. With an enrollment key, a verified proof
    /// takes one of the key's uses and the request is approved at once ([`Self::enroll`]).
    pub(crate) async fn finish(
        &self,
        finish: FinishMessage,
        peer: Option<SocketAddr>,
    ) -> Result<(String, RequestState), ServiceError> {
        let finished = self.finish_handshake(finish, peer).await;
        self.gate.metrics.pairing(match &finished {
            Ok((_, RequestState::Approved)) => PairingOutcome::Paired,
            Ok(_) => PairingOutcome::Pending,
            Err(ServiceError::ProofRefused { .. })
            | Err(ServiceError::Pairing(PairingError::ProofInvalid | PairingError::AttemptsExhausted)) => {
                PairingOutcome::Failed
            }
            Err(_) => PairingOutcome::Refused,
        });
        finished
    }

    /// [`Self::finish`], uncounted.
    async fn finish_handshake(
        &self,
        finish: FinishMessage,
        peer: Option<SocketAddr>,
    ) -> Result<(String, RequestState), ServiceError> {
        let now = SystemTime::now();
        self.limits()?.admit_anonymous_from(peer.map(|a| a.ip()), "FinishPairing", Instant::now())?;
        // Single use: the session is deleted as it is taken, so whatever happens next (and
        // whatever concurrent Finish calls do) it is gone. Expired sessions are not returned.
        let Some(sealed) = self.store.take_session(&finish.session_id, now).await? else {
            return Err(PairingError::SessionExpired.into());
        };
        let (mut machine, peer_address) =
            open_session(&self.keys.internal_seal_key(), &finish.session_id, &sealed)?;
        let code_id = machine.code_id().clone();
        let key = self.enrollment_key_named(&code_id).await?;
        let verified = match machine.handle_finish(&finish, now) {
            Ok(verified) => verified,
            // An enrollment key has no attempts to spend.
            Err(e) if key.is_some() => {
                tracing::info!(key_id = %code_id, "enrollment proof refused");
                return Err(e.into());
            }
            Err(e) => {
                let (burned, attempts_left) = self.store.attempt_failed(&code_id).await?;
                tracing::info!(code_id = %code_id, attempts_left, burned, "pairing proof refused");
                if burned && e == PairingError::ProofInvalid {
                    return Err(PairingError::AttemptsExhausted.into());
                }
                if e == PairingError::ProofInvalid {
                    return Err(ServiceError::ProofRefused { attempts_left });
                }
                return Err(e.into());
            }
        };
        if key.is_some() {
            let id = self.enroll(&code_id, &verified, peer_address).await?;
            return Ok((id, RequestState::Approved));
        }
        let request = PairingRequest {
            id: new_request_id(),
            code_id: code_id.to_string(),
            device_name: verified.device_name.as_str().to_owned(),
            fingerprint: verified.fingerprint(),
            signing_public_key: verified.signing_public_key,
            agreement_public_key: verified.agreement_public_key,
            csr_pem: verified.csr_pem.clone(),
            role: verified.role,
            state: RequestState::Pending,
            created_at: now,
            expires_at: now + REQUEST_TTL,
            decided_at: None,
            peer_address,
            device_id: None,
            certificate_pem: None,
            reject_reason: String::new(),
            scopes: Vec::new(),
        };
        self.store.finish(&request).await??;
        tracing::info!(request_id = %request.id, fingerprint = %request.fingerprint, "pairing requested");
        Ok((request.id, RequestState::Pending))
    }

    /// GetPairingStatus: the state of the request `poll` names, for a poll signed by the
    /// device that made it; once approved, with what the device needs to connect.
    pub(crate) async fn status(
        &self,
        poll: StatusPoll,
        peer: Option<SocketAddr>,
    ) -> Result<PairingStatus, ServiceError> {
        let now = SystemTime::now();
        let id = request_id(&poll.request_id)?;
        // Each poll costs a read (and a signature check); per address, before either.
        self.limits()?.admit_anonymous_from(peer.map(|a| a.ip()), "GetPairingStatus", Instant::now())?;
        let stored =
            self.store.request(&id).await?.ok_or_else(|| PairingError::RequestNotFound(id.clone()))?;
        poll.verify(&stored.signing_public_key, now)?;
        // Charged only for polls signed by the device: nobody else can use up its budget.
        self.limits()?.admit_poll(&id, now)?;
        let state = stored.state_at(now);
        let issued = (state == RequestState::Approved).then(|| Issued {
            device_id: stored.device_id,
            certificate_pem: stored.certificate_pem,
            ca_certificate_pem: self.identity.ca().certificate_pem().to_owned(),
        });
        Ok(PairingStatus { state, issued })
    }
}

/// A new pairing request id: a ULID in lower case, like device ids (either case is read).
fn new_request_id() -> String {
    ulid::Ulid::generate().to_string().to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_request_ids_are_lower_case_like_device_ids() {
        let id = new_request_id();
        assert_eq!(id, id.to_ascii_lowercase());
        assert_eq!(request_id(&id).ok(), Some(id));
    }

    #[test]
    fn starts_are_charged_per_address_then_node_wide() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let i0 = Instant::now();
        let mut limits = Limits::default();
        let ip: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..STARTS_PER_MINUTE_PER_PEER {
            assert!(limits.admit_start_from(Some(ip), i0).is_ok());
        }
        assert!(matches!(limits.admit_start_from(Some(ip), i0), Err(ServiceError::RateLimited(_))));
        assert!(limits.admit_start_from(Some([10, 0, 0, 2].into()), i0).is_ok());
        assert!(limits.admit_start_from(Some(ip), i0 + Duration::from_secs(6)).is_ok());
        for _ in 0..POLLS_PER_SECOND {
            assert!(limits.admit_poll("r", t0).is_ok());
        }
        assert!(limits.admit_poll("r", t0).is_err());
        assert!(limits.admit_poll("r", t0 + Duration::from_secs(1)).is_ok());
        for _ in 0..STARTS_PER_MINUTE {
            assert!(limits.admit_start_node_wide(t0).is_ok());
        }
        assert!(limits.admit_start_node_wide(t0).is_err());
        assert!(limits.admit_start_node_wide(t0 + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn anonymous_calls_are_bounded_per_address() {
        let i0 = Instant::now();
        let mut limits = Limits::default();
        let ip: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        for _ in 0..ANON_CALLS_BURST_PER_PEER {
            assert!(limits.admit_anonymous_from(Some(ip), "GetPairingStatus", i0).is_ok());
        }
        let same_64: IpAddr = "2001:db8:1:2::2".parse().expect("ip");
        assert!(limits.admit_anonymous_from(Some(same_64), "GetPairingStatus", i0).is_err());
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert!(limits.admit_anonymous_from(Some(other), "FinishPairing", i0).is_ok());
    }
}
