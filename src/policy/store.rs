//! What [`super::Policies`] needs from the database: the append-only versions of the policy
//! set. The SQLite layer implements it (with row MACs); this module only names the operations.

use std::fmt;
use std::time::SystemTime;

use super::{PolicyError, PolicyVersion, StoredPolicySet};
use crate::store_error::BoxFuture;

/// The stored versions of the policy set. Versions count from 1 and are never rewritten.
pub(crate) trait PolicyStore: Send + Sync + fmt::Debug {
    /// The newest version with its text, or `None` before the first one is stored.
    fn latest(&self) -> BoxFuture<'_, Result<Option<StoredPolicySet>, PolicyError>>;

    /// Stores `text` as the next version. With `expected_version`, the current version (0
    /// when none) must equal it, checked in the same transaction: otherwise
    /// [`PolicyError::VersionConflict`] and nothing is written.
    fn insert_version(
        &self,
        text: String,
        updated_by: String,
        expected_version: Option<u64>,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<PolicyVersion, PolicyError>>;

    /// Every stored version, newest first, without texts.
    fn versions(&self) -> BoxFuture<'_, Result<Vec<PolicyVersion>, PolicyError>>;

    /// One stored version with its text; [`PolicyError::NotFound`] when there is none.
    fn version(&self, version: u64) -> BoxFuture<'_, Result<StoredPolicySet, PolicyError>>;
}

/// A [`PolicyStore`] in memory, for the service's tests (the SQLite one has its own).
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct MemoryPolicyStore(std::sync::Mutex<Vec<StoredPolicySet>>);

#[cfg(test)]
impl MemoryPolicyStore {
    fn versions_now(&self) -> std::sync::MutexGuard<'_, Vec<StoredPolicySet>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
impl PolicyStore for MemoryPolicyStore {
    fn latest(&self) -> BoxFuture<'_, Result<Option<StoredPolicySet>, PolicyError>> {
        let latest = self.versions_now().last().cloned();
        Box::pin(async move { Ok(latest) })
    }

    fn insert_version(
        &self,
        text: String,
        updated_by: String,
        expected_version: Option<u64>,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<PolicyVersion, PolicyError>> {
        let mut versions = self.versions_now();
        let latest = versions.len() as u64;
        let outcome = match expected_version {
            Some(expected) if expected != latest => {
                Err(PolicyError::VersionConflict { expected, actual: latest })
            }
            _ => {
                let info = PolicyVersion { version: latest + 1, updated_at: now, updated_by };
                versions.push(StoredPolicySet { info: info.clone(), text });
                Ok(info)
            }
        };
        Box::pin(async move { outcome })
    }

    fn versions(&self) -> BoxFuture<'_, Result<Vec<PolicyVersion>, PolicyError>> {
        let versions = self.versions_now().iter().rev().map(|v| v.info.clone()).collect();
        Box::pin(async move { Ok(versions) })
    }

    fn version(&self, version: u64) -> BoxFuture<'_, Result<StoredPolicySet, PolicyError>> {
        let found = self.versions_now().iter().find(|v| v.info.version == version).cloned();
        Box::pin(async move { found.ok_or(PolicyError::NotFound(version)) })
    }
}
