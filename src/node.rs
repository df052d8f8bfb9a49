//! Assembles a node's parts from its data directory: the database, the root key (from the
//! backend recorded on first start), the key hierarchy and the vault.
//!
//! This is where the "the chosen key backend sticks" rule lives: a node whose database says
//! its root key is in the keychain never falls back to a new key file (that would orphan every
//! secret); it fails with an error that says what to do.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::access::{Gate, PeerResolver};
use crate::audit::Audit;

pub use crate::config::KeyBackendChoice;
use crate::config::Layout;
use crate::devices::{DeviceStore, Registry};
use crate::events::EventLog;
use crate::fsutil::{self, FsError};
use crate::identity::ca::{DEFAULT_CLIENT_CERT_VALIDITY, generate_tls_key_and_csr};
use crate::identity::{
    Device, DeviceId, DeviceIdentity, DeviceStatus, FilesystemSecretStore, IdentityError, NodeIdentity, Role,
    SecretStore,
};
use crate::metrics::{Metrics, StateGauge};
use crate::pairing::Pairing;
use crate::policy::{Policies, PolicyError, ResetError};
use crate::storage::{SqliteBlobBackend, Store};
use crate::store_error::StoreError;
use crate::vault::keychain::KeychainKeyProvider;
use crate::vault::keys::FileKeyProvider;
use crate::vault::{KeyBackend, KeyError, KeyHierarchy, KeyProvider, RootKey, Vault, VaultConfig};

/// How to open a node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Root-key backend for a new node (an existing node keeps the one it recorded).
    pub key_backend: KeyBackendChoice,
    /// Vault settings.
    pub vault: VaultConfig,
    /// Extra DNS names or IPs for the server certificate.
    pub server_names: Vec<String>,
    /// How long the client certificates issued to devices at pairing approval and at renewal
    /// are valid (default [`DEFAULT_CLIENT_CERT_VALIDITY`], 30 days).
    pub device_certificate_lifetime: Duration,
    /// Whether the node keeps Prometheus metrics (`palyra serve --metrics-addr`); off, every
    /// count is a no-op.
    pub metrics: bool,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            key_backend: KeyBackendChoice::default(),
            vault: VaultConfig::default(),
            server_names: Vec::new(),
            device_certificate_lifetime: DEFAULT_CLIENT_CERT_VALIDITY,
            metrics: false,
        }
    }
}

/// Why a node could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The data directory is unusable.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// The root key backend failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The recorded backend holds no key: the secrets cannot be decrypted.
    #[error(
        "this node's root key is recorded in the {backend} backend but is missing there ({location}); \
         without it the vault cannot be decrypted. Restore the key (or the keychain entry) rather than \
         creating a new one"
    )]
    RootKeyMissing {
        /// The recorded backend.
        backend: KeyBackend,
        /// Where it was looked for.
        location: String,
    },
    /// The configuration asks for another backend than the one the node uses.
    #[error(
        "this node keeps its root key in the {recorded} backend, but {requested} was requested; remove the setting or use {recorded}"
    )]
    BackendMismatch {
        /// The recorded backend.
        recorded: KeyBackend,
        /// The configured one.
        requested: KeyBackend,
    },
    /// The database records something this build does not understand.
    #[error("the database records an unknown key backend {0:?}")]
    UnknownBackend(String),
    /// A blocking task failed.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The parts of a node that live in its data directory.
#[derive(Debug, Clone)]
pub struct NodeCore {
    /// The data directory.
    pub(crate) data_dir: PathBuf,
    /// The database.
    pub(crate) store: Store,
    /// Purpose keys derived from the root key.
    pub(crate) keys: Arc<KeyHierarchy>,
    /// Where the root key lives.
    pub(crate) key_backend: KeyBackend,
    /// The vault.
    pub vault: Vault,
}

const META_KEY_BACKEND: &str = "key_backend";
const META_KEY_ID: &str = "key_id";

impl NodeCore {
    /// Where the root key lives.
    pub fn key_backend(&self) -> KeyBackend {
        self.key_backend
    }

    /// Opens the node in `data_dir`, creating the directory, database and root key on first
    /// start.
    pub async fn open(data_dir: &Path, options: NodeOptions) -> Result<Self, NodeError> {
        fsutil::ensure_private_dir(data_dir)?;
        let db = data_dir.join("palyra.db");
        let store = blocking(move || Store::open(&db).map_err(NodeError::from)).await?;
        let (root, key_backend) = unlock(&store, data_dir, options.key_backend).await?;
        let keys = Arc::new(KeyHierarchy::new(&root));
        drop(root);
        // Before anything is read or served: rows are checked from here on (and MAC'd once on
        // the first open after migration 0009).
        store.authenticate_rows(crate::integrity::RowMac::new(&keys)).await?;
        let vault = Vault::new(
            Arc::new(SqliteBlobBackend::new(store.clone(), options.vault.read_cache)),
            Arc::clone(&keys),
            options.vault,
        );
        let pending = vault.resume_rotation().await.map_err(|e| NodeError::Internal(e.to_string()))?;
        if pending > 0 {
            tracing::info!(rewrapped = pending, "finished an interrupted key rotation");
        }
        Ok(NodeCore { data_dir: data_dir.to_path_buf(), store, keys, key_backend, vault })
    }

    /// Stops accepting writes; the database writer finishes what is queued and exits (at the
    /// end of `init` and `serve`, so the CLI does not reach into the store).
    pub fn close(&self) {
        self.store.close();
    }

    /// Starts the audit service over this core's database, with its chain and head keys.
    /// Blocking (opens the audit writer's connection).
    pub(crate) fn start_audit(&self) -> Result<Audit, StoreError> {
        let (audit_key, head_key) = (self.keys.audit_chain_key(), self.keys.audit_head_key());
        Audit::start(Arc::new(self.store.clone()), audit_key, head_key)
    }
}

/// Why `palyra policy reset` failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OfflineResetError {
    /// The data dir, its database, root key or audit log could not be opened.
    #[error("{0}")]
    Open(String),
    /// The reset itself failed, or went unrecorded.
    #[error(transparent)]
    Reset(#[from] ResetError),
}

/// `palyra policy reset` on the stopped node in `data_dir` (the caller holds the data dir's
/// lock): opens the core (the root key: the new version gets its row MAC) and the audit log,
/// and runs [`Policies::reset_offline`]. Returns the version stored.
pub(crate) async fn reset_policies_offline(data_dir: &Path) -> Result<u64, OfflineResetError> {
    let open = |e: &dyn std::fmt::Display| OfflineResetError::Open(e.to_string());
    let core = NodeCore::open(data_dir, NodeOptions::default()).await.map_err(|e| open(&e))?;
    let starter = core.clone();
    let audit = tokio::task::spawn_blocking(move || starter.start_audit())
        .await
        .map_err(|e| open(&e))?
        .map_err(|e| open(&e))?;
    let outcome = Policies::reset_offline(&core.store, &audit).await;
    // Closed once the defaults could have been stored: the next start reads them.
    if matches!(outcome, Ok(_) | Err(ResetError::Unrecorded { .. })) {
        core.store.close();
    }
    Ok(outcome?)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| NodeError::Internal(e.to_string()))?
}

/// Finds the root key: from the recorded backend, or on first start from the chosen one
/// (creating the key), recording the choice before any secret can be written.
async fn unlock(
    store: &Store,
    data_dir: &Path,
    choice: KeyBackendChoice,
) -> Result<(RootKey, KeyBackend), NodeError> {
    let key_id = match store.meta(META_KEY_ID).await? {
        Some(id) => id,
        None => {
            let id = ulid::Ulid::generate().to_string().to_lowercase();
            store.set_meta(META_KEY_ID, id.clone()).await?;
            id
        }
    };
    let requested = match choice {
        KeyBackendChoice::Auto => None,
        KeyBackendChoice::File => Some(KeyBackend::File),
        KeyBackendChoice::Keychain => Some(KeyBackend::Keychain),
    };
    let data_dir = data_dir.to_path_buf();

    if let Some(recorded) = store.meta(META_KEY_BACKEND).await? {
        let recorded = KeyBackend::parse(&recorded).ok_or(NodeError::UnknownBackend(recorded))?;
        if let Some(requested) = requested.filter(|&r| r != recorded) {
            return Err(NodeError::BackendMismatch { recorded, requested });
        }
        return blocking(move || {
            let provider = provider(recorded, &data_dir, &key_id)?;
            let key = provider.load()?.ok_or_else(|| NodeError::RootKeyMissing {
                backend: recorded,
                location: format!("{provider:?}"),
            })?;
            Ok((key, recorded))
        })
        .await;
    }

    let (key, backend) = blocking(move || {
        let provider: Box<dyn KeyProvider> = match requested {
            Some(backend) => provider(backend, &data_dir, &key_id)?,
            None => match KeychainKeyProvider::open(&key_id) {
                Ok(keychain) => Box::new(keychain),
                Err(e) => {
                    tracing::info!(reason = %e, "no OS keychain answered; keeping the root key in a 0600 key file");
                    Box::new(FileKeyProvider::new(&data_dir))
                }
            },
        };
        let key = match provider.load()? {
            Some(key) => key,
            None => {
                let key = RootKey::generate()?;
                provider.store(&key)?;
                key
            }
        };
        Ok((key, provider.backend()))
    })
    .await?;
    store.set_meta(META_KEY_BACKEND, backend.as_str().to_owned()).await?;
    tracing::info!(backend = %backend, "created the node's root key");
    Ok((key, backend))
}

fn provider(backend: KeyBackend, data_dir: &Path, key_id: &str) -> Result<Box<dyn KeyProvider>, NodeError> {
    Ok(match backend {
        KeyBackend::File => Box::new(FileKeyProvider::new(data_dir)),
        KeyBackend::Keychain => Box::new(KeychainKeyProvider::open(key_id)?),
    })
}

/// How long the operator's certificate is valid: the operator is the node's owner on the node's
/// own machine, and must not be locked out by a monthly expiry.
pub const OPERATOR_CERT_VALIDITY: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 60 * 60);
/// Sealed name of the operator's Ed25519 identity in the identity store.
const OPERATOR_IDENTITY: &str = "operator.identity";

/// A whole node: its data-dir parts plus identity, policies and the audit log.
#[derive(Debug, Clone)]
pub struct Node {
    /// Database, root key, vault.
    pub(crate) core: NodeCore,
    /// The node's identity, CA and server certificate.
    pub(crate) identity: Arc<NodeIdentity>,
    /// Cedar policies (engine and versions).
    pub(crate) policies: Arc<Policies>,
    /// The audit log.
    pub(crate) audit: Audit,
    /// The operator device (role admin) created by `init`.
    pub(crate) operator: DeviceId,
    /// Extra names of the server certificate.
    server_names: Arc<[String]>,
    /// The event log and its live fan-out.
    pub(crate) events: EventLog,
    /// Certificates → peers, shared by the gRPC and QUIC edges (one cache to invalidate).
    pub(crate) peers: PeerResolver,
    /// The device registry: listing, revocation, renewal (one renewal-challenge table for
    /// every edge).
    pub(crate) registry: Arc<Registry>,
    /// The one authorization gate (engine, audit, peers), cloned into every edge.
    pub(crate) gate: Gate,
    /// Auth profiles (their refresh locks are shared by every caller of this node).
    pub(crate) auth: crate::auth::Profiles,
    /// Console login tokens and sessions (in memory), shared by the gRPC edge that issues
    /// tokens and the console that redeems them.
    pub(crate) logins: crate::login::Logins,
    /// The pairing flow (codes, handshakes, requests and their approval), shared by the gRPC
    /// edge and the console, so its rate limits are the node's, not an edge's.
    pub(crate) pairing: Arc<Pairing>,
    /// The node's metrics (disabled unless [`NodeOptions::metrics`]), shared by the gate and
    /// every edge.
    pub(crate) metrics: Metrics,
}

impl Node {
    /// The node's identity, CA and server certificate.
    pub fn identity(&self) -> &Arc<NodeIdentity> {
        &self.identity
    }

    /// Starts the sink of `[audit] sink`: a task delivering every committed record from its
    /// cursor in the database (see `crate::audit::sink`). Needs a tokio runtime.
    pub fn start_audit_sink(
        &self,
        config: impl Into<crate::audit::SinkConfig>,
    ) -> Result<crate::audit::SinkHandle, crate::audit::sink::SinkError> {
        let sink =
            crate::audit::sink::start(self.audit.clone(), Arc::new(self.core.store.clone()), config.into())?;
        // The retention never prunes a record the sink has not delivered.
        let delivered = sink.monitor();
        self.audit.set_prune_floor(Arc::new(move || delivered.delivered_through()));
        Ok(sink)
    }

    /// The Cedar policies (engine and versions).
    pub fn policies(&self) -> &Arc<Policies> {
        &self.policies
    }

    /// The audit log.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// The operator device (role admin) created by `init`.
    pub fn operator(&self) -> DeviceId {
        self.operator
    }

    /// The event log and its live fan-out.
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// Certificates → peers, shared by the edges.
    pub fn peers(&self) -> &PeerResolver {
        &self.peers
    }

    /// The one authorization gate.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The node's metrics (disabled unless the node was opened with [`NodeOptions::metrics`]).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Sets the metrics that describe the node's state rather than count events (stored
    /// secrets, database size, audit records, certificate expiry, event subscribers): called
    /// before each scrape. A value that cannot be read is left out of the scrape (and logged
    /// at debug), never guessed.
    pub async fn refresh_metrics(&self) {
        let metrics = &self.metrics;
        if !metrics.is_enabled() {
            return;
        }
        let set = |gauge: StateGauge, value: Option<i64>| match value {
            Some(v) => metrics.set(gauge, v),
            None => metrics.clear(gauge),
        };
        let secrets = self.core.vault.count().await;
        if let Err(e) = &secrets {
            tracing::debug!(error = %e, "metrics: cannot count secrets");
        }
        set(StateGauge::Secrets, secrets.ok().map(|n| i64::try_from(n).unwrap_or(i64::MAX)));
        let size = ["palyra.db", "palyra.db-wal"]
            .iter()
            .filter_map(|name| std::fs::metadata(self.core.data_dir.join(name)).ok())
            .map(|m| m.len())
            .sum::<u64>();
        set(StateGauge::DbSizeBytes, Some(i64::try_from(size).unwrap_or(i64::MAX)));
        // The last committed sequence, kept by the audit writer: no query.
        let committed = *self.audit.committed().borrow();
        set(StateGauge::AuditRecords, Some(i64::try_from(committed).unwrap_or(i64::MAX)));
        let unix = |t: SystemTime| crate::metrics::unix_seconds(t);
        // The server certificate's expiry is set by the gRPC edge, which serves (and renews) it.
        let devices = self.registry.devices().await;
        let soonest = devices.ok().and_then(|devices| {
            devices
                .iter()
                .filter(|d| d.status == crate::identity::DeviceStatus::Active)
                .map(|d| d.certificate_expires_at)
                .min()
        });
        set(StateGauge::DeviceCertificateExpiry, soonest.and_then(unix));
        set(StateGauge::EventSubscribers, Some(i64::try_from(self.events.subscribers()).unwrap_or(i64::MAX)));
        set(StateGauge::EventLagged, Some(i64::try_from(self.events.lagged()).unwrap_or(i64::MAX)));
    }

    /// The auth profiles.
    pub fn auth(&self) -> &crate::auth::Profiles {
        &self.auth
    }

    /// Console login tokens and sessions.
    pub fn logins(&self) -> &crate::login::Logins {
        &self.logins
    }

    /// The vault.
    pub fn vault(&self) -> &Vault {
        &self.core.vault
    }
}

/// Why a node could not be initialised or started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// Opening the data dir, database or root key failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// Identity, CA or registry failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The policies could not be loaded.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A private file could not be written.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
}

impl Node {
    /// Opens (initialising on first use) the node in `data_dir`: root key, identity, CA,
    /// server certificate, operator credentials, policies, audit log. Idempotent; never
    /// overwrites anything that exists.
    pub async fn open(data_dir: &Path, options: NodeOptions) -> Result<Self, InitError> {
        let server_names = options.server_names.clone();
        let names = server_names.clone();
        let device_certificate_lifetime = options.device_certificate_lifetime;
        let metrics = if options.metrics {
            let grpc: Vec<&'static str> =
                crate::policy::actions::ALL.iter().copied().filter(|a| a.contains('/')).collect();
            Metrics::new(&grpc, env!("CARGO_PKG_VERSION"))
        } else {
            Metrics::disabled()
        };
        let core = NodeCore::open(data_dir, options).await?;
        let layout = Layout::new(data_dir);
        let store_key = core.keys.identity_store_key();
        let identity_dir = layout.identity_dir();
        let identity = blocking_init(move || {
            let secrets = FilesystemSecretStore::open(&identity_dir, store_key)?;
            // Also renews the server certificate when it is due.
            let identity = NodeIdentity::load_or_create(&secrets, &server_names, SystemTime::now())?;
            let operator = ensure_operator_identity(&secrets)?;
            Ok((identity, operator))
        })
        .await?;
        let (identity, operator_identity) = identity;
        let identity = Arc::new(identity.with_device_certificate_lifetime(device_certificate_lifetime));
        let operator = ensure_operator(&core.store, &identity, &operator_identity, &layout).await?;
        let starter = core.clone();
        let audit = blocking_init(move || starter.start_audit().map_err(InitError::from)).await?;
        // Checkpoints are signed with the node's identity key (its public half is what
        // GetNodeIdentity shows and witnesses pin).
        let signing = Arc::clone(&identity);
        audit.set_signer(crate::audit::CheckpointSigner {
            public_key: identity.device().signing_public_key(),
            sign: Arc::new(move |message| signing.device().sign(message)),
        });
        let policies = Arc::new(Policies::load_or_init(Arc::new(core.store.clone()), audit.clone()).await?);
        let events = EventLog::new(Arc::new(core.store.clone()));
        let peers = PeerResolver::new(Arc::new(core.store.clone()));
        let gate = Gate {
            engine: Arc::clone(policies.engine()),
            audit: audit.clone(),
            peers: peers.clone(),
            metrics: metrics.clone(),
        };
        let registry =
            Arc::new(Registry::new(Arc::clone(&identity), Arc::new(core.store.clone()), gate.clone()));
        let auth = crate::auth::Profiles::new(Arc::new(core.store.clone()), core.vault.clone());
        let pairing = Arc::new(Pairing::new(
            Arc::new(core.store.clone()),
            Arc::clone(&identity),
            Arc::clone(&core.keys),
            gate.clone(),
        ));
        Ok(Node {
            core,
            identity,
            policies,
            audit,
            operator,
            events,
            peers,
            registry,
            gate,
            auth,
            logins: crate::login::Logins::default(),
            pairing,
            server_names: Arc::from(names),
            metrics,
        })
    }

    /// The server certificate chain and key to serve at `now`: re-issued (and stored) when the
    /// current one is due for renewal. Returns `None` when `current_der` is still the one to use.
    /// Blocking (reads and may write the sealed identity store).
    pub fn refresh_server_certificate(
        &self,
        current_der: &[u8],
        now: SystemTime,
    ) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, InitError> {
        let layout = Layout::new(&self.core.data_dir);
        let secrets =
            FilesystemSecretStore::open(&layout.identity_dir(), self.core.keys.identity_store_key())?;
        let identity = NodeIdentity::load_or_create(&secrets, &self.server_names, now)?;
        if identity.server_certificate().cert_der.as_ref() == current_der {
            return Ok(None);
        }
        Ok(Some((identity.server_cert_chain(), identity.server_private_key()?)))
    }
}

async fn blocking_init<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, InitError> + Send + 'static,
) -> Result<T, InitError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| InitError::Node(NodeError::Internal(e.to_string())))?
}

/// The operator's Ed25519 identity, created once and kept sealed.
fn ensure_operator_identity(secrets: &FilesystemSecretStore) -> Result<DeviceIdentity, InitError> {
    if let Some(bytes) = secrets.get(OPERATOR_IDENTITY)? {
        return Ok(DeviceIdentity::from_bytes(&bytes)?);
    }
    let identity = DeviceIdentity::generate()?;
    secrets.create(OPERATOR_IDENTITY, &identity.to_bytes())?;
    Ok(identity)
}

/// The operator's credentials in `operator/` and its registry entry. Files are written before
/// the registry entry and never overwritten; a run interrupted in between is completed by the
/// next one.
async fn ensure_operator(
    store: &dyn DeviceStore,
    node: &NodeIdentity,
    operator: &DeviceIdentity,
    layout: &Layout,
) -> Result<DeviceId, InitError> {
    let dir = layout.operator_dir();
    let id = operator.id();
    let cert_path = dir.join("cert.pem");
    let now = SystemTime::now();
    let not_after = if cert_path.exists() {
        let pem = fsutil::read_private(&cert_path)?;
        crate::identity::ca::certificate_not_after_pem(&pem).unwrap_or(now)
    } else {
        fsutil::ensure_private_dir(&dir)?;
        let (key_pem, csr_pem) = generate_tls_key_and_csr(id)?;
        let issued =
            node.ca().issue_client_certificate(&csr_pem, id, Role::Admin, OPERATOR_CERT_VALIDITY, now)?;
        fsutil::write_private_atomic(&dir.join("ca.pem"), node.ca().certificate_pem().as_bytes(), true)?;
        fsutil::write_private_atomic(&dir.join("key.pem"), key_pem.as_bytes(), true)?;
        fsutil::write_private_atomic(&cert_path, issued.cert_pem.as_bytes(), false)?;
        tracing::info!(device_id = %id, "created the operator's credentials in {}", dir.display());
        issued.not_after
    };
    if store.get(id).await?.is_none() {
        store
            .insert(Device {
                id,
                name: "operator".to_owned(),
                fingerprint: operator.fingerprint(),
                signing_public_key: operator.signing_public_key(),
                role: Role::Admin,
                status: DeviceStatus::Active,
                paired_at: now,
                certificate_expires_at: not_after,
                revoked_at: None,
                revoke_reason: None,
                scopes: Vec::new(),
            })
            .await?;
    }
    Ok(id)
}
