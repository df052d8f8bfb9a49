//! `palyra.audit.v1`: ListAuditRecords' filters and page, the records, and the outcome of
//! verifying the chain.

use tonic::Status;

use super::timestamp;
use crate::audit::{AuditDecision, AuditRecord, Checkpoint, PruneReport, Retention, Verification};
use crate::wire::pb::audit::v1 as pb;
use crate::wire::status::invalid_argument;

/// Default and largest page of records.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;
/// Longest principal or action filter accepted.
const MAX_FILTER_LEN: usize = 512;

/// A ListAuditRecords request, parsed: the records after `since_sequence`, `limit` at most,
/// optionally only those of one principal and one action (exact).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuditQuery {
    /// List records after this sequence.
    pub(crate) since_sequence: u64,
    /// Records at most (0 asked for the default; bounded).
    pub(crate) limit: usize,
    /// Only this principal.
    pub(crate) principal: Option<String>,
    /// Only this action.
    pub(crate) action: Option<String>,
}

impl TryFrom<pb::ListAuditRecordsRequest> for AuditQuery {
    type Error = Status;

    fn try_from(req: pb::ListAuditRecordsRequest) -> Result<Self, Status> {
        for (field, value) in [("principal", &req.principal), ("action", &req.action)] {
            if value.as_ref().is_some_and(|v| v.len() > MAX_FILTER_LEN) {
                return Err(invalid_argument(field, format!("longer than {MAX_FILTER_LEN} bytes")));
            }
        }
        let limit = if req.limit == 0 { DEFAULT_LIMIT } else { req.limit.min(MAX_LIMIT) };
        Ok(AuditQuery {
            since_sequence: req.since_sequence,
            limit: limit as usize,
            principal: req.principal,
            action: req.action,
        })
    }
}

impl From<AuditRecord> for pb::AuditRecord {
    fn from(r: AuditRecord) -> Self {
        pb::AuditRecord {
            sequence: r.sequence,
            at: Some(timestamp(r.entry.at)),
            principal: r.entry.principal,
            action: r.entry.action,
            resource: r.entry.resource,
            decision: match r.entry.decision {
                AuditDecision::Allow => pb::AuditDecision::Allow,
                AuditDecision::Deny => pb::AuditDecision::Deny,
            } as i32,
            reason: r.entry.reason,
            hash: r.hash,
        }
    }
}

/// A record from the wire (a client's view: `palyra audit export` prints it as the sink's
/// JSON line). An unknown decision reads as deny.
pub fn audit_record_from_pb(r: pb::AuditRecord) -> AuditRecord {
    AuditRecord {
        sequence: r.sequence,
        entry: crate::audit::AuditEntry {
            at: super::system_time(r.at),
            decision: if r.decision() == pb::AuditDecision::Allow {
                AuditDecision::Allow
            } else {
                AuditDecision::Deny
            },
            principal: r.principal,
            action: r.action,
            resource: r.resource,
            reason: r.reason,
        },
        hash: r.hash,
    }
}

impl From<Verification> for pb::VerifyAuditLogResponse {
    fn from(v: Verification) -> Self {
        pb::VerifyAuditLogResponse {
            ok: v.ok,
            records_checked: v.records_checked,
            first_bad_sequence: v.first_bad_sequence,
            problem: v.problem,
            from_sequence: v.from_sequence,
        }
    }
}

/// Longest retention by age accepted: 100 years.
const MAX_RETAIN_DAYS: u32 = 36_500;

/// A PruneAuditLog request's retention: `None` when it names none (the node's own applies).
pub(crate) fn prune_retention(req: &pb::PruneAuditLogRequest) -> Result<Option<Retention>, Status> {
    if req.retain_records == Some(0) {
        return Err(invalid_argument("retain_records", "must be at least 1"));
    }
    if req.retain_days.is_some_and(|d| d == 0 || d > MAX_RETAIN_DAYS) {
        return Err(invalid_argument("retain_days", format!("must be between 1 and {MAX_RETAIN_DAYS}")));
    }
    let retention = Retention {
        records: req.retain_records,
        max_age: req.retain_days.map(|d| std::time::Duration::from_secs(u64::from(d) * 86_400)),
    };
    Ok((!retention.keeps_everything()).then_some(retention))
}

impl From<Checkpoint> for pb::AuditCheckpoint {
    fn from(c: Checkpoint) -> Self {
        pb::AuditCheckpoint {
            sequence: c.head.sequence,
            head: hex::encode(c.head.hash),
            at_unix_ms: c.at_millis,
            kind: c.kind.as_str().to_owned(),
            signature: hex::encode(c.signature),
        }
    }
}

impl From<PruneReport> for pb::PruneAuditLogResponse {
    fn from(r: PruneReport) -> Self {
        pb::PruneAuditLogResponse {
            removed: r.removed,
            first_sequence: if r.removed > 0 { r.first } else { 0 },
            last_sequence: if r.removed > 0 { r.through } else { 0 },
            checkpoint: r.checkpoint.map(Into::into),
        }
    }
}
