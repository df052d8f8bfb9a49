//! TLS termination and the accept loop.
//!
//! tonic's own TLS config cannot take a custom client verifier, so TLS is terminated here with
//! tokio-rustls: client certificates are verified against the node CA but optional (anonymous
//! callers may pair), ALPN is h2, each handshake runs in its own task with a timeout, and only
//! finished handshakes reach tonic. tonic then exposes the verified chain to the gate.
//!
//! Every connection, from its accept through its handshake to its close, holds a permit of a
//! budget with a total and a per-address cap ([`GrpcLimits`]); one over the cap is closed at
//! once, before any TLS work. A connection without a client certificate is closed once it has
//! had no request in flight for the anonymous idle timeout ([`IdleLayer`] counts requests).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use crate::net_limits::{AddressBudget, AddressPermit, BudgetStats};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default connections at most (handshakes in progress included).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default connections of one address (IPv6: its /64) at most, handshakes included.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 128;
/// Default time an anonymous connection may stay with no request in flight.
pub const DEFAULT_ANONYMOUS_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default HTTP/2 keepalive: a ping after this long without frames from the peer...
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ...and the connection closed if its answer is not back within this.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The connection budgets and timeouts of the gRPC listener (`[grpc]` in `palyra.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcLimits {
    /// Connections at most, handshakes in progress included.
    pub max_connections: usize,
    /// Connections of one address (IPv6: its /64) at most, handshakes included.
    pub max_connections_per_address: usize,
    /// Time a client has to finish its TLS handshake.
    pub handshake_timeout: Duration,
    /// A connection without a client certificate is closed after this long with no request in
    /// flight.
    pub anonymous_idle_timeout: Duration,
    /// HTTP/2 keepalive ping interval.
    pub keepalive_interval: Duration,
    /// HTTP/2 keepalive ping answer timeout.
    pub keepalive_timeout: Duration,
}

impl Default for GrpcLimits {
    fn default() -> Self {
        GrpcLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            anonymous_idle_timeout: DEFAULT_ANONYMOUS_IDLE_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
        }
    }
}

/// What the listener holds: its connection budget (live; cheap to clone).
#[derive(Debug, Clone)]
pub struct GrpcLoad {
    connections: AddressBudget,
    idle_closed: Arc<AtomicUsize>,
}

/// A snapshot of [`GrpcLoad`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "testkit"), allow(dead_code))]
pub struct GrpcStats {
    /// Connections held (handshakes included) and refused.
    pub connections: BudgetStats,
    /// Anonymous connections closed for being idle.
    pub idle_closed: usize,
}

impl GrpcLoad {
    /// A budget for `limits`.
    pub fn new(limits: &GrpcLimits) -> Self {
        GrpcLoad {
            connections: AddressBudget::new(limits.max_connections, limits.max_connections_per_address),
            idle_closed: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// What it holds now and has refused since it started.
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
    pub fn stats(&self) -> GrpcStats {
        GrpcStats {
            connections: self.connections.stats(),
            idle_closed: self.idle_closed.load(Ordering::Relaxed),
        }
    }
}

/// Requests in flight on one anonymous connection, and when the last one ended.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    last_ended: Mutex<Instant>,
}

/// The anonymous connections being watched for idleness, by remote address (unique per TCP
/// connection to one listener).
#[derive(Debug, Clone, Default)]
pub struct IdleTable(Arc<Mutex<HashMap<SocketAddr, Arc<Activity>>>>);

impl IdleTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Activity>>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The watch of one anonymous connection.
#[derive(Debug)]
struct IdleWatch {
    activity: Arc<Activity>,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    table: IdleTable,
    remote: SocketAddr,
    closed: Arc<AtomicUsize>,
}

impl IdleWatch {
    /// Whether the connection has been idle for the whole timeout (registers the timer's
    /// wake-up otherwise).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.sleep.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let next = if self.activity.in_flight.load(Ordering::Acquire) > 0 {
                now + self.timeout
            } else {
                let last =
                    *self.activity.last_ended.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let due = last + self.timeout;
                if due <= now {
                    return true;
                }
                due
            };
            self.sleep.as_mut().reset(next);
        }
        false
    }
}

impl Drop for IdleWatch {
    fn drop(&mut self) {
        self.table.lock().remove(&self.remote);
    }
}

/// A served connection: the TLS stream, its budget permit (given back when it closes) and, for
/// an anonymous one, its idle watch.
#[derive(Debug)]
pub struct GuardedStream {
    inner: TlsStream<TcpStream>,
    idle: Option<IdleWatch>,
    _permit: AddressPermit,
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(idle) = this.idle.as_mut()
            && idle.expired(cx)
        {
            idle.closed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(remote = %idle.remote, "closing an idle anonymous connection");
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "idle anonymous connection",
            )));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for GuardedStream {
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Counts the requests in flight on each anonymous connection (from its headers to the end of
/// its response body), for the idle timeout.
#[derive(Debug, Clone)]
pub struct IdleLayer {
    table: IdleTable,
}

impl IdleLayer {
    /// Counting for the connections of `table`.
    pub fn new(table: IdleTable) -> Self {
        IdleLayer { table }
    }
}

impl<S> tower::Layer<S> for IdleLayer {
    type Service = IdleService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        IdleService { inner, table: self.table.clone() }
    }
}

/// See [`IdleLayer`].
#[derive(Debug, Clone)]
pub struct IdleService<S> {
    inner: S,
    table: IdleTable,
}

/// One request in flight; the end of its response (or its drop) marks the connection active.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last_ended.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that holds its request's [`InFlight`] until it ends or is dropped.
struct TrackedBody {
    inner: tonic::body::Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

type Request = tonic::codegen::http::Request<tonic::body::Body>;
type Response = tonic::codegen::http::Response<tonic::body::Body>;

impl<S> tower::Service<Request> for IdleService<S>
where
    S: tower::Service<Request, Response = Response>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = crate::store_error::BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let remote = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.get_ref().remote_addr());
        let activity = remote.and_then(|remote| self.table.lock().get(&remote).cloned());
        let in_flight = activity.map(InFlight::start);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(match in_flight {
                Some(in_flight) => {
                    response.map(|inner| tonic::body::Body::new(TrackedBody { inner, _in_flight: in_flight }))
                }
                None => response,
            })
        })
    }
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("tls setup: {0}")]
pub struct TlsSetupError(String);

/// The server certificate in force, swappable while serving: a renewed certificate is used by
/// the next handshake, without a restart and without touching established connections.
#[derive(Debug)]
pub struct ServerCertificate {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCertificate {
    /// Starts with `chain` and `key`.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<Self>, TlsSetupError> {
        Ok(Arc::new(ServerCertificate { current: RwLock::new(certified(chain, key)?) }))
    }

    /// Serves `chain` and `key` from the next handshake on.
    pub fn replace(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), TlsSetupError> {
        let next = certified(chain, key)?;
        let mut current =
            self.current.write().map_err(|_| TlsSetupError("certificate lock poisoned".into()))?;
        *current = next;
        Ok(())
    }

    /// The DER of the leaf in force.
    pub fn leaf_der(&self) -> Vec<u8> {
        self.current.read().ok().and_then(|c| c.cert.first().map(|c| c.as_ref().to_vec())).unwrap_or_default()
    }
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, TlsSetupError> {
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| TlsSetupError(format!("server key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

impl ResolvesServerCert for ServerCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| Arc::clone(&c))
    }
}

/// The server's rustls config: our certificate, client certificates optional but verified
/// against `ca`, TLS 1.2/1.3 with ring's safe defaults, ALPN h2.
pub fn server_tls_config(
    certificate: Arc<ServerCertificate>,
    ca: CertificateDer<'static>,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(ca).map_err(|e| TlsSetupError(format!("node CA: {e}")))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsSetupError(format!("client verifier: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TCP connections on `listener`, completes TLS handshakes in their own tasks, and
/// yields the finished streams. A connection over its address's share or the total is closed at
/// once (no TLS work); failed or slow handshakes are logged and dropped, never yielded as errors
/// (an error would stop tonic's server). Anonymous connections are entered in `idle`.
pub fn tls_incoming(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    limits: &GrpcLimits,
    load: GrpcLoad,
    idle: IdleTable,
) -> tokio_stream::wrappers::ReceiverStream<Result<GuardedStream, std::io::Error>> {
    let (tx, rx) = mpsc::channel(256);
    let acceptor = TlsAcceptor::from(tls);
    let (handshake_timeout, idle_timeout) = (limits.handshake_timeout, limits.anonymous_idle_timeout);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                // tonic dropped the stream: the server is shutting down.
                () = tx.closed() => break,
            };
            let permit = match load.connections.try_acquire(remote.ip()) {
                Ok(permit) => permit,
                Err(full) => {
                    tracing::debug!(%remote, ?full, "grpc connection refused: connection limit");
                    drop(tcp);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, idle, closed) =
                (acceptor.clone(), tx.clone(), idle.clone(), Arc::clone(&load.idle_closed));
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let anonymous = stream.get_ref().1.peer_certificates().is_none_or(<[_]>::is_empty);
                        let watch = anonymous.then(|| {
                            let activity = Arc::new(Activity {
                                in_flight: AtomicUsize::new(0),
                                last_ended: Mutex::new(Instant::now()),
                            });
                            idle.lock().insert(remote, Arc::clone(&activity));
                            IdleWatch {
                                activity,
                                timeout: idle_timeout,
                                sleep: Box::pin(tokio::time::sleep(idle_timeout)),
                                table: idle,
                                remote,
                                closed,
                            }
                        });
                        let _ =
                            tx.send(Ok(GuardedStream { inner: stream, idle: watch, _permit: permit })).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "tls handshake failed"),
                    Err(_) => tracing::debug!(%remote, "tls handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{DeviceCa, DeviceId};
    use rustls::pki_types::ServerName;
    use std::time::SystemTime;

    /// The leaf a client sees when it connects to `addr`.
    async fn served_leaf(addr: std::net::SocketAddr, ca: &CertificateDer<'static>) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).expect("ca");
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let tls = connector.connect(name, tcp).await.expect("handshake");
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .expect("leaf")
    }

    #[tokio::test]
    async fn a_replaced_certificate_is_served_from_the_next_handshake() {
        let now = SystemTime::now();
        let ca = DeviceCa::create(DeviceId::generate(), now).expect("ca");
        let first = ca.issue_server_certificate(&[], now).expect("first");
        let second = ca.issue_server_certificate(&["renewed.example".into()], now).expect("second");
        let certificate =
            ServerCertificate::new(vec![first.cert_der.clone()], first.private_key_der().expect("key"))
                .expect("cert");
        let tls = server_tls_config(Arc::clone(&certificate), ca.certificate_der().clone()).expect("tls");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let limits = GrpcLimits::default();
        let _incoming = tls_incoming(listener, tls, &limits, GrpcLoad::new(&limits), IdleTable::default());

        assert_eq!(served_leaf(addr, ca.certificate_der()).await, first.cert_der.as_ref());
        certificate
            .replace(vec![second.cert_der.clone()], second.private_key_der().expect("key"))
            .expect("replace");
        assert_eq!(served_leaf(addr, ca.certificate_der()).await, second.cert_der.as_ref());
        assert_eq!(certificate.leaf_der(), second.cert_der.as_ref());
    }
}
