//! Backups and recovery, the pure parts: the backup file format ([`format`]: a versioned
//! header, then the body in ChaCha20-Poly1305 chunks whose index and final flag are bound
//! into each chunk's nonce and AAD) and the recovery code that seals the root key
//! ([`recovery`]), and its K-of-N shares ([`shares`]). No database and no data dir here: `node_backup` composes them with the
//! storage snapshot and the files of a data dir.

pub mod format;
pub mod recovery;
pub mod shares;

pub use format::{BackupReader, BackupWriter, Header, read_entries};
pub use recovery::{RecoveryCode, open_root_key, seal_root_key};
pub use shares::Share;

/// Why a backup could not be written, read or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The file does not start with the backup magic.
    #[error("not a Palyra backup (it does not start with the backup header)")]
    NotABackup,
    /// A format or KDF this build does not know.
    #[error("made by a newer palyra ({0}); restore it with a newer palyra")]
    NewerVersion(String),
    /// The file ends before its final chunk.
    #[error("the backup is truncated ({0}); use a complete copy")]
    Truncated(String),
    /// A chunk failed its authentication, or chunks are missing, reordered or added.
    #[error("the backup was edited or damaged ({0}); use an intact copy")]
    Edited(String),
    /// A field out of its bounds.
    #[error("the backup is malformed ({0})")]
    Malformed(String),
    /// The recovery code does not open the sealed root key.
    #[error(
        "the recovery code does not open this backup (the code of another kit, or the backup's header was edited)"
    )]
    WrongCode,
    /// The recovery code as typed does not parse.
    #[error("{0}; check it against the printed kit")]
    BadCode(String),
    /// The system's random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// Reading or writing failed.
    #[error("{0}")]
    Io(String),
}

impl BackupError {
    /// A bad backup file or recovery seal (exit code 5), as opposed to a failed read or write.
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            BackupError::NotABackup
                | BackupError::NewerVersion(_)
                | BackupError::Truncated(_)
                | BackupError::Edited(_)
                | BackupError::Malformed(_)
                | BackupError::WrongCode
        )
    }

    /// Recovers a `BackupError` carried through an `io::Error` (the reader's `Read`), else an
    /// [`BackupError::Io`] naming `what` failed.
    pub(crate) fn from_io(e: std::io::Error, what: &str) -> BackupError {
        if e.get_ref().is_some_and(|inner| inner.is::<BackupError>()) {
            if let Some(Ok(err)) = e.into_inner().map(|inner| inner.downcast::<BackupError>()) {
                return *err;
            }
            return BackupError::Io(format!("{what} failed"));
        }
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            return BackupError::Truncated(format!("{what}: the file ends early"));
        }
        BackupError::Io(format!("{what}: {e}"))
    }
}
