//! `palyra.policy.v1.PolicyService` over [`Policies`]: decisions on demand, the versioned policy
//! set, validation with line and column, rollback. Admin only at the method gate.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::authz::peer_of;
use super::convert::timestamp;
use super::pb::policy::v1::{self as pb, policy_service_server::PolicyService};
use super::status::{internal, invalid_argument};
use crate::identity::{IdentityError, Principal};
use crate::policy::{
    Diagnostic, EntityRef, MAX_POLICY_TEXT_BYTES, Policies, PolicyVersion, Resource, SCHEMA_TEXT, Severity,
    Subject, parse_action_ref, parse_entity_ref,
};
use crate::storage::{AuditLog, Store};

/// Largest `context_json` accepted by Authorize.
const MAX_CONTEXT_BYTES: usize = 64 * 1024;

fn diagnostic_to_pb(d: &Diagnostic) -> pb::Diagnostic {
    pb::Diagnostic {
        severity: match d.severity {
            Severity::Error => pb::DiagnosticSeverity::Error,
            Severity::Warning => pb::DiagnosticSeverity::Warning,
        } as i32,
        message: d.message.clone(),
        policy_id: d.policy_id.clone().unwrap_or_default(),
        line: d.line,
        column: d.column,
    }
}

fn version_to_pb(v: &PolicyVersion) -> pb::PolicyVersion {
    pb::PolicyVersion {
        version: v.version,
        updated_at: Some(timestamp(v.updated_at)),
        updated_by: v.updated_by.clone(),
    }
}

/// The policy service.
#[derive(Debug, Clone)]
pub struct PolicyApi {
    policies: Arc<Policies>,
    store: Store,
    audit: AuditLog,
}

impl PolicyApi {
    /// The service over `policies`, reading devices from `store` for Authorize; changes make
    /// the queued `audit` records durable first.
    pub fn new(policies: Arc<Policies>, store: Store, audit: AuditLog) -> Self {
        PolicyApi { policies, store, audit }
    }

    async fn policy_set(&self) -> Result<pb::PolicySet, Status> {
        let current = self.policies.current().await?;
        Ok(pb::PolicySet {
            version: current.info.version,
            policies: current.text,
            schema: SCHEMA_TEXT.to_owned(),
            updated_at: Some(timestamp(current.info.updated_at)),
            updated_by: current.info.updated_by,
        })
    }
}

fn check_policy_text(text: &str) -> Result<(), Status> {
    if text.len() > MAX_POLICY_TEXT_BYTES {
        return Err(invalid_argument("policies", format!("larger than {MAX_POLICY_TEXT_BYTES} bytes")));
    }
    Ok(())
}

#[tonic::async_trait]
impl PolicyService for PolicyApi {
    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let req = request.into_inner();
        let principal = parse_entity_ref(&req.principal).map_err(|e| invalid_argument("principal", e))?;
        let resource = match parse_entity_ref(&req.resource).map_err(|e| invalid_argument("resource", e))? {
            EntityRef::Node => Resource::Node,
            EntityRef::Scope(scope) => Resource::Scope(scope),
            EntityRef::Device(id) => Resource::Device(id),
            EntityRef::Profile(name) => Resource::Profile(name),
            EntityRef::Anonymous => {
                return Err(invalid_argument("resource", "the anonymous principal is not a resource"));
            }
        };
        let action = if req.action.starts_with("Palyra::Action::") {
            parse_action_ref(&req.action).map_err(|e| invalid_argument("action", e))?
        } else if req.action.len() > 256 {
            return Err(invalid_argument("action", "longer than 256 bytes"));
        } else {
            req.action.as_str()
        };
        let context = if req.context_json.is_empty() {
            None
        } else if req.context_json.len() > MAX_CONTEXT_BYTES {
            return Err(invalid_argument("context_json", format!("larger than {MAX_CONTEXT_BYTES} bytes")));
        } else {
            let value: serde_json::Value =
                serde_json::from_str(&req.context_json).map_err(|e| invalid_argument("context_json", e))?;
            if !value.is_object() {
                return Err(invalid_argument("context_json", "must be a JSON object"));
            }
            Some(value)
        };
        let engine = self.policies.engine();
        let decision = match principal {
            EntityRef::Anonymous => {
                engine.authorize(&Principal::Anonymous, &[], action, &resource, context.as_ref())
            }
            EntityRef::Device(id) => {
                let device = self.store.device(id).await?.ok_or(IdentityError::NotFound(id))?;
                engine.authorize_subject(&Subject::device(&device), action, &resource, context.as_ref())
            }
            EntityRef::Node | EntityRef::Scope(_) | EntityRef::Profile(_) => {
                return Err(invalid_argument(
                    "principal",
                    "a principal is a Palyra::Device or Palyra::Anonymous",
                ));
            }
        };
        Ok(Response::new(pb::AuthorizeResponse {
            decision: if decision.allow { pb::Decision::Allow } else { pb::Decision::Deny } as i32,
            determining_policies: decision.determining_policies,
            errors: decision.errors,
            explanation: decision.explanation,
        }))
    }

    async fn get_policy_set(
        &self,
        _request: Request<pb::GetPolicySetRequest>,
    ) -> Result<Response<pb::GetPolicySetResponse>, Status> {
        Ok(Response::new(pb::GetPolicySetResponse { policy_set: Some(self.policy_set().await?) }))
    }

    async fn update_policy_set(
        &self,
        request: Request<pb::UpdatePolicySetRequest>,
    ) -> Result<Response<pb::UpdatePolicySetResponse>, Status> {
        let peer = peer_of(&request)?;
        let req = request.into_inner();
        check_policy_text(&req.policies)?;
        self.audit.flush().await?;
        let version = self.policies.update(&req.policies, req.expected_version, &peer.principal).await?;
        tracing::warn!(version = version.version, by = %peer.principal.label(), "policy set updated");
        Ok(Response::new(pb::UpdatePolicySetResponse { policy_set: Some(self.policy_set().await?) }))
    }

    async fn validate_policy_set(
        &self,
        request: Request<pb::ValidatePolicySetRequest>,
    ) -> Result<Response<pb::ValidatePolicySetResponse>, Status> {
        let text = request.into_inner().policies;
        check_policy_text(&text)?;
        // Compiling policies takes milliseconds on a thread of its own: keep it off the async
        // workers.
        let engine = Arc::clone(self.policies.engine());
        let diagnostics =
            tokio::task::spawn_blocking(move || engine.validate(&text)).await.map_err(internal)?;
        let valid = !diagnostics.iter().any(|d| d.severity == Severity::Error);
        Ok(Response::new(pb::ValidatePolicySetResponse {
            valid,
            diagnostics: diagnostics.iter().map(diagnostic_to_pb).collect(),
        }))
    }

    async fn list_policy_versions(
        &self,
        _request: Request<pb::ListPolicyVersionsRequest>,
    ) -> Result<Response<pb::ListPolicyVersionsResponse>, Status> {
        let versions = self.policies.versions().await?;
        Ok(Response::new(pb::ListPolicyVersionsResponse {
            versions: versions.iter().map(version_to_pb).collect(),
        }))
    }

    async fn rollback_policy_set(
        &self,
        request: Request<pb::RollbackPolicySetRequest>,
    ) -> Result<Response<pb::RollbackPolicySetResponse>, Status> {
        let peer = peer_of(&request)?;
        self.audit.flush().await?;
        let version = self.policies.rollback(request.get_ref().version, &peer.principal).await?;
        tracing::warn!(version = version.version, restored = request.get_ref().version, by = %peer.principal.label(), "policy set rolled back");
        Ok(Response::new(pb::RollbackPolicySetResponse { policy_set: Some(self.policy_set().await?) }))
    }
}
