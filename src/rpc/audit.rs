//! `palyra.audit.v1.AuditService`: read and verify the hash-chained audit log (admin only, at
//! the method gate).

use tonic::{Request, Response, Status};

use crate::audit::Audit;
use crate::wire::convert::AuditQuery;
use crate::wire::pb::audit::v1::{self as pb, audit_service_server::AuditService};
use crate::wire::status::internal;

/// The audit service.
#[derive(Debug, Clone)]
pub struct AuditApi {
    log: Audit,
    metrics: crate::metrics::Metrics,
}

impl AuditApi {
    /// The service over `log`.
    pub fn new(log: Audit) -> Self {
        AuditApi { log, metrics: crate::metrics::Metrics::disabled() }
    }

    /// Counts verifications in `metrics` (`palyra_audit_verify_total{result}`).
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = metrics;
        self
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_records(
        &self,
        request: Request<pb::ListAuditRecordsRequest>,
    ) -> Result<Response<pb::ListAuditRecordsResponse>, Status> {
        let query = AuditQuery::try_from(request.into_inner())?;
        let records = self
            .log
            .list_decided(query.since_sequence, query.limit, query.principal, query.action)
            .await
            .map_err(internal)?;
        Ok(Response::new(pb::ListAuditRecordsResponse { records: records.into_iter().map(Into::into).collect() }))
    }

    async fn verify_audit_log(
        &self,
        _request: Request<pb::VerifyAuditLogRequest>,
    ) -> Result<Response<pb::VerifyAuditLogResponse>, Status> {
        let v = self.log.verify().await.map_err(internal)?;
        self.metrics.audit_verified(v.ok);
        if !v.ok {
            tracing::error!(first_bad_sequence = ?v.first_bad_sequence, problem = ?v.problem, "the audit log failed verification");
        }
        Ok(Response::new(v.into()))
    }
}
