//! The audit table and its batching writer.
//!
//! Audit records of reads and denials must not cost the request a disk flush. They go to a
//! dedicated thread with its own connection at `synchronous=NORMAL`, which appends whatever is
//! queued in one transaction; the next `synchronous=FULL` commit of the main writer makes the
//! WAL (and these records) durable. The thread is the only writer of the table, so it keeps
//! the chain head in memory.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};

use ring::hmac;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use super::{StorageError, Store, from_millis, to_millis};
use crate::audit::{AuditDecision, AuditEntry, AuditRecord, Verification, Verifier, chain_hash};

enum Message {
    Record(AuditEntry),
    Flush(oneshot::Sender<()>),
}

/// The audit log: append without waiting, list, verify.
#[derive(Clone)]
pub struct AuditLog {
    queue: mpsc::Sender<Message>,
    /// Records queued and not yet appended; bounded so a flood of (anonymous) requests cannot
    /// grow memory without limit.
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
    store: Store,
    key: Arc<hmac::Key>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("store", &self.store).finish_non_exhaustive()
    }
}

/// Most records appended in one transaction.
const MAX_BATCH: usize = 1024;
/// Most records waiting for the writer. Beyond this the log is falling behind a flood;
/// records are dropped and counted (and the count logged) rather than exhausting memory.
const MAX_QUEUED: usize = 100_000;

impl AuditLog {
    /// Starts the audit writer for `store`, chaining with `key`. Blocking (opens a connection).
    pub fn start(store: &Store, key: hmac::Key) -> Result<Self, StorageError> {
        let mut conn = Connection::open_with_flags(
            store.path(),
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;")?;
        super::wait_briefly_when_busy(&mut conn)?;
        let head: Option<(i64, String)> = conn
            .query_row("SELECT sequence, hash FROM audit ORDER BY sequence DESC LIMIT 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let (sequence, previous) = match head {
            Some((seq, hash)) => {
                let bytes: [u8; 32] = hex::decode(&hash)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| StorageError::corrupt("audit chain head"))?;
                (u64::try_from(seq).map_err(StorageError::corrupt)?, bytes)
            }
            None => (0, crate::audit::GENESIS),
        };
        let key = Arc::new(key);
        let (queue, rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let writer = Writer { conn, key: Arc::clone(&key), sequence, previous, queued: Arc::clone(&queued) };
        std::thread::Builder::new()
            .name("palyra-audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StorageError::new(format_args!("cannot start the audit writer: {e}")))?;
        Ok(AuditLog { queue, queued, dropped: Arc::default(), store: store.clone(), key })
    }

    /// Queues a record; returns at once.
    pub fn record(&self, entry: AuditEntry) {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::error!(dropped, "the audit log is falling behind; decisions are being dropped");
            }
            return;
        }
        if self.queue.send(Message::Record(entry)).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("the audit writer stopped; a decision was not recorded");
        }
    }

    /// Records dropped because the writer fell too far behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until everything queued before this call is committed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Message::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Records after `since_sequence`, oldest first, at most `limit`, optionally filtered.
    pub async fn list(
        &self,
        since_sequence: u64,
        limit: usize,
        principal: Option<String>,
        action: Option<String>,
    ) -> Result<Vec<AuditRecord>, StorageError> {
        self.store
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT sequence, at, principal, action, resource, decision, reason, hash FROM audit
                     WHERE sequence > ?1 AND (?2 IS NULL OR principal = ?2) AND (?3 IS NULL OR action = ?3)
                     ORDER BY sequence LIMIT ?4",
                )?;
                let rows = stmt.query_map(
                    (i64::try_from(since_sequence).unwrap_or(i64::MAX), principal, action, limit as i64),
                    row_to_record,
                )?;
                rows.map(|r| r.map_err(StorageError::from).and_then(|(rec, _)| rec)).collect()
            })
            .await
    }

    /// The newest `limit` records, newest first, optionally filtered (exact principal and
    /// action).
    pub async fn recent(
        &self,
        limit: usize,
        principal: Option<String>,
        action: Option<String>,
    ) -> Result<Vec<AuditRecord>, StorageError> {
        self.store
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT sequence, at, principal, action, resource, decision, reason, hash FROM audit
                     WHERE (?1 IS NULL OR principal = ?1) AND (?2 IS NULL OR action = ?2)
                     ORDER BY sequence DESC LIMIT ?3",
                )?;
                let rows = stmt.query_map((principal, action, limit as i64), row_to_record)?;
                rows.map(|r| r.map_err(StorageError::from).and_then(|(rec, _)| rec)).collect()
            })
            .await
    }

    /// Re-computes the whole chain.
    pub async fn verify(&self) -> Result<Verification, StorageError> {
        self.flush().await;
        let key = Arc::clone(&self.key);
        self.store
            .read(move |c| {
                let mut verifier = Verifier::new(&key);
                let mut stmt = c.prepare(
                    "SELECT sequence, at, principal, action, resource, decision, reason, hash FROM audit ORDER BY sequence",
                )?;
                let mut rows = stmt.query([])?;
                while let Some(row) = rows.next()? {
                    let (record, at) = row_to_record(row)?;
                    match record {
                        Ok(record) => {
                            if !verifier.feed(&record, at) {
                                break;
                            }
                        }
                        Err(_) => {
                            let sequence: i64 = row.get(0)?;
                            let bad = AuditRecord {
                                sequence: u64::try_from(sequence).unwrap_or(0),
                                entry: AuditEntry {
                                    at: from_millis(at),
                                    principal: String::new(),
                                    action: String::new(),
                                    resource: String::new(),
                                    decision: AuditDecision::Deny,
                                    reason: String::new(),
                                },
                                hash: String::new(),
                            };
                            verifier.feed(&bad, at);
                            break;
                        }
                    }
                }
                Ok(verifier.finish())
            })
            .await
    }
}

type RecordRow = (Result<AuditRecord, StorageError>, i64);

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<RecordRow> {
    let sequence: i64 = r.get(0)?;
    let at: i64 = r.get(1)?;
    let decision: String = r.get(5)?;
    let record = (|| {
        Ok(AuditRecord {
            sequence: u64::try_from(sequence).map_err(StorageError::corrupt)?,
            entry: AuditEntry {
                at: from_millis(at),
                principal: r.get(2)?,
                action: r.get(3)?,
                resource: r.get(4)?,
                decision: AuditDecision::parse(&decision)
                    .ok_or_else(|| StorageError::corrupt("audit decision"))?,
                reason: r.get(6)?,
            },
            hash: r.get(7)?,
        })
    })();
    Ok((record, at))
}

struct Writer {
    conn: Connection,
    key: Arc<hmac::Key>,
    sequence: u64,
    previous: [u8; 32],
    queued: Arc<AtomicUsize>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Message>) {
        while let Ok(first) = rx.recv() {
            let mut entries = Vec::new();
            let mut flushes = Vec::new();
            let mut next = Some(first);
            while let Some(message) = next {
                match message {
                    Message::Record(entry) => {
                        self.queued.fetch_sub(1, Ordering::Relaxed);
                        entries.push(entry);
                    }
                    Message::Flush(done) => flushes.push(done),
                }
                next = if entries.len() < MAX_BATCH { rx.try_recv().ok() } else { None };
            }
            if !entries.is_empty()
                && let Err(e) = self.append(&entries)
            {
                tracing::error!(error = %e, lost = entries.len(), "could not append audit records");
            }
            for done in flushes {
                let _ = done.send(());
            }
        }
    }

    fn append(&mut self, entries: &[AuditEntry]) -> Result<(), StorageError> {
        let tx = self.conn.transaction()?;
        let (mut sequence, mut previous) = (self.sequence, self.previous);
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO audit (sequence, at, principal, action, resource, decision, reason, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for entry in entries {
                sequence += 1;
                let at = to_millis(entry.at);
                let hash = chain_hash(&self.key, &previous, sequence, at, entry);
                insert.execute((
                    sequence as i64,
                    at,
                    &entry.principal,
                    &entry.action,
                    &entry.resource,
                    entry.decision.as_str(),
                    &entry.reason,
                    hex::encode(hash),
                ))?;
                previous = hash;
            }
        }
        tx.commit()?;
        (self.sequence, self.previous) = (sequence, previous);
        Ok(())
    }
}
