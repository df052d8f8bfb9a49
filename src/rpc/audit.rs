//! `palyra.audit.v1.AuditService`: read and verify the hash-chained audit log (admin only, at
//! the method gate).

use tonic::{Request, Response, Status};

use super::convert::timestamp;
use super::pb::audit::v1::{self as pb, audit_service_server::AuditService};
use super::status::{internal, invalid_argument};
use crate::audit::AuditDecision;
use crate::storage::AuditLog;

/// Default and largest page of records.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;
/// Longest principal or action filter accepted.
const MAX_FILTER_LEN: usize = 512;

/// The audit service.
#[derive(Debug, Clone)]
pub struct AuditApi {
    log: AuditLog,
}

impl AuditApi {
    /// The service over `log`.
    pub fn new(log: AuditLog) -> Self {
        AuditApi { log }
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_records(
        &self,
        request: Request<pb::ListAuditRecordsRequest>,
    ) -> Result<Response<pb::ListAuditRecordsResponse>, Status> {
        let req = request.into_inner();
        for (field, value) in [("principal", &req.principal), ("action", &req.action)] {
            if value.as_ref().is_some_and(|v| v.len() > MAX_FILTER_LEN) {
                return Err(invalid_argument(field, format!("longer than {MAX_FILTER_LEN} bytes")));
            }
        }
        let limit = if req.limit == 0 { DEFAULT_LIMIT } else { req.limit.min(MAX_LIMIT) };
        // Show what was decided up to now, including decisions still in the writer's queue.
        // A failing log still lists what is committed.
        let _ = self.log.flush().await;
        let records = self
            .log
            .list(req.since_sequence, limit as usize, req.principal, req.action)
            .await
            .map_err(internal)?;
        Ok(Response::new(pb::ListAuditRecordsResponse {
            records: records
                .into_iter()
                .map(|r| pb::AuditRecord {
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
                })
                .collect(),
        }))
    }

    async fn verify_audit_log(
        &self,
        _request: Request<pb::VerifyAuditLogRequest>,
    ) -> Result<Response<pb::VerifyAuditLogResponse>, Status> {
        let v = self.log.verify().await.map_err(internal)?;
        if !v.ok {
            tracing::error!(first_bad_sequence = ?v.first_bad_sequence, problem = ?v.problem, "the audit log failed verification");
        }
        Ok(Response::new(pb::VerifyAuditLogResponse {
            ok: v.ok,
            records_checked: v.records_checked,
            first_bad_sequence: v.first_bad_sequence,
            problem: v.problem,
        }))
    }
}
