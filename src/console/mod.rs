//! The operator web console: the only module that knows axum and HTML.
//!
//! `palyra serve` runs it on `--console-addr` (default `http://127.0.0.1:7445`, loopback only
//! unless `console.allow_remote`). An operator logs in with a one-time link from
//! `palyra console` (tokens and sessions: [`crate::login`]); the session cookie is HTTP-only,
//! SameSite=Strict and bound to the operator device, which is re-resolved through the
//! [`PeerResolver`](crate::access::PeerResolver) on every request (a revoked device loses its
//! session). Every page and action asks the one [`Gate`] with the action of the gRPC call it
//! stands for (`palyra.pairing.v1.PairingService/ApprovePairing`, …), named once in
//! [`ROUTES`] and asked by one layer before the handler runs, so it is decided and
//! audited exactly as that call; the operator's actions themselves are the node's services'
//! ([`crate::pairing::Pairing`], …), the same code the gRPC services run. Every POST needs the
//! session's CSRF token and a same-origin `Origin`; every request needs a `Host` naming the
//! console (DNS rebinding). Responses carry a strict Content-Security-Policy (no inline
//! script), `no-store` and `no-referrer`.
//!
//! Server-rendered pages ([`pages`]) plus one small script and stylesheet embedded in the
//! binary ([`assets`]); live updates are server-sent events from the event log.

mod assets;
mod html;
pub mod metrics;
mod pages;
mod routes;
mod server;

#[cfg_attr(not(feature = "testkit"), allow(unused_imports))]
pub use routes::{Access, ROUTES, Route, Verb};
#[cfg_attr(not(feature = "testkit"), allow(unused_imports))]
pub use server::{
    ConsoleLimits, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
};

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access::{DenialKind, Denied, Gate, Peer, Refusal};
use crate::identity::DeviceId;
use crate::login::{Logins, Session};
use crate::node::Node;
use crate::pairing::{CreatedCode, Pairing, ServiceError as PairingServiceError};
use crate::policy::Resource;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "palyra_session";
/// The form field (or `x-csrf-token` header) carrying the CSRF token.
#[cfg_attr(not(feature = "testkit"), allow(dead_code))]
pub const CSRF_FIELD: &str = "csrf";

/// The Content-Security-Policy of every response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// How the console is served.
#[derive(Debug, Clone)]
pub struct ConsoleOptions {
    /// Accept any `Host` (the operator allowed a non-loopback address); otherwise only the
    /// bound address and `localhost:<port>`.
    pub allow_remote: bool,
    /// The node's gRPC `HOST:PORT`, which pairing URIs name.
    pub grpc_server: String,
    /// Bounds on connections and on how long a request may take to arrive.
    pub limits: ConsoleLimits,
}

/// A pairing code this console made, kept (in memory, until it expires) so its page and QR
/// image can be shown again to the operator who made it.
#[derive(Debug, Clone)]
struct ShownCode {
    owner: DeviceId,
    code: CreatedCode,
}

#[derive(Debug, Clone)]
struct App {
    node: Node,
    /// The pairing flow: codes, requests, approval.
    pairing: Arc<Pairing>,
    /// Resource checks and audit of the pages.
    gate: Gate,
    logins: Logins,
    options: ConsoleOptions,
    /// `HOST:PORT` values accepted in `Host` (unless `allow_remote`).
    hosts: Arc<[String]>,
    codes: Arc<Mutex<HashMap<String, ShownCode>>>,
    /// Open event streams per operator device (at most [`MAX_EVENT_STREAMS_PER_OPERATOR`]).
    streams: Arc<Mutex<HashMap<DeviceId, usize>>>,
    /// Flips to true at shutdown: ends open event streams so the server can drain.
    stopping: watch::Receiver<bool>,
}

impl App {
    fn gate(&self) -> &Gate {
        &self.gate
    }

    fn codes(&self) -> std::sync::MutexGuard<'_, HashMap<String, ShownCode>> {
        // The map stays consistent whatever panicked while holding it.
        self.codes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Event streams one operator device may hold open at once (a page holds one; a browser
/// holds at most 6 connections per origin, so this is several browsers' worth).
pub const MAX_EVENT_STREAMS_PER_OPERATOR: usize = 16;
/// Pairing codes kept for showing again (the codes themselves live in the store either way).
const MAX_SHOWN_CODES: usize = 64;

/// An open event stream of `device`; dropping it gives the slot back.
#[derive(Debug)]
struct StreamSlot {
    streams: Arc<Mutex<HashMap<DeviceId, usize>>>,
    device: DeviceId,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = streams.get_mut(&self.device) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                streams.remove(&self.device);
            }
        }
    }
}

impl App {
    /// A slot for one more event stream of `device`, or `None` at the cap.
    fn stream_slot(&self, device: DeviceId) -> Option<StreamSlot> {
        let mut streams = self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = streams.entry(device).or_insert(0);
        if *n >= MAX_EVENT_STREAMS_PER_OPERATOR {
            return None;
        }
        *n += 1;
        Some(StreamSlot { streams: Arc::clone(&self.streams), device })
    }

    /// Keeps `code` for showing again: expired ones are dropped, and at the cap the one that
    /// expires first.
    fn keep_code(&self, id: String, shown: ShownCode) {
        let now = SystemTime::now();
        let mut codes = self.codes();
        codes.retain(|_, c| c.code.expires_at > now);
        while codes.len() >= MAX_SHOWN_CODES {
            let Some(first) = codes.iter().min_by_key(|(_, c)| c.code.expires_at).map(|(k, _)| k.clone())
            else {
                break;
            };
            codes.remove(&first);
        }
        codes.insert(id, shown);
    }
}

/// Why the console stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsoleError {
    /// The listener failed.
    #[error("console server: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves the console on `listener` until `shutdown` completes. Records its URL in
/// `node.logins` while it serves, so `CreateLoginToken` can hand out links.
pub async fn serve(
    node: &Node,
    listener: TcpListener,
    options: ConsoleOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ConsoleError> {
    let bound = listener.local_addr()?;
    let gate = node.gate.clone();
    let (stop_tx, stopping) = watch::channel(false);
    let mut hosts = vec![bound.to_string(), format!("localhost:{}", bound.port())];
    if bound.ip().is_unspecified() {
        hosts.push(format!("127.0.0.1:{}", bound.port()));
    }
    let app = App {
        node: node.clone(),
        pairing: Arc::clone(&node.pairing),
        gate,
        logins: node.logins.clone(),
        options,
        hosts: hosts.into(),
        codes: Arc::default(),
        streams: Arc::default(),
        stopping,
    };
    let url_host =
        if bound.ip().is_unspecified() { format!("127.0.0.1:{}", bound.port()) } else { bound.to_string() };
    node.logins.set_console_url(Some(format!("http://{url_host}")));
    let limits = app.options.limits;
    let router = router(app);
    let logins = node.logins.clone();
    let stop = stop_tx.subscribe();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    server::run(listener, router, limits, stop).await;
    logins.set_console_url(None);
    Ok(())
}

/// The router, built from [`ROUTES`]: each entry's handler on its method and path, every
/// request (the fallback's too) through the Host/Origin guard and then
/// [`routes::authorize`], which refuses whatever the table does not name.
fn router(app: App) -> Router {
    let mut router = Router::new();
    for route in ROUTES {
        router = router.route(route.path, route.method_router());
    }
    router
        .fallback(pages::not_found)
        .layer(middleware::from_fn_with_state(app.clone(), routes::authorize))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .layer(middleware::from_fn(security_headers))
        .with_state(app)
}

/// Headers on every response, errors included.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    headers.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    response
}

/// Host on every request (DNS rebinding); on every POST a same-origin `Origin` (or
/// `Origin: null` with `Sec-Fetch-Site: same-origin`), and `Sec-Fetch-Site` same-origin
/// whenever it is sent. The CSRF token is checked by [`Operator::check_csrf`].
async fn guard(State(app): State<App>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !app.options.allow_remote && !app.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return Failure::new(
            StatusCode::MISDIRECTED_REQUEST,
            "Unknown host",
            "This console answers only to its own address.",
        )
        .into_response();
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let origin = headers.get(header::ORIGIN).and_then(|h| h.to_str().ok()).unwrap_or("");
        let site = headers.get("sec-fetch-site").and_then(|h| h.to_str().ok());
        // Under `Referrer-Policy: no-referrer` browsers send `Origin: null` with a form POST;
        // then `Sec-Fetch-Site` (set by the browser, never by a page) must say same-origin.
        let same_origin = !host.is_empty()
            && (origin.eq_ignore_ascii_case(&format!("http://{host}"))
                || (origin == "null" && site == Some("same-origin")));
        if !same_origin || site.is_some_and(|s| s != "same-origin") {
            tracing::warn!(origin, host, "console: cross-origin request refused");
            return Failure::new(
                StatusCode::FORBIDDEN,
                "Cross-origin request refused",
                "The request did not come from this console's pages.",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// An error page (or fragment) with its status.
#[derive(Debug)]
pub(crate) struct Failure {
    status: StatusCode,
    title: &'static str,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, title: &'static str, message: impl Into<String>) -> Self {
        Failure { status, title, message: message.into() }
    }

    fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "console: internal error");
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal error",
            "Something failed on the node; its log has the details.",
        )
    }

    fn signed_out() -> Self {
        Failure::new(
            StatusCode::UNAUTHORIZED,
            "Not signed in",
            "Run `palyra console` on the node for a one-time login link.",
        )
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.status, html::page_plain(self.title, &self.message)).into_response()
    }
}

impl From<Denied> for Failure {
    fn from(denied: Denied) -> Self {
        match denied.kind {
            DenialKind::AuditUnavailable => {
                Failure::new(StatusCode::SERVICE_UNAVAILABLE, "Audit log unavailable", denied.message)
            }
            DenialKind::RateLimited => {
                Failure::new(StatusCode::TOO_MANY_REQUESTS, "Too many requests", denied.message)
            }
            _ => Failure::new(StatusCode::FORBIDDEN, "Denied by policy", denied.message),
        }
    }
}

impl From<PairingServiceError> for Failure {
    fn from(e: PairingServiceError) -> Self {
        use crate::pairing::PairingError;
        match e {
            PairingServiceError::Denied(denied) => denied.into(),
            e @ (PairingServiceError::Pairing(
                PairingError::RequestNotFound(_) | PairingError::EnrollmentKeyNotFound(_),
            )
            | PairingServiceError::Identity(crate::identity::IdentityError::NotFound(_))) => {
                Failure::new(StatusCode::NOT_FOUND, "Not found", e.to_string())
            }
            PairingServiceError::Pairing(
                e @ (PairingError::InvalidArgument { .. } | PairingError::RequestNotPending { .. }),
            ) => Failure::new(StatusCode::BAD_REQUEST, "Refused", e.to_string()),
            PairingServiceError::Identity(e @ crate::identity::IdentityError::AlreadyExists(_)) => {
                Failure::new(StatusCode::CONFLICT, "Refused", e.to_string())
            }
            other => Failure::internal(other),
        }
    }
}

impl From<crate::devices::RegistryError> for Failure {
    fn from(e: crate::devices::RegistryError) -> Self {
        use crate::devices::RegistryError;
        use crate::identity::IdentityError;
        match e {
            RegistryError::Denied { denied, .. } => denied.into(),
            e @ RegistryError::Identity(IdentityError::NotFound(_)) => {
                Failure::new(StatusCode::NOT_FOUND, "Not found", e.to_string())
            }
            e @ RegistryError::InvalidField { .. } => {
                Failure::new(StatusCode::BAD_REQUEST, "Refused", e.to_string())
            }
            e
            @ (RegistryError::SelfRevocation | RegistryError::Identity(IdentityError::AlreadyExists(_))) => {
                Failure::new(StatusCode::CONFLICT, "Refused", e.to_string())
            }
            other => Failure::internal(other),
        }
    }
}

impl From<crate::policy::PolicyError> for Failure {
    fn from(e: crate::policy::PolicyError) -> Self {
        use crate::policy::PolicyError;
        match e {
            e
            @ (PolicyError::Invalid { .. } | PolicyError::Lockout | PolicyError::VersionConflict { .. }) => {
                Failure::new(StatusCode::BAD_REQUEST, "Refused", e.to_string())
            }
            e @ PolicyError::NotFound(_) => Failure::new(StatusCode::NOT_FOUND, "Not found", e.to_string()),
            PolicyError::AuditUnavailable(e) => {
                Failure::new(StatusCode::SERVICE_UNAVAILABLE, "Audit log unavailable", e.0)
            }
            other => Failure::internal(other),
        }
    }
}

impl From<crate::vault::VaultError> for Failure {
    fn from(e: crate::vault::VaultError) -> Self {
        use crate::vault::VaultError;
        match e {
            e @ (VaultError::InvalidName(_) | VaultError::InvalidArgument(_)) => {
                Failure::new(StatusCode::BAD_REQUEST, "Refused", e.to_string())
            }
            e @ VaultError::NotFound { .. } => {
                Failure::new(StatusCode::NOT_FOUND, "Not found", e.to_string())
            }
            other => Failure::internal(other),
        }
    }
}

/// The signed-in operator of a request: its session and its peer (re-resolved from the
/// registry, so a revoked or deleted device is refused).
#[derive(Debug, Clone)]
struct Operator {
    session: Session,
    peer: Peer,
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl Operator {
    /// The operator of the request, or [`Failure::signed_out`].
    async fn of(app: &App, headers: &HeaderMap, address: SocketAddr) -> Result<Operator, Failure> {
        let Some(id) = cookie(headers, SESSION_COOKIE) else {
            return Err(Failure::signed_out());
        };
        let Some(session) = app.logins.session(id, SystemTime::now()) else {
            return Err(Failure::signed_out());
        };
        match app.gate().peers.resolve_device(session.device, Some(address)).await {
            Ok(peer) => Ok(Operator { session, peer }),
            Err(Refusal::Internal(detail)) => Err(Failure::internal(detail)),
            Err(refusal) => {
                tracing::warn!(device_id = %session.device, %refusal, "console: session of a revoked or unknown device ended");
                app.logins.end_sessions_of(session.device);
                Err(Failure::signed_out())
            }
        }
    }

    /// The method gate (asked only by [`routes::authorize`]): `action` on the node, recorded
    /// in the audit log.
    fn may(&self, app: &App, action: &str) -> Result<(), Failure> {
        self.may_on(app, action, &Resource::Node)
    }

    /// `action` on `resource`, recorded in the audit log.
    fn may_on(&self, app: &App, action: &str, resource: &Resource) -> Result<(), Failure> {
        Ok(app.gate().decide(&self.peer, action, resource, None)?)
    }

    /// Refuses a state change whose form lacks this session's CSRF token.
    fn check_csrf(&self, sent: Option<&str>) -> Result<(), Failure> {
        let expected = self.session.csrf.expose().as_bytes();
        match sent {
            Some(sent) if bool::from(sent.as_bytes().ct_eq(expected)) => Ok(()),
            _ => Err(Failure::new(
                StatusCode::FORBIDDEN,
                "Form expired",
                "The form's CSRF token is missing or wrong: reload the page and try again.",
            )),
        }
    }
}

/// A handler's operator, as [`routes::authorize`] found and authorized it; a handler of a
/// public route that asks for one gets an internal error (fail closed).
impl<S: Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Failure> {
        parts
            .extensions
            .get::<Operator>()
            .cloned()
            .ok_or_else(|| Failure::internal("a console handler ran without an authorized operator"))
    }
}
