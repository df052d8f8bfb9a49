//! The audit log: every authorization decision, hash-chained.
//!
//! Each record's hash is HMAC-SHA256, keyed by a key derived from the root key, over the
//! previous record's hash and this record's fields (length-prefixed). Someone who can write the
//! database but does not hold the root key cannot edit, drop or reorder a record without
//! [`verify`] finding the first bad sequence. Records are appended by a batching writer
//! (`crate::storage`), so recording a read costs no disk flush on the request path.
//!
//! This module computes and checks the chain; it does not decide anything and knows no SQL.

use std::time::SystemTime;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verification {
    /// Whether every record checked out.
    pub ok: bool,
    /// Records examined.
    pub records_checked: u64,
    /// The first record that does not match (edited, inserted, or after a gap).
    pub first_bad_sequence: Option<u64>,
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
        }
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
            Verification { ok: true, records_checked: 10, first_bad_sequence: None }
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
}
