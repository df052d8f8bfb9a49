//! Pairing codes: `code_id` and PIN generation, the code's life (expiry, attempts, single
//! use), PIN sealing under the node's internal seal key, and the `palyra://pair?...` URI.

use std::fmt;
use std::time::SystemTime;

use ring::aead;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::{Zeroize, Zeroizing};

use super::PairingError;
use crate::identity::Role;

/// Crockford base32 alphabet (no I, L, O, U).
pub(super) const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Length of a `code_id`.
pub const CODE_ID_LEN: usize = 10;
/// Length of a PIN.
pub const PIN_LEN: usize = 6;
/// Longest pairing URI accepted.
pub const MAX_URI_LEN: usize = 1024;
/// AAD prefix of a sealed PIN (the code_id follows).
const PIN_AAD: &[u8] = b"palyra.pairing.pin.v1";

/// A code's id: 10 characters of Crockford base32, random. Not secret on its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CodeId(String);

impl CodeId {
    /// A fresh random id (50 bits).
    pub fn generate() -> Result<Self, PairingError> {
        Ok(CodeId(random_crockford::<CODE_ID_LEN>()?.as_str().to_owned()))
    }

    /// Parses a code id: case-insensitive, with Crockford's aliases (`I`/`L` → `1`, `O` → `0`).
    pub fn parse(text: &str) -> Result<Self, PairingError> {
        if text.len() != CODE_ID_LEN {
            return Err(PairingError::invalid(
                "code_id",
                format!("a code id has {CODE_ID_LEN} characters, got {}", text.len().min(9999)),
            ));
        }
        let mut out = String::with_capacity(CODE_ID_LEN);
        for c in text.chars() {
            let c = match c.to_ascii_uppercase() {
                'I' | 'L' => '1',
                'O' => '0',
                c => c,
            };
            if !c.is_ascii() || !CROCKFORD.contains(&(c as u8)) {
                return Err(PairingError::invalid("code_id", "not Crockford base32"));
            }
            out.push(c);
        }
        Ok(CodeId(out))
    }

    /// The canonical text (upper case).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `N` random Crockford base32 characters (5 random bits each), in a buffer wiped on drop: code
/// ids and enrollment secrets.
pub(super) fn random_crockford<const N: usize>() -> Result<Zeroizing<String>, PairingError> {
    let mut bytes = Zeroizing::new([0u8; N]);
    SystemRandom::new().fill(bytes.as_mut()).map_err(|_| PairingError::Random)?;
    Ok(Zeroizing::new(bytes.iter().map(|b| char::from(CROCKFORD[usize::from(b & 31)])).collect()))
}

/// A 6-digit PIN. Zeroized on drop; `Debug` prints `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Pin(Zeroizing<String>);

impl Pin {
    /// A fresh random PIN that is not trivial (see [`Pin::is_trivial`]).
    pub fn generate() -> Result<Self, PairingError> {
        let rng = SystemRandom::new();
        loop {
            let mut bytes = Zeroizing::new([0u8; 4]);
            rng.fill(bytes.as_mut()).map_err(|_| PairingError::Random)?;
            let n = u32::from_be_bytes(*bytes);
            // Rejection sampling keeps the digits uniform: 4,294,000,000 is a multiple of 10^6.
            if n >= 4_294_000_000 {
                continue;
            }
            let pin = Zeroizing::new(format!("{:06}", n % 1_000_000));
            if !Pin::is_trivial(&pin) {
                return Ok(Pin(pin));
            }
        }
    }

    /// Parses a PIN typed by a person: exactly 6 ASCII digits.
    pub fn parse(text: &str) -> Result<Self, PairingError> {
        if text.len() != PIN_LEN || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PairingError::invalid("pin", "a PIN is 6 digits"));
        }
        Ok(Pin(Zeroizing::new(text.to_owned())))
    }

    /// Whether `pin` is one a person would guess first: all digits equal, a run of
    /// consecutive digits up or down (012345, 123456, 654321, ...), a repeated pair or triple
    /// (121212, 123123) or a few well-known patterns. Such PINs are never issued.
    pub fn is_trivial(pin: &str) -> bool {
        let d: Vec<i16> = pin.bytes().map(|b| i16::from(b) - i16::from(b'0')).collect();
        if d.len() != PIN_LEN {
            return true;
        }
        let steps: Vec<i16> = d.windows(2).map(|w| w[1] - w[0]).collect();
        let constant_step = steps.iter().all(|s| *s == steps[0]) && steps[0].abs() <= 1;
        let period = |p: usize| d.iter().enumerate().all(|(i, x)| *x == d[i % p]);
        const KNOWN: &[&str] = &["112233", "332211", "147258", "258369", "159753", "102030", "696969"];
        constant_step || period(2) || period(3) || KNOWN.contains(&pin)
    }

    /// The digits (the SPAKE2 password).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The SPAKE2 password of a handshake: a pairing code's PIN, or an enrollment key's secret
/// ([`super::enrollment::EnrollmentSecret`]).
pub trait PakePassword {
    /// The password bytes.
    fn pake_password(&self) -> &[u8];
}

impl PakePassword for Pin {
    fn pake_password(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin([redacted])")
    }
}

/// Seals `pin` under `key` (the node's internal seal key), bound to `code_id`: random nonce ‖
/// ciphertext ‖ tag.
pub fn seal_pin(key: &aead::LessSafeKey, code_id: &CodeId, pin: &Pin) -> Result<Vec<u8>, PairingError> {
    seal(key, PIN_AAD, code_id.as_str(), pin.as_str().as_bytes())
}

/// Opens a PIN sealed by [`seal_pin`] for the same `code_id`.
pub fn open_pin(key: &aead::LessSafeKey, code_id: &CodeId, sealed: &[u8]) -> Result<Pin, PairingError> {
    if sealed.len() != aead::NONCE_LEN + PIN_LEN + key.algorithm().tag_len() {
        return Err(PairingError::Integrity);
    }
    let plain = open(key, PIN_AAD, code_id.as_str(), sealed)?;
    let text = std::str::from_utf8(&plain).map_err(|_| PairingError::Integrity)?;
    Pin::parse(text).map_err(|_| PairingError::Integrity)
}

/// Seals `plain` under `key` with AAD `domain ‖ binding`: random nonce ‖ ciphertext ‖ tag.
/// The domain keeps one kind of sealed value from passing for another; the binding (a code
/// id, a session id) keeps a sealed value from being moved to another row.
pub(crate) fn seal(
    key: &aead::LessSafeKey,
    domain: &[u8],
    binding: &str,
    plain: &[u8],
) -> Result<Vec<u8>, PairingError> {
    let mut nonce = [0u8; aead::NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|_| PairingError::Random)?;
    let mut out = Vec::with_capacity(aead::NONCE_LEN + plain.len() + key.algorithm().tag_len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plain);
    let sealed = key.seal_in_place_separate_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        aad(domain, binding),
        &mut out[aead::NONCE_LEN..],
    );
    let Ok(tag) = sealed else {
        out.zeroize();
        return Err(PairingError::Random);
    };
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Opens a value sealed by [`seal`] with the same `domain` and `binding`; any mismatch or
/// alteration is [`PairingError::Integrity`]. The plaintext is zeroized when dropped.
pub(crate) fn open(
    key: &aead::LessSafeKey,
    domain: &[u8],
    binding: &str,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, PairingError> {
    if sealed.len() < aead::NONCE_LEN + key.algorithm().tag_len() {
        return Err(PairingError::Integrity);
    }
    let (nonce, body) = sealed.split_at(aead::NONCE_LEN);
    let nonce = aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| PairingError::Integrity)?;
    let mut buffer = Zeroizing::new(body.to_vec());
    let len = key
        .open_in_place(nonce, aad(domain, binding), &mut buffer)
        .map_err(|_| PairingError::Integrity)?
        .len();
    buffer.truncate(len);
    Ok(buffer)
}

fn aad(domain: &[u8], binding: &str) -> aead::Aad<Vec<u8>> {
    let mut aad = domain.to_vec();
    aad.extend_from_slice(binding.as_bytes());
    aead::Aad::from(aad)
}

/// Where a code stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeState {
    /// Accepting StartPairing.
    Active,
    /// A FinishPairing succeeded with it (single use).
    Used,
    /// Its attempts ran out.
    Burned,
    /// Its lifetime passed.
    Expired,
}

impl CodeState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CodeState::Active => "active",
            CodeState::Used => "used",
            CodeState::Burned => "burned",
            CodeState::Expired => "expired",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "active" => CodeState::Active,
            "used" => CodeState::Used,
            "burned" => CodeState::Burned,
            "expired" => CodeState::Expired,
            _ => return None,
        })
    }
}

/// A pairing code as the node keeps it (the PIN sealed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingCode {
    /// Its id.
    pub code_id: CodeId,
    /// The PIN sealed by [`seal_pin`]; `None` once used, burned or expired.
    pub sealed_pin: Option<Vec<u8>>,
    /// The role a device paired with it gets by default (never admin).
    pub role: Role,
    /// When it was made.
    pub created_at: SystemTime,
    /// When it stops being accepted.
    pub expires_at: SystemTime,
    /// Attempts it allowed.
    pub max_attempts: u32,
    /// Attempts left.
    pub attempts_left: u32,
    /// Where it stands.
    pub state: CodeState,
}

impl PairingCode {
    /// Spends one attempt for a StartPairing at `now` (each start is one PIN guess), or says
    /// why the code cannot be used. An expired code is marked so and loses its PIN.
    pub fn take_attempt(&mut self, now: SystemTime) -> Result<(), PairingError> {
        match self.state {
            CodeState::Used => return Err(PairingError::CodeInvalid),
            CodeState::Burned => return Err(PairingError::AttemptsExhausted),
            CodeState::Expired => return Err(PairingError::CodeExpired),
            CodeState::Active => {}
        }
        if now >= self.expires_at {
            self.state = CodeState::Expired;
            self.sealed_pin = None;
            return Err(PairingError::CodeExpired);
        }
        if self.attempts_left == 0 {
            self.burn();
            return Err(PairingError::AttemptsExhausted);
        }
        self.attempts_left -= 1;
        Ok(())
    }

    /// After a failed FinishPairing: burns the code if that was its last attempt. Returns
    /// whether it is burned.
    pub fn after_failure(&mut self) -> bool {
        if self.attempts_left == 0 && self.state == CodeState::Active {
            self.burn();
        }
        self.state == CodeState::Burned
    }

    /// After a successful FinishPairing: the code is used up.
    pub fn consume(&mut self) {
        self.state = CodeState::Used;
        self.sealed_pin = None;
    }

    fn burn(&mut self) {
        self.state = CodeState::Burned;
        self.sealed_pin = None;
    }
}

/// `palyra://pair?server=HOST:PORT&code=CODE_ID&pin=PIN&ca=CA_FINGERPRINT`: everything a
/// device needs to pair, for a QR code. Contains the PIN: `Debug` redacts it.
#[derive(Clone, PartialEq, Eq)]
pub struct PairingUri {
    /// `HOST:PORT` of the node's gRPC endpoint.
    pub server: String,
    /// The code.
    pub code_id: CodeId,
    /// The PIN.
    pub pin: Pin,
    /// Lowercase hex SHA-256 of the node CA certificate (DER).
    pub ca_fingerprint: String,
}

impl fmt::Debug for PairingUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairingUri")
            .field("server", &self.server)
            .field("code_id", &self.code_id)
            .field("pin", &self.pin)
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish()
    }
}

const URI_PREFIX: &str = "palyra://pair?";

impl PairingUri {
    /// The URI text. Secret: it carries the PIN.
    pub fn to_uri(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{URI_PREFIX}server={}&code={}&pin={}&ca={}",
            self.server,
            self.code_id,
            self.pin.as_str(),
            self.ca_fingerprint
        ))
    }

    /// Parses a pairing URI: bounded, every parameter checked, unknown parameters ignored
    /// (later versions may add some), duplicates refused.
    pub fn parse(text: &str) -> Result<Self, PairingError> {
        let bad = |m: String| PairingError::invalid("uri", m);
        if text.len() > MAX_URI_LEN {
            return Err(bad(format!("longer than {MAX_URI_LEN} bytes")));
        }
        let query = text
            .strip_prefix(URI_PREFIX)
            .ok_or_else(|| bad("a pairing URI starts with palyra://pair?".to_owned()))?;
        let (mut server, mut code, mut pin, mut ca) = (None, None, None, None);
        for (i, pair) in query.split('&').enumerate() {
            if i >= 16 {
                return Err(bad("too many parameters".to_owned()));
            }
            let (name, value) =
                pair.split_once('=').ok_or_else(|| bad("a parameter without '=' ".trim_end().to_owned()))?;
            let slot = match name {
                "server" => &mut server,
                "code" => &mut code,
                "pin" => &mut pin,
                "ca" => &mut ca,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(bad(format!("parameter {name} given twice")));
            }
        }
        let missing = |name: &str| bad(format!("missing parameter {name}"));
        let server = server.ok_or_else(|| missing("server"))?;
        validate_server(server).map_err(bad)?;
        let code_id = CodeId::parse(code.ok_or_else(|| missing("code"))?)
            .map_err(|_| bad("code is not a 10-character pairing code".to_owned()))?;
        let pin = Pin::parse(pin.ok_or_else(|| missing("pin"))?)
            .map_err(|_| bad("pin is not 6 digits".to_owned()))?;
        let ca_fingerprint = ca.ok_or_else(|| missing("ca"))?;
        if !is_fingerprint(ca_fingerprint) {
            return Err(bad("ca is not a lowercase hex SHA-256 fingerprint".to_owned()));
        }
        Ok(PairingUri { server: server.to_owned(), code_id, pin, ca_fingerprint: ca_fingerprint.to_owned() })
    }
}

/// Whether `text` is a lowercase hex SHA-256 (64 characters).
pub fn is_fingerprint(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks `HOST:PORT` (a DNS name, an IPv4 address or a bracketed IPv6 address).
pub fn validate_server(server: &str) -> Result<(), String> {
    let (host, port) = server.rsplit_once(':').ok_or_else(|| "server is not HOST:PORT".to_owned())?;
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err("server has no valid port".to_owned());
    }
    let ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    };
    if ok { Ok(()) } else { Err("server has an invalid host".to_owned()) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn code_ids_are_crockford_and_parse_leniently() {
        let id = CodeId::generate().unwrap();
        assert_eq!(id.as_str().len(), CODE_ID_LEN);
        assert_eq!(CodeId::parse(&id.as_str().to_lowercase()).unwrap(), id);
        assert_eq!(CodeId::parse("abcdefghjo").unwrap().as_str(), "ABCDEFGHJ0");
        assert_eq!(CodeId::parse("ilIL000000").unwrap().as_str(), "1111000000");
        for bad in ["", "ABC", "ABCDEFGHJU", "ABCDEFGHJ!", "ÄBCDEFGHJ", "ABCDEFGHJKL"] {
            assert!(CodeId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn trivial_pins_are_recognised_and_never_issued() {
        for trivial in [
            "000000", "111111", "999999", "123456", "654321", "012345", "987654", "345678", "121212",
            "123123", "112233",
        ] {
            assert!(Pin::is_trivial(trivial), "{trivial}");
        }
        for fine in ["482913", "750118", "120583"] {
            assert!(!Pin::is_trivial(fine), "{fine}");
        }
        for _ in 0..2000 {
            let pin = Pin::generate().unwrap();
            assert!(!Pin::is_trivial(pin.as_str()));
            assert_eq!(pin.as_str().len(), 6);
        }
        assert!(
            Pin::parse("12345").is_err() && Pin::parse("12345a").is_err() && Pin::parse("١٢٣٤٥٦").is_err()
        );
        assert_eq!(format!("{:?}", Pin::parse("482913").unwrap()), "Pin([redacted])");
    }

    #[test]
    fn sealed_pins_open_only_for_their_code() {
        let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &[7; 32]).unwrap());
        let code = CodeId::generate().unwrap();
        let pin = Pin::generate().unwrap();
        let sealed = seal_pin(&key, &code, &pin).unwrap();
        assert_eq!(open_pin(&key, &code, &sealed).unwrap(), pin);
        let other = CodeId::parse("0000000000").unwrap();
        assert_eq!(open_pin(&key, &other, &sealed), Err(PairingError::Integrity));
        let mut flipped = sealed.clone();
        flipped[14] ^= 1;
        assert_eq!(open_pin(&key, &code, &flipped), Err(PairingError::Integrity));
        assert_eq!(open_pin(&key, &code, &sealed[..5]), Err(PairingError::Integrity));
    }

    #[test]
    fn attempts_expiry_and_single_use() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut code = PairingCode {
            code_id: CodeId::generate().unwrap(),
            sealed_pin: Some(vec![1]),
            role: Role::Device,
            created_at: t0,
            expires_at: t0 + Duration::from_secs(600),
            max_attempts: 2,
            attempts_left: 2,
            state: CodeState::Active,
        };
        code.take_attempt(t0).unwrap();
        assert!(!code.after_failure());
        code.take_attempt(t0).unwrap();
        assert!(code.after_failure());
        assert_eq!(code.sealed_pin, None);
        assert_eq!(code.take_attempt(t0), Err(PairingError::AttemptsExhausted));

        let mut used = PairingCode { state: CodeState::Active, attempts_left: 5, ..code.clone() };
        used.take_attempt(t0).unwrap();
        used.consume();
        assert_eq!(used.take_attempt(t0), Err(PairingError::CodeInvalid));

        let mut old =
            PairingCode { state: CodeState::Active, attempts_left: 5, sealed_pin: Some(vec![1]), ..code };
        assert_eq!(old.take_attempt(t0 + Duration::from_secs(600)), Err(PairingError::CodeExpired));
        assert_eq!((old.state, old.sealed_pin, old.attempts_left), (CodeState::Expired, None, 5));
    }

    #[test]
    fn uris_round_trip_and_bad_ones_say_why() {
        let uri = PairingUri {
            server: "127.0.0.1:7443".into(),
            code_id: CodeId::parse("ABCDEFGH12").unwrap(),
            pin: Pin::parse("482913").unwrap(),
            ca_fingerprint: "ab".repeat(32),
        };
        let text = uri.to_uri();
        assert_eq!(
            text.as_str(),
            format!("palyra://pair?server=127.0.0.1:7443&code=ABCDEFGH12&pin=482913&ca={}", "ab".repeat(32))
        );
        assert_eq!(PairingUri::parse(&text).unwrap(), uri);
        assert!(!format!("{uri:?}").contains("482913"));
        let v6 =
            format!("palyra://pair?server=[::1]:7443&code=ABCDEFGH12&pin=482913&ca={}&v=2", "ab".repeat(32));
        assert_eq!(PairingUri::parse(&v6).unwrap().server, "[::1]:7443");
        let fp = "ab".repeat(32);
        for (bad, why) in [
            ("https://x".to_owned(), "starts with"),
            ("palyra://pair?server=h:1&code=ABCDEFGH12&pin=482913".to_owned(), "missing parameter ca"),
            (format!("palyra://pair?server=h&code=ABCDEFGH12&pin=482913&ca={fp}"), "HOST:PORT"),
            (format!("palyra://pair?server=h:0&code=ABCDEFGH12&pin=482913&ca={fp}"), "port"),
            (format!("palyra://pair?server=h/x:1&code=ABCDEFGH12&pin=482913&ca={fp}"), "host"),
            (format!("palyra://pair?server=h:1&code=ABC&pin=482913&ca={fp}"), "code"),
            (format!("palyra://pair?server=h:1&code=ABCDEFGH12&pin=48291&ca={fp}"), "pin"),
            ("palyra://pair?server=h:1&code=ABCDEFGH12&pin=482913&ca=AB".to_owned(), "fingerprint"),
            (format!("palyra://pair?server=h:1&server=h:2&code=ABCDEFGH12&pin=482913&ca={fp}"), "twice"),
            (format!("palyra://pair?{}", "x=1&".repeat(400)), "longer"),
            (format!("palyra://pair?{}", "x=1&".repeat(20)), "too many"),
            ("palyra://pair?server".to_owned(), "'='"),
        ] {
            let err = PairingUri::parse(&bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
