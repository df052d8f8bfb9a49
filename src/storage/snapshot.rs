//! Consistent copies of the database for backups, and the one change a restore makes to one.
//!
//! [`snapshot`] copies a live database with SQLite's online backup API in a single step: one
//! read transaction, so the copy is the database as of one commit even while `palyra serve`
//! writes (WAL readers never block the writer, nor it them). It works the same on a stopped
//! node, and needs neither the data dir's lock nor the node's keys.

use std::path::Path;
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::{MIGRATIONS, open_connection};
use crate::store_error::StoreError;

/// What a restore needs to know of a snapshot before it opens anything.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotMeta {
    /// `meta.key_backend`: where the source node keeps its root key.
    pub key_backend: Option<String>,
    /// `meta.key_id`: the name of its keychain item.
    pub key_id: Option<String>,
}

/// Copies the database at `source` into a new file `dest` (which must not exist) as of one
/// commit; returns what the copy records about the root key.
pub(crate) fn snapshot(source: &Path, dest: &Path) -> Result<SnapshotMeta, StoreError> {
    if !source.exists() {
        return Err(StoreError::new(format_args!("no database at {}", source.display())));
    }
    // Read-write without create (a read-only connection cannot open a WAL database whose -shm
    // is missing), but it only reads.
    let from = open_connection(source, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    from.execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 5000;")?;
    let mut to = Connection::open_with_flags(
        dest,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    {
        let backup = Backup::new(&from, &mut to)?;
        // -1: every page in one step, under one read transaction: a consistent copy that no
        // concurrent write restarts. Busy or locked (a checkpoint holding the lock) is retried.
        let mut tries = 0;
        loop {
            match backup.step(-1)? {
                StepResult::Done => break,
                StepResult::More => {}
                StepResult::Busy | StepResult::Locked => {
                    tries += 1;
                    if tries > 500 {
                        return Err(StoreError::new("the database stayed locked for 5 s; try the backup again"));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => return Err(StoreError::new("the database backup stopped unexpectedly")),
            }
        }
    }
    drop(from);
    // The copy stands alone: no -wal beside it.
    to.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))?;
    let meta = read_meta(&to)?;
    to.close().map_err(|(_, e)| StoreError::from(e))?;
    Ok(meta)
}

fn read_meta(conn: &Connection) -> Result<SnapshotMeta, StoreError> {
    let get = |key: &str| -> Result<Option<String>, StoreError> {
        Ok(conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    };
    Ok(SnapshotMeta { key_backend: get("key_backend")?, key_id: get("key_id")? })
}

/// Checks a restored database file before it is put in place (a schema this build knows,
/// SQLite's `quick_check`); returns its metadata.
pub(crate) fn check_restored(db: &Path) -> Result<SnapshotMeta, StoreError> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    let version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let latest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if version > latest {
        return Err(StoreError::new(format_args!(
            "the backed-up database is at schema version {version}, newer than this build knows ({latest}); use a newer palyra"
        )));
    }
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(StoreError::integrity(format_args!("the backed-up database fails quick_check: {check}")));
    }
    let meta = read_meta(&conn)?;
    conn.close().map_err(|(_, e)| StoreError::from(e))?;
    Ok(meta)
}

/// Records `backend` as where a restored database's root key now lives (the new machine's
/// backend may differ from the old one's), under `key_id` (the name of its keychain item).
pub(crate) fn record_key_backend(db: &Path, backend: &str, key_id: &str) -> Result<(), StoreError> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    for (key, value) in [("key_backend", backend), ("key_id", key_id)] {
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
    }
    conn.close().map_err(|(_, e)| StoreError::from(e))?;
    Ok(())
}
