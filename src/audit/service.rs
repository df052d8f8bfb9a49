//! [`Audit`]: the audit service. Records every decision without making the request wait,
//! keeps the chain head, refuses while it cannot record, and verifies.
//!
//! Records are queued in memory ([`Audit::record`] returns at once) and appended by the
//! store's one writer thread at the start of each write batch, inside the batch's transaction
//! (the [`Appender`], installed with [`AuditStore::install_appender`]). So a write commits in
//! the same transaction as the records of the decisions queued before it — which include the
//! decision that let it through — and a failed append fails the batch, write included: no
//! write commits without its record, and no write waits for an audit round trip
//! ([`Audit::before_write`] only checks that the log records). When records wait and no write
//! comes, the audit thread (the [`Ticker`]) runs a lazy batch (`synchronous=NORMAL`: no fsync
//! on the request path; the next durable commit makes them durable), woken by a record only
//! when idle, lingering a moment before each batch so many calls share one.
//!
//! Every append also advances the sealed head ([`AuditHead`]) in the same transaction, after
//! checking that the table and the head are still where this writer left them. An append that
//! fails (a second process appending, a locked or broken database, a table changed underneath)
//! keeps its records and is retried with backoff; while it fails the log is *failing*:
//! [`Audit::record`], [`Audit::before_write`] and [`Audit::flush`] refuse, so the gate refuses the calls that would go
//! unrecorded, and [`Audit::health`] says so. At start the sealed head is compared with the
//! table; a mismatch (tail removed, head deleted or edited) leaves the log failing for good
//! and is reported by [`Audit::verify`].
//!
//! What it does not do: SQL (behind [`AuditStore`]), deciding (the gate asks the policy
//! engine and hands the decision here), transport.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use ring::hmac;
use tokio::sync::{oneshot, watch};

use super::anonymous::{Admission, AnonymousLimiter, AnonymousRate};
use super::chain::{
    ACTION_HEAD_SEALED, ACTION_PRUNED, AuditDecision, AuditEntry, AuditHead, AuditRecord, HeadMismatch,
    NODE_PRINCIPAL, Verification, Verifier, at_millis, chain_hash, check_head,
};
use super::checkpoint::{Checkpoint, CheckpointKind, CheckpointSigner};
use super::store::{
    AuditStore, AuditWriter, BatchAppender, ChainScan, ChainedBatch, ChainedRecord, PruneSeal, ScanStart,
    ScannedRow, StoredCheckpoint, StoredHead,
};
use crate::store_error::StoreError;

type FlushReply = oneshot::Sender<Result<(), AuditUnavailable>>;

/// What the handles hand on: records (for the appender) and flush requests (for the ticker), under one lock.
#[derive(Default)]
struct Queue {
    records: Vec<AuditEntry>,
    flushes: Vec<FlushReply>,
    /// The ticker is waiting for work: the next record must wake it.
    idle: bool,
    /// An append failed in a store batch: the ticker must retry (records are refused while
    /// the log fails, so no record would wake it).
    retry: bool,
    /// Every handle is gone: the ticker has what is left appended and stops.
    closed: bool,
}

/// What the ticker takes from the queue in one go (the records stay for the appender).
struct Taken {
    flushes: Vec<FlushReply>,
    /// Records still wait (no write batch took them meanwhile).
    records: bool,
    closed: bool,
}

/// The queue and the ticker's wake-up.
///
/// A record wakes the ticker only when it is idle; before each batch the ticker lingers for
/// [`LINGER`] so that the records of many calls share one wake-up and one transaction
/// (under load it never goes idle). A flush always wakes it and cuts the linger short. Writes
/// never wait for it: their own batch appends the records queued before them.
#[derive(Default)]
struct Mailbox {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, entry: AuditEntry) -> Result<(), AuditUnavailable> {
        let mut queue = self.lock();
        if queue.closed {
            return Err(AuditUnavailable("the audit writer stopped".to_owned()));
        }
        queue.records.push(entry);
        if queue.idle {
            self.wake.notify_one();
        }
        Ok(())
    }

    fn flush(&self, reply: FlushReply) -> Result<(), AuditUnavailable> {
        let mut queue = self.lock();
        if queue.closed {
            return Err(AuditUnavailable("the audit writer stopped".to_owned()));
        }
        queue.flushes.push(reply);
        self.wake.notify_one();
        Ok(())
    }

    /// Wakes the ticker to retry a failed append.
    fn ask_retry(&self) {
        self.lock().retry = true;
        self.wake.notify_one();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// The records queued so far (for the appender, on the store's writer thread).
    fn drain_records(&self) -> Vec<AuditEntry> {
        std::mem::take(&mut self.lock().records)
    }

    /// Waits for work (at most `retry` when a failed append waits for its next try), lingers
    /// after a record woke it, and takes the flush requests.
    fn take(&self, retry: Option<Duration>) -> Taken {
        let mut queue = self.lock();
        let empty = |q: &Queue| q.records.is_empty() && q.flushes.is_empty() && !q.closed && !q.retry;
        match retry {
            // Appends fail: wait the backoff out whatever comes in (every failed batch asks for
            // a retry, and records keep coming); only a flush or a close cuts it short.
            Some(after) => {
                queue = self
                    .wake
                    .wait_timeout_while(queue, after, |q| q.flushes.is_empty() && !q.closed)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            None if empty(&queue) => {
                queue.idle = true;
                queue = self.wake.wait_while(queue, |q| empty(q)).unwrap_or_else(PoisonError::into_inner);
                queue.idle = false;
            }
            None => {}
        }
        // Woken by a record, or still busy from the last batch: linger so that the records of
        // many calls share one transaction (a batch writes its leaf and head pages whatever it
        // holds). A flush or a close cuts it short.
        if queue.flushes.is_empty() && !queue.closed && !queue.retry && !queue.records.is_empty() {
            queue = self
                .wake
                .wait_timeout_while(queue, LINGER, |q| q.flushes.is_empty() && !q.closed)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        queue.retry = false;
        Taken {
            flushes: std::mem::take(&mut queue.flushes),
            records: !queue.records.is_empty(),
            closed: queue.closed,
        }
    }
}

/// Closes the mailbox when the last [`Audit`] handle goes.
struct Handles(Arc<Mailbox>);

impl Drop for Handles {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A place in the audit queue ([`Audit::reserve`]), filled by [`AuditSlot::record`] or given
/// back when dropped.
#[must_use = "a slot holds a place in the audit queue until it records or is dropped"]
pub struct AuditSlot {
    /// The queue and its count; `None` once used.
    place: Option<(Arc<Handles>, Arc<AtomicUsize>)>,
}

impl std::fmt::Debug for AuditSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSlot").finish_non_exhaustive()
    }
}

impl AuditSlot {
    /// Queues `entry` in this place. Not refused for a full queue or failing appends (the
    /// record waits for the appender like any other); only when the audit writer has stopped.
    pub fn record(mut self, entry: AuditEntry) -> Result<(), AuditUnavailable> {
        let Some((mailbox, queued)) = self.place.take() else { return Ok(()) };
        if mailbox.0.record(entry).is_err() {
            queued.fetch_sub(1, Ordering::SeqCst);
            tracing::error!("the audit writer stopped; a decision was not recorded");
            return Err(AuditUnavailable("the audit writer stopped".to_owned()));
        }
        Ok(())
    }
}

impl Drop for AuditSlot {
    fn drop(&mut self) {
        if let Some((_, queued)) = self.place.take() {
            queued.fetch_sub(1, Ordering::SeqCst);
        }
    }
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
    /// The sequence of the last committed record (sent after the commit): what export streams
    /// and sinks follow.
    committed: watch::Sender<u64>,
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
pub struct Audit {
    mailbox: Arc<Handles>,
    /// Records queued and not yet appended; bounded so a flood of (anonymous) requests cannot
    /// grow memory without limit.
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
    store: Arc<dyn AuditStore>,
    key: Arc<hmac::Key>,
    head_key: Arc<hmac::Key>,
    state: Arc<State>,
    /// The node's identity key, for checkpoints (set once the identity is loaded).
    signer: Arc<std::sync::OnceLock<CheckpointSigner>>,
    /// One prune at a time.
    pruning: Arc<tokio::sync::Mutex<()>>,
    /// The configured retention (`[audit]`), for the prunes that name none.
    retention: Arc<Mutex<Retention>>,
    /// The last sequence a prune may remove beyond the retention's own bound: what the
    /// `[audit] sink` delivered (set by `serve`), so a record no sink has yet is never pruned.
    prune_floor: Arc<Mutex<Option<PruneFloor>>>,
}

/// Reads the last sequence a prune may remove (an atomic load or a short lock: it is called
/// once per prune).
pub type PruneFloor = Arc<dyn Fn() -> u64 + Send + Sync>;

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").field("store", &self.store).finish_non_exhaustive()
    }
}

/// Most records appended in one transaction.
const MAX_BATCH: usize = 1024;
/// How long the ticker waits for more records before it runs a lazy batch. A batch costs a
/// commit, its leaf and head pages and a head seal whatever it holds: measured per GetSecret
/// on the store writer, 4.5 µs at 1 in flight and 1.5 µs at 64 with 1 ms, 1.9 and 1.0 µs with
/// 5 ms. A record waits in memory at most this long plus one commit (a write or a flush takes
/// it sooner; a lazy commit is not fsynced anyway).
const LINGER: Duration = Duration::from_millis(5);
/// Most records waiting to be appended (queued or kept for a retry). Beyond this the log is
/// falling behind a flood; further records are refused and counted rather than exhausting
/// memory, and the calls they belong to fail.
const MAX_QUEUED: usize = 100_000;
/// Backoff between retries of a failing append.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// The sealed head as [`check_head`] takes it.
fn sealed(stored: Option<&StoredHead>) -> Option<(AuditHead, &[u8])> {
    stored.map(|s| (s.head, s.mac.as_deref().unwrap_or_default()))
}

/// `entries` chained after `head`, with the head they end at and its seal.
fn chained<'a>(
    key: &hmac::Key,
    head_key: &hmac::Key,
    head: AuditHead,
    entries: &'a [AuditEntry],
) -> ChainedBatch<'a> {
    let AuditHead { mut sequence, hash: mut previous } = head;
    let mut records = Vec::with_capacity(entries.len());
    for entry in entries {
        sequence += 1;
        let at = at_millis(entry.at);
        let hash = chain_hash(key, &previous, sequence, at, entry);
        records.push(ChainedRecord { sequence, at_millis: at, entry, hash });
        previous = hash;
    }
    let head = AuditHead { sequence, hash: previous };
    ChainedBatch { records, head, seal: head.seal(head_key) }
}

impl Audit {
    /// Starts the audit writer over `store`, chaining with `key` and sealing the head with
    /// `head_key`. Blocking (opens a connection). A head that does not match the table is not
    /// an error here: the log starts failing (see [`Audit::integrity`]) so that the caller
    /// decides, and [`Audit::verify`] can still report it.
    pub(crate) fn start(
        store: Arc<dyn AuditStore>,
        key: hmac::Key,
        head_key: hmac::Key,
    ) -> Result<Self, StoreError> {
        Self::start_with(store, key, head_key, AnonymousRate::default())
    }

    /// [`Audit::start`] with the rate of anonymous records.
    pub(crate) fn start_with(
        store: Arc<dyn AuditStore>,
        key: hmac::Key,
        head_key: hmac::Key,
        rate: AnonymousRate,
    ) -> Result<Self, StoreError> {
        let mut conn = store.open_writer()?;
        let key = Arc::new(key);
        let head_key = Arc::new(head_key);
        let state = Arc::new(State {
            failing: AtomicBool::new(false),
            failed_appends: AtomicU64::new(0),
            why: Mutex::new(String::new()),
            integrity: Mutex::new(None),
            healthy: watch::channel(true).0,
            committed: watch::channel(0).0,
            limiter: Mutex::new(AnonymousLimiter::new(rate)),
        });
        let head = Self::open_head(conn.as_mut(), &key, &head_key, &state)?;
        state.committed.send_replace(head.sequence);
        // The connection of our own was for the checks at start; from now on the records go
        // into the store writer's batches.
        drop(conn);
        let mailbox = Arc::new(Mailbox::default());
        let queued = Arc::new(AtomicUsize::new(0));
        store.install_appender(Box::new(Appender {
            mailbox: Arc::clone(&mailbox),
            key: Arc::clone(&key),
            head_key: Arc::clone(&head_key),
            head,
            pending: Vec::new(),
            in_batch: None,
            queued: Arc::clone(&queued),
            state: Arc::clone(&state),
        }))?;
        let ticker = Ticker { store: Arc::clone(&store), state: Arc::clone(&state), queued: Arc::clone(&queued) };
        std::thread::Builder::new()
            .name("palyra-audit-writer".into())
            .spawn({
                let mailbox = Arc::clone(&mailbox);
                move || ticker.run(&mailbox)
            })
            .map_err(|e| StoreError::new(format_args!("cannot start the audit writer: {e}")))?;
        Ok(Audit {
            mailbox: Arc::new(Handles(mailbox)),
            queued,
            dropped: Arc::default(),
            store,
            key,
            head_key,
            state,
            signer: Arc::default(),
            pruning: Arc::default(),
            retention: Arc::default(),
            prune_floor: Arc::default(),
        })
    }

    /// Reads and checks the sealed head at start; seals it once if it never was.
    fn open_head(
        conn: &mut dyn AuditWriter,
        key: &hmac::Key,
        head_key: &hmac::Key,
        state: &State,
    ) -> Result<AuditHead, StoreError> {
        let (table, stored) = conn.heads()?;
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
            let batch = chained(key, head_key, table, std::slice::from_ref(&entry));
            // Sealed only over what was read: nobody appended or sealed in between.
            conn.append(&batch, &|now_table, now_stored| {
                if now_table == table && matches!(now_stored, Some(StoredHead { mac: None, .. })) {
                    Ok(())
                } else {
                    Err(StoreError::new("the audit log changed while its head was sealed for the first time"))
                }
            })?;
            if table.sequence > 0 {
                tracing::warn!(
                    sequence = table.sequence,
                    "sealed the audit head for the first time over existing records (upgrade); a later first seal means the head record was reset"
                );
            }
            return Ok(batch.head);
        }
        if let Err(mismatch) = check_head(head_key, sealed(stored.as_ref()), table) {
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

    /// The sequence of the last committed record, updated after each commit: a reader that
    /// sees `n` here finds records up to `n` in the table.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.state.committed.subscribe()
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
        self.reserve()?.record(entry)
    }

    /// Takes a place in the queue for a record not known yet (a decision held until the one
    /// after it: `access::HeldAllow`), refused as [`Audit::record`] would be. The record that
    /// fills it cannot then be refused for want of room, so a call let through on the
    /// strength of it always has its record; dropped unused, the place is given back.
    pub fn reserve(&self) -> Result<AuditSlot, AuditUnavailable> {
        self.available()?;
        if self.queued.fetch_add(1, Ordering::SeqCst) >= MAX_QUEUED {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::error!(dropped, "the audit log is falling behind; calls are refused");
            }
            return Err(AuditUnavailable("the audit log is falling behind; try again".to_owned()));
        }
        Ok(AuditSlot { place: Some((Arc::clone(&self.mailbox), Arc::clone(&self.queued))) })
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

    /// Before a write that depends on decisions already recorded: refuses while the log
    /// cannot record, and otherwise returns at once. No flush is needed: the store batch that
    /// takes the write appends every record queued before it first, in the same transaction,
    /// and a failed append fails that batch (the write with it). The write's commit
    /// (`synchronous=FULL`) makes the records durable with it.
    pub fn before_write(&self) -> Result<(), AuditUnavailable> {
        self.available()
    }

    /// Records `entry` and waits until it is committed: for what must not happen unrecorded
    /// (a kit, a restore, a backup, an offline reset), before it happens.
    pub async fn record_committed(&self, entry: AuditEntry) -> Result<(), AuditUnavailable> {
        self.record(entry)?;
        self.flush().await
    }

    /// Waits until everything queued before this call is committed; an error when that append
    /// failed (the records are kept and retried, but a write that depends on them must not
    /// proceed).
    pub async fn flush(&self) -> Result<(), AuditUnavailable> {
        let (tx, rx) = oneshot::channel();
        self.mailbox.0.flush(tx)?;
        rx.await.unwrap_or_else(|_| Err(AuditUnavailable("the audit writer stopped".to_owned())))
    }

    /// Records after `since_sequence`, oldest first, at most `limit`, optionally filtered.
    pub async fn list(
        &self,
        since_sequence: u64,
        limit: usize,
        principal: Option<String>,
        action: Option<String>,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.store.list(since_sequence, limit, principal, action).await
    }

    /// [`Self::list`] of what was decided up to now, decisions still in the writer's queue
    /// included (a failing log still lists what is committed): ListAuditRecords.
    pub async fn list_decided(
        &self,
        since_sequence: u64,
        limit: usize,
        principal: Option<String>,
        action: Option<String>,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let _ = self.flush().await;
        self.list(since_sequence, limit, principal, action).await
    }

    /// The newest `limit` records, newest first, optionally filtered (exact principal and
    /// action).
    pub async fn recent(
        &self,
        limit: usize,
        principal: Option<String>,
        action: Option<String>,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.store.recent(limit, principal, action).await
    }

    /// Signs checkpoints with `signer` from now on (the node's identity key; set once, by
    /// `Node::open`). Without it the log neither prunes nor checkpoints.
    pub fn set_signer(&self, signer: CheckpointSigner) {
        let _ = self.signer.set(signer);
    }

    fn signer(&self) -> Result<&CheckpointSigner, PruneError> {
        self.signer.get().ok_or(PruneError::NoSigner)
    }

    /// Sets the configured retention (`[audit]` of `palyra.toml`, by `palyra serve`).
    pub fn set_retention(&self, retention: Retention) {
        *self.retention.lock().unwrap_or_else(PoisonError::into_inner) = retention;
    }

    /// Never prunes past what `floor` reads (the sink's delivered sequence).
    pub fn set_prune_floor(&self, floor: PruneFloor) {
        *self.prune_floor.lock().unwrap_or_else(PoisonError::into_inner) = Some(floor);
    }

    /// The configured retention (keeps everything unless set).
    pub fn retention(&self) -> Retention {
        *self.retention.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Prunes by the configured retention now, then every `every`, until aborted. A failure
    /// is logged and retried at the next tick.
    pub fn spawn_pruning(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let audit = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let retention = audit.retention();
                if retention.keeps_everything() {
                    continue;
                }
                if let Err(e) = audit.prune(retention, SystemTime::now()).await {
                    tracing::warn!(error = %e, "the audit log could not be pruned; retrying later");
                }
            }
        })
    }

    /// The public key checkpoints verify under, once a signer is set.
    pub fn signing_public_key(&self) -> Option<[u8; 32]> {
        self.signer.get().map(|s| s.public_key)
    }

    /// Verifies from the last verified checkpoint (see [`Self::verify_with`]).
    pub async fn verify(&self) -> Result<Verification, StoreError> {
        self.verify_with(false).await
    }

    /// Re-computes the chain and compares its end with the sealed head. The walk starts at
    /// the latest signed `prune` checkpoint (the first kept record must follow it) or, unless
    /// `full`, at the latest `verified` checkpoint: then the records before it are not walked
    /// again (an edit among them is found by a full verification only). Checkpoints are
    /// checked against the node's key (all of them when `full`, the ones written since the
    /// verified one otherwise) and against the records they name. When the log verifies, a
    /// `verified` checkpoint is written at its end.
    pub async fn verify_with(&self, full: bool) -> Result<Verification, StoreError> {
        // A failing log still verifies what is committed.
        let _ = self.flush().await;
        let scan = ChainCheck {
            key: Arc::clone(&self.key),
            verifier: None,
            head_key: Arc::clone(&self.head_key),
            public_key: self.signing_public_key(),
            incremental: !full,
            expected: std::collections::BTreeMap::new(),
            anchor: None,
            from: 0,
            broken: None,
        };
        let verification = self.store.scan_chain(Box::new(scan)).await?;
        if verification.ok
            && verification.head.sequence > verification.from_sequence
            && let Ok(signer) = self.signer()
        {
            let checkpoint =
                Checkpoint::sign(verification.head, at_millis(SystemTime::now()), CheckpointKind::Verified, signer);
            if let Err(e) = self.store.insert_checkpoint(checkpoint).await {
                tracing::warn!(error = %e, "could not store the verified audit checkpoint; the next verification starts earlier");
            }
        }
        Ok(verification)
    }

    /// Removes the records `retention` does not keep, oldest first, in transactions of at
    /// most [`PRUNE_CHUNK`] records. Each transaction checks the chain of what it removes
    /// (from the previous prune checkpoint), writes a signed `prune` checkpoint at the last
    /// record it removes, and removes them; the last record (the head) is always kept. Then a
    /// `palyra.audit/Pruned` record says what went. One prune at a time.
    pub async fn prune(&self, retention: Retention, now: SystemTime) -> Result<PruneReport, PruneError> {
        self.prune_in_chunks(retention, now, PRUNE_CHUNK).await
    }

    /// [`Self::prune`] in transactions of at most `chunk` records.
    pub async fn prune_in_chunks(
        &self,
        retention: Retention,
        now: SystemTime,
        chunk: u64,
    ) -> Result<PruneReport, PruneError> {
        let chunk = chunk.max(1);
        let _one = self.pruning.lock().await;
        let signer = self.signer()?.clone();
        self.available()?;
        let recent_from = retention
            .max_age
            .map(|age| at_millis(now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH)));
        let bounds = self.store.prune_bounds(recent_from).await?;
        let Some((first, last)) = bounds.span else { return Ok(PruneReport::default()) };
        let mut through = 0u64;
        if let Some(keep) = retention.records {
            through = through.max(last.saturating_sub(keep));
        }
        if retention.max_age.is_some() {
            through = through.max(bounds.first_recent.map_or(last, |recent| recent.saturating_sub(1)));
        }
        let mut through = through.min(last.saturating_sub(1));
        let floor = self.prune_floor.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(delivered) = floor.map(|read| read()) {
            if delivered < through {
                tracing::info!(delivered, through, "the audit sink has not delivered every record the retention would prune: keeping them");
            }
            through = through.min(delivered);
        }
        if through < first {
            return Ok(PruneReport::default());
        }
        let mut report = PruneReport { first, ..PruneReport::default() };
        let now_millis = at_millis(now);
        let mut from = first;
        while from <= through {
            let upto = from.saturating_add(chunk - 1).min(through);
            let seal = PruneCheck {
                key: Arc::clone(&self.key),
                public_key: signer.public_key,
                signer: signer.clone(),
                now_millis,
                verifier: None,
                last: None,
                named: std::collections::BTreeMap::new(),
            };
            report.removed += self.store.prune(upto, Box::new(seal)).await?;
            report.through = upto;
            from = upto + 1;
        }
        report.checkpoint = self.store.latest_checkpoint(CheckpointKind::Prune).await?.map(|c| c.checkpoint);
        let why = match (retention.records, retention.max_age) {
            (Some(n), Some(age)) => format!("retain_records = {n}, retain_days = {}", age.as_secs() / 86_400),
            (Some(n), None) => format!("retain_records = {n}"),
            (None, Some(age)) => format!("retain_days = {}", age.as_secs() / 86_400),
            (None, None) => String::new(),
        };
        let _ = self.record(AuditEntry {
            at: SystemTime::now(),
            principal: NODE_PRINCIPAL.to_owned(),
            action: ACTION_PRUNED.to_owned(),
            resource: "Node".to_owned(),
            decision: AuditDecision::Allow,
            reason: format!(
                "pruned audit records {} to {} ({} records; {why}); signed checkpoint at {}",
                report.first, report.through, report.removed, report.through
            ),
        });
        tracing::info!(first = report.first, through = report.through, removed = report.removed, "pruned the audit log");
        Ok(report)
    }

    /// A checkpoint of the log as it is now (everything decided so far included), signed and
    /// stored (kind `served`) so the node can answer for it after pruning too. When the
    /// last served one is under [`SERVED_REUSE`] old it is handed out again instead: at most
    /// one row a minute however often witnesses ask.
    pub async fn checkpoint_now(&self) -> Result<Checkpoint, PruneError> {
        let signer = self.signer()?.clone();
        let now = SystemTime::now();
        if let Some(last) = self.store.latest_checkpoint(CheckpointKind::Served).await? {
            let age = at_millis(now).saturating_sub(last.checkpoint.at_millis);
            if (0..SERVED_REUSE.as_millis() as i64).contains(&age) {
                return Ok(last.checkpoint);
            }
        }
        let _ = self.flush().await;
        let head = self.store.head().await?;
        let checkpoint = Checkpoint::sign(head, at_millis(now), CheckpointKind::Served, &signer);
        self.store.insert_checkpoint(checkpoint.clone()).await?;
        Ok(checkpoint)
    }

    /// The hash the log holds for `sequence`: its record's, else a stored checkpoint's.
    pub async fn hash_at(&self, sequence: u64) -> Result<Option<[u8; 32]>, StoreError> {
        self.store.hash_at(sequence).await
    }
}

/// Records removed in one prune transaction at most: the writer is never held long.
pub const PRUNE_CHUNK: u64 = 10_000;
/// How long a served checkpoint is handed out again.
pub const SERVED_REUSE: Duration = Duration::from_secs(60);

/// How much of the audit log to keep (`[audit]` of `palyra.toml`). Unset keeps everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep the newest this many records.
    pub records: Option<u64>,
    /// Keep the records younger than this.
    pub max_age: Option<Duration>,
}

impl Retention {
    /// Whether it keeps everything.
    pub fn keeps_everything(&self) -> bool {
        self.records.is_none() && self.max_age.is_none()
    }
}

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Records removed (0: nothing was due).
    pub removed: u64,
    /// The first record removed.
    pub first: u64,
    /// The last record removed: the latest prune checkpoint names it.
    pub through: u64,
    /// The latest prune checkpoint.
    pub checkpoint: Option<Checkpoint>,
}

/// Why a prune or a checkpoint failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PruneError {
    /// The log cannot record (the prune would go unrecorded).
    #[error(transparent)]
    Unavailable(#[from] AuditUnavailable),
    /// The database failed, or the records to remove do not verify (integrity).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No signing key was set.
    #[error("the audit log has no signing key for checkpoints")]
    NoSigner,
}

/// A prune transaction's check: the records it removes follow the previous prune checkpoint
/// (whose signature verifies), then the signed checkpoint at the last one.
struct PruneCheck {
    key: Arc<hmac::Key>,
    public_key: [u8; 32],
    signer: CheckpointSigner,
    now_millis: i64,
    verifier: Option<Verifier>,
    last: Option<AuditHead>,
    /// Checkpoints naming records about to be removed: each must match its record.
    named: std::collections::BTreeMap<u64, Vec<(i64, [u8; 32])>>,
}

impl PruneSeal for PruneCheck {
    fn start(&mut self, latest_prune: Option<StoredCheckpoint>, named: Vec<StoredCheckpoint>) -> Result<(), StoreError> {
        for stored in named {
            let c = stored.checkpoint;
            self.named.entry(c.head.sequence).or_default().push((stored.id, c.head.hash));
        }
        let from = match latest_prune {
            Some(stored) if !stored.checkpoint.verify(&self.public_key) => {
                return Err(StoreError::integrity(format_args!(
                    "audit checkpoint {} (prune at {}) does not verify under the node's signing key; not pruning (run palyra audit verify --full)",
                    stored.id, stored.checkpoint.head.sequence
                )));
            }
            Some(stored) => stored.checkpoint.head,
            None => AuditHead::EMPTY,
        };
        self.verifier = Some(Verifier::after(Arc::clone(&self.key), from));
        Ok(())
    }

    fn feed(&mut self, row: ScannedRow) -> Result<(), StoreError> {
        let verifier = self.verifier.as_mut().ok_or_else(|| StoreError::new("prune check not started"))?;
        let (sequence, ok, hash) = match &row {
            ScannedRow::Record(record, at) => {
                (record.sequence, verifier.feed(record, *at), hex::decode(&record.hash).ok())
            }
            ScannedRow::Unreadable { sequence, .. } => (*sequence, false, None),
        };
        let hash = hash.and_then(|h| <[u8; 32]>::try_from(h).ok());
        // A checkpoint naming this record with another hash (a row copied from another copy
        // of the log) must not be kept as the node's word for a sequence it no longer holds.
        if let (Some(hash), Some(named)) = (hash, self.named.get(&sequence))
            && let Some((id, _)) = named.iter().find(|(_, h)| !bool::from(subtle::ConstantTimeEq::ct_eq(&h[..], &hash[..])))
        {
            return Err(StoreError::integrity(format_args!(
                "audit checkpoint {id} names record {sequence} with another hash; not pruning (run palyra audit verify --full)"
            )));
        }
        match hash {
            Some(hash) if ok => {
                self.last = Some(AuditHead { sequence, hash });
                Ok(())
            }
            _ => Err(StoreError::integrity(format_args!(
                "audit record {sequence} does not follow the chain; not pruning a log that does not verify (run palyra audit verify --full)"
            ))),
        }
    }

    fn finish(self: Box<Self>) -> Result<Checkpoint, StoreError> {
        let head = self.last.ok_or_else(|| StoreError::new("no audit record to prune"))?;
        Ok(Checkpoint::sign(head, self.now_millis, CheckpointKind::Prune, &self.signer))
    }
}

/// [`Audit::verify_with`]'s scan: the checkpoints, the chain from where they say it starts,
/// then its end against the sealed head.
struct ChainCheck {
    key: Arc<hmac::Key>,
    verifier: Option<Verifier>,
    head_key: Arc<hmac::Key>,
    public_key: Option<[u8; 32]>,
    incremental: bool,
    /// Hashes signed checkpoints give for records still in the table.
    expected: std::collections::BTreeMap<u64, ([u8; 32], i64)>,
    /// For an incremental walk: the first record fed must be this one, with this hash.
    anchor: Option<AuditHead>,
    /// The walk starts after this sequence.
    from: u64,
    /// The first problem found before or outside the chain walk.
    broken: Option<(u64, String)>,
}

impl ChainCheck {
    fn break_at(&mut self, sequence: u64, problem: String) -> Option<u64> {
        if self.broken.is_none() {
            self.broken = Some((sequence, problem));
        }
        None
    }
}

impl ChainScan for ChainCheck {
    fn incremental(&self) -> bool {
        self.incremental
    }

    fn start(&mut self, start: ScanStart) -> Option<u64> {
        let ScanStart { first, checkpoints, latest_prune, verified } = start;
        let used = latest_prune.iter().chain(verified.iter());
        for stored in checkpoints.iter().chain(used) {
            let c = &stored.checkpoint;
            let valid = self.public_key.is_some_and(|key| c.verify(&key));
            if !valid {
                let problem = match self.public_key {
                    Some(_) => format!(
                        "audit checkpoint {} ({} at {}) does not verify under the node's signing key (forged or edited)",
                        stored.id,
                        c.kind.as_str(),
                        c.head.sequence
                    ),
                    None => "the audit log has no signing key to check its checkpoints with".to_owned(),
                };
                return self.break_at(c.head.sequence.max(1), problem);
            }
            self.expected.insert(c.head.sequence, (c.head.hash, stored.id));
        }
        let prune = latest_prune.map_or(AuditHead::EMPTY, |p| p.checkpoint.head);
        let Some(first) = first else {
            // An empty table: only the sealed head can tell (and a prune never empties it).
            self.from = prune.sequence;
            return Some(prune.sequence);
        };
        // The kept records start right after the last prune checkpoint: anything missing in
        // between was removed without one.
        if first > prune.sequence + 1 {
            return self.break_at(
                prune.sequence + 1,
                format!(
                    "audit records {} to {} were removed without a signed checkpoint (the last prune checkpoint is at {})",
                    prune.sequence + 1,
                    first - 1,
                    prune.sequence
                ),
            );
        }
        // Records a prune removed are back (a restored copy): they must follow a checkpoint
        // of their own, or the genesis.
        let mut from = if first == prune.sequence + 1 {
            prune
        } else if first == 1 {
            AuditHead::EMPTY
        } else {
            match self.expected.get(&(first - 1)) {
                Some(&(hash, _)) => AuditHead { sequence: first - 1, hash },
                None => {
                    return self.break_at(
                        first,
                        format!("audit record {first} follows no signed checkpoint (records before it were removed)"),
                    );
                }
            }
        };
        if let Some(v) = verified.map(|v| v.checkpoint.head)
            && v.sequence > from.sequence
        {
            // Start at the verified record itself: it must still be there, unchanged.
            self.anchor = Some(v);
            from = AuditHead { sequence: v.sequence - 1, hash: v.hash };
        }
        self.from = self.anchor.map_or(from.sequence, |a| a.sequence);
        self.verifier = Some(Verifier::after(Arc::clone(&self.key), from));
        Some(from.sequence)
    }

    fn feed(&mut self, row: ScannedRow) -> bool {
        if let Some(anchor) = self.anchor.take() {
            let matches = match &row {
                ScannedRow::Record(record, _) => {
                    record.sequence == anchor.sequence
                        && hex::decode(&record.hash)
                            .is_ok_and(|h| bool::from(subtle::ConstantTimeEq::ct_eq(&h[..], &anchor.hash[..])))
                }
                ScannedRow::Unreadable { .. } => false,
            };
            if !matches {
                self.break_at(
                    anchor.sequence,
                    format!(
                        "audit record {} is missing or is not the one the last verification signed",
                        anchor.sequence
                    ),
                );
                return false;
            }
            self.verifier = Some(Verifier::after(Arc::clone(&self.key), anchor));
            return true;
        }
        let Some(verifier) = self.verifier.as_mut() else { return false };
        match row {
            ScannedRow::Record(record, at) => {
                let ok = verifier.feed(&record, at);
                if ok && let Some(&(hash, id)) = self.expected.get(&record.sequence) {
                    let stored = hex::decode(&record.hash).unwrap_or_default();
                    if !bool::from(subtle::ConstantTimeEq::ct_eq(&stored[..], &hash[..])) {
                        self.break_at(
                            record.sequence,
                            format!(
                                "audit record {} is not the one signed checkpoint {id} names",
                                record.sequence
                            ),
                        );
                        return false;
                    }
                }
                ok
            }
            ScannedRow::Unreadable { sequence, at_millis } => {
                let bad = AuditRecord {
                    sequence,
                    entry: AuditEntry {
                        at: SystemTime::UNIX_EPOCH
                            + Duration::from_millis(u64::try_from(at_millis).unwrap_or(0)),
                        principal: String::new(),
                        action: String::new(),
                        resource: String::new(),
                        decision: AuditDecision::Deny,
                        reason: String::new(),
                    },
                    hash: String::new(),
                };
                verifier.feed(&bad, at_millis);
                false
            }
        }
    }

    fn finish(self: Box<Self>, table: AuditHead, stored: Option<StoredHead>) -> Verification {
        let ChainCheck { verifier, head_key, mut broken, from, anchor, .. } = *self;
        if let Some(anchor) = anchor {
            broken.get_or_insert((
                anchor.sequence,
                format!("audit record {} (where the last verification ended) is missing", anchor.sequence),
            ));
        }
        let mut verification = match verifier {
            Some(verifier) => verifier.finish(),
            None => Verifier::new(Arc::new(hmac::Key::new(hmac::HMAC_SHA256, b""))).finish(),
        };
        verification.from_sequence = from;
        verification.head = table;
        if let Some((sequence, problem)) = broken {
            verification.ok = false;
            verification.first_bad_sequence = Some(sequence);
            verification.problem = Some(problem);
            return verification;
        }
        if verification.ok
            && let Err(mismatch) = check_head(&head_key, sealed(stored.as_ref()), table)
        {
            verification.ok = false;
            verification.first_bad_sequence = Some(mismatch.first_bad_sequence());
            verification.problem = Some(mismatch.to_string());
        }
        verification
    }
}

/// Appends the queued records at the start of every store write batch, in its transaction
/// (the store's writer thread calls it): a write commits together with the records of the
/// decisions queued before it, and a failed append fails the batch, so no write commits
/// without its record. Keeps the chain head; a batch that does not commit keeps its records
/// for the next one and leaves the log *failing* until an append commits.
struct Appender {
    mailbox: Arc<Mailbox>,
    key: Arc<hmac::Key>,
    head_key: Arc<hmac::Key>,
    /// The head of what is committed.
    head: AuditHead,
    /// Records taken from the mailbox and not yet committed (oldest first).
    pending: Vec<AuditEntry>,
    /// What the current batch appended: how many records, and the head they end at.
    in_batch: Option<(usize, AuditHead)>,
    queued: Arc<AtomicUsize>,
    state: Arc<State>,
}

impl BatchAppender for Appender {
    fn before(&mut self, writer: &mut dyn AuditWriter) -> Result<(), StoreError> {
        self.in_batch = None;
        self.pending.extend(self.mailbox.drain_records());
        if self.pending.is_empty() {
            return Ok(());
        }
        let integrity = self.state.integrity.lock().ok().and_then(|i| i.clone());
        if let Some(mismatch) = integrity {
            return Err(StoreError::unavailable(AuditUnavailable(mismatch.to_string())));
        }
        let head_key = &*self.head_key;
        let mut head = self.head;
        for entries in self.pending.chunks(MAX_BATCH) {
            let batch = chained(&self.key, head_key, head, entries);
            let expected = head;
            writer
                .append(&batch, &|table, stored| {
                    if table != expected {
                        return Err(StoreError::new(format_args!(
                            "the audit table changed outside this writer (it ends at {}, this writer left it at {})",
                            table.sequence, expected.sequence
                        )));
                    }
                    match stored {
                        Some(s) if s.head == expected && s.mac.as_deref().is_some_and(|m| s.head.verify(head_key, m)) => {
                            Ok(())
                        }
                        Some(_) => Err(StoreError::new(
                            "the sealed audit head moved outside this writer (another process appending to this data dir?)",
                        )),
                        None => Err(StoreError::new("the sealed audit head is missing (it was deleted)")),
                    }
                })
                .map_err(|e| self.failed(&e))?;
            head = batch.head;
        }
        self.in_batch = Some((self.pending.len(), head));
        Ok(())
    }

    fn after(&mut self, committed: bool) {
        match (self.in_batch.take(), committed) {
            (Some((n, head)), true) => {
                self.head = head;
                self.pending.drain(..n);
                self.queued.fetch_sub(n, Ordering::SeqCst);
                self.state.recover();
                self.state.committed.send_replace(head.sequence);
            }
            (Some(_), false) => {
                let _ = self.failed(&"the batch with the audit records did not commit");
            }
            (None, _) => {}
        }
    }
}

impl Appender {
    /// Counts a failed append, marks the log failing, and gives the error the batch fails with.
    fn failed(&self, e: &dyn std::fmt::Display) -> StoreError {
        let failures = self.state.failed_appends.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.state.failing.load(Ordering::SeqCst) || failures.is_power_of_two() {
            tracing::error!(error = %e, pending = self.pending.len(), failures, "AUDIT APPEND FAILED: refusing audited calls until it succeeds (retrying)");
        }
        self.state.fail(e.to_string());
        // The failure was met in a store batch, not by the ticker: wake it to retry.
        self.mailbox.ask_retry();
        StoreError::unavailable(self.state.unavailable())
    }
}

/// The audit log's own thread: when records wait and no write batch takes them, or a flush
/// is asked for, it runs a lazy (unsynced) store batch so the appender appends them, and
/// answers the flushes with how that went. While appends fail it retries with backoff.
struct Ticker {
    store: Arc<dyn AuditStore>,
    state: Arc<State>,
    /// Records queued and not yet appended (the handles' count).
    queued: Arc<AtomicUsize>,
}

impl Ticker {
    fn run(self, mailbox: &Mailbox) {
        let mut backoff = RETRY_FIRST;
        loop {
            let failing = self.state.failing.load(Ordering::SeqCst);
            let taken = mailbox.take(failing.then_some(backoff));
            // Under writes the store's batches take the records first: a lazy batch is only
            // for records no write took, a flush, a retry, or the last records at close.
            let needed = taken.records || !taken.flushes.is_empty() || failing || taken.closed;
            let committed = if needed { self.store.commit_lazily() } else { Ok(()) };
            let result = match committed {
                Ok(()) if !self.state.failing.load(Ordering::SeqCst) => Ok(()),
                _ => Err(self.state.unavailable()),
            };
            match &result {
                Ok(()) => backoff = RETRY_FIRST,
                Err(_) => backoff = (backoff * 2).min(RETRY_MAX),
            }
            for done in taken.flushes {
                let _ = done.send(result.clone());
            }
            if taken.closed {
                let lost = self.queued.load(Ordering::SeqCst);
                if lost > 0 {
                    tracing::error!(lost, "the audit log stopped with records it could not append");
                }
                return;
            }
            if let Err(e) = committed
                && !self.state.failing.load(Ordering::SeqCst)
            {
                // The store refused the batch itself (closed, or it could not begin): records
                // that keep waiting would make `take` return at once, so wait here.
                tracing::warn!(error = %e, "the audit log could not run a batch; retrying");
                std::thread::sleep(backoff);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use crate::audit::MemoryAuditStore;

    fn entry(n: usize) -> AuditEntry {
        AuditEntry {
            at: SystemTime::now(),
            principal: "device:test".to_owned(),
            action: format!("test/{n}"),
            resource: "Node".to_owned(),
            decision: AuditDecision::Allow,
            reason: String::new(),
        }
    }

    /// A reserved place is never refused for want of room: a held decision (the gate's allow
    /// waiting for the scope decision, `access::HeldAllow`) always gets its record, even when
    /// the queue filled up meanwhile. An unused place is given back.
    #[test]
    fn a_reserved_place_is_filled_even_when_the_queue_is_full_and_an_unused_one_is_given_back() {
        let key = |k: &[u8]| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k);
        let audit = Audit::start(Arc::new(MemoryAuditStore::default()), key(b"chain"), key(b"head")).unwrap();
        let held = audit.reserve().unwrap();
        let rest: Vec<AuditSlot> = (1..MAX_QUEUED).map(|_| audit.reserve().unwrap()).collect();
        // Full: a plain record, and another reservation, are refused.
        assert!(audit.record(entry(0)).is_err());
        assert!(audit.reserve().is_err());
        // The reserved place is not.
        held.record(entry(1)).unwrap();
        // Unused places come back.
        drop(rest);
        audit.record(entry(2)).unwrap();
    }
}
