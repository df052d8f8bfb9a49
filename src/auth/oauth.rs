//! The OAuth 2.0 token endpoint client (RFC 6749 §4.1.3 code exchange with the PKCE verifier,
//! §6 refresh): reqwest over rustls with the process's ring provider, connect and total
//! timeouts, no redirects, bounded responses. The only code that knows reqwest.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use crate::error_chain::error_chain;
use crate::unix_time::unix_ms;

use serde::Deserialize;
use zeroize::Zeroize;

use super::{AuthError, OAuth2Config};

/// Connecting to a token endpoint gives up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole token request gives up after this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest token response read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Longest provider error text quoted in an error.
const MAX_QUOTED: usize = 200;

/// What a token endpoint returned. Secrets are wiped on drop; `Debug` prints none.
#[derive(Deserialize, Default)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: String,
    /// Its type ("Bearer").
    #[serde(default)]
    pub token_type: String,
    /// Seconds until the access token expires, when the provider says.
    #[serde(default)]
    pub expires_in: Option<u64>,
    /// A (new) refresh token, when the provider sends one.
    #[serde(default)]
    pub refresh_token: Option<String>,
}

impl Drop for TokenResponse {
    fn drop(&mut self) {
        self.access_token.zeroize();
        if let Some(r) = self.refresh_token.as_mut() {
            r.zeroize();
        }
    }
}

/// Longest token lifetime taken from a provider (ten years); a longer `expires_in` is cut to it.
pub const MAX_EXPIRES_IN_SECS: u64 = 10 * 365 * 24 * 60 * 60;

impl TokenResponse {
    /// When the access token expires, in Unix milliseconds, for a response received at `now`
    /// (`None` when the provider did not say). The provider's `expires_in` is any JSON number
    /// up to 2^64 - 1: it is capped at [`MAX_EXPIRES_IN_SECS`] so the sum cannot overflow
    /// and the time stays one every platform's `SystemTime` can hold.
    pub fn expires_at_ms(&self, now: SystemTime) -> Option<u64> {
        self.expires_in.map(|s| unix_ms(now).saturating_add(s.min(MAX_EXPIRES_IN_SECS) * 1000))
    }
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// An OAuth error response body (RFC 6749 §5.2).
#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// An HTTP client for token endpoints: the timeouts above, no redirects, the process's rustls
/// provider (ring, installed if none is). A failure says why, with every cause (reqwest's own
/// message is only "builder error"), as the provider being unreachable: the node is fine, its
/// way to the provider is not.
fn build_http() -> Result<reqwest::Client, AuthError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("palyra/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| AuthError::Provider {
            status: None,
            error: None,
            message: format!("cannot build the client for token endpoints: {}", error_chain(&e)),
        })
}

/// A client of token endpoints. Its HTTP client is built at the first call that needs it:
/// building it loads and parses the platform's trusted roots (~12 % of a start's CPU and over a
/// MiB of memory, measured), which a node whose profiles never reach a token endpoint would pay
/// at every start for nothing. Clones share one client.
#[derive(Debug, Clone, Default)]
pub struct TokenClient {
    http: Arc<OnceLock<reqwest::Client>>,
}

impl TokenClient {
    /// A client with the timeouts above, not yet built.
    pub fn new() -> Self {
        TokenClient::default()
    }

    /// Builds the HTTP client now unless it is built: a flow calls this before it spends
    /// anything single-use, so a machine that cannot build one (no trusted roots) fails the
    /// flow before it starts, not after its state is used up. A failure is not kept: the next
    /// call tries again.
    pub async fn ready(&self) -> Result<(), AuthError> {
        self.http().await.map(drop)
    }

    /// The HTTP client (a handle: clones share its connections), built on a blocking thread
    /// (file reads) if this is the first call. Two first calls at once both build one; the
    /// first stored is kept.
    async fn http(&self) -> Result<reqwest::Client, AuthError> {
        if let Some(http) = self.http.get() {
            return Ok(http.clone());
        }
        let http = tokio::task::spawn_blocking(build_http)
            .await
            .map_err(|e| AuthError::Internal(format!("building the token endpoint client: {e}")))??;
        Ok(self.http.get_or_init(|| http).clone())
    }

    /// Exchanges an authorization code and its PKCE verifier for tokens.
    pub async fn exchange_code(
        &self,
        config: &OAuth2Config,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<TokenResponse, AuthError> {
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("client_id", config.client_id.as_str()),
            ("code_verifier", verifier),
        ];
        self.post(config, &form).await
    }

    /// Refreshes with a refresh token.
    pub async fn refresh(
        &self,
        config: &OAuth2Config,
        refresh_token: &str,
    ) -> Result<TokenResponse, AuthError> {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", config.client_id.as_str()),
        ];
        self.post(config, &form).await
    }

    async fn post(&self, config: &OAuth2Config, form: &[(&str, &str)]) -> Result<TokenResponse, AuthError> {
        let unreachable = |e: reqwest::Error| AuthError::Provider {
            status: None,
            error: None,
            message: format!(
                "token endpoint {} {}",
                config.token_url,
                if e.is_timeout() { "timed out" } else { "could not be reached" }
            ),
        };
        let mut response = self
            .http()
            .await?
            .post(&config.token_url)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        let mut body = zeroize::Zeroizing::new(Vec::new());
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(AuthError::Provider {
                    status: Some(status.as_u16()),
                    error: None,
                    message: format!("token endpoint response is larger than {MAX_RESPONSE_BYTES} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        parse_token_response(status.as_u16(), &body)
    }
}

/// Reads a token endpoint's answer (RFC 6749 §5.1 and §5.2) from its status and body: the
/// tokens of a 2xx with a non-empty `access_token`, else the provider's error, bounded. Pure:
/// the body is untrusted input and this is its only parser.
pub fn parse_token_response(status: u16, body: &[u8]) -> Result<TokenResponse, AuthError> {
    if (200..300).contains(&status) {
        return json_object::<TokenResponse>(body).filter(|t| !t.access_token.is_empty()).ok_or_else(|| {
            AuthError::Provider {
                status: Some(status),
                error: None,
                message: "token endpoint returned no access_token".into(),
            }
        });
    }
    let parsed = json_object::<ErrorBody>(body);
    match parsed {
        Some(e) if e.error == "invalid_grant" => Err(AuthError::InvalidGrant {
            description: e.error_description.map(|d| bounded(&d)).unwrap_or_default(),
        }),
        other => {
            let error = other.as_ref().map(|e| bounded(&e.error));
            let description = other.and_then(|e| e.error_description).map(|d| format!(": {}", bounded(&d)));
            Err(AuthError::Provider {
                status: Some(status),
                message: format!(
                    "token endpoint answered {}{}{}",
                    status,
                    error.as_deref().map(|e| format!(" {e}")).unwrap_or_default(),
                    description.unwrap_or_default()
                ),
                error,
            })
        }
    }
}

/// A JSON object (RFC 6749 §5.1, §5.2) read as `T`. serde also reads a struct from a JSON
/// array of its fields in order, which no token endpoint sends: only an object is accepted.
fn json_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Option<T> {
    let object = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body).ok()?;
    serde_json::from_value(serde_json::Value::Object(object)).ok()
}

/// Provider text, bounded and without control characters.
fn bounded(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(MAX_QUOTED).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing is built until a call needs it; then every clone shares the one client.
    #[tokio::test]
    async fn the_http_client_is_built_at_first_use_and_shared_by_clones() {
        let client = TokenClient::new();
        let clone = client.clone();
        assert!(client.http.get().is_none(), "built before any call");
        clone.ready().await.unwrap();
        assert!(client.http.get().is_some(), "a clone built its own client");
        assert!(Arc::ptr_eq(&client.http, &clone.http));
    }

    /// fuzz/corpus/auth/regression-token-as-json-array: `["expires_in"]` from a token endpoint
    /// was read as a token response (serde fills a struct from an array of its fields), with
    /// the access token "expires_in".
    #[test]
    fn fuzz_regression_token_response_as_a_json_array() {
        assert!(parse_token_response(271, br#"["expires_in"]"#).is_err());
        assert!(parse_token_response(200, br#"["at-1", "Bearer", 3600, "rt-1"]"#).is_err());
        assert!(matches!(
            parse_token_response(400, br#"["invalid_grant", "gone"]"#),
            Err(AuthError::Provider { error: None, .. })
        ));
        let tokens = parse_token_response(200, br#"{"access_token":"at-1","expires_in":60}"#);
        assert_eq!(
            tokens.map(|t| (t.access_token.clone(), t.expires_in)).ok(),
            Some(("at-1".to_owned(), Some(60)))
        );
        assert!(matches!(
            parse_token_response(400, br#"{"error":"invalid_grant"}"#),
            Err(AuthError::InvalidGrant { .. })
        ));
    }

    /// fuzz/corpus/auth/regression-expires-in-max: `"expires_in": 18446744073709551615` made
    /// `now_ms + expires_in * 1000` (saturating multiply, plain add) overflow: a panic in a
    /// debug build, a token "expired" in 1970 (a refresh on every call) in a release build.
    /// Found reading the code while writing the auth fuzz target; 5.8 million executions of
    /// the target did not reach it, so the input is now a seed.
    #[test]
    fn regression_huge_expires_in_overflowed_the_expiry() {
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let now_ms = 1_800_000_000_000;
        for huge in [u64::MAX, u64::MAX / 1000, u64::MAX / 1000 - 1_000_000, MAX_EXPIRES_IN_SECS + 1] {
            let body = format!(r#"{{"access_token":"at","expires_in":{huge}}}"#);
            let tokens = parse_token_response(200, body.as_bytes()).map_err(|e| e.to_string());
            let at = tokens.map(|t| t.expires_at_ms(now));
            assert_eq!(at, Ok(Some(now_ms + MAX_EXPIRES_IN_SECS * 1000)), "expires_in {huge}");
        }
        let tokens = parse_token_response(200, br#"{"access_token":"at","expires_in":3600}"#);
        assert_eq!(tokens.map(|t| t.expires_at_ms(now)).ok(), Some(Some(now_ms + 3_600_000)));
    }
}
