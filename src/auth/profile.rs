//! What an auth profile is: its name (a vault scope segment), kind, status and OAuth 2.0
//! settings, with the validation of every field a caller gives (endpoints https or loopback
//! http, bounded text), and the values the service hands in and out. No I/O, no secrets kept:
//! [`AccessToken`] carries one out and wipes it on drop.

use std::fmt;
use std::time::SystemTime;

use url::Url;
use zeroize::Zeroizing;

use super::AuthError;
use crate::vault::{Scope, SecretValue};

/// The vault scope under which profiles keep their secrets (`palyra/auth/<name>`).
pub const RESERVED_SCOPE: &str = "palyra/auth";
/// Longest provider name, client id or scope accepted.
const MAX_FIELD: usize = 256;
/// Longest URL accepted.
const MAX_URL: usize = 2048;
/// Most scopes per profile.
const MAX_SCOPES: usize = 64;

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

pub(super) fn bounded_text(field: &'static str, text: &str, required: bool) -> Result<(), AuthError> {
    if required && text.is_empty() {
        return Err(AuthError::invalid(field, "required"));
    }
    if text.len() > MAX_FIELD || text.chars().any(char::is_control) {
        return Err(AuthError::invalid(field, format!("at most {MAX_FIELD} bytes, no control characters")));
    }
    Ok(())
}

pub(super) fn parse_url(field: &'static str, text: &str) -> Result<Url, AuthError> {
    if text.len() > MAX_URL {
        return Err(AuthError::invalid(field, format!("longer than {MAX_URL} bytes")));
    }
    // The URL parser drops surrounding spaces and tabs or newlines anywhere; the text is kept
    // and shown as given, so what is validated must be what will be called.
    if text.trim() != text || text.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(AuthError::invalid(field, "no spaces or control characters"));
    }
    Url::parse(text).map_err(|e| AuthError::invalid(field, format!("not a URL: {e}")))
}

fn is_loopback(url: &Url) -> bool {
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
pub(super) fn redirect_uri(field: &'static str, text: &str) -> Result<(), AuthError> {
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
}
