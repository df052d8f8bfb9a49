//! Backup, restore and the recovery kit of a node's data directory: the composition of the
//! backup format and recovery seal (`backup`), the database snapshot (`storage::snapshot`),
//! the root-key backends and the data dir's files.
//!
//! - [`backup`] runs with the node serving or stopped and takes no lock: the database is copied
//!   with SQLite's online backup API (one read transaction), the root key is read from the
//!   backend the database records, the sealed identity files and the operator's (and a paired
//!   device's) credentials are read as they are. The file is written under a temporary name
//!   beside the target, fsynced, and linked into place (never over an existing file).
//! - [`create_recovery_kit`] runs on a stopped node (the caller holds the data dir's lock): the
//!   audit record goes through the node's own hash chain, which a second writer beside a
//!   running `serve` would fork. The kit's seal is stored as `keys/recovery.sealed` with an
//!   HMAC under the root key, and every later backup carries it.
//! - [`restore`] checks the whole file (every chunk, the final one present) while writing it
//!   into a temporary directory beside the target, then stores the root key in this machine's
//!   backend, keeps the kit whose code opened the backup as the restored node's kit, and
//!   renames the directory into place: a failure or a kill leaves the target as it was (absent
//!   or empty).

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::audit::{Audit, AuditDecision, AuditEntry, NODE_PRINCIPAL};
use crate::backup::format::Summary;
use crate::backup::{self, BackupError, BackupReader, BackupWriter, Header, RecoveryCode, Share};
use crate::config::{BackupConfig, DEFAULT_BACKUP_KEEP, KeyBackendChoice, Layout};
use crate::fsutil::{self, FsError};
use crate::node::{NodeCore, NodeOptions};
use crate::storage::snapshot;
use crate::vault::keychain::KeychainKeyProvider;
use crate::vault::keys::FileKeyProvider;
use crate::vault::{KeyBackend, KeyError, KeyHierarchy, KeyProvider, RootKey};

/// The recovery kit's seal in a data dir: the seal, then its HMAC under the root key.
pub(crate) const KIT_FILE: &str = "keys/recovery.sealed";
/// The principal and action of the kit's audit record.
pub(crate) const KIT_ACTION: &str = "palyra recovery-kit";
const KIT_PRINCIPAL: &str = "local-operator";
/// The directories of the data dir that go into a backup, whole (one level).
const BACKED_UP_DIRS: [&str; 3] = ["identity", "operator", "client"];

/// Why a backup, restore or kit failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum RecoveryError {
    /// The backup file or the recovery code (integrity: exit 5, except a mistyped code).
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// Refused before anything was done (an existing file, a non-empty dir, no kit).
    #[error("{0}")]
    Refused(String),
    /// Anything else: the data dir, the database, the key backend, the disk.
    #[error("{0}")]
    Failed(String),
}

impl RecoveryError {
    /// A damaged, truncated, foreign or newer backup, or a code that does not open it.
    pub(crate) fn is_integrity(&self) -> bool {
        matches!(self, RecoveryError::Backup(e) if e.is_integrity())
    }

    /// A mistyped recovery code.
    pub(crate) fn is_usage(&self) -> bool {
        matches!(self, RecoveryError::Backup(BackupError::BadCode(_)))
    }
}

impl From<FsError> for RecoveryError {
    fn from(e: FsError) -> Self {
        RecoveryError::Failed(e.to_string())
    }
}

impl From<KeyError> for RecoveryError {
    fn from(e: KeyError) -> Self {
        RecoveryError::Failed(e.to_string())
    }
}

impl From<crate::store_error::StoreError> for RecoveryError {
    fn from(e: crate::store_error::StoreError) -> Self {
        RecoveryError::Failed(e.to_string())
    }
}

fn io_error(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> RecoveryError {
    let path = path.display().to_string();
    let what = what.to_owned();
    move |e| RecoveryError::Failed(format!("cannot {what} {path}: {e}"))
}

/// A path beside `target` that no one else uses: `.NAME.SUFFIX-PID-N`.
fn beside(target: &Path, suffix: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    dir.join(format!(".{name}.{suffix}-{}-{n}", std::process::id()))
}

/// Removes what killed runs left in `dir`: entries whose name `matches` and ends in
/// `-PID-N` with a PID that no longer runs (a live PID, ours included, is left alone).
fn remove_stale(dir: &Path, matches: impl Fn(&str) -> bool) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !matches(&name) {
            continue;
        }
        let pid = name.rsplit('-').nth(1).and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|pid| pid != std::process::id() as i32 && !process_alive(pid)) {
            let path = entry.path();
            let removed = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            match removed {
                Ok(()) => tracing::info!(path = %path.display(), "removed what an interrupted backup or restore left"),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove a leftover"),
            }
        }
    }
}

#[cfg(unix)]
fn process_alive(pid: i32) -> bool {
    match rustix::process::Pid::from_raw(pid) {
        // Signal 0: only "no such process" means it is gone (EPERM: alive, another user's).
        Some(pid) => !matches!(rustix::process::test_kill_process(pid), Err(rustix::io::Errno::SRCH)),
        None => true,
    }
}

#[cfg(not(unix))]
fn process_alive(_pid: i32) -> bool {
    true
}

/// Removes a file or directory when dropped, unless kept.
struct Cleanup(Option<PathBuf>);

impl Cleanup {
    fn keep(&mut self) {
        self.0 = None;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        }
    }
}

/// The root key from `backend` (the one the database records), or an error naming where it
/// was looked for.
fn load_root_key(backend: KeyBackend, data_dir: &Path, key_id: &str) -> Result<RootKey, RecoveryError> {
    let provider: Box<dyn KeyProvider> = match backend {
        KeyBackend::File => Box::new(FileKeyProvider::new(data_dir)),
        KeyBackend::Keychain => Box::new(KeychainKeyProvider::open(key_id)?),
    };
    provider.load()?.ok_or_else(|| {
        RecoveryError::Failed(format!("this node's root key is missing from its {backend} backend ({provider:?})"))
    })
}

fn kit_mac(keys: &KeyHierarchy, seal: &[u8]) -> hmac::Tag {
    hmac::sign(&keys.recovery_kit_key(), seal)
}

/// What [`backup`] wrote.
#[derive(Debug, Clone)]
pub(crate) struct BackupOutcome {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Files inside (the database included).
    pub files: u64,
    /// How long it took.
    pub seconds: f64,
}

/// `palyra backup --out FILE` on the node in `data_dir`, serving or stopped. Blocking.
pub(crate) fn backup(data_dir: &Path, out: &Path) -> Result<BackupOutcome, RecoveryError> {
    let started = Instant::now();
    if out.exists() {
        return Err(RecoveryError::Refused(format!(
            "{} exists; a backup never overwrites a file: choose a new name",
            out.display()
        )));
    }
    let kit_path = data_dir.join(KIT_FILE);
    if !kit_path.exists() {
        return Err(RecoveryError::Refused(format!(
            "this node has no recovery kit ({} is missing): run `palyra recovery-kit` with the node stopped first, \
             since a backup is restored with the kit's code",
            kit_path.display()
        )));
    }
    let kit = fsutil::read_private(&kit_path)?;
    if kit.len() != backup::recovery::SEAL_LEN + 32 {
        return Err(RecoveryError::Failed(format!(
            "{} is malformed; run `palyra recovery-kit` again",
            kit_path.display()
        )));
    }
    let (seal, mac) = kit.split_at(backup::recovery::SEAL_LEN);

    // The database as of one commit, in a private directory inside the data dir (and those a
    // killed backup left, removed).
    remove_stale(data_dir, |n| n.starts_with(".backup-"));
    let work = data_dir.join(format!(".backup-{}-{}", std::process::id(), unique()?));
    create_new_private_dir(&work)?;
    let _work_cleanup = Cleanup(Some(work.clone()));
    let db_copy = work.join("palyra.db");
    let meta = snapshot::snapshot(&data_dir.join("palyra.db"), &db_copy)?;
    let backend = meta
        .key_backend
        .as_deref()
        .and_then(KeyBackend::parse)
        .ok_or_else(|| RecoveryError::Failed("the database records no root-key backend; run `palyra init`".to_owned()))?;
    let root = load_root_key(backend, data_dir, meta.key_id.as_deref().unwrap_or_default())?;
    let keys = KeyHierarchy::new(&root);
    drop(root);
    if hmac::verify(&keys.recovery_kit_key(), seal, mac).is_err() {
        return Err(RecoveryError::Failed(format!(
            "{} was not made for this node's root key; run `palyra recovery-kit` again",
            kit_path.display()
        )));
    }

    let mut backup_id = [0u8; 16];
    SystemRandom::new().fill(&mut backup_id).map_err(|_| BackupError::Random)?;
    let header = Header { backup_id, created_at_ms: crate::unix_time::unix_ms(SystemTime::now()), recovery_seal: seal.to_vec() };

    let tmp = beside(out, "tmp");
    if let (Some(dir), Some(name)) = (out.parent(), out.file_name()) {
        let prefix = format!(".{}.tmp-", name.to_string_lossy());
        remove_stale(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }, |n| n.starts_with(&prefix));
    }
    let mut tmp_cleanup = Cleanup(Some(tmp.clone()));
    let file = create_private(&tmp)?;
    let mut writer = BackupWriter::new(BufWriter::with_capacity(1 << 20, file), &header, keys.backup_key(&backup_id))?;
    let db_size = fs::metadata(&db_copy).map_err(io_error("read", &db_copy))?.len();
    let mut db = File::open(&db_copy).map_err(io_error("open", &db_copy))?;
    writer.add_file("palyra.db", db_size, &mut db)?;
    drop(db);
    let mut files = 1;
    for (path, bytes) in data_dir_files(data_dir)? {
        writer.add_file(&path, bytes.len() as u64, &mut bytes.as_slice())?;
        files += 1;
    }
    let file = writer
        .finish()?
        .into_inner()
        .map_err(|e| RecoveryError::Failed(format!("cannot write {}: {}", tmp.display(), e.error())))?;
    file.sync_all().map_err(io_error("fsync", &tmp))?;
    let bytes = file.metadata().map_err(io_error("read", &tmp))?.len();
    drop(file);
    // A hard link fails if the target exists: never over a file made meanwhile.
    fs::hard_link(&tmp, out).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            RecoveryError::Refused(format!("{} exists; a backup never overwrites a file", out.display()))
        } else {
            RecoveryError::Failed(format!("cannot create {}: {e}", out.display()))
        }
    })?;
    fs::remove_file(&tmp).map_err(io_error("remove", &tmp))?;
    tmp_cleanup.keep();
    fsutil::sync_dir(out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?;
    Ok(BackupOutcome { path: out.to_path_buf(), bytes, files, seconds: started.elapsed().as_secs_f64() })
}

fn unique() -> Result<u64, RecoveryError> {
    let mut bytes = [0u8; 8];
    SystemRandom::new().fill(&mut bytes).map_err(|_| BackupError::Random)?;
    Ok(u64::from_le_bytes(bytes))
}

/// Creates `dir` (0700), failing if anything is there already: a work dir beside the target
/// may sit in a directory others can write, and must be ours, not one planted for us.
fn create_new_private_dir(dir: &Path) -> Result<(), RecoveryError> {
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(fsutil::DIR_MODE);
    }
    builder.create(dir).map_err(io_error("create", dir))?;
    fsutil::check_private(dir, fsutil::DIR_MODE)?;
    Ok(())
}

fn create_private(path: &Path) -> Result<File, RecoveryError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(fsutil::FILE_MODE);
    }
    options.open(path).map_err(io_error("create", path))
}

/// A file of the data dir: its path in the backup and its bytes (wiped on drop).
type DataDirFile = (String, Zeroizing<Vec<u8>>);

/// The files of the data dir a backup carries besides the database: `palyra.toml` and every
/// file of `identity/`, `operator/` and `client/` (temporary files, named with a leading dot,
/// excluded). Never `keys/`: the root key travels sealed under the recovery code.
fn data_dir_files(data_dir: &Path) -> Result<Vec<DataDirFile>, RecoveryError> {
    let layout = Layout::new(data_dir);
    let mut out = Vec::new();
    let config = layout.config_file();
    if config.is_file() {
        out.push(("palyra.toml".to_owned(), Zeroizing::new(fs::read(&config).map_err(io_error("read", &config))?)));
    }
    for dir in BACKED_UP_DIRS {
        let path = data_dir.join(dir);
        if !path.is_dir() {
            continue;
        }
        let mut names = Vec::new();
        for entry in fs::read_dir(&path).map_err(io_error("list", &path))? {
            let entry = entry.map_err(io_error("list", &path))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.file_type().map_err(io_error("read", &path))?.is_file() {
                continue;
            }
            names.push(name);
        }
        names.sort();
        for name in names {
            let file = path.join(&name);
            // operator/key.pem is a private key in the clear: wiped once written.
            out.push((format!("{dir}/{name}"), Zeroizing::new(fsutil::read_private(&file)?)));
        }
    }
    Ok(out)
}

/// A new kit: the code, or only its shares (the code itself is never shown then).
#[derive(Debug)]
pub(crate) enum RecoveryKit {
    /// One recovery code.
    Code(RecoveryCode),
    /// `threshold` of these give the code back.
    Shares(Vec<Share>),
}

/// `palyra recovery-kit [--shares N --threshold K]` on the stopped node in `data_dir` (the
/// caller holds its lock): a fresh code (split K-of-N with `split = Some((K, N))`), the root
/// key sealed under it in `keys/recovery.sealed` (replacing an older
/// kit: backups made before keep the seal of the code they were made with), audited first.
pub(crate) async fn create_recovery_kit(
    data_dir: &Path,
    split: Option<(u8, u8)>,
) -> Result<RecoveryKit, RecoveryError> {
    let failed = |e: &dyn std::fmt::Display| RecoveryError::Failed(e.to_string());
    let core = NodeCore::open(data_dir, NodeOptions::default()).await.map_err(|e| failed(&e))?;
    let key_id = core.store.meta("key_id").await?.unwrap_or_default();
    let (backend, dir) = (core.key_backend, data_dir.to_path_buf());
    let starter = core.clone();
    let (kit, sealed, audit) = tokio::task::spawn_blocking(move || {
        let root = load_root_key(backend, &dir, &key_id)?;
        let audit = starter.start_audit()?;
        let code = RecoveryCode::generate()?;
        // Split before anything is stored: bad numbers fail here.
        let kit = match split {
            Some((k, n)) => RecoveryKit::Shares(backup::shares::split(&code, k, n)?),
            None => RecoveryKit::Code(RecoveryCode::from_values(&code.values())?),
        };
        let seal = backup::seal_root_key(&code, &root)?;
        let keys = KeyHierarchy::new(&root);
        let mut sealed = seal.clone();
        sealed.extend_from_slice(kit_mac(&keys, &seal).as_ref());
        Ok::<_, RecoveryError>((kit, sealed, audit))
    })
    .await
    .map_err(|e| failed(&e))??;
    if let Some(problem) = audit.integrity() {
        return Err(RecoveryError::Failed(format!("the audit log fails its check ({problem}); nothing was created")));
    }
    // Recorded before the kit exists: a kit is never there unaudited.
    audit
        .record_committed(AuditEntry {
            at: SystemTime::now(),
            principal: KIT_PRINCIPAL.to_owned(),
            action: KIT_ACTION.to_owned(),
            resource: "Node".to_owned(),
            decision: AuditDecision::Allow,
            reason: format!(
                "recovery kit created ({}; offline, pid {}); backups from now on carry its seal",
                match split {
                    Some((k, n)) => format!("{k}-of-{n} shares"),
                    None => "one code".to_owned(),
                },
                std::process::id()
            ),
        })
        .await
        .map_err(|e| failed(&e))?;
    let path = data_dir.join(KIT_FILE);
    tokio::task::spawn_blocking(move || fsutil::write_private_atomic(&path, &sealed, true))
        .await
        .map_err(|e| failed(&e))??;
    core.close();
    Ok(kit)
}

/// What [`restore`] placed.
#[derive(Debug, Clone)]
pub(crate) struct RestoreOutcome {
    /// Files written (the database included).
    pub files: u64,
    /// Where the root key now lives.
    pub key_backend: KeyBackend,
    /// How long it took.
    pub seconds: f64,
}

/// `palyra --data-dir NEW restore FILE --recovery-code CODE`. Blocking (the keychain too).
pub(crate) fn restore(
    file: &Path,
    target: &Path,
    code: &RecoveryCode,
    choice: KeyBackendChoice,
) -> Result<RestoreOutcome, RecoveryError> {
    let started = Instant::now();
    check_empty(target)?;
    let input = File::open(file).map_err(io_error("open", file))?;
    let mut input = BufReader::with_capacity(1 << 20, input);
    let (header, hash) = Header::read(&mut input)?;
    let root = backup::open_root_key(code, &header.recovery_seal)?;
    let keys = KeyHierarchy::new(&root);
    let mut body = BackupReader::new(input, hash, keys.backup_key(&header.backup_id));

    let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io_error("create", parent))?;
    if let Some(name) = target.file_name() {
        let prefix = format!(".{}.restore-", name.to_string_lossy());
        remove_stale(parent, |n| n.starts_with(&prefix));
    }
    let work = beside(target, "restore");
    create_new_private_dir(&work)?;
    let mut cleanup = Cleanup(Some(work.clone()));
    let Summary { files, .. } = backup::read_entries(&mut body, |path, _size, content| place(&work, path, content))?;
    let db = work.join("palyra.db");
    if !db.is_file() {
        return Err(BackupError::Malformed("it holds no database".to_owned()).into());
    }
    snapshot::check_restored(&db)?;
    // A key id of its own: a restored copy beside the original on one machine never shares
    // (and a later `key migrate` of one never deletes) the other's keychain item.
    let key_id = ulid::Ulid::generate().to_string().to_lowercase();
    let choice = configured_backend(&work, choice);
    // The kit whose code opened this backup stays the node's kit: later backups of the
    // restored node open with the same code.
    let mut kit = header.recovery_seal.clone();
    kit.extend_from_slice(kit_mac(&keys, &header.recovery_seal).as_ref());
    fsutil::write_private_atomic(&work.join(KIT_FILE), &kit, false)?;
    let key_backend = store_root_key(&work, &key_id, &root, choice)?;
    snapshot::record_key_backend(&db, key_backend.as_str(), &key_id)?;
    drop(root);
    // The node opens from what was placed (its key, its rows' MACs, its audit head), and its
    // chain records where it came from, before anything is renamed into place.
    let (created_at_ms, id) = (header.created_at_ms, hex_prefix(&header.backup_id));
    tokio::runtime::Handle::try_current()
        .map_err(|e| RecoveryError::Failed(format!("internal error: {e}")))?
        .block_on(record_restore(&work, created_at_ms, &id, key_backend))?;
    for dir in [work.join("keys"), work.join("identity"), work.join("operator"), work.join("client"), work.clone()] {
        if dir.is_dir() {
            fsutil::sync_dir(&dir)?;
        }
    }
    // The one step that makes it visible: rename(2) replaces an absent or empty directory.
    check_empty(target)?;
    fs::rename(&work, target).map_err(io_error("move the restored node into", target))?;
    cleanup.keep();
    fsutil::sync_dir(parent)?;
    Ok(RestoreOutcome { files, key_backend, seconds: started.elapsed().as_secs_f64() })
}

/// The principal and action of a restore's audit record.
pub(crate) const RESTORE_ACTION: &str = "palyra restore";
/// The action of a scheduled backup's audit record (its principal: the node).
pub(crate) const BACKUP_ACTION: &str = "palyra backup";

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Opens the node restored in `work` (with the key just stored) and appends the restore's
/// record to its audit chain; a chain whose sealed head does not match is refused.
async fn record_restore(work: &Path, created_at_ms: u64, backup_id: &str, backend: KeyBackend) -> Result<(), RecoveryError> {
    let failed = |e: &dyn std::fmt::Display| RecoveryError::Failed(format!("the restored node does not open: {e}"));
    let core = NodeCore::open(work, NodeOptions::default()).await.map_err(|e| failed(&e))?;
    let starter = core.clone();
    let audit = tokio::task::spawn_blocking(move || starter.start_audit()).await.map_err(|e| failed(&e))?.map_err(|e| failed(&e))?;
    if let Some(problem) = audit.integrity() {
        core.close();
        return Err(BackupError::Malformed(format!("its audit log does not match its sealed head: {problem}")).into());
    }
    let entry = AuditEntry {
        at: SystemTime::now(),
        principal: KIT_PRINCIPAL.to_owned(),
        action: RESTORE_ACTION.to_owned(),
        resource: "Node".to_owned(),
        decision: AuditDecision::Allow,
        reason: format!(
            "restored from backup {backup_id}… made at unix ms {created_at_ms}; root key in the {backend} backend (pid {})",
            std::process::id()
        ),
    };
    let recorded = audit.record_committed(entry).await;
    core.close();
    recorded.map_err(|e| failed(&e))
}

fn check_empty(target: &Path) -> Result<(), RecoveryError> {
    match fs::read_dir(target) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(RecoveryError::Refused(format!(
                    "{} is not empty; restore only into an empty or absent directory",
                    target.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RecoveryError::Refused(format!("cannot use {} as the restored data dir: {e}", target.display()))),
    }
}

/// Writes one entry under `work` (paths were checked by the reader: no `..`, at most one
/// directory), 0600 in 0700 directories, synced.
fn place(work: &Path, path: &str, content: &mut dyn Read) -> Result<(), BackupError> {
    let dest = work.join(path);
    let io = |e: std::io::Error| BackupError::from_io(e, path);
    if let Some(dir) = dest.parent() {
        fsutil::ensure_private_dir(dir).map_err(|e| BackupError::Io(e.to_string()))?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(fsutil::FILE_MODE);
    }
    let mut file = options.open(&dest).map_err(io)?;
    std::io::copy(content, &mut file).map_err(io)?;
    file.flush().map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(())
}

/// The backend to restore into: `choice`, but with `auto` the `key_backend` the backup's
/// `palyra.toml` names, if it names one (`serve` would refuse any other).
fn configured_backend(work: &Path, choice: KeyBackendChoice) -> KeyBackendChoice {
    let config = Layout::new(work).config_file();
    let named = crate::config::FileConfig::load(&config, true)
        .ok()
        .and_then(|c| c.key_backend)
        .and_then(|b| b.parse::<KeyBackendChoice>().ok())
        .filter(|b| *b != KeyBackendChoice::Auto);
    match (choice, named) {
        (KeyBackendChoice::Auto, Some(named)) => named,
        (choice, Some(named)) if named != choice => {
            tracing::warn!(
                "the restored palyra.toml sets key_backend = {named:?} but the key goes to {choice:?}: \
                 edit palyra.toml before `palyra serve`, which refuses the mismatch"
            );
            choice
        }
        (choice, _) => choice,
    }
}

/// Stores the root key where `choice` says, as `init` would choose: the keychain where one
/// answers (auto), else `keys/root.key` inside the directory being restored.
fn store_root_key(work: &Path, key_id: &str, root: &RootKey, choice: KeyBackendChoice) -> Result<KeyBackend, RecoveryError> {
    let provider: Box<dyn KeyProvider> = match choice {
        KeyBackendChoice::File => Box::new(FileKeyProvider::new(work)),
        KeyBackendChoice::Keychain => Box::new(KeychainKeyProvider::open(key_id)?),
        KeyBackendChoice::Auto => match KeychainKeyProvider::open(key_id) {
            Ok(keychain) => Box::new(keychain),
            Err(e) => {
                tracing::info!(reason = %e, "no OS keychain answered; keeping the restored root key in a 0600 key file");
                Box::new(FileKeyProvider::new(work))
            }
        },
    };
    match provider.store(root) {
        Ok(()) => {}
        // The same node restored again on this machine: its item is there already.
        Err(KeyError::AlreadyExists(where_)) => {
            let same = provider.load()?.is_some_and(|existing| existing.as_bytes() == root.as_bytes());
            if !same {
                return Err(RecoveryError::Failed(format!(
                    "{where_} already holds a different root key for this node's key id; remove it or restore with --key-backend file"
                )));
            }
        }
        Err(e) => return Err(e.into()),
    }
    Ok(provider.backend())
}

/// `[backup]` of `palyra.toml`: a backup into `config.dir` every `config.every`, the newest
/// `keep` kept. A failure is logged with the count so far and tried again at the next tick;
/// a backup cut short (the process stopped) leaves only its temporary name, never a file
/// under the final one. Each backup is recorded in `audit`, and the record committed, before
/// it is made: while the log cannot record, none is made (a failure like any other).
pub(crate) fn spawn_schedule(data_dir: PathBuf, config: BackupConfig, audit: Audit) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = match config.interval() {
            Ok(every) => every,
            Err(e) => {
                tracing::error!(error = %e, "scheduled backups are off");
                return;
            }
        };
        let keep = config.keep.unwrap_or(DEFAULT_BACKUP_KEEP).max(1);
        tracing::info!(dir = %config.dir.display(), ?every, keep, "scheduled backups on");
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut made, mut failures) = (0u64, 0u64);
        loop {
            ticker.tick().await;
            let file = config.dir.join(format!("palyra-{:016}.palyra-backup", crate::unix_time::unix_ms(SystemTime::now())));
            let entry = AuditEntry {
                at: SystemTime::now(),
                principal: NODE_PRINCIPAL.to_owned(),
                action: BACKUP_ACTION.to_owned(),
                resource: "Node".to_owned(),
                decision: AuditDecision::Allow,
                reason: format!("scheduled backup ([backup] of palyra.toml) starting: {}", file.display()),
            };
            // Committed before the backup is made: a file never exists that the log lost.
            let result = match audit.record_committed(entry).await {
                Ok(()) => {
                    let data = data_dir.clone();
                    tokio::task::spawn_blocking(move || scheduled_backup(&data, &file, keep))
                        .await
                        .unwrap_or_else(|e| Err(RecoveryError::Failed(format!("the backup task failed: {e}"))))
                }
                Err(e) => Err(RecoveryError::Failed(format!("the audit log cannot record it: {e}"))),
            };
            match result {
                Ok((outcome, removed)) => {
                    made += 1;
                    tracing::info!(
                        file = %outcome.path.display(),
                        bytes = outcome.bytes,
                        seconds = outcome.seconds,
                        removed,
                        made,
                        failures,
                        "scheduled backup written"
                    );
                }
                Err(e) => {
                    failures += 1;
                    tracing::error!(error = %e, failures, made, "scheduled backup failed; trying again at the next one");
                }
            }
        }
    })
}

/// One scheduled backup into `file` (`DIR/palyra-<unix ms>.palyra-backup`), then the oldest in
/// its directory beyond `keep` removed. Returns what was written and how many were removed.
fn scheduled_backup(data_dir: &Path, file: &Path, keep: usize) -> Result<(BackupOutcome, usize), RecoveryError> {
    let dir = file.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        fsutil::ensure_private_dir(dir)?;
    }
    remove_stale(dir, |n| n.starts_with(".palyra-") && n.contains(".palyra-backup.tmp-"));
    let outcome = backup(data_dir, file)?;
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(io_error("list", dir))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("palyra-") && n.ends_with(".palyra-backup"))
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(keep);
    for name in &names[..excess] {
        let path = dir.join(name);
        fs::remove_file(&path).map_err(io_error("remove the old backup", &path))?;
    }
    Ok((outcome, excess))
}

/// What [`migrate_key`] did.
#[derive(Debug, Clone)]
pub(crate) struct Migration {
    /// Where the key was.
    pub from: KeyBackend,
    /// Where it is now.
    pub to: KeyBackend,
    /// Whether a copy left in the other backend by an interrupted run was removed.
    pub removed_leftover: bool,
}

/// `palyra key migrate --to BACKEND` on the stopped node in `data_dir` (the caller holds its
/// lock). Crash-safe in three steps, each leaving a node that starts: (1) the key is stored in
/// the new backend and read back; (2) `meta.key_backend` is switched in one database write (the
/// commit point: before it the node starts from the old backend, after it from the new); (3)
/// the old copy is removed. A run interrupted after (2) leaves a second copy, which the next
/// run with the same `--to` removes (only if it is the same key).
pub(crate) async fn migrate_key(data_dir: &Path, to: KeyBackend) -> Result<Migration, RecoveryError> {
    let failed = |e: &dyn std::fmt::Display| RecoveryError::Failed(e.to_string());
    let core = NodeCore::open(data_dir, NodeOptions::default()).await.map_err(|e| failed(&e))?;
    let from = core.key_backend;
    let key_id = core.store.meta("key_id").await?.unwrap_or_default();
    let dir = data_dir.to_path_buf();
    let (id, copy_dir) = (key_id.clone(), dir.clone());
    let copied = tokio::task::spawn_blocking(move || -> Result<bool, RecoveryError> {
        let root = load_root_key(from, &copy_dir, &id)?;
        if from == to {
            return remove_copy(other(to), &copy_dir, &id, &root);
        }
        let target = provider_for(to, &copy_dir, &id)?;
        match target.store(&root) {
            Ok(()) => {}
            Err(KeyError::AlreadyExists(where_)) => {
                // A run interrupted after this step: the same key is fine, another is not.
                if !holds(&*target, &root)? {
                    return Err(RecoveryError::Failed(format!(
                        "{where_} already holds a different root key; remove it before migrating"
                    )));
                }
            }
            Err(e) => return Err(e.into()),
        }
        if !holds(&*target, &root)? {
            return Err(RecoveryError::Failed(format!("the {to} backend did not return the key it was given")));
        }
        Ok(false)
    })
    .await
    .map_err(|e| failed(&e))??;
    if from == to {
        core.close();
        return Ok(Migration { from, to, removed_leftover: copied });
    }
    core.store.set_meta("key_backend", to.as_str().to_owned()).await?;
    core.close();
    let removed = tokio::task::spawn_blocking(move || -> Result<bool, RecoveryError> {
        let root = load_root_key(to, &dir, &key_id)?;
        remove_copy(from, &dir, &key_id, &root)
    })
    .await
    .map_err(|e| failed(&e))??;
    Ok(Migration { from, to, removed_leftover: removed })
}

/// Whether `provider` holds exactly `root`.
fn holds(provider: &dyn KeyProvider, root: &RootKey) -> Result<bool, RecoveryError> {
    Ok(provider.load()?.is_some_and(|k| k.as_bytes() == root.as_bytes()))
}

fn other(backend: KeyBackend) -> KeyBackend {
    match backend {
        KeyBackend::File => KeyBackend::Keychain,
        KeyBackend::Keychain => KeyBackend::File,
    }
}

fn provider_for(backend: KeyBackend, data_dir: &Path, key_id: &str) -> Result<Box<dyn KeyProvider>, RecoveryError> {
    Ok(match backend {
        KeyBackend::File => Box::new(FileKeyProvider::new(data_dir)),
        KeyBackend::Keychain => Box::new(KeychainKeyProvider::open(key_id)?),
    })
}

/// Removes the copy of `root` in `backend`, if there is one and it is this key; whether it did.
fn remove_copy(backend: KeyBackend, data_dir: &Path, key_id: &str, root: &RootKey) -> Result<bool, RecoveryError> {
    match backend {
        KeyBackend::File => {
            let provider = FileKeyProvider::new(data_dir);
            if !holds(&provider, root)? {
                return Ok(false);
            }
            let path = provider.path().to_path_buf();
            fs::remove_file(&path).map_err(io_error("remove", &path))?;
            if let Some(dir) = path.parent() {
                fsutil::sync_dir(dir)?;
            }
            Ok(true)
        }
        KeyBackend::Keychain => {
            // No keychain answering: nothing of ours can be in it.
            let Ok(keychain) = KeychainKeyProvider::open(key_id) else { return Ok(false) };
            if !holds(&keychain, root)? {
                return Ok(false);
            }
            keychain.delete()?;
            Ok(true)
        }
    }
}
