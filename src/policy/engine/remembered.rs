//! Decisions remembered under one policy set.
//!
//! A decision without a context is a function of the policy set, the action, the resource
//! and the subject (every attribute a policy can read about it: id, role, name, fingerprint,
//! status and granted scopes). The engine keeps the decisions it made under the set in force
//! beside that set, so a repeated request (the same device reading the same scope) costs a
//! lookup instead of a Cedar evaluation. Installing another set starts with an empty memory:
//! the memory lives and dies with its set. Bounded: when full it starts over.
//!
//! A lookup allocates nothing: entries are found by a keyed hash of the request and compared
//! field by field with it, so a hash collision can only cost a miss.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::{Arc, PoisonError, RwLock};

use super::AuthzDecision;
use crate::identity::{DeviceId, DeviceStatus, Role};
use crate::policy::{Resource, Subject};
use crate::vault::Scope;

/// Most requests remembered per policy set.
const MAX_REMEMBERED: usize = 4096;
/// Most bytes of names, fingerprints, scopes and resources the remembered requests may hold
/// (a device's granted scopes are copied into each of its entries).
const MAX_REMEMBERED_BYTES: usize = 4 << 20;

/// A remembered request and its decision.
struct Entry {
    action: usize,
    resource: Resource,
    subject: OwnedSubject,
    decision: Arc<AuthzDecision>,
}

/// A [`Subject`] with everything a policy can read about it, owned.
enum OwnedSubject {
    Anonymous,
    Device {
        id: DeviceId,
        role: Role,
        name: Box<str>,
        fingerprint: Box<str>,
        status: DeviceStatus,
        granted: Box<[Scope]>,
    },
}

impl OwnedSubject {
    fn of(subject: &Subject<'_>) -> Self {
        match *subject {
            Subject::Anonymous => OwnedSubject::Anonymous,
            Subject::Device { id, role, name, fingerprint, status, granted } => OwnedSubject::Device {
                id,
                role,
                name: name.into(),
                fingerprint: fingerprint.into(),
                status,
                granted: granted.into(),
            },
        }
    }

    fn is(&self, subject: &Subject<'_>) -> bool {
        match (self, subject) {
            (OwnedSubject::Anonymous, Subject::Anonymous) => true,
            (
                OwnedSubject::Device { id, role, name, fingerprint, status, granted },
                Subject::Device { id: i, role: r, name: n, fingerprint: f, status: s, granted: g },
            ) => id == i && role == r && **name == **n && **fingerprint == **f && status == s && **granted == **g,
            _ => false,
        }
    }
}

/// The decisions made under one policy set.
#[derive(Default)]
pub(super) struct Remembered {
    memory: RwLock<Memory>,
    keys: RandomState,
}

impl std::fmt::Debug for Remembered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.memory.read().map(|m| m.len).unwrap_or_default();
        f.debug_struct("Remembered").field("len", &len).finish()
    }
}

/// Entries by the keyed hash of their request.
#[derive(Default)]
struct Memory {
    by_hash: HashMap<u64, Vec<Entry>>,
    len: usize,
    /// What the entries' texts weigh ([`Entry::weight`]).
    bytes: usize,
}

impl Entry {
    /// The bytes of text the entry holds (its fixed size aside).
    fn weight(&self) -> usize {
        let resource = match &self.resource {
            Resource::Scope(scope) => scope.as_str().len(),
            _ => 32,
        };
        let subject = match &self.subject {
            OwnedSubject::Anonymous => 0,
            OwnedSubject::Device { name, fingerprint, granted, .. } => {
                name.len() + fingerprint.len() + granted.iter().map(|s| s.as_str().len() + 24).sum::<usize>()
            }
        };
        resource + subject
    }

    fn answers(&self, action: usize, resource: &Resource, subject: &Subject<'_>) -> bool {
        self.action == action && self.resource == *resource && self.subject.is(subject)
    }
}

impl Remembered {
    fn hash(&self, action: usize, resource: &Resource, subject: &Subject<'_>) -> u64 {
        let mut h = self.keys.build_hasher();
        action.hash(&mut h);
        resource.hash(&mut h);
        match *subject {
            Subject::Anonymous => 0u8.hash(&mut h),
            Subject::Device { id, role, name, fingerprint, status, granted } => {
                1u8.hash(&mut h);
                id.hash(&mut h);
                role.hash(&mut h);
                name.hash(&mut h);
                fingerprint.hash(&mut h);
                status.hash(&mut h);
                granted.hash(&mut h);
            }
        }
        h.finish()
    }

    /// The decision made for this request under this set, or `decide`'s (then remembered).
    pub(super) fn get_or_decide(
        &self,
        action: usize,
        resource: &Resource,
        subject: &Subject<'_>,
        decide: impl FnOnce() -> AuthzDecision,
    ) -> Arc<AuthzDecision> {
        let hash = self.hash(action, resource, subject);
        {
            let memory = self.memory.read().unwrap_or_else(PoisonError::into_inner);
            let bucket = memory.by_hash.get(&hash).map(Vec::as_slice).unwrap_or_default();
            if let Some(found) = bucket.iter().find(|e| e.answers(action, resource, subject)) {
                return Arc::clone(&found.decision);
            }
        }
        let decision = Arc::new(decide());
        let entry = Entry {
            action,
            resource: resource.clone(),
            subject: OwnedSubject::of(subject),
            decision: Arc::clone(&decision),
        };
        let weight = entry.weight();
        let mut memory = self.memory.write().unwrap_or_else(PoisonError::into_inner);
        // Full: start over (the old entries are freed after the lock is released).
        let forgotten = (memory.len >= MAX_REMEMBERED || memory.bytes + weight > MAX_REMEMBERED_BYTES)
            .then(|| std::mem::take(&mut *memory));
        let bucket = memory.by_hash.entry(hash).or_default();
        // Another thread may have decided the same request meanwhile.
        if !bucket.iter().any(|e| e.answers(action, resource, subject)) {
            bucket.push(entry);
            memory.len += 1;
            memory.bytes += weight;
        }
        drop(memory);
        drop(forgotten);
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{TestResult, device, engine, record, scope};
    use super::*;
    use crate::policy::actions::{GET_SECRET, PUT_SECRET};
    use crate::policy::{DEFAULT_POLICIES, PolicyEngine};

    fn remembered(engine: &PolicyEngine) -> usize {
        engine.current().remembered.memory.read().map(|m| m.len).unwrap_or_default()
    }

    /// The same request answers the same, from memory, as a fresh engine would.
    #[test]
    fn a_remembered_decision_is_the_decision() {
        let (warm, cold) = (engine(), engine());
        let phone = record(&device(Role::Device), DeviceStatus::Active, vec![scope("shared/team")]);
        let Subject::Device { id, .. } = Subject::device(&phone) else { panic!("a device") };
        let resources = [
            Resource::Node,
            Resource::Scope(scope("shared/team/sub")),
            Resource::Scope(scope("shared/other")),
            Resource::Scope(scope(&format!("devices/{id}"))),
        ];
        for round in 0..3 {
            for action in [GET_SECRET, PUT_SECRET] {
                for resource in &resources {
                    let fresh = cold.decide(&cold.current().compiled, &Subject::device(&phone), action, resource, None);
                    let got = warm.authorize_subject(&Subject::device(&phone), action, resource, None);
                    assert_eq!(
                        (got.allow, &got.determining_policies, &got.explanation),
                        (fresh.allow, &fresh.determining_policies, &fresh.explanation),
                        "round {round}, {action} on {resource}"
                    );
                }
            }
        }
        assert_eq!(remembered(&warm), 2 * resources.len(), "one entry per request, whatever the rounds");
        assert_eq!(remembered(&cold), 0);
    }

    /// Every attribute a policy can read is part of the request: another role, status or
    /// set of granted scopes is another request.
    #[test]
    fn another_attribute_is_another_request() {
        let engine = engine();
        let principal = device(Role::Device);
        let granted = record(&principal, DeviceStatus::Active, vec![scope("shared/team")]);
        let bare = record(&principal, DeviceStatus::Active, vec![]);
        let revoked = record(&principal, DeviceStatus::Revoked, vec![scope("shared/team")]);
        let resource = Resource::Scope(scope("shared/team"));
        assert!(engine.authorize_subject(&Subject::device(&granted), GET_SECRET, &resource, None).allow);
        assert!(!engine.authorize_subject(&Subject::device(&bare), GET_SECRET, &resource, None).allow);
        assert!(!engine.authorize_subject(&Subject::device(&revoked), GET_SECRET, &resource, None).allow);
        assert!(engine.authorize_subject(&Subject::device(&granted), GET_SECRET, &resource, None).allow);
        assert_eq!(remembered(&engine), 3);
    }

    /// Installing another set forgets what the previous one decided.
    #[test]
    fn another_policy_set_forgets() -> TestResult {
        let engine = engine();
        let phone = record(&device(Role::Device), DeviceStatus::Active, vec![scope("shared/team")]);
        let resource = Resource::Scope(scope("shared/team"));
        assert!(engine.authorize_subject(&Subject::device(&phone), GET_SECRET, &resource, None).allow);
        let forbid = format!(
            "{DEFAULT_POLICIES}\n@id(\"no-team\")\nforbid (principal, action, resource == Palyra::Scope::\"shared/team\");"
        );
        engine.install(&forbid, 2)?;
        let after = engine.authorize_subject(&Subject::device(&phone), GET_SECRET, &resource, None);
        assert!(!after.allow);
        assert_eq!(after.determining_policies, ["no-team"]);
        Ok(())
    }

    /// A device with many granted scopes cannot make the memory hold more than its byte bound.
    #[test]
    fn memory_is_bounded_in_bytes() {
        let engine = engine();
        let long = vec!["x".repeat(60); 7].join("/");
        let granted: Vec<Scope> = (0..64).map(|i| scope(&format!("{long}/g{i}"))).collect();
        let phone = record(&device(Role::Device), DeviceStatus::Active, granted);
        for i in 0..1000 {
            let resource = Resource::Scope(scope(&format!("flood/s{i}")));
            let _ = engine.authorize_subject(&Subject::device(&phone), GET_SECRET, &resource, None);
            let bytes = engine.current().remembered.memory.read().map(|m| m.bytes).unwrap_or_default();
            assert!(bytes <= MAX_REMEMBERED_BYTES, "{bytes}");
        }
        assert!(remembered(&engine) < 1000, "it started over at least once");
    }

    /// A flood of distinct requests never holds more than the bound.
    #[test]
    fn memory_is_bounded() {
        let engine = engine();
        let phone = record(&device(Role::Device), DeviceStatus::Active, vec![]);
        for i in 0..MAX_REMEMBERED + 100 {
            let resource = Resource::Scope(scope(&format!("flood/s{i}")));
            let _ = engine.authorize_subject(&Subject::device(&phone), GET_SECRET, &resource, None);
            assert!(remembered(&engine) <= MAX_REMEMBERED);
        }
        assert!(remembered(&engine) >= 100);
    }
}
