//! `palyra.pairing.v1.PairingService`: the node's side of pairing (docs/pairing-protocol.md), over
//! gRPC. Each call decodes its message into the domain's ([`StartMessage`], [`FinishMessage`],
//! [`StatusPoll`], …; decoding first, so garbage spends nobody's rate budget), calls
//! [`Pairing`], which owns the flow, its rate limits and its audit, and converts the reply.
//! Errors map to the wire in `crate::wire::status`.

use std::sync::Arc;
use std::time::SystemTime;

use tonic::{Request, Response, Status};

use super::authz::{RequestAuthority, peer_of};
use crate::pairing::{FinishMessage, Pairing, StartMessage, StatusPoll};
use crate::wire::convert::{code_ttl, enrollment_key, pairing_request, pairing_state_filter};
use crate::wire::pb::pairing::v1::{self as pb, pairing_service_server::PairingService};

/// The pairing service's gRPC edge.
#[derive(Debug, Clone)]
pub struct PairingApi {
    pairing: Arc<Pairing>,
    /// The node's gRPC address, for pairing URIs when a request does not say which it used.
    fallback_address: String,
}

impl PairingApi {
    /// The edge of `pairing`; `fallback_address` is what a code's URI names when the request
    /// does not say which address it used.
    pub(crate) fn new(pairing: Arc<Pairing>, fallback_address: String) -> Self {
        PairingApi { pairing, fallback_address }
    }

    /// The `HOST:PORT` a code's URI or a key's token names: the one the operator's request
    /// addressed, else the node's listen address.
    fn address_of<T>(&self, request: &Request<T>) -> String {
        request
            .extensions()
            .get::<RequestAuthority>()
            .map(|a| a.0.as_str().to_owned())
            .filter(|a| crate::pairing::code::validate_server(a).is_ok())
            .unwrap_or_else(|| self.fallback_address.clone())
    }
}

#[tonic::async_trait]
impl PairingService for PairingApi {
    async fn create_pairing_code(
        &self,
        request: Request<pb::CreatePairingCodeRequest>,
    ) -> Result<Response<pb::CreatePairingCodeResponse>, Status> {
        let server = self.address_of(&request);
        let req = request.into_inner();
        let code = self.pairing.create_code(&req.role, code_ttl(req.ttl_seconds), req.max_attempts, server).await?;
        Ok(Response::new(code.into()))
    }

    async fn start_pairing(
        &self,
        request: Request<pb::StartPairingRequest>,
    ) -> Result<Response<pb::StartPairingResponse>, Status> {
        let peer = peer_of(&request)?;
        let start = StartMessage::try_from(request.get_ref())?;
        let reply = self.pairing.start(start, peer.address).await?;
        Ok(Response::new(reply.into()))
    }

    async fn finish_pairing(
        &self,
        request: Request<pb::FinishPairingRequest>,
    ) -> Result<Response<pb::FinishPairingResponse>, Status> {
        let peer = peer_of(&request)?;
        let finish = FinishMessage::try_from(request.get_ref())?;
        let (request_id, state) = self.pairing.finish(finish, peer.address).await?;
        Ok(Response::new(pb::FinishPairingResponse { request_id, state: pb::PairingState::from(state) as i32 }))
    }

    async fn get_pairing_status(
        &self,
        request: Request<pb::GetPairingStatusRequest>,
    ) -> Result<Response<pb::GetPairingStatusResponse>, Status> {
        let peer = peer_of(&request)?;
        let poll = StatusPoll::try_from(request.get_ref())?;
        let status = self.pairing.status(poll, peer.address).await?;
        Ok(Response::new(status.into()))
    }

    async fn list_pairing_requests(
        &self,
        request: Request<pb::ListPairingRequestsRequest>,
    ) -> Result<Response<pb::ListPairingRequestsResponse>, Status> {
        let filter = pairing_state_filter(request.get_ref().state)?;
        let now = SystemTime::now();
        let requests = self.pairing.requests(filter).await?;
        Ok(Response::new(pb::ListPairingRequestsResponse {
            requests: requests.iter().map(|r| pairing_request(r, now)).collect(),
        }))
    }

    async fn approve_pairing(
        &self,
        request: Request<pb::ApprovePairingRequest>,
    ) -> Result<Response<pb::ApprovePairingResponse>, Status> {
        let approver = peer_of(&request)?;
        let req = request.into_inner();
        let approved = self.pairing.approve(&approver, &req.request_id, &req.role, &req.scopes).await?;
        Ok(Response::new(pb::ApprovePairingResponse {
            request: Some(pairing_request(&approved, SystemTime::now())),
        }))
    }

    async fn reject_pairing(
        &self,
        request: Request<pb::RejectPairingRequest>,
    ) -> Result<Response<pb::RejectPairingResponse>, Status> {
        let req = request.into_inner();
        let rejected = self.pairing.reject(&req.request_id, &req.reason).await?;
        Ok(Response::new(pb::RejectPairingResponse {
            request: Some(pairing_request(&rejected, SystemTime::now())),
        }))
    }

    async fn create_enrollment_key(
        &self,
        request: Request<pb::CreateEnrollmentKeyRequest>,
    ) -> Result<Response<pb::CreateEnrollmentKeyResponse>, Status> {
        let server = self.address_of(&request);
        let req = request.into_inner();
        let created = self
            .pairing
            .create_enrollment_key(&req.role, &req.scopes, req.max_uses, code_ttl(req.ttl_seconds), server)
            .await?;
        Ok(Response::new(created.into()))
    }

    async fn list_enrollment_keys(
        &self,
        request: Request<pb::ListEnrollmentKeysRequest>,
    ) -> Result<Response<pb::ListEnrollmentKeysResponse>, Status> {
        let keys = self.pairing.enrollment_keys(request.get_ref().include_inactive).await?;
        let now = SystemTime::now();
        Ok(Response::new(pb::ListEnrollmentKeysResponse {
            keys: keys.iter().map(|k| enrollment_key(k, now)).collect(),
        }))
    }

    async fn revoke_enrollment_key(
        &self,
        request: Request<pb::RevokeEnrollmentKeyRequest>,
    ) -> Result<Response<pb::RevokeEnrollmentKeyResponse>, Status> {
        let key = self.pairing.revoke_enrollment_key(&request.get_ref().key_id).await?;
        Ok(Response::new(pb::RevokeEnrollmentKeyResponse { key: Some(enrollment_key(&key, SystemTime::now())) }))
    }
}
