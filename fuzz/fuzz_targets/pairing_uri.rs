//! The pairing URI of a QR code (`src/pairing/code.rs`), code ids and PINs as typed by a
//! person, and enrollment tokens as pasted (`src/pairing/enrollment.rs`). Checks: parse →
//! to_uri/to_text → parse is the identity; the canonical code id re-parses to itself; Debug
//! never shows a PIN or an enrollment secret.

#![no_main]

use libfuzzer_sys::fuzz_target;
use palyra::pairing::code::{CODE_ID_LEN, is_fingerprint, validate_server};
use palyra::pairing::{CodeId, EnrollmentToken, PairingUri, Pin};

/// What `palyra pair --uri` makes of an accepted server: `https://HOST:PORT`, which must be a
/// URL whose host and port are the ones validated.
fn check_server_url(server: &str) {
    let url = format!("https://{server}");
    let parsed = url.parse::<http::Uri>().unwrap_or_else(|e| panic!("server {server:?}: {e}"));
    let (host, port) = server.rsplit_once(':').expect("HOST:PORT");
    assert_eq!(parsed.host(), Some(host), "server {server:?}");
    assert_eq!(parsed.port_u16(), port.parse::<u16>().ok(), "server {server:?}");
    assert_eq!(parsed.authority().map(|a| a.as_str()), Some(server), "server {server:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(uri) = PairingUri::parse(text) {
        let shown = uri.to_uri();
        assert_eq!(PairingUri::parse(&shown).as_ref(), Ok(&uri), "{:?}", &*shown);
        assert!(validate_server(&uri.server).is_ok());
        check_server_url(&uri.server);
        assert!(is_fingerprint(&uri.ca_fingerprint));
        let debug = format!("{uri:?}");
        assert!(debug.contains("Pin([redacted])") && !debug.contains(&format!("\"{}\"", uri.pin.as_str())));
    }
    if let Ok(token) = EnrollmentToken::parse(text) {
        let shown = token.to_text();
        assert_eq!(EnrollmentToken::parse(&shown).as_ref(), Ok(&token));
        assert!(validate_server(&token.server).is_ok());
        check_server_url(&token.server);
        assert!(is_fingerprint(&token.ca_fingerprint));
        assert!(!format!("{token:?}").contains(token.secret.as_str()));
    }
    if let Ok(id) = CodeId::parse(text) {
        assert_eq!(id.as_str().len(), CODE_ID_LEN);
        assert_eq!(CodeId::parse(id.as_str()).as_ref(), Ok(&id));
        assert_eq!(CodeId::parse(&id.as_str().to_lowercase()).as_ref(), Ok(&id));
    }
    if let Ok(pin) = Pin::parse(text) {
        assert_eq!(pin.as_str(), text);
        assert!(text.len() == 6 && text.bytes().all(|b| b.is_ascii_digit()));
        let _ = Pin::is_trivial(text);
    }
    let _ = Pin::is_trivial(text);
    if validate_server(text).is_ok() {
        check_server_url(text);
    }
});
