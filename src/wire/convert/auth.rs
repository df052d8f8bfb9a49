//! `palyra.auth.v1`: profile names, OAuth2 configs, profiles, CreateProfile, the start of an
//! authorization and the access tokens handed out.

use tonic::Status;

use super::timestamp;
use crate::auth::{
    AccessToken, NewCredential, NewProfile, OAuth2Config, Profile, ProfileKind, ProfileName, ProfileStatus,
    StartedAuthorization,
};
use crate::vault::SecretValue;
use crate::wire::pb::auth::v1 as pba;
use crate::wire::status::invalid_argument;

/// Parses an auth profile name field (`INVALID_ARGUMENT` naming `name`, as every auth error maps).
pub fn profile_name(text: &str) -> Result<ProfileName, Status> {
    ProfileName::parse(text).map_err(Status::from)
}

impl From<OAuth2Config> for pba::OAuth2Config {
    fn from(c: OAuth2Config) -> Self {
        pba::OAuth2Config {
            client_id: c.client_id,
            authorize_url: c.authorize_url,
            token_url: c.token_url,
            scopes: c.scopes,
            redirect_uri: c.redirect_uri,
        }
    }
}

impl From<pba::OAuth2Config> for OAuth2Config {
    fn from(c: pba::OAuth2Config) -> Self {
        OAuth2Config {
            client_id: c.client_id,
            authorize_url: c.authorize_url,
            token_url: c.token_url,
            scopes: c.scopes,
            redirect_uri: c.redirect_uri,
        }
    }
}

impl From<Profile> for pba::AuthProfile {
    fn from(p: Profile) -> Self {
        pba::AuthProfile {
            name: p.name.to_string(),
            provider: p.provider,
            kind: match p.kind {
                ProfileKind::ApiKey => pba::AuthProfileKind::ApiKey,
                ProfileKind::OAuth2 => pba::AuthProfileKind::Oauth2,
            } as i32,
            oauth2: p.oauth2.map(Into::into),
            status: match p.status {
                ProfileStatus::Ready => pba::AuthProfileStatus::Ready,
                ProfileStatus::NeedsAuthorization => pba::AuthProfileStatus::NeedsAuthorization,
                ProfileStatus::NeedsReauthorization => pba::AuthProfileStatus::NeedsReauthorization,
            } as i32,
            created_at: Some(timestamp(p.created_at)),
            updated_at: Some(timestamp(p.updated_at)),
            access_token_expires_at: p.access_expires_at.map(timestamp),
            last_error: p.last_error,
        }
    }
}

impl TryFrom<pba::CreateProfileRequest> for NewProfile {
    type Error = Status;

    fn try_from(req: pba::CreateProfileRequest) -> Result<Self, Status> {
        let profile_name = profile_name(&req.name)?;
        let credential = match pba::AuthProfileKind::try_from(req.kind) {
            Ok(pba::AuthProfileKind::ApiKey) => {
                if req.oauth2.is_some() {
                    return Err(invalid_argument("oauth2", "not for an API_KEY profile"));
                }
                NewCredential::ApiKey(SecretValue::new(req.api_key))
            }
            Ok(pba::AuthProfileKind::Oauth2) => {
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

impl From<StartedAuthorization> for pba::StartAuthorizationResponse {
    fn from(started: StartedAuthorization) -> Self {
        pba::StartAuthorizationResponse {
            authorize_url: started.authorize_url,
            state: started.state,
            expires_at: Some(timestamp(started.expires_at)),
        }
    }
}

impl From<AccessToken> for pba::GetAccessTokenResponse {
    fn from(mut token: AccessToken) -> Self {
        pba::GetAccessTokenResponse {
            // Moved out of the zeroizing buffer into prost's, which is freed unwiped once
            // encoded: the same limit as GetSecret's value.
            access_token: std::mem::take(&mut *token.token),
            token_type: std::mem::take(&mut token.token_type),
            expires_at: token.expires_at.map(timestamp),
        }
    }
}
