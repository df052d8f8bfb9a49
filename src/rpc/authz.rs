//! The method gate: a tower layer in front of every service (health and reflection included)
//! that resolves the [`Peer`] and asks the policy engine `(principal, action = full method,
//! Node)` before any handler runs. Unknown methods have no action in the schema and are denied.
//! Handlers that touch a resource ask again with [`Gate::check`].

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use super::framing::FramedRequest;
use super::peer::Peer;
use super::streams;
use crate::identity::Principal;
use crate::policy::Resource;
use crate::wire::status::denied;

pub use crate::access::{Gate, HeldAllow};

/// The gate's gRPC face: a denial as a status.
pub trait GateExt {
    /// Decides `action` on `resource` for `peer`, records the decision, and returns the
    /// denial status (`UNAUTHENTICATED` for anonymous, `PERMISSION_DENIED` otherwise, reason
    /// `POLICY_DENIED`) when it is not allowed; `UNAVAILABLE` when the audit log cannot record
    /// it, `RESOURCE_EXHAUSTED` for an anonymous address over its audit rate.
    fn check(&self, peer: &Peer, action: &str, resource: &Resource) -> Result<(), Status>;

    /// [`GateExt::check`] with a Cedar context.
    fn check_with(
        &self,
        peer: &Peer,
        action: &str,
        resource: &Resource,
        context: Option<&serde_json::Value>,
    ) -> Result<(), Status>;

    /// Flushes the audit queue before a write (so the write's commit makes its decision's
    /// record durable); `UNAVAILABLE` when the audit log cannot record.
    fn before_write(&self) -> impl std::future::Future<Output = Result<(), Status>> + Send;
}

impl GateExt for Gate {
    fn check(&self, peer: &Peer, action: &str, resource: &Resource) -> Result<(), Status> {
        self.check_with(peer, action, resource, None)
    }

    fn check_with(
        &self,
        peer: &Peer,
        action: &str,
        resource: &Resource,
        context: Option<&serde_json::Value>,
    ) -> Result<(), Status> {
        self.decide(peer, action, resource, context)
            .map_err(|d| denied(matches!(peer.principal, Principal::Anonymous), d))
    }

    async fn before_write(&self) -> Result<(), Status> {
        self.audit_before_write().await.map_err(|d| denied(false, d))
    }
}

/// The gate as a tower layer.
#[derive(Debug, Clone)]
pub struct GateLayer {
    gate: Arc<Gate>,
    limits: super::MessageLimits,
}

impl GateLayer {
    /// A layer deciding with `gate`; request bodies that pass are framed by `limits`.
    pub fn new(gate: Gate, limits: super::MessageLimits) -> Self {
        GateLayer { gate: Arc::new(gate), limits }
    }
}

impl<S> Layer<S> for GateLayer {
    type Service = GateService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GateService { inner, gate: Arc::clone(&self.gate), limits: self.limits }
    }
}

/// The gate in front of a service.
#[derive(Debug, Clone)]
pub struct GateService<S> {
    inner: S,
    /// Shared, so a request clones one pointer, not the gate's every handle.
    gate: Arc<Gate>,
    limits: super::MessageLimits,
}

impl<S> Service<http::Request<Body>> for GateService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = crate::store_error::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The ready clone is the one that was polled; keep a fresh clone for next time.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let gate = Arc::clone(&self.gate);
        let framing = self.limits.framing(request.uri().path());
        Box::pin(async move {
            // Counted per known method and status code (metrics off: a no-op).
            let timer = gate.metrics.rpc_started(request.uri().path());
            let response = async {
                let info = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
                let certs = info.and_then(|i| i.peer_certs());
                let address = info.and_then(|i| i.get_ref().remote_addr());
                // Before resolving, so a revocation racing the resolution is still seen.
                let epoch = gate.peers.revocation_epoch();
                let peer = match gate.peers.resolve(certs.as_deref().map(|c| c.as_slice()), address).await {
                    Ok(peer) => peer,
                    Err(refused) => return Ok(Status::from(refused).into_http()),
                };
                let action = request.uri().path().trim_start_matches('/');
                // A method whose handler decides its resource first thing: an allow is held and
                // recorded with that decision, as one record (`HeldAllow`).
                let held = if let Some(&held_action) = super::vault::HOLDS_METHOD_ALLOW.iter().find(|&&a| a == action) {
                    match gate.decide_method_held(&peer, held_action) {
                        Ok(held) => held,
                        Err(d) => return Ok(denied(matches!(peer.principal, Principal::Anonymous), d).into_http()),
                    }
                } else if let Err(denied) = gate.check(&peer, action, &Resource::Node) {
                    return Ok(denied.into_http());
                } else {
                    None
                };
                if let Some(entry) = held {
                    request.extensions_mut().insert(HeldAllow::new(entry));
                }
                let device = peer.principal.device_id();
                // A reference-counted view of the request's bytes: no copy per call.
                if let Some(authority) = request.uri().authority().cloned() {
                    request.extensions_mut().insert(RequestAuthority(authority));
                }
                request.extensions_mut().insert(peer);
                // Only requests the gate let through are read, and their framing is checked as
                // they are (a bad prefix never reaches tonic's decoder).
                let request = request.map(|body| Body::new(FramedRequest::new(body, framing)));
                let response = inner.call(request).await?;
                // A device's response stream ends within a second of its revocation.
                Ok(match device {
                    Some(id) => response
                        .map(|body| Body::new(streams::RevocableBody::of_device(body, id, epoch, Arc::clone(&gate)))),
                    None => response,
                })
            }
            .await;
            timer.finish(match &response {
                Ok(response) => grpc_code(response),
                Err(_) => tonic::Code::Unknown as i32,
            });
            response
        })
    }
}

/// A response's gRPC status code as far as its headers tell: an error answered at once carries
/// `grpc-status` in its headers; a response without one goes on to send its messages (its
/// trailers say OK, or a streaming call's later error).
fn grpc_code(response: &http::Response<Body>) -> i32 {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(tonic::Code::Ok as i32)
}

/// The `HOST:PORT` the client addressed (HTTP/2 `:authority`), put in request extensions by
/// the gate; pairing URIs use it as the node's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAuthority(pub http::uri::Authority);

/// The peer a handler runs for (put there by the gate).
pub fn peer_of<T>(request: &tonic::Request<T>) -> Result<Peer, Status> {
    request
        .extensions()
        .get::<Peer>()
        .cloned()
        .ok_or_else(|| crate::wire::status::internal("request reached a handler without passing the gate"))
}
