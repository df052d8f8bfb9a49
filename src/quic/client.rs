//! The client side of `palyra-node/1`, used by `palyra node health|events` and the tests.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use quinn::{Connection, ConnectionError, Endpoint, RecvStream, VarInt};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_util::codec::FramedRead;

use super::frame::{self, FrameError};
use super::{
    ALPN, DEFAULT_MAX_FRAME, METHOD_AUDIT_CHECKPOINT, METHOD_HEALTH, METHOD_STREAM_EVENTS, QuicConfig, event_from_pb,
    pb,
};
use crate::events::Event;

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Credentials or TLS settings are unusable.
    #[error("tls: {0}")]
    Tls(String),
    /// The connection could not be made (handshake failure, certificate refused, timeout).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The server closed the connection with an application code (0x1 `connection limit`,
    /// 0x2 unknown device, 0x3 device revoked).
    #[error("the node closed the connection: code {code:#x} ({reason})")]
    Closed {
        /// The application close code.
        code: u64,
        /// The reason it gave.
        reason: String,
    },
    /// The connection was lost.
    #[error("connection lost: {0}")]
    Lost(String),
    /// The node answered with an `Error` frame.
    #[error("{code}: {message}")]
    Remote {
        /// `Error.code` (`permission_denied`, `events_truncated`, …).
        code: String,
        /// Its message.
        message: String,
        /// For `events_truncated`: the oldest available sequence.
        oldest_available_sequence: u64,
    },
    /// The node sent something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl From<ConnectionError> for ClientError {
    fn from(e: ConnectionError) -> Self {
        match e {
            ConnectionError::ApplicationClosed(close) => ClientError::Closed {
                code: close.error_code.into_inner(),
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            },
            other => ClientError::Lost(other.to_string()),
        }
    }
}

impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

/// TLS material of a client: the node CA to trust and, normally, a device certificate.
#[derive(Debug)]
pub struct ClientTls {
    /// The node's CA certificate.
    pub ca: CertificateDer<'static>,
    /// The device's certificate chain and key; `None` connects without one (always refused by
    /// the node: useful only to test that).
    pub identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl ClientTls {
    /// From PEM text: the CA, the device certificate and its key.
    pub fn from_pem(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, ClientError> {
        let ca = CertificateDer::from_pem_slice(ca_pem).map_err(|e| ClientError::Tls(format!("ca: {e}")))?;
        let certs = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Tls(format!("certificate: {e}")))?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| ClientError::Tls(format!("key: {e}")))?;
        Ok(ClientTls { ca, identity: Some((certs, key)) })
    }
}

/// Client settings beyond TLS.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Largest frame accepted from the node.
    pub max_frame: usize,
    /// Per-stream receive window in bytes (flow control): small values make a slow reader.
    pub stream_receive_window: Option<u32>,
    /// The local address to send from (default: any address, port 0).
    pub local_addr: Option<SocketAddr>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions { max_frame: DEFAULT_MAX_FRAME, stream_receive_window: None, local_addr: None }
    }
}

/// A connection to a node's data plane.
#[derive(Debug)]
pub struct QuicClient {
    endpoint: Endpoint,
    conn: Connection,
    max_frame: usize,
}

/// What the node answered on a stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `node.health`.
    Health(pb::HealthResponse),
    /// One event.
    Event(Event),
    /// An `Error` frame.
    Error(pb::Error),
    /// `node.audit_checkpoint`.
    AuditCheckpoint(pb::AuditCheckpointResponse),
}

impl QuicClient {
    /// Connects to `addr`, checking the node's certificate for `server_name` against the CA.
    pub async fn connect(addr: SocketAddr, server_name: &str, tls: ClientTls) -> Result<Self, ClientError> {
        Self::connect_with(addr, server_name, tls, ClientOptions::default()).await
    }

    /// [`QuicClient::connect`] with options.
    pub async fn connect_with(
        addr: SocketAddr,
        server_name: &str,
        tls: ClientTls,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(tls.ca).map_err(|e| ClientError::Tls(format!("node CA: {e}")))?;
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match tls.identity {
            Some((chain, key)) => {
                builder.with_client_auth_cert(chain, key).map_err(|e| ClientError::Tls(e.to_string()))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.enable_early_data = false;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport =
            super::server::transport(&QuicConfig::default()).map_err(|e| ClientError::Tls(e.to_string()))?;
        if let Some(window) = options.stream_receive_window {
            transport.stream_receive_window(VarInt::from_u32(window));
        }
        client.transport_config(Arc::new(transport));
        let local: SocketAddr = match options.local_addr {
            Some(local) => local,
            None => if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
                .parse()
                .map_err(|e| ClientError::Connect(format!("{e}")))?,
        };
        let mut endpoint = Endpoint::client(local).map_err(|e| ClientError::Connect(e.to_string()))?;
        endpoint.set_default_client_config(client);
        ServerName::try_from(server_name.to_owned())
            .map_err(|e| ClientError::Tls(format!("server name {server_name:?}: {e}")))?;
        let connecting =
            endpoint.connect(addr, server_name).map_err(|e| ClientError::Connect(e.to_string()))?;
        let conn = match tokio::time::timeout(QuicConfig::default().handshake_timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(ConnectionError::ApplicationClosed(close))) => {
                return Err(ClientError::Closed {
                    code: close.error_code.into_inner(),
                    reason: String::from_utf8_lossy(&close.reason).into_owned(),
                });
            }
            Ok(Err(e)) => return Err(ClientError::Connect(e.to_string())),
            Err(_) => return Err(ClientError::Connect("handshake timed out".into())),
        };
        Ok(QuicClient { endpoint, conn, max_frame: options.max_frame })
    }

    /// `node.health`.
    pub async fn health(&self) -> Result<pb::HealthResponse, ClientError> {
        let mut replies = self.call(&request(METHOD_HEALTH, 0, Vec::new())).await?;
        match replies.next_reply().await? {
            Some(Reply::Health(health)) => Ok(health),
            Some(Reply::Error(e)) => Err(remote(e)),
            Some(_) => Err(ClientError::Protocol("another answer to node.health".into())),
            None => Err(ClientError::Protocol("no answer to node.health".into())),
        }
    }

    /// `node.audit_checkpoint`: the node's latest signed audit checkpoint and signing key, and
    /// the hash its log holds at `at_sequence` when asked.
    pub async fn audit_checkpoint(&self, at_sequence: Option<u64>) -> Result<pb::AuditCheckpointResponse, ClientError> {
        let request = pb::Request { at_sequence, ..request(METHOD_AUDIT_CHECKPOINT, 0, Vec::new()) };
        let mut replies = self.call(&request).await?;
        match replies.next_reply().await? {
            Some(Reply::AuditCheckpoint(answer)) => Ok(answer),
            Some(Reply::Error(e)) => Err(remote(e)),
            Some(_) => Err(ClientError::Protocol("another answer to node.audit_checkpoint".into())),
            None => Err(ClientError::Protocol("no answer to node.audit_checkpoint".into())),
        }
    }

    /// `node.stream_events`: events after `since` (0 = all retained), only `kinds` (empty =
    /// all), then live ones.
    pub async fn stream_events(&self, since: u64, kinds: Vec<String>) -> Result<EventStream, ClientError> {
        Ok(EventStream { replies: self.call(&request(METHOD_STREAM_EVENTS, since, kinds)).await? })
    }

    /// Sends `bytes` as they are on a new stream, finishes it, and returns the reply stream
    /// (for tests of malformed input).
    pub async fn send_raw(&self, bytes: &[u8]) -> Result<Replies, ClientError> {
        let (mut send, recv) = self.conn.open_bi().await?;
        if let Err(e) = send.write_all(bytes).await {
            return Err(why_closed(&self.conn).unwrap_or_else(|| ClientError::Lost(e.to_string())));
        }
        let _ = send.finish();
        Ok(Replies {
            frames: FramedRead::new(recv, frame::codec(self.max_frame)),
            max_frame: self.max_frame,
            conn: self.conn.clone(),
        })
    }

    async fn call(&self, request: &pb::Request) -> Result<Replies, ClientError> {
        let mut buf = BytesMut::new();
        frame::encode(request, &mut buf);
        self.send_raw(&buf).await
    }

    /// Resolves when the node closes the connection, with the reason.
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
    pub async fn closed(&self) -> ClientError {
        ClientError::from(self.conn.closed().await)
    }

    /// Closes the connection and waits briefly for the node to hear it.
    pub async fn close(self) {
        self.conn.close(VarInt::from_u32(0), b"done");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// The node's close code and reason, once the connection is closed.
fn why_closed(conn: &Connection) -> Option<ClientError> {
    conn.close_reason().map(ClientError::from)
}

fn request(method: &str, since_sequence: u64, kinds: Vec<String>) -> pb::Request {
    pb::Request { method: method.to_owned(), since_sequence, kinds, at_sequence: None }
}

fn remote(e: pb::Error) -> ClientError {
    ClientError::Remote {
        code: e.code,
        message: e.message,
        oldest_available_sequence: e.oldest_available_sequence,
    }
}

/// The frames the node sends on one stream.
#[derive(Debug)]
pub struct Replies {
    frames: FramedRead<RecvStream, frame::FrameCodec>,
    max_frame: usize,
    conn: Connection,
}

impl Replies {
    /// The next reply, or `None` when the node finished the stream.
    pub async fn next_reply(&mut self) -> Result<Option<Reply>, ClientError> {
        let response = match frame::read::<pb::Response, _>(&mut self.frames, self.max_frame).await {
            Ok(Some(response)) => response,
            Ok(None) => return Ok(None),
            Err(FrameError::Io(e)) => return Err(why_closed(&self.conn).unwrap_or(ClientError::Lost(e))),
            Err(e) => return Err(e.into()),
        };
        match response.body {
            Some(pb::response::Body::Health(health)) => Ok(Some(Reply::Health(health))),
            Some(pb::response::Body::Event(event)) => Ok(Some(Reply::Event(event_from_pb(event)))),
            Some(pb::response::Body::Error(error)) => Ok(Some(Reply::Error(error))),
            Some(pb::response::Body::AuditCheckpoint(answer)) => Ok(Some(Reply::AuditCheckpoint(answer))),
            None => Err(ClientError::Protocol("an empty Response frame".into())),
        }
    }
}

/// The events of a `node.stream_events` call.
#[derive(Debug)]
pub struct EventStream {
    replies: Replies,
}

impl EventStream {
    /// The next event; `Ok(None)` if the node finished the stream; an `Error` frame becomes
    /// [`ClientError::Remote`].
    pub async fn next(&mut self) -> Result<Option<Event>, ClientError> {
        match self.replies.next_reply().await? {
            Some(Reply::Event(event)) => Ok(Some(event)),
            Some(Reply::Error(e)) => Err(remote(e)),
            Some(_) => Err(ClientError::Protocol("another answer in an event stream".into())),
            None => Ok(None),
        }
    }
}
