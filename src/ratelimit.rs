//! A small bounded per-address rate limiter: one token bucket per peer address.
//!
//! Anonymous calls that cost the node something (a database read, a table entry, a handshake)
//! are charged to the caller's address, after the request has been validated (decoding and
//! field bounds are cheap; a garbage request must not spend anyone's budget), so that a flood
//! from one address only ever exhausts that address's bucket. IPv4 addresses count as they
//! are; IPv6 addresses count by their /64, since one host usually owns a whole /64 and would
//! otherwise get a fresh bucket per address.
//!
//! The table is bounded: a bucket that has refilled to full carries no information and is
//! forgotten when room is needed, so the table holds only addresses that called recently.
//! When it is full of busy addresses, a new address is refused (the limiter's one node-wide
//! failure mode: filling it takes `max_tracked` distinct addresses, or /64s, each calling
//! within one refill period). Time is passed in, so the limiter is deterministic in tests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::net_limits::address_key;

/// Why [`AddressLimiter::admit`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// This address used its budget; it gets a token back after the given wait.
    Address(Duration),
    /// The table is full of addresses that called within a refill period.
    Table,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens left at `at`, in units of 1/`SCALE` token.
    level: u64,
    at: Instant,
}

/// Sub-token resolution of the buckets.
const SCALE: u64 = 1_000;

/// Token buckets per address key: `burst` calls at once, then one per `every`.
#[derive(Debug)]
pub struct AddressLimiter {
    burst: u64,
    every: Duration,
    max_tracked: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

impl AddressLimiter {
    /// A limiter allowing each address `burst` calls at once, refilled by one every `every`,
    /// tracking at most `max_tracked` addresses. `burst` and `max_tracked` are at least 1.
    pub fn new(burst: u32, every: Duration, max_tracked: usize) -> Self {
        AddressLimiter {
            burst: u64::from(burst.max(1)),
            every: every.max(Duration::from_millis(1)),
            max_tracked: max_tracked.max(1),
            buckets: HashMap::new(),
        }
    }

    /// The level of `bucket` at `now`, in 1/SCALE tokens, capped at a full bucket.
    fn level_at(&self, bucket: &Bucket, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(bucket.at);
        let refilled = elapsed.as_nanos().saturating_mul(u128::from(SCALE)) / self.every.as_nanos().max(1);
        let full = self.burst * SCALE;
        u64::try_from(refilled).unwrap_or(u64::MAX).saturating_add(bucket.level).min(full)
    }

    /// Spends one token of `ip`'s bucket at `now`, or says why not. A refusal spends nothing
    /// and, for a new address, adds nothing to the table.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refused> {
        let key = address_key(ip);
        let full = self.burst * SCALE;
        let level = match self.buckets.get(&key) {
            Some(bucket) => self.level_at(bucket, now),
            None => {
                if self.buckets.len() >= self.max_tracked {
                    self.forget_idle(now);
                }
                if self.buckets.len() >= self.max_tracked {
                    return Err(Refused::Table);
                }
                full
            }
        };
        if level < SCALE {
            let missing = SCALE - level;
            let wait = self.every.mul_f64(missing as f64 / SCALE as f64);
            return Err(Refused::Address(wait));
        }
        self.buckets.insert(key, Bucket { level: level - SCALE, at: now });
        Ok(())
    }

    /// Forgets the buckets that have refilled to full by `now` (they hold no information).
    pub fn forget_idle(&mut self, now: Instant) {
        let full = self.burst * SCALE;
        let buckets = std::mem::take(&mut self.buckets);
        self.buckets = buckets.into_iter().filter(|(_, b)| self.level_at(b, now) < full).collect();
    }

    /// How many addresses the table holds now.
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))
    }

    #[test]
    fn a_bucket_admits_its_burst_then_one_per_period() {
        let t0 = Instant::now();
        let mut l = AddressLimiter::new(3, Duration::from_secs(10), 100);
        for _ in 0..3 {
            assert_eq!(l.admit(v4(1), t0), Ok(()));
        }
        assert!(matches!(l.admit(v4(1), t0), Err(Refused::Address(w)) if w == Duration::from_secs(10)));
        // Refusals spend nothing: after one period exactly one more call is admitted.
        for _ in 0..100 {
            assert!(l.admit(v4(1), t0 + Duration::from_secs(5)).is_err());
        }
        assert_eq!(l.admit(v4(1), t0 + Duration::from_secs(10)), Ok(()));
        assert!(l.admit(v4(1), t0 + Duration::from_secs(10)).is_err());
        // Another address has its own bucket.
        assert_eq!(l.admit(v4(2), t0), Ok(()));
        // Idle long enough, a bucket is full again, never more than full.
        for _ in 0..3 {
            assert_eq!(l.admit(v4(1), t0 + Duration::from_secs(10_000)), Ok(()));
        }
        assert!(l.admit(v4(1), t0 + Duration::from_secs(10_000)).is_err());
    }

    #[test]
    fn the_table_is_bounded_and_forgets_idle_addresses() {
        let t0 = Instant::now();
        let mut l = AddressLimiter::new(2, Duration::from_secs(1), 8);
        for i in 0..8 {
            assert_eq!(l.admit(v4(i), t0), Ok(()));
        }
        // Full of busy addresses: a new one is refused and not added.
        assert_eq!(l.admit(v4(100), t0), Err(Refused::Table));
        assert_eq!(l.tracked(), 8);
        // The known ones still have their own budgets.
        assert_eq!(l.admit(v4(0), t0), Ok(()));
        // After a refill period the idle buckets are forgotten to make room.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(l.admit(v4(100), later), Ok(()));
        assert_eq!(l.tracked(), 1);
        eprintln!("limiter: table bound 8, held {} after eviction of idle buckets", l.tracked());
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let t0 = Instant::now();
        let mut l = AddressLimiter::new(2, Duration::from_secs(60), 100);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(l.admit(ip("2001:db8:1:2::1"), t0), Ok(()));
        assert_eq!(l.admit(ip("2001:db8:1:2:ffff::9"), t0), Ok(()));
        assert!(l.admit(ip("2001:db8:1:2:abcd::1"), t0).is_err(), "one /64 is one address");
        assert_eq!(l.admit(ip("2001:db8:1:3::1"), t0), Ok(()));
        assert_eq!(address_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    }
}
