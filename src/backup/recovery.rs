//! The recovery code and the recovery seal: the root key sealed under a code a person keeps
//! on paper, so a backup can be restored on a machine with no access to the old keychain or
//! key file.
//!
//! **Code.** 140 random bits as 28 Crockford base32 symbols, printed in 7 groups of 4 symbols
//! and one check symbol each (`XXXXC-XXXXC-…`, 35 symbols). The check symbol of group `g` is
//! `(1·v₀ + 3·v₁ + 5·v₂ + 7·v₃ + 5·g + 1) mod 32`: odd weights are invertible mod 32, so any
//! single mistyped symbol in a group is caught and the group named; a group moved to another
//! place fails its check too. Reading is forgiving: case, spaces and hyphens are ignored,
//! `O` reads as `0` and `I`/`L` as `1`.
//!
//! **Seal.** The key that seals the root key is PBKDF2-HMAC-SHA256 (ring) of the 28 data
//! symbols with a fresh 16-byte salt and [`ITERATIONS`] rounds. The code already carries 140
//! bits, so no amount of guessing finds it; the slow KDF is defence in depth, and PBKDF2 is
//! the one such function in the crate we already use for all our cryptography (no new
//! dependency). The root key is then sealed with ChaCha20-Poly1305; the AAD is every byte of
//! the seal before the nonce (magic, version, KDF id, iteration count, salt), so none can be
//! changed unnoticed.

use std::fmt;
use std::num::NonZeroU32;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::BackupError;
use crate::vault::RootKey;

/// Crockford's base32 alphabet (no I, L, O, U).
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Groups in a code.
pub const GROUPS: usize = 7;
/// Data symbols per group (plus one check symbol).
const GROUP_DATA: usize = 4;
/// Data symbols in a code: 28 × 5 = 140 bits.
const DATA_SYMBOLS: usize = GROUPS * GROUP_DATA;
/// Weights of the check symbol: odd, so each is invertible mod 32.
const WEIGHTS: [u32; GROUP_DATA] = [1, 3, 5, 7];

/// PBKDF2-HMAC-SHA256 rounds for a new seal (OWASP's 2023 figure for this hash).
pub const ITERATIONS: u32 = 600_000;
/// A seal asking for fewer or more rounds than this is refused (a stored count is untrusted).
const ITERATIONS_MIN: u32 = 100_000;
const ITERATIONS_MAX: u32 = 10_000_000;

const MAGIC: &[u8; 4] = b"PLRK";
const VERSION: u8 = 1;
const KDF_PBKDF2_SHA256: u8 = 1;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
/// magic ‖ version ‖ kdf ‖ u32be(iterations) ‖ salt: the AAD.
const PREFIX_LEN: usize = 4 + 1 + 1 + 4 + SALT_LEN;
/// The encoded length of a seal.
pub const SEAL_LEN: usize = PREFIX_LEN + NONCE_LEN + RootKey::LEN + 16;

/// A recovery code: its 28 data symbols (canonical ASCII), wiped on drop; shown only through
/// [`RecoveryCode::display`].
pub struct RecoveryCode(Zeroizing<Vec<u8>>);

impl fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryCode([redacted])")
    }
}

fn check_symbol(group: usize, values: &[u8]) -> u8 {
    let sum = values.iter().zip(WEIGHTS).map(|(&v, w)| u32::from(v) * w).sum::<u32>();
    ((sum + 5 * group as u32 + 1) % 32) as u8
}

fn value_of(symbol: u8) -> Option<u8> {
    let symbol = match symbol.to_ascii_uppercase() {
        b'O' => b'0',
        b'I' | b'L' => b'1',
        other => other,
    };
    ALPHABET.iter().position(|&a| a == symbol).map(|p| p as u8)
}

/// Symbols (values below 32) as a person reads them: groups of 4 and a check symbol, joined
/// by `-`.
pub(crate) fn encode_groups(values: &[u8]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(values.len() / GROUP_DATA * 6));
    for (group, chunk) in values.chunks(GROUP_DATA).enumerate() {
        if group > 0 {
            out.push('-');
        }
        out.extend(chunk.iter().map(|&v| char::from(ALPHABET[usize::from(v & 31)])));
        out.push(char::from(ALPHABET[usize::from(check_symbol(group, chunk))]));
    }
    out
}

/// Reads `groups` groups as typed (case, spaces and hyphens ignored, `O`→`0`, `I`/`L`→`1`),
/// each group's check symbol verified; the error names `what` and the group that is wrong.
pub(crate) fn decode_groups(text: &str, groups: usize, what: &str) -> Result<Zeroizing<Vec<u8>>, BackupError> {
    let cleaned: Zeroizing<Vec<u8>> =
        Zeroizing::new(text.bytes().filter(|b| !matches!(b, b'-' | b' ' | b'\t')).collect());
    let want = groups * (GROUP_DATA + 1);
    if cleaned.len() != want {
        return Err(BackupError::BadCode(format!(
            "the {what} has {} symbols, expected {want} ({groups} groups of {})",
            cleaned.len(),
            GROUP_DATA + 1
        )));
    }
    let mut values = Zeroizing::new(Vec::with_capacity(want));
    for (i, &symbol) in cleaned.iter().enumerate() {
        let value = value_of(symbol).ok_or_else(|| {
            BackupError::BadCode(format!(
                "group {} of the {what} has a character that is not in the code's alphabet",
                i / (GROUP_DATA + 1) + 1
            ))
        })?;
        values.push(value);
    }
    let mut data = Zeroizing::new(Vec::with_capacity(groups * GROUP_DATA));
    for (group, chunk) in values.chunks(GROUP_DATA + 1).enumerate() {
        if check_symbol(group, &chunk[..GROUP_DATA]) != chunk[GROUP_DATA] {
            return Err(BackupError::BadCode(format!(
                "group {} of the {what} is mistyped (its check symbol does not match)",
                group + 1
            )));
        }
        data.extend_from_slice(&chunk[..GROUP_DATA]);
    }
    Ok(data)
}

impl RecoveryCode {
    /// A fresh code from the system's CSPRNG.
    pub fn generate() -> Result<Self, BackupError> {
        let mut bytes = Zeroizing::new([0u8; DATA_SYMBOLS]);
        SystemRandom::new().fill(bytes.as_mut()).map_err(|_| BackupError::Random)?;
        // 256 is a multiple of 32: the low five bits of a uniform byte are uniform.
        let values = Zeroizing::new(bytes.iter().map(|b| b & 31).collect::<Vec<_>>());
        Self::from_values(&values)
    }

    /// The code of 28 symbol values (each below 32), e.g. put together from shares.
    pub(crate) fn from_values(values: &[u8]) -> Result<Self, BackupError> {
        if values.len() != DATA_SYMBOLS || values.iter().any(|&v| v >= 32) {
            return Err(BackupError::WrongCode);
        }
        Ok(RecoveryCode(Zeroizing::new(values.iter().map(|&v| ALPHABET[usize::from(v)]).collect())))
    }

    /// The 28 symbol values (what shares split).
    pub(crate) fn values(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.iter().filter_map(|&s| value_of(s)).collect())
    }

    /// Reads a code as typed: case, spaces and hyphens ignored, `O`→`0`, `I`/`L`→`1`; every
    /// group's check symbol verified. The error names the group that is wrong.
    pub fn parse(text: &str) -> Result<Self, BackupError> {
        Self::from_values(&decode_groups(text, GROUPS, "recovery code")?)
    }

    /// The code for a person: 7 groups of 5 symbols joined by `-`.
    pub fn display(&self) -> Zeroizing<String> {
        encode_groups(&self.values())
    }

    fn sealing_key(&self, iterations: NonZeroU32, salt: &[u8]) -> Result<LessSafeKey, BackupError> {
        let mut okm = Zeroizing::new([0u8; 32]);
        pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iterations, salt, &self.0, okm.as_mut());
        let key = UnboundKey::new(&aead::CHACHA20_POLY1305, okm.as_ref()).map_err(|_| BackupError::Random)?;
        Ok(LessSafeKey::new(key))
    }
}

/// Seals `root` under `code` (fresh salt and nonce): [`SEAL_LEN`] bytes.
pub fn seal_root_key(code: &RecoveryCode, root: &RootKey) -> Result<Vec<u8>, BackupError> {
    seal_with(code, root, ITERATIONS)
}

fn seal_with(code: &RecoveryCode, root: &RootKey, iterations: u32) -> Result<Vec<u8>, BackupError> {
    let rng = SystemRandom::new();
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut salt).map_err(|_| BackupError::Random)?;
    rng.fill(&mut nonce).map_err(|_| BackupError::Random)?;
    let rounds = NonZeroU32::new(iterations).ok_or(BackupError::Random)?;
    let key = code.sealing_key(rounds, &salt)?;
    let mut out = Vec::with_capacity(SEAL_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(KDF_PBKDF2_SHA256);
    out.extend_from_slice(&iterations.to_be_bytes());
    out.extend_from_slice(&salt);
    let aad = out.clone();
    out.extend_from_slice(&nonce);
    let mut body = Zeroizing::new(root.as_bytes().to_vec());
    let tag = key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&aad), &mut body)
        .map_err(|_| BackupError::Random)?;
    out.extend_from_slice(&body);
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Checks a seal's shape (without a code): magic, version, KDF and bounds.
pub fn check_seal(seal: &[u8]) -> Result<(), BackupError> {
    if seal.len() != SEAL_LEN || &seal[..4] != MAGIC {
        return Err(BackupError::Malformed("the recovery seal is malformed".to_owned()));
    }
    if seal[4] != VERSION || seal[5] != KDF_PBKDF2_SHA256 {
        return Err(BackupError::NewerVersion(format!("recovery seal version {} kdf {}", seal[4], seal[5])));
    }
    let iterations = u32::from_be_bytes([seal[6], seal[7], seal[8], seal[9]]);
    if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&iterations) {
        return Err(BackupError::Malformed(format!("the recovery seal asks for {iterations} KDF rounds")));
    }
    Ok(())
}

/// Opens a seal with `code`: the root key, or [`BackupError::WrongCode`].
pub fn open_root_key(code: &RecoveryCode, seal: &[u8]) -> Result<RootKey, BackupError> {
    check_seal(seal)?;
    let iterations = u32::from_be_bytes([seal[6], seal[7], seal[8], seal[9]]);
    let rounds = NonZeroU32::new(iterations).ok_or(BackupError::WrongCode)?;
    let (aad, rest) = seal.split_at(PREFIX_LEN);
    let key = code.sealing_key(rounds, &aad[10..])?;
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| BackupError::WrongCode)?;
    let mut buf = Zeroizing::new(sealed.to_vec());
    let plain = key.open_in_place(nonce, Aad::from(aad), &mut buf).map_err(|_| BackupError::WrongCode)?;
    let bytes: [u8; 32] = (&*plain).try_into().map_err(|_| BackupError::WrongCode)?;
    Ok(RootKey::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_typos_name_the_group() -> Result<(), BackupError> {
        let code = RecoveryCode::generate()?;
        let shown = code.display();
        assert_eq!(shown.len(), 35 + 6);
        let again = RecoveryCode::parse(&shown.to_lowercase().replace('-', " "))?;
        assert_eq!(again.0.as_slice(), code.0.as_slice());
        // Every single-symbol substitution is caught, in the right group.
        let bytes: Vec<u8> = shown.bytes().collect();
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'-' {
                continue;
            }
            for &other in ALPHABET.iter().filter(|&&a| a != b) {
                let mut typo = bytes.clone();
                typo[i] = other;
                let text = String::from_utf8(typo).map_err(|_| BackupError::Random)?;
                let err = RecoveryCode::parse(&text).err().map(|e| e.to_string()).unwrap_or_default();
                assert!(err.contains(&format!("group {} ", i / 6 + 1)), "{text}: {err}");
            }
        }
        // Two groups swapped fail too.
        let groups: Vec<&str> = shown.split('-').collect();
        let swapped = [groups[1], groups[0], groups[2], groups[3], groups[4], groups[5], groups[6]].join("-");
        if groups[0] != groups[1] {
            assert!(RecoveryCode::parse(&swapped).is_err());
        }
        assert!(RecoveryCode::parse("ABC").err().map(|e| e.to_string()).unwrap_or_default().contains("35"));
        Ok(())
    }

    #[test]
    fn seals_open_with_their_code_only() -> Result<(), BackupError> {
        let code = RecoveryCode::generate()?;
        let root = RootKey::from_bytes([9; 32]);
        let seal = seal_with(&code, &root, ITERATIONS_MIN)?;
        assert_eq!(seal.len(), SEAL_LEN);
        assert_eq!(open_root_key(&code, &seal)?.as_bytes(), &[9; 32]);
        let other = RecoveryCode::generate()?;
        assert!(matches!(open_root_key(&other, &seal), Err(BackupError::WrongCode)));
        // One byte of each part: magic, version, kdf, rounds, salt, nonce, sealed key, tag.
        for i in [0, 4, 5, 9, 10, 26, 38, 70, SEAL_LEN - 1] {
            let mut edited = seal.clone();
            edited[i] ^= 1;
            assert!(open_root_key(&code, &edited).is_err(), "byte {i}");
        }
        Ok(())
    }
}
