//! TLS termination and the accept loop.
//!
//! tonic's own TLS config cannot take a custom client verifier, so TLS is terminated here with
//! tokio-rustls: client certificates are verified against the node CA but optional (anonymous
//! callers may pair), ALPN is h2, each handshake runs in its own task with a timeout, and only
//! finished handshakes reach tonic. tonic then exposes the verified chain to the gate.

use std::sync::{Arc, RwLock};
use std::time::Duration;

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
/// Most TLS handshakes in progress at once; further connections wait to be accepted, so a
/// flood of half-open connections cannot spawn unbounded tasks.
pub const MAX_PENDING_HANDSHAKES: usize = 512;

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
/// yields the finished streams. Failed or slow handshakes are logged and dropped, never
/// yielded as errors (an error would stop tonic's server).
pub fn tls_incoming(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(256);
    let acceptor = TlsAcceptor::from(tls);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else { break };
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
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
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
        let _incoming = tls_incoming(listener, tls);

        assert_eq!(served_leaf(addr, ca.certificate_der()).await, first.cert_der.as_ref());
        certificate
            .replace(vec![second.cert_der.clone()], second.private_key_der().expect("key"))
            .expect("replace");
        assert_eq!(served_leaf(addr, ca.certificate_der()).await, second.cert_der.as_ref());
        assert_eq!(certificate.leaf_der(), second.cert_der.as_ref());
    }
}
