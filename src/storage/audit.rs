//! The audit table and its batching writer.
//!
//! Audit records of reads and denials must not cost the request a disk flush. They go to a
//! dedicated thread with its own connection at `synchronous=NORMAL`, which appends whatever is
//! queued in one transaction; the next `synchronous=FULL` commit of the main writer makes the
//! WAL (and these records) durable. The thread is the only writer of the table, so it keeps
//! the chain head in memory.
//!
//! Every append also advances the sealed head (`audit_head`, see [`crate::audit::AuditHead`])
//! in the same transaction, after checking that the table and the head are still where this
//! writer left them. An append that fails (a second process appending, a locked or broken
//! database, a table changed underneath) keeps its records and is retried with backoff; while
//! it fails the log is *failing*: [`AuditLog::record`] and [`AuditLog::flush`] refuse, so the
//! gate refuses the calls that would go unrecorded, and [`AuditLog::health`] says so. At start
//! the sealed head is compared with the table; a mismatch (tail removed, head deleted or
//! edited) leaves the log failing for good and is reported by [`AuditLog::verify`].

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use ring::hmac;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::{oneshot, watch};

use super::{StorageError, Store, from_millis, to_millis};
use crate::audit::{
    ACTION_HEAD_SEALED, Admission, AnonymousLimiter, AnonymousRate, AuditDecision, AuditEntry, AuditHead,
    AuditRecord, HeadMismatch, NODE_PRINCIPAL, Verification, Verifier, chain_hash, check_head,
};

enum Message {
    Record(AuditEntry),
    Flush(oneshot::Sender<Result<(), AuditUnavailable>>),
}

/// The audit log cannot record right now: calls that depend on a record must fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuditUnavailable(pub String);

/// What the writer and the handles share.
#[derive(Debug)]
struct State {
    /// Appends are failing (or the head did not match at start); records are refused.
    failing: AtomicBool,
    /// Append transactions that failed (each retried), since start.
    failed_appends: AtomicU64,
    /// Why the log is failing, for the refusals.
    why: Mutex<String>,
    /// The head did not match the table at start: never append (not retried).
    integrity: Mutex<Option<HeadMismatch>>,
    /// `true` while the log records.
    healthy: watch::Sender<bool>,
    limiter: Mutex<AnonymousLimiter>,
}

impl State {
    fn fail(&self, why: String) {
        if let Ok(mut w) = self.why.lock() {
            *w = why;
        }
        self.failing.store(true, Ordering::SeqCst);
        self.healthy.send_if_modified(|h| std::mem::replace(h, false));
    }

    fn recover(&self) {
        if self.failing.swap(false, Ordering::SeqCst) {
            tracing::warn!("audit appends succeed again; the node records and serves again");
        }
        self.healthy.send_if_modified(|h| !std::mem::replace(h, true));
    }

    fn unavailable(&self) -> AuditUnavailable {
        let why = self.why.lock().map(|w| w.clone()).unwrap_or_default();
        AuditUnavailable(format!("the audit log cannot record ({why}); refusing calls it would not record"))
    }
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
    head_key: Arc<hmac::Key>,
    state: Arc<State>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("store", &self.store).finish_non_exhaustive()
    }
}

/// Most records appended in one transaction.
const MAX_BATCH: usize = 1024;
/// Most records waiting for the writer (queued or kept for a retry). Beyond this the log is
/// falling behind a flood; further records are refused and counted rather than exhausting
/// memory, and the calls they belong to fail.
const MAX_QUEUED: usize = 100_000;
/// Backoff between retries of a failing append.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

fn parse_hash(hex_text: &str) -> Option<[u8; 32]> {
    hex::decode(hex_text).ok().and_then(|b| b.try_into().ok())
}

/// The table's last record as a head.
fn table_head(conn: &Connection) -> Result<AuditHead, StorageError> {
    let last: Option<(i64, String)> = conn
        .query_row("SELECT sequence, hash FROM audit ORDER BY sequence DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    Ok(match last {
        Some((seq, hash)) => AuditHead {
            sequence: u64::try_from(seq).map_err(StorageError::corrupt)?,
            hash: parse_hash(&hash).ok_or_else(|| StorageError::corrupt("audit chain head"))?,
        },
        None => AuditHead::EMPTY,
    })
}

/// The stored head record: `None` when the row is gone; `mac` `None` when never sealed.
struct StoredHead {
    head: AuditHead,
    mac: Option<Vec<u8>>,
}

fn stored_head(conn: &Connection) -> Result<Option<StoredHead>, StorageError> {
    let row: Option<(i64, String, Option<String>)> = conn
        .query_row("SELECT sequence, hash, mac FROM audit_head WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    Ok(row.map(|(seq, hash, mac)| StoredHead {
        // An unparsable row is as good as a bad seal: it fails the MAC check.
        head: AuditHead {
            sequence: u64::try_from(seq).unwrap_or(u64::MAX),
            hash: parse_hash(&hash).unwrap_or([0xff; 32]),
        },
        mac: mac.map(|m| hex::decode(m).unwrap_or_default()),
    }))
}

/// Compares the stored (sealed) head with the table.
fn compare(conn: &Connection, head_key: &hmac::Key) -> Result<Result<(), HeadMismatch>, StorageError> {
    let table = table_head(conn)?;
    let stored = stored_head(conn)?;
    let sealed = stored.as_ref().map(|s| (s.head, s.mac.as_deref().unwrap_or_default()));
    Ok(check_head(head_key, sealed, table))
}

impl AuditLog {
    /// Starts the audit writer for `store`, chaining with `key` and sealing the head with
    /// `head_key`. Blocking (opens a connection). A head that does not match the table is not
    /// an error here: the log starts failing (see [`AuditLog::integrity`]) so that the caller
    /// decides, and [`AuditLog::verify`] can still report it.
    pub fn start(store: &Store, key: hmac::Key, head_key: hmac::Key) -> Result<Self, StorageError> {
        Self::start_with(store, key, head_key, AnonymousRate::default())
    }

    /// [`AuditLog::start`] with the rate of anonymous records.
    pub fn start_with(
        store: &Store,
        key: hmac::Key,
        head_key: hmac::Key,
        rate: AnonymousRate,
    ) -> Result<Self, StorageError> {
        let mut conn = Connection::open_with_flags(
            store.path(),
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;")?;
        super::wait_briefly_when_busy(&mut conn)?;
        let key = Arc::new(key);
        let head_key = Arc::new(head_key);
        let state = Arc::new(State {
            failing: AtomicBool::new(false),
            failed_appends: AtomicU64::new(0),
            why: Mutex::new(String::new()),
            integrity: Mutex::new(None),
            healthy: watch::channel(true).0,
            limiter: Mutex::new(AnonymousLimiter::new(rate)),
        });
        let head = Self::open_head(&mut conn, &key, &head_key, &state)?;
        let (queue, rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let writer = Writer {
            conn,
            key: Arc::clone(&key),
            head_key: Arc::clone(&head_key),
            head,
            pending: Vec::new(),
            queued: Arc::clone(&queued),
            state: Arc::clone(&state),
        };
        std::thread::Builder::new()
            .name("palyra-audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StorageError::new(format_args!("cannot start the audit writer: {e}")))?;
        Ok(AuditLog { queue, queued, dropped: Arc::default(), store: store.clone(), key, head_key, state })
    }

    /// Reads and checks the sealed head at start; seals it once if it never was.
    fn open_head(
        conn: &mut Connection,
        key: &hmac::Key,
        head_key: &hmac::Key,
        state: &State,
    ) -> Result<AuditHead, StorageError> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let table = table_head(&tx)?;
        let stored = stored_head(&tx)?;
        if let Some(StoredHead { mac: None, .. }) = stored {
            // Never sealed: the first start after the migration (or a fresh data dir). Trust
            // what the table holds, and say so in the chain itself.
            let entry = AuditEntry {
                at: SystemTime::now(),
                principal: NODE_PRINCIPAL.to_owned(),
                action: ACTION_HEAD_SEALED.to_owned(),
                resource: "Node".to_owned(),
                decision: AuditDecision::Allow,
                reason: format!(
                    "the audit head was sealed for the first time, after record {}",
                    table.sequence
                ),
            };
            let head = insert_records(&tx, key, table, std::slice::from_ref(&entry))?;
            seal(&tx, head_key, head)?;
            tx.commit()?;
            if table.sequence > 0 {
                tracing::warn!(
                    sequence = table.sequence,
                    "sealed the audit head for the first time over existing records (upgrade); a later first seal means the head record was reset"
                );
            }
            return Ok(head);
        }
        drop(tx);
        if let Err(mismatch) = compare(conn, head_key)? {
            tracing::error!(problem = %mismatch, "AUDIT LOG INTEGRITY FAILURE: the sealed audit head does not match the audit table; the node will not append to this log");
            state.fail(mismatch.to_string());
            if let Ok(mut i) = state.integrity.lock() {
                *i = Some(mismatch);
            }
        }
        Ok(table)
    }

    /// Why the sealed head did not match the table at start, if it did not. A node must not
    /// serve on such a log (`palyra serve` refuses).
    pub fn integrity(&self) -> Option<HeadMismatch> {
        self.state.integrity.lock().ok().and_then(|i| i.clone())
    }

    /// Whether the log records right now (`false` while appends fail): the node's health.
    pub fn health(&self) -> watch::Receiver<bool> {
        self.state.healthy.subscribe()
    }

    /// Refuses when the log cannot record right now.
    pub fn available(&self) -> Result<(), AuditUnavailable> {
        if self.state.failing.load(Ordering::SeqCst) {
            return Err(self.state.unavailable());
        }
        Ok(())
    }

    /// Queues a record; returns at once. Refused (and nothing queued) while appends fail or
    /// when the queue is full: the call it belongs to must then fail.
    pub fn record(&self, entry: AuditEntry) -> Result<(), AuditUnavailable> {
        self.available()?;
        if self.queued.fetch_add(1, Ordering::SeqCst) >= MAX_QUEUED {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::error!(dropped, "the audit log is falling behind; calls are refused");
            }
            return Err(AuditUnavailable("the audit log is falling behind; try again".to_owned()));
        }
        if self.queue.send(Message::Record(entry)).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            tracing::error!("the audit writer stopped; a decision was not recorded");
            return Err(AuditUnavailable("the audit writer stopped".to_owned()));
        }
        Ok(())
    }

    /// Decides whether an anonymous call from `address` may be recorded: at most the rate's
    /// records per address bucket (IPv6 by /64). Over it, `false`: refuse the call without a
    /// record. The summary of what was refused is queued when the address is next admitted or
    /// when its window closes.
    pub fn admit_anonymous(&self, address: Option<std::net::SocketAddr>) -> bool {
        // Without an address (never the case on TCP), one shared bucket.
        let ip = address.map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let now = SystemTime::now();
        let admission = match self.state.limiter.lock() {
            Ok(mut limiter) => limiter.admit(ip, Instant::now(), now),
            Err(_) => return false,
        };
        let (admitted, summary) = match admission {
            Admission::Admit(s) => (true, s),
            Admission::Refuse(s) => (false, s),
        };
        if let Some(summary) = summary {
            tracing::warn!(address = %summary.address, refused = summary.count, "anonymous calls over the audit rate were refused and not recorded");
            // The summary bypasses the limiter; if the log is failing it is lost with the
            // rest, and the calls are refused anyway.
            let _ = self.record(summary.entry(now));
        }
        admitted
    }

    /// Writes the summaries of anonymous floods whose window closed with no later call.
    pub fn sweep_anonymous(&self) {
        let now = SystemTime::now();
        let closed = match self.state.limiter.lock() {
            Ok(mut limiter) => limiter.closed_windows(Instant::now()),
            Err(_) => return,
        };
        for summary in closed {
            let _ = self.record(summary.entry(now));
        }
    }

    /// Records refused because the writer fell too far behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Append transactions that failed (and were retried) since start.
    pub fn failed_appends(&self) -> u64 {
        self.state.failed_appends.load(Ordering::Relaxed)
    }

    /// Waits until everything queued before this call is committed; an error when that append
    /// failed (the records are kept and retried, but a write that depends on them must not
    /// proceed).
    pub async fn flush(&self) -> Result<(), AuditUnavailable> {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Message::Flush(tx)).is_err() {
            return Err(AuditUnavailable("the audit writer stopped".to_owned()));
        }
        rx.await.unwrap_or_else(|_| Err(AuditUnavailable("the audit writer stopped".to_owned())))
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

    /// Re-computes the whole chain, and compares its end with the sealed head.
    pub async fn verify(&self) -> Result<Verification, StorageError> {
        // A failing log still verifies what is committed.
        let _ = self.flush().await;
        let key = Arc::clone(&self.key);
        let head_key = Arc::clone(&self.head_key);
        self.store
            .read(move |c| {
                // One snapshot for the chain and the head: appends change both in one
                // transaction.
                let tx = c.unchecked_transaction()?;
                let mut verifier = Verifier::new(&key);
                {
                    let mut stmt = tx.prepare(
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
                }
                let mut verification = verifier.finish();
                if verification.ok
                    && let Err(mismatch) = compare(&tx, &head_key)?
                {
                    verification.ok = false;
                    verification.first_bad_sequence = Some(mismatch.first_bad_sequence());
                    verification.problem = Some(mismatch.to_string());
                }
                Ok(verification)
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
    head_key: Arc<hmac::Key>,
    /// Where this writer left the chain (and the sealed head).
    head: AuditHead,
    /// Records received and not yet committed (kept across failed attempts).
    pending: Vec<AuditEntry>,
    queued: Arc<AtomicUsize>,
    state: Arc<State>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Message>) {
        let mut backoff = RETRY_FIRST;
        loop {
            let first = if self.pending.is_empty() {
                match rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => return,
                }
            } else {
                match rx.recv_timeout(backoff) {
                    Ok(m) => Some(m),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        let _ = self.append_pending();
                        return;
                    }
                }
            };
            let mut flushes = Vec::new();
            let mut next = first;
            while let Some(message) = next {
                match message {
                    Message::Record(entry) => self.pending.push(entry),
                    Message::Flush(done) => flushes.push(done),
                }
                next = if self.pending.len() < MAX_BATCH { rx.try_recv().ok() } else { None };
            }
            let result = if self.pending.is_empty() { self.idle_result() } else { self.append_pending() };
            match &result {
                Ok(()) => backoff = RETRY_FIRST,
                Err(_) => backoff = (backoff * 2).min(RETRY_MAX),
            }
            for done in flushes {
                let _ = done.send(result.clone());
            }
        }
    }

    /// A flush with nothing pending: whether the log is usable.
    fn idle_result(&self) -> Result<(), AuditUnavailable> {
        if self.state.failing.load(Ordering::SeqCst) {
            return Err(self.state.unavailable());
        }
        Ok(())
    }

    /// Appends everything pending, a batch at a time; on failure keeps what is left.
    fn append_pending(&mut self) -> Result<(), AuditUnavailable> {
        let integrity = self.state.integrity.lock().ok().and_then(|i| i.clone());
        if let Some(mismatch) = integrity {
            // Never append to a chain whose end does not match its seal.
            return Err(AuditUnavailable(mismatch.to_string()));
        }
        while !self.pending.is_empty() {
            let n = self.pending.len().min(MAX_BATCH);
            match self.append(n) {
                Ok(head) => {
                    self.head = head;
                    self.pending.drain(..n);
                    self.queued.fetch_sub(n, Ordering::SeqCst);
                    self.state.recover();
                }
                Err(e) => {
                    let failures = self.state.failed_appends.fetch_add(1, Ordering::Relaxed) + 1;
                    if !self.state.failing.load(Ordering::SeqCst) || failures.is_power_of_two() {
                        tracing::error!(error = %e, pending = self.pending.len(), failures, "AUDIT APPEND FAILED: refusing audited calls until it succeeds (retrying)");
                    }
                    self.state.fail(e.to_string());
                    return Err(self.state.unavailable());
                }
            }
        }
        Ok(())
    }

    /// One transaction: check the table and the sealed head are where this writer left them,
    /// insert `pending[..n]`, advance the sealed head.
    fn append(&mut self, n: usize) -> Result<AuditHead, StorageError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let table = table_head(&tx)?;
        let stored = stored_head(&tx)?;
        if table != self.head {
            return Err(StorageError::new(format_args!(
                "the audit table changed outside this writer (it ends at {}, this writer left it at {})",
                table.sequence, self.head.sequence
            )));
        }
        match stored {
            Some(s)
                if s.head == self.head
                    && s.mac.as_deref().is_some_and(|m| s.head.verify(&self.head_key, m)) => {}
            Some(_) => {
                return Err(StorageError::new(
                    "the sealed audit head moved outside this writer (another process appending to this data dir?)",
                ));
            }
            None => return Err(StorageError::new("the sealed audit head is missing (it was deleted)")),
        }
        let head = insert_records(&tx, &self.key, self.head, &self.pending[..n])?;
        seal(&tx, &self.head_key, head)?;
        tx.commit()?;
        Ok(head)
    }
}

/// Inserts `entries` after `head`; returns the new head.
fn insert_records(
    tx: &rusqlite::Transaction<'_>,
    key: &hmac::Key,
    head: AuditHead,
    entries: &[AuditEntry],
) -> Result<AuditHead, StorageError> {
    let AuditHead { mut sequence, hash: mut previous } = head;
    let mut insert = tx.prepare_cached(
        "INSERT INTO audit (sequence, at, principal, action, resource, decision, reason, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for entry in entries {
        sequence += 1;
        let at = to_millis(entry.at);
        let hash = chain_hash(key, &previous, sequence, at, entry);
        insert.execute((
            i64::try_from(sequence).map_err(StorageError::corrupt)?,
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
    Ok(AuditHead { sequence, hash: previous })
}

/// Writes `head` and its seal into `audit_head` (the row must exist: the migration made it).
fn seal(tx: &rusqlite::Transaction<'_>, head_key: &hmac::Key, head: AuditHead) -> Result<(), StorageError> {
    let changed = tx.execute(
        "UPDATE audit_head SET sequence = ?1, hash = ?2, mac = ?3 WHERE id = 1",
        (
            i64::try_from(head.sequence).map_err(StorageError::corrupt)?,
            hex::encode(head.hash),
            hex::encode(head.seal(head_key)),
        ),
    )?;
    if changed != 1 {
        return Err(StorageError::new("the sealed audit head is missing (it was deleted)"));
    }
    Ok(())
}
