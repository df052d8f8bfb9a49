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
    ScannedRow, StoredHead, Verification,
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
            // One snapshot for the chain and the head: appends change both in one transaction.
            let tx = c.unchecked_transaction()?;
            {
                let mut stmt = tx.prepare(
                    "SELECT sequence, at, principal, action, resource, decision, reason, hash FROM audit ORDER BY sequence",
                )?;
                let mut rows = stmt.query([])?;
                while let Some(row) = rows.next()? {
                    let (record, at) = row_to_record(row)?;
                    let scanned = match record {
                        Ok(record) => ScannedRow::Record(record, at),
                        Err(_) => {
                            let sequence: i64 = row.get(0)?;
                            ScannedRow::Unreadable { sequence: u64::try_from(sequence).unwrap_or(0), at_millis: at }
                        }
                    };
                    if !scan.feed(scanned) {
                        break;
                    }
                }
            }
            let (table, stored) = (table_head(&tx)?, stored_head(&tx)?);
            Ok(scan.finish(table, stored))
        }))
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn lower_hex_spells_as_hex_encode_does() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(super::lower_hex(&bytes), hex::encode(&bytes));
        assert_eq!(super::lower_hex(&[]), "");
    }
}
