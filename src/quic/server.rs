//! The QUIC endpoint: TLS with a required client certificate, address validation (Retry),
//! a budget for handshakes in progress apart from the connection slots (both total and per
//! address), one task per connection and per stream, and revocation that cuts connections off.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream, VarInt};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::broadcast;
use tokio_util::codec::FramedRead;

use super::frame::{self, FrameError};
use super::{
    ALPN, AddressValidation, CLOSE_CONNECTION_LIMIT, CLOSE_DEVICE_REVOKED, CLOSE_INTERNAL, CLOSE_SHUTDOWN,
    CLOSE_UNKNOWN_DEVICE, METHOD_AUDIT_CHECKPOINT, METHOD_HEALTH, METHOD_STREAM_EVENTS, QuicConfig, codes,
    event_to_pb, pb,
};
use crate::access::{Gate, Peer, Refusal};
use crate::events::{DEVICE_REVOKED, EventLog};
use crate::identity::{DeviceId, DeviceStatus, Principal};
use crate::net_limits::{AddressBudget, AddressPermit, BudgetStats, Full};
use crate::node::Node;
use crate::policy::Resource;
use crate::wire::quic::{error_frame, events_failed, events_refused};

/// Connection attempts quinn holds before the accept loop sees them (each is handled at once:
/// a Retry, a refusal or a handshake task), and the bytes it buffers for them.
const MAX_INCOMING: usize = 4096;
const INCOMING_BUFFER: u64 = 64 * 1024;
const INCOMING_BUFFER_TOTAL: u64 = 8 * 1024 * 1024;
/// Time a client has to send its request frame on a new stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest method name recorded or echoed.
const MAX_METHOD_CHARS: usize = 64;
/// Bytes of event frames gathered before a write.
const WRITE_BATCH: usize = 64 * 1024;

/// Why the QUIC endpoint could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuicError {
    /// TLS could not be configured.
    #[error("quic tls setup: {0}")]
    Tls(String),
    /// The server key could not be read.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}/udp: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        error: String,
    },
}

/// What connection and stream tasks share.
#[derive(Debug)]
struct Shared {
    gate: Gate,
    events: EventLog,
    audit: crate::audit::Audit,
    node_id: String,
    started: Instant,
    config: QuicConfig,
    load: QuicLoad,
    /// Open connections by device, for revocation.
    connections: Mutex<HashMap<DeviceId, HashMap<usize, Connection>>>,
}

/// The endpoint's budgets: handshakes in progress and established connections, each total
/// and per address, and the Retries sent. Cheap to clone; for logs, tests and benches.
#[derive(Debug, Clone)]
pub struct QuicLoad {
    handshakes: AddressBudget,
    connections: AddressBudget,
    retries: Arc<AtomicU64>,
}

/// A snapshot of [`QuicLoad`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "testkit"), allow(dead_code))]
pub struct QuicStats {
    /// Handshakes in progress, and those refused for want of budget.
    pub handshakes: BudgetStats,
    /// Established connections, and those closed with `connection limit`.
    pub connections: BudgetStats,
    /// Retry packets sent (address validation).
    pub retries: u64,
}

impl QuicLoad {
    /// What the endpoint holds now and has refused since it started.
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
    pub fn stats(&self) -> QuicStats {
        QuicStats {
            handshakes: self.handshakes.stats(),
            connections: self.connections.stats(),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}

/// A bound QUIC endpoint, not yet serving.
#[derive(Debug)]
pub struct QuicServer {
    endpoint: Endpoint,
    shared: Arc<Shared>,
}

/// Binds and serves until `shutdown` completes.
#[cfg_attr(not(feature = "testkit"), allow(dead_code))]
pub async fn serve(
    node: &Node,
    config: QuicConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), QuicError> {
    QuicServer::bind(node, config)?.run(shutdown).await;
    Ok(())
}

/// rustls for the data plane: TLS 1.3 only (QUIC), the node's server certificate, a client
/// certificate **required** and verified against the node CA, no 0-RTT, ALPN `palyra-node/1`.
fn tls_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca: CertificateDer<'static>,
) -> Result<quinn::crypto::rustls::QuicServerConfig, QuicError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(ca).map_err(|e| QuicError::Tls(format!("node CA: {e}")))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
        .build()
        .map_err(|e| QuicError::Tls(format!("client verifier: {e}")))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| QuicError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| QuicError::Tls(format!("server certificate: {e}")))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| QuicError::Tls(e.to_string()))
}

pub(super) fn transport(config: &QuicConfig) -> Result<quinn::TransportConfig, QuicError> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(config.max_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(config.idle_timeout).map_err(|e| QuicError::Tls(e.to_string()))?,
        ))
        .keep_alive_interval(Some(config.keep_alive));
    Ok(transport)
}

impl QuicServer {
    /// Binds `config.addr` with the node's certificate. Must run inside a tokio runtime.
    pub fn bind(node: &Node, config: QuicConfig) -> Result<Self, QuicError> {
        let crypto = tls_config(
            node.identity.server_cert_chain(),
            node.identity.server_private_key()?,
            node.identity.ca().certificate_der().clone(),
        )?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server
            .transport_config(Arc::new(transport(&config)?))
            .max_incoming(MAX_INCOMING)
            .incoming_buffer_size(INCOMING_BUFFER)
            .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
        let endpoint = Endpoint::server(server, config.addr)
            .map_err(|e| QuicError::Bind { addr: config.addr, error: e.to_string() })?;
        let shared = Arc::new(Shared {
            gate: node.gate.clone(),
            events: node.events.clone(),
            audit: node.audit.clone(),
            node_id: node.identity.id().to_string(),
            started: Instant::now(),
            load: QuicLoad {
                handshakes: AddressBudget::new(config.max_handshakes, config.max_handshakes_per_address),
                connections: AddressBudget::new(config.max_connections, config.max_connections_per_address),
                retries: Arc::new(AtomicU64::new(0)),
            },
            config,
            connections: Mutex::new(HashMap::new()),
        });
        Ok(QuicServer { endpoint, shared })
    }

    /// Its budgets (live: keep the handle to watch them while it serves).
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
    pub fn load(&self) -> QuicLoad {
        self.shared.load.clone()
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, std::io::Error> {
        self.endpoint.local_addr()
    }

    /// Serves until `shutdown` completes, then closes every connection and waits (briefly) for
    /// the peers to acknowledge.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        // Subscribed here, before any connection is accepted, so no revocation falls between.
        let live = self.shared.events.live();
        let watcher = tokio::spawn(watch_revocations(Arc::clone(&self.shared), live));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    self.admit(incoming);
                }
                () = &mut shutdown => break,
            }
        }
        watcher.abort();
        self.endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        tracing::info!("quic endpoint stopped");
    }

    /// Sends a Retry to an address not yet validated (when validation applies), then takes a
    /// handshake permit: no task and no handshake state for an attempt beyond its address's
    /// share or the total, which is refused at once. Connection slots come after the handshake.
    fn admit(&self, incoming: Incoming) {
        let shared = &self.shared;
        let remote = incoming.remote_address();
        let incoming = if incoming.remote_address_validated() {
            incoming
        } else {
            let validate = match shared.config.address_validation {
                AddressValidation::Always => true,
                AddressValidation::UnderLoad => {
                    shared.load.handshakes.stats().held.saturating_mul(2) >= shared.config.max_handshakes
                }
            };
            if !validate {
                incoming
            } else {
                match incoming.retry() {
                    Ok(()) => {
                        shared.load.retries.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    // Unvalidated yet not retryable cannot happen (quinn guarantees it); refuse.
                    Err(e) => return e.into_incoming().refuse(),
                }
            }
        };
        match shared.load.handshakes.try_acquire(remote.ip()) {
            Ok(permit) => {
                tokio::spawn(connection(Arc::clone(shared), incoming, permit));
            }
            Err(full) => {
                let budget = match full {
                    Full::PerAddress => "handshakes per address",
                    Full::Total => "handshakes",
                };
                tracing::debug!(%remote, budget, "quic connection refused: handshake budget spent");
                incoming.refuse();
            }
        }
    }
}

/// The handshake, then the registry: who the peer is, or `None` (closed with the reason).
async fn establish(shared: &Shared, incoming: Incoming) -> Option<(Connection, Peer)> {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "quic accept failed");
            return None;
        }
    };
    let conn = match connecting.await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "quic handshake failed");
            return None;
        }
    };
    let certs = conn.peer_identity().and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok());
    match shared.gate.peers.resolve(certs.as_deref().map(Vec::as_slice), Some(remote)).await {
        Ok(peer) => Some((conn, peer)),
        Err(refusal) => {
            let (code, reason): (u32, &[u8]) = match refusal {
                Refusal::Revoked(_) => (CLOSE_DEVICE_REVOKED, b"device revoked"),
                Refusal::UnknownDevice(_) => (CLOSE_UNKNOWN_DEVICE, b"unknown device"),
                Refusal::Internal(ref detail) => {
                    tracing::error!(error = %detail, "cannot resolve a quic peer");
                    (CLOSE_INTERNAL, b"internal error")
                }
            };
            tracing::info!(%remote, %refusal, "quic connection refused");
            conn.close(VarInt::from_u32(code), reason);
            None
        }
    }
}

async fn connection(shared: Arc<Shared>, incoming: Incoming, handshake: AddressPermit) {
    let remote = incoming.remote_address();
    // The handshake and the registry lookup hold the handshake permit, for handshake_timeout at
    // most: dropping an unfinished `Connecting` closes it and frees its state.
    let established =
        tokio::time::timeout(shared.config.handshake_timeout, establish(&shared, incoming)).await;
    drop(handshake);
    let (conn, peer) = match established {
        Ok(Some(pair)) => pair,
        Ok(None) => return,
        Err(_) => {
            tracing::debug!(%remote, "quic handshake timed out");
            return;
        }
    };
    // A slot only for a finished handshake of a known device; the close can reach the client
    // now that 1-RTT keys exist.
    let _slot = match shared.load.connections.try_acquire(remote.ip()) {
        Ok(slot) => slot,
        Err(full) => {
            let reason: &[u8] = match full {
                Full::PerAddress => b"connection limit per address",
                Full::Total => b"connection limit",
            };
            tracing::warn!(
                %remote,
                limit = shared.config.max_connections,
                per_address = shared.config.max_connections_per_address,
                "quic connection refused: {}",
                String::from_utf8_lossy(reason)
            );
            conn.close(VarInt::from_u32(CLOSE_CONNECTION_LIMIT), reason);
            return;
        }
    };
    // rustls required a certificate, so the peer is a device.
    let Principal::Device { id, .. } = peer.principal else {
        conn.close(VarInt::from_u32(CLOSE_UNKNOWN_DEVICE), b"client certificate required");
        return;
    };
    let _counted = shared.gate.metrics.quic_connection();
    register(&shared, id, &conn);
    // A revocation committed before the registration was not seen by the watcher: check the
    // registry itself (not the cache) once more.
    match shared.gate.peers.registered(id).await {
        Ok(Some(device)) if device.status == DeviceStatus::Active => {}
        Ok(_) => conn.close(VarInt::from_u32(CLOSE_DEVICE_REVOKED), b"device revoked"),
        // Cannot tell: refuse rather than keep a possibly revoked device connected.
        Err(e) => {
            tracing::error!(error = %e, "cannot re-check a connecting device");
            conn.close(VarInt::from_u32(CLOSE_INTERNAL), b"internal error");
        }
    }
    tracing::debug!(%remote, device_id = %id, "quic connection");
    let peer = Arc::new(peer);
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(stream(Arc::clone(&shared), Arc::clone(&peer), conn.clone(), send, recv));
            }
            Err(e) => {
                tracing::debug!(%remote, device_id = %id, reason = %e, "quic connection ended");
                break;
            }
        }
    }
    unregister(&shared, id, &conn);
}

fn register(shared: &Shared, id: DeviceId, conn: &Connection) {
    if let Ok(mut all) = shared.connections.lock() {
        all.entry(id).or_default().insert(conn.stable_id(), conn.clone());
    }
}

fn unregister(shared: &Shared, id: DeviceId, conn: &Connection) {
    if let Ok(mut all) = shared.connections.lock()
        && let Some(of_device) = all.get_mut(&id)
    {
        of_device.remove(&conn.stable_id());
        if of_device.is_empty() {
            all.remove(&id);
        }
    }
}

fn cut_off(shared: &Shared, id: DeviceId) {
    shared.gate.peers.invalidate(id);
    let conns = shared.connections.lock().ok().and_then(|mut all| all.remove(&id)).unwrap_or_default();
    for conn in conns.into_values() {
        tracing::info!(device_id = %id, "closing the quic connection of a revoked device");
        conn.close(VarInt::from_u32(CLOSE_DEVICE_REVOKED), b"device revoked");
    }
}

/// Closes the connections of each device revoked, as soon as its `device.revoked` event is
/// committed; after missing events (lag), re-checks every connected device in the registry.
async fn watch_revocations(shared: Arc<Shared>, mut live: broadcast::Receiver<Arc<crate::events::Event>>) {
    loop {
        match live.recv().await {
            Ok(event) if event.kind == DEVICE_REVOKED => {
                if let Ok(id) = DeviceId::parse(&event.subject) {
                    cut_off(&shared, id);
                }
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let connected: Vec<DeviceId> =
                    shared.connections.lock().map(|all| all.keys().copied().collect()).unwrap_or_default();
                for id in connected {
                    if let Ok(Some(device)) = shared.gate.peers.registered(id).await
                        && device.status == DeviceStatus::Revoked
                    {
                        cut_off(&shared, id);
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Writes `response` as the last frame and finishes the stream.
async fn finish_with(mut send: SendStream, response: pb::Response) {
    let mut buf = BytesMut::new();
    frame::encode(&response, &mut buf);
    if send.write_all(&buf).await.is_ok() {
        let _ = send.finish();
        // Let the peer read the tail before the stream is dropped.
        let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    }
}

/// Largest request frame read: a `Request` is a method name, a sequence and a few kinds.
const MAX_REQUEST_FRAME: usize = 64 * 1024;

async fn stream(shared: Arc<Shared>, peer: Arc<Peer>, conn: Connection, send: SendStream, recv: RecvStream) {
    // A Request is a few hundred bytes: the codec reserves a frame's full length as soon as it
    // reads the header, so requests get a small cap of their own, whatever max_frame allows.
    let _counted = shared.gate.metrics.quic_stream();
    let max = shared.config.max_frame.min(MAX_REQUEST_FRAME);
    let mut frames = FramedRead::new(recv, frame::codec(max));
    let Ok(read) =
        tokio::time::timeout(REQUEST_TIMEOUT, frame::read::<pb::Request, _>(&mut frames, max)).await
    else {
        return finish_with(send, error_frame(codes::INVALID_REQUEST, "no Request frame in time", 0)).await;
    };
    let request = match read {
        Ok(Some(request)) => request,
        Ok(None) => {
            return finish_with(send, error_frame(codes::INVALID_REQUEST, "expected one Request frame", 0))
                .await;
        }
        Err(e @ FrameError::BadLength { .. }) => {
            return finish_with(send, error_frame(codes::FRAME_TOO_LARGE, e.to_string(), 0)).await;
        }
        Err(e @ FrameError::Undecodable(_)) | Err(e @ FrameError::Truncated) => {
            return finish_with(send, error_frame(codes::INVALID_REQUEST, e.to_string(), 0)).await;
        }
        Err(e) => {
            tracing::debug!(error = %e, "quic stream failed before its request");
            return;
        }
    };
    // Nothing more is read from this stream.
    drop(frames);
    // Every decision is recorded, unknown methods included (the engine denies them), with the
    // method name bounded so a peer cannot bloat the audit log.
    let method: String = request.method.chars().take(MAX_METHOD_CHARS).collect();
    let method = method.as_str();
    let decision = shared.gate.decide(&peer, method, &Resource::Node, None);
    if ![METHOD_HEALTH, METHOD_STREAM_EVENTS, METHOD_AUDIT_CHECKPOINT].contains(&method) {
        let message = format!("unknown method {method:?}");
        return finish_with(send, error_frame(codes::UNSUPPORTED_METHOD, message, 0)).await;
    }
    if let Err(denied) = decision {
        return finish_with(send, error_frame(codes::PERMISSION_DENIED, denied.message, 0)).await;
    }
    if method == METHOD_HEALTH {
        let health = pb::HealthResponse {
            status: "ok".to_owned(),
            device_id: shared.node_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: shared.started.elapsed().as_secs(),
        };
        return finish_with(send, pb::Response { body: Some(pb::response::Body::Health(health)) }).await;
    }
    if method == METHOD_AUDIT_CHECKPOINT {
        return finish_with(send, audit_checkpoint(&shared, request.at_sequence).await).await;
    }
    stream_events(&shared, &conn, send, request).await;
}

/// `node.audit_checkpoint`: the latest signed checkpoint, the key, the hash at a sequence.
async fn audit_checkpoint(shared: &Shared, at_sequence: Option<u64>) -> pb::Response {
    let answer = async {
        let checkpoint = shared.audit.checkpoint_now().await.map_err(|e| e.to_string())?;
        let hash_at_sequence = match at_sequence {
            Some(sequence) => shared.audit.hash_at(sequence).await.map_err(|e| e.to_string())?.map(hex::encode),
            None => None,
        };
        Ok::<_, String>(pb::AuditCheckpointResponse {
            checkpoint: Some(checkpoint.into()),
            public_key: shared.audit.signing_public_key().map(hex::encode).unwrap_or_default(),
            hash_at_sequence,
        })
    };
    match answer.await {
        Ok(answer) => pb::Response { body: Some(pb::response::Body::AuditCheckpoint(answer)) },
        Err(e) => {
            tracing::error!(error = %e, "node.audit_checkpoint failed");
            error_frame(codes::INTERNAL, "internal error", 0)
        }
    }
}

async fn stream_events(shared: &Shared, conn: &Connection, mut send: SendStream, request: pb::Request) {
    let subscribed = if request.since_sequence == super::EVENTS_FROM_NOW {
        shared.events.subscribe_from_now(request.kinds).await
    } else {
        shared.events.subscribe(request.since_sequence, request.kinds).await
    };
    let mut subscription = match subscribed {
        Ok(subscription) => subscription,
        Err(e) => return finish_with(send, events_refused(&e, request.since_sequence)).await,
    };
    let mut buf = BytesMut::with_capacity(WRITE_BATCH);
    loop {
        let first = tokio::select! {
            next = subscription.next() => next,
            _ = conn.closed() => return,
        };
        let mut outcome = first.map(|event| frame::encode(&pb_response(&event), &mut buf));
        // Gather what is ready into one write.
        while outcome.is_ok() && buf.len() < WRITE_BATCH {
            match subscription.next_ready().await {
                Ok(Some(event)) => frame::encode(&pb_response(&event), &mut buf),
                Ok(None) => break,
                Err(e) => outcome = Err(e),
            }
        }
        if !buf.is_empty() {
            if send.write_all(&buf).await.is_err() {
                return; // the client stopped reading or went away
            }
            buf.clear();
        }
        if let Err(e) = outcome {
            match events_failed(&e) {
                Some(frame) => return finish_with(send, frame).await,
                None => {
                    let _ = send.finish();
                    return;
                }
            }
        }
    }
}

fn pb_response(event: &crate::events::Event) -> pb::Response {
    pb::Response { body: Some(pb::response::Body::Event(event_to_pb(event))) }
}
