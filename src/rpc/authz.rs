//! The method gate: a tower layer in front of every service (health and reflection included)
//! that resolves the [`Peer`] and asks the policy engine `(principal, action = full method,
//! Node)` before any handler runs. Unknown methods have no action in the schema and are denied.
//! Handlers that touch a resource ask again with [`Gate::check`]. Response bodies of device peers
//! end when the device is revoked ([`super::streams`]).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use super::peer::{Peer, PeerResolver};
use super::status::policy_denied;
use super::streams;
use crate::audit::{AuditDecision, AuditEntry};
use crate::identity::Principal;
use crate::policy::{AuthzDecision, PolicyEngine, Resource, Subject};
use crate::storage::AuditLog;

/// What every authorization needs: the engine, the audit log and the peer resolver.
#[derive(Debug, Clone)]
pub struct Gate {
    /// The one policy engine.
    pub engine: Arc<PolicyEngine>,
    /// Where decisions are recorded.
    pub audit: AuditLog,
    /// Certificates → peers.
    pub peers: PeerResolver,
}

/// Health checks are not audited: load balancers poll them constantly.
fn audited(action: &str) -> bool {
    !action.starts_with("grpc.health.v1.")
}

impl Gate {
    /// Decides `action` on `resource` for `peer`, records the decision, and returns the
    /// denial status (`UNAUTHENTICATED` for anonymous, `PERMISSION_DENIED` otherwise, reason
    /// `POLICY_DENIED`) when it is not allowed.
    pub fn check(&self, peer: &Peer, action: &str, resource: &Resource) -> Result<(), Status> {
        self.check_with(peer, action, resource, None)
    }

    /// [`Gate::check`] with a Cedar context.
    pub fn check_with(
        &self,
        peer: &Peer,
        action: &str,
        resource: &Resource,
        context: Option<&serde_json::Value>,
    ) -> Result<(), Status> {
        let subject = match &peer.device {
            Some(device) => Subject::device(device),
            None => Subject::Anonymous,
        };
        let decision = self.engine.authorize_subject(&subject, action, resource, context);
        if audited(action) {
            self.audit.record(AuditEntry {
                at: SystemTime::now(),
                principal: peer.principal.label(),
                action: bounded(action),
                resource: resource.to_string(),
                decision: if decision.allow { AuditDecision::Allow } else { AuditDecision::Deny },
                reason: reason_text(&decision),
            });
        }
        if decision.allow {
            return Ok(());
        }
        let action = bounded(action);
        tracing::info!(principal = %peer.principal.label(), action, resource = %resource, explanation = %decision.explanation, "denied");
        Err(match peer.principal {
            Principal::Anonymous => {
                policy_denied(true, format!("{action} requires a paired device's client certificate"))
            }
            Principal::Device { .. } => policy_denied(
                false,
                format!("{} may not call {action} on {resource}", peer.principal.label()),
            ),
        })
    }

    /// Makes the audit records queued so far durable with the next write: a handler that
    /// changes state calls it after its checks, so the change's commit (`synchronous=FULL`)
    /// also makes its audit record durable, and no write survives without its record.
    pub async fn audit_before_write(&self) {
        self.audit.flush().await;
    }
}

/// Method names come from the request path: an unknown one is recorded and echoed at most
/// 200 bytes long.
fn bounded(action: &str) -> String {
    const MAX: usize = 200;
    if action.len() <= MAX {
        return action.to_owned();
    }
    let mut end = MAX;
    while !action.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &action[..end])
}

fn reason_text(decision: &AuthzDecision) -> String {
    if decision.determining_policies.is_empty() {
        decision.explanation.clone()
    } else {
        decision.determining_policies.join(",")
    }
}

/// The gate as a tower layer.
#[derive(Debug, Clone)]
pub struct GateLayer {
    gate: Gate,
}

impl GateLayer {
    /// A layer deciding with `gate`.
    pub fn new(gate: Gate) -> Self {
        GateLayer { gate }
    }
}

impl<S> Layer<S> for GateLayer {
    type Service = GateService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GateService { inner, gate: self.gate.clone() }
    }
}

/// The gate in front of a service.
#[derive(Debug, Clone)]
pub struct GateService<S> {
    inner: S,
    gate: Gate,
}

impl<S> Service<http::Request<Body>> for GateService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = crate::vault::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The ready clone is the one that was polled; keep a fresh clone for next time.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let gate = self.gate.clone();
        Box::pin(async move {
            // Before resolving, so a revocation racing the resolution is still seen.
            let revocations = gate.peers.subscribe();
            let info = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
            let certs = info.and_then(|i| i.peer_certs());
            let address = info.and_then(|i| i.get_ref().remote_addr());
            let peer = match gate.peers.resolve(certs.as_deref().map(|c| c.as_slice()), address).await {
                Ok(peer) => peer,
                Err(refused) => return Ok(refused.into_http()),
            };
            let action = request.uri().path().trim_start_matches('/').to_owned();
            if let Err(denied) = gate.check(&peer, &action, &Resource::Node) {
                return Ok(denied.into_http());
            }
            let device = peer.principal.device_id();
            if let Some(authority) = request.uri().authority().map(ToString::to_string) {
                request.extensions_mut().insert(RequestAuthority(authority));
            }
            request.extensions_mut().insert(peer);
            let response = inner.call(request).await?;
            Ok(match device {
                Some(id) => {
                    let revoked = streams::revocation_of(id, revocations, gate.peers.clone());
                    response.map(|body| Body::new(streams::RevocableBody::new(body, revoked)))
                }
                None => response,
            })
        })
    }
}

/// The `HOST:PORT` the client addressed (HTTP/2 `:authority`), put in request extensions by
/// the gate; pairing URIs use it as the node's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAuthority(pub String);

/// The peer a handler runs for (put there by the gate).
pub fn peer_of<T>(request: &tonic::Request<T>) -> Result<Peer, Status> {
    request
        .extensions()
        .get::<Peer>()
        .cloned()
        .ok_or_else(|| super::status::internal("request reached a handler without passing the gate"))
}
