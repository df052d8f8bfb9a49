//! Client TLS as the tests' and benches' clients use it: tonic channels (with a device's
//! certificate, from a credentials directory, or anonymous), rustls client configs for raw
//! connections, and the QUIC client's [`ClientTls`].

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::Creds;
use crate::node::Node;
use crate::quic::client::ClientTls;

/// A CA certificate and, for mTLS, a client certificate and key: all PEM.
#[derive(Debug, Clone)]
pub struct Pems {
    /// The CA that signed the server's certificate.
    pub ca: String,
    /// The client certificate and key; `None` connects anonymously.
    pub client: Option<(String, String)>,
}

impl Pems {
    /// `node`'s CA and, with `creds`, the device's certificate and key.
    pub fn device(node: &Node, creds: Option<&Creds>) -> Pems {
        Pems {
            ca: node.identity.ca().certificate_pem().to_owned(),
            client: creds.map(|c| (c.cert_pem.clone(), c.key_pem.clone())),
        }
    }

    /// `ca.pem`, `cert.pem` and `key.pem` of a credentials directory (`<data>/operator`,
    /// `<data>/client`).
    pub fn from_dir(dir: &Path) -> Pems {
        let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
        Pems { ca: read("ca.pem"), client: Some((read("cert.pem"), read("key.pem"))) }
    }

    /// The tonic TLS settings.
    pub fn tonic(&self) -> ClientTlsConfig {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca));
        match &self.client {
            Some((cert, key)) => tls.identity(Identity::from_pem(cert, key)),
            None => tls,
        }
    }

    /// An endpoint for `https://addr` with these settings, to be tuned and connected.
    pub fn endpoint(&self, addr: SocketAddr) -> Endpoint {
        endpoint(&format!("https://{addr}"), self.tonic())
    }

    /// A connected channel to `addr`.
    pub async fn channel(&self, addr: SocketAddr) -> Channel {
        self.endpoint(addr).connect().await.unwrap()
    }

    /// A connected channel to `addr` from the local address `from` (per-address limits).
    pub async fn channel_from(&self, addr: SocketAddr, from: IpAddr) -> Channel {
        self.endpoint(addr).local_address(Some(from)).connect().await.unwrap()
    }

    /// A rustls client config (ring, safe default versions; no ALPN, resumption on: set what
    /// the connection needs).
    pub fn rustls(&self) -> rustls::ClientConfig {
        let ca = CertificateDer::from_pem_slice(self.ca.as_bytes()).unwrap();
        let client = self.client.as_ref().map(|(cert, key)| {
            let chain =
                CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
            (chain, PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap())
        });
        rustls_config(ca, client)
    }

    /// The QUIC client's TLS settings.
    pub fn quic(&self) -> ClientTls {
        match &self.client {
            Some((cert, key)) => {
                ClientTls::from_pem(self.ca.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap()
            }
            None => {
                ClientTls { ca: CertificateDer::from_pem_slice(self.ca.as_bytes()).unwrap(), identity: None }
            }
        }
    }
}

/// A tonic endpoint for `url` with `tls`.
pub fn endpoint(url: &str, tls: ClientTlsConfig) -> Endpoint {
    Channel::from_shared(url.to_owned()).unwrap().tls_config(tls).unwrap()
}

/// A connected channel to `addr` with `node`'s CA and, with `creds`, the device's certificate.
pub async fn channel(node: &Node, addr: SocketAddr, creds: Option<&Creds>) -> Channel {
    Pems::device(node, creds).channel(addr).await
}

/// A connected channel to `addr` with the credentials in `dir` (`<data>/operator`,
/// `<data>/client`).
pub async fn channel_from_dir(addr: SocketAddr, dir: &Path) -> Channel {
    Pems::from_dir(dir).channel(addr).await
}

/// A rustls client config trusting `ca`, with a client certificate if given (ring, safe default
/// versions).
pub fn rustls_config(
    ca: CertificateDer<'static>,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    match client {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    }
}

/// The QUIC client's TLS for `node` with `creds`, or without a certificate.
pub fn quic(node: &Node, creds: Option<&Creds>) -> ClientTls {
    match creds {
        Some(_) => Pems::device(node, creds).quic(),
        None => ClientTls { ca: node.identity.ca().certificate_der().clone(), identity: None },
    }
}
