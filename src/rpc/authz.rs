//! The method gate: a tower layer in front of every service (health and reflection included)
//! that resolves the [`Peer`] and asks the policy engine `(principal, action = full method,
//! Node)` before any handler runs. Unknown methods have no action in the schema and are denied.
//! Handlers that touch a resource ask again with [`Gate::check`].

use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};
use tower::{Layer, Service};

use super::pb::common::v1::ErrorReason;
use super::peer::Peer;
use super::status::status;
use crate::identity::Principal;
use crate::policy::Resource;

pub use crate::access::Gate;

/// The gate's gRPC face: a denial as a status.
pub trait GateExt {
    /// Decides `action` on `resource` for `peer`, records the decision, and returns the
    /// denial status (`UNAUTHENTICATED` for anonymous, `PERMISSION_DENIED` otherwise, reason
    /// `POLICY_DENIED`) when it is not allowed.
    fn check(&self, peer: &Peer, action: &str, resource: &Resource) -> Result<(), Status>;

    /// [`GateExt::check`] with a Cedar context.
    fn check_with(
        &self,
        peer: &Peer,
        action: &str,
        resource: &Resource,
        context: Option<&serde_json::Value>,
    ) -> Result<(), Status>;
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
        self.decide(peer, action, resource, context).map_err(|denied| {
            let code = match peer.principal {
                Principal::Anonymous => Code::Unauthenticated,
                Principal::Device { .. } => Code::PermissionDenied,
            };
            status(code, ErrorReason::PolicyDenied, denied.message)
        })
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
            let info = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
            let certs = info.and_then(|i| i.peer_certs());
            let address = info.and_then(|i| i.get_ref().remote_addr());
            let peer = match gate.peers.resolve(certs.as_deref().map(|c| c.as_slice()), address).await {
                Ok(peer) => peer,
                Err(refused) => return Ok(Status::from(refused).into_http()),
            };
            let action = request.uri().path().trim_start_matches('/').to_owned();
            if let Err(denied) = gate.check(&peer, &action, &Resource::Node) {
                return Ok(denied.into_http());
            }
            request.extensions_mut().insert(peer);
            inner.call(request).await
        })
    }
}

/// The peer a handler runs for (put there by the gate).
pub fn peer_of<T>(request: &tonic::Request<T>) -> Result<Peer, Status> {
    request
        .extensions()
        .get::<Peer>()
        .cloned()
        .ok_or_else(|| super::status::internal("request reached a handler without passing the gate"))
}
