//! Auth profiles: the credentials the node uses to call external providers, as plain API keys
//! or OAuth 2.0 authorization-code grants with PKCE (S256) and automatic refresh.
//!
//! The registry (name, provider, kind, endpoints, status) lives in SQLite (`crate::storage`);
//! keys, tokens and PKCE verifiers are sealed in the [`Vault`] under the reserved scope
//! `palyra/auth/<name>` ([`RESERVED_SCOPE`]), which the default policies keep every vault call
//! away from. [`AuthProfiles::access_token`] refreshes a token that expires within
//! [`REFRESH_MARGIN`], one refresh per profile however many callers wait (single flight).
//!
//! This module does not authorize (the edges ask the policy engine first) and knows no gRPC;
//! [`oauth`] is the only code that speaks HTTP.

pub mod oauth;
pub mod pkce;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::events::{AUTH_PROFILE_AUTHORIZED, AUTH_PROFILE_REAUTHORIZATION_REQUIRED, AUTH_PROFILE_REVOKED};
use crate::storage::{StorageError, Store};
use crate::vault::{Scope, SecretKey, SecretValue, Vault, VaultError};

pub use oauth::TokenClient;
pub use pkce::CodeVerifier;

/// The vault scope under which profiles keep their secrets (`palyra/auth/<name>`).
pub const RESERVED_SCOPE: &str = "palyra/auth";
/// An access token that expires within this is refreshed before it is handed out.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// How long a StartAuthorization's state is accepted.
pub const STATE_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// Longest provider name, client id or scope accepted.
const MAX_FIELD: usize = 256;
/// Longest URL accepted.
const MAX_URL: usize = 2048;
/// Most scopes per profile.
const MAX_SCOPES: usize = 64;
/// Vault key of an API key.
const API_KEY: &str = "api-key";
/// Vault key of the token set.
const TOKEN: &str = "token";

/// A profile name: one vault scope segment, `[a-z0-9][a-z0-9._-]{0,63}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProfileName(String);

impl ProfileName {
    /// Parses a name.
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        let bytes = text.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 64
            && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
            && bytes.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && !text.contains("..");
        if ok {
            Ok(ProfileName(text.to_owned()))
        } else {
            Err(AuthError::invalid(
                "name",
                format!(
                    "invalid profile name {:?}: use 1-64 of a-z 0-9 . _ - starting with a letter or digit",
                    text.chars().take(70).collect::<String>()
                ),
            ))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The vault scope of this profile's secrets.
    pub fn scope(&self) -> Scope {
        // A profile name is a valid scope segment, so this always parses.
        Scope::parse(&format!("{RESERVED_SCOPE}/{}", self.0)).unwrap_or_else(|_| unreachable_scope())
    }
}

#[allow(clippy::panic, reason = "ProfileName::parse admits only valid scope segments")]
fn unreachable_scope() -> Scope {
    panic!("a profile name is a valid scope segment")
}

impl fmt::Display for ProfileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What kind of credential a profile holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileKind {
    /// A static API key.
    ApiKey,
    /// An OAuth 2.0 grant.
    OAuth2,
}

impl ProfileKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileKind::ApiKey => "api_key",
            ProfileKind::OAuth2 => "oauth2",
        }
    }

    /// From the stored name.
    pub fn from_stored(text: &str) -> Option<Self> {
        match text {
            "api_key" => Some(ProfileKind::ApiKey),
            "oauth2" => Some(ProfileKind::OAuth2),
            _ => None,
        }
    }
}

/// Whether a profile can produce a credential now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileStatus {
    /// It can.
    Ready,
    /// Never authorized, or revoked.
    NeedsAuthorization,
    /// The provider refused its refresh token.
    NeedsReauthorization,
}

impl ProfileStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileStatus::Ready => "ready",
            ProfileStatus::NeedsAuthorization => "needs_authorization",
            ProfileStatus::NeedsReauthorization => "needs_reauthorization",
        }
    }

    /// From the stored name.
    pub fn from_stored(text: &str) -> Option<Self> {
        match text {
            "ready" => Some(ProfileStatus::Ready),
            "needs_authorization" => Some(ProfileStatus::NeedsAuthorization),
            "needs_reauthorization" => Some(ProfileStatus::NeedsReauthorization),
            _ => None,
        }
    }
}

/// The OAuth 2.0 settings of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OAuth2Config {
    /// The client id.
    pub client_id: String,
    /// The authorization endpoint.
    pub authorize_url: String,
    /// The token endpoint.
    pub token_url: String,
    /// Scopes requested.
    pub scopes: Vec<String>,
    /// The registered redirect URI ("" = none; StartAuthorization must then give one).
    pub redirect_uri: String,
}

impl OAuth2Config {
    /// Checks every field: endpoints https (or http on loopback), bounded text.
    pub fn validate(&self) -> Result<(), AuthError> {
        bounded_text("oauth2.client_id", &self.client_id, true)?;
        endpoint("oauth2.authorize_url", &self.authorize_url)?;
        endpoint("oauth2.token_url", &self.token_url)?;
        if self.scopes.len() > MAX_SCOPES {
            return Err(AuthError::invalid("oauth2.scopes", format!("at most {MAX_SCOPES} scopes")));
        }
        for scope in &self.scopes {
            bounded_text("oauth2.scopes", scope, true)?;
            if scope.contains(' ') {
                return Err(AuthError::invalid("oauth2.scopes", "a scope has no spaces"));
            }
        }
        if !self.redirect_uri.is_empty() {
            redirect_uri("oauth2.redirect_uri", &self.redirect_uri)?;
        }
        Ok(())
    }
}

fn bounded_text(field: &'static str, text: &str, required: bool) -> Result<(), AuthError> {
    if required && text.is_empty() {
        return Err(AuthError::invalid(field, "required"));
    }
    if text.len() > MAX_FIELD || text.chars().any(char::is_control) {
        return Err(AuthError::invalid(field, format!("at most {MAX_FIELD} bytes, no control characters")));
    }
    Ok(())
}

fn parse_url(field: &'static str, text: &str) -> Result<reqwest::Url, AuthError> {
    if text.len() > MAX_URL {
        return Err(AuthError::invalid(field, format!("longer than {MAX_URL} bytes")));
    }
    // The URL parser drops surrounding spaces and tabs or newlines anywhere; the text is kept
    // and shown as given, so what is validated must be what will be called.
    if text.trim() != text || text.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(AuthError::invalid(field, "no spaces or control characters"));
    }
    reqwest::Url::parse(text).map_err(|e| AuthError::invalid(field, format!("not a URL: {e}")))
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// An endpoint the node calls: https, or http on a loopback address; no credentials in it.
fn endpoint(field: &'static str, text: &str) -> Result<(), AuthError> {
    let url = parse_url(field, text)?;
    let secure = url.scheme() == "https" || (url.scheme() == "http" && is_loopback(&url));
    if !secure {
        return Err(AuthError::invalid(field, "must be https (http only on a loopback address)"));
    }
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(AuthError::invalid(field, "no user info or fragment"));
    }
    Ok(())
}

/// A redirect URI: http(s) or a custom scheme; no fragment.
fn redirect_uri(field: &'static str, text: &str) -> Result<(), AuthError> {
    let url = parse_url(field, text)?;
    if url.fragment().is_some() {
        return Err(AuthError::invalid(field, "no fragment"));
    }
    if url.scheme() == "http" && !is_loopback(&url) {
        return Err(AuthError::invalid(field, "http only on a loopback address"));
    }
    Ok(())
}

/// A profile as the registry keeps it. Never carries a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Its name.
    pub name: ProfileName,
    /// The provider, free text.
    pub provider: String,
    /// API key or OAuth 2.0.
    pub kind: ProfileKind,
    /// The OAuth 2.0 settings (OAuth2 only).
    pub oauth2: Option<OAuth2Config>,
    /// Can it produce a credential now.
    pub status: ProfileStatus,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it last changed.
    pub updated_at: SystemTime,
    /// When the stored access token expires.
    pub access_expires_at: Option<SystemTime>,
    /// Why the last exchange or refresh failed ("" when it did not).
    pub last_error: String,
}

/// A StartAuthorization waiting for its CompleteAuthorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAuthorization {
    /// SHA-256 (hex) of the state.
    pub state_hash: String,
    /// The profile being authorized.
    pub profile: ProfileName,
    /// The redirect URI used at the authorization endpoint (sent again at the exchange).
    pub redirect_uri: String,
    /// When the state stops being accepted.
    pub expires_at: SystemTime,
}

/// What a new profile is made of.
#[derive(Debug)]
pub struct NewProfile {
    /// Its name.
    pub name: ProfileName,
    /// The provider.
    pub provider: String,
    /// Its credential.
    pub credential: NewCredential,
}

/// The credential of a new profile.
#[derive(Debug)]
pub enum NewCredential {
    /// An API key.
    ApiKey(SecretValue),
    /// OAuth 2.0 settings; the grant comes with an authorization.
    OAuth2(OAuth2Config),
}

/// A started authorization, for the caller to open.
#[derive(Debug, Clone)]
pub struct StartedAuthorization {
    /// The authorization URL with the challenge and state.
    pub authorize_url: String,
    /// The state.
    pub state: String,
    /// When the state expires.
    pub expires_at: SystemTime,
}

/// A credential handed out. `Debug` prints no secret; wiped on drop.
pub struct AccessToken {
    /// The key or access token.
    pub token: Zeroizing<String>,
    /// "Bearer" etc.; "" for an API key.
    pub token_type: String,
    /// When it expires, when known.
    pub expires_at: Option<SystemTime>,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

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

/// Why an auth profile operation failed. Messages carry names and provider statuses, never a
/// key, token, code or verifier.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A field is malformed.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The field at fault.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// No such profile.
    #[error("auth profile {0} not found")]
    NotFound(ProfileName),
    /// The name is taken.
    #[error("auth profile {0} already exists")]
    AlreadyExists(ProfileName),
    /// The call does not apply to this kind of profile.
    #[error("auth profile {name} is {kind}: {message}")]
    WrongKind {
        /// The profile.
        name: ProfileName,
        /// Its kind.
        kind: &'static str,
        /// What does not apply.
        message: &'static str,
    },
    /// The state is unknown, used or expired.
    #[error("the authorization state is unknown, already used or expired: start the authorization again")]
    StateInvalid,
    /// The profile has no usable grant; a new authorization is needed.
    #[error("auth profile {name} needs {}authorization: {reason}; run `palyra auth login {name}`", if *.again { "re-" } else { "" })]
    NeedsAuthorization {
        /// The profile.
        name: ProfileName,
        /// Whether it had a grant the provider refused (`invalid_grant`).
        again: bool,
        /// Why.
        reason: String,
    },
    /// The provider refused the grant (`invalid_grant`); mapped to [`AuthError::NeedsAuthorization`]
    /// by [`AuthProfiles`].
    #[error("the provider refused the grant (invalid_grant){}", if .description.is_empty() { String::new() } else { format!(": {}", .description) })]
    InvalidGrant {
        /// The provider's error_description, bounded.
        description: String,
    },
    /// The provider failed or could not be reached.
    #[error("{message}")]
    Provider {
        /// Its HTTP status, when it answered.
        status: Option<u16>,
        /// Its OAuth error code, when it sent one.
        error: Option<String>,
        /// What happened.
        message: String,
    },
    /// The vault failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// Something that cannot happen did (detail for the log).
    #[error("internal error: {0}")]
    Internal(String),
}

impl AuthError {
    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        AuthError::InvalidArgument { field, message: message.into() }
    }
}

/// The auth profiles of a node.
#[derive(Clone)]
pub struct AuthProfiles {
    store: Store,
    vault: Vault,
    http: TokenClient,
    /// One refresh at a time per profile (single flight): callers queue on the profile's
    /// lock and find the token the first one stored.
    flights: Arc<Mutex<HashMap<ProfileName, Arc<tokio::sync::Mutex<()>>>>>,
}

impl fmt::Debug for AuthProfiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthProfiles").finish_non_exhaustive()
    }
}

fn secret_key(name: &str) -> Result<SecretKey, AuthError> {
    SecretKey::parse(name).map_err(|e| AuthError::Internal(e.to_string()))
}

impl AuthProfiles {
    /// The profiles in `store`, their secrets in `vault`.
    pub fn new(store: Store, vault: Vault) -> Result<Self, AuthError> {
        Ok(AuthProfiles { store, vault, http: TokenClient::new()?, flights: Arc::default() })
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
        if !self.store.insert_auth_profile(&profile).await? {
            return Err(AuthError::AlreadyExists(new.name));
        }
        if let NewCredential::ApiKey(key) = new.credential {
            // Left over from a deleted profile of the same name: replaced, not appended to.
            let scope = profile.name.scope();
            if let Err(e) = self.vault.put(&scope, &secret_key(API_KEY)?, key, None).await {
                let _ = self.store.delete_auth_profile(&profile.name).await;
                return Err(e.into());
            }
        }
        Ok(profile)
    }

    /// Every profile, by name.
    pub async fn list(&self) -> Result<Vec<Profile>, AuthError> {
        Ok(self.store.auth_profiles().await?)
    }

    /// One profile.
    pub async fn get(&self, name: &ProfileName) -> Result<Profile, AuthError> {
        self.store.auth_profile(name).await?.ok_or_else(|| AuthError::NotFound(name.clone()))
    }

    /// Deletes a profile and destroys its secrets.
    pub async fn delete(&self, name: &ProfileName) -> Result<(), AuthError> {
        let profile = self.get(name).await?;
        self.destroy_secrets(&profile).await?;
        if !self.store.delete_auth_profile(name).await? {
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
            .insert_auth_pending(
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
        let now = SystemTime::now();
        let state_hash = pkce::state_hash(state);
        let pending = self.store.take_auth_pending(&state_hash, now).await?.ok_or(AuthError::StateInvalid)?;
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
                self.store
                    .set_auth_status(
                        &name,
                        profile.status,
                        profile.access_expires_at,
                        &reason,
                        None,
                        SystemTime::now(),
                    )
                    .await?;
                Err(AuthError::NeedsAuthorization { name, again: false, reason })
            }
            Err(e) => {
                self.store
                    .set_auth_status(
                        &name,
                        profile.status,
                        profile.access_expires_at,
                        &e.to_string(),
                        None,
                        SystemTime::now(),
                    )
                    .await?;
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
                .set_auth_status(
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
                    .set_auth_status(
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
                self.store
                    .set_auth_status(
                        name,
                        profile.status,
                        profile.access_expires_at,
                        &e.to_string(),
                        None,
                        SystemTime::now(),
                    )
                    .await?;
                Err(e)
            }
        }
    }

    /// Forgets the grant (or API key): destroys the secrets; the profile stays.
    pub async fn revoke(&self, name: &ProfileName) -> Result<Profile, AuthError> {
        let profile = self.get(name).await?;
        let _flight = self.flight(name).await;
        self.destroy_secrets(&profile).await?;
        self.store
            .set_auth_status(
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
            .set_auth_status(name, ProfileStatus::Ready, set.expires_at(), "", event, SystemTime::now())
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

    #[test]
    fn names_are_scope_segments() {
        for good in ["openai", "a", "team.anthropic_2", "x-y"] {
            assert!(ProfileName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "OpenAI", "-a", "a/b", "a..b", &"a".repeat(65), "a b"] {
            assert!(ProfileName::parse(bad).is_err(), "{bad}");
        }
        let name = ProfileName::parse("openai").map_err(|e| e.to_string());
        assert_eq!(name.map(|n| n.scope().to_string()), Ok("palyra/auth/openai".to_owned()));
    }

    #[test]
    fn endpoints_are_https_or_loopback_http() {
        assert!(endpoint("f", "https://auth.example.com/token").is_ok());
        assert!(endpoint("f", "http://127.0.0.1:8080/token").is_ok());
        assert!(endpoint("f", "http://localhost/token").is_ok());
        assert!(endpoint("f", "http://example.com/token").is_err());
        assert!(endpoint("f", "https://user:pw@example.com/token").is_err());
        assert!(endpoint("f", "ftp://example.com").is_err());
        assert!(endpoint("f", "not a url").is_err());
    }

    /// fuzz/corpus/auth/regression-url-with-spaces: an endpoint with surrounding spaces (or a
    /// tab or newline inside) was accepted, because the URL parser drops them, and stored and
    /// shown as sent.
    #[test]
    fn fuzz_regression_oauth_url_with_spaces_or_controls() {
        for bad in [
            "   http://127.0.0.1:8080/token ",
            "https://auth.example.com/tok\ten",
            "https://auth.exa\nmple.com/token",
            "https://auth.example.com/token\r",
            "https://auth.example.com/a b",
        ] {
            assert!(endpoint("f", bad).is_err(), "{bad:?}");
            assert!(redirect_uri("f", bad).is_err(), "{bad:?}");
        }
        assert!(endpoint("f", "https://auth.example.com/token?a=b%20c").is_ok());
    }

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
