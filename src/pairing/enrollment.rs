//! Enrollment keys: how a headless machine (an agent, a server, CI) pairs with no human step.
//!
//! An enrollment key is a reusable pairing code with a high-entropy secret instead of a PIN.
//! The secret is the SPAKE2 password of the ordinary handshake (docs/pairing-protocol.md; the
//! key id travels as the code id), so there is no new wire protocol and nothing a passive
//! observer could guess offline; a device that completes the handshake is approved at once with
//! the key's role and scopes. The admin gets a [`EnrollmentToken`]: one copy-pasteable line
//! carrying the node's address, the key id, the secret and the CA fingerprint.
//!
//! At rest the node keeps the secret sealed under its internal seal key with an AAD that binds
//! the key's grants and its use count ([`seal_secret`]): a row edited to grant more (role,
//! scopes, uses, expiry) no longer opens, and every use re-seals it with the new count. A key
//! that is revoked, used up or expired loses its sealed secret for good.

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead;
use zeroize::Zeroizing;

use super::code::{
    CROCKFORD, CodeId, CodeState, PairingCode, PakePassword, is_fingerprint, open, random_crockford, seal,
    validate_server,
};
use super::PairingError;
use crate::identity::Role;
use crate::unix_time::unix_ms;
use crate::vault::Scope;

/// Default number of devices a key pairs.
pub const DEFAULT_USES: u32 = 1;
/// Most devices one key may pair.
pub const MAX_USES: u32 = 10_000;
/// Default lifetime of a key.
pub const DEFAULT_TTL: Duration = Duration::from_secs(86_400);
/// Shortest lifetime accepted.
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// Longest lifetime accepted (a year).
pub const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);
/// Characters of a secret: 32 Crockford base32 characters, 160 bits.
pub const SECRET_LEN: usize = 32;
/// Longest token accepted.
pub const MAX_TOKEN_LEN: usize = 1024;
/// What every token starts with.
pub const TOKEN_PREFIX: &str = "palyra-enroll:v1:";
/// AAD domain of a sealed secret.
const SECRET_AAD: &[u8] = b"palyra.pairing.enrollment.v1";

/// An enrollment key's secret: 32 characters of Crockford base32 (160 random bits). Zeroized
/// on drop; `Debug` redacts it.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentSecret(Zeroizing<String>);

impl EnrollmentSecret {
    /// A fresh random secret.
    pub fn generate() -> Result<Self, PairingError> {
        Ok(EnrollmentSecret(random_crockford::<SECRET_LEN>()?))
    }

    /// Parses a secret (exactly as generated: upper-case Crockford base32).
    pub fn parse(text: &str) -> Result<Self, PairingError> {
        if text.len() != SECRET_LEN || !text.bytes().all(|b| CROCKFORD.contains(&b)) {
            return Err(PairingError::invalid("secret", "not a 32-character enrollment secret"));
        }
        Ok(EnrollmentSecret(Zeroizing::new(text.to_owned())))
    }

    /// The text (secret).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PakePassword for EnrollmentSecret {
    fn pake_password(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for EnrollmentSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnrollmentSecret([redacted])")
    }
}

/// What an enrollment key grants; bound into its sealed secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    /// The role of the devices it pairs (never admin).
    pub role: Role,
    /// Scopes granted beyond their own subtree.
    pub scopes: Vec<Scope>,
    /// Devices it may pair.
    pub max_uses: u32,
    /// When it was made.
    pub created_at: SystemTime,
    /// When it stops being accepted.
    pub expires_at: SystemTime,
}

/// Where a key stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Pairs devices.
    Active,
    /// Every use was taken.
    UsedUp,
    /// Past its expiry.
    Expired,
    /// Revoked by an admin.
    Revoked,
}

/// An enrollment key as the node keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentKey {
    /// Its id (the code id of the handshake).
    pub key_id: CodeId,
    /// What it grants.
    pub grants: Grants,
    /// Handshakes completed with it.
    pub uses: u32,
    /// When it was revoked.
    pub revoked_at: Option<SystemTime>,
    /// The secret sealed by [`seal_secret`]; `None` once revoked, used up or expired.
    pub sealed_secret: Option<Vec<u8>>,
}

impl EnrollmentKey {
    /// Where it stands at `now`.
    pub fn state_at(&self, now: SystemTime) -> KeyState {
        if self.revoked_at.is_some() {
            KeyState::Revoked
        } else if self.uses >= self.grants.max_uses {
            KeyState::UsedUp
        } else if now >= self.grants.expires_at {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }

    /// Refuses a key that cannot pair a device at `now`, saying why.
    pub fn check_usable(&self, now: SystemTime) -> Result<(), PairingError> {
        match self.state_at(now) {
            KeyState::Active if self.sealed_secret.is_some() => Ok(()),
            // Active by its columns but without a secret: the row was edited.
            KeyState::Active => Err(PairingError::Integrity),
            KeyState::UsedUp => Err(PairingError::EnrollmentKeyUsedUp),
            KeyState::Expired => Err(PairingError::EnrollmentKeyExpired),
            KeyState::Revoked => Err(PairingError::EnrollmentKeyRevoked),
        }
    }

    /// The handshake's view of the key: a code that is active until the key expires. (A
    /// key's attempts are not counted: its secret cannot be guessed online.)
    pub fn as_code(&self) -> PairingCode {
        PairingCode {
            code_id: self.key_id.clone(),
            sealed_pin: None,
            role: self.grants.role,
            created_at: self.grants.created_at,
            expires_at: self.grants.expires_at,
            max_attempts: 0,
            attempts_left: 0,
            state: CodeState::Active,
        }
    }
}

/// Checks the arguments of a new key: uses 1..=[`MAX_USES`] (default 1), lifetime
/// [`MIN_TTL`]..=[`MAX_TTL`] (default a day). Returns (uses, expiry).
pub fn check_new_key(
    max_uses: Option<u32>,
    ttl: Option<Duration>,
    now: SystemTime,
) -> Result<(u32, SystemTime), PairingError> {
    let uses = max_uses.unwrap_or(DEFAULT_USES);
    if !(1..=MAX_USES).contains(&uses) {
        return Err(PairingError::invalid("max_uses", format!("a key pairs 1 to {MAX_USES} devices")));
    }
    let ttl = ttl.unwrap_or(DEFAULT_TTL);
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(PairingError::invalid(
            "ttl_seconds",
            format!("a key lives {} to {} seconds", MIN_TTL.as_secs(), MAX_TTL.as_secs()),
        ));
    }
    Ok((uses, now + ttl))
}

/// The AAD binding: the key id, its grants and its use count.
fn binding(key_id: &CodeId, grants: &Grants, uses: u32) -> String {
    let scopes: Vec<&str> = grants.scopes.iter().map(Scope::as_str).collect();
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}\n{}",
        key_id,
        grants.role.as_str(),
        scopes.join(","),
        grants.max_uses,
        uses,
        unix_ms(grants.created_at),
        unix_ms(grants.expires_at),
    )
}

/// Seals `secret` under `key` (the node's internal seal key), bound to the key id, its grants
/// and `uses`.
pub fn seal_secret(
    key: &aead::LessSafeKey,
    key_id: &CodeId,
    grants: &Grants,
    uses: u32,
    secret: &EnrollmentSecret,
) -> Result<Vec<u8>, PairingError> {
    seal(key, SECRET_AAD, &binding(key_id, grants, uses), secret.as_str().as_bytes())
}

/// Opens the secret of `stored`; [`PairingError::Integrity`] when its row was edited (grants,
/// uses) or the secret is gone.
pub fn open_secret(key: &aead::LessSafeKey, stored: &EnrollmentKey) -> Result<EnrollmentSecret, PairingError> {
    let sealed = stored.sealed_secret.as_deref().ok_or(PairingError::Integrity)?;
    let plain = open(key, SECRET_AAD, &binding(&stored.key_id, &stored.grants, stored.uses), sealed)?;
    let text = std::str::from_utf8(&plain).map_err(|_| PairingError::Integrity)?;
    EnrollmentSecret::parse(text).map_err(|_| PairingError::Integrity)
}

/// `palyra-enroll:v1:<base64url(server \n key id \n secret \n CA fingerprint)>`: what `palyra
/// pair --enrollment-key` needs, in one line. Secret: `Debug` redacts it.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentToken {
    /// `HOST:PORT` of the node's gRPC endpoint.
    pub server: String,
    /// The key.
    pub key_id: CodeId,
    /// Its secret.
    pub secret: EnrollmentSecret,
    /// Lowercase hex SHA-256 of the node CA certificate (DER).
    pub ca_fingerprint: String,
}

impl fmt::Debug for EnrollmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollmentToken")
            .field("server", &self.server)
            .field("key_id", &self.key_id)
            .field("secret", &self.secret)
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish()
    }
}

impl EnrollmentToken {
    /// The token text. Secret.
    pub fn to_text(&self) -> Zeroizing<String> {
        let inner = Zeroizing::new(format!(
            "{}\n{}\n{}\n{}",
            self.server,
            self.key_id,
            self.secret.as_str(),
            self.ca_fingerprint
        ));
        Zeroizing::new(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(inner.as_bytes())))
    }

    /// Parses a token: bounded, every field checked; surrounding whitespace is ignored (a
    /// pasted line).
    pub fn parse(text: &str) -> Result<Self, PairingError> {
        let bad = |m: &str| PairingError::invalid("enrollment_key", m);
        let text = text.trim();
        if text.len() > MAX_TOKEN_LEN {
            return Err(bad("longer than any enrollment token"));
        }
        let body = text
            .strip_prefix(TOKEN_PREFIX)
            .ok_or_else(|| bad("an enrollment token starts with palyra-enroll:v1:"))?;
        let inner =
            Zeroizing::new(URL_SAFE_NO_PAD.decode(body).map_err(|_| bad("the token is not intact (base64)"))?);
        let inner = std::str::from_utf8(&inner).map_err(|_| bad("the token is not intact (UTF-8)"))?;
        let fields: Vec<&str> = inner.split('\n').collect();
        let [server, key_id, secret, ca] = fields.as_slice() else {
            return Err(bad("the token is not intact (fields)"));
        };
        validate_server(server).map_err(|m| bad(&m))?;
        let key_id = CodeId::parse(key_id).map_err(|_| bad("the token's key id is malformed"))?;
        let secret = EnrollmentSecret::parse(secret).map_err(|_| bad("the token's secret is malformed"))?;
        if !is_fingerprint(ca) {
            return Err(bad("the token's CA fingerprint is malformed"));
        }
        Ok(EnrollmentToken { server: (*server).to_owned(), key_id, secret, ca_fingerprint: (*ca).to_owned() })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn seal_key() -> aead::LessSafeKey {
        aead::LessSafeKey::new(aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &[7; 32]).unwrap())
    }

    fn key(uses: u32, max_uses: u32) -> (EnrollmentKey, EnrollmentSecret) {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let grants = Grants {
            role: Role::Device,
            scopes: vec![Scope::parse("agents/alpha").unwrap()],
            max_uses,
            created_at: t0,
            expires_at: t0 + DEFAULT_TTL,
        };
        let key_id = CodeId::generate().unwrap();
        let secret = EnrollmentSecret::generate().unwrap();
        let sealed = seal_secret(&seal_key(), &key_id, &grants, uses, &secret).unwrap();
        (EnrollmentKey { key_id, grants, uses, revoked_at: None, sealed_secret: Some(sealed) }, secret)
    }

    #[test]
    fn secrets_are_long_random_and_redacted() {
        let a = EnrollmentSecret::generate().unwrap();
        let b = EnrollmentSecret::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), SECRET_LEN);
        assert_eq!(EnrollmentSecret::parse(a.as_str()).unwrap(), a);
        assert!(!format!("{a:?}").contains(a.as_str()));
        for bad in ["", "abc", &"U".repeat(32), &"0".repeat(31), &"a".repeat(32)] {
            assert!(EnrollmentSecret::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_sealed_secret_opens_only_with_its_grants_and_use_count() {
        let (stored, secret) = key(0, 3);
        assert_eq!(open_secret(&seal_key(), &stored).unwrap(), secret);
        let mut more_uses = stored.clone();
        more_uses.grants.max_uses = 100;
        let mut admin = stored.clone();
        admin.grants.role = Role::Admin;
        let mut wider = stored.clone();
        wider.grants.scopes.push(Scope::parse("everything").unwrap());
        let mut longer = stored.clone();
        longer.grants.expires_at += Duration::from_secs(1);
        let mut reset = key(2, 3).0;
        reset.uses = 0;
        let mut moved = stored.clone();
        moved.key_id = CodeId::parse("0000000000").unwrap();
        let mut gone = stored.clone();
        gone.sealed_secret = None;
        for edited in [more_uses, admin, wider, longer, reset, moved, gone] {
            assert_eq!(open_secret(&seal_key(), &edited), Err(PairingError::Integrity), "{edited:?}");
        }
    }

    #[test]
    fn states_say_why_a_key_cannot_pair() {
        let (k, _) = key(0, 2);
        let t0 = k.grants.created_at;
        assert_eq!(k.state_at(t0), KeyState::Active);
        assert!(k.check_usable(t0).is_ok());
        assert_eq!(k.check_usable(k.grants.expires_at), Err(PairingError::EnrollmentKeyExpired));
        let used = EnrollmentKey { uses: 2, ..k.clone() };
        assert_eq!(used.check_usable(t0), Err(PairingError::EnrollmentKeyUsedUp));
        let revoked = EnrollmentKey { revoked_at: Some(t0), ..k.clone() };
        assert_eq!(revoked.check_usable(t0), Err(PairingError::EnrollmentKeyRevoked));
        let edited = EnrollmentKey { sealed_secret: None, ..k };
        assert_eq!(edited.check_usable(t0), Err(PairingError::Integrity));
    }

    #[test]
    fn new_keys_are_bounded() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(check_new_key(None, None, now).unwrap(), (1, now + DEFAULT_TTL));
        assert!(check_new_key(Some(0), None, now).is_err());
        assert!(check_new_key(Some(MAX_USES + 1), None, now).is_err());
        assert!(check_new_key(None, Some(Duration::from_secs(59)), now).is_err());
        assert!(check_new_key(None, Some(MAX_TTL + Duration::from_secs(1)), now).is_err());
        assert!(check_new_key(Some(MAX_USES), Some(MAX_TTL), now).is_ok());
    }

    #[test]
    fn tokens_round_trip_and_bad_ones_say_why() {
        let token = EnrollmentToken {
            server: "[::1]:7443".into(),
            key_id: CodeId::generate().unwrap(),
            secret: EnrollmentSecret::generate().unwrap(),
            ca_fingerprint: "ab".repeat(32),
        };
        let text = token.to_text();
        assert!(text.starts_with(TOKEN_PREFIX) && !text.contains(char::is_whitespace));
        assert_eq!(EnrollmentToken::parse(&format!("  {}\n", text.as_str())).unwrap(), token);
        assert!(!format!("{token:?}").contains(token.secret.as_str()));
        let enc = |s: &str| format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(s));
        let secret = token.secret.as_str();
        let fp = "ab".repeat(32);
        for (bad, why) in [
            ("palyra://pair?x".to_owned(), "starts with"),
            (format!("{TOKEN_PREFIX}!!!"), "base64"),
            (enc("a\nb"), "fields"),
            (enc(&format!("h\nABCDEFGH12\n{secret}\n{fp}")), "HOST:PORT"),
            (enc(&format!("h:1\nABC\n{secret}\n{fp}")), "key id"),
            (enc(&format!("h:1\nABCDEFGH12\nshort\n{fp}")), "secret"),
            (enc(&format!("h:1\nABCDEFGH12\n{secret}\nAB")), "fingerprint"),
            ("x".repeat(MAX_TOKEN_LEN + 1), "longer"),
        ] {
            let err = EnrollmentToken::parse(&bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
