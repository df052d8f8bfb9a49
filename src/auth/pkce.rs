//! PKCE (RFC 7636, method S256) and the authorization state: random values and their
//! derivations. No IO, no clock.

use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::AuthError;

/// A PKCE code verifier: 43 characters of base64url (32 random bytes), zeroized on drop.
#[derive(Clone)]
pub struct CodeVerifier(Zeroizing<String>);

impl CodeVerifier {
    /// A fresh random verifier.
    pub fn generate() -> Result<Self, AuthError> {
        Ok(CodeVerifier(Zeroizing::new(base64url(&random_bytes::<32>()?))))
    }

    /// A verifier read back from the vault.
    pub fn from_stored(text: String) -> Self {
        CodeVerifier(Zeroizing::new(text))
    }

    /// The verifier, to send to the token endpoint.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `BASE64URL(SHA256(verifier))`, the S256 challenge.
    pub fn challenge(&self) -> String {
        base64url(digest(&SHA256, self.0.as_bytes()).as_ref())
    }
}

impl std::fmt::Debug for CodeVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A fresh random state: 32 characters of lowercase hex (16 random bytes).
pub fn generate_state() -> Result<String, AuthError> {
    Ok(hex::encode(random_bytes::<16>()?))
}

/// How a state is kept: lowercase hex SHA-256, so the database never holds a live state.
pub fn state_hash(state: &str) -> String {
    hex::encode(digest(&SHA256, state.as_bytes()))
}

fn random_bytes<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut bytes = [0u8; N];
    SystemRandom::new().fill(&mut bytes).map_err(|_| AuthError::Random)?;
    Ok(bytes)
}

/// Unpadded base64url (RFC 4648 §5), as PKCE requires.
pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_matches_rfc_7636_appendix_b() {
        let verifier = CodeVerifier::from_stored("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into());
        assert_eq!(verifier.challenge(), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn verifiers_and_states_are_random_and_well_formed() -> Result<(), AuthError> {
        let (a, b) = (CodeVerifier::generate()?, CodeVerifier::generate()?);
        assert_eq!(a.expose().len(), 43);
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(format!("{a:?}"), "[redacted]");
        let state = generate_state()?;
        assert_eq!(state.len(), 32);
        assert_ne!(state, generate_state()?);
        assert_eq!(state_hash(&state).len(), 64);
        Ok(())
    }

    #[test]
    fn base64url_pads_nothing() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }
}
