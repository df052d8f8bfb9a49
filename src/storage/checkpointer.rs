//! WAL checkpoints off the writer's commit path.
//!
//! By default SQLite checkpoints inside the COMMIT that takes the WAL past 1,000 pages: the
//! committing connection copies the WAL into the database file and fsyncs it, a few
//! milliseconds during which every write queued behind it waits (at 64 writers, a third of
//! the writer thread's time went to COMMIT, a good part of it to these checkpoints). Here the
//! writer's WAL hook only counts the frames no checkpoint has copied yet and wakes a thread of
//! its own once there are [`CHECKPOINT_PAGES`] (250) of them; that thread checkpoints on its own
//! connection in PASSIVE mode: it copies what is committed without taking a lock any writer
//! or reader waits for, so the writer goes on committing meanwhile.
//!
//! The wake-up counts frames not yet copied, not the WAL's size: under steady writes the WAL
//! is rarely rewound (only a write that begins when everything in it is copied rewinds it), so
//! a WAL past the mark would otherwise wake a checkpoint after every commit, each with two
//! fsyncs for the few pages of one write (2.7 fsyncs a write for one client's puts, instead of
//! one). Copying 250 frames at once also copies each page once, however many commits changed
//! it.
//!
//! Bounds: a PASSIVE checkpoint cannot copy frames a reader still needs, and the WAL is
//! rewound only once everything in it is copied. Should the WAL still reach
//! [`WRITER_CHECKPOINT_PAGES`], the writer checkpoints itself in its commit (copying only what
//! the checkpointer has not), after which the next write rewinds it: a slow checkpointer costs
//! write latency, not a WAL growing past that bound (readers that never let go hold back
//! either). The writer's `journal_size_limit` cuts a rewound WAL back to that bound
//! ([`WAL_FILE_LIMIT`]).

use std::ffi::c_int;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use rusqlite::{Connection, OpenFlags, hooks::Wal, wal::CheckpointMode};

use crate::store_error::StoreError;

/// WAL frames not yet copied at which the checkpointer is woken: a quarter of SQLite's own
/// autocheckpoint mark. A checkpoint ends with an fsync of the database file, which a commit's
/// fsync of the WAL can wait behind; smaller checkpoints, more often, kept the put p99 at 1.4–1.7
/// ms for one client and 14–19 ms for 64 (1.9–2.7 and 26–45 ms at 1,000 pages; `cargo bench
/// --bench e2e`, scenario 2).
pub(super) const CHECKPOINT_PAGES: c_int = 250;
/// WAL size (pages, 16× the above: 16 MiB at 4 KiB pages) at which the writer stops relying
/// on the checkpointer and checkpoints in its own commit.
pub(super) const WRITER_CHECKPOINT_PAGES: c_int = 16 * CHECKPOINT_PAGES;
/// The writer's `journal_size_limit`, in bytes: what a rewound WAL file is cut back to. As
/// large as the writer's bound lets the WAL grow (4 KiB pages), so that a WAL cycling under
/// steady writes overwrites its file instead of growing it again after every rewind: at 4 MiB
/// the load bench's WAL went 4 → 13 MiB and back a few times a second, and a commit that
/// grows the file syncs its size too.
pub(super) const WAL_FILE_LIMIT: i64 = WRITER_CHECKPOINT_PAGES as i64 * 4096;

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
    let copied = Arc::new(Copied::default());
    let copied_by_thread = Arc::clone(&copied);
    // One pending wake-up is enough: a checkpoint copies everything committed before it.
    let (wake, woken) = mpsc::sync_channel::<()>(1);
    let thread = std::thread::Builder::new()
        .name("palyra-db-checkpoint".into())
        .spawn(move || {
            while woken.recv().is_ok() {
                match conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
                    Ok((frames, frames_copied)) => {
                        copied_by_thread.set(frames, frames_copied);
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
            match wal.checkpoint_v2(CheckpointMode::PASSIVE) {
                Ok((frames, frames_copied)) => copied.set(frames, frames_copied),
                Err(e) if busy(&e) => {}
                Err(e) => tracing::warn!(error = %e, pages, "WAL checkpoint by the writer failed"),
            }
        } else if copied.not_copied(pages) >= CHECKPOINT_PAGES {
            let _ = wake.try_send(());
        }
        // The commit itself succeeded whatever the checkpoint did.
        Ok(())
    }))?;
    Ok((count, thread))
}

/// What the last checkpoint saw: the WAL's frames and how many of them it left copied
/// (SQLite's `nBackfill`), in one word so that the two are read together.
#[derive(Debug, Default)]
struct Copied(AtomicU64);

impl Copied {
    fn set(&self, frames: c_int, copied: c_int) {
        let (frames, copied) = (u32::try_from(frames).unwrap_or(0), u32::try_from(copied).unwrap_or(0));
        self.0.store(u64::from(frames) << 32 | u64::from(copied), Ordering::Relaxed);
    }

    /// Frames of a WAL now `pages` long that no checkpoint has copied. A WAL shorter than the
    /// last checkpoint saw was rewound since: all of it is new.
    fn not_copied(&self, pages: c_int) -> c_int {
        let word = self.0.load(Ordering::Relaxed);
        let (frames, copied) = ((word >> 32) as u32, word as u32);
        let pages_now = u32::try_from(pages).unwrap_or(0);
        let new = if pages_now < frames { pages_now } else { pages_now - copied.min(pages_now) };
        c_int::try_from(new).unwrap_or(c_int::MAX)
    }
}

/// SQLITE_BUSY: a checkpoint is already running on another connection.
fn busy(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_not_copied_count_from_the_last_checkpoint_or_from_a_rewound_wal() {
        let copied = Copied::default();
        assert_eq!(copied.not_copied(1500), 1500, "no checkpoint yet");
        copied.set(1500, 1400);
        assert_eq!(copied.not_copied(1500), 100);
        assert_eq!(copied.not_copied(2600), 1200);
        // Rewound since: a WAL shorter than the checkpoint saw is all new.
        assert_eq!(copied.not_copied(900), 900);
        assert_eq!(copied.not_copied(0), 0);
        // A checkpoint that copied nothing (a reader holds its frames).
        copied.set(3000, 0);
        assert_eq!(copied.not_copied(3200), 3200);
        // SQLite reports -1 for a database not in WAL mode: read as nothing.
        copied.set(-1, -1);
        assert_eq!(copied.not_copied(10), 10);
    }
}
