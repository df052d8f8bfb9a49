//! The policy set's versions (`policy_versions`), append-only.
//!
//! A new version is numbered inside the write transaction, after the compare-and-set check, so
//! two concurrent updates can never both succeed against the same expected version. This
//! module stores text; it does not parse or validate Cedar (`crate::policy` does).

use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, Row};

use super::{Store, StoreError, from_millis, to_millis};
use crate::integrity::{Field, RowMac, Table};
use crate::policy::{PolicyError, PolicyStore, PolicyVersion, StoredPolicySet};
use crate::store_error::BoxFuture;

const COLUMNS: &str = "version, updated_at, updated_by";

fn version_from_row(row: &Row<'_>) -> rusqlite::Result<Result<PolicyVersion, StoreError>> {
    let version: i64 = row.get(0)?;
    let updated_at: i64 = row.get(1)?;
    let updated_by: String = row.get(2)?;
    Ok(u64::try_from(version)
        .map_err(|_| StoreError::corrupt(format_args!("policy version {version}")))
        .map(|version| PolicyVersion { version, updated_at: from_millis(updated_at), updated_by }))
}

/// The columns of a policy version under its MAC: the version, its text and who stored it.
fn policy_tag(mac: &RowMac, version: i64, text: &str, updated_at: i64, updated_by: &str) -> Vec<u8> {
    let fields = [Field::Int(version), Field::Text(text), Field::Int(updated_at), Field::Text(updated_by)];
    mac.tag(Table::PolicyVersions, &fields).to_vec()
}

/// Reads `{COLUMNS}, text, mac`, checking the MAC when there is a key: an inserted or edited
/// policy version (a permissive set slipped in) is an integrity error, never the active set.
fn stored_from_row(
    row: &Row<'_>,
    mac: Option<&RowMac>,
) -> rusqlite::Result<Result<StoredPolicySet, StoreError>> {
    let text: String = row.get(3)?;
    if let Some(mac) = mac {
        let version: i64 = row.get(0)?;
        let stored: Option<Vec<u8>> = row.get(4)?;
        let tag = policy_tag(mac, version, &text, row.get(1)?, &row.get::<_, String>(2)?);
        let sound =
            stored.as_deref().is_some_and(|s| bool::from(subtle::ConstantTimeEq::ct_eq(s, tag.as_slice())));
        if !sound {
            let what = if stored.is_none() { "has no row mac" } else { "does not match its row mac" };
            return Ok(Err(StoreError::integrity(format_args!(
                "policy version {version} (its text) {what}"
            ))));
        }
    }
    Ok(version_from_row(row)?.map(|info| StoredPolicySet { info, text }))
}

/// MACs every policy version that has none (the one-time backfill of migration 0009).
pub(super) fn backfill_macs(conn: &Connection, mac: &RowMac) -> Result<u64, StoreError> {
    let rows = conn
        .prepare_cached(
            "SELECT version, text, updated_at, updated_by FROM policy_versions WHERE mac IS NULL",
        )?
        .query_map([], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut update = conn.prepare_cached("UPDATE policy_versions SET mac = ?2 WHERE version = ?1")?;
    for (version, text, at, by) in &rows {
        update.execute((version, policy_tag(mac, *version, text, *at, by)))?;
    }
    Ok(rows.len() as u64)
}

fn latest_version(conn: &Connection) -> Result<u64, StoreError> {
    let latest: i64 = conn
        .prepare_cached("SELECT coalesce(max(version), 0) FROM policy_versions")?
        .query_row([], |r| r.get(0))?;
    u64::try_from(latest).map_err(|_| StoreError::corrupt(format_args!("policy version {latest}")))
}

fn sql_version(version: u64) -> Result<i64, PolicyError> {
    i64::try_from(version).map_err(|_| PolicyError::NotFound(version))
}

impl Store {
    /// The newest policy version with its text, or `None` before the first one is stored.
    pub async fn latest_policy(&self) -> Result<Option<StoredPolicySet>, PolicyError> {
        let mac = self.row_mac();
        Ok(self
            .read(move |c| {
                let sql =
                    format!("SELECT {COLUMNS}, text, mac FROM policy_versions ORDER BY version DESC LIMIT 1");
                let row = c
                    .prepare_cached(&sql)?
                    .query_row([], |r| stored_from_row(r, mac.as_deref()))
                    .optional()?;
                row.transpose()
            })
            .await?)
    }

    /// Stores `text` as the next version. With `expected_version`, the current version (0 when
    /// none) must equal it, checked in the same transaction: otherwise
    /// [`PolicyError::VersionConflict`] and nothing is written.
    pub async fn insert_policy_version(
        &self,
        text: String,
        updated_by: String,
        expected_version: Option<u64>,
        now: SystemTime,
    ) -> Result<PolicyVersion, PolicyError> {
        let mac = self.row_mac();
        self.write(move |c| {
            let latest = latest_version(c)?;
            if let Some(expected) = expected_version
                && expected != latest
            {
                return Err(PolicyError::VersionConflict { expected, actual: latest });
            }
            let version = latest + 1;
            let updated_at = to_millis(now);
            let tag = mac.as_deref().map(|m| policy_tag(m, sql_version(version).unwrap_or(0), &text, updated_at, &updated_by));
            c.prepare_cached(
                "INSERT INTO policy_versions (version, text, updated_at, updated_by, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(StoreError::from)?
            .execute((sql_version(version)?, text, updated_at, &updated_by, tag))
            .map_err(StoreError::from)?;
            super::events::append(
                c,
                &crate::events::NewEvent::new(crate::events::POLICY_UPDATED, format!("policy/{version}"))
                    .with("version", version)
                    .with("updated_by", &updated_by),
                now,
            )?;
            Ok(PolicyVersion { version, updated_at: from_millis(updated_at), updated_by })
        })
        .await
    }

    /// Every stored version, newest first, without texts.
    pub async fn policy_versions(&self) -> Result<Vec<PolicyVersion>, PolicyError> {
        self.read(|c| {
            let sql = format!("SELECT {COLUMNS} FROM policy_versions ORDER BY version DESC");
            let mut stmt = c.prepare_cached(&sql).map_err(StoreError::from)?;
            let rows = stmt.query_map([], version_from_row).map_err(StoreError::from)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row.map_err(StoreError::from)??);
            }
            Ok(out)
        })
        .await
    }

    /// One stored version with its text; [`PolicyError::NotFound`] when there is none.
    pub async fn policy_version(&self, version: u64) -> Result<StoredPolicySet, PolicyError> {
        let mac = self.row_mac();
        self.read(move |c| {
            let sql = format!("SELECT {COLUMNS}, text, mac FROM policy_versions WHERE version = ?1");
            c.prepare_cached(&sql)
                .map_err(StoreError::from)?
                .query_row([sql_version(version)?], |r| stored_from_row(r, mac.as_deref()))
                .optional()
                .map_err(StoreError::from)?
                .transpose()?
                .ok_or(PolicyError::NotFound(version))
        })
        .await
    }
}

impl PolicyStore for Store {
    fn latest(&self) -> BoxFuture<'_, Result<Option<StoredPolicySet>, PolicyError>> {
        Box::pin(self.latest_policy())
    }

    fn insert_version(
        &self,
        text: String,
        updated_by: String,
        expected_version: Option<u64>,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<PolicyVersion, PolicyError>> {
        Box::pin(self.insert_policy_version(text, updated_by, expected_version, now))
    }

    fn versions(&self) -> BoxFuture<'_, Result<Vec<PolicyVersion>, PolicyError>> {
        Box::pin(self.policy_versions())
    }

    fn version(&self, version: u64) -> BoxFuture<'_, Result<StoredPolicySet, PolicyError>> {
        Box::pin(self.policy_version(version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn versions_count_from_one_with_compare_and_set() -> Result<(), PolicyError> {
        let dir = tempfile::tempdir().map_err(StoreError::new)?;
        let store = Store::open(&dir.path().join("p.db"))?;
        assert_eq!(store.latest_policy().await?, None);
        assert!(matches!(store.policy_version(1).await, Err(PolicyError::NotFound(1))));

        let v1 = store.insert_policy_version("one".into(), "palyra init".into(), Some(0), at(1000)).await?;
        assert_eq!(v1.version, 1);
        assert_eq!(v1.updated_at, at(1000));
        let conflict = store.insert_policy_version("x".into(), "a".into(), Some(0), at(1)).await;
        assert!(
            matches!(conflict, Err(PolicyError::VersionConflict { expected: 0, actual: 1 })),
            "{conflict:?}"
        );
        let v2 = store.insert_policy_version("two".into(), "b".into(), Some(1), at(2000)).await?;
        let v3 = store.insert_policy_version("three".into(), "c".into(), None, at(3000)).await?;
        assert_eq!((v2.version, v3.version), (2, 3));

        let latest = store.latest_policy().await?;
        assert_eq!(latest.as_ref().map(|s| (s.info.version, s.text.as_str())), Some((3, "three")));
        assert_eq!(store.policy_version(2).await?.text, "two");
        let listed: Vec<(u64, String)> =
            store.policy_versions().await?.into_iter().map(|v| (v.version, v.updated_by)).collect();
        assert_eq!(listed, vec![(3, "c".into()), (2, "b".into()), (1, "palyra init".into())]);
        assert!(matches!(store.policy_version(u64::MAX).await, Err(PolicyError::NotFound(_))));
        Ok(())
    }

    #[tokio::test]
    async fn concurrent_compare_and_set_lets_exactly_one_win() -> Result<(), PolicyError> {
        let dir = tempfile::tempdir().map_err(StoreError::new)?;
        let store = Store::open(&dir.path().join("p.db"))?;
        store.insert_policy_version("base".into(), "init".into(), Some(0), at(1)).await?;
        let mut tasks = Vec::new();
        for i in 0..16 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.insert_policy_version(format!("t{i}"), format!("w{i}"), Some(1), at(2)).await
            }));
        }
        let mut wins = 0;
        for task in tasks {
            match task.await.map_err(StoreError::new)? {
                Ok(v) => {
                    wins += 1;
                    assert_eq!(v.version, 2);
                }
                Err(PolicyError::VersionConflict { expected: 1, actual: 2 }) => {}
                Err(other) => return Err(other),
            }
        }
        assert_eq!(wins, 1);
        assert_eq!(store.policy_versions().await?.len(), 2);
        Ok(())
    }
}
