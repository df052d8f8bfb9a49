//! `palyra.audit.v1.AuditService`: read, verify and export the hash-chained audit log (admin
//! only, at the method gate). ExportAuditLog streams a [`Follower`] of the table; its open
//! streams are bounded per principal and per node, and end when the server shuts down.

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::authz::{Gate, peer_of};
use super::slots::{StreamSlots, forward};
use crate::audit::{Audit, Follower};
use crate::policy::Resource;
use crate::wire::convert::{AuditQuery, prune_retention};
use crate::wire::pb::audit::v1::{self as pb, audit_service_server::AuditService};
use crate::wire::status::{denied, internal, stream_shutdown};

/// Open ExportAuditLog streams one principal may hold.
pub const MAX_EXPORTS_PER_PRINCIPAL: usize = 4;
/// Open ExportAuditLog streams on the node.
pub const MAX_EXPORTS: usize = 64;
/// Records in one ExportAuditLog message at most (well under a client's 4 MiB message limit).
const EXPORT_BATCH: usize = 256;
/// Messages of one export waiting for the client: the stream's task waits when they are not
/// taken (HTTP/2 flow control holds the rest back), so a slow reader costs this, never more.
const EXPORT_BUFFER: usize = 4;
/// The export's method: the action the gate decided at the start, asked again on a policy change.
const EXPORT_METHOD: &str = "palyra.audit.v1.AuditService/ExportAuditLog";

/// The audit service.
#[derive(Debug, Clone)]
pub struct AuditApi {
    log: Audit,
    /// Asks again whether a following export may go on once the policy set changes.
    gate: Gate,
    /// Becomes true when the server shuts down: open exports end so that it can drain.
    stopping: watch::Receiver<bool>,
    exports: StreamSlots,
    metrics: crate::metrics::Metrics,
}

impl AuditApi {
    /// The service over `log`; following exports end when `stopping` turns true.
    pub fn new(log: Audit, gate: Gate, stopping: watch::Receiver<bool>) -> Self {
        AuditApi {
            log,
            gate,
            stopping,
            exports: StreamSlots::new("ExportAuditLog", MAX_EXPORTS_PER_PRINCIPAL, MAX_EXPORTS),
            metrics: crate::metrics::Metrics::disabled(),
        }
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
        request: Request<pb::VerifyAuditLogRequest>,
    ) -> Result<Response<pb::VerifyAuditLogResponse>, Status> {
        let v = self.log.verify_with(request.into_inner().full).await.map_err(internal)?;
        self.metrics.audit_verified(v.ok);
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

    type ExportAuditLogStream = ReceiverStream<Result<pb::ExportAuditLogResponse, Status>>;

    async fn export_audit_log(
        &self,
        request: Request<pb::ExportAuditLogRequest>,
    ) -> Result<Response<Self::ExportAuditLogStream>, Status> {
        let peer = peer_of(&request)?;
        let anonymous = matches!(peer.principal, crate::identity::Principal::Anonymous);
        let slot = self.exports.take(peer.principal.label()).map_err(|d| denied(anonymous, d))?;
        let req = request.into_inner();
        let follower = Follower::start(&self.log, req.since_sequence).await?;
        let mut follower = if req.follow { follower } else { follower.until_now() };
        let (tx, rx) = mpsc::channel(EXPORT_BUFFER);
        let mut stopping = self.stopping.clone();
        let gate = self.gate.clone();
        let mut version = gate.engine.active().0;
        tokio::spawn(async move {
            let _slot = slot;
            loop {
                let item = tokio::select! {
                    next = follower.next(EXPORT_BATCH) => match next {
                        Ok(Some(records)) => match still_allowed(&gate, &peer, &mut version) {
                            Ok(()) => Ok(pb::ExportAuditLogResponse {
                                records: records.into_iter().map(Into::into).collect(),
                            }),
                            Err(d) => Err(denied(false, d)),
                        },
                        Ok(None) => return,
                        Err(e) => Err(Status::from(e)),
                    },
                    _ = stopping.wait_for(|stop| *stop) => Err(stream_shutdown()),
                    () = tx.closed() => return,
                };
                if !forward(&tx, item, &mut stopping).await {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The method gate decided an export under the policy set in force at its start: under a new
/// one, a following export goes on only if the gate would allow it now (asked once per set).
fn still_allowed(gate: &Gate, peer: &crate::access::Peer, version: &mut u64) -> Result<(), crate::access::Denied> {
    let now = gate.engine.active().0;
    if now == *version {
        return Ok(());
    }
    *version = now;
    gate.decide(peer, EXPORT_METHOD, &Resource::Node, None)
}
