//! What [`super::Audit`] needs from the database. The SQLite layer implements it; this module
//! names the operations and the shapes they exchange, and knows no SQL.
//!
//! Appends do not go through the async store: the audit writer runs on its own thread with
//! its own connection (`synchronous=NORMAL`), so a request never waits for an fsync of its
//! record. [`AuditStore::open_writer`] hands the service that connection as an
//! [`AuditWriter`], a blocking object the writer thread owns.

use std::fmt;

use super::chain::{AuditEntry, AuditHead, AuditRecord, Verification};
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

/// A scan of the whole chain, fed by the store inside one read snapshot.
pub(crate) trait ChainScan: Send {
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
}
