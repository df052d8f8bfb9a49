//! WAL checkpoints off the writer's commit path.
//!
//! By default SQLite checkpoints inside the COMMIT that takes the WAL past 1,000 pages: the
//! committing connection copies the WAL into the database file and fsyncs it, a few
//! milliseconds during which every write queued behind it waits (at 64 writers, a third of
//! the writer thread's time went to COMMIT, a good part of it to these checkpoints). Here the
//! writer's WAL hook only looks at the WAL's size and wakes a thread of its own, which
//! checkpoints on its own connection in PASSIVE mode: it copies what is committed without
//! taking a lock any writer or reader waits for, so the writer goes on committing meanwhile.
//!
//! Bounds: a PASSIVE checkpoint cannot copy frames a reader still needs, and the WAL is
//! rewound only once everything in it is copied. Should the WAL still reach
//! [`WRITER_CHECKPOINT_PAGES`], the writer checkpoints itself in its commit, as SQLite would
//! have from the start: a slow checkpointer costs write latency, not a WAL growing past what
//! SQLite's own autocheckpoint would allow (readers that never let go hold back either). The
//! writer's `journal_size_limit` cuts a rewound WAL back to 4 MiB.

use std::ffi::c_int;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use rusqlite::{Connection, OpenFlags, hooks::Wal, wal::CheckpointMode};

use crate::store_error::StoreError;

/// WAL size (pages) at which the checkpointer is woken: SQLite's own autocheckpoint default.
pub(super) const CHECKPOINT_PAGES: c_int = 1000;
/// WAL size (pages, 16× the above: 64 MiB at 4 KiB pages) at which the writer stops relying
/// on the checkpointer and checkpoints in its own commit.
pub(super) const WRITER_CHECKPOINT_PAGES: c_int = 16 * CHECKPOINT_PAGES;

/// Checkpoints run by the checkpointer thread since the store opened (for tests).
#[derive(Debug, Default)]
pub(crate) struct CheckpointCount(AtomicU64);

impl CheckpointCount {
    #[cfg(test)]
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Starts the checkpointer thread for the database at `path` and makes `writer` wake it
/// (replacing SQLite's autocheckpoint on that connection). The thread ends when `writer`
/// is closed (the hook holds the only way to wake it).
pub(super) fn install(
    writer: &mut Connection,
    path: &Path,
) -> Result<(Arc<CheckpointCount>, std::thread::JoinHandle<()>), StoreError> {
    let conn = super::open_connection(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    // A checkpoint syncs the WAL before copying it and the database file after.
    conn.execute_batch("PRAGMA synchronous = FULL")?;
    let count = Arc::new(CheckpointCount::default());
    let counted = Arc::clone(&count);
    // One pending wake-up is enough: a checkpoint copies everything committed before it.
    let (wake, woken) = mpsc::sync_channel::<()>(1);
    let thread = std::thread::Builder::new()
        .name("palyra-db-checkpoint".into())
        .spawn(move || {
            while woken.recv().is_ok() {
                match conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
                    Ok(_) => {
                        counted.0.fetch_add(1, Ordering::Relaxed);
                    }
                    // Another connection is checkpointing (the writer past its bound, or one
                    // closing): that one copies the WAL.
                    Err(e) if busy(&e) => {}
                    // The next commit past the mark wakes it again; the writer's own bound holds.
                    Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
                }
            }
        })
        .map_err(|e| StoreError::new(format_args!("cannot start the checkpoint thread: {e}")))?;
    writer.wal_hook(Some(move |wal: &mut Wal, pages: c_int| {
        if pages >= WRITER_CHECKPOINT_PAGES {
            if let Err(e) = wal.checkpoint_v2(CheckpointMode::PASSIVE)
                && !busy(&e)
            {
                tracing::warn!(error = %e, pages, "WAL checkpoint by the writer failed");
            }
        } else if pages >= CHECKPOINT_PAGES {
            let _ = wake.try_send(());
        }
        // The commit itself succeeded whatever the checkpoint did.
        Ok(())
    }))?;
    Ok((count, thread))
}

/// SQLITE_BUSY: a checkpoint is already running on another connection.
fn busy(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
}
