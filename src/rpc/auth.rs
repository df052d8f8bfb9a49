//! `palyra.auth.v1.AuthProfileService` over [`crate::auth::AuthProfiles`]. Each handler parses
//! its request, asks the gate when it touches one profile's token (the resource check of
//! GetAccessToken), flushes the audit queue before a change, then calls the domain.

use tonic::{Request, Response, Status};

use super::authz::{Gate, GateExt, peer_of};
use super::convert::timestamp;
use super::pb::auth::v1::{self as pb, auth_profile_service_server::AuthProfileService};
use super::status::invalid_argument;
use crate::auth::{
    AuthProfiles, NewCredential, NewProfile, OAuth2Config, Profile, ProfileKind, ProfileName, ProfileStatus,
};
use crate::policy::{Resource, actions};
use crate::vault::SecretValue;

/// The auth profile service.
#[derive(Debug, Clone)]
pub struct AuthApi {
    profiles: AuthProfiles,
    gate: Gate,
}

impl AuthApi {
    /// The service over `profiles`.
    pub fn new(profiles: AuthProfiles, gate: Gate) -> Self {
        AuthApi { profiles, gate }
    }
}

fn name(text: &str) -> Result<ProfileName, Status> {
    ProfileName::parse(text).map_err(Status::from)
}

impl From<OAuth2Config> for pb::OAuth2Config {
    fn from(c: OAuth2Config) -> Self {
        pb::OAuth2Config {
            client_id: c.client_id,
            authorize_url: c.authorize_url,
            token_url: c.token_url,
            scopes: c.scopes,
            redirect_uri: c.redirect_uri,
        }
    }
}

impl From<pb::OAuth2Config> for OAuth2Config {
    fn from(c: pb::OAuth2Config) -> Self {
        OAuth2Config {
            client_id: c.client_id,
            authorize_url: c.authorize_url,
            token_url: c.token_url,
            scopes: c.scopes,
            redirect_uri: c.redirect_uri,
        }
    }
}

impl From<Profile> for pb::AuthProfile {
    fn from(p: Profile) -> Self {
        pb::AuthProfile {
            name: p.name.to_string(),
            provider: p.provider,
            kind: match p.kind {
                ProfileKind::ApiKey => pb::AuthProfileKind::ApiKey,
                ProfileKind::OAuth2 => pb::AuthProfileKind::Oauth2,
            } as i32,
            oauth2: p.oauth2.map(Into::into),
            status: match p.status {
                ProfileStatus::Ready => pb::AuthProfileStatus::Ready,
                ProfileStatus::NeedsAuthorization => pb::AuthProfileStatus::NeedsAuthorization,
                ProfileStatus::NeedsReauthorization => pb::AuthProfileStatus::NeedsReauthorization,
            } as i32,
            created_at: Some(timestamp(p.created_at)),
            updated_at: Some(timestamp(p.updated_at)),
            access_token_expires_at: p.access_expires_at.map(timestamp),
            last_error: p.last_error,
        }
    }
}

impl TryFrom<pb::CreateProfileRequest> for NewProfile {
    type Error = Status;

    fn try_from(req: pb::CreateProfileRequest) -> Result<Self, Status> {
        let profile_name = name(&req.name)?;
        let credential = match pb::AuthProfileKind::try_from(req.kind) {
            Ok(pb::AuthProfileKind::ApiKey) => {
                if req.oauth2.is_some() {
                    return Err(invalid_argument("oauth2", "not for an API_KEY profile"));
                }
                NewCredential::ApiKey(SecretValue::new(req.api_key))
            }
            Ok(pb::AuthProfileKind::Oauth2) => {
                if !req.api_key.is_empty() {
                    return Err(invalid_argument("api_key", "not for an OAUTH2 profile"));
                }
                let config =
                    req.oauth2.ok_or_else(|| invalid_argument("oauth2", "required for an OAUTH2 profile"))?;
                NewCredential::OAuth2(config.into())
            }
            _ => {
                return Err(invalid_argument(
                    "kind",
                    "AUTH_PROFILE_KIND_API_KEY or AUTH_PROFILE_KIND_OAUTH2",
                ));
            }
        };
        Ok(NewProfile { name: profile_name, provider: req.provider, credential })
    }
}

#[tonic::async_trait]
impl AuthProfileService for AuthApi {
    async fn create_profile(
        &self,
        request: Request<pb::CreateProfileRequest>,
    ) -> Result<Response<pb::CreateProfileResponse>, Status> {
        let new = NewProfile::try_from(request.into_inner())?;
        self.gate.audit_before_write().await.map_err(|d| super::status::denied(false, d))?;
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
        let n = name(&request.get_ref().name)?;
        let profile = self.profiles.get(&n).await?;
        Ok(Response::new(pb::GetProfileResponse { profile: Some(profile.into()) }))
    }

    async fn delete_profile(
        &self,
        request: Request<pb::DeleteProfileRequest>,
    ) -> Result<Response<pb::DeleteProfileResponse>, Status> {
        let n = name(&request.get_ref().name)?;
        self.gate.audit_before_write().await.map_err(|d| super::status::denied(false, d))?;
        self.profiles.delete(&n).await?;
        tracing::info!(profile = %n, "auth profile deleted");
        Ok(Response::new(pb::DeleteProfileResponse {}))
    }

    async fn start_authorization(
        &self,
        request: Request<pb::StartAuthorizationRequest>,
    ) -> Result<Response<pb::StartAuthorizationResponse>, Status> {
        let n = name(&request.get_ref().name)?;
        self.gate.audit_before_write().await.map_err(|d| super::status::denied(false, d))?;
        let redirect = request.get_ref().redirect_uri.clone();
        let started = self.profiles.start_authorization(&n, Some(&redirect)).await?;
        Ok(Response::new(pb::StartAuthorizationResponse {
            authorize_url: started.authorize_url,
            state: started.state,
            expires_at: Some(timestamp(started.expires_at)),
        }))
    }

    async fn complete_authorization(
        &self,
        request: Request<pb::CompleteAuthorizationRequest>,
    ) -> Result<Response<pb::CompleteAuthorizationResponse>, Status> {
        self.gate.audit_before_write().await.map_err(|d| super::status::denied(false, d))?;
        let req = request.into_inner();
        let profile = self.profiles.complete_authorization(&req.state, &req.code).await?;
        Ok(Response::new(pb::CompleteAuthorizationResponse { profile: Some(profile.into()) }))
    }

    async fn get_access_token(
        &self,
        request: Request<pb::GetAccessTokenRequest>,
    ) -> Result<Response<pb::GetAccessTokenResponse>, Status> {
        let n = name(&request.get_ref().name)?;
        let peer = peer_of(&request)?;
        self.gate.check(&peer, actions::GET_ACCESS_TOKEN, &Resource::Profile(n.clone()))?;
        let mut token = self.profiles.access_token(&n).await?;
        Ok(Response::new(pb::GetAccessTokenResponse {
            // Moved out of the zeroizing buffer into prost's, which is freed unwiped once
            // encoded: the same limit as GetSecret's value.
            access_token: std::mem::take(&mut *token.token),
            token_type: std::mem::take(&mut token.token_type),
            expires_at: token.expires_at.map(timestamp),
        }))
    }

    async fn revoke_profile(
        &self,
        request: Request<pb::RevokeProfileRequest>,
    ) -> Result<Response<pb::RevokeProfileResponse>, Status> {
        let n = name(&request.get_ref().name)?;
        self.gate.audit_before_write().await.map_err(|d| super::status::denied(false, d))?;
        let profile = self.profiles.revoke(&n).await?;
        Ok(Response::new(pb::RevokeProfileResponse { profile: Some(profile.into()) }))
    }
}
