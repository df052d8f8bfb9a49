//! K-of-N shares of a recovery code: Shamir's secret sharing over GF(2⁸), byte by byte.
//!
//! The secret is the code's 28 symbol values. Each byte is the constant term of its own random
//! polynomial of degree K−1; share `x` (1..=N) holds the 28 values at `x`. Any K shares give
//! the polynomials back (Lagrange at 0); K−1 shares are consistent with every possible code,
//! so they tell nothing about it. The field is GF(2⁸) with the AES polynomial x⁸+x⁴+x³+x+1;
//! multiplication is branch-free on the data (no table lookups indexed by secrets).
//!
//! A share as typed: 14 groups of 4 symbols and a check symbol (as the code, see
//! [`super::recovery`]) encoding 35 bytes: `u8(version = 1) ‖ set id (4 random bytes, the same
//! in every share of one kit) ‖ u8(K) ‖ u8(x) ‖ 28 bytes`.

use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::BackupError;
use super::recovery::{RecoveryCode, decode_groups, encode_groups};

const VERSION: u8 = 1;
/// Bytes of the secret: the code's 28 symbol values.
const SECRET_LEN: usize = 28;
/// Encoded share bytes: version, set id, K, x, the values.
const SHARE_LEN: usize = 1 + 4 + 1 + 1 + SECRET_LEN;
/// 35 bytes = 280 bits = 56 symbols = 14 groups of 4.
const SHARE_GROUPS: usize = SHARE_LEN * 8 / 5 / 4;
/// At most this many shares in a kit.
pub const MAX_SHARES: u8 = 16;

/// One share, wiped on drop.
pub struct Share {
    set_id: [u8; 4],
    threshold: u8,
    x: u8,
    y: Zeroizing<[u8; SECRET_LEN]>,
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Share({} of a {}-of-N kit, [redacted])", self.x, self.threshold)
    }
}

/// a·b in GF(2⁸), AES polynomial; constant time in the values.
fn mul(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0u8;
    for _ in 0..8 {
        product ^= a & 0u8.wrapping_sub(b & 1);
        let carry = 0u8.wrapping_sub(a >> 7);
        a = (a << 1) ^ (0x1b & carry);
        b >>= 1;
    }
    product
}

/// a⁻¹ = a²⁵⁴ (a ≠ 0).
fn inverse(a: u8) -> u8 {
    let mut result = 1u8;
    let mut base = a;
    let mut exp = 254u8;
    while exp > 0 {
        if exp & 1 == 1 {
            result = mul(result, base);
        }
        base = mul(base, base);
        exp >>= 1;
    }
    result
}

/// Splits `code` into `n` shares, any `k` of which give it back.
pub fn split(code: &RecoveryCode, k: u8, n: u8) -> Result<Vec<Share>, BackupError> {
    if !(2..=n).contains(&k) || n > MAX_SHARES {
        return Err(BackupError::BadCode(format!(
            "a kit of {n} shares with a threshold of {k}: use 2 ≤ threshold ≤ shares ≤ {MAX_SHARES}"
        )));
    }
    let secret = code.values();
    let rng = SystemRandom::new();
    let mut set_id = [0u8; 4];
    rng.fill(&mut set_id).map_err(|_| BackupError::Random)?;
    // coefficients[byte][0] is the secret byte, the others random.
    let mut coefficients = Zeroizing::new(vec![0u8; SECRET_LEN * usize::from(k)]);
    rng.fill(&mut coefficients).map_err(|_| BackupError::Random)?;
    for (i, &s) in secret.iter().enumerate() {
        coefficients[i * usize::from(k)] = s;
    }
    let mut shares = Vec::with_capacity(usize::from(n));
    for x in 1..=n {
        let mut y = Zeroizing::new([0u8; SECRET_LEN]);
        for (i, out) in y.iter_mut().enumerate() {
            // Horner, highest coefficient first.
            let poly = &coefficients[i * usize::from(k)..(i + 1) * usize::from(k)];
            *out = poly.iter().rev().fold(0u8, |acc, &c| mul(acc, x) ^ c);
        }
        shares.push(Share { set_id, threshold: k, x, y });
    }
    Ok(shares)
}

/// The code back from shares: at least K distinct shares of one kit.
pub fn combine(shares: &[Share]) -> Result<RecoveryCode, BackupError> {
    let first = shares.first().ok_or_else(|| BackupError::BadCode("no share given".to_owned()))?;
    if shares.iter().any(|s| s.set_id != first.set_id || s.threshold != first.threshold) {
        return Err(BackupError::BadCode("these shares come from different recovery kits".to_owned()));
    }
    for (i, a) in shares.iter().enumerate() {
        if shares[..i].iter().any(|b| b.x == a.x) {
            return Err(BackupError::BadCode(format!("share {} is given twice", a.x)));
        }
    }
    let k = usize::from(first.threshold);
    if shares.len() < k {
        return Err(BackupError::BadCode(format!(
            "{k} shares of this {k}-of-N kit are needed, {} given",
            shares.len()
        )));
    }
    RecoveryCode::from_values(&interpolate(&shares[..k]))
}

/// The constant terms through `shares` (Lagrange at 0), whatever their count.
fn interpolate(shares: &[Share]) -> Zeroizing<Vec<u8>> {
    let mut secret = Zeroizing::new(vec![0u8; SECRET_LEN]);
    for (j, share) in shares.iter().enumerate() {
        // l_j(0) = Π_{m≠j} x_m / (x_m − x_j); subtraction is xor.
        let mut basis = 1u8;
        for (m, other) in shares.iter().enumerate() {
            if m != j {
                basis = mul(basis, mul(other.x, inverse(other.x ^ share.x)));
            }
        }
        for (out, &y) in secret.iter_mut().zip(share.y.iter()) {
            *out ^= mul(y, basis);
        }
    }
    secret
}

impl Share {
    /// The share as a person types it.
    pub fn display(&self) -> Zeroizing<String> {
        let mut bytes = Zeroizing::new(Vec::with_capacity(SHARE_LEN));
        bytes.push(VERSION);
        bytes.extend_from_slice(&self.set_id);
        bytes.push(self.threshold);
        bytes.push(self.x);
        bytes.extend_from_slice(self.y.as_ref());
        encode_groups(&to_symbols(&bytes))
    }

    /// Reads a share as typed; a typo is caught per group and named.
    pub fn parse(text: &str) -> Result<Self, BackupError> {
        let values = decode_groups(text, SHARE_GROUPS, "share")?;
        let bytes = from_symbols(&values);
        if bytes[0] != VERSION {
            return Err(BackupError::NewerVersion(format!("share format {}", bytes[0])));
        }
        let (threshold, x) = (bytes[5], bytes[6]);
        if x == 0 || !(2..=MAX_SHARES).contains(&threshold) {
            return Err(BackupError::BadCode("the share is malformed".to_owned()));
        }
        let mut y = Zeroizing::new([0u8; SECRET_LEN]);
        y.copy_from_slice(&bytes[7..]);
        let mut set_id = [0u8; 4];
        set_id.copy_from_slice(&bytes[1..5]);
        Ok(Share { set_id, threshold, x, y })
    }
}

/// Bytes → 5-bit values, big-endian bit order (35 bytes → 56 values).
fn to_symbols(bytes: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(bytes.len() * 8 / 5 + 1));
    let (mut acc, mut bits) = (0u16, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u16::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(((acc >> bits) & 31) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    out
}

/// 5-bit values → bytes (the inverse of [`to_symbols`] for whole bytes).
fn from_symbols(values: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(values.len() * 5 / 8));
    let (mut acc, mut bits) = (0u16, 0u32);
    for &v in values {
        acc = (acc << 5) | u16::from(v & 31);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_arithmetic() {
        assert_eq!(mul(0x57, 0x83), 0xc1); // FIPS-197 §4.2
        assert_eq!(mul(0x57, 0x13), 0xfe);
        for a in 1..=255u8 {
            assert_eq!(mul(a, inverse(a)), 1, "{a}");
        }
    }

    #[test]
    fn any_k_shares_give_the_code_and_fewer_do_not() -> Result<(), BackupError> {
        let code = RecoveryCode::generate()?;
        let shares = split(&code, 3, 5)?;
        let texts: Vec<String> = shares.iter().map(|s| s.display().to_string()).collect();
        assert_eq!(texts[0].len(), 14 * 6 - 1);
        let parse = |ids: &[usize]| -> Result<Vec<Share>, BackupError> {
            ids.iter().map(|&i| Share::parse(&texts[i])).collect()
        };
        for ids in [[0, 1, 2], [4, 2, 0], [1, 3, 4], [3, 4, 2]] {
            let back = combine(&parse(&ids)?)?;
            assert_eq!(back.display().as_str(), code.display().as_str(), "{ids:?}");
        }
        // Four shares: the first three are used, same code.
        assert_eq!(combine(&parse(&[0, 1, 2, 3])?)?.display().as_str(), code.display().as_str());
        // K−1 shares: refused, and interpolating them anyway gives another code.
        let two = parse(&[0, 1])?;
        let err = combine(&two).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("3 shares of this 3-of-N kit are needed, 2 given"), "{err}");
        assert_ne!(interpolate(&two).as_slice(), code.values().as_slice());
        // A repeated share, shares of two kits, a typo.
        assert!(combine(&parse(&[0, 0, 1])?).is_err());
        let other = split(&code, 3, 5)?;
        let mixed = vec![Share::parse(&texts[0])?, Share::parse(&texts[1])?, Share::parse(&other[2].display())?];
        let err = combine(&mixed).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("different recovery kits"), "{err}");
        let mut typo: Vec<char> = texts[0].chars().collect();
        typo[20] = if typo[20] == '7' { '8' } else { '7' };
        let err = Share::parse(&typo.into_iter().collect::<String>()).err().map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("group 4 of the share"));
        assert!(split(&code, 1, 3).is_err() && split(&code, 4, 3).is_err() && split(&code, 2, 17).is_err());
        Ok(())
    }

    #[test]
    fn symbols_round_trip() {
        let bytes: Vec<u8> = (0..35).map(|i| (i * 73 + 11) as u8).collect();
        let symbols = to_symbols(&bytes);
        assert_eq!(symbols.len(), 56);
        assert_eq!(from_symbols(&symbols).as_slice(), bytes.as_slice());
    }
}
