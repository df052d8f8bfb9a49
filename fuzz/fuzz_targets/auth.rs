//! Auth profiles (`src/auth/`): the OAuth 2.0 token endpoint's answer (status and body, from
//! the network: `oauth::parse_token_response`) and the expiry the node computes from it,
//! profile names, and the OAuth settings a client sends with CreateProfile. The first byte
//! picks the mode. Checks: a token response always carries a token and an expiry in the
//! future; provider text quoted in an error is bounded and has no control characters;
//! profile names are vault scope segments.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::{Duration, UNIX_EPOCH};

use palyra::auth::oauth::{MAX_EXPIRES_IN_SECS, parse_token_response};
use palyra::auth::{AuthError, OAuth2Config, ProfileName};
use palyra::unix_time::unix_ms;
use palyra_fuzz::{Fields, now};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => {
            let status = rest.first_chunk::<2>().map_or(200, |s| u16::from_be_bytes(*s) % 600);
            let body = rest.get(2..).unwrap_or_default();
            match parse_token_response(status, body) {
                Ok(tokens) => {
                    assert!((200..300).contains(&status));
                    assert!(!tokens.access_token.is_empty());
                    // Debug shows the token type and lifetime, never a token.
                    let shown = format!(
                        "TokenResponse {{ token_type: {:?}, expires_in: {:?}, .. }}",
                        tokens.token_type, tokens.expires_in
                    );
                    assert_eq!(format!("{tokens:?}"), shown);
                    if let Some(at) = tokens.expires_at_ms(now()) {
                        assert!(at >= unix_ms(now()), "a token that expired before it arrived");
                        assert!(at <= unix_ms(now()) + MAX_EXPIRES_IN_SECS * 1000);
                        let _ = UNIX_EPOCH + Duration::from_millis(at);
                    }
                }
                Err(AuthError::InvalidGrant { description }) => {
                    assert!(description.chars().count() <= 200 && !description.chars().any(char::is_control));
                }
                Err(AuthError::Provider { message, error, .. }) => {
                    assert!(message.chars().count() <= 500, "{message}");
                    assert!(!message.chars().any(char::is_control), "{message:?}");
                    assert!(error.is_none_or(|e| e.chars().count() <= 200));
                }
                Err(e) => panic!("a token response: {e:?}"),
            }
        }
        1 => {
            let Ok(text) = std::str::from_utf8(rest) else { return };
            if let Ok(name) = ProfileName::parse(text) {
                assert_eq!(name.scope().as_str(), format!("palyra/auth/{text}"));
            }
        }
        _ => {
            let mut f = Fields::new(rest);
            let config = OAuth2Config {
                client_id: f.text(),
                authorize_url: f.text(),
                token_url: f.text(),
                scopes: f.text().split(',').map(str::to_owned).collect(),
                redirect_uri: f.text(),
            };
            if config.validate().is_ok() {
                // What the node stores is what it will call: no text the URL parser would
                // silently drop (surrounding spaces, control characters), a web scheme.
                for url in [&config.authorize_url, &config.token_url, &config.redirect_uri] {
                    assert!(!url.chars().any(char::is_control) && url.trim() == url, "{url:?}");
                }
                for url in [&config.authorize_url, &config.token_url] {
                    let parsed = url::Url::parse(url).expect("a validated URL parses");
                    assert!(["https", "http"].contains(&parsed.scheme()), "{url:?}");
                }
            }
        }
    }
});
