//! Audit sinks: every committed record, appended as one JSON line (the export's,
//! [`super::export::json_line`]) to a file that rotates by size (or sent to syslog).
//!
//! Delivery is driven from the table, never from the request path: a task follows the
//! committed records ([`Follower`]) from a durable cursor (`audit_sink_cursor`, through
//! [`SinkCursorStore`]), writes a batch, fsyncs it, and only then advances the cursor. A sink
//! that fails (directory gone, disk full, permissions) keeps its batch and retries with
//! backoff; the table keeps every record meanwhile, so nothing is lost and the file catches
//! up in order. Nothing is written twice either: whenever the file is (re)opened, a torn last
//! line (a write cut short) is cut off, and the last complete line (of the file, or of the
//! newest rotated file when the file is new) is read back; when the table holds that very
//! record (same sequence, same hash) delivery resumes after it even if the cursor was not
//! advanced (a crash between fsync and cursor update). So each record appears exactly once,
//! in order, across the file and its rotations.
//!
//! The file is 0600 in a private (0700) directory, checked at start; a symlink is refused.
//! Rotation: before a line would take the file past `max_bytes`, `PATH` becomes `PATH.1`
//! (`PATH.1` → `PATH.2`, …; the oldest beyond `keep` is removed) and a new `PATH` starts.
//! A file replaced or moved away underneath (e.g. by an external rotation) is noticed before
//! the next batch and `PATH` is opened anew.
//!
//! The task is the same for every output ([`SinkOut`]): the file here, the syslog socket in
//! [`super::syslog`] (which cannot be read back: it advances past each record the socket took).
//!
//! The lag (committed but not yet delivered) and the position are read with
//! [`SinkMonitor::status`]; [`SinkMonitor::delivered_through`] is what a pruner must not pass.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::chain::AuditRecord;
use super::export::{ExportError, Follower, json_line, line_position};
use super::service::Audit;
use crate::fsutil::{self, FsError};
use crate::store_error::{BoxFuture, StoreError};

/// Rotate past this size when the config says nothing: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Rotated files kept when the config says nothing.
pub const DEFAULT_KEEP: usize = 8;
/// Records written (and fsynced) in one batch at most.
const BATCH: usize = 1000;
/// Backoff between retries of a failing sink.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long [`SinkHandle::stop`] keeps delivering what was committed before it.
const DRAIN: Duration = Duration::from_secs(5);
/// How far back from the end of a file its last line is looked for.
const TAIL: u64 = 1024 * 1024;

/// The durable position of each sink: the last sequence it delivered.
pub trait SinkCursorStore: Send + Sync + std::fmt::Debug {
    /// The last sequence delivered to `sink` (0: none).
    fn delivered(&self, sink: &str) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// Records that `sink` delivered everything up to `sequence` (durable when it returns).
    fn set_delivered(&self, sink: &str, sequence: u64) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// A file sink's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSinkConfig {
    /// The file (absolute).
    pub path: PathBuf,
    /// Rotate before the file would grow past this (a single longer line still goes in whole).
    pub max_bytes: u64,
    /// Rotated files kept (`PATH.1` … `PATH.keep`), at least 1.
    pub keep: usize,
}

impl FileSinkConfig {
    /// `path` with the default rotation.
    pub fn new(path: PathBuf) -> Self {
        FileSinkConfig { path, max_bytes: DEFAULT_MAX_BYTES, keep: DEFAULT_KEEP }
    }

    /// The sink's name, the key of its cursor: `file:PATH`.
    pub fn name(&self) -> String {
        format!("file:{}", self.path.display())
    }
}

/// Why a sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The configuration is unusable.
    #[error("audit sink: {0}")]
    Config(String),
    /// Its directory is missing and cannot be made, or is open to other users.
    #[error("audit sink: {0}")]
    Directory(#[from] FsError),
}

/// A sink's state as the monitor reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkStatus {
    /// The last sequence delivered (written and fsynced).
    pub delivered: u64,
    /// Records committed but not yet delivered.
    pub lag: u64,
    /// Why the last attempt failed, while the sink fails (`None` once it delivers again).
    pub last_error: Option<String>,
    /// Failed attempts since start.
    pub failures: u64,
}

#[derive(Debug, Default)]
struct Shared {
    delivered: u64,
    last_error: Option<String>,
    failures: u64,
}

/// Reads a running sink's position and lag (cheap, clonable; for metrics and the pruner).
#[derive(Debug, Clone)]
pub struct SinkMonitor {
    shared: Arc<Mutex<Shared>>,
    committed: watch::Receiver<u64>,
}

impl SinkMonitor {
    /// Position, lag and the last error.
    pub fn status(&self) -> SinkStatus {
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let committed = *self.committed.borrow();
        SinkStatus {
            delivered: shared.delivered,
            lag: committed.saturating_sub(shared.delivered),
            last_error: shared.last_error.clone(),
            failures: shared.failures,
        }
    }

    /// Every record up to this sequence is delivered: records after it must not be pruned.
    pub fn delivered_through(&self) -> u64 {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner).delivered
    }

    fn set(&self, f: impl FnOnce(&mut Shared)) {
        f(&mut self.shared.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// A running sink: its monitor, and the switch that stops it.
#[derive(Debug)]
pub struct SinkHandle {
    monitor: SinkMonitor,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl SinkHandle {
    /// Its monitor.
    pub fn monitor(&self) -> SinkMonitor {
        self.monitor.clone()
    }

    /// Stops it: what was committed before the call is still delivered (for a few seconds at
    /// most; the rest goes after the next start), then the task ends.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Starts a file sink following `audit` from the cursor in `cursors`. Checks (and creates if
/// missing) the file's directory as a private one; later failures are retried, not returned.
pub fn start_file_sink(
    audit: Audit,
    cursors: Arc<dyn SinkCursorStore>,
    config: FileSinkConfig,
) -> Result<SinkHandle, SinkError> {
    if !config.path.is_absolute() || config.path.file_name().is_none() {
        return Err(SinkError::Config(format!("{} is not an absolute file path", config.path.display())));
    }
    if config.keep == 0 {
        return Err(SinkError::Config("keep at least one rotated file".to_owned()));
    }
    if let Some(dir) = config.path.parent() {
        fsutil::ensure_private_dir(dir)?;
    }
    let name = config.name();
    Ok(start_sink(audit, cursors, name, Box::new(FileOut::new(config))))
}

/// Which sink `[audit] sink` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkConfig {
    /// `file:PATH`.
    File(FileSinkConfig),
    /// `syslog`.
    Syslog(super::syslog::SyslogSinkConfig),
}

impl From<FileSinkConfig> for SinkConfig {
    fn from(file: FileSinkConfig) -> Self {
        SinkConfig::File(file)
    }
}

impl From<super::syslog::SyslogSinkConfig> for SinkConfig {
    fn from(syslog: super::syslog::SyslogSinkConfig) -> Self {
        SinkConfig::Syslog(syslog)
    }
}

/// Starts the sink `config` names (see [`start_file_sink`] for the file's checks).
pub fn start(audit: Audit, cursors: Arc<dyn SinkCursorStore>, config: SinkConfig) -> Result<SinkHandle, SinkError> {
    match config {
        SinkConfig::File(file) => start_file_sink(audit, cursors, file),
        SinkConfig::Syslog(syslog) => {
            let name = syslog.name();
            Ok(start_sink(audit, cursors, name, Box::new(super::syslog::SyslogOut::new(syslog))))
        }
    }
}

/// Starts the task delivering to `out`, from the cursor `name` in `cursors`.
pub(super) fn start_sink(
    audit: Audit,
    cursors: Arc<dyn SinkCursorStore>,
    name: String,
    out: Box<dyn SinkOut>,
) -> SinkHandle {
    let monitor = SinkMonitor { shared: Arc::default(), committed: audit.committed() };
    let (stop, stopping) = watch::channel(false);
    let runner =
        Runner { name, audit, cursors, file: Arc::new(Mutex::new(out)), monitor: monitor.clone(), stopping };
    let task = tokio::spawn(runner.run());
    SinkHandle { monitor, stop, task }
}

/// Where a sink delivers (blocking calls, on tokio's blocking threads).
pub(super) trait SinkOut: Send {
    /// (Re)opens the output; returns the position of the last record it already holds, when
    /// it can tell (a file can, a socket cannot).
    fn open(&mut self) -> Result<Option<(u64, String)>, RunError>;
    /// Whether the output opened last is still the one to write to.
    fn still_open(&self) -> bool;
    /// Delivers `records` in order (durably where the output allows). On an error, how many
    /// of them were delivered for sure before it.
    fn write(&mut self, records: &[AuditRecord]) -> Result<(), (usize, RunError)>;
}

/// The sink's task.
struct Runner {
    name: String,
    audit: Audit,
    cursors: Arc<dyn SinkCursorStore>,
    file: Arc<Mutex<Box<dyn SinkOut>>>,
    monitor: SinkMonitor,
    stopping: watch::Receiver<bool>,
}

/// What the task keeps between attempts.
struct Progress {
    /// The last sequence delivered.
    delivered: u64,
    /// The follower, once started.
    follower: Option<Follower>,
    /// Records read and not yet delivered, oldest first.
    pending: Vec<AuditRecord>,
    /// The file must be (re)opened (and its tail read) before the next write.
    reopen: bool,
    /// The cursor in the table is behind `delivered`.
    unsaved: bool,
}

/// Whether a step delivered, found nothing to do (while draining), or must go again at once
/// (asked to stop while waiting, or the file must be reopened).
enum Step {
    Delivered,
    Idle,
    Again,
}

impl Runner {
    async fn run(mut self) {
        let mut progress =
            Progress { delivered: 0, follower: None, pending: Vec::new(), reopen: true, unsaved: false };
        let mut backoff = RETRY_FIRST;
        let mut cursor_loaded = false;
        let mut drain_until: Option<tokio::time::Instant> = None;
        loop {
            if drain_until.is_none() && *self.stopping.borrow() {
                drain_until = Some(tokio::time::Instant::now() + DRAIN);
            }
            if let Some(deadline) = drain_until
                && tokio::time::Instant::now() >= deadline
            {
                break;
            }
            let result = async {
                if !cursor_loaded {
                    progress.delivered = self.cursors.delivered(&self.name).await?;
                    cursor_loaded = true;
                    self.monitor.set(|s| s.delivered = progress.delivered);
                }
                self.step(&mut progress, drain_until.is_some()).await
            }
            .await;
            match result {
                Ok(Step::Delivered) => {
                    backoff = RETRY_FIRST;
                    self.monitor.set(|s| s.last_error = None);
                }
                Ok(Step::Idle) => {
                    // Only while draining: everything committed before the stop is delivered.
                    break;
                }
                Ok(Step::Again) => continue,
                Err(e) => {
                    let message = e.to_string();
                    let failures = {
                        let mut failures = 0;
                        self.monitor.set(|s| {
                            s.failures += 1;
                            failures = s.failures;
                            s.last_error = Some(message.clone());
                        });
                        failures
                    };
                    if failures.is_power_of_two() {
                        tracing::error!(sink = %self.name, error = %message, failures, lag = self.monitor.status().lag, "the audit sink cannot deliver; retrying (no record is lost: the table keeps them)");
                    }
                    if matches!(e, RunError::Closed) || drain_until.is_some() {
                        break;
                    }
                    progress.reopen = true;
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = self.stopping.wait_for(|s| *s) => {}
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
        if progress.unsaved {
            let _ = self.cursors.set_delivered(&self.name, progress.delivered).await;
        }
    }

    /// One attempt: (re)open the file when needed, take the next records, write them, fsync,
    /// advance the cursor.
    async fn step(&mut self, progress: &mut Progress, draining: bool) -> Result<Step, RunError> {
        if progress.reopen {
            let tail = self.with_file(|f| f.open()).await?;
            if let Some((sequence, hash)) = tail
                && sequence > progress.delivered
            {
                // A batch was written but its cursor not saved: resume after it when the table
                // holds that very record.
                let found = self.audit.list(sequence - 1, 1, None, None).await?;
                match found.first() {
                    Some(r) if r.sequence == sequence && r.hash == hash => {
                        tracing::info!(sink = %self.name, from = progress.delivered, to = sequence, "the audit sink file already holds records past its cursor; resuming after them");
                        progress.delivered = sequence;
                        progress.unsaved = true;
                    }
                    _ => tracing::warn!(sink = %self.name, sequence, "the audit sink file ends with a record this log does not hold (another node's, or a restored database); appending after it from the cursor"),
                }
            }
            progress.pending.retain(|r| r.sequence > progress.delivered);
            if let Some(follower) = progress.follower.as_mut() {
                follower.skip_to(progress.delivered);
            }
            progress.reopen = false;
        }
        if progress.unsaved {
            self.cursors.set_delivered(&self.name, progress.delivered).await?;
            progress.unsaved = false;
            self.monitor.set(|s| s.delivered = progress.delivered);
        }
        if progress.pending.is_empty() {
            let follower = match progress.follower.take() {
                Some(f) => f,
                None => self.follow_from(progress.delivered).await?,
            };
            let follower = progress.follower.insert(follower);
            if draining && follower.position() >= *self.audit.committed().borrow() {
                return Ok(Step::Idle);
            }
            let next = tokio::select! {
                next = follower.next(BATCH) => next,
                _ = self.stopping.wait_for(|s| *s), if !draining => return Ok(Step::Again),
            };
            match next {
                Ok(Some(records)) => progress.pending = records,
                Ok(None) => return Ok(Step::Idle),
                Err(ExportError::Pruned { after, oldest }) => {
                    tracing::error!(sink = %self.name, from = after + 1, to = oldest - 1, "audit records were pruned before this sink delivered them");
                    follower.skip_to(oldest - 1);
                    return Ok(Step::Delivered);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let batch = std::mem::take(&mut progress.pending);
        let last = batch.last().map_or(progress.delivered, |r| r.sequence);
        let file = Arc::clone(&self.file);
        let (batch, written) = tokio::task::spawn_blocking(move || {
            let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
            // Not into a file that was moved away, removed or replaced since it was opened.
            let written = if file.still_open() { file.write(&batch).map(|()| true) } else { Ok(false) };
            (batch, written)
        })
        .await
        .map_err(|e| RunError::Io(format!("the sink's write task failed: {e}")))?;
        match written {
            Err((done, e)) => {
                if let Some(sent) = batch.get(..done).and_then(<[AuditRecord]>::last) {
                    // Part of the batch went out (a socket): never again.
                    progress.delivered = sent.sequence;
                    progress.unsaved = true;
                    self.monitor.set(|s| s.delivered = sent.sequence);
                }
                progress.pending = batch.into_iter().skip(done).collect();
                return Err(e);
            }
            Ok(false) => {
                progress.pending = batch;
                progress.reopen = true;
                return Ok(Step::Again);
            }
            Ok(true) => {}
        }
        progress.delivered = last;
        progress.unsaved = true;
        self.monitor.set(|s| s.delivered = last);
        // The lines are durable in the file: a cursor that is not saved now is found again
        // from the file's last line.
        self.cursors.set_delivered(&self.name, last).await?;
        progress.unsaved = false;
        Ok(Step::Delivered)
    }

    async fn follow_from(&self, delivered: u64) -> Result<Follower, RunError> {
        match Follower::start(&self.audit, delivered).await {
            Ok(f) => Ok(f),
            Err(ExportError::AheadOfLog { since, head }) => {
                tracing::error!(sink = %self.name, cursor = since, head, "the audit sink's cursor is past the end of the log (a restored database?); delivering from the log's end");
                Ok(Follower::start(&self.audit, head).await?)
            }
            Err(ExportError::Pruned { after, oldest }) => {
                tracing::error!(sink = %self.name, from = after + 1, to = oldest - 1, "audit records were pruned before this sink delivered them");
                Ok(Follower::start(&self.audit, oldest - 1).await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn with_file<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn SinkOut) -> Result<T, RunError> + Send + 'static,
    ) -> Result<T, RunError> {
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || f(&mut **file.lock().unwrap_or_else(PoisonError::into_inner)))
            .await
            .map_err(|e| RunError::Io(format!("the sink's file task failed: {e}")))?
    }
}

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum RunError {
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Storage(#[from] StoreError),
    #[error("the audit log stopped")]
    Closed,
    #[error(transparent)]
    Export(ExportError),
}

impl From<ExportError> for RunError {
    fn from(e: ExportError) -> Self {
        match e {
            ExportError::Closed => RunError::Closed,
            ExportError::Storage(e) => RunError::Storage(e),
            other => RunError::Export(other),
        }
    }
}

impl From<FsError> for RunError {
    fn from(e: FsError) -> Self {
        RunError::Io(e.to_string())
    }
}

fn io_error(op: &str, path: &Path, e: &io::Error) -> RunError {
    RunError::Io(format!("{op} {}: {e}", path.display()))
}

/// The sink's file: open, append, rotate (blocking).
#[derive(Debug)]
struct FileOut {
    config: FileSinkConfig,
    /// The open file and its size.
    open: Option<(File, u64)>,
}

impl FileOut {
    fn new(config: FileSinkConfig) -> Self {
        FileOut { config, open: None }
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut name = self.config.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn dir(&self) -> &Path {
        self.config.path.parent().unwrap_or(Path::new("/"))
    }

    /// Whether the open file is still the one at `PATH` (not removed, moved or replaced).
    fn is_current(&self) -> bool {
        let Some((file, _)) = &self.open else { return false };
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            match (file.metadata(), fs::symlink_metadata(&self.config.path)) {
                (Ok(open), Ok(at_path)) => open.dev() == at_path.dev() && open.ino() == at_path.ino(),
                _ => false,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = file;
            self.config.path.exists()
        }
    }

    /// (Re)opens `PATH` (creating it 0600; its directory must exist), cuts off a torn last
    /// line, and returns the position of the last complete line: of `PATH`, or of `PATH.1`
    /// when `PATH` has none.
    fn reopen(&mut self) -> Result<Option<(u64, String)>, RunError> {
        self.open = None;
        let path = self.config.path.clone();
        let dir = self.dir().to_path_buf();
        if !dir.is_dir() {
            return Err(RunError::Io(format!("the sink directory {} is missing", dir.display())));
        }
        if fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
            return Err(RunError::Io(format!("{} is not a regular file (a symlink?); refusing to write through it", path.display())));
        }
        let mut options = OpenOptions::new();
        options.read(true).append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // Never through a symlink put there after the check above.
            options.mode(fsutil::FILE_MODE).custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
        }
        let created = !path.exists();
        let mut file = options.open(&path).map_err(|e| io_error("open", &path, &e))?;
        // What was opened, not what the path names now: a regular file of ours, 0600.
        let opened = file.metadata().map_err(|e| io_error("stat", &path, &e))?;
        if !opened.is_file() {
            return Err(RunError::Io(format!("{} is not a regular file; refusing to write to it", path.display())));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            if opened.uid() != rustix::process::geteuid().as_raw() {
                return Err(RunError::Io(format!(
                    "{} belongs to another user (uid {}); refusing to write to it",
                    path.display(),
                    opened.uid()
                )));
            }
        }
        fsutil::check_private(&path, fsutil::FILE_MODE)?;
        if created {
            fsutil::sync_dir(&dir)?;
        }
        let (size, mut tail) = last_line(&mut file, &path, true)?;
        self.open = Some((file, size));
        if tail.is_none() && size == 0 {
            let previous = self.rotated(1);
            if let Ok(mut older) = File::open(&previous) {
                tail = last_line(&mut older, &previous, false)?.1;
            }
        }
        Ok(tail)
    }

    /// Appends `records` (rotating as needed) and fsyncs.
    fn write_lines(&mut self, records: &[AuditRecord]) -> Result<(), RunError> {
        if self.open.is_none() {
            return Err(RunError::Io("the sink file is not open".to_owned()));
        }
        let path = self.config.path.clone();
        let mut buffer = Vec::new();
        for record in records {
            let mut line = json_line(record).into_bytes();
            line.push(b'\n');
            let size = self.open.as_ref().map_or(0, |o| o.1) + buffer.len() as u64;
            if size > 0 && size + line.len() as u64 > self.config.max_bytes {
                self.flush(&mut buffer)?;
                self.rotate()?;
            }
            buffer.extend_from_slice(&line);
        }
        self.flush(&mut buffer)?;
        let (file, _) = self.open.as_mut().ok_or_else(|| RunError::Io("the sink file is not open".to_owned()))?;
        file.sync_data().map_err(|e| io_error("fsync", &path, &e))
    }

    fn flush(&mut self, buffer: &mut Vec<u8>) -> Result<(), RunError> {
        let path = self.config.path.clone();
        let (file, size) = self.open.as_mut().ok_or_else(|| RunError::Io("the sink file is not open".to_owned()))?;
        if let Err(e) = file.write_all(buffer) {
            // A torn line may be left: the next open cuts it off.
            self.open = None;
            return Err(io_error("write", &path, &e));
        }
        *size += buffer.len() as u64;
        buffer.clear();
        Ok(())
    }

    /// `PATH` → `PATH.1` → … → `PATH.keep` (the oldest removed), and a new `PATH`.
    fn rotate(&mut self) -> Result<(), RunError> {
        let path = self.config.path.clone();
        if let Some((file, _)) = self.open.take() {
            file.sync_all().map_err(|e| io_error("fsync", &path, &e))?;
        }
        let oldest = self.rotated(self.config.keep);
        match fs::remove_file(&oldest) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_error("remove", &oldest, &e)),
            _ => {}
        }
        for n in (1..self.config.keep).rev() {
            let from = self.rotated(n);
            match fs::rename(&from, self.rotated(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_error("rename", &from, &e)),
                _ => {}
            }
        }
        fs::rename(&path, self.rotated(1)).map_err(|e| io_error("rename", &path, &e))?;
        fsutil::sync_dir(self.dir())?;
        // The new file is empty: its tail is the rotated one's, already delivered.
        self.reopen().map(drop)
    }
}

impl SinkOut for FileOut {
    fn open(&mut self) -> Result<Option<(u64, String)>, RunError> {
        self.reopen()
    }

    fn still_open(&self) -> bool {
        self.is_current()
    }

    fn write(&mut self, records: &[AuditRecord]) -> Result<(), (usize, RunError)> {
        // What a failed write left is found from the file's last line at the next open.
        self.write_lines(records).map_err(|e| (0, e))
    }
}

/// The size of `file` and the position of its last complete line; with `repair`, a torn last
/// line (no newline at the end) is cut off first.
fn last_line(file: &mut File, path: &Path, repair: bool) -> Result<(u64, Option<(u64, String)>), RunError> {
    let mut size = file.metadata().map_err(|e| io_error("stat", path, &e))?.len();
    let start = size.saturating_sub(TAIL);
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(start)).map_err(|e| io_error("seek", path, &e))?;
    Read::by_ref(file).take(TAIL).read_to_end(&mut tail).map_err(|e| io_error("read", path, &e))?;
    if !tail.is_empty() && tail.last() != Some(&b'\n') {
        let keep = match tail.iter().rposition(|b| *b == b'\n') {
            Some(i) => start + i as u64 + 1,
            None if start == 0 => 0,
            // A last line longer than the window: not ours; leave it.
            None => return Ok((size, None)),
        };
        if !repair {
            return Ok((size, None));
        }
        // Only a line of ours is cut: the complete line before it must be a sink line (or, with
        // none, the torn one must start like one), so a sink pointed at another file by mistake
        // never truncates it.
        let before = String::from_utf8_lossy(&tail[..usize::try_from(keep - start).unwrap_or(0)]).into_owned();
        let ours = match before.trim_end_matches('\n').rsplit('\n').next() {
            Some(line) if !line.is_empty() => line_position(line).is_some(),
            _ if keep == 0 => tail.starts_with(b"{\"sequence\":"),
            _ => false,
        };
        if !ours {
            return Err(RunError::Io(format!(
                "{} ends with a line that is not an audit sink line; refusing to write to a file that is not a sink",
                path.display()
            )));
        }
        tracing::warn!(path = %path.display(), cut = size - keep, "the audit sink file ends with a torn line (a write cut short); cutting it off");
        file.set_len(keep).map_err(|e| io_error("truncate", path, &e))?;
        file.sync_all().map_err(|e| io_error("fsync", path, &e))?;
        tail.truncate(usize::try_from(keep - start).unwrap_or(0));
        size = keep;
    }
    let text = String::from_utf8_lossy(&tail);
    let last = text.trim_end_matches('\n').rsplit('\n').next().unwrap_or("");
    Ok((size, line_position(last)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, max_bytes: u64, keep: usize) -> FileSinkConfig {
        FileSinkConfig { path: dir.join("audit.jsonl"), max_bytes, keep }
    }

    fn record(sequence: u64) -> AuditRecord {
        AuditRecord {
            sequence,
            entry: crate::audit::AuditEntry {
                at: std::time::SystemTime::UNIX_EPOCH,
                principal: "p".into(),
                action: "a".into(),
                resource: "r".into(),
                decision: crate::audit::AuditDecision::Allow,
                reason: "x".repeat(50),
            },
            hash: format!("{sequence:064x}"),
        }
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_the_last_whole_one_read_back() -> Result<(), RunError> {
        let dir = tempfile::tempdir().map_err(|e| RunError::Io(e.to_string()))?;
        let mut out = FileOut::new(config(dir.path(), DEFAULT_MAX_BYTES, 2));
        assert_eq!(out.reopen()?, None);
        out.write_lines(&[record(1), record(2)])?;
        let path = dir.path().join("audit.jsonl");
        let mut torn = fs::read(&path).map_err(|e| RunError::Io(e.to_string()))?;
        let whole = torn.len();
        torn.extend_from_slice(&json_line(&record(3)).as_bytes()[..20]);
        fs::write(&path, &torn).map_err(|e| RunError::Io(e.to_string()))?;
        assert_eq!(out.reopen()?, Some((2, format!("{:064x}", 2))));
        assert_eq!(fs::metadata(&path).map(|m| m.len()).ok(), Some(whole as u64));
        Ok(())
    }

    #[test]
    fn rotation_keeps_the_configured_files_and_reads_back_through_a_new_file() -> Result<(), RunError> {
        let dir = tempfile::tempdir().map_err(|e| RunError::Io(e.to_string()))?;
        // Records 10..=21: lines of one length.
        let line = json_line(&record(10)).len() as u64 + 1;
        let mut out = FileOut::new(config(dir.path(), line * 3, 2));
        out.reopen()?;
        for n in 10..=21 {
            out.write_lines(&[record(n)])?;
        }
        let read = |name: &str| fs::read_to_string(dir.path().join(name)).unwrap_or_default();
        let sequences = |text: String| text.lines().filter_map(line_position).map(|p| p.0).collect::<Vec<_>>();
        assert_eq!(sequences(read("audit.jsonl")), vec![19, 20, 21]);
        assert_eq!(sequences(read("audit.jsonl.1")), vec![16, 17, 18]);
        assert_eq!(sequences(read("audit.jsonl.2")), vec![13, 14, 15]);
        assert!(!dir.path().join("audit.jsonl.3").exists());
        #[cfg(unix)]
        for name in ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(name)).map(|m| m.permissions().mode() & 0o777).ok();
            assert_eq!(mode, Some(0o600), "{name}");
        }
        // A rotation that left the new file empty: the tail comes from PATH.1.
        out.write_lines(&[record(22)])?;
        fs::rename(dir.path().join("audit.jsonl"), dir.path().join("audit.jsonl.1"))
            .map_err(|e| RunError::Io(e.to_string()))?;
        assert!(!out.is_current() || cfg!(not(unix)));
        assert_eq!(out.reopen()?.map(|p| p.0), Some(22));
        Ok(())
    }

    #[test]
    fn a_sink_pointed_at_a_file_that_is_not_one_truncates_nothing() -> Result<(), RunError> {
        let dir = tempfile::tempdir().map_err(|e| RunError::Io(e.to_string()))?;
        let path = dir.path().join("audit.jsonl");
        // Another program's file at the sink's path, ending without a newline.
        let foreign = b"first line of something else\nits last line, unterminated".to_vec();
        for text in [foreign.clone(), b"no newline at all".to_vec()] {
            fs::write(&path, &text).map_err(|e| RunError::Io(e.to_string()))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(|e| RunError::Io(e.to_string()))?;
            }
            let mut out = FileOut::new(config(dir.path(), DEFAULT_MAX_BYTES, 2));
            let refused = out.reopen();
            assert!(matches!(&refused, Err(RunError::Io(m)) if m.contains("not an audit sink line")), "{refused:?}");
            assert_eq!(fs::read(&path).ok(), Some(text), "the file is left as it was");
        }
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_at_the_sink_path_is_never_written_through() -> Result<(), RunError> {
        let dir = tempfile::tempdir().map_err(|e| RunError::Io(e.to_string()))?;
        let target = dir.path().join("elsewhere");
        fs::write(&target, b"precious").map_err(|e| RunError::Io(e.to_string()))?;
        std::os::unix::fs::symlink(&target, dir.path().join("audit.jsonl")).map_err(|e| RunError::Io(e.to_string()))?;
        let mut out = FileOut::new(config(dir.path(), DEFAULT_MAX_BYTES, 2));
        assert!(out.reopen().is_err());
        assert_eq!(fs::read(&target).ok(), Some(b"precious".to_vec()));
        Ok(())
    }
}
