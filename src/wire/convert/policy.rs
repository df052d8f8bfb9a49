//! `palyra.policy.v1`: Authorize's request (entity and action uids given as text, a JSON
//! context) and its decision, the policy set with its schema, versions and diagnostics.

use tonic::Status;

use super::timestamp;
use crate::identity::DeviceId;
use crate::policy::{
    AuthzDecision, Diagnostic, EntityRef, MAX_POLICY_TEXT_BYTES, PolicyVersion, Resource, SCHEMA_TEXT,
    Severity, StoredPolicySet, parse_action_ref, parse_entity_ref, parse_principal_ref,
};
use crate::wire::pb::policy::v1 as pb;
use crate::wire::status::invalid_argument;

/// Largest `context_json` accepted by Authorize.
const MAX_CONTEXT_BYTES: usize = 64 * 1024;
/// Longest action id accepted by Authorize when it is not a `Palyra::Action` uid.
const MAX_ACTION_BYTES: usize = 256;

/// Whom Authorize asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthorizePrincipal {
    /// `Palyra::Anonymous::"anonymous"`.
    Anonymous,
    /// `Palyra::Device::"<id>"`, registered or not (the caller looks it up).
    Device(DeviceId),
}

/// An Authorize request, parsed: who, what, on what, and in which context.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AuthorizeQuery {
    /// The principal.
    pub(crate) principal: AuthorizePrincipal,
    /// The action id (a known one when given as a `Palyra::Action` uid, else as sent).
    pub(crate) action: String,
    /// The resource.
    pub(crate) resource: Resource,
    /// The context, a JSON object, when one was sent.
    pub(crate) context: Option<serde_json::Value>,
}

impl TryFrom<pb::AuthorizeRequest> for AuthorizeQuery {
    type Error = Status;

    fn try_from(req: pb::AuthorizeRequest) -> Result<Self, Status> {
        let principal = parse_principal_ref(&req.principal).map_err(|e| invalid_argument("principal", e))?;
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
            parse_action_ref(&req.action).map_err(|e| invalid_argument("action", e))?.to_owned()
        } else if req.action.len() > MAX_ACTION_BYTES {
            return Err(invalid_argument("action", "longer than 256 bytes"));
        } else {
            req.action
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
        // Checked last, as the handler did: a malformed field elsewhere is reported first.
        let principal = match principal {
            EntityRef::Anonymous => AuthorizePrincipal::Anonymous,
            EntityRef::Device(id) => AuthorizePrincipal::Device(id),
            EntityRef::Node | EntityRef::Scope(_) | EntityRef::Profile(_) => {
                return Err(invalid_argument(
                    "principal",
                    "a principal is a Palyra::Device or Palyra::Anonymous",
                ));
            }
        };
        Ok(AuthorizeQuery { principal, action, resource, context })
    }
}

impl From<AuthzDecision> for pb::AuthorizeResponse {
    fn from(decision: AuthzDecision) -> Self {
        pb::AuthorizeResponse {
            decision: if decision.allow { pb::Decision::Allow } else { pb::Decision::Deny } as i32,
            determining_policies: decision.determining_policies,
            errors: decision.errors,
            explanation: decision.explanation,
        }
    }
}

/// UpdatePolicySet's and ValidatePolicySet's `policies`: bounded before anything parses it.
pub(crate) fn check_policy_text(text: &str) -> Result<(), Status> {
    if text.len() > MAX_POLICY_TEXT_BYTES {
        return Err(invalid_argument("policies", format!("larger than {MAX_POLICY_TEXT_BYTES} bytes")));
    }
    Ok(())
}

impl From<StoredPolicySet> for pb::PolicySet {
    fn from(current: StoredPolicySet) -> Self {
        pb::PolicySet {
            version: current.info.version,
            policies: current.text,
            schema: SCHEMA_TEXT.to_owned(),
            updated_at: Some(timestamp(current.info.updated_at)),
            updated_by: current.info.updated_by,
        }
    }
}

/// ValidatePolicySet's reply: valid unless a diagnostic is an error (warnings are listed too).
pub(crate) fn policy_validation(diagnostics: &[Diagnostic]) -> pb::ValidatePolicySetResponse {
    pb::ValidatePolicySetResponse {
        valid: !diagnostics.iter().any(|d| d.severity == Severity::Error),
        diagnostics: diagnostics.iter().map(Into::into).collect(),
    }
}

impl From<&Diagnostic> for pb::Diagnostic {
    fn from(d: &Diagnostic) -> Self {
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
}

impl From<&PolicyVersion> for pb::PolicyVersion {
    fn from(v: &PolicyVersion) -> Self {
        pb::PolicyVersion {
            version: v.version,
            updated_at: Some(timestamp(v.updated_at)),
            updated_by: v.updated_by.clone(),
        }
    }
}
