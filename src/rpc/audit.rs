//! `palyra.audit.v1.AuditService`: read and verify the hash-chained audit log (admin only, at
//! the method gate).

use tonic::{Request, Response, Status};

use crate::audit::Audit;
use crate::wire::convert::{AuditQuery, prune_retention};
use crate::wire::pb::audit::v1::{self as pb, audit_service_server::AuditService};
use crate::wire::status::internal;

/// The audit service.
#[derive(Debug, Clone)]
pub struct AuditApi {
    log: Audit,
}

impl AuditApi {
    /// The service over `log`.
    pub fn new(log: Audit) -> Self {
        AuditApi { log }
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
        request: Request<pb::VerifyAuditLogRequest>,
    ) -> Result<Response<pb::VerifyAuditLogResponse>, Status> {
        let v = self.log.verify_with(request.into_inner().full).await.map_err(internal)?;
        if !v.ok {
            tracing::error!(first_bad_sequence = ?v.first_bad_sequence, problem = ?v.problem, "the audit log failed verification");
        }
        Ok(Response::new(v.into()))
    }

    async fn prune_audit_log(
        &self,
        request: Request<pb::PruneAuditLogRequest>,
    ) -> Result<Response<pb::PruneAuditLogResponse>, Status> {
        let retention = prune_retention(&request.into_inner())?.unwrap_or_else(|| self.log.retention());
        let report = self.log.prune(retention, std::time::SystemTime::now()).await?;
        Ok(Response::new(report.into()))
    }

    async fn get_audit_checkpoint(
        &self,
        request: Request<pb::GetAuditCheckpointRequest>,
    ) -> Result<Response<pb::GetAuditCheckpointResponse>, Status> {
        let sequence = request.into_inner().sequence;
        let checkpoint = self.log.checkpoint_now().await?;
        let public_key = self.log.signing_public_key().map(hex::encode).unwrap_or_default();
        let hash_at_sequence = match sequence {
            Some(sequence) => self.log.hash_at(sequence).await.map_err(internal)?.map(hex::encode),
            None => None,
        };
        Ok(Response::new(pb::GetAuditCheckpointResponse {
            checkpoint: Some(checkpoint.into()),
            public_key,
            hash_at_sequence,
        }))
    }
}
