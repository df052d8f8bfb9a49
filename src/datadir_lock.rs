//! One process per data dir: `palyra serve` and every offline command that writes take an
//! exclusive lock on `<data dir>/palyra.lock` (an OS file lock, released when the process
//! exits, however it exits) and write their PID and command into it, so a second one is
//! refused with a message naming who holds it.

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

#[cfg(test)]
mod tests {
    use super::*;

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
