//! The hash chain: records, their HMAC chain, the [`Verifier`] that re-computes it, and the
//! [`AuditHead`] sealed outside the table.
//!
//! Each record's hash is HMAC-SHA256, keyed by a key derived from the root key, over the
//! previous record's hash and this record's fields (length-prefixed). Someone who can write the
//! database but does not hold the root key cannot edit, drop or reorder a record without the
//! verifier finding the first bad sequence.
//!
//! The chain alone cannot show that records were removed from its *end*: a shorter chain is
//! still a valid chain. So the head (the last sequence and its hash) is also kept outside the
//! table as an [`AuditHead`], MAC'd under its own key derived from the root key, and advanced
//! by every append in the same transaction. Deleting tail rows, all rows, or the head itself is
//! then detected. What is left: rolling the table *and* the head back together to an older
//! consistent copy of the database. Only a witness outside the node can see that; the signed
//! checkpoints ([`super::checkpoint`]) sign the same [`AuditHead::message`].
//!
//! Pure computation: no IO, no clock, no SQL.

use std::sync::Arc;
use std::time::SystemTime;

use ring::hmac;
use subtle::ConstantTimeEq;

use crate::integrity::MacInput;
use crate::unix_time::unix_ms;

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
    let mut mac = MacInput::new(key);
    mac.put(b"palyra.audit.v1");
    mac.put(previous);
    mac.put(&sequence.to_be_bytes());
    mac.put(&at_millis.to_be_bytes());
    for field in [&entry.principal, &entry.action, &entry.resource, entry.decision.as_str(), &entry.reason] {
        mac.put(&(field.len() as u64).to_be_bytes());
        mac.put(field.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(mac.sign().as_ref());
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
    /// The walk checked the records after this sequence (0: from the first record; more
    /// when it started at a signed checkpoint: the last pruned or the last verified record).
    pub from_sequence: u64,
    /// The table's last record as the verification saw it.
    pub head: AuditHead,
}

/// Incremental verifier: feed records in sequence order.
#[derive(Debug)]
pub struct Verifier {
    key: Arc<hmac::Key>,
    previous: [u8; 32],
    expected_sequence: u64,
    checked: u64,
    first_bad: Option<u64>,
}

impl Verifier {
    /// A verifier starting at the genesis.
    pub fn new(key: Arc<hmac::Key>) -> Self {
        Self::after(key, AuditHead::EMPTY)
    }

    /// A verifier whose first record follows `head` (a checkpoint's sequence and hash).
    pub fn after(key: Arc<hmac::Key>, head: AuditHead) -> Self {
        Verifier {
            key,
            previous: head.hash,
            expected_sequence: head.sequence.saturating_add(1),
            checked: 0,
            first_bad: None,
        }
    }

    /// Checks the next record (`at_millis` as stored). Returns false once the chain is broken.
    pub fn feed(&mut self, record: &AuditRecord, at_millis: i64) -> bool {
        if self.first_bad.is_some() {
            return false;
        }
        self.checked += 1;
        let expected = chain_hash(&self.key, &self.previous, record.sequence, at_millis, &record.entry);
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
            from_sequence: 0,
            head: AuditHead::EMPTY,
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
/// The action of the record written after records were pruned.
pub const ACTION_PRUNED: &str = "palyra.audit/Pruned";
/// The action of the summary record of anonymous records not written (over the rate).
pub const ACTION_ANONYMOUS_DROPPED: &str = "palyra.audit/AnonymousRecordsDropped";

/// The stored (and hashed) time of a record: unix milliseconds, 0 before the epoch.
pub(crate) fn at_millis(at: SystemTime) -> i64 {
    i64::try_from(unix_ms(at)).unwrap_or(i64::MAX)
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
        let mut v = Verifier::new(Arc::new(key.clone()));
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
            Verification {
                ok: true,
                records_checked: 10,
                first_bad_sequence: None,
                problem: None,
                from_sequence: 0,
                head: AuditHead::EMPTY
            }
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
}
