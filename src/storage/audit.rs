//! The audit tables (`audit`, `audit_head`) behind [`crate::audit::AuditStore`].
//!
//! Reads go through the store's pool. Appends go through [`SqliteAuditWriter`], a connection
//! of its own at `synchronous=NORMAL` that the audit service's writer thread owns, so a
//! request never waits for an fsync of its record: the next `synchronous=FULL` commit of the
//! main writer makes the WAL (and these records) durable. This module stores what the service
//! computed (hashes, seals) and checks nothing itself but the SQL.

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::{BatchHook, Store, StoreError, from_millis};
use crate::audit::{
    AuditDecision, AuditEntry, AuditHead, AuditRecord, AuditStore, AuditWriter, BatchAppender, ChainScan, ChainedBatch,
    Checkpoint, CheckpointKind, PruneBounds, PruneSeal, ScanStart, ScannedRow, StoredCheckpoint, StoredHead,
    Verification,
};
use crate::store_error::BoxFuture;

fn parse_hash(hex_text: &str) -> Option<[u8; 32]> {
    hex::decode(hex_text).ok().and_then(|b| b.try_into().ok())
}

/// The table's last record as a head.
fn table_head(conn: &Connection) -> Result<AuditHead, StoreError> {
    let last: Option<(i64, String)> = conn
        .prepare_cached("SELECT sequence, hash FROM audit ORDER BY sequence DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match last {
        Some((seq, hash)) => AuditHead {
            sequence: u64::try_from(seq).map_err(StoreError::corrupt)?,
            hash: parse_hash(&hash).ok_or_else(|| StoreError::corrupt("audit chain head"))?,
        },
        None => AuditHead::EMPTY,
    })
}

/// The stored head record: `None` when the row is gone; `mac` `None` when never sealed.
fn stored_head(conn: &Connection) -> Result<Option<StoredHead>, StoreError> {
    let row: Option<(i64, String, Option<String>)> = conn
        .prepare_cached("SELECT sequence, hash, mac FROM audit_head WHERE id = 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
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

/// The audit writer's own connection.
#[derive(Debug)]
pub(crate) struct SqliteAuditWriter {
    conn: Connection,
}

impl AuditWriter for SqliteAuditWriter {
    fn heads(&mut self) -> Result<(AuditHead, Option<StoredHead>), StoreError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        Ok((table_head(&tx)?, stored_head(&tx)?))
    }

    fn append(
        &mut self,
        batch: &ChainedBatch<'_>,
        check: crate::audit::AppendCheck<'_>,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        append_in(&tx, batch, check)?;
        tx.commit()?;
        Ok(())
    }
}

/// The store writer's batch, as the audit log's writer: appends inside the batch's
/// transaction (the batch commits or rolls back the records with its writes).
struct InBatch<'c> {
    conn: &'c Connection,
}

impl AuditWriter for InBatch<'_> {
    fn heads(&mut self) -> Result<(AuditHead, Option<StoredHead>), StoreError> {
        Ok((table_head(self.conn)?, stored_head(self.conn)?))
    }

    fn append(
        &mut self,
        batch: &ChainedBatch<'_>,
        check: crate::audit::AppendCheck<'_>,
    ) -> Result<(), StoreError> {
        append_in(self.conn, batch, check)
    }
}

/// The audit log's appender as the store writer's batch hook.
struct AppendFirst(Box<dyn BatchAppender>);

impl BatchHook for AppendFirst {
    fn before(&mut self, conn: &Connection) -> Result<(), StoreError> {
        self.0.before(&mut InBatch { conn })
    }

    fn after(&mut self, committed: bool) {
        self.0.after(committed);
    }
}

/// Checks both heads with `check`, inserts the batch's records and advances the sealed head,
/// in the caller's transaction.
fn append_in(
    tx: &Connection,
    batch: &ChainedBatch<'_>,
    check: crate::audit::AppendCheck<'_>,
) -> Result<(), StoreError> {
    {
        let table = table_head(tx)?;
        let stored = stored_head(tx)?;
        check(table, stored.as_ref())?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO audit (sequence, at, principal, action, resource, decision, reason, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for record in &batch.records {
                let entry = record.entry;
                insert.execute((
                    i64::try_from(record.sequence).map_err(StoreError::corrupt)?,
                    record.at_millis,
                    &entry.principal,
                    &entry.action,
                    &entry.resource,
                    entry.decision.as_str(),
                    &entry.reason,
                    lower_hex(&record.hash),
                ))?;
            }
        }
        seal(tx, batch.head, &batch.seal)?;
        Ok(())
    }
}

/// `bytes` in lower-case hex, as `hex::encode` spells it, from a table: the audit writer
/// spells three digests per batch and one per record, and `hex::encode` builds its string a
/// `char` iterator at a time (a profile of the read path found it at 1 % of the node's CPU).
fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Writes `head` and its seal into `audit_head` (the row must exist: the migration made it).
fn seal(tx: &Connection, head: AuditHead, seal: &[u8; 32]) -> Result<(), StoreError> {
    let changed = tx.prepare_cached("UPDATE audit_head SET sequence = ?1, hash = ?2, mac = ?3 WHERE id = 1")?.execute(
        (
            i64::try_from(head.sequence).map_err(StoreError::corrupt)?,
            lower_hex(&head.hash),
            lower_hex(seal),
        ),
    )?;
    if changed != 1 {
        return Err(StoreError::new("the sealed audit head is missing (it was deleted)"));
    }
    Ok(())
}

impl AuditStore for Store {
    fn open_writer(&self) -> Result<Box<dyn AuditWriter>, StoreError> {
        let mut conn = super::open_connection(
            self.path(),
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;")?;
        super::wait_briefly_when_busy(&mut conn)?;
        Ok(Box::new(SqliteAuditWriter { conn }))
    }

    fn install_appender(&self, appender: Box<dyn BatchAppender>) -> Result<(), StoreError> {
        self.install_batch_hook(Box::new(AppendFirst(appender)))
    }

    fn commit_lazily(&self) -> Result<(), StoreError> {
        Store::commit_lazily(self)
    }

    fn list(
        &self,
        since_sequence: u64,
        limit: usize,
        principal: Option<String>,
        action: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<AuditRecord>, StoreError>> {
        Box::pin(self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT sequence, at, principal, action, resource, decision, reason, hash FROM audit
                 WHERE sequence > ?1 AND (?2 IS NULL OR principal = ?2) AND (?3 IS NULL OR action = ?3)
                 ORDER BY sequence LIMIT ?4",
            )?;
            let rows = stmt.query_map(
                (i64::try_from(since_sequence).unwrap_or(i64::MAX), principal, action, limit as i64),
                row_to_record,
            )?;
            rows.map(|r| r.map_err(StoreError::from).and_then(|(rec, _)| rec)).collect()
        }))
    }

    fn recent(
        &self,
        limit: usize,
        principal: Option<String>,
        action: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<AuditRecord>, StoreError>> {
        Box::pin(self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT sequence, at, principal, action, resource, decision, reason, hash FROM audit
                 WHERE (?1 IS NULL OR principal = ?1) AND (?2 IS NULL OR action = ?2)
                 ORDER BY sequence DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map((principal, action, limit as i64), row_to_record)?;
            rows.map(|r| r.map_err(StoreError::from).and_then(|(rec, _)| rec)).collect()
        }))
    }

    fn scan_chain(&self, mut scan: Box<dyn ChainScan>) -> BoxFuture<'_, Result<Verification, StoreError>> {
        Box::pin(self.read(move |c| {
            // One snapshot for the checkpoints, the chain and the head: appends change the
            // chain and the head in one transaction, a prune the checkpoints and the chain.
            let tx = c.unchecked_transaction()?;
            let start = scan_start(&tx, scan.incremental())?;
            if let Some(after) = scan.start(start) {
                let mut stmt = tx.prepare(
                    "SELECT sequence, at, principal, action, resource, decision, reason, hash FROM audit
                     WHERE sequence > ?1 ORDER BY sequence",
                )?;
                let mut rows = stmt.query([i64::try_from(after).unwrap_or(i64::MAX)])?;
                while let Some(row) = rows.next()? {
                    if !scan.feed(scanned(row)?) {
                        break;
                    }
                }
            }
            let (table, stored) = (table_head(&tx)?, stored_head(&tx)?);
            Ok(scan.finish(table, stored))
        }))
    }

    fn prune_bounds(&self, recent_from_millis: Option<i64>) -> BoxFuture<'_, Result<PruneBounds, StoreError>> {
        Box::pin(self.read(move |c| {
            let tx = c.unchecked_transaction()?;
            let span: (Option<i64>, Option<i64>) =
                tx.query_row("SELECT MIN(sequence), MAX(sequence) FROM audit", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let span = match span {
                (Some(first), Some(last)) => Some((as_u64(first)?, as_u64(last)?)),
                _ => None,
            };
            // Forward from the oldest: as long as what is removed, not what is kept.
            let first_recent = match recent_from_millis {
                Some(cutoff) => tx
                    .prepare_cached("SELECT sequence FROM audit WHERE at >= ?1 ORDER BY sequence LIMIT 1")?
                    .query_row([cutoff], |r| r.get::<_, i64>(0))
                    .optional()?
                    .map(as_u64)
                    .transpose()?,
                None => None,
            };
            Ok(PruneBounds { span, first_recent })
        }))
    }

    fn prune(&self, through: u64, mut seal: Box<dyn PruneSeal>) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.write(move |c| {
            let through_sql = i64::try_from(through).map_err(StoreError::corrupt)?;
            if table_head(c)?.sequence <= through {
                return Err(StoreError::new("a prune must keep the last audit record (the head)"));
            }
            let named = c
                .prepare_cached(&format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE sequence <= ?1 AND sequence >= (SELECT MIN(sequence) FROM audit) ORDER BY id"
                ))?
                .query_map([through_sql], row_to_checkpoint)?
                .collect::<Result<Vec<_>, _>>()?;
            seal.start(latest_checkpoint(c, CheckpointKind::Prune)?, named)?;
            let mut removed = 0u64;
            {
                let mut stmt = c.prepare_cached(
                    "SELECT sequence, at, principal, action, resource, decision, reason, hash FROM audit
                     WHERE sequence <= ?1 ORDER BY sequence",
                )?;
                let mut rows = stmt.query([through_sql])?;
                while let Some(row) = rows.next()? {
                    seal.feed(scanned(row)?)?;
                    removed += 1;
                }
            }
            let checkpoint = seal.finish()?;
            if checkpoint.head.sequence != through || checkpoint.kind != CheckpointKind::Prune {
                return Err(StoreError::new("the prune checkpoint does not name the last record removed"));
            }
            insert_checkpoint(c, &checkpoint)?;
            c.prepare_cached("DELETE FROM audit WHERE sequence <= ?1")?.execute([through_sql])?;
            Ok(removed)
        }))
    }

    fn insert_checkpoint(&self, checkpoint: Checkpoint) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.write(move |c| insert_checkpoint(c, &checkpoint)))
    }

    fn latest_checkpoint(&self, kind: CheckpointKind) -> BoxFuture<'_, Result<Option<StoredCheckpoint>, StoreError>> {
        Box::pin(self.read(move |c| latest_checkpoint(c, kind)))
    }

    fn hash_at(&self, sequence: u64) -> BoxFuture<'_, Result<Option<[u8; 32]>, StoreError>> {
        Box::pin(self.read(move |c| {
            let sequence = i64::try_from(sequence).unwrap_or(i64::MAX);
            let tx = c.unchecked_transaction()?;
            let record: Option<String> = tx
                .prepare_cached("SELECT hash FROM audit WHERE sequence = ?1")?
                .query_row([sequence], |r| r.get(0))
                .optional()?;
            let hash = match record {
                Some(hash) => Some(hash),
                None => tx
                    .prepare_cached("SELECT hash FROM audit_checkpoints WHERE sequence = ?1 ORDER BY id DESC LIMIT 1")?
                    .query_row([sequence], |r| r.get(0))
                    .optional()?,
            };
            Ok(hash.and_then(|h: String| parse_hash(&h)))
        }))
    }

    fn head(&self) -> BoxFuture<'_, Result<AuditHead, StoreError>> {
        Box::pin(self.read(table_head))
    }
}

fn as_u64(n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(StoreError::corrupt)
}

/// A row as the chain scanners see it.
fn scanned(row: &rusqlite::Row<'_>) -> Result<ScannedRow, StoreError> {
    let (record, at) = row_to_record(row)?;
    Ok(match record {
        Ok(record) => ScannedRow::Record(record, at),
        Err(_) => {
            let sequence: i64 = row.get(0)?;
            ScannedRow::Unreadable { sequence: u64::try_from(sequence).unwrap_or(0), at_millis: at }
        }
    })
}

const CHECKPOINT_COLUMNS: &str = "id, kind, sequence, hash, at, signature";

fn row_to_checkpoint(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredCheckpoint> {
    let kind: String = r.get(1)?;
    let sequence: i64 = r.get(2)?;
    let hash: String = r.get(3)?;
    let signature: String = r.get(5)?;
    // Anything unparsable reads as a checkpoint whose signature fails.
    let parsed_kind = CheckpointKind::parse(&kind);
    let signature = match (parsed_kind, hex::decode(signature).ok().and_then(|s| <[u8; 64]>::try_from(s).ok())) {
        (Some(_), Some(signature)) => signature,
        _ => [0; 64],
    };
    Ok(StoredCheckpoint {
        id: r.get(0)?,
        checkpoint: Checkpoint {
            head: AuditHead {
                sequence: u64::try_from(sequence).unwrap_or(u64::MAX),
                hash: parse_hash(&hash).unwrap_or([0xff; 32]),
            },
            at_millis: r.get(4)?,
            kind: parsed_kind.unwrap_or(CheckpointKind::Served),
            signature,
        },
    })
}

/// The checkpoint of `kind` furthest along (a copy of an older row, re-inserted, changes
/// nothing).
fn latest_checkpoint(c: &Connection, kind: CheckpointKind) -> Result<Option<StoredCheckpoint>, StoreError> {
    Ok(c.prepare_cached(&format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE kind = ?1 ORDER BY sequence DESC, id DESC LIMIT 1"
    ))?
    .query_row([kind.as_str()], row_to_checkpoint)
    .optional()?)
}

fn insert_checkpoint(c: &Connection, checkpoint: &Checkpoint) -> Result<(), StoreError> {
    c.prepare_cached("INSERT INTO audit_checkpoints (kind, sequence, hash, at, signature) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute((
            checkpoint.kind.as_str(),
            i64::try_from(checkpoint.head.sequence).map_err(StoreError::corrupt)?,
            hex::encode(checkpoint.head.hash),
            checkpoint.at_millis,
            hex::encode(checkpoint.signature),
        ))?;
    Ok(())
}

/// The checkpoints a scan starts from, in its snapshot.
fn scan_start(tx: &Connection, incremental: bool) -> Result<ScanStart, StoreError> {
    let first: Option<i64> = tx.query_row("SELECT MIN(sequence) FROM audit", [], |r| r.get(0))?;
    let verified = if incremental { latest_checkpoint(tx, CheckpointKind::Verified)? } else { None };
    let after = verified.as_ref().map_or(0, |v| v.id);
    let checkpoints = tx
        .prepare_cached(&format!("SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE id > ?1 ORDER BY id"))?
        .query_map([after], row_to_checkpoint)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ScanStart {
        first: first.map(as_u64).transpose()?,
        checkpoints,
        latest_prune: latest_checkpoint(tx, CheckpointKind::Prune)?,
        verified,
    })
}

type RecordRow = (Result<AuditRecord, StoreError>, i64);

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<RecordRow> {
    let sequence: i64 = r.get(0)?;
    let at: i64 = r.get(1)?;
    let decision: String = r.get(5)?;
    let record = (|| {
        Ok(AuditRecord {
            sequence: u64::try_from(sequence).map_err(StoreError::corrupt)?,
            entry: AuditEntry {
                at: from_millis(at),
                principal: r.get(2)?,
                action: r.get(3)?,
                resource: r.get(4)?,
                decision: AuditDecision::parse(&decision)
                    .ok_or_else(|| StoreError::corrupt("audit decision"))?,
                reason: r.get(6)?,
            },
            hash: r.get(7)?,
        })
    })();
    Ok((record, at))
}

#[cfg(feature = "testkit")]
impl Store {
    /// Appends `records` synthetic records (a device reading a secret), chained with `key`
    /// after the table's last record, and seals the head with `head_key`: what the audit
    /// writer would store, in transactions of 100,000. The audit log must not be running on
    /// this store (its writer would find the table moved). For benches at scale.
    pub(crate) async fn bulk_append_audit(
        &self,
        key: ring::hmac::Key,
        head_key: ring::hmac::Key,
        records: u64,
    ) -> Result<AuditHead, StoreError> {
        let (key, head_key) = (std::sync::Arc::new(key), std::sync::Arc::new(head_key));
        let mut left = records;
        let mut last = AuditHead::EMPTY;
        while left > 0 {
            let count = left.min(100_000);
            let (key, head_key) = (std::sync::Arc::clone(&key), std::sync::Arc::clone(&head_key));
            last = self
                .write(move |c| {
                    let mut head = table_head(c)?;
                    let at = super::to_millis(std::time::SystemTime::now());
                    let entry = AuditEntry {
                        at: from_millis(at),
                        principal: "device:01jbenchbenchbenchbenchbench".to_owned(),
                        action: "palyra.vault.v1.VaultService/GetSecret".to_owned(),
                        resource: "Scope:agents/alpha".to_owned(),
                        decision: AuditDecision::Allow,
                        reason: "vault-read-granted".to_owned(),
                    };
                    let mut insert = c.prepare_cached(
                        "INSERT INTO audit (sequence, at, principal, action, resource, decision, reason, hash)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )?;
                    for _ in 0..count {
                        let sequence = head.sequence + 1;
                        let hash = crate::audit::chain_hash(&key, &head.hash, sequence, at, &entry);
                        insert.execute((
                            i64::try_from(sequence).map_err(StoreError::corrupt)?,
                            at,
                            &entry.principal,
                            &entry.action,
                            &entry.resource,
                            entry.decision.as_str(),
                            &entry.reason,
                            hex::encode(hash),
                        ))?;
                        head = AuditHead { sequence, hash };
                    }
                    seal(c, head, &head.seal(&head_key))?;
                    Ok::<_, StoreError>(head)
                })
                .await?;
            left -= count;
        }
        Ok(last)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lower_hex_spells_as_hex_encode_does() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(super::lower_hex(&bytes), hex::encode(&bytes));
        assert_eq!(super::lower_hex(&[]), "");
    }
}
