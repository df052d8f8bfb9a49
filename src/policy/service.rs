//! [`Policies`]: the policy service, over the engine and a [`PolicyStore`].
//!
//! Every change follows one order: the queued audit records (the change's own included) made
//! durable → validate → lockout check → compare-and-set insert → swap. Changes are serialized,
//! so the engine always holds the newest stored version. History is append-only: a rollback
//! or a reset stores the old text as a new version. The offline reset appends its own audit
//! record. The edges only translate (authorization happens at their gate).

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::Mutex;

use super::{
    DEFAULT_POLICIES, PolicyEngine, PolicyError, PolicyStore, PolicyVersion, StoredPolicySet, principal_uid,
};
use crate::audit::{Audit, AuditDecision, AuditEntry, AuditUnavailable, HeadMismatch};
use crate::identity::Principal;

/// `updated_by` of the version `palyra init` (or the first start) stores.
pub const UPDATED_BY_INIT: &str = "palyra init";
/// `updated_by` of a version stored by `palyra policy reset`.
pub const UPDATED_BY_RESET: &str = "palyra policy reset";
/// The principal of the audit record of an offline reset: whoever can run it on the node's
/// machine with access to the data dir and the root key.
const RESET_PRINCIPAL: &str = "local-operator";

/// Why the offline reset failed, or what it left undone.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResetError {
    /// The audit log failed its integrity check: the reset would go unrecorded, so it does
    /// not run.
    #[error("the audit log failed its integrity check: {0}; not resetting")]
    AuditIntegrity(HeadMismatch),
    /// Storing the defaults failed.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The defaults were stored as `version`, but their audit record was not.
    #[error("default policies installed as version {version}, but its audit record failed: {error}")]
    Unrecorded {
        /// The version stored.
        version: u64,
        /// Why the record failed.
        error: AuditUnavailable,
    },
}

/// The node's policy set: the engine in force and its stored history.
#[derive(Debug, Clone)]
pub struct Policies {
    engine: Arc<PolicyEngine>,
    store: Arc<dyn PolicyStore>,
    /// Changes wait for the queued audit records (see [`Policies::update`]).
    audit: Audit,
    /// Serializes changes, so installs happen in version order.
    changes: Arc<Mutex<()>>,
}

impl Policies {
    /// Loads the newest stored policy set into a new engine, storing the defaults as version 1
    /// on first start. A stored set that no longer validates is an error
    /// ([`PolicyError::StoredInvalid`], which names `palyra policy reset`), never a silent
    /// fallback.
    pub(crate) async fn load_or_init(store: Arc<dyn PolicyStore>, audit: Audit) -> Result<Self, PolicyError> {
        let stored = match store.latest().await? {
            Some(stored) => stored,
            None => {
                let init = store
                    .insert_version(
                        DEFAULT_POLICIES.to_owned(),
                        UPDATED_BY_INIT.to_owned(),
                        Some(0),
                        SystemTime::now(),
                    )
                    .await;
                match init {
                    // Another opener of the same database stored version 1 first: use that.
                    Ok(_) | Err(PolicyError::VersionConflict { .. }) => {}
                    Err(e) => return Err(e),
                }
                store.latest().await?.ok_or(PolicyError::NotFound(1))?
            }
        };
        let version = stored.info.version;
        let engine = tokio::task::spawn_blocking(move || PolicyEngine::with_policies(&stored.text, version))
            .await
            .map_err(|e| PolicyError::Task(e.to_string()))?
            .map_err(|e| match e {
                PolicyError::Invalid { diagnostics } => PolicyError::StoredInvalid { version, diagnostics },
                other => other,
            })?;
        Ok(Policies { engine: Arc::new(engine), store, audit, changes: Arc::new(Mutex::new(())) })
    }

    /// The engine every edge authorizes with.
    pub fn engine(&self) -> &Arc<PolicyEngine> {
        &self.engine
    }

    /// The policy set in force, with its version, time and author.
    pub async fn current(&self) -> Result<StoredPolicySet, PolicyError> {
        let (version, text) = self.engine.active();
        let info = self.store.version(version).await?.info;
        Ok(StoredPolicySet { info, text: text.to_string() })
    }

    /// Replaces the policy set with `text`: the audit records queued so far (the record of
    /// this call's authorization among them) made durable first, then validated against the
    /// schema, refused with [`PolicyError::Lockout`] when `by` could no longer call
    /// UpdatePolicySet, stored as the next version (when `expected_version` is set, only if it
    /// is current), then swapped in.
    pub async fn update(
        &self,
        text: &str,
        expected_version: Option<u64>,
        by: &Principal,
    ) -> Result<PolicyVersion, PolicyError> {
        self.audit.before_write()?;
        let _serial = self.changes.lock().await;
        self.change(text, expected_version, by).await
    }

    /// Makes the text of an earlier version current again, stored as a new version, with the
    /// same checks as [`Policies::update`].
    pub async fn rollback(&self, version: u64, by: &Principal) -> Result<PolicyVersion, PolicyError> {
        self.audit.before_write()?;
        let _serial = self.changes.lock().await;
        let old = self.store.version(version).await?;
        self.change(&old.text, None, by).await
    }

    async fn change(
        &self,
        text: &str,
        expected_version: Option<u64>,
        by: &Principal,
    ) -> Result<PolicyVersion, PolicyError> {
        // Compiling takes milliseconds on a thread of its own: keep it off the async workers.
        let engine = self.engine.clone();
        let (owned, admin) = (text.to_owned(), by.clone());
        let (prepared, locked_out) = tokio::task::spawn_blocking(move || {
            engine.prepare(&owned).map(|prepared| {
                let locked_out = engine.locks_out(&prepared, &admin);
                (prepared, locked_out)
            })
        })
        .await
        .map_err(|e| PolicyError::Task(e.to_string()))??;
        if locked_out {
            return Err(PolicyError::Lockout);
        }
        let stored = self
            .store
            .insert_version(text.to_owned(), principal_uid(by), expected_version, SystemTime::now())
            .await?;
        self.engine.install_prepared(prepared, stored.version);
        Ok(stored)
    }

    /// Parses and validates `text` against the schema (strict mode) without installing it;
    /// see [`PolicyEngine::validate`].
    pub async fn validate(&self, text: String) -> Result<Vec<super::Diagnostic>, PolicyError> {
        // Compiling policies takes milliseconds on a thread of its own: keep it off the async
        // workers.
        let engine = Arc::clone(&self.engine);
        tokio::task::spawn_blocking(move || engine.validate(&text))
            .await
            .map_err(|e| PolicyError::Task(e.to_string()))
    }

    /// Every stored version, newest first.
    pub async fn versions(&self) -> Result<Vec<PolicyVersion>, PolicyError> {
        self.store.versions().await
    }

    /// The offline break-glass behind `palyra policy reset`: stores the default policies as a
    /// new version, whatever is stored, without a lockout check. Run it while the node is
    /// stopped; the node loads it at its next start.
    pub(crate) async fn reset_to_defaults(store: &dyn PolicyStore) -> Result<PolicyVersion, PolicyError> {
        store
            .insert_version(DEFAULT_POLICIES.to_owned(), UPDATED_BY_RESET.to_owned(), None, SystemTime::now())
            .await
    }

    /// `palyra policy reset` on a stopped node: stores the defaults ([`Self::reset_to_defaults`])
    /// and appends an audit record of it through the same hash chain as every other decision.
    /// Refused before anything is stored when the audit log failed its integrity check: the
    /// reset runs only where it can be recorded.
    pub(crate) async fn reset_offline(store: &dyn PolicyStore, audit: &Audit) -> Result<u64, ResetError> {
        if let Some(problem) = audit.integrity() {
            return Err(ResetError::AuditIntegrity(problem));
        }
        let version = Self::reset_to_defaults(store).await?.version;
        let entry = AuditEntry {
            at: SystemTime::now(),
            principal: RESET_PRINCIPAL.to_owned(),
            action: UPDATED_BY_RESET.to_owned(),
            resource: "Node".to_owned(),
            decision: AuditDecision::Allow,
            reason: format!(
                "default policies installed as version {version} (offline, pid {})",
                std::process::id()
            ),
        };
        audit.record_committed(entry).await.map_err(|error| ResetError::Unrecorded { version, error })?;
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::MemoryAuditStore;
    use crate::identity::{DeviceId, Role};
    use crate::policy::actions::{LIST_DEVICES, NODE_HEALTH, UPDATE_POLICY_SET};
    use crate::policy::store::MemoryPolicyStore;
    use crate::policy::{Resource, Severity};

    type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

    fn admin() -> Principal {
        Principal::Device { id: DeviceId::generate(), role: Role::Admin, fingerprint: "ff".repeat(32) }
    }

    async fn load(store: &Arc<MemoryPolicyStore>) -> Result<Policies, PolicyError> {
        let key = |k: &[u8]| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k);
        let audit = Audit::start(Arc::new(MemoryAuditStore::default()), key(b"chain"), key(b"head"))?;
        Policies::load_or_init(store.clone(), audit).await
    }

    async fn fresh() -> TestResult<(Arc<MemoryPolicyStore>, Policies)> {
        let store = Arc::new(MemoryPolicyStore::default());
        let policies = load(&store).await?;
        Ok((store, policies))
    }

    /// The defaults with one more policy, so versions differ in text.
    fn with_extra(id: &str) -> String {
        format!(
            "{DEFAULT_POLICIES}\n@id(\"{id}\") permit (principal, action == Palyra::Action::\"node.health\", resource);\n"
        )
    }

    #[tokio::test]
    async fn first_start_stores_the_defaults_as_version_one() -> TestResult {
        let (store, policies) = fresh().await?;
        let current = policies.current().await?;
        assert_eq!(current.info.version, 1);
        assert_eq!(current.info.updated_by, UPDATED_BY_INIT);
        assert_eq!(current.text, DEFAULT_POLICIES);
        assert_eq!(policies.engine().active().0, 1);
        // A second start loads, it does not store again.
        let again = load(&store).await?;
        assert_eq!(again.engine().active().0, 1);
        assert_eq!(store.versions().await?.len(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn update_validates_checks_versions_and_swaps() -> TestResult {
        let (store, policies) = fresh().await?;
        let admin = admin();
        let v2 = policies.update(&with_extra("anyone-health"), Some(1), &admin).await?;
        assert_eq!(v2.version, 2);
        assert_eq!(v2.updated_by, crate::policy::principal_uid(&admin));
        assert_eq!(policies.engine().active().0, 2);
        let anonymous =
            policies.engine().authorize(&Principal::Anonymous, &[], NODE_HEALTH, &Resource::Node, None);
        assert_eq!(anonymous.determining_policies, vec!["anyone-health".to_owned()]);

        // Compare-and-set: version 1 is no longer current.
        let stale = policies.update(&with_extra("stale"), Some(1), &admin).await;
        assert!(matches!(stale, Err(PolicyError::VersionConflict { expected: 1, actual: 2 })), "{stale:?}");
        assert_eq!(policies.engine().active().0, 2);

        // Invalid text: diagnostics, nothing stored, nothing swapped.
        let invalid = policies.update("permit (principal, action, resource", None, &admin).await;
        match invalid {
            Err(PolicyError::Invalid { diagnostics }) => {
                assert!(diagnostics.iter().any(|d| d.severity == Severity::Error && d.line == 1));
            }
            other => panic!("expected invalid, got {other:?}"),
        }
        assert_eq!(store.versions().await?.len(), 2);
        assert_eq!(policies.engine().active().0, 2);
        Ok(())
    }

    #[tokio::test]
    async fn a_lockout_is_refused_and_nothing_changes() -> TestResult {
        let (store, policies) = fresh().await?;
        let admin = admin();
        let lockout = format!(
            "{DEFAULT_POLICIES}\n@id(\"freeze\") forbid (principal, action == Palyra::Action::\"{UPDATE_POLICY_SET}\", resource);"
        );
        assert!(matches!(policies.update(&lockout, None, &admin).await, Err(PolicyError::Lockout)));
        assert_eq!(store.versions().await?.len(), 1);
        assert!(policies.engine().authorize(&admin, &[], UPDATE_POLICY_SET, &Resource::Node, None).allow);
        Ok(())
    }

    #[tokio::test]
    async fn rollback_stores_the_old_text_as_a_new_version() -> TestResult {
        let (store, policies) = fresh().await?;
        let admin = admin();
        policies.update(&with_extra("two"), None, &admin).await?;
        policies.update(&with_extra("three"), None, &admin).await?;
        let back = policies.rollback(2, &admin).await?;
        assert_eq!(back.version, 4);
        assert_eq!(policies.engine().active(), (4, std::sync::Arc::from(with_extra("two").as_str())));
        let history: Vec<u64> = policies.versions().await?.iter().map(|v| v.version).collect();
        assert_eq!(history, vec![4, 3, 2, 1], "history is never rewritten");
        assert_eq!(store.version(3).await?.text, with_extra("three"));
        assert!(matches!(policies.rollback(99, &admin).await, Err(PolicyError::NotFound(99))));

        // A rollback to a text that would lock the caller out is refused like an update.
        let lockout = DEFAULT_POLICIES.replace(
            "principal is Palyra::Device in Palyra::Role::\"admin\"",
            "principal is Palyra::Anonymous",
        );
        store.insert_version(lockout, "test".into(), None, SystemTime::now()).await?;
        // (stored behind the engine's back: version 5; current engine still at 4)
        let refused = policies.rollback(5, &admin).await;
        assert!(matches!(refused, Err(PolicyError::Lockout)), "{refused:?}");
        Ok(())
    }

    #[tokio::test]
    async fn an_invalid_stored_set_fails_the_start_and_reset_recovers() -> TestResult {
        let (store, _policies) = fresh().await?;
        store
            .insert_version("permit (principal, action".into(), "tamper".into(), None, SystemTime::now())
            .await?;
        let err = load(&store).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("stored policy version 2 is invalid"), "{err}");
        assert!(err.contains("palyra policy reset"), "{err}");

        let reset = Policies::reset_to_defaults(store.as_ref()).await?;
        assert_eq!((reset.version, reset.updated_by.as_str()), (3, UPDATED_BY_RESET));
        let policies = load(&store).await?;
        assert_eq!(policies.engine().active().0, 3);
        assert!(policies.engine().authorize(&admin(), &[], LIST_DEVICES, &Resource::Node, None).allow);
        Ok(())
    }

    #[tokio::test]
    async fn concurrent_updates_install_in_version_order() -> TestResult {
        let (store, policies) = fresh().await?;
        let admin = admin();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let policies = policies.clone();
            let admin = admin.clone();
            tasks.push(tokio::spawn(async move {
                policies.update(&with_extra(&format!("p{i}")), None, &admin).await
            }));
        }
        for task in tasks {
            task.await??;
        }
        let latest = store.latest().await?.ok_or(PolicyError::NotFound(0))?;
        assert_eq!(latest.info.version, 9);
        assert_eq!(policies.engine().active(), (9, std::sync::Arc::from(latest.text.as_str())));
        Ok(())
    }
}
