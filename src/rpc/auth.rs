//! `palyra.auth.v1.AuthProfileService` over [`crate::auth::Profiles`]. Each handler parses
//! its request, asks the gate when it touches one profile's token (the resource check of
//! GetAccessToken), flushes the audit queue before a change, then calls the domain.

use tonic::{Request, Response, Status};

use super::authz::{Gate, GateExt, peer_of};
use crate::auth::{NewProfile, Profiles};
use crate::policy::{Resource, actions};
use crate::wire::convert::profile_name;
use crate::wire::pb::auth::v1::{self as pb, auth_profile_service_server::AuthProfileService};

/// The auth profile service.
#[derive(Debug, Clone)]
pub struct AuthApi {
    profiles: Profiles,
    gate: Gate,
}

impl AuthApi {
    /// The service over `profiles`.
    pub fn new(profiles: Profiles, gate: Gate) -> Self {
        AuthApi { profiles, gate }
    }
}

#[tonic::async_trait]
impl AuthProfileService for AuthApi {
    async fn create_profile(
        &self,
        request: Request<pb::CreateProfileRequest>,
    ) -> Result<Response<pb::CreateProfileResponse>, Status> {
        let new = NewProfile::try_from(request.into_inner())?;
        self.gate.before_write().await?;
        let profile = self.profiles.create(new).await?;
        tracing::info!(profile = %profile.name, kind = profile.kind.as_str(), "auth profile created");
        Ok(Response::new(pb::CreateProfileResponse { profile: Some(profile.into()) }))
    }

    async fn list_profiles(
        &self,
        _request: Request<pb::ListProfilesRequest>,
    ) -> Result<Response<pb::ListProfilesResponse>, Status> {
        let profiles = self.profiles.list().await?;
        Ok(Response::new(pb::ListProfilesResponse {
            profiles: profiles.into_iter().map(Into::into).collect(),
        }))
    }

    async fn get_profile(
        &self,
        request: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::GetProfileResponse>, Status> {
        let n = profile_name(&request.get_ref().name)?;
        let profile = self.profiles.get(&n).await?;
        Ok(Response::new(pb::GetProfileResponse { profile: Some(profile.into()) }))
    }

    async fn delete_profile(
        &self,
        request: Request<pb::DeleteProfileRequest>,
    ) -> Result<Response<pb::DeleteProfileResponse>, Status> {
        let n = profile_name(&request.get_ref().name)?;
        self.gate.before_write().await?;
        self.profiles.delete(&n).await?;
        tracing::info!(profile = %n, "auth profile deleted");
        Ok(Response::new(pb::DeleteProfileResponse {}))
    }

    async fn start_authorization(
        &self,
        request: Request<pb::StartAuthorizationRequest>,
    ) -> Result<Response<pb::StartAuthorizationResponse>, Status> {
        let n = profile_name(&request.get_ref().name)?;
        self.gate.before_write().await?;
        let redirect = request.get_ref().redirect_uri.clone();
        let started = self.profiles.start_authorization(&n, Some(&redirect)).await?;
        Ok(Response::new(started.into()))
    }

    async fn complete_authorization(
        &self,
        request: Request<pb::CompleteAuthorizationRequest>,
    ) -> Result<Response<pb::CompleteAuthorizationResponse>, Status> {
        self.gate.before_write().await?;
        let req = request.into_inner();
        let profile = self.profiles.complete_authorization(&req.state, &req.code).await?;
        Ok(Response::new(pb::CompleteAuthorizationResponse { profile: Some(profile.into()) }))
    }

    async fn get_access_token(
        &self,
        request: Request<pb::GetAccessTokenRequest>,
    ) -> Result<Response<pb::GetAccessTokenResponse>, Status> {
        let n = profile_name(&request.get_ref().name)?;
        let peer = peer_of(&request)?;
        self.gate.check(&peer, actions::GET_ACCESS_TOKEN, &Resource::Profile(n.clone()))?;
        let token = self.profiles.access_token(&n).await?;
        Ok(Response::new(token.into()))
    }

    async fn revoke_profile(
        &self,
        request: Request<pb::RevokeProfileRequest>,
    ) -> Result<Response<pb::RevokeProfileResponse>, Status> {
        let n = profile_name(&request.get_ref().name)?;
        self.gate.before_write().await?;
        let profile = self.profiles.revoke(&n).await?;
        Ok(Response::new(pb::RevokeProfileResponse { profile: Some(profile.into()) }))
    }
}
