//! In-process nodes: opened on a data dir with the file key backend, served on loopback, and the
//! door to their internals ([`NodeInternals`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::tls::{self, Pems};
use super::{Creds, install_crypto_provider, mint, private_tempdir};
use crate::events::{Event, EventLog, NewEvent, Retention};
use crate::identity::{Device, DeviceId, IdentityError, Role};
use crate::node::{InitError, KeyBackendChoice, Node, NodeCore, NodeError, NodeOptions};
use crate::pairing::{CodeId, PairingCode};
use crate::quic::{QuicConfig, QuicLoad, QuicServer};
use crate::rpc::ServeError;
use crate::rpc::server::{GrpcLimits, GrpcLoad};
use crate::store_error::{BoxFuture, StoreError};
use crate::vault::{Vault, VaultConfig};

/// Options with the file key backend (tests never touch the OS keychain).
pub fn node_options() -> NodeOptions {
    NodeOptions { key_backend: KeyBackendChoice::File, ..Default::default() }
}

/// [`node_options`] with the vault's read cache off: every GetSecret reads and checks its row
/// in the database, so an edit made on disk is found by the very next read (with the cache on,
/// by the first read after the cached row's lifetime; `tests/row_integrity.rs` shows both).
pub fn uncached_node_options() -> NodeOptions {
    let mut options = node_options();
    options.vault.read_cache = std::time::Duration::ZERO;
    options
}

/// Opens (initialising on first use) the node in `data` with [`node_options`].
pub async fn open_node(data: &Path) -> Node {
    try_open_node(data, node_options()).await.unwrap()
}

/// Opens the node in `data` with `options`, for tests that expect it to fail.
pub async fn try_open_node(data: &Path, options: NodeOptions) -> Result<Node, InitError> {
    install_crypto_provider();
    Node::open(data, options).await
}

/// Every record ListAuditRecords shows over `channel` (an operator's), paging from the start.
/// Each listing is recorded too, so the table never ends: a short page is its end for now.
pub async fn audit_records(channel: Channel) -> Vec<crate::wire::pb::audit::v1::AuditRecord> {
    use crate::wire::pb::audit::v1::{ListAuditRecordsRequest, audit_service_client::AuditServiceClient};
    const PAGE: usize = 1000;
    let mut client = AuditServiceClient::new(channel);
    let mut all: Vec<crate::wire::pb::audit::v1::AuditRecord> = Vec::new();
    loop {
        let since = all.last().map_or(0, |r| r.sequence);
        let request =
            ListAuditRecordsRequest { since_sequence: since, limit: PAGE as u32, ..Default::default() };
        let page = client.list_audit_records(request).await.expect("ListAuditRecords").into_inner().records;
        let end = page.len() < PAGE;
        all.extend(page);
        if end {
            return all;
        }
    }
}

/// Opens the data-dir parts (database, root key, vault) in `data` with [`node_options`].
/// Appends `records` synthetic decision records (a device reading a secret) to the audit log
/// of the node in `data`, which must not be open: chained and sealed with the node's own keys
/// exactly as its audit writer would, in transactions of 100,000. For benches of the log at
/// scale. Returns the last sequence.
pub async fn fill_audit_log(data: &Path, records: u64) -> u64 {
    let core = open_core(data).await;
    let (key, head_key) = (core.keys.audit_chain_key(), core.keys.audit_head_key());
    let head = core.store.bulk_append_audit(key, head_key, records).await.unwrap();
    core.close();
    head.sequence
}

/// Opens the data-dir parts (database, root key, vault) of the node in `data`.
pub async fn open_core(data: &Path) -> NodeCore {
    try_open_core(data, node_options()).await.unwrap()
}

/// Opens the data-dir parts in `data` with `options`, for tests that expect it to fail.
pub async fn try_open_core(data: &Path, options: NodeOptions) -> Result<NodeCore, NodeError> {
    NodeCore::open(data, options).await
}

/// A server task spawned in this process and the switch that stops it: the one stop logic of
/// [`GrpcServing`] and [`QuicServing`].
#[derive(Debug)]
struct Running<T> {
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<T>>,
}

impl<T: Send + 'static> Running<T> {
    /// Spawns `serve(stopped)`, where `stopped` completes when the switch is thrown.
    fn spawn<F>(serve: impl FnOnce(BoxFuture<'static, ()>) -> F) -> Running<T>
    where
        F: std::future::Future<Output = T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(Box::pin(async {
            let _ = rx.await;
        })));
        Running { shutdown: Some(tx), task: Some(task) }
    }

    fn signal_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    async fn stop(mut self) -> T {
        self.signal_stop();
        self.task.take().expect("a running server has its task").await.unwrap()
    }
}

/// A node's gRPC API served in this process on `127.0.0.1:0`.
#[derive(Debug)]
pub struct GrpcServing {
    /// Where it listens.
    pub addr: SocketAddr,
    running: Running<Result<(), ServeError>>,
}

impl GrpcServing {
    /// Serves `node` with the default limits.
    pub async fn start(node: &Node) -> GrpcServing {
        let limits = GrpcLimits::default();
        GrpcServing::start_with(node, limits.clone(), GrpcLoad::new(&limits)).await
    }

    /// Serves `node` with `limits`; `load` (made from the same limits) watches the connections.
    pub async fn start_with(node: &Node, limits: GrpcLimits, load: GrpcLoad) -> GrpcServing {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = node.clone();
        let running = Running::spawn(move |stopped| async move {
            crate::rpc::serve_with(&serving, listener, &limits, load, stopped).await
        });
        GrpcServing { addr, running }
    }

    /// Asks the server to stop (it drains in-flight requests) without waiting.
    pub fn signal_stop(&mut self) {
        self.running.signal_stop();
    }

    /// Stops gracefully and waits for the server to finish.
    pub async fn stop(self) {
        self.running.stop().await.unwrap();
    }
}

/// A node's QUIC data plane served in this process on `127.0.0.1:0`.
#[derive(Debug)]
pub struct QuicServing {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its live connection budget.
    pub load: QuicLoad,
    running: Running<()>,
}

impl QuicServing {
    /// Serves QUIC for `node` with `config` (its address replaced by `127.0.0.1:0`).
    pub fn start(node: &Node, config: QuicConfig) -> QuicServing {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let server = QuicServer::bind(node, QuicConfig { addr, ..config }).unwrap();
        let (addr, load) = (server.local_addr().unwrap(), server.load());
        let running = Running::spawn(move |stopped| server.run(stopped));
        QuicServing { addr, load, running }
    }

    /// Asks the server to stop without waiting.
    pub fn signal_stop(&mut self) {
        self.running.signal_stop();
    }

    /// Stops and waits for the server to finish.
    pub async fn stop(self) {
        self.running.stop().await;
    }
}

/// A node in a private temp dir (`<dir>/node`), serving gRPC with mTLS on `127.0.0.1:0`.
#[derive(Debug)]
pub struct TestNode {
    /// The temp dir (the node's data dir is `node` inside it).
    pub dir: tempfile::TempDir,
    /// The node.
    pub node: Node,
    /// Where gRPC listens.
    pub addr: SocketAddr,
    grpc: GrpcServing,
}

impl TestNode {
    /// Initialises a node in a fresh data dir and serves it.
    pub async fn start() -> TestNode {
        let dir = private_tempdir();
        let data = dir.path().join("node");
        TestNode::start_in(dir, &data).await
    }

    /// Initialises a node with `options` in a fresh data dir and serves it (e.g. with
    /// `metrics: true`).
    pub async fn start_with(options: NodeOptions) -> TestNode {
        let dir = private_tempdir();
        let data = dir.path().join("node");
        let node = try_open_node(&data, options).await.unwrap();
        let grpc = GrpcServing::start(&node).await;
        TestNode { dir, node, addr: grpc.addr, grpc }
    }

    /// Serves the node in `data` (initialising it if needed); `dir` is kept alive with it.
    pub async fn start_in(dir: tempfile::TempDir, data: &Path) -> TestNode {
        let node = open_node(data).await;
        let grpc = GrpcServing::start(&node).await;
        TestNode { dir, node, addr: grpc.addr, grpc }
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
        tls::channel(&self.node, self.addr, creds).await
    }

    /// An anonymous channel from loopback address 127.0.0.`last_octet` (another peer address
    /// for the per-address limits; 127.0.0.1 is the usual one).
    pub async fn anonymous_from(&self, last_octet: u8) -> Channel {
        let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last_octet));
        Pems::device(&self.node, None).channel_from(self.addr, from).await
    }

    /// The operator's channel, from the files `init` wrote.
    pub async fn operator(&self) -> Channel {
        tls::channel_from_dir(self.addr, &self.data_dir().join("operator")).await
    }

    /// Registers a device with `role` (as approval would) and returns its credentials.
    pub async fn add_device(&self, role: Role, name: &str, scopes: &[&str]) -> Creds {
        mint(&self.node, role, name, scopes).await
    }

    /// The token of a device enrollment key (no scopes, one use) made `made_ago` and living
    /// `ttl`: an expired key when `made_ago` > `ttl`.
    pub async fn enrollment_token_made(&self, made_ago: Duration, ttl: Duration) -> String {
        let made = SystemTime::now() - made_ago;
        let created = self
            .node
            .pairing
            .create_enrollment_key_at("", &[], None, Some(ttl), self.addr.to_string(), made)
            .await
            .expect("enrollment key");
        created.token.to_text().to_string()
    }

    /// Serves QUIC for this node too.
    pub fn serve_quic(&self, config: QuicConfig) -> QuicServing {
        QuicServing::start(&self.node, config)
    }

    /// Stops serving gracefully, waits for the server to finish and flushes the audit log.
    pub async fn stop(self) -> (tempfile::TempDir, Node) {
        self.grpc.stop().await;
        let _ = self.node.audit.flush().await;
        (self.dir, self.node)
    }
}

/// The one door of tests into a node's internals (its database): what no service or RPC does
/// for them. Implemented for [`Node`], [`NodeCore`] and [`TestNode`].
#[allow(async_fn_in_trait)]
pub trait NodeInternals {
    /// The data-dir parts.
    fn core_parts(&self) -> &NodeCore;

    /// Closes the database (checkpoints the WAL) so the data dir can be opened again.
    fn close_db(&self) {
        self.core_parts().store.close();
    }

    /// The database file.
    fn db_path(&self) -> PathBuf {
        self.core_parts().store.path().to_path_buf()
    }

    /// `PRAGMA integrity_check`.
    async fn integrity_check(&self) -> Result<String, StoreError> {
        self.core_parts().store.integrity_check().await
    }

    /// Revokes a device in the registry directly (no RPC, no audit record, no peer-cache
    /// invalidation).
    async fn revoke(&self, id: DeviceId, reason: &str) -> Result<(), IdentityError> {
        self.core_parts().store.revoke_device(id, reason, SystemTime::now()).await.map(|_| ())
    }

    /// A device's registry row.
    async fn device(&self, id: DeviceId) -> Result<Option<Device>, IdentityError> {
        self.core_parts().store.device(id).await
    }

    /// Every registry row.
    async fn devices(&self) -> Result<Vec<Device>, IdentityError> {
        self.core_parts().store.devices().await
    }

    /// Inserts a registry row as it is.
    async fn insert_device(&self, device: &Device) -> Result<(), IdentityError> {
        self.core_parts().store.insert_device(device).await
    }

    /// Sets a device's certificate expiry as a renewal would (its event included).
    async fn set_certificate_expiry(&self, id: DeviceId, not_after: SystemTime) -> Result<(), IdentityError> {
        self.core_parts().store.set_certificate_expiry(id, not_after).await.map(|_| ())
    }

    /// A pairing code's row.
    async fn pairing_code(&self, id: &CodeId) -> Result<Option<PairingCode>, StoreError> {
        self.core_parts().store.pairing_code(id).await
    }

    /// Up to `limit` events after sequence `after`, from the database.
    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.core_parts().store.events_after(after, limit).await
    }

    /// Appends an event stamped `at` (handlers stamp before they queue: times need not be
    /// monotonic in sequence).
    async fn append_event_at(&self, event: NewEvent, at: SystemTime) -> Result<Event, StoreError> {
        self.core_parts().store.append_event(event, at).await
    }

    /// Every committed event as the live fan-out hands it to subscribers.
    fn event_hub(&self) -> broadcast::Receiver<Arc<Event>> {
        self.core_parts().store.event_hub().subscribe()
    }

    /// Another event log on the same database, with `retention` (to prune by hand).
    fn event_log_with(&self, retention: Retention) -> EventLog {
        EventLog::new(Arc::new(self.core_parts().store.clone())).with_retention(retention)
    }

    /// Another vault on the same database and keys, with `config`.
    fn vault_with(&self, config: VaultConfig) -> Vault {
        let core = self.core_parts();
        Vault::new(
            Arc::new(crate::storage::SqliteBlobBackend::new(core.store.clone(), config.read_cache)),
            Arc::clone(&core.keys),
            config,
        )
    }
}

impl NodeInternals for NodeCore {
    fn core_parts(&self) -> &NodeCore {
        self
    }
}

impl NodeInternals for Node {
    fn core_parts(&self) -> &NodeCore {
        &self.core
    }
}

impl NodeInternals for TestNode {
    fn core_parts(&self) -> &NodeCore {
        &self.node.core
    }
}
