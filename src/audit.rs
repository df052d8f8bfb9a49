//! The audit log: every authorization decision, hash-chained.
//!
//! Each record's hash is HMAC-SHA256, keyed by a key derived from the root key, over the
//! previous record's hash and this record's fields (length-prefixed). Someone who can write the
//! database but does not hold the root key cannot edit, drop or reorder a record without
//! [`verify`] finding the first bad sequence. Records are appended by a batching writer
//! (`crate::storage`), so recording a read costs no disk flush on the request path.
//!
//! The chain alone cannot show that records were removed from its *end*: a shorter chain is
//! still a valid chain. So the head (the last sequence and its hash) is also kept outside the
//! table as an [`AuditHead`], MAC'd under its own key derived from the root key, and advanced
//! by every append in the same transaction. Deleting tail rows, all rows, or the head itself is
//! then detected. What is left: rolling the table *and* the head back together to an older
//! consistent copy of the database. Only a witness outside the node can see that; the signed
//! checkpoints of the audit retention issue sign the same [`AuditHead::message`].
//!
//! [`AnonymousLimiter`] bounds how many records anonymous callers can add per address.
//!
//! This module computes and checks the chain; it does not decide anything and knows no SQL.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use ring::hmac;
use subtle::ConstantTimeEq;

/// Allow or deny, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditDecision {
    /// The call was allowed.
    Allow,
    /// The call was denied.
    Deny,
}

impl AuditDecision {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditDecision::Allow => "allow",
            AuditDecision::Deny => "deny",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "allow" => Some(AuditDecision::Allow),
            "deny" => Some(AuditDecision::Deny),
            _ => None,
        }
    }
}

/// A decision to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When it was decided.
    pub at: SystemTime,
    /// Who asked (`anonymous`, `device:<id>`).
    pub principal: String,
    /// The action (full gRPC method, or a QUIC method).
    pub action: String,
    /// The resource (`Node`, `Scope:<scope>`, `Device:<id>`).
    pub resource: String,
    /// Allow or deny.
    pub decision: AuditDecision,
    /// Why (the determining policies, or the explanation of a denial).
    pub reason: String,
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Dense sequence from 1.
    pub sequence: u64,
    /// The decision recorded.
    pub entry: AuditEntry,
    /// Hex HMAC chaining it to its predecessor.
    pub hash: String,
}

/// The hash "before" the first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// The chain hash of the record at `sequence` with `entry`, following `previous`.
pub fn chain_hash(
    key: &hmac::Key,
    previous: &[u8; 32],
    sequence: u64,
    at_millis: i64,
    entry: &AuditEntry,
) -> [u8; 32] {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(b"palyra.audit.v1");
    ctx.update(previous);
    ctx.update(&sequence.to_be_bytes());
    ctx.update(&at_millis.to_be_bytes());
    for field in [&entry.principal, &entry.action, &entry.resource, entry.decision.as_str(), &entry.reason] {
        ctx.update(&(field.len() as u64).to_be_bytes());
        ctx.update(field.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// Outcome of verifying the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Whether every record checked out.
    pub ok: bool,
    /// Records examined.
    pub records_checked: u64,
    /// The first record that does not match (edited, inserted, or after a gap), or the first
    /// one missing from the end.
    pub first_bad_sequence: Option<u64>,
    /// What is wrong, in words, when not ok.
    pub problem: Option<String>,
}

/// Incremental verifier: feed records in sequence order.
#[derive(Debug)]
pub struct Verifier<'k> {
    key: &'k hmac::Key,
    previous: [u8; 32],
    expected_sequence: u64,
    checked: u64,
    first_bad: Option<u64>,
}

impl<'k> Verifier<'k> {
    /// A verifier starting at the genesis.
    pub fn new(key: &'k hmac::Key) -> Self {
        Verifier { key, previous: GENESIS, expected_sequence: 1, checked: 0, first_bad: None }
    }

    /// Checks the next record (`at_millis` as stored). Returns false once the chain is broken.
    pub fn feed(&mut self, record: &AuditRecord, at_millis: i64) -> bool {
        if self.first_bad.is_some() {
            return false;
        }
        self.checked += 1;
        let expected = chain_hash(self.key, &self.previous, record.sequence, at_millis, &record.entry);
        let stored = hex::decode(&record.hash).ok();
        let matches = stored.as_deref().is_some_and(|s| bool::from(s.ct_eq(&expected[..])));
        if record.sequence != self.expected_sequence || !matches {
            self.first_bad = Some(record.sequence.min(self.expected_sequence));
            return false;
        }
        self.previous = expected;
        self.expected_sequence += 1;
        true
    }

    /// The verdict.
    pub fn finish(self) -> Verification {
        Verification {
            ok: self.first_bad.is_none(),
            records_checked: self.checked,
            first_bad_sequence: self.first_bad,
            problem: self.first_bad.map(|bad| {
                format!("audit record {bad} does not follow the chain (edited, inserted, reordered, or records before it removed)")
            }),
        }
    }
}

/// The chain head as sealed outside the audit table: what the last record is.
///
/// This is the statement a signed checkpoint (audit retention, witnessed by peers) signs too:
/// [`AuditHead::message`] is the one encoding of "the log ends at `sequence` with `hash`".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditHead {
    /// The last record's sequence (0 for an empty log).
    pub sequence: u64,
    /// The last record's chain hash ([`GENESIS`] for an empty log).
    pub hash: [u8; 32],
}

impl AuditHead {
    /// The head of an empty log.
    pub const EMPTY: AuditHead = AuditHead { sequence: 0, hash: GENESIS };

    /// The bytes a MAC (or a checkpoint signature) covers: a domain tag, the sequence and the
    /// hash.
    pub fn message(&self) -> [u8; 60] {
        let mut out = [0u8; 60];
        out[..20].copy_from_slice(b"palyra.audit.head.v1");
        out[20..28].copy_from_slice(&self.sequence.to_be_bytes());
        out[28..].copy_from_slice(&self.hash);
        out
    }

    /// The seal of this head under `key` (the audit head key).
    pub fn seal(&self, key: &hmac::Key) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(hmac::sign(key, &self.message()).as_ref());
        out
    }

    /// Whether `mac` is this head's seal under `key` (constant time).
    pub fn verify(&self, key: &hmac::Key, mac: &[u8]) -> bool {
        hmac::verify(key, &self.message(), mac).is_ok()
    }
}

/// How the sealed head compares with the table's last record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeadMismatch {
    /// No head record, though the table that keeps it exists.
    #[error("the sealed audit head is missing (it was deleted)")]
    Missing,
    /// The head record's MAC does not verify.
    #[error("the sealed audit head does not verify (it was edited)")]
    BadSeal,
    /// Records after the table's last one were removed.
    #[error("audit records {} to {} were removed from the end of the log (the sealed head is at {}, the table ends at {})", .table + 1, .sealed, .sealed, .table)]
    Truncated {
        /// The sealed head's sequence.
        sealed: u64,
        /// The table's last sequence.
        table: u64,
    },
    /// The table goes on past the sealed head: records were added outside the audit writer.
    #[error(
        "the audit table goes on past the sealed head (sealed at {sealed}, the table ends at {table}): records were added outside this node's audit writer"
    )]
    Extended {
        /// The sealed head's sequence.
        sealed: u64,
        /// The table's last sequence.
        table: u64,
    },
    /// Same length, but the last record is not the one sealed.
    #[error("the last audit record ({sequence}) is not the one the sealed head names")]
    Replaced {
        /// The sequence of both.
        sequence: u64,
    },
}

impl HeadMismatch {
    /// The first sequence that is missing or wrong.
    pub fn first_bad_sequence(&self) -> u64 {
        match *self {
            HeadMismatch::Missing | HeadMismatch::BadSeal => 1,
            HeadMismatch::Truncated { table, .. } => table + 1,
            HeadMismatch::Extended { sealed, .. } => sealed + 1,
            HeadMismatch::Replaced { sequence } => sequence,
        }
    }
}

/// Compares the sealed head (verified against `mac`) with the table's last record.
pub fn check_head(
    key: &hmac::Key,
    sealed: Option<(AuditHead, &[u8])>,
    table: AuditHead,
) -> Result<(), HeadMismatch> {
    let (head, mac) = sealed.ok_or(HeadMismatch::Missing)?;
    if !head.verify(key, mac) {
        return Err(HeadMismatch::BadSeal);
    }
    match head.sequence.cmp(&table.sequence) {
        std::cmp::Ordering::Greater => {
            Err(HeadMismatch::Truncated { sealed: head.sequence, table: table.sequence })
        }
        std::cmp::Ordering::Less => {
            Err(HeadMismatch::Extended { sealed: head.sequence, table: table.sequence })
        }
        std::cmp::Ordering::Equal if !bool::from(head.hash.ct_eq(&table.hash)) => {
            Err(HeadMismatch::Replaced { sequence: head.sequence })
        }
        std::cmp::Ordering::Equal => Ok(()),
    }
}

/// The principal of records the node writes about its own audit log.
pub const NODE_PRINCIPAL: &str = "node";
/// The action of the record written when a head is sealed for the first time.
pub const ACTION_HEAD_SEALED: &str = "palyra.audit/HeadSealed";
/// The action of the summary record of anonymous records not written (over the rate).
pub const ACTION_ANONYMOUS_DROPPED: &str = "palyra.audit/AnonymousRecordsDropped";

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
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u32) -> AuditEntry {
        AuditEntry {
            at: SystemTime::UNIX_EPOCH,
            principal: format!("device:{n}"),
            action: "palyra.vault.v1.VaultService/GetSecret".into(),
            resource: "Node".into(),
            decision: AuditDecision::Allow,
            reason: "admin".into(),
        }
    }

    fn chain(key: &hmac::Key, n: u64) -> Vec<AuditRecord> {
        let mut previous = GENESIS;
        (1..=n)
            .map(|sequence| {
                let e = entry(sequence as u32);
                let hash = chain_hash(key, &previous, sequence, 0, &e);
                previous = hash;
                AuditRecord { sequence, entry: e, hash: hex::encode(hash) }
            })
            .collect()
    }

    fn verify(key: &hmac::Key, records: &[AuditRecord]) -> Verification {
        let mut v = Verifier::new(key);
        for r in records {
            v.feed(r, 0);
        }
        v.finish()
    }

    #[test]
    fn detects_edits_gaps_and_reorders() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"k");
        let good = chain(&key, 10);
        assert_eq!(
            verify(&key, &good),
            Verification { ok: true, records_checked: 10, first_bad_sequence: None, problem: None }
        );

        let mut edited = good.clone();
        edited[4].entry.decision = AuditDecision::Deny;
        assert_eq!(verify(&key, &edited).first_bad_sequence, Some(5));

        let mut gap = good.clone();
        gap.remove(6);
        assert_eq!(verify(&key, &gap).first_bad_sequence, Some(7));

        let mut swapped = good.clone();
        swapped.swap(2, 3);
        assert_eq!(verify(&key, &swapped).first_bad_sequence, Some(3));

        let other_key = hmac::Key::new(hmac::HMAC_SHA256, b"other");
        assert_eq!(verify(&other_key, &good).first_bad_sequence, Some(1));
    }

    #[test]
    fn the_head_is_sealed_and_compared_with_the_table() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"head");
        let good = chain(&hmac::Key::new(hmac::HMAC_SHA256, b"k"), 5);
        let at = |n: usize| AuditHead {
            sequence: n as u64,
            hash: hex::decode(&good[n - 1].hash).unwrap().try_into().unwrap(),
        };
        let head = at(5);
        let mac = head.seal(&key);
        assert_eq!(check_head(&key, Some((head, &mac)), at(5)), Ok(()));
        assert_eq!(
            check_head(&key, Some((head, &mac)), at(3)),
            Err(HeadMismatch::Truncated { sealed: 5, table: 3 })
        );
        assert_eq!(
            check_head(&key, Some((head, &mac)), AuditHead::EMPTY).unwrap_err().first_bad_sequence(),
            1
        );
        assert_eq!(check_head(&key, None, at(5)), Err(HeadMismatch::Missing));
        let edited = AuditHead { sequence: 3, ..head };
        assert_eq!(check_head(&key, Some((edited, &mac)), at(3)), Err(HeadMismatch::BadSeal));
        let other = hmac::Key::new(hmac::HMAC_SHA256, b"other");
        assert_eq!(check_head(&other, Some((head, &mac)), at(5)), Err(HeadMismatch::BadSeal));
        let replaced = AuditHead { sequence: 5, hash: [7; 32] };
        assert_eq!(
            check_head(&key, Some((head, &mac)), replaced),
            Err(HeadMismatch::Replaced { sequence: 5 })
        );
        let longer = AuditHead { sequence: 6, hash: [7; 32] };
        assert_eq!(check_head(&key, Some((head, &mac)), longer).unwrap_err().first_bad_sequence(), 6);
    }

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
