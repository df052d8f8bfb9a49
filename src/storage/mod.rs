//! SQLite storage: the only module that knows rusqlite.
//!
//! One database file in WAL mode with `synchronous=FULL`, so an acknowledged write survives
//! `kill -9` and power loss. All writes go through one writer thread that batches whatever is
//! queued into one transaction (group commit): under concurrency many writes share one fsync.
//! Each write runs in its own savepoint, so one failing write does not undo its batch-mates.
//! Reads use a small pool of read-only connections on tokio's blocking threads, never on the
//! async workers. Migrations are numbered, append-only SQL files applied at open.
//!
//! This module speaks domain types outward (see [`vault`], [`devices`], [`pairing`] and [`policy`]); it does
//! not encrypt, authorize or decide anything.

mod audit;
mod audit_sink;
mod auth;
mod checkpointer;
mod devices;
pub(crate) mod events;
mod pairing;
mod policy;
pub(crate) mod snapshot;
pub(crate) mod read_cache;
mod vault;

#[cfg_attr(not(feature = "testkit"), allow(unused_imports))]
pub use events::EventBounds;
pub use vault::SqliteBlobBackend;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::integrity::RowMac;
pub use crate::store_error::StoreError;
use tokio::sync::{Semaphore, oneshot};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::new(e)
    }
}

/// Numbered, append-only migrations. Never edit one that has shipped; add the next.
const MIGRATIONS: &[(u32, &str, &str)] = &[
    (1, "vault", include_str!("migrations/0001_vault.sql")),
    (2, "devices", include_str!("migrations/0002_devices.sql")),
    (3, "policy", include_str!("migrations/0003_policy.sql")),
    (4, "audit", include_str!("migrations/0004_audit.sql")),
    (5, "pairing", include_str!("migrations/0005_pairing.sql")),
    (6, "events", include_str!("migrations/0006_events.sql")),
    (7, "pairing_sessions", include_str!("migrations/0007_pairing_sessions.sql")),
    (8, "auth_profiles", include_str!("migrations/0008_auth_profiles.sql")),
    (9, "row_macs", include_str!("migrations/0009_row_macs.sql")),
    (10, "audit_head", include_str!("migrations/0010_audit_head.sql")),
    (11, "enrollment_keys", include_str!("migrations/0011_enrollment_keys.sql")),
    (12, "audit_checkpoints", include_str!("migrations/0012_audit_checkpoints.sql")),
    (13, "audit_sink_cursor", include_str!("migrations/0013_audit_sink_cursor.sql")),
    (14, "rewrap_marker", include_str!("migrations/0014_rewrap_marker.sql")),
    (15, "secret_ids", include_str!("migrations/0015_secret_ids.sql")),
];

/// Largest number of writes committed together.
const MAX_BATCH: usize = 1024;
/// Reads on blocking threads at a time ([`Store::read`]).
const READERS: usize = 8;
/// Read connections kept open: the blocking readers' plus those of inline point reads
/// ([`Store::read_now`], at most one per thread that runs them).
const MAX_POOLED_READERS: usize = READERS + 8;

/// A job for the writer: runs inside the batch transaction (or, given `None`, does not run
/// because the batch failed before it) and returns what to do once the batch's commit has
/// succeeded or failed.
type Work = Box<dyn FnOnce(Option<&Connection>) -> Completion + Send>;
type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A job and whether its commit must be durable (`synchronous=FULL`: an fsync of the WAL
/// before it is acknowledged). A batch of only lazy jobs commits at `synchronous=NORMAL`; a
/// later durable commit makes it durable too (the WAL is synced in order).
struct Job {
    work: Work,
    durable: bool,
    /// Whether the job may change tables ([`Store::write`]); a lazy commit only lands the
    /// hook's audit records and leaves [`Store::data_epoch`] where it is.
    changes_data: bool,
}

/// Runs inside every write batch's transaction, before its jobs, and hears whether the batch
/// committed. The audit log installs one ([`Store::install_batch_hook`]): it appends the
/// decision records queued so far, so a write commits in the same transaction as the records
/// of the decisions that let it through, and a failed append fails the batch.
pub(crate) trait BatchHook: Send {
    /// Called at the start of a batch, inside its transaction. An error fails every job of
    /// the batch with it (nothing of the batch is committed).
    fn before(&mut self, conn: &Connection) -> Result<(), StoreError>;
    /// Called once the batch is over: committed or not.
    fn after(&mut self, committed: bool);
}

/// The database: one writer thread, a pool of readers.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// The hook every batch runs first (installed once, by the audit log).
    hook: Arc<Mutex<Option<Box<dyn BatchHook>>>>,
    readers: Mutex<Vec<Connection>>,
    reader_slots: Semaphore,
    events: crate::events::EventHub,
    /// The row-MAC key, installed once the root key is known ([`Store::authenticate_rows`]).
    /// A store without one (store-level tests) neither writes nor checks row MACs.
    row_mac: std::sync::OnceLock<Arc<RowMac>>,
    /// WAL checkpoints run off the writer's thread ([`checkpointer`]); read by tests.
    #[cfg_attr(not(test), expect(dead_code, reason = "read by the store's tests"))]
    checkpoints: Arc<checkpointer::CheckpointCount>,
    /// The writer and checkpoint threads, joined by [`Store::close`].
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Moved by the writer around every change; what read caches check ([`read_cache`]).
    data_epoch: Arc<read_cache::DataEpoch>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.inner.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path`, applies pending migrations and starts
    /// the writer thread. Blocking: call it before serving, or from `spawn_blocking`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = open_connection(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        restrict_mode(path);
        configure_writer(&mut conn)?;
        migrate(&mut conn)?;
        let (checkpoints, checkpointer) = checkpointer::install(&mut conn, path)?;
        let published = events::last_sequence(&conn)?;
        let hub = crate::events::EventHub::default();

        let (tx, rx) = mpsc::channel::<Job>();
        let writer_hub = hub.clone();
        let hook: Arc<Mutex<Option<Box<dyn BatchHook>>>> = Arc::default();
        let writer_hook = Arc::clone(&hook);
        let data_epoch = Arc::new(read_cache::DataEpoch::default());
        let writer_epoch = Arc::clone(&data_epoch);
        let writer = std::thread::Builder::new()
            .name("palyra-db-writer".into())
            .spawn(move || writer_loop(conn, rx, writer_hub, published, &writer_hook, &writer_epoch))
            .map_err(|e| StoreError::new(format_args!("cannot start the writer thread: {e}")))?;
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                jobs: Mutex::new(Some(tx)),
                hook,
                readers: Mutex::new(Vec::new()),
                reader_slots: Semaphore::new(READERS),
                events: hub,
                row_mac: std::sync::OnceLock::new(),
                checkpoints,
                // The writer first: its connection going away is what ends the checkpointer.
                threads: Mutex::new(vec![writer, checkpointer]),
                data_epoch,
            }),
        })
    }

    /// Installs the row-MAC key: from now on every write of a secret, device or policy row
    /// stores its MAC and every read checks it. On the first open after migration 0009 the
    /// rows already there are MAC'd once (so existing data dirs keep working); returns how
    /// many. Call it once, right after the root key is unlocked and before anything is served.
    pub async fn authenticate_rows(&self, mac: RowMac) -> Result<u64, StoreError> {
        let mac = Arc::new(mac);
        let backfill_mac = Arc::clone(&mac);
        let count = self
            .write(move |c| {
                let marker: Option<String> = c
                    .prepare_cached("SELECT value FROM meta WHERE key = 'row_macs'")?
                    .query_row([], |r| r.get(0))
                    .optional()?;
                if marker.as_deref() != Some("backfill") {
                    return Ok::<_, StoreError>(0);
                }
                let count = vault::backfill_macs(c, &backfill_mac)?
                    + devices::backfill_macs(c, &backfill_mac)?
                    + policy::backfill_macs(c, &backfill_mac)?;
                c.prepare_cached("DELETE FROM meta WHERE key = 'row_macs'")?.execute([])?;
                Ok(count)
            })
            .await?;
        if count > 0 {
            tracing::info!(
                rows = count,
                "authenticated the existing secret, device and policy rows (row MACs)"
            );
        }
        self.inner.row_mac.set(mac).map_err(|_| StoreError::new("the row-MAC key is already installed"))?;
        Ok(count)
    }

    /// The row-MAC key, once installed.
    pub(crate) fn row_mac(&self) -> Option<Arc<RowMac>> {
        self.inner.row_mac.get().cloned()
    }

    /// WAL checkpoints the checkpointer thread has run since the store opened.
    #[cfg(test)]
    pub(crate) fn checkpoints(&self) -> u64 {
        self.inner.checkpoints.get()
    }

    /// The epoch of the data, which read caches are kept in ([`read_cache`]).
    pub(crate) fn data_epoch(&self) -> &read_cache::DataEpoch {
        &self.inner.data_epoch
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` in the next group-commit transaction and returns its result once that
    /// transaction is durable. If `f` fails, only its own changes are rolled back.
    pub(crate) async fn write<T, E>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, E>>();
        let work: Work = Box::new(move |conn| {
            let result = conn.map(|conn| in_savepoint(conn, f));
            Box::new(move |commit| {
                let outcome = match (result, commit) {
                    (Some(Ok(value)), Ok(())) => Ok(value),
                    (Some(Ok(_)) | None, Err(e)) => Err(E::from(e)),
                    (Some(Err(e)), _) => Err(e),
                    (None, Ok(())) => Err(E::from(StoreError::new("a write was skipped"))),
                };
                let _ = tx.send(outcome);
            })
        });
        self.submit(Job { work, durable: true, changes_data: true })?;
        rx.await.map_err(|_| E::from(StoreError::new("the database writer stopped")))?
    }

    /// Runs a batch that need not be durable (no fsync) and waits for it: what the batch hook
    /// appends is committed. Blocking: for the audit log's own thread, never for a runtime
    /// thread.
    pub(crate) fn commit_lazily(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel::<Result<(), StoreError>>();
        let work: Work = Box::new(move |_| Box::new(move |commit| drop(tx.send(commit))));
        self.submit(Job { work, durable: false, changes_data: false })?;
        rx.blocking_recv().map_err(|_| StoreError::new("the database writer stopped"))?
    }

    /// Installs the hook every write batch runs first (once; a second is refused).
    pub(crate) fn install_batch_hook(&self, hook: Box<dyn BatchHook>) -> Result<(), StoreError> {
        let mut slot = self.inner.hook.lock().map_err(|_| StoreError::new("batch hook poisoned"))?;
        if slot.is_some() {
            return Err(StoreError::new("a batch hook is already installed"));
        }
        *slot = Some(hook);
        Ok(())
    }

    fn submit(&self, job: Job) -> Result<(), StoreError> {
        let jobs = self.inner.jobs.lock().map_err(|_| StoreError::new("writer queue poisoned"))?;
        jobs.as_ref()
            .ok_or_else(|| StoreError::new("the database is closed"))?
            .send(job)
            .map_err(|_| StoreError::new("the database writer stopped"))
    }

    /// Runs `f` on a read-only connection on a blocking thread.
    pub(crate) async fn read<T, E>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let _slot = self
            .inner
            .reader_slots
            .acquire()
            .await
            .map_err(|_| E::from(StoreError::new("the database is closed")))?;
        let pooled = self.inner.readers.lock().ok().and_then(|mut r| r.pop());
        let path = self.inner.path.clone();
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let conn = match pooled {
                Some(conn) => conn,
                None => match open_reader(&path) {
                    Ok(conn) => conn,
                    Err(e) => return (None, Err(E::from(e))),
                },
            };
            let result = f(&conn);
            (Some(conn), result)
        })
        .await
        .map_err(|e| E::from(StoreError::new(format_args!("read task failed: {e}"))))?;
        if let Some(conn) = conn {
            self.give_back(conn);
        }
        result
    }

    /// Runs `f` on a pooled read-only connection on the calling thread, without waiting for a
    /// slot. For point reads by primary key, which take a few microseconds on a warm page
    /// cache: handing them to a blocking thread ([`Store::read`]) costs more than the read
    /// (two thread switches and a wake-up). Scans and anything that may take long use
    /// [`Store::read`]. WAL readers never wait for the writer.
    ///
    /// It never waits, so it first spends the task's cooperative budget: a task that loops on
    /// reads still yields to the other tasks of its worker (without this, four tasks reading
    /// in a loop starved a rotation and a writer on a four-worker runtime).
    pub(crate) async fn read_now<T, E>(&self, f: impl FnOnce(&Connection) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        tokio::task::coop::consume_budget().await;
        let pooled = self.inner.readers.lock().ok().and_then(|mut r| r.pop());
        let conn = match pooled {
            Some(conn) => conn,
            None => open_reader(&self.inner.path).map_err(E::from)?,
        };
        let result = f(&conn);
        self.give_back(conn);
        result
    }

    /// Returns a read connection to the pool; beyond [`MAX_POOLED_READERS`] it is closed.
    fn give_back(&self, conn: Connection) {
        if let Ok(mut readers) = self.inner.readers.lock()
            && readers.len() < MAX_POOLED_READERS
        {
            readers.push(conn);
        }
    }

    /// A value from the `meta` table.
    pub async fn meta(&self, key: &'static str) -> Result<Option<String>, StoreError> {
        self.read(move |c| {
            c.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()
                .map_err(StoreError::from)
        })
        .await
    }

    /// Sets a `meta` value, durably.
    pub async fn set_meta(&self, key: &'static str, value: String) -> Result<(), StoreError> {
        self.write(move |c| {
            c.prepare_cached("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")?
                .execute((key, value))?;
            Ok::<_, StoreError>(())
        })
        .await
    }

    /// Runs `PRAGMA integrity_check` and returns its verdict (`"ok"` when sound).
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
    pub async fn integrity_check(&self) -> Result<String, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare("PRAGMA integrity_check")?;
            let lines = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
            Ok::<_, StoreError>(lines.join("\n"))
        })
        .await
    }

    /// Stops accepting writes and returns once the writer thread has finished what was queued
    /// and the writer and checkpoint connections are closed: nothing of this store writes the
    /// database files afterwards (a restore or a test may replace them). Blocks for at most
    /// the batch and checkpoint under way.
    pub fn close(&self) {
        if let Ok(mut jobs) = self.inner.jobs.lock() {
            jobs.take();
        }
        let threads = self.inner.threads.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default();
        let me = std::thread::current().id();
        for thread in threads {
            // Never this thread itself (a job closing its own store).
            if thread.thread().id() != me && thread.join().is_err() {
                tracing::error!("a database thread panicked");
            }
        }
    }
}

/// The database holds sealed secrets and the registry: keep it owner-only.
fn restrict_mode(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(crate::fsutil::FILE_MODE));
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// The writer connection's page cache, in KiB (SQLite's default is 2 MiB). A write touches a
/// leaf of each B-tree its row is keyed in (a new secret's go at their ends; a new version's
/// are its secret's), and the audit and event tails. With 2 MiB, 64 clients' batches made the
/// writer re-read 10–12 pages per write from the OS, new versions of 64 secrets included; with
/// 8 MiB, 0.8 per new version. Memory is taken only as pages are read, and only on this one
/// connection.
const WRITER_CACHE_KIB: i64 = 8 * 1024;

fn configure_writer(conn: &mut Connection) -> Result<(), StoreError> {
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::new(format_args!("cannot enable WAL mode (got {mode})")));
    }
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA secure_delete = ON;
         PRAGMA busy_timeout = 5000;",
    )?;
    conn.pragma_update(None, "journal_size_limit", checkpointer::WAL_FILE_LIMIT)?;
    // Negative: a size in KiB rather than pages.
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    wait_briefly_when_busy(conn)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// The two writers of the database (this writer and the audit writer) take turns on SQLite's
/// write lock for short transactions. SQLite's own busy handler sleeps 1, 2, 5, 10 … 100 ms
/// between tries, so each collision cost the other writer milliseconds (and a PutSecret its
/// audit flush). Retry every few tens of microseconds instead, backing off to 1 ms, for about
/// as long as `busy_timeout = 5000` allowed.
pub(crate) fn wait_briefly_when_busy(conn: &mut Connection) -> Result<(), StoreError> {
    fn retry(attempt: i32) -> bool {
        let attempt = u64::try_from(attempt).unwrap_or(0);
        std::thread::sleep(Duration::from_micros((20 * (attempt + 1)).min(1000)));
        attempt < 5_500
    }
    conn.busy_handler(Some(retry))?;
    Ok(())
}

/// Opens a connection to the database with the settings every connection shares.
///
/// The query planner stability guarantee (QPSG) is on: without it, SQLite (built with STAT4)
/// marks a cached statement whose plan looked at a bound parameter as expired on every new
/// binding, and re-parses and re-plans it on each step. The vault's point read was
/// re-prepared on every GetSecret that way (a tenth of the read path's CPU). Our queries are
/// written for one plan; the planner gains nothing from the values.
pub(crate) fn open_connection(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, flags)?;
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(conn)
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = open_connection(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 5000;")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let latest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if current > latest {
        return Err(StoreError::new(format_args!(
            "the database is at schema version {current}, newer than this build knows ({latest}); use a newer palyra"
        )));
    }
    for &(number, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .map_err(|e| StoreError::new(format_args!("migration {number:04}_{name} failed: {e}")))?;
        tx.pragma_update(None, "user_version", number)?;
        tx.commit()?;
        tracing::info!(number, name, "applied database migration");
    }
    Ok(())
}

/// Runs one statement from the connection's statement cache (no parse after the first time).
fn run(conn: &Connection, sql: &str) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn in_savepoint<T, E: From<StoreError>>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, E>,
) -> Result<T, E> {
    run(conn, "SAVEPOINT job").map_err(|e| E::from(e.into()))?;
    match f(conn) {
        Ok(value) => {
            run(conn, "RELEASE job").map_err(|e| E::from(e.into()))?;
            Ok(value)
        }
        Err(e) => {
            if let Err(rollback) = conn.execute_batch("ROLLBACK TO job; RELEASE job") {
                tracing::error!(error = %rollback, "could not roll back a failed write");
            }
            Err(e)
        }
    }
}

fn writer_loop(
    conn: Connection,
    jobs: mpsc::Receiver<Job>,
    hub: crate::events::EventHub,
    mut published: u64,
    hook: &Mutex<Option<Box<dyn BatchHook>>>,
    data_epoch: &read_cache::DataEpoch,
) {
    let mut durable_now = true;
    while let Ok(first) = jobs.recv() {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Durability is per batch: FULL as soon as one job asks for it.
        let durable = batch.iter().any(|job| job.durable);
        if durable != durable_now {
            let pragma = if durable { "PRAGMA synchronous = FULL" } else { "PRAGMA synchronous = NORMAL" };
            if let Err(e) = run(&conn, pragma) {
                tracing::error!(error = %e, "cannot set the commit's durability");
                fail_batch(batch, &StoreError::from(e));
                continue;
            }
            durable_now = durable;
        }
        let mut hook = hook.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if run_batch(&conn, batch, hook.as_deref_mut(), data_epoch) {
            // Live subscribers hear of an event only once it is durable, in sequence order.
            published = events::publish_committed(&conn, &hub, published);
        }
    }
}

/// Fails every job of a batch that will not run.
fn fail_batch(batch: Vec<Job>, error: &StoreError) {
    for job in batch {
        (job.work)(None)(Err(error.clone()));
    }
}

/// Runs one batch: the hook, then each job in its savepoint, then the commit; true when it
/// committed. Around the commit of a batch with a job that could change a table, moves
/// `data_epoch` (odd during the commit, then even, with the read caches emptied) before any
/// completion runs.
fn run_batch(
    conn: &Connection,
    batch: Vec<Job>,
    mut hook: Option<&mut (dyn BatchHook + 'static)>,
    data_epoch: &read_cache::DataEpoch,
) -> bool {
    if let Err(e) = run(conn, "BEGIN IMMEDIATE") {
        tracing::error!(error = %e, "cannot begin a write transaction");
        fail_batch(batch, &StoreError::from(e));
        if let Some(hook) = hook {
            hook.after(false);
        }
        return false;
    }
    if let Some(hook) = hook.as_deref_mut()
        && let Err(e) = hook.before(conn)
    {
        let _ = conn.execute_batch("ROLLBACK");
        fail_batch(batch, &e);
        hook.after(false);
        return false;
    }
    let changes_data = batch.iter().any(|job| job.changes_data);
    let mut completions: Vec<Completion> = Vec::with_capacity(batch.len());
    let mut jobs = batch.into_iter();
    let mut lost = None;
    for job in jobs.by_ref() {
        completions.push((job.work)(Some(conn)));
        // Some failures (a full disk, an I/O error, out of memory) make SQLite roll back the
        // whole transaction, not just the job's savepoint. Going on would run the next jobs in
        // transactions of their own, committed without the hook's records: the batch is over.
        if conn.is_autocommit() {
            lost = Some(StoreError::new("a write failed and SQLite rolled back its whole batch; nothing of it was committed"));
            break;
        }
    }
    if changes_data {
        data_epoch.begin_change();
    }
    let commit = match lost {
        Some(e) => {
            tracing::error!(error = %e, "batch rolled back");
            completions.extend(jobs.map(|job| (job.work)(None)));
            Err(e)
        }
        None => run(conn, "COMMIT").map_err(StoreError::from),
    };
    if let Err(e) = &commit
        && !conn.is_autocommit()
    {
        tracing::error!(error = %e, "commit failed");
        let _ = conn.execute_batch("ROLLBACK");
    }
    let committed = commit.is_ok();
    if changes_data {
        data_epoch.end_change();
    }
    if let Some(hook) = hook {
        hook.after(committed);
    }
    for complete in completions {
        complete(commit.clone());
    }
    committed
}

/// Unix milliseconds of `t` (0 before the epoch, saturating far in the future).
pub(crate) fn to_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// The time of stored unix milliseconds.
pub(crate) fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_increasing_order() {
        for (i, (number, name, sql)) in MIGRATIONS.iter().enumerate() {
            // Numbers only increase; a number may be reserved by work landing in parallel.
            let previous = if i == 0 { 0 } else { MIGRATIONS[i - 1].0 };
            assert!(*number > previous, "migration {name} is out of sequence");
            assert!(!sql.trim().is_empty());
        }
    }

    /// Pages in the WAL file (its size over the page size; the header and frame headers make
    /// it a slight overestimate).
    fn wal_pages(path: &Path) -> u64 {
        let wal = path.with_extension("db-wal");
        std::fs::metadata(wal).map(|m| m.len() / 4096).unwrap_or(0)
    }

    /// A store in a temp dir with a `filler` table of `rows` rows of 4,000 bytes (a page each).
    async fn filler_store(rows: i64) -> Result<(tempfile::TempDir, PathBuf, Store), StoreError> {
        let dir = tempfile::tempdir().map_err(StoreError::new)?;
        let path = dir.path().join("p.db");
        let store = Store::open(&path)?;
        store
            .write(move |c| {
                c.execute_batch("CREATE TABLE filler (n INTEGER PRIMARY KEY, v BLOB NOT NULL)")?;
                let mut insert = c.prepare_cached("INSERT INTO filler (n, v) VALUES (?1, zeroblob(4000))")?;
                for i in 0..rows {
                    insert.execute([i])?;
                }
                Ok::<_, StoreError>(())
            })
            .await?;
        Ok((dir, path, store))
    }

    #[tokio::test]
    async fn checkpoints_run_off_the_writer_and_keep_the_wal_bounded() -> Result<(), StoreError> {
        let (_dir, path, store) = filler_store(0).await?;
        // 20 × 1,000 pages of 4 KiB rows: eighty times the mark at which the checkpointer wakes,
        // five times the writer's own bound.
        let checkpointed = store.checkpoints();
        for round in 0..20i64 {
            store
                .write(move |c| {
                    let mut insert = c.prepare_cached("INSERT INTO filler (n, v) VALUES (?1, zeroblob(4000))")?;
                    for i in 0..1000 {
                        insert.execute([round * 1000 + i])?;
                    }
                    Ok::<_, StoreError>(())
                })
                .await?;
            assert!(
                wal_pages(&path) <= u64::try_from(checkpointer::WRITER_CHECKPOINT_PAGES + 2 * 1000).unwrap_or(0),
                "the WAL grew past the writer's own checkpoint bound: {} pages",
                wal_pages(&path)
            );
        }
        // The checkpointer thread (not SQLite's autocheckpoint in the writer's commit) ran.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.checkpoints() == checkpointed && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(store.checkpoints() > checkpointed, "no checkpoint ran on the checkpointer thread");
        // And it copied the WAL into the database file: ~80 MB of rows are in it.
        let copied = std::fs::metadata(&path).map_err(StoreError::new)?.len();
        assert!(copied > 40_000_000, "the database file holds {copied} bytes");
        store.close();
        Ok(())
    }

    /// Small writes into a WAL already past the mark: the checkpointer runs once per
    /// `CHECKPOINT_PAGES` frames not yet copied, not after every commit (each run syncs twice).
    #[tokio::test]
    async fn small_writes_past_the_mark_do_not_each_wake_a_checkpoint() -> Result<(), StoreError> {
        let (_dir, _path, store) = filler_store(1100).await?;
        let before = store.checkpoints();
        // A thousand commits of a few frames each, one after the other (about 2,000 frames):
        // each finds the WAL past the mark, and rarely fully copied at the moment it begins
        // (only then is the WAL rewound).
        for i in 0..1000i64 {
            store
                .write(move |c| Ok::<_, StoreError>(c.execute("INSERT INTO filler (n, v) VALUES (?1, x'00')", [10_000 + i])?))
                .await?;
        }
        let ran = store.checkpoints() - before;
        // About one per `CHECKPOINT_PAGES` frames (taking 3,000 for the commits' ~2,000), plus
        // at most one wake-up queued while each ran; on every commit it would be hundreds.
        let bound = 2 * (3000 / u64::try_from(checkpointer::CHECKPOINT_PAGES).unwrap_or(1)) + 2;
        assert!(ran <= bound, "{ran} checkpoints for 1,000 small commits (at most {bound})");
        store.close();
        Ok(())
    }

    #[tokio::test]
    async fn opens_in_wal_with_full_sync_and_reopens() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(StoreError::new)?;
        let path = dir.path().join("p.db");
        let store = Store::open(&path)?;
        store.set_meta("test", "one".into()).await?;
        let (mode, sync, cache, wal_limit): (String, i64, i64, i64) = store
            .write(|c| {
                let mode = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
                let sync = c.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
                let cache: i64 = c.query_row("PRAGMA cache_size", [], |r| r.get(0))?;
                let wal_limit: i64 = c.query_row("PRAGMA journal_size_limit", [], |r| r.get(0))?;
                Ok::<_, StoreError>((mode, sync, cache, wal_limit))
            })
            .await?;
        assert_eq!(mode, "wal");
        assert_eq!(sync, 2, "synchronous must be FULL");
        assert_eq!(cache, -WRITER_CACHE_KIB, "the writer's page cache");
        assert_eq!(wal_limit, checkpointer::WAL_FILE_LIMIT, "a rewound WAL keeps the writer's bound");
        store.close();
        let again = Store::open(&path)?;
        assert_eq!(again.meta("test").await?.as_deref(), Some("one"));
        assert_eq!(again.integrity_check().await?, "ok");
        Ok(())
    }

    #[tokio::test]
    async fn a_failing_write_does_not_undo_its_batch_mates() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(StoreError::new)?;
        let store = Store::open(&dir.path().join("p.db"))?;
        let mut tasks = Vec::new();
        for i in 0..50u32 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .write(move |c| {
                        c.execute("INSERT INTO meta (key, value) VALUES (?1, 'x')", [format!("job{i}")])?;
                        if i % 2 == 0 {
                            return Err(StoreError::new("refused"));
                        }
                        Ok(())
                    })
                    .await
            }));
        }
        for (i, task) in tasks.into_iter().enumerate() {
            let result = task.await.map_err(StoreError::new)?;
            assert_eq!(result.is_ok(), i % 2 == 1);
        }
        let count: i64 = store
            .read(|c| {
                c.query_row("SELECT count(*) FROM meta WHERE key LIKE 'job%'", [], |r| r.get(0))
                    .map_err(StoreError::from)
            })
            .await?;
        assert_eq!(count, 25);
        Ok(())
    }

    /// The batch hook runs first in every batch, in its transaction: what it writes commits
    /// with the jobs, its failure fails every job of the batch (none commits), and a batch
    /// of lazy jobs commits at `synchronous=NORMAL` while a durable one is FULL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_batch_hook_commits_and_fails_with_its_batch() -> Result<(), StoreError> {
        struct Hook {
            fail: Arc<std::sync::atomic::AtomicBool>,
            runs: Arc<std::sync::atomic::AtomicU32>,
            committed: Arc<std::sync::atomic::AtomicU32>,
        }
        impl BatchHook for Hook {
            fn before(&mut self, conn: &Connection) -> Result<(), StoreError> {
                use std::sync::atomic::Ordering::SeqCst;
                let n = self.runs.fetch_add(1, SeqCst);
                if self.fail.load(SeqCst) {
                    return Err(StoreError::unavailable("the hook refuses"));
                }
                let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
                conn.execute("INSERT INTO meta (key, value) VALUES (?1, ?2)", (format!("hook{n}"), sync.to_string()))?;
                Ok(())
            }
            fn after(&mut self, committed: bool) {
                if committed {
                    self.committed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
        let dir = tempfile::tempdir().map_err(StoreError::new)?;
        let store = Store::open(&dir.path().join("p.db"))?;
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (runs, committed) = (Arc::default(), Arc::default());
        store.install_batch_hook(Box::new(Hook {
            fail: Arc::clone(&fail),
            runs: Arc::clone(&runs),
            committed: Arc::clone(&committed),
        }))?;
        assert!(store.install_batch_hook(Box::new(Hook { fail: Arc::default(), runs: Arc::default(), committed: Arc::default() })).is_err());
        let count = |prefix: &'static str| {
            let store = store.clone();
            async move {
                store
                    .read(move |c| {
                        c.query_row("SELECT count(*) FROM meta WHERE key LIKE ?1", [format!("{prefix}%")], |r| r.get::<_, i64>(0))
                            .map_err(StoreError::from)
                    })
                    .await
            }
        };

        // A durable write: the hook's row and the write's commit together, at FULL (2).
        store.set_meta("job", "x".into()).await?;
        assert_eq!(count("hook").await?, 1);
        assert_eq!(store.meta("hook0").await?.as_deref(), Some("2"));
        // A lazy batch: the hook runs at NORMAL (1).
        let lazy = store.clone();
        tokio::task::spawn_blocking(move || lazy.commit_lazily()).await.map_err(StoreError::new)??;
        assert_eq!(store.meta("hook1").await?.as_deref(), Some("1"));

        // The hook fails: the write fails with its error and nothing of the batch commits.
        fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let refused = store.set_meta("refused", "x".into()).await.unwrap_err();
        assert!(refused.is_unavailable(), "{refused}");
        assert_eq!(store.meta("refused").await?, None);
        let lazy = store.clone();
        assert!(tokio::task::spawn_blocking(move || lazy.commit_lazily()).await.map_err(StoreError::new)?.is_err());
        // It recovers: the next write commits with the hook's row again.
        fail.store(false, std::sync::atomic::Ordering::SeqCst);
        store.set_meta("after", "x".into()).await?;
        assert_eq!(store.meta("after").await?.as_deref(), Some("x"));
        assert_eq!(count("hook").await?, 3);
        assert_eq!(committed.load(std::sync::atomic::Ordering::SeqCst), 3);
        Ok(())
    }

    /// A job whose failure makes SQLite roll back the whole transaction (here it says
    /// ROLLBACK itself; a full disk or an I/O error does it too) ends its batch: the jobs after
    /// it do not run in transactions of their own, committed without the batch hook's rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_that_ends_the_transaction_fails_the_rest_of_its_batch() -> Result<(), StoreError> {
        struct Hook(Arc<std::sync::atomic::AtomicU32>);
        impl BatchHook for Hook {
            fn before(&mut self, conn: &Connection) -> Result<(), StoreError> {
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('hook', 'x')", [])?;
                Ok(())
            }
            fn after(&mut self, committed: bool) {
                if !committed {
                    self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
        let dir = tempfile::tempdir().map_err(StoreError::new)?;
        let store = Store::open(&dir.path().join("p.db"))?;
        let failed_batches = Arc::new(std::sync::atomic::AtomicU32::new(0));
        store.install_batch_hook(Box::new(Hook(Arc::clone(&failed_batches))))?;
        // Hold the writer so that the next two jobs are queued into one batch.
        let (started, release) = (Arc::new(tokio::sync::Notify::new()), Arc::new(std::sync::Barrier::new(2)));
        let held = {
            let (store, started, release) = (store.clone(), Arc::clone(&started), Arc::clone(&release));
            tokio::spawn(async move {
                store
                    .write(move |_| {
                        started.notify_one();
                        release.wait();
                        Ok::<_, StoreError>(())
                    })
                    .await
            })
        };
        started.notified().await;
        let rolls_back = {
            let store = store.clone();
            tokio::spawn(async move { store.write(|c| c.execute_batch("ROLLBACK").map_err(StoreError::from)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let after_it = {
            let store = store.clone();
            tokio::spawn(async move { store.set_meta("after", "x".into()).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        tokio::task::spawn_blocking(move || release.wait()).await.map_err(StoreError::new)?;
        held.await.map_err(StoreError::new)??;
        assert!(rolls_back.await.map_err(StoreError::new)?.is_err());
        assert!(after_it.await.map_err(StoreError::new)?.is_err(), "the job after it failed too");
        assert_eq!(store.meta("after").await?, None, "and nothing of it was committed on its own");
        assert_eq!(failed_batches.load(std::sync::atomic::Ordering::SeqCst), 1);
        // The writer goes on: the next write commits, with the hook's row.
        store.set_meta("later", "x".into()).await?;
        assert_eq!(store.meta("later").await?.as_deref(), Some("x"));
        Ok(())
    }

    #[tokio::test]
    async fn refuses_a_newer_schema() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(StoreError::new)?;
        let path = dir.path().join("p.db");
        Connection::open(&path)?.pragma_update(None, "user_version", 999)?;
        let err = Store::open(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("newer than this build"), "{err}");
        Ok(())
    }
}
