//! Export of the audit log: the JSON line a record becomes (the same for `palyra audit export`
//! and the file sink), and the [`Follower`] that pages through the table and then follows new
//! records as they commit, without gap or repeat.
//!
//! The line: `{"sequence","at","principal","action","resource","decision","reason","hash"}`,
//! in that order, `at` in RFC 3339 UTC with milliseconds (`2026-12-06T04:35:14.123Z`, the
//! precision the log stores), `decision` `allow` or `deny`, `hash` the record's chain hash
//! (lowercase hex).
//!
//! What it does not do: transport, files (the sink), SQL.

use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::watch;

use super::chain::{AuditRecord, at_millis};
use super::service::Audit;
use crate::store_error::StoreError;

/// `t` as RFC 3339 in UTC with milliseconds, e.g. `2026-12-06T04:35:14.123Z` (times before
/// 1970 read as the epoch).
pub fn rfc3339_millis(t: SystemTime) -> String {
    let millis = at_millis(t).max(0);
    let at = time::OffsetDateTime::from_unix_timestamp(millis.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        millis.rem_euclid(1000)
    )
}

/// One exported record, with the contract's field names.
#[derive(Debug, Serialize)]
struct Line<'a> {
    sequence: u64,
    at: String,
    principal: &'a str,
    action: &'a str,
    resource: &'a str,
    decision: &'static str,
    reason: &'a str,
    hash: &'a str,
}

/// `record` as one JSON line (no newline at the end).
pub fn json_line(record: &AuditRecord) -> String {
    let line = Line {
        sequence: record.sequence,
        at: rfc3339_millis(record.entry.at),
        principal: &record.entry.principal,
        action: &record.entry.action,
        resource: &record.entry.resource,
        decision: record.entry.decision.as_str(),
        reason: &record.entry.reason,
        hash: &record.hash,
    };
    // Strings and integers only: serialization cannot fail.
    serde_json::to_string(&line).unwrap_or_default()
}

/// The sequence a JSON line of [`json_line`] names, and its hash; `None` for anything else.
pub fn line_position(line: &str) -> Option<(u64, String)> {
    #[derive(serde::Deserialize)]
    struct Position {
        sequence: u64,
        hash: String,
    }
    serde_json::from_str::<Position>(line).ok().map(|p| (p.sequence, p.hash))
}

/// Why an export cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Records the export needs were pruned: the log now starts at `oldest`.
    #[error(
        "audit records after sequence {after} up to {} were pruned; the log now starts at {oldest} (export with --since {})",
        oldest.saturating_sub(1),
        oldest.saturating_sub(1)
    )]
    Pruned {
        /// The export's position.
        after: u64,
        /// The oldest record kept.
        oldest: u64,
    },
    /// The export asked to start after a record that was never written.
    #[error("since_sequence {since} is past the end of the audit log (its last record is {head})")]
    AheadOfLog {
        /// What was asked.
        since: u64,
        /// The last record.
        head: u64,
    },
    /// The audit log stopped (the node is shutting down).
    #[error("the audit log stopped")]
    Closed,
    /// The table could not be read.
    #[error(transparent)]
    Storage(#[from] StoreError),
}

/// Hands out the committed records after a position, page by page, oldest first; at the end
/// of the table either stops ([`Follower::until_now`]) or waits for the next commit. Each
/// record is handed out once, in sequence order, and none is skipped: a page is read from
/// the table after the position, and the position is the last record handed out.
#[derive(Debug)]
pub struct Follower {
    audit: Audit,
    committed: watch::Receiver<u64>,
    /// The last record handed out (or where the export starts).
    after: u64,
    /// Stop after this record (an export of what was committed when it started).
    until: Option<u64>,
    /// Whether a record must follow `after` directly (false only before the first record of
    /// an export from the start, which may begin after pruned records).
    contiguous: bool,
}

impl Follower {
    /// Follows the records after `since` (0: from the oldest kept). What was decided before
    /// this call is committed first (as ListAuditRecords does). [`ExportError::AheadOfLog`]
    /// when `since` is past the last record, [`ExportError::Pruned`] when the record after it
    /// is gone.
    pub async fn start(audit: &Audit, since: u64) -> Result<Follower, ExportError> {
        // A failing log still exports what is committed.
        let _ = audit.flush().await;
        let committed = audit.committed();
        let head = *committed.borrow();
        if since > head {
            return Err(ExportError::AheadOfLog { since, head });
        }
        let follower =
            Follower { audit: audit.clone(), committed, after: since, until: None, contiguous: since > 0 };
        if since > 0 && since < head {
            // The record after `since` must still be there.
            let first = audit.list(since, 1, None, None).await?;
            follower.check(&first)?;
        }
        Ok(follower)
    }

    /// Stops at the last record committed when the follower started, instead of following.
    #[must_use]
    pub fn until_now(mut self) -> Self {
        self.until = Some(*self.committed.borrow());
        self
    }

    /// The last record handed out (or where the follower starts).
    pub fn position(&self) -> u64 {
        self.after
    }

    /// Moves the position past `after` (a sink resuming after records it already holds, or
    /// past a pruned range).
    pub fn skip_to(&mut self, after: u64) {
        self.after = self.after.max(after);
        self.contiguous = true;
    }

    fn check(&self, records: &[AuditRecord]) -> Result<(), ExportError> {
        match records.first() {
            Some(first) if self.contiguous && first.sequence != self.after + 1 => {
                Err(ExportError::Pruned { after: self.after, oldest: first.sequence })
            }
            _ => Ok(()),
        }
    }

    /// The next records (at most `max`, at least one), waiting for a commit when all are
    /// handed out; `None` at the end of an [`until_now`](Self::until_now) export.
    /// Cancel-safe: dropped while waiting, nothing is lost.
    pub async fn next(&mut self, max: usize) -> Result<Option<Vec<AuditRecord>>, ExportError> {
        loop {
            let head = *self.committed.borrow_and_update();
            let end = match self.until {
                Some(until) if self.after >= until => return Ok(None),
                Some(until) => until,
                None => head,
            };
            if self.after < end {
                let want = usize::try_from(end - self.after).unwrap_or(usize::MAX).min(max.max(1));
                let records = self.audit.list(self.after, want, None, None).await?;
                self.check(&records)?;
                if let Some(last) = records.last() {
                    self.after = last.sequence;
                    self.contiguous = true;
                    return Ok(Some(records));
                }
                if self.until.is_some() {
                    // Nothing left below the end (pruned meanwhile): the export is done.
                    return Ok(None);
                }
            }
            if self.committed.changed().await.is_err() {
                return Err(ExportError::Closed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::audit::{AuditDecision, AuditEntry};

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_531_714_123);
        assert_eq!(rfc3339_millis(t), "2026-12-06T04:35:14.123Z");
        assert_eq!(rfc3339_millis(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(SystemTime::UNIX_EPOCH - Duration::from_secs(5)), "1970-01-01T00:00:00.000Z");
        // A leap day.
        let leap = SystemTime::UNIX_EPOCH + Duration::from_millis(951_782_400_007);
        assert_eq!(rfc3339_millis(leap), "2000-02-29T00:00:00.007Z");
    }

    #[test]
    fn a_record_is_one_json_line_with_the_contract_fields_in_order() {
        let record = AuditRecord {
            sequence: 7,
            entry: AuditEntry {
                at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_000),
                principal: "Palyra::Device::\"a\"".into(),
                action: "x/Y".into(),
                resource: "Palyra::Node::\"n\"".into(),
                decision: AuditDecision::Deny,
                reason: "line\nbreak".into(),
            },
            hash: "ab".repeat(32),
        };
        let line = json_line(&record);
        assert!(!line.contains('\n'), "{line}");
        let keys: Vec<String> = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&line)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort();
        let fields = ["sequence", "at", "principal", "action", "resource", "decision", "reason", "hash"];
        let mut sorted = fields.map(str::to_owned).to_vec();
        sorted.sort();
        assert_eq!(keys_sorted, sorted);
        let order: Vec<usize> = fields.iter().filter_map(|f| line.find(&format!("\"{f}\":"))).collect();
        assert!(order.len() == fields.len() && order.is_sorted(), "{line}");
        assert!(line.contains("\"decision\":\"deny\"") && line.contains("\"at\":\"1970-01-01T00:00:01.000Z\""));
        assert_eq!(line_position(&line), Some((7, "ab".repeat(32))));
        assert_eq!(line_position("{\"sequence\":7"), None);
    }
}
