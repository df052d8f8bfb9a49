//! What [`super::Audit`] needs from the database. The SQLite layer implements it; this module
//! names the operations and the shapes they exchange, and knows no SQL.
//!
//! Appends do not go through the async store: the audit writer runs on its own thread with
//! its own connection (`synchronous=NORMAL`), so a request never waits for an fsync of its
//! record. [`AuditStore::open_writer`] hands the service that connection as an
//! [`AuditWriter`], a blocking object the writer thread owns.

use std::fmt;

use super::chain::{AuditEntry, AuditHead, AuditRecord, Verification};
use super::checkpoint::{Checkpoint, CheckpointKind};
use crate::store_error::{BoxFuture, StoreError};

/// The sealed head as stored: `mac` is `None` when the head was never sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredHead {
    /// The head it names (an unparsable row reads as a head no seal matches).
    pub(crate) head: AuditHead,
    /// Its seal.
    pub(crate) mac: Option<Vec<u8>>,
}

/// One record ready to insert: its place in the chain and its hash, computed by the service.
#[derive(Debug)]
pub(crate) struct ChainedRecord<'a> {
    pub(crate) sequence: u64,
    /// The stored time, as hashed.
    pub(crate) at_millis: i64,
    pub(crate) entry: &'a AuditEntry,
    pub(crate) hash: [u8; 32],
}

/// A batch of records and the head (with its seal) they end at.
#[derive(Debug)]
pub(crate) struct ChainedBatch<'a> {
    pub(crate) records: Vec<ChainedRecord<'a>>,
    pub(crate) head: AuditHead,
    pub(crate) seal: [u8; 32],
}

/// The check an append makes inside its transaction, given the table's last record (as a
/// head) and the stored sealed head (`None` when the row is gone). An error aborts the append.
pub(crate) type AppendCheck<'a> = &'a dyn Fn(AuditHead, Option<&StoredHead>) -> Result<(), StoreError>;

/// Appends the audit records queued so far at the start of every store write batch, inside
/// the batch's transaction (see [`AuditStore::install_appender`]). Runs on the store's writer
/// thread: blocking, never async.
pub(crate) trait BatchAppender: Send {
    /// Appends what is queued through `writer`. An error fails the whole batch: no write of
    /// it commits without the records of the decisions before it.
    fn before(&mut self, writer: &mut dyn AuditWriter) -> Result<(), StoreError>;
    /// The batch committed (what `before` appended is in the table) or not.
    fn after(&mut self, committed: bool);
}

/// A connection the audit log appends through: its own at start, the store writer's batch
/// afterwards. Blocking.
pub(crate) trait AuditWriter {
    /// The table's last record (as a head) and the stored sealed head, read in one snapshot.
    fn heads(&mut self) -> Result<(AuditHead, Option<StoredHead>), StoreError>;

    /// One transaction: reads both heads, runs `check`, inserts the batch's records and
    /// advances the sealed head to the batch's head with its seal.
    fn append(&mut self, batch: &ChainedBatch<'_>, check: AppendCheck<'_>) -> Result<(), StoreError>;
}

/// What the records of a chain scan look like to the scanner.
#[derive(Debug)]
pub(crate) enum ScannedRow {
    /// A record, with its stored time.
    Record(AuditRecord, i64),
    /// A row that does not read as a record (corrupt): its sequence and stored time.
    Unreadable { sequence: u64, at_millis: i64 },
}

/// A checkpoint as stored: its row id (the order of writing) and what it says. A row that does
/// not parse reads as a checkpoint whose signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredCheckpoint {
    pub(crate) id: i64,
    pub(crate) checkpoint: Checkpoint,
}

/// What a chain scan starts from, read in its snapshot.
#[derive(Debug, Default)]
pub(crate) struct ScanStart {
    /// The first record's sequence (`None`: the table is empty).
    pub(crate) first: Option<u64>,
    /// The checkpoints to check, in the order written: all of them for a full scan; for an
    /// incremental one, those written after the latest `verified` one.
    pub(crate) checkpoints: Vec<StoredCheckpoint>,
    /// The `prune` checkpoint furthest along.
    pub(crate) latest_prune: Option<StoredCheckpoint>,
    /// The `verified` checkpoint furthest along, read only for an incremental scan.
    pub(crate) verified: Option<StoredCheckpoint>,
}

/// The first and last records, and where a retention by age would cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PruneBounds {
    /// The first and last sequence (`None`: empty).
    pub(crate) span: Option<(u64, u64)>,
    /// The first sequence recorded at or after the age cutoff asked for (`None`: none is,
    /// or no cutoff was asked for).
    pub(crate) first_recent: Option<u64>,
}

/// Checks the records a prune removes, in order, inside its transaction, and makes the signed
/// checkpoint stored with the removal.
pub(crate) trait PruneSeal: Send {
    /// The latest `prune` checkpoint before this one (`None`: records start at 1), and the
    /// checkpoints that name a record about to be removed (each must match it).
    fn start(&mut self, latest_prune: Option<StoredCheckpoint>, named: Vec<StoredCheckpoint>) -> Result<(), StoreError>;
    /// The next record to remove, in sequence order.
    fn feed(&mut self, row: ScannedRow) -> Result<(), StoreError>;
    /// The checkpoint at the last record fed.
    fn finish(self: Box<Self>) -> Result<Checkpoint, StoreError>;
}

/// A scan of the chain, fed by the store inside one read snapshot.
pub(crate) trait ChainScan: Send {
    /// Whether only what follows the latest `verified` checkpoint is scanned.
    fn incremental(&self) -> bool;
    /// Given the checkpoints, where to start: records with a sequence above the returned one
    /// are fed; `None` feeds none (the verdict is already known).
    fn start(&mut self, start: ScanStart) -> Option<u64>;
    /// The next row, in sequence order; `false` stops the scan.
    fn feed(&mut self, row: ScannedRow) -> bool;
    /// The verdict, given the table's last record and the stored sealed head of the same
    /// snapshot.
    fn finish(self: Box<Self>, table: AuditHead, sealed: Option<StoredHead>) -> Verification;
}

/// The audit table, for the audit service.
pub(crate) trait AuditStore: Send + Sync + fmt::Debug {
    /// Opens a connection of the audit log's own, for the checks at start (blocking).
    fn open_writer(&self) -> Result<Box<dyn AuditWriter>, StoreError>;

    /// From now on every write batch of the store runs `appender` first, in its transaction.
    fn install_appender(&self, appender: Box<dyn BatchAppender>) -> Result<(), StoreError>;

    /// Runs a write batch that need not be durable (no fsync: a later durable commit makes it
    /// so) and waits for it, so that the appender appends what is queued. Blocking.
    fn commit_lazily(&self) -> Result<(), StoreError>;

    /// Records after `since_sequence`, oldest first, at most `limit`, optionally filtered
    /// (exact principal and action).
    fn list(
        &self,
        since_sequence: u64,
        limit: usize,
        principal: Option<String>,
        action: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<AuditRecord>, StoreError>>;

    /// The newest `limit` records, newest first, optionally filtered.
    fn recent(
        &self,
        limit: usize,
        principal: Option<String>,
        action: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<AuditRecord>, StoreError>>;

    /// Feeds every record to `scan` in sequence order, then the heads, all in one snapshot
    /// (appends change the table and the head in one transaction).
    fn scan_chain(&self, scan: Box<dyn ChainScan>) -> BoxFuture<'_, Result<Verification, StoreError>>;

    /// The first and last sequence, and the first sequence recorded at or after
    /// `recent_from_millis`.
    fn prune_bounds(&self, recent_from_millis: Option<i64>) -> BoxFuture<'_, Result<PruneBounds, StoreError>>;

    /// One write transaction: feeds the records up to and including `through` (after the
    /// latest prune checkpoint) to `seal`, stores the checkpoint it returns and removes them.
    /// Returns how many were removed. Refused when `through` is the last record (the head
    /// stays in the table).
    fn prune(&self, through: u64, seal: Box<dyn PruneSeal>) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Stores a checkpoint (durably).
    fn insert_checkpoint(&self, checkpoint: Checkpoint) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The checkpoint of `kind` furthest along (highest sequence, then the latest written).
    fn latest_checkpoint(&self, kind: CheckpointKind) -> BoxFuture<'_, Result<Option<StoredCheckpoint>, StoreError>>;

    /// What the log says is at `sequence`: the record's hash, else a stored checkpoint's.
    fn hash_at(&self, sequence: u64) -> BoxFuture<'_, Result<Option<[u8; 32]>, StoreError>>;

    /// The table's last record as a head.
    fn head(&self) -> BoxFuture<'_, Result<AuditHead, StoreError>>;
}

/// An [`AuditStore`] in memory that keeps only the heads, for the tests of services that
/// record (the SQLite one is tested with the node).
#[cfg(test)]
#[derive(Clone)]
pub(crate) struct MemoryAuditStore {
    heads: std::sync::Arc<std::sync::Mutex<(AuditHead, Option<StoredHead>)>>,
    appender: std::sync::Arc<std::sync::Mutex<Option<Box<dyn BatchAppender>>>>,
}

#[cfg(test)]
impl fmt::Debug for MemoryAuditStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryAuditStore").finish_non_exhaustive()
    }
}

#[cfg(test)]
impl Default for MemoryAuditStore {
    /// An empty log whose head was never sealed, like a fresh data dir.
    fn default() -> Self {
        let unsealed = StoredHead { head: AuditHead::EMPTY, mac: None };
        MemoryAuditStore {
            heads: std::sync::Arc::new(std::sync::Mutex::new((AuditHead::EMPTY, Some(unsealed)))),
            appender: std::sync::Arc::default(),
        }
    }
}

#[cfg(test)]
impl MemoryAuditStore {
    fn heads_now(&self) -> (AuditHead, Option<StoredHead>) {
        self.heads.lock().map(|h| h.clone()).unwrap_or((AuditHead::EMPTY, None))
    }
}

#[cfg(test)]
impl AuditWriter for MemoryAuditStore {
    fn heads(&mut self) -> Result<(AuditHead, Option<StoredHead>), StoreError> {
        Ok(self.heads_now())
    }

    fn append(&mut self, batch: &ChainedBatch<'_>, check: AppendCheck<'_>) -> Result<(), StoreError> {
        let mut heads = self.heads.lock().map_err(|_| StoreError::new("poisoned"))?;
        check(heads.0, heads.1.as_ref())?;
        *heads = (batch.head, Some(StoredHead { head: batch.head, mac: Some(batch.seal.to_vec()) }));
        Ok(())
    }
}

#[cfg(test)]
impl AuditStore for MemoryAuditStore {
    fn open_writer(&self) -> Result<Box<dyn AuditWriter>, StoreError> {
        Ok(Box::new(self.clone()))
    }

    fn install_appender(&self, appender: Box<dyn BatchAppender>) -> Result<(), StoreError> {
        *self.appender.lock().map_err(|_| StoreError::new("poisoned"))? = Some(appender);
        Ok(())
    }

    fn commit_lazily(&self) -> Result<(), StoreError> {
        let mut slot = self.appender.lock().map_err(|_| StoreError::new("poisoned"))?;
        let Some(appender) = slot.as_mut() else { return Ok(()) };
        let result = appender.before(&mut self.clone());
        appender.after(result.is_ok());
        result
    }

    fn list(
        &self,
        _since_sequence: u64,
        _limit: usize,
        _principal: Option<String>,
        _action: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<AuditRecord>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn recent(
        &self,
        _limit: usize,
        _principal: Option<String>,
        _action: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<AuditRecord>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn scan_chain(&self, scan: Box<dyn ChainScan>) -> BoxFuture<'_, Result<Verification, StoreError>> {
        let (table, stored) = self.heads_now();
        Box::pin(async move { Ok(scan.finish(table, stored)) })
    }

    fn prune_bounds(&self, _: Option<i64>) -> BoxFuture<'_, Result<PruneBounds, StoreError>> {
        Box::pin(async { Ok(PruneBounds { span: None, first_recent: None }) })
    }

    fn prune(&self, _: u64, _: Box<dyn PruneSeal>) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async { Err(StoreError::new("the memory audit store keeps no records")) })
    }

    fn insert_checkpoint(&self, _: Checkpoint) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn latest_checkpoint(&self, _: CheckpointKind) -> BoxFuture<'_, Result<Option<StoredCheckpoint>, StoreError>> {
        Box::pin(async { Ok(None) })
    }

    fn hash_at(&self, _: u64) -> BoxFuture<'_, Result<Option<[u8; 32]>, StoreError>> {
        Box::pin(async { Ok(None) })
    }

    fn head(&self) -> BoxFuture<'_, Result<AuditHead, StoreError>> {
        let (table, _) = self.heads_now();
        Box::pin(async move { Ok(table) })
    }
}
