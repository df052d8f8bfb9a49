//! The vault's tables behind [`BlobBackend`].

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, Row};

use super::read_cache::ReadCache;
use super::{Store, StoreError, events, from_millis, to_millis};
use crate::events::{
    NewEvent, VAULT_KEY_ROTATED, VAULT_SECRET_DELETED, VAULT_SECRET_DESTROYED, VAULT_SECRET_WRITTEN,
};
use crate::integrity::{Field, RowMac, Table};
use crate::vault::{
    Binding, BlobBackend, BoxFuture, ListQuery, ObjectId, PutRecord, RewrapFn, RewrapProgress, Scope, SealFn,
    SecretKey, SecretMetadata, SecretVersion, StoredVersion, VaultError,
};

/// The vault's sealed secrets in SQLite.
#[derive(Debug, Clone)]
pub struct SqliteBlobBackend {
    store: Store,
    /// Recent point reads, checked ([`ReadCache`]).
    reads: Arc<ReadCache>,
}

impl SqliteBlobBackend {
    /// The vault tables of `store`; a point read's checked row serves again for `read_cache`
    /// at most, and only until the next write ([`ReadCache`]; zero: every read goes to SQLite).
    pub fn new(store: Store, read_cache: Duration) -> Self {
        let reads = Arc::new(ReadCache::new(read_cache));
        store.data_epoch().register(&reads);
        SqliteBlobBackend { store, reads }
    }
}

/// The metadata columns of `secrets`, which every query aliases as `s`: the row, its MAC, the
/// highest version stored for it (a latest version below that is a rollback of the row), and
/// its id (the key of its versions).
const METADATA_COLUMNS: &str = "s.scope, s.key, s.object_id, s.latest_version, s.created_at, s.updated_at, s.deleted, s.size, \
     s.mac, (SELECT max(m.version) FROM secret_versions m WHERE m.secret = s.id), s.id";
/// How many columns [`METADATA_COLUMNS`] has.
const METADATA_LEN: usize = 11;
/// Where [`METADATA_COLUMNS`] has the row's id: last.
const ID_COLUMN: usize = METADATA_LEN - 1;

/// The columns of a `secrets` row that decide what is served, in MAC order.
fn secret_fields<'a>(
    object_id: &'a str,
    scope: &'a str,
    key: &'a str,
    latest_version: i64,
    deleted: bool,
    size: i64,
) -> [Field<'a>; 6] {
    [
        Field::Text(object_id),
        Field::Text(scope),
        Field::Text(key),
        Field::Int(latest_version),
        Field::Int(i64::from(deleted)),
        Field::Int(size),
    ]
}

/// The MAC to store with a `secrets` row (`None` without a row-MAC key).
fn secret_mac(mac: Option<&RowMac>, m: &SecretMetadata) -> Option<Vec<u8>> {
    mac.map(|mac| {
        let version = i64::try_from(m.version).unwrap_or(i64::MAX);
        let fields = secret_fields(
            m.object_id.as_str(),
            m.scope.as_str(),
            m.key.as_str(),
            version,
            m.deleted,
            i64::from(m.size),
        );
        mac.tag(Table::Secrets, &fields).to_vec()
    })
}

/// Reads the metadata columns, in [`METADATA_COLUMNS`] order, starting at column 0, and checks
/// the row's MAC and that no stored version is newer than its latest version.
fn metadata_from_row(
    row: &Row<'_>,
    mac: Option<&RowMac>,
) -> rusqlite::Result<Result<SecretMetadata, StoreError>> {
    let scope: String = row.get(0)?;
    let key: String = row.get(1)?;
    let object_id: String = row.get(2)?;
    let version: i64 = row.get(3)?;
    let deleted = row.get::<_, i64>(6)? != 0;
    let size: i64 = row.get(7)?;
    let stored_mac: Option<Vec<u8>> = row.get(8)?;
    let newest: Option<i64> = row.get(9)?;
    if let Some(mac) = mac {
        let fields = secret_fields(&object_id, &scope, &key, version, deleted, size);
        if !mac.verify(Table::Secrets, &fields, stored_mac.as_deref()) {
            let what = if stored_mac.is_none() { "has no row mac" } else { "does not match its row mac" };
            return Ok(Err(StoreError::integrity(format_args!(
                "secret {object_id} ({scope}/{key}): its row (latest version, deleted flag, size) {what}"
            ))));
        }
    }
    if let Some(newest) = newest.filter(|&n| n > version) {
        return Ok(Err(StoreError::integrity(format_args!(
            "secret {object_id} ({scope}/{key}): latest version {version} is below stored version {newest} (rolled back)"
        ))));
    }
    let parsed = (|| {
        let (scope, key) =
            (Scope::parse(&scope).map_err(StoreError::corrupt)?, SecretKey::parse(&key).map_err(StoreError::corrupt)?);
        // Found by scope and key, the row must name the object id they make (one MAC'd with
        // another was written so before the rows had MACs, or by hand).
        let named = ObjectId::new(&scope, &key);
        if named.as_str() != object_id {
            return Err(StoreError::integrity(format_args!(
                "secret {object_id} ({scope}/{key}): its object id is not the one its scope and key make"
            )));
        }
        Ok(SecretMetadata {
            scope,
            key,
            object_id: named,
            version: u64::try_from(version).map_err(StoreError::corrupt)?,
            created_at: from_millis(row.get(4)?),
            updated_at: from_millis(row.get(5)?),
            deleted,
            size: u32::try_from(size).map_err(StoreError::corrupt)?,
        })
    })();
    Ok(parsed.map_err(|e: StoreError| e))
}

/// The checked metadata of the secret `key` in `scope` and its row id.
fn load_metadata(
    conn: &Connection,
    scope: &Scope,
    key: &SecretKey,
    mac: Option<&RowMac>,
) -> Result<Option<(i64, SecretMetadata)>, StoreError> {
    static SQL: LazyLock<String> =
        LazyLock::new(|| format!("SELECT {METADATA_COLUMNS} FROM secrets s WHERE s.scope = ?1 AND s.key = ?2"));
    conn.prepare_cached(&SQL)?
        .query_row((scope.as_str(), key.as_str()), |r| {
            let id: i64 = r.get(ID_COLUMN)?;
            Ok(metadata_from_row(r, mac)?.map(|m| (id, m)))
        })
        .optional()?
        .transpose()
}

/// MACs every `secrets` row that has none (the one-time backfill of migration 0009).
pub(super) fn backfill_macs(conn: &Connection, mac: &RowMac) -> Result<u64, StoreError> {
    let rows = conn
        .prepare_cached(
            "SELECT id, object_id, scope, key, latest_version, deleted, size FROM secrets WHERE mac IS NULL",
        )?
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)? != 0,
                r.get::<_, i64>(6)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut update = conn.prepare_cached("UPDATE secrets SET mac = ?2 WHERE id = ?1")?;
    for (id, object_id, scope, key, version, deleted, size) in &rows {
        let tag = mac.tag(Table::Secrets, &secret_fields(object_id, scope, key, *version, *deleted, *size));
        update.execute((id, tag.as_slice()))?;
    }
    Ok(rows.len() as u64)
}

fn current_generation(conn: &Connection) -> Result<u32, StoreError> {
    let text: String = conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'kek_generation'")?
        .query_row([], |r| r.get(0))?;
    text.parse().map_err(|_| StoreError::corrupt("kek_generation"))
}

fn put(
    conn: &Connection,
    record: PutRecord,
    seal: SealFn,
    mac: Option<&RowMac>,
) -> Result<SecretMetadata, VaultError> {
    let generation = current_generation(conn)?;
    let existing = load_metadata(conn, &record.scope, &record.key, mac)?;
    let live = existing.as_ref().filter(|(_, m)| !m.deleted).map_or(0, |(_, m)| m.version);
    if let Some(expected) = record.expected_version
        && expected != live
    {
        return Err(VaultError::VersionConflict {
            scope: record.scope,
            key: record.key,
            expected,
            actual: live,
        });
    }
    let version = existing.as_ref().map_or(0, |(_, m)| m.version) + 1;
    let envelope = seal(version, generation)?;
    let now = to_millis(record.now);
    let written = SecretMetadata {
        scope: record.scope.clone(),
        key: record.key.clone(),
        object_id: record.object_id.clone(),
        version,
        created_at: existing.as_ref().map_or(from_millis(now), |(_, m)| m.created_at),
        updated_at: from_millis(now),
        deleted: false,
        size: record.size,
    };
    let row_mac = secret_mac(mac, &written);
    let id = match &existing {
        Some((id, _)) => {
            conn.prepare_cached(
                "UPDATE secrets SET latest_version = ?2, updated_at = ?3, deleted = 0, size = ?4, mac = ?5 WHERE id = ?1",
            )
            .map_err(StoreError::from)?
            .execute((id, version as i64, now, record.size, row_mac))
            .map_err(StoreError::from)?;
            *id
        }
        // A new secret takes the next id: its row and versions go at the end of their tables.
        None => conn
            .prepare_cached(
                "INSERT INTO secrets (object_id, scope, key, latest_version, created_at, updated_at, deleted, size, mac)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, 0, ?6, ?7) RETURNING id",
            )
            .map_err(StoreError::from)?
            .query_row(
                (
                    record.object_id.as_str(),
                    record.scope.as_str(),
                    record.key.as_str(),
                    version as i64,
                    now,
                    record.size,
                    row_mac,
                ),
                |r| r.get::<_, i64>(0),
            )
            .map_err(StoreError::from)?,
    };
    conn.prepare_cached(
        "INSERT INTO secret_versions (secret, version, created_at, size, kek_generation, envelope)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .map_err(StoreError::from)?
    .execute((id, version as i64, now, record.size, generation, envelope))
    .map_err(StoreError::from)?;
    events::append(
        conn,
        &secret_event(VAULT_SECRET_WRITTEN, &record.scope, &record.key, version),
        from_millis(now),
    )?;
    Ok(written)
}

/// A vault event: subject `scope/key`, never the value.
fn secret_event(kind: &'static str, scope: &Scope, key: &SecretKey, version: u64) -> NewEvent {
    NewEvent::new(kind, format!("{}/{}", scope.as_str(), key.as_str()))
        .with("scope", scope.as_str())
        .with("key", key.as_str())
        .with("version", version)
}

fn get(
    conn: &Connection,
    scope: Scope,
    key: SecretKey,
    version: Option<u64>,
    mac: Option<&RowMac>,
) -> Result<StoredVersion, VaultError> {
    let not_found = || VaultError::NotFound { scope: scope.clone(), key: key.clone(), version };
    // Built once: the statement cache is keyed by this text, and a read is the hot path.
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {METADATA_COLUMNS}, v.version, v.envelope FROM secrets s
             JOIN secret_versions v ON v.secret = s.id AND v.version = coalesce(?3, s.latest_version)
             WHERE s.scope = ?1 AND s.key = ?2"
        )
    });
    let requested = version.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
    let row = conn
        .prepare_cached(&SQL)
        .map_err(StoreError::from)?
        .query_row((scope.as_str(), key.as_str(), requested), |row| {
            Ok((
                metadata_from_row(row, mac)?,
                row.get::<_, i64>(METADATA_LEN)?,
                row.get::<_, Option<Vec<u8>>>(METADATA_LEN + 1)?,
            ))
        })
        .optional()
        .map_err(StoreError::from)?;
    let Some((metadata, stored_version, envelope)) = row else {
        return Err(not_found());
    };
    let metadata = metadata?;
    let Some(envelope) = envelope.filter(|_| !metadata.deleted) else {
        return Err(not_found());
    };
    Ok(StoredVersion {
        metadata,
        version: u64::try_from(stored_version).map_err(StoreError::corrupt)?,
        envelope,
    })
}

fn list(
    conn: &Connection,
    query: ListQuery,
    mac: Option<&RowMac>,
) -> Result<Vec<SecretMetadata>, VaultError> {
    // Rows come after the cursor and at or after (scope, ''): every key sorts after ''. Starting
    // the cursor there lets SQLite seek straight to the page instead of scanning everything
    // before it, so a page costs the same at any depth and with any number of secrets.
    let scope = query.scope.as_ref().map_or("", |s| s.as_str());
    let floor = (scope.to_owned(), String::new());
    let (after_scope, after_key) = query
        .after
        .as_ref()
        .map(|(s, k)| (s.as_str().to_owned(), k.as_str().to_owned()))
        .map_or(floor.clone(), |after| after.max(floor));
    let sql = if query.scope.is_none() {
        // Every scope: the whole (scope, key) index from the cursor on.
        format!(
            "SELECT {METADATA_COLUMNS} FROM secrets s
             WHERE (scope, key) > (?3, ?4) AND ?1 = '' AND (?2 OR deleted = 0)
             ORDER BY scope, key LIMIT ?5"
        )
    } else if query.recursive {
        // Sub-scopes of `a` are `a/...`: the range ['a/', 'a0') — '0' follows '/' in ASCII — and
        // not siblings such as `a-b` or `a.b`. The row-value bound is the index range's start.
        format!(
            "SELECT {METADATA_COLUMNS} FROM secrets s
             WHERE (scope, key) > (?3, ?4) AND scope < ?1 || '0' AND (scope = ?1 OR scope >= ?1 || '/')
               AND (?2 OR deleted = 0)
             ORDER BY scope, key LIMIT ?5"
        )
    } else {
        if after_scope != scope {
            // The cursor is past this scope.
            return Ok(Vec::new());
        }
        format!(
            "SELECT {METADATA_COLUMNS} FROM secrets s
             WHERE scope = ?1 AND ?3 = ?1 AND key > ?4 AND (?2 OR deleted = 0)
             ORDER BY scope, key LIMIT ?5"
        )
    };
    let mut stmt = conn.prepare_cached(&sql).map_err(StoreError::from)?;
    let rows = stmt
        .query_map(
            (scope, query.include_deleted, after_scope, after_key, query.limit as i64),
            |r| metadata_from_row(r, mac),
        )
        .map_err(StoreError::from)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(StoreError::from)??);
    }
    Ok(out)
}

fn delete(
    conn: &Connection,
    scope: Scope,
    key: SecretKey,
    destroy: bool,
    now: SystemTime,
    mac: Option<&RowMac>,
) -> Result<SecretMetadata, VaultError> {
    let Some((id, mut metadata)) = load_metadata(conn, &scope, &key, mac)? else {
        return Err(VaultError::NotFound { scope, key, version: None });
    };
    if metadata.deleted && !destroy {
        // Deleting what is already deleted changes nothing.
        return Ok(metadata);
    }
    let now_ms = to_millis(now);
    let mut written = metadata.clone();
    written.deleted = true;
    if destroy {
        written.size = 0;
    }
    conn.prepare_cached(
        "UPDATE secrets SET deleted = 1, updated_at = ?2, size = CASE WHEN ?3 THEN 0 ELSE size END, mac = ?4 WHERE id = ?1",
    )
    .map_err(StoreError::from)?
    .execute((id, now_ms, destroy, secret_mac(mac, &written)))
    .map_err(StoreError::from)?;
    if destroy {
        // secure_delete overwrites the freed cells, so the ciphertext and wrapped DEK are gone
        // from the database file, not just unlinked.
        conn.prepare_cached(
            "UPDATE secret_versions SET envelope = NULL, kek_generation = NULL, destroyed = 1 WHERE secret = ?1",
        )
        .map_err(StoreError::from)?
        .execute([id])
        .map_err(StoreError::from)?;
    }
    metadata.deleted = true;
    metadata.updated_at = from_millis(now_ms);
    let kind = if destroy { VAULT_SECRET_DESTROYED } else { VAULT_SECRET_DELETED };
    events::append(
        conn,
        &secret_event(kind, &metadata.scope, &metadata.key, metadata.version),
        from_millis(now_ms),
    )?;
    if destroy {
        metadata.size = 0;
    }
    Ok(metadata)
}

fn history(
    conn: &Connection,
    scope: Scope,
    key: SecretKey,
    mac: Option<&RowMac>,
) -> Result<(SecretMetadata, Vec<SecretVersion>), VaultError> {
    let Some((id, metadata)) = load_metadata(conn, &scope, &key, mac)? else {
        return Err(VaultError::NotFound { scope, key, version: None });
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT version, created_at, size, destroyed FROM secret_versions WHERE secret = ?1 ORDER BY version",
        )
        .map_err(StoreError::from)?;
    let versions = stmt
        .query_map([id], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?))
        })
        .map_err(StoreError::from)?
        .map(|row| {
            let (version, created_at, size, destroyed) = row?;
            Ok(SecretVersion {
                version: u64::try_from(version).map_err(StoreError::corrupt)?,
                created_at: from_millis(created_at),
                size: u32::try_from(size).map_err(StoreError::corrupt)?,
                destroyed: destroyed != 0,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok((metadata, versions))
}

fn begin_rotation(conn: &Connection) -> Result<u32, VaultError> {
    let next = current_generation(conn)?
        .checked_add(1)
        .ok_or_else(|| VaultError::InvalidArgument("key generations exhausted".into()))?;
    conn.prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'kek_generation'")
        .map_err(StoreError::from)?
        .execute([next.to_string()])
        .map_err(StoreError::from)?;
    events::append(
        conn,
        &NewEvent::new(VAULT_KEY_ROTATED, format!("generation/{next}")).with("generation", next),
        SystemTime::now(),
    )?;
    Ok(next)
}

fn rewrap_batch(
    conn: &Connection,
    after: Option<(i64, u64)>,
    limit: usize,
    rewrap: RewrapFn,
) -> Result<RewrapProgress, VaultError> {
    let target = current_generation(conn)?;
    // From the first row, whatever its id (ids are positive, but none is skipped if not).
    let (after_id, after_version) =
        after.map_or((i64::MIN, i64::MIN), |(id, v)| (id, i64::try_from(v).unwrap_or(i64::MAX)));
    let rows = {
        let mut stmt = conn
            .prepare_cached(
                "SELECT v.secret, v.version, s.scope, s.key, v.envelope FROM secret_versions v
                 JOIN secrets s ON s.id = v.secret
                 WHERE v.envelope IS NOT NULL AND v.kek_generation < ?1 AND (v.secret, v.version) > (?2, ?3)
                 ORDER BY v.secret, v.version LIMIT ?4",
            )
            .map_err(StoreError::from)?;
        stmt.query_map((target, after_id, after_version, limit as i64), |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Vec<u8>>(4)?,
            ))
        })
        .map_err(StoreError::from)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::from)?
    };
    let mut progress = RewrapProgress { generation: target, ..RewrapProgress::default() };
    let mut update = conn
        .prepare_cached("UPDATE secret_versions SET envelope = ?3, kek_generation = ?4 WHERE secret = ?1 AND version = ?2")
        .map_err(StoreError::from)?;
    for (id, version, scope, key, envelope) in rows {
        let rewrapped = match (Scope::parse(&scope), SecretKey::parse(&key), u64::try_from(version)) {
            (Ok(scope), Ok(key), Ok(v)) => {
                rewrap(Binding { scope: &scope, key: &key, version: v }, &envelope, target).ok()
            }
            _ => None,
        };
        match rewrapped {
            Some(new) => {
                update.execute((id, version, new, target)).map_err(StoreError::from)?;
                progress.rewrapped += 1;
            }
            None => progress.failed += 1,
        }
        progress.last = Some((id, u64::try_from(version).unwrap_or(0)));
    }
    Ok(progress)
}

/// The generation every envelope was last found rewrapped to (0 when unknown).
fn rewrapped_generation(conn: &Connection) -> Result<u32, StoreError> {
    let text: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'rewrapped_generation'")?
        .query_row([], |r| r.get(0))
        .optional()?;
    text.map_or(Ok(0), |t| t.parse().map_err(|_| StoreError::corrupt("rewrapped_generation")))
}

fn rewrap_pending(conn: &Connection) -> Result<bool, VaultError> {
    Ok(rewrapped_generation(conn)? < current_generation(conn)?)
}

fn rewrap_finished(conn: &Connection, generation: u32) -> Result<(), VaultError> {
    conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES ('rewrapped_generation', ?1)")
        .map_err(StoreError::from)?
        .execute([generation.to_string()])
        .map_err(StoreError::from)?;
    Ok(())
}

impl BlobBackend for SqliteBlobBackend {
    fn put(&self, record: PutRecord, seal: SealFn) -> BoxFuture<'_, Result<SecretMetadata, VaultError>> {
        let mac = self.store.row_mac();
        Box::pin(self.store.write(move |c| put(c, record, seal, mac.as_deref())))
    }

    fn get(
        &self,
        scope: Scope,
        key: SecretKey,
        version: Option<u64>,
    ) -> BoxFuture<'_, Result<Arc<StoredVersion>, VaultError>> {
        // Taken before the read transaction begins: a change that commits after it ends the
        // epoch. None while a change commits: this read neither uses nor fills the cache.
        let epoch = self.store.data_epoch().current();
        let wanted = (scope, key, version);
        Box::pin(async move {
            if let Some(stored) = epoch.and_then(|e| self.reads.get(&wanted, e)) {
                // As `read_now` does: a task looping on cached reads still yields.
                tokio::task::coop::consume_budget().await;
                return Ok(stored);
            }
            // A point read by the (scope, key) index: on the calling thread (see `Store::read_now`).
            let mac = self.store.row_mac();
            let (scope, key) = (wanted.0.clone(), wanted.1.clone());
            let stored = Arc::new(self.store.read_now(move |c| get(c, scope, key, version, mac.as_deref())).await?);
            if let Some(epoch) = epoch {
                self.reads.put(wanted, &stored, epoch, self.store.data_epoch());
            }
            Ok(stored)
        })
    }

    fn list(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<SecretMetadata>, VaultError>> {
        let mac = self.store.row_mac();
        Box::pin(self.store.read(move |c| list(c, query, mac.as_deref())))
    }

    fn delete(
        &self,
        scope: Scope,
        key: SecretKey,
        destroy: bool,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<SecretMetadata, VaultError>> {
        let mac = self.store.row_mac();
        Box::pin(self.store.write(move |c| delete(c, scope, key, destroy, now, mac.as_deref())))
    }

    fn history(
        &self,
        scope: Scope,
        key: SecretKey,
    ) -> BoxFuture<'_, Result<(SecretMetadata, Vec<SecretVersion>), VaultError>> {
        let mac = self.store.row_mac();
        Box::pin(self.store.read(move |c| history(c, scope, key, mac.as_deref())))
    }

    fn begin_rotation(&self) -> BoxFuture<'_, Result<u32, VaultError>> {
        Box::pin(self.store.write(begin_rotation))
    }

    fn rewrap_batch(
        &self,
        after: Option<(i64, u64)>,
        limit: usize,
        rewrap: RewrapFn,
    ) -> BoxFuture<'_, Result<RewrapProgress, VaultError>> {
        let rewrap = Arc::clone(&rewrap);
        Box::pin(self.store.write(move |c| rewrap_batch(c, after, limit, rewrap)))
    }

    fn rewrap_pending(&self) -> BoxFuture<'_, Result<bool, VaultError>> {
        Box::pin(self.store.read(rewrap_pending))
    }

    fn rewrap_finished(&self, generation: u32) -> BoxFuture<'_, Result<(), VaultError>> {
        Box::pin(self.store.write(move |c| rewrap_finished(c, generation)))
    }

    fn count_live(&self) -> BoxFuture<'_, Result<u64, VaultError>> {
        Box::pin(self.store.read(|c| {
            let count: i64 = c
                .prepare_cached("SELECT count(*) FROM secrets WHERE deleted = 0")
                .map_err(StoreError::from)?
                .query_row([], |r| r.get(0))
                .map_err(StoreError::from)?;
            Ok(u64::try_from(count).unwrap_or(0))
        }))
    }

    fn scopes(&self, limit: usize) -> BoxFuture<'_, Result<Vec<Scope>, VaultError>> {
        Box::pin(self.store.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT DISTINCT scope FROM secrets WHERE deleted = 0 ORDER BY scope LIMIT ?1",
                )
                .map_err(StoreError::from)?;
            let rows = stmt.query_map([limit as i64], |r| r.get::<_, String>(0)).map_err(StoreError::from)?;
            let mut out = Vec::new();
            for row in rows {
                let text = row.map_err(StoreError::from)?;
                out.push(Scope::parse(&text).map_err(StoreError::corrupt)?);
            }
            Ok(out)
        }))
    }
}
