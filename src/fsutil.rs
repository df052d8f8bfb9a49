//! Private files and directories: creation with tight modes, permission checks, atomic writes.
//!
//! Everything Palyra keeps on disk that matters (the root key file, sealed identity files, the
//! operator's key) goes through here, so that "files 0600 in 0700 directories" and "atomic
//! writes" are decided in one place. This module does not encrypt; callers seal before writing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A filesystem problem, with the path it concerns and, for loose permissions, the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// An I/O operation on `path` failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("create directory", "write", ...).
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `path` is readable or writable by other users.
    #[error(
        "{path} has mode {mode:o}, which lets other users read it; fix it with: chmod {want:o} {path}",
        path = path.display()
    )]
    LoosePermissions {
        /// The offending path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// The mode Palyra requires.
        want: u32,
    },
}

impl FsError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        FsError::Io { op, path: path.to_path_buf(), source }
    }
}

/// Mode of private directories.
pub const DIR_MODE: u32 = 0o700;
/// Mode of private files.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) with mode 0700, or checks that an existing one is
/// not accessible to other users.
pub fn ensure_private_dir(dir: &Path) -> Result<(), FsError> {
    if !dir.exists() {
        create_dir_private(dir)?;
    }
    check_private(dir, DIR_MODE)
}

#[cfg(unix)]
fn create_dir_private(dir: &Path) -> Result<(), FsError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| FsError::io("create directory", dir, e))
}

#[cfg(not(unix))]
fn create_dir_private(dir: &Path) -> Result<(), FsError> {
    fs::create_dir_all(dir).map_err(|e| FsError::io("create directory", dir, e))
}

/// Refuses a file or directory that grants any access to group or others.
///
/// `want` is only used to phrase the fix (`chmod 600` for files, `chmod 700` for directories).
#[cfg(unix)]
pub fn check_private(path: &Path, want: u32) -> Result<(), FsError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).map_err(|e| FsError::io("stat", path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(FsError::LoosePermissions { path: path.to_path_buf(), mode, want });
    }
    Ok(())
}

/// Refuses a file or directory that grants any access to group or others (no-op off Unix,
/// where the per-user profile directory's ACLs apply).
#[cfg(not(unix))]
pub fn check_private(path: &Path, _want: u32) -> Result<(), FsError> {
    fs::metadata(path).map_err(|e| FsError::io("stat", path, e))?;
    Ok(())
}

/// Reads a private file after checking its mode and its directory's mode.
pub fn read_private(path: &Path) -> Result<Vec<u8>, FsError> {
    if let Some(dir) = path.parent() {
        check_private(dir, DIR_MODE)?;
    }
    check_private(path, FILE_MODE)?;
    fs::read(path).map_err(|e| FsError::io("read", path, e))
}

/// Writes `bytes` to `path` atomically with mode 0600: a temporary file in the same directory
/// is written and fsynced, renamed over `path`, and the directory is fsynced, so a crash leaves
/// either the old content or the new, never a torn file.
///
/// With `overwrite == false` an existing `path` is left alone and `AlreadyExists` is returned.
pub fn write_private_atomic(path: &Path, bytes: &[u8], overwrite: bool) -> Result<(), FsError> {
    let dir = parent_dir(path);
    ensure_private_dir(dir)?;
    write_atomic_in(dir, path, bytes, overwrite)
}

/// Writes `bytes` to `path` atomically as a 0600 file, replacing what is there, in a directory
/// that must exist but need not be private (the file's own mode protects it): what `palyra
/// inject` renders secrets into. A symlink at `path` is replaced, never written through.
pub fn write_0600_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    write_atomic_in(parent_dir(path), path, bytes, true)
}

/// The directory `path` is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn write_atomic_in(dir: &Path, path: &Path, bytes: &[u8], overwrite: bool) -> Result<(), FsError> {
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Unique per process and per call, so concurrent writers never share a temp file.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{file_name}.tmp-{}-{n}", std::process::id()));
    let result = (|| {
        let mut file = create_private_file(&tmp)?;
        file.write_all(bytes).map_err(|e| FsError::io("write", &tmp, e))?;
        file.sync_all().map_err(|e| FsError::io("fsync", &tmp, e))?;
        drop(file);
        if overwrite {
            fs::rename(&tmp, path).map_err(|e| FsError::io("rename into", path, e))?;
        } else {
            // A hard link fails if the target exists, which makes "create, never overwrite"
            // atomic even against a concurrent writer.
            fs::hard_link(&tmp, path).map_err(|e| FsError::io("create", path, e))?;
            fs::remove_file(&tmp).map_err(|e| FsError::io("remove", &tmp, e))?;
        }
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn create_private_file(path: &Path) -> Result<File, FsError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE);
    }
    options.open(path).map_err(|e| FsError::io("create", path, e))
}

/// Fsyncs a directory so that a rename or create in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    #[cfg(unix)]
    {
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| FsError::io("fsync directory", dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0)
    }

    #[test]
    fn creates_private_dirs_and_files() -> Result<(), FsError> {
        let tmp = tempfile::tempdir().map_err(|e| FsError::io("tempdir", Path::new("/tmp"), e))?;
        let dir = tmp.path().join("a/b");
        ensure_private_dir(&dir)?;
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("f");
        write_private_atomic(&file, b"one", false)?;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(read_private(&file)?, b"one");
        assert!(write_private_atomic(&file, b"two", false).is_err(), "must not overwrite");
        assert_eq!(read_private(&file)?, b"one");
        write_private_atomic(&file, b"two", true)?;
        assert_eq!(read_private(&file)?, b"two");
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .map_err(|e| FsError::io("read dir", &dir, e))?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left behind");
        Ok(())
    }

    #[test]
    fn refuses_loose_modes_and_names_the_fix() -> Result<(), FsError> {
        let tmp = tempfile::tempdir().map_err(|e| FsError::io("tempdir", Path::new("/tmp"), e))?;
        let dir = tmp.path().join("d");
        ensure_private_dir(&dir)?;
        let file = dir.join("k");
        write_private_atomic(&file, b"x", false)?;
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644))
            .map_err(|e| FsError::io("chmod", &file, e))?;
        let err = read_private(&file).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("chmod 600"), "{err}");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| FsError::io("chmod", &dir, e))?;
        let err = ensure_private_dir(&dir).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("chmod 700"), "{err}");
        Ok(())
    }
}
