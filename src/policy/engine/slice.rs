//! Slicing: a checked policy set cut into the policies each (action, principal kind,
//! resource kind) can meet, plus the policies that name one principal, kept per principal.
//! A policy is left out of a slice only when its scope certainly cannot match (it would
//! evaluate to false without error), so the decisions are those of the whole set; past
//! [`MAX_SLICE_MEMBERSHIPS`] the set is kept whole. No IO, no clock.

use std::collections::HashMap;
use std::str::FromStr;

use cedar_policy::{
    ActionConstraint, EntityTypeName, EntityUid, Policy, PolicySet, PrincipalConstraint, ResourceConstraint,
};

use super::compile::assign_ids;
use super::{ActionInfo, AuthzDecision, PolicyEngine, Unsliced};
use crate::identity::{DeviceId, Role};
use crate::policy::entities::{ANONYMOUS_ID, PRINCIPAL_KINDS, RESOURCE_KINDS, Resource, Subject};

/// Most (policy, slice) memberships a compiled set may hold; past it, the set is evaluated
/// whole (correct, slower) instead of sliced, so that no policy text can blow up memory.
const MAX_SLICE_MEMBERSHIPS: usize = 50_000;

/// Whom a policy can apply to, from its principal scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum PrincipalKey {
    Anonymous,
    Device(DeviceId),
}

/// The policies one (action, principal kind, resource kind) can meet.
#[derive(Debug, Default)]
pub(super) struct Slice {
    /// Policies for any resource of the kind.
    pub(super) general: PolicySet,
    /// Policies whose resource scope is `in` (or `==`) one vault scope, by that scope: they
    /// can only match a resource at or under it, so a request looks up its scope's prefixes.
    pub(super) anchored: HashMap<String, PolicySet>,
}

/// How a compiled set is evaluated.
#[derive(Debug)]
pub(super) enum Slices {
    /// One slice per (action, principal kind, resource kind).
    Sliced(Vec<Slice>),
    /// Everything in one slice (too many memberships to slice).
    Whole(Box<Slice>),
}

/// A compiled policy set.
#[derive(Debug)]
pub(super) struct Compiled {
    pub(super) slices: Slices,
    /// Policies whose scope names one principal (`principal == D`, `principal in D`,
    /// `principal is T in D`), by that principal.
    pub(super) by_principal: HashMap<PrincipalKey, PolicySet>,
}

impl Compiled {
    pub(super) fn empty() -> Self {
        Compiled { slices: Slices::Whole(Box::default()), by_principal: HashMap::new() }
    }

    pub(super) fn slice(&self, action: usize, principal: usize, resource: usize) -> Option<&Slice> {
        match &self.slices {
            Slices::Sliced(slices) => {
                slices.get((action * PRINCIPAL_KINDS + principal) * RESOURCE_KINDS + resource)
            }
            Slices::Whole(slice) => Some(slice),
        }
    }
}

impl PolicyEngine {
    pub(super) fn slice(&self, set: &PolicySet) -> Compiled {
        let mut by_principal: HashMap<PrincipalKey, PolicySet> = HashMap::new();
        let mut shared: Vec<(&Policy, ScopeShape)> = Vec::new();
        for policy in set.policies() {
            match principal_key(policy) {
                Applies::One(key) => add(by_principal.entry(key).or_default(), policy),
                Applies::Nobody => {}
                Applies::Many => shared.push((policy, ScopeShape::of(policy))),
            }
        }
        let mut actions: Vec<&ActionInfo> = self.actions.values().collect();
        actions.sort_by_key(|a| a.index);
        let keys = || {
            actions.iter().flat_map(|a| {
                (0..PRINCIPAL_KINDS).flat_map(move |p| (0..RESOURCE_KINDS).map(move |r| (*a, p, r)))
            })
        };
        let memberships: usize = keys()
            .map(|(a, p, r)| shared.iter().filter(|(_, shape)| self.can_match(shape, a, p, r)).count())
            .sum();
        let slices = if memberships > MAX_SLICE_MEMBERSHIPS {
            tracing::warn!(memberships, "policy set too large to slice; every decision evaluates all of it");
            let mut whole = Box::<Slice>::default();
            for (policy, _) in &shared {
                add(&mut whole.general, policy);
            }
            Slices::Whole(whole)
        } else {
            let slice_of = |(a, p, r): (&ActionInfo, usize, usize)| {
                let mut slice = Slice::default();
                for (policy, shape) in shared.iter().filter(|(_, shape)| self.can_match(shape, a, p, r)) {
                    match (r, shape.scope_anchor()) {
                        (1, Some(anchor)) => add(slice.anchored.entry(anchor).or_default(), policy),
                        _ => add(&mut slice.general, policy),
                    }
                }
                slice
            };
            Slices::Sliced(keys().map(slice_of).collect())
        };
        Compiled { slices, by_principal }
    }

    /// The policy set in force evaluated whole: no slices, no per-principal sets. The
    /// reference the slicing is checked against (the unit tests, the policy fuzz target).
    pub(crate) fn unsliced(&self) -> Option<Unsliced> {
        let text = self.current().text.clone();
        let parsed = PolicySet::from_str(&text).ok()?;
        let set = assign_ids(&parsed, &text, &mut Vec::new());
        let mut whole = Box::<Slice>::default();
        for policy in set.policies() {
            add(&mut whole.general, policy);
        }
        Some(Unsliced(Compiled { slices: Slices::Whole(whole), by_principal: HashMap::new() }))
    }

    /// Decides as [`Self::authorize_subject`] does, with `set` evaluated whole.
    pub(crate) fn decide_unsliced(
        &self,
        set: &Unsliced,
        subject: &Subject<'_>,
        action: &str,
        resource: &Resource,
        context: Option<&serde_json::Value>,
    ) -> AuthzDecision {
        self.decide(&set.0, subject, action, resource, context)
    }

    /// Whether a policy's scope can match a request of this action, principal kind and
    /// resource kind. `false` only when it certainly cannot (it would evaluate to false):
    /// principals are a device whose one parent is its role, or Anonymous without parents;
    /// a resource is the Node, a scope whose ancestors are scopes, or a device.
    fn can_match(&self, shape: &ScopeShape, action: &ActionInfo, principal: usize, resource: usize) -> bool {
        let principal_type = self.types.principal_type(principal);
        let role = match principal {
            1 => Some(Role::Admin),
            2 => Some(Role::Device),
            3 => Some(Role::Node),
            _ => None,
        };
        let principal_ok = match &shape.principal {
            PrincipalConstraint::Any => true,
            PrincipalConstraint::Is(ty) => ty == principal_type,
            PrincipalConstraint::Eq(uid) => uid.type_name() == principal_type,
            PrincipalConstraint::In(uid) => self.principal_in(uid, principal_type, role),
            PrincipalConstraint::IsIn(ty, uid) => {
                ty == principal_type && self.principal_in(uid, principal_type, role)
            }
        };
        let action_ok = match &shape.action {
            ActionConstraint::Any => true,
            ActionConstraint::Eq(uid) => *uid == action.uid,
            // `action in [A, G]` matches A itself and every member of G: `in` is reflexive,
            // `is_ancestor_of` is not.
            ActionConstraint::In(uids) => {
                uids.iter().any(|g| *g == action.uid || self.action_entities.is_ancestor_of(g, &action.uid))
            }
        };
        let resource_type = self.types.resource_type(resource);
        let resource_in = |uid: &EntityUid| {
            uid.type_name() == resource_type || (resource == 2 && uid.type_name() == self.types.role_type())
        };
        let resource_ok = match &shape.resource {
            ResourceConstraint::Any => true,
            ResourceConstraint::Is(ty) => ty == resource_type,
            ResourceConstraint::Eq(uid) => uid.type_name() == resource_type,
            ResourceConstraint::In(uid) => resource_in(uid),
            ResourceConstraint::IsIn(ty, uid) => ty == resource_type && resource_in(uid),
        };
        principal_ok && action_ok && resource_ok
    }

    /// Whether a principal of this type (and role) can be `in` `uid`: itself (same type) or
    /// its role.
    fn principal_in(&self, uid: &EntityUid, principal_type: &EntityTypeName, role: Option<Role>) -> bool {
        if uid.type_name() == self.types.role_type() {
            return role.is_some_and(|role| uid.id().unescaped() == role.as_str());
        }
        uid.type_name() == principal_type
    }
}

/// A policy's scope constraints, read once.
#[derive(Debug)]
struct ScopeShape {
    principal: PrincipalConstraint,
    action: ActionConstraint,
    resource: ResourceConstraint,
}

impl ScopeShape {
    fn of(policy: &Policy) -> Self {
        ScopeShape {
            principal: policy.principal_constraint(),
            action: policy.action_constraint(),
            resource: policy.resource_constraint(),
        }
    }

    /// The vault scope a `resource in S` / `resource == S` / `resource is T in S` constraint
    /// ties the policy to: it can only match that scope or one under it.
    fn scope_anchor(&self) -> Option<String> {
        let uid = match &self.resource {
            ResourceConstraint::In(uid) | ResourceConstraint::Eq(uid) | ResourceConstraint::IsIn(_, uid) => {
                uid
            }
            ResourceConstraint::Any | ResourceConstraint::Is(_) => return None,
        };
        (uid.type_name().to_string() == "Palyra::Scope").then(|| uid.id().unescaped().to_owned())
    }
}

/// Whom a policy's principal scope lets it apply to.
enum Applies {
    /// Exactly one principal.
    One(PrincipalKey),
    /// No principal the engine ever builds (e.g. a device id not in its canonical form, which
    /// validation refuses).
    Nobody,
    /// Possibly many.
    Many,
}

fn principal_key(policy: &Policy) -> Applies {
    let uid = match policy.principal_constraint() {
        PrincipalConstraint::Eq(uid) | PrincipalConstraint::In(uid) | PrincipalConstraint::IsIn(_, uid) => {
            uid
        }
        PrincipalConstraint::Any | PrincipalConstraint::Is(_) => return Applies::Many,
    };
    let id = uid.id().unescaped();
    match uid.type_name().to_string().as_str() {
        // Nothing is `in` a device (a device's only parents are roles) or in Anonymous.
        "Palyra::Device" => match DeviceId::parse_canonical(id) {
            Ok(device) => Applies::One(PrincipalKey::Device(device)),
            Err(_) => Applies::Nobody,
        },
        "Palyra::Anonymous" if id == ANONYMOUS_ID => Applies::One(PrincipalKey::Anonymous),
        "Palyra::Anonymous" => Applies::Nobody,
        _ => Applies::Many,
    }
}

/// Adds a policy of an already id-checked set to a subset (ids are unique, so it cannot
/// collide).
fn add(set: &mut PolicySet, policy: &Policy) {
    if let Err(e) = set.add(policy.clone()) {
        tracing::error!(error = %e, "policy slicing: cannot add a policy");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::tests::{TestResult, device, engine, record, scope};
    use super::*;
    use crate::identity::DeviceStatus;
    use crate::policy::actions::*;
    use crate::policy::diagnostics::Severity;
    use crate::policy::{DEFAULT_POLICIES, principal_uid};

    #[test]
    fn a_forbid_of_one_action_in_a_list_applies_to_that_action() -> TestResult {
        // The reported forbid: `action in [A]` names A itself; slicing used to leave it out of
        // A's slice (`in` was read as "strict ancestor"), so it never applied.
        let engine = engine();
        let text = format!(
            "{DEFAULT_POLICIES}\n@id(\"no-x\") forbid (principal, action in [Palyra::Action::\"{GET_SECRET}\"], resource == Palyra::Scope::\"x\");\n@id(\"no-y\") forbid (principal, action in [Palyra::Action::\"{GET_SECRET}\", Palyra::Action::\"{PUT_SECRET}\"], resource in Palyra::Scope::\"y\");\n@id(\"no-z\") forbid (principal, action in Palyra::Action::\"{LIST_SECRETS}\", resource);"
        );
        engine.install(&text, 2)?;
        let admin = device(Role::Admin);
        let cases = [
            (GET_SECRET, "x", Some("no-x")),
            (GET_SECRET, "x/a", None),
            (GET_SECRET, "y/a", Some("no-y")),
            (PUT_SECRET, "y", Some("no-y")),
            (PUT_SECRET, "x", None),
            (LIST_SECRETS, "q", Some("no-z")),
        ];
        for (action, at, forbidden) in cases {
            let d = engine.authorize(&admin, &[], action, &Resource::Scope(scope(at)), None);
            match forbidden {
                Some(id) => assert_eq!(
                    (d.allow, d.determining_policies.clone()),
                    (false, vec![id.to_owned()]),
                    "{action} {at}"
                ),
                None => assert!(d.allow, "{action} {at}: {d:?}"),
            }
        }
        // The gate too (resource Node): `action in [RotateKey]` forbids RotateKey.
        engine.install(
            &format!("{DEFAULT_POLICIES}\n@id(\"no-rotate\") forbid (principal, action in [Palyra::Action::\"{ROTATE_KEY}\"], resource);"),
            3,
        )?;
        let d = engine.authorize(&admin, &[], ROTATE_KEY, &Resource::Node, None);
        assert_eq!(d.determining_policies, vec!["no-rotate".to_owned()]);
        Ok(())
    }

    #[test]
    fn per_device_policies_apply_to_their_device_only() -> TestResult {
        let engine = engine();
        let (a, b) = (device(Role::Device), device(Role::Device));
        let text = format!(
            "{DEFAULT_POLICIES}
@id(\"a-shared\") permit (principal == {a}, action in Palyra::Action::\"vault.read\", resource in Palyra::Scope::\"shared\");
@id(\"a-no-write\") forbid (principal in {a}, action in Palyra::Action::\"vault.write\", resource);
@id(\"b-quic\") permit (principal is Palyra::Device in {b}, action == Palyra::Action::\"node.stream_events\", resource);",
            a = principal_uid(&a),
            b = principal_uid(&b),
        );
        engine.install(&text, 2)?;
        let shared = Resource::Scope(scope("shared/team"));
        let d = engine.authorize(&a, &[], GET_SECRET, &shared, None);
        assert_eq!((d.allow, d.explanation.as_str()), (true, "permitted by a-shared"));
        assert!(!engine.authorize(&b, &[], GET_SECRET, &shared, None).allow);
        // A forbid of the device's own set beats a permit of the general set.
        let own = Resource::Scope(a.device_id().map(|id| id.own_scope()).unwrap_or_else(|| scope("x")));
        let d = engine.authorize(&a, &[], PUT_SECRET, &own, None);
        assert_eq!((d.allow, d.explanation.as_str()), (false, "forbidden by a-no-write"));
        assert!(engine.authorize(&a, &[], GET_SECRET, &own, None).allow);
        let d = engine.authorize(&b, &[], NODE_STREAM_EVENTS, &Resource::Node, None);
        assert_eq!(d.determining_policies, vec!["b-quic".to_owned()]);
        assert!(!engine.authorize(&a, &[], NODE_STREAM_EVENTS, &Resource::Node, None).allow);
        // Several permits from both sets are all reported.
        let both = format!(
            "{text}\n@id(\"a-health\") permit (principal == {}, action, resource is Palyra::Node);",
            principal_uid(&a)
        );
        engine.install(&both, 3)?;
        let d = engine.authorize(&a, &[], NODE_HEALTH, &Resource::Node, None);
        assert_eq!(d.determining_policies, vec!["a-health".to_owned(), "quic-health".to_owned()]);
        Ok(())
    }

    #[test]
    fn slicing_never_changes_a_decision() {
        let engine = engine();
        let (a, b, node, admin) =
            (device(Role::Device), device(Role::Device), device(Role::Node), device(Role::Admin));
        let (ua, ub) = (principal_uid(&a), principal_uid(&b));
        let a_id = a.device_id().unwrap_or_else(DeviceId::generate);
        let b_id = b.device_id().unwrap_or_else(DeviceId::generate);
        let text = format!(
            r#"{DEFAULT_POLICIES}
@id("eq-device") permit (principal == {ua}, action, resource);
@id("in-device") forbid (principal in {ub}, action in Palyra::Action::"vault.write", resource);
@id("is-in-role") permit (principal is Palyra::Device in Palyra::Role::"node", action in Palyra::Action::"vault.read", resource in Palyra::Scope::"agents");
@id("anonymous") permit (principal == Palyra::Anonymous::"anonymous", action == Palyra::Action::"node.health", resource);
@id("resource-eq") permit (principal, action, resource == Palyra::Scope::"agents/alpha");
@id("resource-in-node") permit (principal is Palyra::Device, action, resource in Palyra::Node::"local");
@id("resource-is") forbid (principal, action in Palyra::Action::"self", resource is Palyra::Device) when {{ principal has name && principal.name == "phone" }};
@id("action-eq") permit (principal is Palyra::Anonymous, action == Palyra::Action::"{ROTATE_KEY}", resource);
@id("action-list") permit (principal in Palyra::Role::"device", action in [Palyra::Action::"vault.read", Palyra::Action::"quic"], resource in Palyra::Scope::"devices");
@id("resource-in-own") permit (principal, action, resource in Palyra::Scope::"devices/{b_id}/shared");
@id("errs") forbid (principal, action == Palyra::Action::"{WHO_AM_I}", resource) when {{ 9223372036854775807 + 1 > 0 }};
@id("self-list") forbid (principal, action in [Palyra::Action::"{GET_SECRET}"], resource == Palyra::Scope::"agents/alpha");
@id("self-list-2") permit (principal, action in [Palyra::Action::"{WHO_AM_I}", Palyra::Action::"quic"], resource);
@id("nobody") permit (principal == Palyra::Device::"{unknown}", action, resource);
@id("anywhere") permit (principal, action in Palyra::Action::"admin", resource) when {{ principal is Palyra::Device && principal.fingerprint == "x" }};
"#,
            unknown = DeviceId::generate(),
        );
        let diagnostics = engine.validate(&text);
        assert!(diagnostics.iter().all(|d| d.severity == Severity::Warning), "{diagnostics:?}");
        engine.install(&text, 2).unwrap_or_else(|e| panic!("{e}"));
        let sliced = engine.current();
        let whole = engine.unsliced().unwrap_or_else(|| panic!("the installed text parses")).0;
        let Slices::Sliced(slices) = &sliced.compiled.slices else { panic!("the set must be sliced") };
        assert!(slices.iter().any(|s| !s.anchored.is_empty()));
        assert!(!sliced.compiled.by_principal.is_empty());

        let revoked = record(&device(Role::Device), DeviceStatus::Revoked, vec![]);
        let phone = record(&a, DeviceStatus::Active, vec![scope("agents/alpha")]);
        let granted = [scope("agents/alpha")];
        let subjects = [
            Subject::Anonymous,
            Subject::device(&phone),
            Subject::principal(&b, &granted),
            Subject::principal(&node, &granted),
            Subject::principal(&admin, &[]),
            Subject::device(&revoked),
        ];
        let resources = [
            Resource::Node,
            Resource::Scope(a_id.own_scope()),
            Resource::Scope(scope(&format!("devices/{b_id}/shared/x"))),
            Resource::Scope(scope("agents/alpha/x")),
            Resource::Scope(scope("agents/alpha")),
            Resource::Scope(scope("agents")),
            Resource::Device(a_id),
            Resource::Device(b_id),
        ];
        let proof = json!({ RENEWAL_PROOF: true });
        let mut allowed = 0;
        for &action in ALL {
            for subject in &subjects {
                for resource in &resources {
                    for context in [None, Some(&proof)] {
                        let want = engine.decide(&whole, subject, action, resource, context);
                        let got = engine.decide(&sliced.compiled, subject, action, resource, context);
                        assert_eq!(got, want, "{action} {subject:?} {resource:?} {context:?}");
                        allowed += usize::from(got.allow);
                    }
                }
            }
        }
        assert!(allowed > 100, "the comparison covers allows too ({allowed})");
    }
}
