//! `palyra.policy.v1.PolicyService` over [`Policies`]: decisions on demand, the versioned policy
//! set, validation with line and column, rollback. Admin only at the method gate.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::authz::peer_of;
use crate::access::PeerResolver;
use crate::identity::{IdentityError, Principal};
use crate::policy::{Policies, Subject};
use crate::wire::convert::{AuthorizePrincipal, AuthorizeQuery, check_policy_text, policy_validation};
use crate::wire::pb::policy::v1::{self as pb, policy_service_server::PolicyService};

/// The policy service.
#[derive(Debug, Clone)]
pub struct PolicyApi {
    policies: Arc<Policies>,
    peers: PeerResolver,
}

impl PolicyApi {
    /// The service over `policies`, reading devices through `peers` (the registry, not its
    /// cache) for Authorize.
    pub fn new(policies: Arc<Policies>, peers: PeerResolver) -> Self {
        PolicyApi { policies, peers }
    }

    async fn policy_set(&self) -> Result<pb::PolicySet, Status> {
        Ok(self.policies.current().await?.into())
    }
}

#[tonic::async_trait]
impl PolicyService for PolicyApi {
    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let query = AuthorizeQuery::try_from(request.into_inner())?;
        let engine = self.policies.engine();
        let (action, resource, context) = (query.action.as_str(), &query.resource, query.context.as_ref());
        let decision = match query.principal {
            AuthorizePrincipal::Anonymous => engine.authorize(&Principal::Anonymous, &[], action, resource, context),
            AuthorizePrincipal::Device(id) => {
                let device = self.peers.registered(id).await?.ok_or(IdentityError::NotFound(id))?;
                engine.authorize_subject(&Subject::device(&device), action, resource, context)
            }
        };
        Ok(Response::new(Arc::unwrap_or_clone(decision).into()))
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
        let diagnostics = self.policies.validate(text).await?;
        Ok(Response::new(policy_validation(&diagnostics)))
    }

    async fn list_policy_versions(
        &self,
        _request: Request<pb::ListPolicyVersionsRequest>,
    ) -> Result<Response<pb::ListPolicyVersionsResponse>, Status> {
        let versions = self.policies.versions().await?;
        Ok(Response::new(pb::ListPolicyVersionsResponse {
            versions: versions.iter().map(Into::into).collect(),
        }))
    }

    async fn rollback_policy_set(
        &self,
        request: Request<pb::RollbackPolicySetRequest>,
    ) -> Result<Response<pb::RollbackPolicySetResponse>, Status> {
        let peer = peer_of(&request)?;
        let version = self.policies.rollback(request.get_ref().version, &peer.principal).await?;
        tracing::warn!(version = version.version, restored = request.get_ref().version, by = %peer.principal.label(), "policy set rolled back");
        Ok(Response::new(pb::RollbackPolicySetResponse { policy_set: Some(self.policy_set().await?) }))
    }
}
