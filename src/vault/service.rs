//! [`Vault`], the vault service: validates, seals with the current KEK generation, opens,
//! lists, deletes and rotates, over a [`BlobBackend`]. It does not authorize (callers ask the
//! policy engine first) and knows no SQL or transport.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use ring::aead::LessSafeKey;

use super::store::{BlobBackend, ListQuery, PutRecord, RewrapFn, SealFn};
use super::{
    Binding, DEFAULT_MAX_VALUE_LEN, DEFAULT_PAGE_SIZE, EnvelopeError, KeyHierarchy, MAX_PAGE_SIZE, ObjectId,
    Rotation, Scope, SecretKey, SecretMetadata, SecretValue, SecretVersion, VaultError, envelope,
};

/// Vault settings.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// Largest value accepted, in bytes.
    pub max_value_len: usize,
    /// How long a point read's checked (still sealed) row may answer the same read again,
    /// until the next write at the latest; zero: never. A storage backend's concern, set here
    /// with the rest of the vault's settings (`read_cache_ms` in `palyra.toml`).
    pub read_cache: Duration,
}

/// The default of [`VaultConfig::read_cache`].
pub const DEFAULT_READ_CACHE: Duration = Duration::from_secs(1);

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig { max_value_len: DEFAULT_MAX_VALUE_LEN, read_cache: DEFAULT_READ_CACHE }
    }
}

/// Most KEK generations kept derived in memory.
const MAX_CACHED_KEKS: usize = 64;

/// KEKs by generation, derived once each.
struct Keks {
    hierarchy: Arc<KeyHierarchy>,
    cache: RwLock<HashMap<u32, Arc<LessSafeKey>>>,
}

impl Keks {
    fn get(&self, generation: u32) -> Arc<LessSafeKey> {
        if let Ok(cache) = self.cache.read()
            && let Some(kek) = cache.get(&generation)
        {
            return Arc::clone(kek);
        }
        let kek = Arc::new(self.hierarchy.vault_kek(generation));
        // The generation comes from stored bytes: never let tampered rows grow the cache.
        if let Ok(mut cache) = self.cache.write()
            && cache.len() < MAX_CACHED_KEKS
        {
            cache.insert(generation, Arc::clone(&kek));
        }
        kek
    }
}

/// The vault.
#[derive(Clone)]
pub struct Vault {
    backend: Arc<dyn BlobBackend>,
    keks: Arc<Keks>,
    config: VaultConfig,
    /// One rotation at a time.
    rotation: Arc<tokio::sync::Mutex<()>>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault").field("backend", &self.backend).field("config", &self.config).finish()
    }
}

/// How many envelopes one rotation transaction rewraps.
const REWRAP_BATCH: usize = 256;

impl Vault {
    /// A vault over `backend`, with KEKs from `keys`.
    pub fn new(backend: Arc<dyn BlobBackend>, keys: Arc<KeyHierarchy>, config: VaultConfig) -> Self {
        Vault {
            backend,
            keks: Arc::new(Keks { hierarchy: keys, cache: RwLock::new(HashMap::new()) }),
            config,
            rotation: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &VaultConfig {
        &self.config
    }

    /// Writes a new version of `scope`/`key`. `expected_version`: see [`PutRecord`].
    pub async fn put(
        &self,
        scope: &Scope,
        key: &SecretKey,
        value: SecretValue,
        expected_version: Option<u64>,
    ) -> Result<SecretMetadata, VaultError> {
        if value.len() > self.config.max_value_len {
            return Err(VaultError::ValueTooLarge { size: value.len(), max: self.config.max_value_len });
        }
        let record = PutRecord {
            scope: scope.clone(),
            key: key.clone(),
            object_id: ObjectId::new(scope, key),
            expected_version,
            size: u32::try_from(value.len())
                .map_err(|_| VaultError::InvalidArgument("value too large".into()))?,
            now: SystemTime::now(),
        };
        let keks = Arc::clone(&self.keks);
        let (scope, key) = (scope.clone(), key.clone());
        let seal: SealFn = Box::new(move |version, generation| {
            let binding = Binding { scope: &scope, key: &key, version };
            envelope::seal(&keks.get(generation), generation, binding, value.expose()).map_err(|e| match e {
                EnvelopeError::Random => VaultError::Random,
                other => VaultError::InvalidArgument(other.to_string()),
            })
        });
        self.backend.put(record, seal).await
    }

    /// Reads the latest version (`version == None`) or a given one.
    pub async fn get(
        &self,
        scope: &Scope,
        key: &SecretKey,
        version: Option<u64>,
    ) -> Result<(SecretValue, SecretMetadata), VaultError> {
        let stored = self.backend.get(scope.clone(), key.clone(), version.filter(|&v| v != 0)).await?;
        let binding = Binding { scope, key, version: stored.version };
        let value = envelope::open(&stored.envelope, binding, |generation| Some(self.keks.get(generation)))
            .map_err(|_| VaultError::Integrity {
            object_id: stored.metadata.object_id.clone(),
            version: stored.version,
        })?;
        // The metadata moves out unless a cache still holds the row.
        let metadata = Arc::try_unwrap(stored).map_or_else(|shared| shared.metadata.clone(), |s| s.metadata);
        Ok((value, metadata))
    }

    /// Lists metadata under `scope` (its sub-scopes too with `recursive`), in (scope, key)
    /// order, `page_size` at a time (0 = default, at most [`MAX_PAGE_SIZE`]). Returns the page
    /// and the cursor of the next one.
    pub async fn list(
        &self,
        scope: &Scope,
        recursive: bool,
        include_deleted: bool,
        page_size: usize,
        after: Option<(Scope, SecretKey)>,
    ) -> Result<(Vec<SecretMetadata>, Option<(Scope, SecretKey)>), VaultError> {
        self.list_under(Some(scope), recursive, include_deleted, page_size, after).await
    }

    /// [`list`](Self::list) of `scope`, or with `None` of every scope (recursive implied).
    pub async fn list_under(
        &self,
        scope: Option<&Scope>,
        recursive: bool,
        include_deleted: bool,
        page_size: usize,
        after: Option<(Scope, SecretKey)>,
    ) -> Result<(Vec<SecretMetadata>, Option<(Scope, SecretKey)>), VaultError> {
        let limit = if page_size == 0 { DEFAULT_PAGE_SIZE } else { page_size.min(MAX_PAGE_SIZE) };
        // One extra row tells whether another page follows without a second query.
        let mut rows = self
            .backend
            .list(ListQuery { scope: scope.cloned(), recursive, include_deleted, after, limit: limit + 1 })
            .await?;
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|m| (m.scope.clone(), m.key.clone()))
        } else {
            None
        };
        Ok((rows, next))
    }

    /// Deletes a secret. Soft delete keeps its history (a later put makes the next version);
    /// `destroy` also erases every version's ciphertext and DEK.
    pub async fn delete(
        &self,
        scope: &Scope,
        key: &SecretKey,
        destroy: bool,
    ) -> Result<SecretMetadata, VaultError> {
        self.backend.delete(scope.clone(), key.clone(), destroy, SystemTime::now()).await
    }

    /// The scopes that hold at least one live secret, in order, at most `limit` (for a
    /// browsable tree; never values).
    pub async fn scopes(&self, limit: usize) -> Result<Vec<Scope>, VaultError> {
        self.backend.scopes(limit).await
    }

    /// Live (not deleted) secrets (the `palyra_secrets` metric).
    pub async fn count(&self) -> Result<u64, VaultError> {
        self.backend.count_live().await
    }

    /// Metadata and every version's summary.
    pub async fn history(
        &self,
        scope: &Scope,
        key: &SecretKey,
    ) -> Result<(SecretMetadata, Vec<SecretVersion>), VaultError> {
        self.backend.history(scope.clone(), key.clone()).await
    }

    /// Starts a new KEK generation and rewraps every DEK under it, without re-encrypting any
    /// value. Online: reads and writes go on meanwhile. Crash-safe: each batch is one
    /// transaction and every envelope records its generation, so an interrupted rotation
    /// leaves every secret readable; the next rotation (or [`Vault::resume_rotation`])
    /// finishes it.
    pub async fn rotate_key(&self) -> Result<Rotation, VaultError> {
        let _one_at_a_time = self.rotation.lock().await;
        let mut rewrapped = self.finish_interrupted().await?;
        let generation = self.backend.begin_rotation().await?;
        rewrapped += self.rewrap_all().await?;
        Ok(Rotation { generation, rewrapped })
    }

    /// Finishes a rotation that a crash interrupted. Returns how many envelopes it rewrapped.
    pub async fn resume_rotation(&self) -> Result<u64, VaultError> {
        let _one_at_a_time = self.rotation.lock().await;
        self.finish_interrupted().await
    }

    /// Rewraps what an interrupted rotation left, if one did (a marker, not a scan: a node
    /// with nothing to finish starts without reading its envelopes).
    async fn finish_interrupted(&self) -> Result<u64, VaultError> {
        if self.backend.rewrap_pending().await? { self.rewrap_all().await } else { Ok(0) }
    }

    async fn rewrap_all(&self) -> Result<u64, VaultError> {
        let keks = Arc::clone(&self.keks);
        let rewrap: RewrapFn = Arc::new(move |binding: Binding<'_>, bytes: &[u8], target: u32| {
            let old = envelope::parse(bytes)?.generation;
            envelope::rewrap(bytes, binding, &keks.get(old), &keks.get(target), target)
        });
        let mut total = 0;
        let mut failed = 0;
        let mut after = None;
        loop {
            let progress = self.backend.rewrap_batch(after, REWRAP_BATCH, Arc::clone(&rewrap)).await?;
            total += progress.rewrapped;
            failed += progress.failed;
            if progress.failed > 0 {
                tracing::warn!(
                    failed = progress.failed,
                    "rotation left envelopes that failed their integrity check"
                );
            }
            match progress.last {
                Some(last) => after = Some(last),
                None => {
                    // Every envelope is at the target now: later starts need not look. Not
                    // while some failed their check: each start tries (and warns) again.
                    if failed == 0 {
                        self.backend.rewrap_finished(progress.generation).await?;
                    }
                    return Ok(total);
                }
            }
        }
    }
}
