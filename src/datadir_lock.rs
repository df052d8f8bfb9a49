//! One process per data dir: `palyra serve` and every offline command that writes take an
//! exclusive lock on `<data dir>/palyra.lock` (an OS file lock, released when the process
//! exits, however it exits) and write their PID and command into it, so a second one is
//! refused with a message naming who holds it.
//!
//! Beside it, a serving node records the addresses it actually listens on in
//! `<data dir>/serve.json` (0600; removed when it stops cleanly), so the CLI finds it without
//! `--server`. A record whose writer no longer holds the lock (a killed serve) is ignored.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name in the data dir.
pub const LOCK_FILE: &str = "palyra.lock";

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("the data dir {dir} is in use by {holder}; stop it first (one palyra process per data dir)")]
    Held {
        /// The data dir.
        dir: PathBuf,
        /// Who holds it, from the lock file (`pid N (palyra serve)`), or a description.
        holder: String,
    },
    /// The lock file could not be opened or written.
    #[error("cannot lock the data dir {dir}: {source}")]
    Io {
        /// The data dir.
        dir: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

/// The held lock; dropping it (or exiting) releases it.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the exclusive lock of `data_dir` for `command` (e.g. `palyra serve`), without
    /// waiting. The data dir must exist.
    pub fn acquire(data_dir: &Path, command: &str) -> Result<Self, LockError> {
        let io = |source| LockError::Io { dir: data_dir.to_path_buf(), source };
        let path = data_dir.join(LOCK_FILE);
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, crate::fsutil::FILE_MODE);
        let mut file = options.open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = holder(&text);
                return Err(LockError::Held { dir: data_dir.to_path_buf(), holder });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{} {command}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(DataDirLock { _file: file })
    }
}

/// `pid N (command)` from the lock file's `N command` line.
fn holder(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    match line.split_once(' ') {
        Some((pid, command)) if pid.parse::<u32>().is_ok() => format!("pid {pid} ({})", command.trim()),
        _ => "another palyra process".to_owned(),
    }
}

/// The serve record's name in the data dir.
pub const SERVE_FILE: &str = "serve.json";

/// The largest serve record read (a few addresses).
const MAX_SERVE_FILE: u64 = 4096;

/// What a serving node listens on: addresses to dial (an unspecified bind address is recorded
/// as loopback).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServeRecord {
    /// The serving process.
    pub pid: u32,
    /// gRPC (TLS) address.
    pub grpc: std::net::SocketAddr,
    /// QUIC (UDP) address.
    pub quic: std::net::SocketAddr,
    /// The web console's address, if it runs.
    pub console: Option<std::net::SocketAddr>,
}

/// The written serve record; dropping it (a clean stop) removes the file.
#[derive(Debug)]
pub struct ServeRecordFile {
    path: PathBuf,
}

impl Drop for ServeRecordFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl DataDirLock {
    /// Records `record` in `<data dir>/serve.json` (0600, atomic) while this lock is held.
    pub fn record_serving(&self, data_dir: &Path, record: &ServeRecord) -> Result<ServeRecordFile, LockError> {
        let io = |source| LockError::Io { dir: data_dir.to_path_buf(), source };
        let path = data_dir.join(SERVE_FILE);
        let text = serde_json::to_vec(record).map_err(|e| io(std::io::Error::other(e)))?;
        crate::fsutil::write_private_atomic(&path, &text, true).map_err(|e| io(std::io::Error::other(e)))?;
        Ok(ServeRecordFile { path })
    }
}

/// The record of the node serving on `data_dir`, if one is: the file exists, parses, and the
/// process it names still holds the data dir's lock.
pub fn serving(data_dir: &Path) -> Option<ServeRecord> {
    let mut text = String::new();
    File::open(data_dir.join(SERVE_FILE)).ok()?.take(MAX_SERVE_FILE).read_to_string(&mut text).ok()?;
    let record: ServeRecord = serde_json::from_str(&text).ok()?;
    let mut lock = File::open(data_dir.join(LOCK_FILE)).ok()?;
    let mut holder = String::new();
    (&mut lock).take(256).read_to_string(&mut holder).ok()?;
    if holder.lines().next().map(str::trim) != Some(format!("{} palyra serve", record.pid).as_str()) {
        return None;
    }
    // Held by someone: the writer, still serving. Free: the writer is gone (released at once).
    match lock.try_lock_shared() {
        Err(TryLockError::WouldBlock) => Some(record),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serve_record_counts_only_while_its_writer_holds_the_lock() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let data = tmp.path().join("node");
        crate::fsutil::ensure_private_dir(&data).unwrap_or_else(|e| panic!("{e}"));
        let record = ServeRecord {
            pid: std::process::id(),
            grpc: "127.0.0.1:1".parse().unwrap_or_else(|e| panic!("{e}")),
            quic: "127.0.0.1:2".parse().unwrap_or_else(|e| panic!("{e}")),
            console: None,
        };
        let lock = DataDirLock::acquire(&data, "palyra serve").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(serving(&data), None, "no record yet");
        let file = lock.record_serving(&data, &record).unwrap_or_else(|e| panic!("{e}"));
        // flock locks are per open file description: a probe from this process sees it held.
        assert_eq!(serving(&data), Some(record.clone()));
        drop(lock);
        assert_eq!(serving(&data), None, "a record whose lock is free is stale");
        let again = DataDirLock::acquire(&data, "palyra policy reset").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(serving(&data), None, "held by another pid line, not the writer's");
        drop((again, file));
        assert!(!&data.join(SERVE_FILE).exists(), "a clean stop removes the record");
    }

    #[test]
    fn a_second_holder_is_refused_with_the_pid_and_the_lock_is_released_on_drop() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let first = DataDirLock::acquire(dir.path(), "palyra serve").unwrap_or_else(|e| panic!("{e}"));
        let err = DataDirLock::acquire(dir.path(), "palyra policy reset").err().map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains(&format!("pid {} (palyra serve)", std::process::id())), "{err}");
        drop(first);
        let again = DataDirLock::acquire(dir.path(), "palyra policy reset");
        assert!(again.is_ok(), "{again:?}");
    }
}
