//! The envelope: how one secret version is sealed at rest. Pure code: no IO, no clock.
//!
//! A fresh random data key (DEK) seals the value with ChaCha20-Poly1305; the key-encryption key
//! (KEK) of the current generation wraps the DEK. Both AADs bind the format version, scope,
//! key and secret version (and the wrap also the KEK generation), so an envelope copied to
//! another scope, key or version fails to open instead of yielding the wrong plaintext.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! magic "PLVE" | format u8 = 1 | kek_generation u32
//! | wrapped_len u16 = 60 | nonce(12) ‖ sealed DEK(32) ‖ tag(16)
//! | sealed_len u32       | nonce(12) ‖ sealed value ‖ tag(16)
//! ```
//!
//! Nothing may follow. Every length is checked against the remaining input before use.

use std::borrow::Borrow;

use ring::aead::{self, Aad, LessSafeKey, NONCE_LEN, Nonce};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::SecretValue;
use super::scope::{Scope, SecretKey};

const MAGIC: &[u8; 4] = b"PLVE";
/// The envelope format this code writes.
pub const FORMAT_VERSION: u8 = 1;
const DEK_LEN: usize = 32;
const TAG_LEN: usize = 16;
const WRAPPED_LEN: usize = NONCE_LEN + DEK_LEN + TAG_LEN;
const HEADER_LEN: usize = MAGIC.len() + 1 + 4;

/// Why an envelope could not be made or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The bytes are not a well-formed envelope.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// The envelope names a format this build does not know.
    #[error("unsupported envelope format {0}")]
    UnsupportedFormat(u8),
    /// Authentication failed: wrong key, wrong binding, or tampered bytes.
    #[error("envelope failed authentication")]
    Authentication,
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
}

/// What an envelope is bound to: where the secret lives and which version it is.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// The secret's scope.
    pub scope: &'a Scope,
    /// The secret's key.
    pub key: &'a SecretKey,
    /// The secret version this envelope holds.
    pub version: u64,
}

impl Binding<'_> {
    fn aad(&self, label: &[u8], generation: Option<u32>) -> Vec<u8> {
        let scope = self.scope.as_str().as_bytes();
        let key = self.key.as_str().as_bytes();
        let mut aad = Vec::with_capacity(label.len() + 1 + 4 + 8 + scope.len() + key.len() + 12);
        aad.extend_from_slice(label);
        aad.push(FORMAT_VERSION);
        if let Some(generation) = generation {
            aad.extend_from_slice(&generation.to_be_bytes());
        }
        for part in [scope, key] {
            aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            aad.extend_from_slice(part);
        }
        aad.extend_from_slice(&self.version.to_be_bytes());
        aad
    }

    fn value_aad(&self) -> Vec<u8> {
        self.aad(b"palyra.vault.value", None)
    }

    fn dek_aad(&self, generation: u32) -> Vec<u8> {
        self.aad(b"palyra.vault.dek", Some(generation))
    }
}

/// A parsed envelope, borrowing the stored bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeView<'a> {
    /// The KEK generation that wrapped the DEK.
    pub generation: u32,
    /// Nonce, sealed DEK and tag.
    pub wrapped_dek: &'a [u8],
    /// Nonce, sealed value and tag.
    pub sealed_value: &'a [u8],
}

/// Parses envelope bytes without decrypting anything. Bounded: never allocates, never panics.
pub fn parse(bytes: &[u8]) -> Result<EnvelopeView<'_>, EnvelopeError> {
    let mut rest = bytes;
    let magic = take(&mut rest, MAGIC.len())?;
    if magic != MAGIC {
        return Err(EnvelopeError::Malformed("bad magic"));
    }
    let format = take(&mut rest, 1)?[0];
    if format != FORMAT_VERSION {
        return Err(EnvelopeError::UnsupportedFormat(format));
    }
    let generation = u32::from_be_bytes(array(take(&mut rest, 4)?)?);
    let wrapped_len = u16::from_be_bytes(array(take(&mut rest, 2)?)?) as usize;
    if wrapped_len != WRAPPED_LEN {
        return Err(EnvelopeError::Malformed("wrapped key has the wrong length"));
    }
    let wrapped_dek = take(&mut rest, wrapped_len)?;
    let sealed_len = u32::from_be_bytes(array(take(&mut rest, 4)?)?) as usize;
    if sealed_len < NONCE_LEN + TAG_LEN {
        return Err(EnvelopeError::Malformed("sealed value too short"));
    }
    let sealed_value = take(&mut rest, sealed_len)?;
    if !rest.is_empty() {
        return Err(EnvelopeError::Malformed("trailing bytes"));
    }
    Ok(EnvelopeView { generation, wrapped_dek, sealed_value })
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], EnvelopeError> {
    if rest.len() < n {
        return Err(EnvelopeError::Malformed("truncated"));
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn array<const N: usize>(bytes: &[u8]) -> Result<[u8; N], EnvelopeError> {
    bytes.try_into().map_err(|_| EnvelopeError::Malformed("truncated"))
}

/// Seals `plaintext` for `binding` under a fresh DEK wrapped by `kek` of `generation`.
pub fn seal(
    kek: &LessSafeKey,
    generation: u32,
    binding: Binding<'_>,
    plaintext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let rng = SystemRandom::new();
    let mut dek = Zeroizing::new([0u8; DEK_LEN]);
    rng.fill(dek.as_mut()).map_err(|_| EnvelopeError::Random)?;
    let dek_key = aead_key(&dek)?;

    let sealed_len = NONCE_LEN + plaintext.len() + TAG_LEN;
    let sealed_len_u32 =
        u32::try_from(sealed_len).map_err(|_| EnvelopeError::Malformed("value too large"))?;
    let mut out = Vec::with_capacity(HEADER_LEN + 2 + WRAPPED_LEN + 4 + sealed_len);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&generation.to_be_bytes());
    out.extend_from_slice(&(WRAPPED_LEN as u16).to_be_bytes());
    out.extend_from_slice(&seal_part(kek, &rng, &binding.dek_aad(generation), dek.as_slice())?);
    out.extend_from_slice(&sealed_len_u32.to_be_bytes());
    out.extend_from_slice(&seal_part(&dek_key, &rng, &binding.value_aad(), plaintext)?);
    Ok(out)
}

/// Opens an envelope for `binding`, asking `kek_of` for the KEK of the envelope's generation.
pub fn open<K: Borrow<LessSafeKey>>(
    bytes: &[u8],
    binding: Binding<'_>,
    kek_of: impl FnOnce(u32) -> Option<K>,
) -> Result<SecretValue, EnvelopeError> {
    let view = parse(bytes)?;
    let kek = kek_of(view.generation).ok_or(EnvelopeError::Authentication)?;
    let dek = open_part(kek.borrow(), &binding.dek_aad(view.generation), view.wrapped_dek)?;
    let dek_key = aead_key(dek.as_slice().try_into().map_err(|_| EnvelopeError::Authentication)?)?;
    let value = open_part(&dek_key, &binding.value_aad(), view.sealed_value)?;
    Ok(SecretValue::from_zeroizing(value))
}

/// Re-wraps the DEK of an envelope under `new_kek` of `new_generation`, leaving the sealed
/// value untouched: rotation costs one small AEAD per version, whatever the value's size.
pub fn rewrap(
    bytes: &[u8],
    binding: Binding<'_>,
    old_kek: &LessSafeKey,
    new_kek: &LessSafeKey,
    new_generation: u32,
) -> Result<Vec<u8>, EnvelopeError> {
    let view = parse(bytes)?;
    let dek = open_part(old_kek, &binding.dek_aad(view.generation), view.wrapped_dek)?;
    let rng = SystemRandom::new();
    let wrapped = seal_part(new_kek, &rng, &binding.dek_aad(new_generation), dek.as_slice())?;
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&new_generation.to_be_bytes());
    out.extend_from_slice(&(WRAPPED_LEN as u16).to_be_bytes());
    out.extend_from_slice(&wrapped);
    out.extend_from_slice(&(view.sealed_value.len() as u32).to_be_bytes());
    out.extend_from_slice(view.sealed_value);
    Ok(out)
}

fn aead_key(bytes: &[u8; DEK_LEN]) -> Result<LessSafeKey, EnvelopeError> {
    aead::UnboundKey::new(&aead::CHACHA20_POLY1305, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| EnvelopeError::Authentication)
}

/// `nonce ‖ ciphertext ‖ tag` of `plaintext` under `key`, with a random nonce.
fn seal_part(
    key: &LessSafeKey,
    rng: &SystemRandom,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce).map_err(|_| EnvelopeError::Random)?;
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[NONCE_LEN..],
        )
        .map_err(|_| EnvelopeError::Authentication)?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Opens `nonce ‖ ciphertext ‖ tag` into a zeroizing buffer.
fn open_part(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(EnvelopeError::Malformed("sealed part too short"));
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| EnvelopeError::Authentication)?;
    let mut buf = Zeroizing::new(body.to_vec());
    let len = key
        .open_in_place(nonce, Aad::from(aad), buf.as_mut_slice())
        .map_err(|_| EnvelopeError::Authentication)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::keys::{KeyHierarchy, RootKey};
    use proptest::prelude::*;

    fn names() -> (Scope, SecretKey) {
        (Scope::parse("agents/alpha").expect("scope"), SecretKey::parse("API_KEY").expect("key"))
    }

    #[test]
    fn round_trip_and_rewrap() {
        let keys = KeyHierarchy::new(&RootKey::from_bytes([1; 32]));
        let (scope, key) = names();
        let b = Binding { scope: &scope, key: &key, version: 3 };
        let sealed = seal(&keys.vault_kek(1), 1, b, b"sk-live-123").expect("seal");
        assert!(!sealed.windows(11).any(|w| w == b"sk-live-123"), "plaintext visible");
        let value = open(&sealed, b, |g| Some(keys.vault_kek(g))).expect("open");
        assert_eq!(value.expose(), b"sk-live-123");

        let rewrapped = rewrap(&sealed, b, &keys.vault_kek(1), &keys.vault_kek(2), 2).expect("rewrap");
        assert_eq!(parse(&rewrapped).expect("parse").generation, 2);
        assert_eq!(
            parse(&rewrapped).expect("parse").sealed_value,
            parse(&sealed).expect("parse").sealed_value
        );
        assert_eq!(open(&rewrapped, b, |g| Some(keys.vault_kek(g))).expect("open").expose(), b"sk-live-123");
        // The old KEK no longer opens it.
        assert!(open(&rewrapped, b, |_| Some(keys.vault_kek(1))).is_err());
    }

    #[test]
    fn every_flipped_byte_fails_to_open() {
        let keys = KeyHierarchy::new(&RootKey::from_bytes([2; 32]));
        let (scope, key) = names();
        let b = Binding { scope: &scope, key: &key, version: 1 };
        let sealed = seal(&keys.vault_kek(5), 5, b, b"0123456789abcdef").expect("seal");
        for i in 0..sealed.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = sealed.clone();
                bad[i] ^= bit;
                assert!(open(&bad, b, |g| Some(keys.vault_kek(g))).is_err(), "byte {i} bit {bit:#x}");
            }
        }
        for cut in 0..sealed.len() {
            assert!(open(&sealed[..cut], b, |g| Some(keys.vault_kek(g))).is_err(), "truncated at {cut}");
        }
    }

    #[test]
    fn binding_is_enforced() {
        let keys = KeyHierarchy::new(&RootKey::from_bytes([3; 32]));
        let (scope, key) = names();
        let other_scope = Scope::parse("agents/beta").expect("scope");
        let other_key = SecretKey::parse("OTHER").expect("key");
        let b = Binding { scope: &scope, key: &key, version: 1 };
        let sealed = seal(&keys.vault_kek(1), 1, b, b"v").expect("seal");
        let kek = |g| Some(keys.vault_kek(g));
        assert!(open(&sealed, Binding { scope: &other_scope, ..b }, kek).is_err());
        assert!(open(&sealed, Binding { key: &other_key, ..b }, kek).is_err());
        assert!(open(&sealed, Binding { version: 2, ..b }, kek).is_err());
        let wrong_root = KeyHierarchy::new(&RootKey::from_bytes([4; 32]));
        assert!(open(&sealed, b, |g| Some(wrong_root.vault_kek(g))).is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn any_value_round_trips(value in prop::collection::vec(any::<u8>(), 0..2048), version in 1u64..u64::MAX) {
            let keys = KeyHierarchy::new(&RootKey::from_bytes([9; 32]));
            let (scope, key) = names();
            let b = Binding { scope: &scope, key: &key, version };
            let sealed = seal(&keys.vault_kek(1), 1, b, &value).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let opened = open(&sealed, b, |g| Some(keys.vault_kek(g))).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(opened.expose(), value.as_slice());
        }
    }
}
