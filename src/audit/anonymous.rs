//! [`AnonymousLimiter`]: how many records anonymous callers can add, per address. A token
//! bucket per address bucket (IPv6 by /64); refused calls are counted and summed up in one
//! record per window. Pure: the caller passes the time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use super::chain::{ACTION_ANONYMOUS_DROPPED, AuditDecision, AuditEntry};

/// Per-address rate of anonymous calls that are recorded: a token bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnonymousRate {
    /// Records a quiet address may add at once.
    pub burst: f64,
    /// Records per second refilled.
    pub per_second: f64,
    /// Addresses tracked at once; beyond it new addresses share one bucket.
    pub max_addresses: usize,
    /// How long a run of refused calls is summed up before its summary record is written.
    pub window: Duration,
}

impl Default for AnonymousRate {
    /// 100 at once, 10 per second (under a million records a day per address), 4,096
    /// addresses, one summary per address per minute at most.
    fn default() -> Self {
        AnonymousRate { burst: 100.0, per_second: 10.0, max_addresses: 4096, window: Duration::from_secs(60) }
    }
}

/// The address bucket of `ip`: an IPv4 address alone, an IPv6 address by its /64 (one host
/// usually holds a whole /64). IPv4-mapped IPv6 addresses count as IPv4.
pub fn address_bucket(ip: IpAddr) -> String {
    match crate::net_limits::address_key(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(prefix) => format!("{prefix}/64"),
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    /// Refused calls since `first_drop` (wall clock, for the summary).
    dropped: u64,
    first_drop: Option<(Instant, SystemTime)>,
}

/// Summary of anonymous calls refused (not recorded) from one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedSummary {
    /// The address bucket (`127.0.0.1`, `2001:db8:0:1::/64`, or `other addresses`).
    pub address: String,
    /// Calls refused.
    pub count: u64,
    /// When the first of them came.
    pub since: SystemTime,
}

impl DroppedSummary {
    /// The record that sums it up (written in place of the refused calls' records).
    pub fn entry(&self, now: SystemTime) -> AuditEntry {
        let since = crate::unix_time::unix_ms(self.since);
        let until = crate::unix_time::unix_ms(now);
        AuditEntry {
            at: now,
            principal: "anonymous".to_owned(),
            action: ACTION_ANONYMOUS_DROPPED.to_owned(),
            resource: format!("Address:{}", self.address),
            decision: AuditDecision::Deny,
            reason: format!(
                "{} anonymous calls from {} refused over the audit rate and not recorded, unix ms {since} to {until}",
                self.count, self.address
            ),
        }
    }
}

/// Token buckets per address for anonymous calls' records, bounded in memory.
#[derive(Debug)]
pub struct AnonymousLimiter {
    rate: AnonymousRate,
    buckets: HashMap<String, Bucket>,
}

/// The shared bucket of addresses beyond `max_addresses`.
const OTHER_ADDRESSES: &str = "other addresses";

/// What the limiter says about one anonymous call.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Record it (after the summary, if any, of what was refused before).
    Admit(Option<DroppedSummary>),
    /// Refuse it without a record; `Some` when a window closed and its summary is due now.
    Refuse(Option<DroppedSummary>),
}

impl AnonymousLimiter {
    /// A limiter at `rate`.
    pub fn new(rate: AnonymousRate) -> Self {
        AnonymousLimiter { rate, buckets: HashMap::new() }
    }

    /// Charges one record to the bucket of `ip` at `now`.
    pub fn admit(&mut self, ip: IpAddr, now: Instant, wall: SystemTime) -> Admission {
        let mut key = address_bucket(ip);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.rate.max_addresses {
            self.evict_full(now);
            if self.buckets.len() >= self.rate.max_addresses {
                key = OTHER_ADDRESSES.to_owned();
            }
        }
        let rate = self.rate;
        let bucket = self.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: rate.burst,
            refilled: now,
            dropped: 0,
            first_drop: None,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate.per_second).min(rate.burst);
        bucket.refilled = now;
        let take_summary = |bucket: &mut Bucket| {
            bucket.first_drop.take().map(|(_, since)| DroppedSummary {
                address: key.clone(),
                count: std::mem::take(&mut bucket.dropped),
                since,
            })
        };
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Admission::Admit(take_summary(bucket));
        }
        bucket.dropped += 1;
        let (first, _) = *bucket.first_drop.get_or_insert((now, wall));
        if now.saturating_duration_since(first) >= rate.window {
            return Admission::Refuse(take_summary(bucket));
        }
        Admission::Refuse(None)
    }

    /// Forgets buckets that are full again and owe no summary.
    fn evict_full(&mut self, now: Instant) {
        let rate = self.rate;
        self.buckets.retain(|_, b| {
            let refilled =
                b.tokens + now.saturating_duration_since(b.refilled).as_secs_f64() * rate.per_second;
            b.first_drop.is_some() || refilled < rate.burst
        });
    }

    /// Summaries whose window has closed (for a sweep when no call comes from the address).
    pub fn closed_windows(&mut self, now: Instant) -> Vec<DroppedSummary> {
        let window = self.rate.window;
        let mut out = Vec::new();
        for (address, b) in &mut self.buckets {
            if let Some((first, since)) = b.first_drop
                && now.saturating_duration_since(first) >= window
            {
                b.first_drop = None;
                out.push(DroppedSummary {
                    address: address.clone(),
                    count: std::mem::take(&mut b.dropped),
                    since,
                });
            }
        }
        self.evict_full(now);
        out
    }

    /// Addresses tracked.
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_records_are_bounded_per_address_and_summed_up() {
        let rate =
            AnonymousRate { burst: 3.0, per_second: 1.0, max_addresses: 2, window: Duration::from_secs(10) };
        let mut limiter = AnonymousLimiter::new(rate);
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH;
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let admitted = (0..10).filter(|_| matches!(limiter.admit(a, t0, wall), Admission::Admit(_))).count();
        assert_eq!(admitted, 3);
        // Another address is not affected.
        assert_eq!(limiter.admit(b, t0, wall), Admission::Admit(None));
        // After a refill, the next admitted record comes with the summary of the 7 refused.
        match limiter.admit(a, t0 + Duration::from_secs(1), wall) {
            Admission::Admit(Some(s)) => assert_eq!((s.count, s.address.as_str()), (7, "127.0.0.1")),
            other => panic!("{other:?}"),
        }
        // A flood that never earns a token still gets a summary per closed window.
        let mut stingy = AnonymousLimiter::new(AnonymousRate { per_second: 0.0, ..rate });
        let (mut summaries, mut refused) = (0, 0u64);
        for i in 0..300u64 {
            match stingy.admit(a, t0 + Duration::from_millis(i * 100), wall) {
                Admission::Refuse(Some(s)) => {
                    summaries += 1;
                    refused += s.count;
                }
                Admission::Refuse(None) | Admission::Admit(None) => {}
                Admission::Admit(Some(s)) => panic!("{s:?}"),
            }
        }
        assert_eq!(summaries, 2, "windows of 10 s over 30 s of flood");
        assert!(refused >= 200, "{refused}");
        // The map is bounded: a third address shares the overflow bucket.
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let _ = limiter.admit(c, t0, wall);
        assert!(limiter.tracked() <= 3);
        // IPv6 counts by /64.
        let v6a: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:0:1:ffff::2".parse().unwrap();
        assert_eq!(address_bucket(v6a), address_bucket(v6b));
        assert_eq!(address_bucket("::ffff:127.0.0.1".parse().unwrap()), "127.0.0.1");
    }
}
