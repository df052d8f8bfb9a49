//! One seeded generator for every test and bench that draws random moments, sizes or keys: a
//! run is replayed by giving it the seed it printed.

use std::time::{SystemTime, UNIX_EPOCH};

/// xorshift64: small, fast, reproducible from its seed; not for anything secret.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator starting at `seed` (0, which xorshift cannot leave, is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A seed from the clock (odd, never 0).
pub fn time_seed() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) | 1
}

/// The seed in the environment variable `var` (to replay a run), else [`time_seed`].
pub fn seed_from_env(var: &str) -> u64 {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or_else(time_seed)
}
