//! `palyra.identity.v1.IdentityService`: the node's identity, who the caller is, the device
//! registry, revocation, and certificate renewal (over mTLS before expiry, or anonymously with
//! a signed challenge after).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::authz::peer_of;
use crate::devices::Registry;
use crate::wire::convert::{device_id, renewed_certificate};
use crate::wire::pb::identity::v1::{self as pb, identity_service_server::IdentityService};

/// The identity service: the registry's flows on the wire.
#[derive(Debug, Clone)]
pub struct IdentityApi {
    registry: Arc<Registry>,
}

impl IdentityApi {
    /// The service over `registry`.
    pub(crate) fn new(registry: Arc<Registry>) -> Self {
        IdentityApi { registry }
    }
}

#[tonic::async_trait]
impl IdentityService for IdentityApi {
    async fn get_node_identity(
        &self,
        _request: Request<pb::GetNodeIdentityRequest>,
    ) -> Result<Response<pb::GetNodeIdentityResponse>, Status> {
        Ok(Response::new(self.registry.node().as_ref().into()))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let peer = peer_of(&request)?;
        Ok(Response::new(peer.principal.into()))
    }

    async fn list_devices(
        &self,
        _request: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let devices = self.registry.devices().await?;
        Ok(Response::new(pb::ListDevicesResponse { devices: devices.iter().map(Into::into).collect() }))
    }

    async fn get_device(
        &self,
        request: Request<pb::GetDeviceRequest>,
    ) -> Result<Response<pb::GetDeviceResponse>, Status> {
        let id = device_id("device_id", &request.get_ref().device_id)?;
        let device = self.registry.device(&peer_of(&request)?, id).await?;
        Ok(Response::new(pb::GetDeviceResponse { device: Some((&device).into()) }))
    }

    async fn revoke_device(
        &self,
        request: Request<pb::RevokeDeviceRequest>,
    ) -> Result<Response<pb::RevokeDeviceResponse>, Status> {
        let peer = peer_of(&request)?;
        let req = request.into_inner();
        let id = device_id("device_id", &req.device_id)?;
        let device = self.registry.revoke(&peer, id, &req.reason).await?;
        Ok(Response::new(pb::RevokeDeviceResponse { device: Some((&device).into()) }))
    }

    async fn renew_certificate(
        &self,
        request: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::RenewCertificateResponse>, Status> {
        let peer = peer_of(&request)?;
        let req = request.into_inner();
        let issued = self.registry.renew(&peer, &req.csr_pem, req.proof.map(Into::into)).await?;
        Ok(Response::new(renewed_certificate(issued, self.registry.node().ca().certificate_pem())))
    }

    async fn get_renewal_challenge(
        &self,
        request: Request<pb::GetRenewalChallengeRequest>,
    ) -> Result<Response<pb::GetRenewalChallengeResponse>, Status> {
        let peer = peer_of(&request)?;
        let id = device_id("device_id", &request.get_ref().device_id)?;
        let issued = self.registry.renewal_challenge(&peer, id).await?;
        Ok(Response::new(issued.into()))
    }
}
