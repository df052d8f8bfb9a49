//! `palyra.pairing.v1`: the handshake's messages (decoded by the domain's bounded decoders,
//! before anything spends a rate budget), the codes made for operators, the requests they
//! decide, and the states a request goes through.

use std::time::{Duration, SystemTime};

use tonic::Status;

use super::timestamp;
use crate::pairing::enrollment::KeyState;
use crate::pairing::service::{CreatedKey, PairingStatus};
use crate::pairing::{
    CreatedCode, DeviceName, EnrollmentKey, FinishMessage, PairingRequest, RequestState, StartMessage,
    StartReply, StatusPoll,
};
use crate::wire::pb::pairing::v1 as pb;
use crate::wire::status::invalid_argument;

/// CreatePairingCode's `ttl_seconds` (absent: the node's default).
pub(crate) fn code_ttl(ttl_seconds: Option<u32>) -> Option<Duration> {
    ttl_seconds.map(|s| Duration::from_secs(u64::from(s)))
}

impl From<CreatedCode> for pb::CreatePairingCodeResponse {
    fn from(code: CreatedCode) -> Self {
        pb::CreatePairingCodeResponse {
            code_id: code.uri.code_id.to_string(),
            pin: code.uri.pin.as_str().to_owned(),
            uri: code.uri.to_uri().to_string(),
            expires_at: Some(timestamp(code.expires_at)),
            max_attempts: code.max_attempts,
            role: code.role.to_string(),
        }
    }
}

impl TryFrom<&pb::StartPairingRequest> for StartMessage {
    type Error = Status;

    fn try_from(req: &pb::StartPairingRequest) -> Result<Self, Status> {
        Ok(StartMessage::decode(
            &req.code_id,
            &req.device_name,
            &req.signing_public_key,
            &req.agreement_public_key,
            &req.csr_pem,
            &req.pake_message,
        )?)
    }
}

impl From<StartReply> for pb::StartPairingResponse {
    fn from(reply: StartReply) -> Self {
        pb::StartPairingResponse {
            session_id: reply.session_id,
            pake_message: reply.pake_message,
            server_confirmation: reply.server_confirmation.to_vec(),
            expires_at: Some(timestamp(reply.expires_at)),
        }
    }
}

impl TryFrom<&pb::FinishPairingRequest> for FinishMessage {
    type Error = Status;

    fn try_from(req: &pb::FinishPairingRequest) -> Result<Self, Status> {
        Ok(FinishMessage::decode(&req.session_id, &req.client_confirmation, &req.signature)?)
    }
}

impl TryFrom<&pb::GetPairingStatusRequest> for StatusPoll {
    type Error = Status;

    fn try_from(req: &pb::GetPairingStatusRequest) -> Result<Self, Status> {
        Ok(StatusPoll::decode(&req.request_id, req.timestamp_unix_ms, &req.signature)?)
    }
}

impl From<PairingStatus> for pb::GetPairingStatusResponse {
    fn from(status: PairingStatus) -> Self {
        let mut response = pb::GetPairingStatusResponse {
            state: pb::PairingState::from(status.state) as i32,
            ..Default::default()
        };
        if let Some(issued) = status.issued {
            response.device_id = issued.device_id.map(|d| d.to_string()).unwrap_or_default();
            response.certificate_pem = issued.certificate_pem.unwrap_or_default();
            response.ca_certificate_pem = issued.ca_certificate_pem;
        }
        response
    }
}

impl From<RequestState> for pb::PairingState {
    fn from(state: RequestState) -> Self {
        match state {
            RequestState::Pending => pb::PairingState::Pending,
            RequestState::Approved => pb::PairingState::Approved,
            RequestState::Rejected => pb::PairingState::Rejected,
            RequestState::Expired => pb::PairingState::Expired,
        }
    }
}

/// ListPairingRequests' `state` filter: absent lists every request.
pub(crate) fn pairing_state_filter(state: Option<i32>) -> Result<Option<RequestState>, Status> {
    match state.map(pb::PairingState::try_from) {
        None => Ok(None),
        Some(Ok(pb::PairingState::Pending)) => Ok(Some(RequestState::Pending)),
        Some(Ok(pb::PairingState::Approved)) => Ok(Some(RequestState::Approved)),
        Some(Ok(pb::PairingState::Rejected)) => Ok(Some(RequestState::Rejected)),
        Some(Ok(pb::PairingState::Expired)) => Ok(Some(RequestState::Expired)),
        Some(_) => Err(invalid_argument("state", "not a pairing state (omit it for all)")),
    }
}

/// A pairing request as the wire shows it at `now` (a pending request past its expiry shows
/// as expired, decided when it expired).
pub(crate) fn pairing_request(r: &PairingRequest, now: SystemTime) -> pb::PairingRequest {
    let state = r.state_at(now);
    pb::PairingRequest {
        request_id: r.id.clone(),
        device_name: DeviceName::shown(&r.device_name),
        fingerprint: r.fingerprint.clone(),
        role: r.role.to_string(),
        state: pb::PairingState::from(state) as i32,
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

/// An enrollment key as listed (never its secret).
pub(crate) fn enrollment_key(k: &EnrollmentKey, now: SystemTime) -> pb::EnrollmentKey {
    let state = match k.state_at(now) {
        KeyState::Active => pb::EnrollmentKeyState::Active,
        KeyState::UsedUp => pb::EnrollmentKeyState::UsedUp,
        KeyState::Expired => pb::EnrollmentKeyState::Expired,
        KeyState::Revoked => pb::EnrollmentKeyState::Revoked,
    };
    pb::EnrollmentKey {
        key_id: k.key_id.to_string(),
        role: k.grants.role.to_string(),
        scopes: k.grants.scopes.iter().map(ToString::to_string).collect(),
        max_uses: k.grants.max_uses,
        uses: k.uses,
        created_at: Some(timestamp(k.grants.created_at)),
        expires_at: Some(timestamp(k.grants.expires_at)),
        revoked_at: k.revoked_at.map(timestamp),
        state: state as i32,
    }
}

impl From<CreatedKey> for pb::CreateEnrollmentKeyResponse {
    fn from(created: CreatedKey) -> Self {
        pb::CreateEnrollmentKeyResponse {
            key_id: created.key.key_id.to_string(),
            token: created.token.to_text().to_string(),
            expires_at: Some(timestamp(created.key.grants.expires_at)),
            key: Some(enrollment_key(&created.key, SystemTime::now())),
        }
    }
}
