//! The fixtures the fuzz targets (`fuzz/fuzz_targets/`, through the `palyra-fuzz` crate) share
//! with the seed corpus `tests/fuzz_seeds.rs` writes: the field framing most targets read their
//! input with, fixed keys and bindings, a fixed clock. Deterministic on purpose: a seed must
//! decode the same way in the target that reads it.
//!
//! Field framing: a target that needs several inputs (the wire fields of one message, say)
//! reads them as `u16 big-endian length ‖ bytes`, one after the other; a field cut short or
//! missing reads as what is left, or empty.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The root key every vault envelope in the seed corpus is sealed under (see
/// `tests/fuzz_seeds.rs`): the envelope target opens with it, so seeds reach the AEAD.
pub const ENVELOPE_ROOT_KEY: [u8; 32] = [0x5a; 32];
/// The scope the seed envelopes are bound to.
pub const ENVELOPE_SCOPE: &str = "agents/alpha";
/// The key the seed envelopes are bound to.
pub const ENVELOPE_KEY: &str = "API_KEY";
/// The secret version the seed envelopes are bound to.
pub const ENVELOPE_VERSION: u64 = 3;
/// The internal seal key (AES-256-GCM) sealed pairing sessions in the corpus use.
pub const SESSION_SEAL_KEY: [u8; 32] = [0x33; 32];

/// The CA fingerprint the pairing seeds and the handshake target's device and node agree on.
pub const PAIRING_CA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// The pairing code id of the pairing seeds and the handshake target.
pub const PAIRING_CODE_ID: &str = "7K2M9QXR4T";
/// The PIN of that code.
pub const PAIRING_PIN: &str = "482913";

/// A fixed "now" (2027-01-15), so that targets are deterministic where the code takes a clock.
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// Reads `u16 BE length ‖ bytes` fields from a fuzz input.
#[derive(Debug, Clone)]
pub struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    /// Fields of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Fields(data)
    }

    /// The next field: up to its announced length of what is left; empty at the end.
    pub fn bytes(&mut self) -> &'a [u8] {
        let Some((len, rest)) = self.0.split_first_chunk::<2>() else {
            self.0 = &[];
            return &[];
        };
        let len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
        let (field, rest) = rest.split_at(len);
        self.0 = rest;
        field
    }

    /// The next field as text (invalid UTF-8 replaced, as a protobuf string never holds it).
    pub fn text(&mut self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }

    /// The next field as a big-endian integer of up to 8 bytes (0 when empty).
    pub fn u64(&mut self) -> u64 {
        self.bytes().iter().take(8).fold(0u64, |n, b| (n << 8) | u64::from(*b))
    }

    /// Everything not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.0
    }
}

/// Frames `fields` as [`Fields`] reads them (for seeds and for re-feeding a decoded message).
pub fn frame(fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for field in fields {
        let len = u16::try_from(field.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&field[..usize::from(len)]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_tolerate_truncation() {
        let data = frame(&[b"abc", b"", &[1, 2]]);
        let mut f = Fields::new(&data);
        assert_eq!(f.bytes(), b"abc");
        assert_eq!(f.bytes(), b"");
        assert_eq!(f.u64(), 0x0102);
        assert_eq!(f.bytes(), b"");
        let mut cut = Fields::new(&[0, 9, b'x']);
        assert_eq!(cut.bytes(), b"x");
        assert_eq!(Fields::new(&[7]).bytes(), b"");
    }
}
