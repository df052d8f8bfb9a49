//! A real node in-process for integration tests: a private temp data dir, the file key
//! backend, gRPC with mTLS on 127.0.0.1:0, and helpers to mint devices and channels.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use palyra::identity::ca::generate_tls_key_and_csr;
use palyra::identity::{Device, DeviceId, DeviceIdentity, DeviceStatus, Role};
use palyra::node::{KeyBackendChoice, Node, NodeOptions};
use palyra::vault::Scope;
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A temp dir that passes the server's permission checks (0700).
pub fn private_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    dir
}

/// Client credentials of a device.
#[derive(Clone)]
pub struct Creds {
    pub id: DeviceId,
    pub cert_pem: String,
    pub key_pem: String,
    pub identity: std::sync::Arc<DeviceIdentity>,
}

/// A running node.
pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub node: Node,
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), palyra::rpc::ServeError>>>,
}

impl TestNode {
    /// Initialises a node in a fresh data dir and serves it.
    pub async fn start() -> TestNode {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = private_tempdir();
        let data = dir.path().join("node");
        TestNode::start_in(dir, &data).await
    }

    /// Serves the node in `data` (initialising it if needed); `dir` is kept alive with it.
    pub async fn start_in(dir: tempfile::TempDir, data: &Path) -> TestNode {
        let node =
            Node::open(data, NodeOptions { key_backend: KeyBackendChoice::File, ..Default::default() })
                .await
                .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let serving = node.clone();
        let server = tokio::spawn(async move {
            palyra::rpc::serve(&serving, listener, async {
                let _ = rx.await;
            })
            .await
        });
        TestNode { dir, node, addr, shutdown: Some(tx), server: Some(server) }
    }

    /// The data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("node")
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// A channel with `creds`, or anonymous (server-authenticated TLS only) with `None`.
    pub async fn channel(&self, creds: Option<&Creds>) -> Channel {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.node.identity.ca().certificate_pem()));
        if let Some(c) = creds {
            tls = tls.identity(Identity::from_pem(&c.cert_pem, &c.key_pem));
        }
        Channel::from_shared(self.url()).unwrap().tls_config(tls).unwrap().connect().await.unwrap()
    }

    /// An anonymous channel from loopback address 127.0.0.`last_octet` (another peer address
    /// for the per-address limits; 127.0.0.1 is the usual one).
    pub async fn anonymous_from(&self, last_octet: u8) -> Channel {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.node.identity.ca().certificate_pem()));
        Channel::from_shared(self.url())
            .unwrap()
            .local_address(Some(std::net::Ipv4Addr::new(127, 0, 0, last_octet).into()))
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// The operator's channel, from the files `init` wrote.
    pub async fn operator(&self) -> Channel {
        let dir = self.data_dir().join("operator");
        let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem")))
            .identity(Identity::from_pem(read("cert.pem"), read("key.pem")));
        Channel::from_shared(self.url()).unwrap().tls_config(tls).unwrap().connect().await.unwrap()
    }

    /// Registers a device with `role` (as approval would) and returns its credentials.
    pub async fn add_device(&self, role: Role, name: &str, scopes: &[&str]) -> Creds {
        let identity = DeviceIdentity::generate().unwrap();
        let id = identity.id();
        let (key_pem, csr_pem) = generate_tls_key_and_csr(id).unwrap();
        let now = SystemTime::now();
        let issued = self
            .node
            .identity
            .ca()
            .issue_client_certificate(&csr_pem, id, role, Duration::from_secs(3600), now)
            .unwrap();
        self.node
            .core
            .store
            .insert_device(&Device {
                id,
                name: name.to_owned(),
                fingerprint: identity.fingerprint(),
                signing_public_key: identity.signing_public_key(),
                role,
                status: DeviceStatus::Active,
                paired_at: now,
                certificate_expires_at: issued.not_after,
                revoked_at: None,
                revoke_reason: None,
                scopes: scopes.iter().map(|s| Scope::parse(s).unwrap()).collect(),
            })
            .await
            .unwrap();
        Creds {
            id,
            cert_pem: issued.cert_pem,
            key_pem: key_pem.to_string(),
            identity: std::sync::Arc::new(identity),
        }
    }

    /// Stops serving gracefully and waits for the server to finish.
    pub async fn stop(mut self) -> (tempfile::TempDir, Node) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
        let _ = self.node.audit.flush().await;
        (self.dir, self.node)
    }
}

/// The `ErrorInfo.reason` of a status, or "".
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status.get_error_details().error_info().map(|i| i.reason.clone()).unwrap_or_default()
}

/// Runs the `palyra` binary on `data` with the file key backend and no log, to completion.
pub fn palyra(data: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_palyra"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env("PALYRA_KEY_BACKEND", "file")
        .env("PALYRA_LOG", "off")
        .output()
        .unwrap()
}

/// `palyra serve` as a child process on `data`: every listener on a free loopback port, the
/// file key backend, log level `log`, stdin and stdout closed, stderr piped (the caller must
/// keep reading it, e.g. with [`parse_serving`] on each line, or the child blocks).
pub fn serve_command(data: &Path, log: &str) -> std::process::Command {
    use std::process::Stdio;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_palyra"));
    command
        .arg("--data-dir")
        .arg(data)
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--quic-addr", "127.0.0.1:0"])
        .args(["--console-addr", "127.0.0.1:0"])
        .env("PALYRA_KEY_BACKEND", "file")
        .env("PALYRA_LOG", log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// The gRPC and QUIC addresses from serve's `… serving gRPC on https://ADDR and QUIC on
/// ADDR/udp` line, or `None` for any other line.
pub fn parse_serving(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.split("serving gRPC on https://").nth(1)?;
    let (grpc, rest) = rest.split_once(" and QUIC on ")?;
    let quic = rest.split_whitespace().next()?.strip_suffix("/udp")?;
    Some((grpc.parse().ok()?, quic.parse().ok()?))
}
