//! The policy set's versions (`policy_versions`), append-only.
//!
//! A new version is numbered inside the write transaction, after the compare-and-set check, so
//! two concurrent updates can never both succeed against the same expected version. This
//! module stores text; it does not parse or validate Cedar (`crate::policy` does).

use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, Row};

use super::{StorageError, Store, from_millis, to_millis};
use crate::policy::{PolicyError, PolicyVersion, StoredPolicySet};

const COLUMNS: &str = "version, updated_at, updated_by";

fn version_from_row(row: &Row<'_>) -> rusqlite::Result<Result<PolicyVersion, StorageError>> {
    let version: i64 = row.get(0)?;
    let updated_at: i64 = row.get(1)?;
    let updated_by: String = row.get(2)?;
    Ok(u64::try_from(version)
        .map_err(|_| StorageError::corrupt(format_args!("policy version {version}")))
        .map(|version| PolicyVersion { version, updated_at: from_millis(updated_at), updated_by }))
}

fn stored_from_row(row: &Row<'_>) -> rusqlite::Result<Result<StoredPolicySet, StorageError>> {
    let text: String = row.get(3)?;
    Ok(version_from_row(row)?.map(|info| StoredPolicySet { info, text }))
}

fn latest_version(conn: &Connection) -> Result<u64, StorageError> {
    let latest: i64 = conn
        .prepare_cached("SELECT coalesce(max(version), 0) FROM policy_versions")?
        .query_row([], |r| r.get(0))?;
    u64::try_from(latest).map_err(|_| StorageError::corrupt(format_args!("policy version {latest}")))
}

fn sql_version(version: u64) -> Result<i64, PolicyError> {
    i64::try_from(version).map_err(|_| PolicyError::NotFound(version))
}

impl Store {
    /// The newest policy version with its text, or `None` before the first one is stored.
    pub async fn latest_policy(&self) -> Result<Option<StoredPolicySet>, PolicyError> {
        Ok(self
            .read(|c| {
                let sql =
                    format!("SELECT {COLUMNS}, text FROM policy_versions ORDER BY version DESC LIMIT 1");
                let row = c.prepare_cached(&sql)?.query_row([], stored_from_row).optional()?;
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
        self.write(move |c| {
            let latest = latest_version(c)?;
            if let Some(expected) = expected_version
                && expected != latest
            {
                return Err(PolicyError::VersionConflict { expected, actual: latest });
            }
            let version = latest + 1;
            let updated_at = to_millis(now);
            c.prepare_cached(
                "INSERT INTO policy_versions (version, text, updated_at, updated_by) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(StorageError::from)?
            .execute((sql_version(version)?, text, updated_at, &updated_by))
            .map_err(StorageError::from)?;
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
            let mut stmt = c.prepare_cached(&sql).map_err(StorageError::from)?;
            let rows = stmt.query_map([], version_from_row).map_err(StorageError::from)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row.map_err(StorageError::from)??);
            }
            Ok(out)
        })
        .await
    }

    /// One stored version with its text; [`PolicyError::NotFound`] when there is none.
    pub async fn policy_version(&self, version: u64) -> Result<StoredPolicySet, PolicyError> {
        self.read(move |c| {
            let sql = format!("SELECT {COLUMNS}, text FROM policy_versions WHERE version = ?1");
            c.prepare_cached(&sql)
                .map_err(StorageError::from)?
                .query_row([sql_version(version)?], stored_from_row)
                .optional()
                .map_err(StorageError::from)?
                .transpose()?
                .ok_or(PolicyError::NotFound(version))
        })
        .await
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
        let dir = tempfile::tempdir().map_err(StorageError::new)?;
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
        let dir = tempfile::tempdir().map_err(StorageError::new)?;
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
            match task.await.map_err(StorageError::new)? {
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
