//! `palyra.pairing.v1.PairingService`: the node's side of pairing (PROTOCOLS.md §1).
//!
//! Codes, handshake sessions and requests are stored ([`crate::storage`]), so all three survive
//! a restart: a session is sealed ([`crate::pairing::seal_session`]) and stored by
//! StartPairing, and taken out (deleted, single use) by FinishPairing before it is checked.
//! The handshake itself is [`crate::pairing::NodeSession`]; this file adds the wire, the rate
//! limits, in memory (StartPairing: 10 a minute per peer address, charged only once the
//! request validates, and 1,024 a minute per node on codes that exist; FinishPairing and
//! GetPairingStatus: 10 a second per peer address; GetPairingStatus also 4 a second per
//! request; peer addresses by [`crate::ratelimit`], IPv6 by /64), PIN and session sealing with
//! the internal seal key, and certificate issuance on approval. Nothing here logs a PIN, a key or
//! a confirmation.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tonic::{Code, Request, Response, Status};

use super::authz::{Gate, RequestAuthority, peer_of};
use super::convert::timestamp;
use super::pb::common::v1::ErrorReason;
use super::pb::pairing::v1::{self as pb, pairing_service_server::PairingService};
use super::status::{internal, invalid_argument, status, status_with};
use crate::admin::{Admin, request_id};
use crate::identity::NodeIdentity;
use crate::pairing::DeviceName;
use crate::pairing::code::open_pin;
use crate::pairing::{
    FinishMessage, NodeSession, PairingError, PairingRequest, REQUEST_TTL, RequestState, StartMessage,
    StatusPoll, open_session, seal_session,
};
use crate::ratelimit::{AddressLimiter, Refused};
use crate::storage::Store;
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

fn rate_limited(message: &str) -> Status {
    status(Code::ResourceExhausted, ErrorReason::RateLimited, message.to_owned())
}

/// The rate limits of the anonymous pairing calls, in memory.
///
/// StartPairing is charged in this order, each step only if the previous admitted it: the
/// request decodes and validates (free: garbage spends nobody's budget), then the caller's
/// address bucket, then the code must exist (one read; an unknown code is refused as any
/// unusable code is), then the node-wide window. So a flood from one address spends only that
/// address's bucket, and a flood of made-up codes from many addresses never reaches the
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

fn peer_refused(what: &str, refused: Refused) -> Status {
    match refused {
        Refused::Address(wait) => rate_limited(&format!(
            "too many {what} calls from this address; retry in {} s",
            wait.as_secs().max(1)
        )),
        Refused::Table => {
            rate_limited(&format!("too many addresses calling {what} at once; retry in a minute"))
        }
    }
}

impl Limits {
    /// Charges a (validated) StartPairing to its peer address.
    fn admit_start_from(&mut self, peer: Option<IpAddr>, now: Instant) -> Result<(), Status> {
        match peer {
            Some(ip) => self.starts_by_peer.admit(ip, now).map_err(|r| peer_refused("StartPairing", r)),
            None => Ok(()),
        }
    }

    /// Charges a StartPairing on a code that exists to the node-wide window.
    fn admit_start_node_wide(&mut self, now: SystemTime) -> Result<(), Status> {
        if !admit(&mut self.starts, now, Duration::from_secs(60), STARTS_PER_MINUTE) {
            return Err(rate_limited("too many StartPairing calls on this node; retry in a minute"));
        }
        Ok(())
    }

    /// Charges a (decoded) FinishPairing or GetPairingStatus to its peer address.
    fn admit_anonymous_from(&mut self, peer: Option<IpAddr>, what: &str, now: Instant) -> Result<(), Status> {
        match peer {
            Some(ip) => self.anon_by_peer.admit(ip, now).map_err(|r| peer_refused(what, r)),
            None => Ok(()),
        }
    }

    fn admit_poll(&mut self, request_id: &str, now: SystemTime) -> Result<(), Status> {
        let second = Duration::from_secs(1);
        if self.polls.len() > MAX_TRACKED {
            self.polls
                .retain(|_, w| w.back().is_some_and(|t| now.duration_since(*t).unwrap_or_default() < second));
        }
        let window = self.polls.entry(request_id.to_owned()).or_default();
        if !admit(window, now, second, POLLS_PER_SECOND) {
            return Err(rate_limited("more than 4 status polls a second for this request; slow down"));
        }
        Ok(())
    }
}

/// The pairing service.
#[derive(Debug, Clone)]
pub struct PairingApi {
    node: Arc<NodeIdentity>,
    store: Store,
    keys: Arc<KeyHierarchy>,
    admin: Admin,
    /// The node's gRPC address, for pairing URIs when a request does not say which it used.
    fallback_address: String,
    limits: Arc<Mutex<Limits>>,
}

impl PairingApi {
    /// The service for `node`, its codes and requests in `store`, PINs sealed with `keys`.
    pub fn new(
        node: Arc<NodeIdentity>,
        store: Store,
        keys: Arc<KeyHierarchy>,
        gate: Gate,
        fallback_address: String,
    ) -> Self {
        let admin = Admin::new(Arc::clone(&node), store.clone(), Arc::clone(&keys), gate);
        PairingApi { node, store, keys, admin, fallback_address, limits: Arc::default() }
    }

    fn limits(&self) -> Result<std::sync::MutexGuard<'_, Limits>, Status> {
        self.limits.lock().map_err(|_| internal("rate limiter poisoned"))
    }

    fn request_to_pb(&self, r: &PairingRequest, now: SystemTime) -> pb::PairingRequest {
        let state = r.state_at(now);
        pb::PairingRequest {
            request_id: r.id.clone(),
            device_name: DeviceName::shown(&r.device_name),
            fingerprint: r.fingerprint.clone(),
            role: r.role.to_string(),
            state: state_to_pb(state) as i32,
            created_at: Some(timestamp(r.created_at)),
            decided_at: match (state, r.decided_at) {
                (RequestState::Expired, None) => Some(timestamp(r.expires_at)),
                (_, at) => at.map(timestamp),
            },
            peer_address: r.peer_address.clone(),
            device_id: r.device_id.map(|d| d.to_string()).unwrap_or_default(),
            expires_at: Some(timestamp(r.expires_at)),
            reject_reason: r.reject_reason.clone(),
            scopes: r.scopes.iter().map(ToString::to_string).collect(),
        }
    }
}

fn state_to_pb(state: RequestState) -> pb::PairingState {
    match state {
        RequestState::Pending => pb::PairingState::Pending,
        RequestState::Approved => pb::PairingState::Approved,
        RequestState::Rejected => pb::PairingState::Rejected,
        RequestState::Expired => pb::PairingState::Expired,
    }
}

#[tonic::async_trait]
impl PairingService for PairingApi {
    async fn create_pairing_code(
        &self,
        request: Request<pb::CreatePairingCodeRequest>,
    ) -> Result<Response<pb::CreatePairingCodeResponse>, Status> {
        let server = request
            .extensions()
            .get::<RequestAuthority>()
            .map(|a| a.0.clone())
            .filter(|a| crate::pairing::code::validate_server(a).is_ok())
            .unwrap_or_else(|| self.fallback_address.clone());
        let req = request.into_inner();
        let ttl = req.ttl_seconds.map(|s| Duration::from_secs(u64::from(s)));
        let code = self.admin.create_pairing_code(&req.role, ttl, req.max_attempts, server).await?;
        Ok(Response::new(pb::CreatePairingCodeResponse {
            code_id: code.uri.code_id.to_string(),
            pin: code.uri.pin.as_str().to_owned(),
            uri: code.uri.to_uri().to_string(),
            expires_at: Some(timestamp(code.expires_at)),
            max_attempts: code.max_attempts,
            role: code.role.to_string(),
        }))
    }

    async fn start_pairing(
        &self,
        request: Request<pb::StartPairingRequest>,
    ) -> Result<Response<pb::StartPairingResponse>, Status> {
        let peer = peer_of(&request)?;
        let now = SystemTime::now();
        let req = request.into_inner();
        // Validation first, free of charge: garbage must not spend anyone's budget.
        let start = StartMessage::decode(
            &req.code_id,
            &req.device_name,
            &req.signing_public_key,
            &req.agreement_public_key,
            &req.csr_pem,
            &req.pake_message,
        )?;
        self.limits()?.admit_start_from(peer.address.map(|a| a.ip()), Instant::now())?;
        // An unknown code is refused before the node-wide window, so made-up codes (from any
        // number of addresses) cannot use it up; the answer is the one for any unusable code.
        if self.store.pairing_code(&start.code_id).await.map_err(internal)?.is_none() {
            return Err(PairingError::CodeInvalid.into());
        }
        self.limits()?.admit_start_node_wide(now)?;
        let code = self.store.take_pairing_attempt(&start.code_id, now).await.map_err(internal)??;
        let sealed = code.sealed_pin.as_deref().ok_or(PairingError::CodeInvalid)?;
        let pin = open_pin(&self.keys.internal_seal_key(), &code.code_id, sealed)?;
        let (machine, reply) = NodeSession::start(&code, &pin, self.node.ca().fingerprint(), start, now)?;
        drop(pin);
        // The attempt is already spent (committed) above; the session is stored, in its own
        // transaction, before the reply leaves. If this fails or the node dies in between, the
        // device gets an error or no answer and has only lost that attempt: fail closed.
        let peer_address = peer.address.map(|a| a.to_string()).unwrap_or_default();
        let sealed = seal_session(&self.keys.internal_seal_key(), &machine, &peer_address)?;
        drop(machine);
        self.store
            .insert_pairing_session(&reply.session_id, sealed, reply.expires_at, now)
            .await
            .map_err(internal)?;
        tracing::info!(code_id = %code.code_id, attempts_left = code.attempts_left, "pairing handshake started");
        Ok(Response::new(pb::StartPairingResponse {
            session_id: reply.session_id,
            pake_message: reply.pake_message,
            server_confirmation: reply.server_confirmation.to_vec(),
            expires_at: Some(timestamp(reply.expires_at)),
        }))
    }

    async fn finish_pairing(
        &self,
        request: Request<pb::FinishPairingRequest>,
    ) -> Result<Response<pb::FinishPairingResponse>, Status> {
        let peer = peer_of(&request)?;
        let req = request.into_inner();
        let now = SystemTime::now();
        let finish = FinishMessage::decode(&req.session_id, &req.client_confirmation, &req.signature)?;
        self.limits()?.admit_anonymous_from(peer.address.map(|a| a.ip()), "FinishPairing", Instant::now())?;
        // Single use: the session is deleted as it is taken, so whatever happens next (and
        // whatever concurrent Finish calls do) it is gone. Expired sessions are not returned.
        let Some(sealed) =
            self.store.take_pairing_session(&finish.session_id, now).await.map_err(internal)?
        else {
            return Err(PairingError::SessionExpired.into());
        };
        let (mut machine, peer_address) =
            open_session(&self.keys.internal_seal_key(), &finish.session_id, &sealed)?;
        let code_id = machine.code_id().clone();
        let verified = match machine.handle_finish(&finish, now) {
            Ok(verified) => verified,
            Err(e) => {
                let (burned, attempts_left) =
                    self.store.pairing_attempt_failed(&code_id).await.map_err(internal)?;
                tracing::info!(code_id = %code_id, attempts_left, burned, "pairing proof refused");
                if burned && e == PairingError::ProofInvalid {
                    return Err(PairingError::AttemptsExhausted.into());
                }
                if e == PairingError::ProofInvalid {
                    return Err(status_with(
                        Code::Unauthenticated,
                        ErrorReason::PairingProofInvalid,
                        "the pairing proof does not verify (wrong PIN, or the handshake was altered)",
                        HashMap::from([("attempts_left".to_owned(), attempts_left.to_string())]),
                    ));
                }
                return Err(e.into());
            }
        };
        let request = PairingRequest {
            id: ulid::Ulid::generate().to_string(),
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
        self.store.finish_pairing(&request).await.map_err(internal)??;
        tracing::info!(request_id = %request.id, fingerprint = %request.fingerprint, "pairing requested");
        Ok(Response::new(pb::FinishPairingResponse {
            request_id: request.id,
            state: pb::PairingState::Pending as i32,
        }))
    }

    async fn get_pairing_status(
        &self,
        request: Request<pb::GetPairingStatusRequest>,
    ) -> Result<Response<pb::GetPairingStatusResponse>, Status> {
        let peer = peer_of(&request)?;
        let req = request.into_inner();
        let now = SystemTime::now();
        let poll = StatusPoll::decode(&req.request_id, req.timestamp_unix_ms, &req.signature)?;
        let id = request_id(&poll.request_id)?;
        // Each poll costs a read (and a signature check); per address, before either.
        self.limits()?.admit_anonymous_from(
            peer.address.map(|a| a.ip()),
            "GetPairingStatus",
            Instant::now(),
        )?;
        let stored = self
            .store
            .pairing_request(&id)
            .await
            .map_err(internal)?
            .ok_or_else(|| PairingError::RequestNotFound(id.clone()))?;
        poll.verify(&stored.signing_public_key, now)?;
        // Charged only for polls signed by the device: nobody else can use up its budget.
        self.limits()?.admit_poll(&id, now)?;
        let state = stored.state_at(now);
        let mut response =
            pb::GetPairingStatusResponse { state: state_to_pb(state) as i32, ..Default::default() };
        if state == RequestState::Approved {
            response.device_id = stored.device_id.map(|d| d.to_string()).unwrap_or_default();
            response.certificate_pem = stored.certificate_pem.unwrap_or_default();
            response.ca_certificate_pem = self.node.ca().certificate_pem().to_owned();
        }
        Ok(Response::new(response))
    }

    async fn list_pairing_requests(
        &self,
        request: Request<pb::ListPairingRequestsRequest>,
    ) -> Result<Response<pb::ListPairingRequestsResponse>, Status> {
        let req = request.into_inner();
        let filter = match req.state.map(pb::PairingState::try_from) {
            None => None,
            Some(Ok(pb::PairingState::Pending)) => Some(RequestState::Pending),
            Some(Ok(pb::PairingState::Approved)) => Some(RequestState::Approved),
            Some(Ok(pb::PairingState::Rejected)) => Some(RequestState::Rejected),
            Some(Ok(pb::PairingState::Expired)) => Some(RequestState::Expired),
            Some(_) => return Err(invalid_argument("state", "not a pairing state (omit it for all)")),
        };
        let now = SystemTime::now();
        let requests = self.admin.pairing_requests(filter).await?;
        Ok(Response::new(pb::ListPairingRequestsResponse {
            requests: requests.iter().map(|r| self.request_to_pb(r, now)).collect(),
        }))
    }

    async fn approve_pairing(
        &self,
        request: Request<pb::ApprovePairingRequest>,
    ) -> Result<Response<pb::ApprovePairingResponse>, Status> {
        let approver = peer_of(&request)?;
        let req = request.into_inner();
        let approved = self.admin.approve_pairing(&approver, &req.request_id, &req.role, &req.scopes).await?;
        Ok(Response::new(pb::ApprovePairingResponse {
            request: Some(self.request_to_pb(&approved, SystemTime::now())),
        }))
    }

    async fn reject_pairing(
        &self,
        request: Request<pb::RejectPairingRequest>,
    ) -> Result<Response<pb::RejectPairingResponse>, Status> {
        let req = request.into_inner();
        let rejected = self.admin.reject_pairing(&req.request_id, &req.reason).await?;
        Ok(Response::new(pb::RejectPairingResponse {
            request: Some(self.request_to_pb(&rejected, SystemTime::now())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_are_charged_per_address_then_node_wide() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let i0 = Instant::now();
        let mut limits = Limits::default();
        let ip: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..STARTS_PER_MINUTE_PER_PEER {
            assert!(limits.admit_start_from(Some(ip), i0).is_ok());
        }
        assert_eq!(limits.admit_start_from(Some(ip), i0).map_err(|s| s.code()), Err(Code::ResourceExhausted));
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
