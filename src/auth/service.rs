//! [`Profiles`], the auth profile service: creates and deletes profiles, runs the
//! authorization-code flow with PKCE, hands out credentials (refreshing an OAuth 2.0 token
//! that is about to expire, one refresh per profile at a time) and revokes them. The registry
//! is behind a [`ProfileStore`]; secrets are sealed in the [`Vault`]; HTTP is [`TokenClient`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::profile::{bounded_text, parse_url, redirect_uri};
use super::store::ProfileStore;
use super::{
    AccessToken, AuthError, CodeVerifier, NewCredential, NewProfile, OAuth2Config, PendingAuthorization,
    Profile, ProfileKind, ProfileName, ProfileStatus, StartedAuthorization, TokenClient, pkce,
};
use crate::events::{AUTH_PROFILE_AUTHORIZED, AUTH_PROFILE_REAUTHORIZATION_REQUIRED, AUTH_PROFILE_REVOKED};
use crate::vault::{SecretKey, SecretValue, Vault, VaultError};

/// An access token that expires within this is refreshed before it is handed out.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// How long a StartAuthorization's state is accepted.
pub const STATE_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// Vault key of an API key.
const API_KEY: &str = "api-key";
/// Vault key of the token set.
const TOKEN: &str = "token";

/// The tokens of an OAuth 2.0 profile as sealed in the vault (JSON).
#[derive(Serialize, Deserialize, Default)]
struct TokenSet {
    access_token: String,
    #[serde(default)]
    refresh_token: String,
    #[serde(default)]
    token_type: String,
    /// Unix milliseconds; absent when the provider did not say.
    #[serde(default)]
    expires_at_ms: Option<u64>,
}

impl Drop for TokenSet {
    fn drop(&mut self) {
        self.access_token.zeroize();
        self.refresh_token.zeroize();
    }
}

impl TokenSet {
    fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at_ms.map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
    }

    /// Usable for at least [`REFRESH_MARGIN`] more at `now` (no expiry known = usable).
    fn fresh_at(&self, now: SystemTime) -> bool {
        self.expires_at().is_none_or(|at| at > now + REFRESH_MARGIN)
    }

    fn to_access_token(&self) -> AccessToken {
        AccessToken {
            token: Zeroizing::new(self.access_token.clone()),
            token_type: self.token_type.clone(),
            expires_at: self.expires_at(),
        }
    }
}

/// The auth profiles of a node.
#[derive(Clone)]
pub struct Profiles {
    store: Arc<dyn ProfileStore>,
    vault: Vault,
    http: TokenClient,
    /// One refresh at a time per profile (single flight): callers queue on the profile's
    /// lock and find the token the first one stored.
    flights: Arc<Mutex<HashMap<ProfileName, Arc<tokio::sync::Mutex<()>>>>>,
}

impl fmt::Debug for Profiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Profiles").finish_non_exhaustive()
    }
}

fn secret_key(name: &str) -> Result<SecretKey, AuthError> {
    SecretKey::parse(name).map_err(|e| AuthError::Internal(e.to_string()))
}

impl Profiles {
    /// The profiles in `store`, their secrets in `vault`.
    pub(crate) fn new(store: Arc<dyn ProfileStore>, vault: Vault) -> Self {
        Profiles { store, vault, http: TokenClient::new(), flights: Arc::default() }
    }

    /// Creates a profile (and stores its API key).
    pub async fn create(&self, new: NewProfile) -> Result<Profile, AuthError> {
        bounded_text("provider", &new.provider, true)?;
        let now = SystemTime::now();
        let (kind, oauth2, status) = match &new.credential {
            NewCredential::ApiKey(key) => {
                if key.is_empty() {
                    return Err(AuthError::invalid("api_key", "required for an API_KEY profile"));
                }
                if std::str::from_utf8(key.expose()).is_err() {
                    return Err(AuthError::invalid("api_key", "must be UTF-8 text"));
                }
                (ProfileKind::ApiKey, None, ProfileStatus::Ready)
            }
            NewCredential::OAuth2(config) => {
                config.validate()?;
                (ProfileKind::OAuth2, Some(config.clone()), ProfileStatus::NeedsAuthorization)
            }
        };
        let profile = Profile {
            name: new.name.clone(),
            provider: new.provider,
            kind,
            oauth2,
            status,
            created_at: now,
            updated_at: now,
            access_expires_at: None,
            last_error: String::new(),
        };
        if !self.store.insert_profile(&profile).await? {
            return Err(AuthError::AlreadyExists(new.name));
        }
        if let NewCredential::ApiKey(key) = new.credential {
            // Left over from a deleted profile of the same name: replaced, not appended to.
            let scope = profile.name.scope();
            if let Err(e) = self.vault.put(&scope, &secret_key(API_KEY)?, key, None).await {
                let _ = self.store.delete_profile(&profile.name).await;
                return Err(e.into());
            }
        }
        Ok(profile)
    }

    /// Every profile, by name.
    pub async fn list(&self) -> Result<Vec<Profile>, AuthError> {
        Ok(self.store.profiles().await?)
    }

    /// One profile.
    pub async fn get(&self, name: &ProfileName) -> Result<Profile, AuthError> {
        self.store.profile(name).await?.ok_or_else(|| AuthError::NotFound(name.clone()))
    }

    /// Deletes a profile and destroys its secrets.
    pub async fn delete(&self, name: &ProfileName) -> Result<(), AuthError> {
        let profile = self.get(name).await?;
        self.destroy_secrets(&profile).await?;
        if !self.store.delete_profile(name).await? {
            return Err(AuthError::NotFound(name.clone()));
        }
        Ok(())
    }

    /// Destroys every secret of a profile (key, tokens, pending verifiers).
    async fn destroy_secrets(&self, profile: &Profile) -> Result<(), AuthError> {
        let scope = profile.name.scope();
        let mut after = None;
        loop {
            let (page, next) = self.vault.list(&scope, false, false, 0, after).await?;
            for metadata in page {
                match self.vault.delete(&scope, &metadata.key, true).await {
                    Ok(_) | Err(VaultError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            match next {
                Some(n) => after = Some(n),
                None => return Ok(()),
            }
        }
    }

    /// Starts an authorization-code flow with PKCE S256 and a single-use state.
    pub async fn start_authorization(
        &self,
        name: &ProfileName,
        redirect_override: Option<&str>,
    ) -> Result<StartedAuthorization, AuthError> {
        let profile = self.get(name).await?;
        let config = oauth_config(&profile)?;
        // Before the user goes to the provider's page: a node that cannot reach token
        // endpoints at all says so now.
        self.http.ready().await?;
        let redirect = match redirect_override.filter(|r| !r.is_empty()) {
            Some(r) => {
                redirect_uri("redirect_uri", r)?;
                r.to_owned()
            }
            None if !config.redirect_uri.is_empty() => config.redirect_uri.clone(),
            None => {
                return Err(AuthError::invalid(
                    "redirect_uri",
                    "the profile has no redirect URI: give one with the request",
                ));
            }
        };
        let verifier = CodeVerifier::generate()?;
        let state = pkce::generate_state()?;
        let state_hash = pkce::state_hash(&state);
        let now = SystemTime::now();
        let expires_at = now + STATE_LIFETIME;
        let mut url = parse_url("oauth2.authorize_url", &config.authorize_url)?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &config.client_id)
            .append_pair("redirect_uri", &redirect)
            .append_pair("state", &state)
            .append_pair("code_challenge", &verifier.challenge())
            .append_pair("code_challenge_method", "S256");
        if !config.scopes.is_empty() {
            url.query_pairs_mut().append_pair("scope", &config.scopes.join(" "));
        }
        let key = pending_key(&state_hash)?;
        self.vault
            .put(&name.scope(), &key, SecretValue::new(verifier.expose().as_bytes().to_vec()), None)
            .await?;
        self.store
            .insert_pending(
                &PendingAuthorization {
                    state_hash,
                    profile: name.clone(),
                    redirect_uri: redirect,
                    expires_at,
                },
                now,
            )
            .await?;
        Ok(StartedAuthorization { authorize_url: url.to_string(), state, expires_at })
    }

    /// Completes a flow: takes the state (single use), exchanges code + verifier, stores the
    /// tokens.
    pub async fn complete_authorization(&self, state: &str, code: &str) -> Result<Profile, AuthError> {
        if state.is_empty() || state.len() > 256 {
            return Err(AuthError::StateInvalid);
        }
        if code.is_empty() || code.len() > 4096 {
            return Err(AuthError::invalid("code", "required, at most 4096 bytes"));
        }
        // The state and its verifier are single use: spent only once the exchange can be made.
        self.http.ready().await?;
        let now = SystemTime::now();
        let state_hash = pkce::state_hash(state);
        let pending = self.store.take_pending(&state_hash, now).await?.ok_or(AuthError::StateInvalid)?;
        let name = pending.profile.clone();
        let scope = name.scope();
        let key = pending_key(&state_hash)?;
        let verifier = match self.vault.get(&scope, &key, None).await {
            Ok((value, _)) => {
                CodeVerifier::from_stored(String::from_utf8(value.expose().to_vec()).unwrap_or_default())
            }
            Err(VaultError::NotFound { .. }) => return Err(AuthError::StateInvalid),
            Err(e) => return Err(e.into()),
        };
        let _ = self.vault.delete(&scope, &key, true).await;
        let profile = self.get(&name).await?;
        let config = oauth_config(&profile)?.clone();
        let _flight = self.flight(&name).await;
        let response = self.http.exchange_code(&config, code, verifier.expose(), &pending.redirect_uri).await;
        match response {
            Ok(tokens) => {
                let set = TokenSet {
                    access_token: tokens.access_token.clone(),
                    refresh_token: tokens.refresh_token.clone().unwrap_or_default(),
                    token_type: tokens.token_type.clone(),
                    expires_at_ms: tokens.expires_at_ms(now),
                };
                self.store_tokens(&name, &set, Some(AUTH_PROFILE_AUTHORIZED)).await?;
                tracing::info!(profile = %name, "auth profile authorized");
                self.get(&name).await
            }
            Err(AuthError::InvalidGrant { description }) => {
                let reason = format!(
                    "the provider refused the authorization code{}",
                    if description.is_empty() { String::new() } else { format!(": {description}") }
                );
                self.note_failure(&profile, &reason).await?;
                Err(AuthError::NeedsAuthorization { name, again: false, reason })
            }
            Err(e) => {
                self.note_failure(&profile, &e.to_string()).await?;
                Err(e)
            }
        }
    }

    /// A usable credential: the API key, or an access token valid for at least
    /// [`REFRESH_MARGIN`], refreshed first when needed (single flight per profile).
    pub async fn access_token(&self, name: &ProfileName) -> Result<AccessToken, AuthError> {
        let profile = self.get(name).await?;
        let scope = name.scope();
        if profile.kind == ProfileKind::ApiKey {
            let (value, _) = match self.vault.get(&scope, &secret_key(API_KEY)?, None).await {
                Ok(found) => found,
                Err(VaultError::NotFound { .. }) => {
                    return Err(AuthError::NeedsAuthorization {
                        name: name.clone(),
                        again: false,
                        reason: "its API key was revoked".into(),
                    });
                }
                Err(e) => return Err(e.into()),
            };
            let token = Zeroizing::new(String::from_utf8(value.expose().to_vec()).unwrap_or_default());
            return Ok(AccessToken { token, token_type: String::new(), expires_at: None });
        }
        if let Some(set) = self.ready_tokens(&profile).await?
            && set.fresh_at(SystemTime::now())
        {
            return Ok(set.to_access_token());
        }
        let _flight = self.flight(name).await;
        // Whoever held the lock before may have refreshed already.
        let profile = self.get(name).await?;
        let Some(set) = self.ready_tokens(&profile).await? else {
            return Err(self.not_ready(&profile));
        };
        if set.fresh_at(SystemTime::now()) {
            return Ok(set.to_access_token());
        }
        if set.refresh_token.is_empty() {
            let reason = "its access token expired and the provider gave no refresh token".to_owned();
            self.store
                .set_status(
                    name,
                    ProfileStatus::NeedsReauthorization,
                    None,
                    &reason,
                    Some(AUTH_PROFILE_REAUTHORIZATION_REQUIRED),
                    SystemTime::now(),
                )
                .await?;
            return Err(AuthError::NeedsAuthorization { name: name.clone(), again: true, reason });
        }
        let config = oauth_config(&profile)?;
        let now = SystemTime::now();
        match self.http.refresh(config, &set.refresh_token).await {
            Ok(tokens) => {
                let new = TokenSet {
                    access_token: tokens.access_token.clone(),
                    // A provider that does not rotate keeps the old refresh token valid.
                    refresh_token: tokens.refresh_token.clone().unwrap_or_else(|| set.refresh_token.clone()),
                    token_type: if tokens.token_type.is_empty() {
                        set.token_type.clone()
                    } else {
                        tokens.token_type.clone()
                    },
                    expires_at_ms: tokens.expires_at_ms(now),
                };
                self.store_tokens(name, &new, None).await?;
                tracing::info!(profile = %name, "auth profile token refreshed");
                Ok(new.to_access_token())
            }
            Err(AuthError::InvalidGrant { description }) => {
                let reason = format!(
                    "the provider refused its refresh token (invalid_grant{})",
                    if description.is_empty() { String::new() } else { format!(": {description}") }
                );
                tracing::warn!(profile = %name, "refresh token refused; the profile needs re-authorization");
                self.store
                    .set_status(
                        name,
                        ProfileStatus::NeedsReauthorization,
                        None,
                        &reason,
                        Some(AUTH_PROFILE_REAUTHORIZATION_REQUIRED),
                        SystemTime::now(),
                    )
                    .await?;
                Err(AuthError::NeedsAuthorization { name: name.clone(), again: true, reason })
            }
            Err(e) => {
                tracing::warn!(profile = %name, error = %e, "token refresh failed");
                self.note_failure(&profile, &e.to_string()).await?;
                Err(e)
            }
        }
    }

    /// Records why the last attempt failed, keeping the profile's status and expiry.
    async fn note_failure(&self, profile: &Profile, reason: &str) -> Result<(), AuthError> {
        self.store
            .set_status(&profile.name, profile.status, profile.access_expires_at, reason, None, SystemTime::now())
            .await?;
        Ok(())
    }

    /// Forgets the grant (or API key): destroys the secrets; the profile stays.
    pub async fn revoke(&self, name: &ProfileName) -> Result<Profile, AuthError> {
        let profile = self.get(name).await?;
        let _flight = self.flight(name).await;
        self.destroy_secrets(&profile).await?;
        self.store
            .set_status(
                name,
                ProfileStatus::NeedsAuthorization,
                None,
                "revoked",
                Some(AUTH_PROFILE_REVOKED),
                SystemTime::now(),
            )
            .await?;
        tracing::info!(profile = %name, "auth profile revoked");
        self.get(name).await
    }

    /// The stored tokens of a READY OAuth 2.0 profile (`None` otherwise).
    async fn ready_tokens(&self, profile: &Profile) -> Result<Option<TokenSet>, AuthError> {
        if profile.status != ProfileStatus::Ready {
            return Ok(None);
        }
        match self.vault.get(&profile.name.scope(), &secret_key(TOKEN)?, None).await {
            Ok((value, _)) => serde_json::from_slice::<TokenSet>(value.expose())
                .map(Some)
                .map_err(|e| AuthError::Internal(format!("stored token set of {}: {e}", profile.name))),
            Err(VaultError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn not_ready(&self, profile: &Profile) -> AuthError {
        let (again, reason) = match profile.status {
            ProfileStatus::NeedsReauthorization => (true, profile.last_error.clone()),
            ProfileStatus::NeedsAuthorization if profile.last_error == "revoked" => {
                (false, "it was revoked".to_owned())
            }
            _ => (false, "it was never authorized".to_owned()),
        };
        AuthError::NeedsAuthorization { name: profile.name.clone(), again, reason }
    }

    /// Seals the token set in the vault and marks the profile READY (with `event`).
    async fn store_tokens(
        &self,
        name: &ProfileName,
        set: &TokenSet,
        event: Option<&'static str>,
    ) -> Result<(), AuthError> {
        let bytes = serde_json::to_vec(set).map_err(|e| AuthError::Internal(e.to_string()))?;
        self.vault.put(&name.scope(), &secret_key(TOKEN)?, SecretValue::new(bytes), None).await?;
        self.store
            .set_status(name, ProfileStatus::Ready, set.expires_at(), "", event, SystemTime::now())
            .await?;
        Ok(())
    }

    /// Takes the profile's refresh lock.
    async fn flight(&self, name: &ProfileName) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut flights = self.flights.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(flights.entry(name.clone()).or_default())
        };
        lock.lock_owned().await
    }
}

fn oauth_config(profile: &Profile) -> Result<&OAuth2Config, AuthError> {
    match (&profile.kind, &profile.oauth2) {
        (ProfileKind::OAuth2, Some(config)) => Ok(config),
        _ => Err(AuthError::WrongKind {
            name: profile.name.clone(),
            kind: "an API_KEY profile",
            message: "OAuth 2.0 authorization does not apply",
        }),
    }
}

fn pending_key(state_hash: &str) -> Result<SecretKey, AuthError> {
    secret_key(&format!("pkce-{}", &state_hash[..32.min(state_hash.len())]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::oauth;

    #[test]
    fn freshness_keeps_a_minute_of_margin() {
        let now = SystemTime::now();
        let at = |secs: u64| {
            let mut set = TokenSet::default();
            let tokens = oauth::TokenResponse {
                access_token: String::new(),
                token_type: String::new(),
                expires_in: Some(secs),
                refresh_token: None,
            };
            set.expires_at_ms = tokens.expires_at_ms(now);
            set
        };
        assert!(!at(30).fresh_at(now));
        assert!(at(120).fresh_at(now));
        assert!(TokenSet::default().fresh_at(now));
    }
}
