//! The engine: the schema parsed once, the active policy set swapped atomically, and the one
//! `authorize` every edge calls.
//!
//! A policy set is compiled once per install: parsed, given the ids of its `@id` annotations,
//! validated in strict mode, and sliced. Cedar evaluates every policy of the set it is given,
//! at a microsecond or two each, so the engine hands it only the policies whose scope can
//! match the request: one slice per (action, principal kind, resource kind), where a principal
//! kind is Anonymous or a device role; policies whose scope names one device (or Anonymous)
//! are kept per principal and evaluated only for it. Slicing only leaves out policies that
//! would evaluate to false without error, so decisions, determining policies and errors are
//! what Cedar gives for the whole set. Readers clone an `Arc` under a read lock held for a
//! pointer copy; an install swaps the pointer. No IO, no clock.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision, Entities, EntityTypeName, EntityUid, Policy, PolicyId,
    PolicySet, PrincipalConstraint, Request, ResourceConstraint, Response, Schema, ValidationMode, Validator,
};
use cedar_policy_core::ast;

use super::diagnostics::{Diagnostic, Severity, precheck};
use super::entities::{ANONYMOUS_ID, NODE_ID, PRINCIPAL_KINDS, RESOURCE_KINDS, Resource, Subject, Types};
use super::{DEFAULT_POLICIES, PolicyError, SCHEMA_TEXT, actions, quote};
use crate::identity::{DeviceId, DeviceStatus, Principal, Role};
use crate::vault::Scope;

/// Stack of the thread that parses and validates policy text (reserved, not committed).
const COMPILE_STACK_BYTES: usize = 64 << 20;
/// Most (policy, slice) memberships a compiled set may hold; past it, the set is evaluated
/// whole (correct, slower) instead of sliced, so that no policy text can blow up memory.
const MAX_SLICE_MEMBERSHIPS: usize = 50_000;

/// The outcome of one authorization request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzDecision {
    /// Whether the call may proceed.
    pub allow: bool,
    /// The policies that decided: the permits for an allow, the forbids for an explicit deny;
    /// empty for a default deny. Sorted.
    pub determining_policies: Vec<String>,
    /// Evaluation errors (those policies were skipped), or why the request itself is invalid.
    pub errors: Vec<String>,
    /// One line for people and audit records: `permitted by <ids>`, `forbidden by <ids>`, or
    /// `no policy permits` for a default deny.
    pub explanation: String,
}

impl AuthzDecision {
    fn invalid(explanation: String) -> Self {
        AuthzDecision {
            allow: false,
            determining_policies: Vec::new(),
            errors: vec![explanation.clone()],
            explanation,
        }
    }

    fn deny(explanation: String) -> Self {
        AuthzDecision { allow: false, determining_policies: Vec::new(), errors: Vec::new(), explanation }
    }

    fn default_deny() -> Self {
        AuthzDecision::deny("no policy permits".to_owned())
    }
}

/// One action of the schema.
#[derive(Debug)]
struct ActionInfo {
    /// Its position in [`actions::ALL`], which numbers the slices.
    index: usize,
    uid: EntityUid,
    /// Its entity, with its groups as (closed) ancestors.
    entity: ast::Entity,
    /// Which resource kinds the schema allows it (Node, Scope, Device, Profile).
    resources: [bool; RESOURCE_KINDS],
}

/// Whom a policy can apply to, from its principal scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PrincipalKey {
    Anonymous,
    Device(DeviceId),
}

/// The policies one (action, principal kind, resource kind) can meet.
#[derive(Debug, Default)]
struct Slice {
    /// Policies for any resource of the kind.
    general: PolicySet,
    /// Policies whose resource scope is `in` (or `==`) one vault scope, by that scope: they
    /// can only match a resource at or under it, so a request looks up its scope's prefixes.
    anchored: HashMap<String, PolicySet>,
}

/// How a compiled set is evaluated.
#[derive(Debug)]
enum Slices {
    /// One slice per (action, principal kind, resource kind).
    Sliced(Vec<Slice>),
    /// Everything in one slice (too many memberships to slice).
    Whole(Box<Slice>),
}

/// A compiled policy set.
#[derive(Debug)]
struct Compiled {
    slices: Slices,
    /// Policies whose scope names one principal (`principal == D`, `principal in D`,
    /// `principal is T in D`), by that principal.
    by_principal: HashMap<PrincipalKey, PolicySet>,
}

impl Compiled {
    fn empty() -> Self {
        Compiled { slices: Slices::Whole(Box::default()), by_principal: HashMap::new() }
    }

    fn slice(&self, action: usize, principal: usize, resource: usize) -> Option<&Slice> {
        match &self.slices {
            Slices::Sliced(slices) => {
                slices.get((action * PRINCIPAL_KINDS + principal) * RESOURCE_KINDS + resource)
            }
            Slices::Whole(slice) => Some(slice),
        }
    }
}

/// A compiled policy text, ready to install.
#[derive(Debug)]
pub(crate) struct Prepared {
    text: Arc<str>,
    compiled: Compiled,
}

/// A policy text compiled without slicing (see [`PolicyEngine::unsliced`]).
pub(crate) struct Unsliced(Compiled);

/// The policy set in force.
#[derive(Debug)]
struct Active {
    version: u64,
    text: Arc<str>,
    compiled: Compiled,
}

/// The authorization engine. Cheap to share (`Arc<PolicyEngine>`); every method takes `&self`.
pub struct PolicyEngine {
    schema: Schema,
    validator: Validator,
    types: Types,
    actions: HashMap<&'static str, ActionInfo>,
    /// The action hierarchy, for slicing `action in [...]` scopes.
    action_entities: Entities,
    authorizer: Authorizer,
    active: RwLock<Arc<Active>>,
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine").field("version", &self.active().0).finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// An engine with the default policies as version 1.
    pub fn with_defaults() -> Result<Self, PolicyError> {
        Self::with_policies(DEFAULT_POLICIES, 1)
    }

    /// An engine with the given policies as `version`.
    pub fn with_policies(policies_text: &str, version: u64) -> Result<Self, PolicyError> {
        let schema_err = |e: &dyn fmt::Display| PolicyError::Schema(e.to_string());
        let (schema, _warnings) = Schema::from_cedarschema_str(SCHEMA_TEXT).map_err(|e| schema_err(&e))?;
        let action_entities = schema.action_entities().map_err(|e| schema_err(&e))?;
        let types = Types::new()?;
        let mut actions = HashMap::with_capacity(actions::ALL.len());
        for (index, &id) in actions::ALL.iter().enumerate() {
            let uid = EntityUid::from_str(&format!("Palyra::Action::{}", cedar_string(id)))
                .map_err(|e| PolicyError::Schema(format!("action {id}: {e}")))?;
            let entity = action_entities
                .get(&uid)
                .map(|e| AsRef::<ast::Entity>::as_ref(e).clone())
                .ok_or_else(|| PolicyError::Schema(format!("action {id} is not in the schema")))?;
            let allowed: Vec<&EntityTypeName> =
                schema.resources_for_action(&uid).map(Iterator::collect).unwrap_or_default();
            let resources = [0, 1, 2, 3].map(|kind| allowed.contains(&types.resource_type(kind)));
            actions.insert(id, ActionInfo { index, uid, entity, resources });
        }
        let validator = Validator::new(schema.clone());
        let mut engine = PolicyEngine {
            schema,
            validator,
            types,
            actions,
            action_entities,
            authorizer: Authorizer::new(),
            active: RwLock::new(Arc::new(Active {
                version: 0,
                text: Arc::from(""),
                compiled: Compiled::empty(),
            })),
        };
        let compiled =
            engine.compile(policies_text).map_err(|diagnostics| PolicyError::Invalid { diagnostics })?.0;
        engine.active = RwLock::new(Arc::new(Active { version, text: Arc::from(policies_text), compiled }));
        Ok(engine)
    }

    /// The Cedar schema text (human-readable syntax).
    pub fn schema_text() -> &'static str {
        SCHEMA_TEXT
    }

    /// The version and text of the policy set in force.
    pub fn active(&self) -> (u64, Arc<str>) {
        let active = self.current();
        (active.version, active.text.clone())
    }

    fn current(&self) -> Arc<Active> {
        // The lock guards a pointer only: a panic elsewhere cannot leave it half-written.
        self.active.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Decides `action` on `resource` for a resolved principal with its granted scopes.
    /// `context` is the Cedar context as JSON (`None` = `{}`); see [`actions::RENEWAL_PROOF`].
    pub fn authorize(
        &self,
        principal: &Principal,
        granted: &[Scope],
        action: &str,
        resource: &Resource,
        context: Option<&serde_json::Value>,
    ) -> AuthzDecision {
        self.authorize_subject(&Subject::principal(principal, granted), action, resource, context)
    }

    /// Decides `action` on `resource` for a subject (e.g. a registry record, for what-if
    /// questions about revoked devices).
    pub fn authorize_subject(
        &self,
        subject: &Subject<'_>,
        action: &str,
        resource: &Resource,
        context: Option<&serde_json::Value>,
    ) -> AuthzDecision {
        let active = self.current();
        self.decide(&active.compiled, subject, action, resource, context)
    }

    fn decide(
        &self,
        compiled: &Compiled,
        subject: &Subject<'_>,
        action: &str,
        resource: &Resource,
        context: Option<&serde_json::Value>,
    ) -> AuthzDecision {
        let Some(info) = self.actions.get(action) else {
            return AuthzDecision::invalid(format!(
                "unknown action {}: not a method of this node, denied",
                quote(action)
            ));
        };
        // Defence in depth: the edges resolve only active devices, and no policy may let
        // another one in.
        if let Subject::Device { id, status: DeviceStatus::Revoked, .. } = subject {
            return AuthzDecision::deny(format!(
                "device {id} is revoked: only active devices are authorized"
            ));
        }
        if !info.resources[resource.kind()] {
            return AuthzDecision::invalid(format!(
                "invalid request: {action} does not apply to a {} resource",
                self.types.resource_type(resource.kind())
            ));
        }
        // An empty context fits every action's context type; a given one is checked.
        let context = match context {
            None => Context::empty(),
            Some(json) => {
                let checked = Context::from_json_value(json.clone(), Some((&self.schema, &info.uid)))
                    .map_err(|e| e.to_string())
                    .and_then(|c| c.validate(&self.schema, &info.uid).map(|()| c).map_err(|e| e.to_string()));
                match checked {
                    Ok(context) => context,
                    Err(e) => return AuthzDecision::invalid(format!("invalid context for {action}: {e}")),
                }
            }
        };
        // The policy sets that can apply: the slice, the slice's policies anchored at the
        // resource scope or one of its ancestors, the principal's own.
        let mut sets: Vec<&PolicySet> = Vec::with_capacity(3);
        if let Some(slice) = compiled.slice(info.index, subject.kind(), resource.kind()) {
            if !slice.general.is_empty() {
                sets.push(&slice.general);
            }
            if let (Resource::Scope(scope), false) = (resource, slice.anchored.is_empty()) {
                let text = scope.as_str();
                let prefixes = text.match_indices('/').map(|(at, _)| &text[..at]).chain([text]);
                sets.extend(prefixes.filter_map(|prefix| slice.anchored.get(prefix)));
            }
        }
        if !compiled.by_principal.is_empty() {
            let key = match subject {
                Subject::Anonymous => PrincipalKey::Anonymous,
                Subject::Device { id, .. } => PrincipalKey::Device(*id),
            };
            sets.extend(compiled.by_principal.get(&key));
        }
        if sets.is_empty() {
            return AuthzDecision::default_deny();
        }
        let principal = self.types.subject_uid(subject);
        let resource_uid = self.types.resource_uid(resource);
        let entities =
            match self.types.request_entities(subject, &principal, &info.entity, resource, &resource_uid) {
                Ok(entities) => entities,
                Err(e) => return AuthzDecision::invalid(format!("cannot build entities: {e}")),
            };
        // The schema checks above (action, resource kind, context) are the ones Request::new
        // would make with the schema, at a fraction of its cost.
        let request = match Request::new(principal, info.uid.clone(), resource_uid, context, None) {
            Ok(request) => request,
            Err(e) => return AuthzDecision::invalid(format!("invalid request: {e}")),
        };
        let responses: Vec<Response> =
            sets.into_iter().map(|set| self.authorizer.is_authorized(&request, set, &entities)).collect();
        decision_of(&responses)
    }

    /// Parses and validates `policies_text` against the schema (strict mode) without
    /// installing it. Empty means valid; warnings do not make it invalid.
    pub fn validate(&self, policies_text: &str) -> Vec<Diagnostic> {
        match self.compile(policies_text) {
            Ok((_, diagnostics)) | Err(diagnostics) => diagnostics,
        }
    }

    /// Validates `policies_text` and, when it has no error, makes it the policy set in force
    /// as `version`.
    pub fn install(&self, policies_text: &str, version: u64) -> Result<(), PolicyError> {
        let prepared = self.prepare(policies_text)?;
        self.install_prepared(prepared, version);
        Ok(())
    }

    /// Whether, under `new_text`, `admin` could no longer call UpdatePolicySet (its method
    /// gate, resource Node). Errors when `new_text` is invalid.
    pub fn would_lock_out(&self, new_text: &str, admin: &Principal) -> Result<bool, PolicyError> {
        Ok(self.locks_out(&self.prepare(new_text)?, admin))
    }

    /// Compiles a policy text for a later [`PolicyEngine::install_prepared`].
    pub(crate) fn prepare(&self, policies_text: &str) -> Result<Prepared, PolicyError> {
        let (compiled, _warnings) =
            self.compile(policies_text).map_err(|diagnostics| PolicyError::Invalid { diagnostics })?;
        Ok(Prepared { text: Arc::from(policies_text), compiled })
    }

    pub(crate) fn locks_out(&self, prepared: &Prepared, admin: &Principal) -> bool {
        let subject = Subject::principal(admin, &[]);
        !self.decide(&prepared.compiled, &subject, actions::UPDATE_POLICY_SET, &Resource::Node, None).allow
    }

    pub(crate) fn install_prepared(&self, prepared: Prepared, version: u64) {
        let next = Arc::new(Active { version, text: prepared.text, compiled: prepared.compiled });
        let previous =
            std::mem::replace(&mut *self.active.write().unwrap_or_else(PoisonError::into_inner), next);
        // Dropped after the lock is released (readers may still hold it).
        drop(previous);
    }

    /// Parses, re-ids, validates and slices a policy text. `Ok` carries the warnings.
    ///
    /// Runs on a thread of its own with a large stack: Cedar's parser and validator recurse
    /// along the nesting of the text, which [`precheck`] bounds but a 2 MiB async worker
    /// (or a debug build) might still not hold.
    fn compile(&self, text: &str) -> Result<(Compiled, Vec<Diagnostic>), Vec<Diagnostic>> {
        if let Some(refused) = precheck(text) {
            return Err(vec![refused]);
        }
        std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name("palyra-policy-compile".into())
                .stack_size(COMPILE_STACK_BYTES)
                .spawn_scoped(scope, || self.compile_bounded(text))
                .map_err(|e| vec![Diagnostic::error(format!("cannot start the policy compiler: {e}"))])?;
            worker.join().map_err(|_| vec![Diagnostic::error("the policy compiler failed")])?
        })
    }

    fn compile_bounded(&self, text: &str) -> Result<(Compiled, Vec<Diagnostic>), Vec<Diagnostic>> {
        let parsed = PolicySet::from_str(text).map_err(|errors| {
            errors.iter().map(|e| Diagnostic::from_cedar(Severity::Error, e, text)).collect::<Vec<_>>()
        })?;
        let mut diagnostics = Vec::new();
        let set = assign_ids(&parsed, text, &mut diagnostics);
        let result = self.validator.validate(&set, ValidationMode::Strict);
        for e in result.validation_errors() {
            diagnostics
                .push(Diagnostic::from_cedar(Severity::Error, e, text).in_policy(e.policy_id().to_string()));
        }
        for w in result.validation_warnings() {
            diagnostics.push(
                Diagnostic::from_cedar(Severity::Warning, w, text).in_policy(w.policy_id().to_string()),
            );
        }
        lint(&set, text, &mut diagnostics);
        diagnostics.sort_by_key(|d| (d.line == 0, d.line, d.column));
        if diagnostics.iter().any(|d| d.severity == Severity::Error) {
            return Err(diagnostics);
        }
        Ok((self.slice(&set), diagnostics))
    }

    fn slice(&self, set: &PolicySet) -> Compiled {
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

/// Combines the responses of disjoint policy subsets the way Cedar combines policies: any
/// satisfied forbid denies; otherwise any satisfied permit allows; otherwise default deny.
fn decision_of(responses: &[Response]) -> AuthzDecision {
    let mut forbids = Vec::new();
    let mut permits = Vec::new();
    let mut errors = Vec::new();
    for response in responses {
        let reasons = response.diagnostics().reason().map(PolicyId::to_string);
        match response.decision() {
            Decision::Allow => permits.extend(reasons),
            // A deny with reasons names the satisfied forbids; without, there were none.
            Decision::Deny => forbids.extend(reasons),
        }
        errors.extend(response.diagnostics().errors().map(|e| e.to_string()));
    }
    let (allow, mut determining, verb) = if !forbids.is_empty() {
        (false, forbids, "forbidden by ")
    } else if !permits.is_empty() {
        (true, permits, "permitted by ")
    } else {
        (false, Vec::new(), "")
    };
    determining.sort();
    errors.sort();
    let mut explanation = if determining.is_empty() {
        "no policy permits".to_owned()
    } else {
        format!("{verb}{}", determining.join(", "))
    };
    if !errors.is_empty() {
        explanation.push_str(&format!(" ({} policies skipped on evaluation errors)", errors.len()));
    }
    AuthzDecision { allow, determining_policies: determining, errors, explanation }
}

/// Gives every policy the id of its `@id("...")` annotation (or keeps `policy<N>`), in text
/// order; a duplicate id is an error diagnostic.
fn assign_ids(parsed: &PolicySet, text: &str, diagnostics: &mut Vec<Diagnostic>) -> PolicySet {
    let position =
        |id: &PolicyId| id.to_string().strip_prefix("policy").and_then(|n| n.parse::<usize>().ok());
    let mut policies: Vec<&Policy> = parsed.policies().collect();
    policies.sort_by_key(|p| position(p.id()));
    let mut templates: Vec<_> = parsed.templates().collect();
    templates.sort_by_key(|t| position(t.id()));

    let mut set = PolicySet::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut duplicate = |id: &str, diagnostics: &mut Vec<Diagnostic>| {
        let count = seen.entry(id.to_owned()).or_insert(0);
        *count += 1;
        if *count > 1 {
            let offset = nth_annotation(text, id, *count);
            diagnostics.push(
                Diagnostic::error(format!("duplicate policy id {}: every @id must be unique", quote(id)))
                    .in_policy(id)
                    .at(text, offset),
            );
            return true;
        }
        false
    };
    for policy in policies {
        let id = policy.annotation("id").map_or_else(|| policy.id().to_string(), str::to_owned);
        if duplicate(&id, diagnostics) {
            continue;
        }
        if let Err(e) = set.add(policy.new_id(PolicyId::new(&id))) {
            diagnostics.push(Diagnostic::error(e.to_string()).in_policy(id));
        }
    }
    for template in templates {
        let id = template.annotation("id").map_or_else(|| template.id().to_string(), str::to_owned);
        if duplicate(&id, diagnostics) {
            continue;
        }
        diagnostics.push(
            Diagnostic::warning("templates are never linked on this node: this template never applies")
                .in_policy(&id),
        );
        if let Err(e) = set.add_template(template.new_id(PolicyId::new(&id))) {
            diagnostics.push(Diagnostic::error(e.to_string()).in_policy(id));
        }
    }
    set
}

/// The offset of the `n`-th `@id` annotation (1-based) whose value is `id`.
fn nth_annotation(text: &str, id: &str, n: usize) -> Option<usize> {
    let needle = cedar_string(id);
    let mut found = 0;
    let mut from = 0;
    while let Some(at) = text[from..].find("@id") {
        let start = from + at;
        let rest = text[start + 3..].trim_start();
        let rest = rest.strip_prefix('(').map(str::trim_start).unwrap_or_default();
        if rest.starts_with(&needle) {
            found += 1;
            if found == n {
                return Some(start);
            }
        }
        from = start + 3;
    }
    None
}

/// Errors for entity literals, anywhere in a policy (scope, `when`, `unless`), that can never
/// equal an entity the engine builds: a device id not in its canonical spelling, a scope or a
/// profile name outside its grammar, another Node or Anonymous id, an unknown role. Cedar
/// compares uids as text, so such a literal silently never matches: a forbid written with
/// the upper-case spelling of a device id would be accepted and never apply.
fn lint(set: &PolicySet, text: &str, diagnostics: &mut Vec<Diagnostic>) {
    let mut policies: Vec<&Policy> = set.policies().collect();
    policies.sort_by_key(|p| p.id().to_string());
    for policy in policies {
        let ast: &ast::Policy = policy.as_ref();
        let condition = ast.condition();
        let mut reported = std::collections::HashSet::new();
        for expr in condition.subexpressions() {
            let ast::ExprKind::Lit(ast::Literal::EntityUID(uid)) = expr.expr_kind() else { continue };
            let uid = EntityUid::from(uid.as_ref().clone());
            let Some(problem) = literal_problem(&uid) else { continue };
            // Scope constraints carry the location of the whole constraint, conditions that
            // of the literal; either way the first character of the literal is found from
            // there (or, without a location, its first occurrence in the text).
            let quoted = cedar_string(uid.id().unescaped());
            let from = expr.source_loc().map(|loc| loc.span.offset()).filter(|&at| at <= text.len());
            let offset = from
                .and_then(|at| text.get(at..).and_then(|rest| rest.find(&quoted)).map(|found| at + found))
                .or(from)
                .or_else(|| text.find(&quoted));
            if !reported.insert((uid.to_string(), offset)) {
                continue;
            }
            diagnostics.push(
                Diagnostic::error(format!("{uid} never matches: {problem}"))
                    .in_policy(policy.id().to_string())
                    .at(text, offset),
            );
        }
    }
}

/// Why an entity literal can never equal an entity the engine builds, if it cannot.
fn literal_problem(uid: &EntityUid) -> Option<String> {
    let id = uid.id().unescaped();
    match uid.type_name().to_string().as_str() {
        "Palyra::Device" => match DeviceId::parse(id) {
            Ok(device) if device.to_string() == id => None,
            Ok(device) => Some(format!("device ids are lower case: write Palyra::Device::\"{device}\"")),
            Err(e) => Some(e.to_string()),
        },
        "Palyra::Scope" => match Scope::parse(id) {
            Ok(scope) if scope.as_str() == id => None,
            Ok(scope) => Some(format!("scopes are written Palyra::Scope::{}", cedar_string(scope.as_str()))),
            Err(e) => Some(e.to_string()),
        },
        "Palyra::Profile" => crate::auth::ProfileName::parse(id).err().map(|e| e.to_string()),
        "Palyra::Node" => (id != NODE_ID).then(|| format!("this node is Palyra::Node::\"{NODE_ID}\"")),
        "Palyra::Anonymous" => (id != ANONYMOUS_ID)
            .then(|| format!("the anonymous principal is Palyra::Anonymous::\"{ANONYMOUS_ID}\"")),
        "Palyra::Role" => (!matches!(id, "admin" | "device" | "node"))
            .then(|| "roles are Palyra::Role::\"admin\", \"device\" and \"node\"".to_owned()),
        _ => None,
    }
}

/// A Cedar string literal of `s`.
fn cedar_string(s: &str) -> String {
    format!("\"{}\"", s.escape_default())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;
    use crate::identity::{Device, DeviceStatus, Role};
    use crate::policy::actions::*;
    use crate::policy::{MAX_POLICY_TEXT_BYTES, principal_uid};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn engine() -> PolicyEngine {
        match PolicyEngine::with_defaults() {
            Ok(engine) => engine,
            Err(e) => panic!("the defaults must load: {e}"),
        }
    }

    fn device(role: Role) -> Principal {
        Principal::Device { id: DeviceId::generate(), role, fingerprint: "ab".repeat(32) }
    }

    fn scope(text: &str) -> Scope {
        match Scope::parse(text) {
            Ok(scope) => scope,
            Err(e) => panic!("{e}"),
        }
    }

    fn record(principal: &Principal, status: DeviceStatus, scopes: Vec<Scope>) -> Device {
        let Principal::Device { id, role, fingerprint } = principal else { panic!("a device") };
        Device {
            id: *id,
            name: "phone".into(),
            fingerprint: fingerprint.clone(),
            signing_public_key: [7; 32],
            role: *role,
            status,
            paired_at: std::time::UNIX_EPOCH,
            certificate_expires_at: std::time::UNIX_EPOCH,
            revoked_at: None,
            revoke_reason: None,
            scopes,
        }
    }

    #[test]
    fn schema_and_defaults_validate_in_strict_mode() {
        let engine = engine();
        assert_eq!(engine.validate(DEFAULT_POLICIES), Vec::<Diagnostic>::new(), "no errors, no warnings");
        assert_eq!(engine.active().0, 1);
        assert_eq!(&*engine.active().1, DEFAULT_POLICIES);
        let (_, warnings) = Schema::from_cedarschema_str(PolicyEngine::schema_text())
            .map_err(|e| e.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(warnings.count(), 0);
    }

    #[test]
    fn every_rpc_and_quic_method_is_an_action_of_the_schema() -> TestResult {
        let (schema, _) = Schema::from_cedarschema_str(SCHEMA_TEXT)?;
        let in_schema: BTreeSet<String> = schema.actions().map(|a| a.id().unescaped().to_owned()).collect();
        let mut expected: BTreeSet<String> = ALL.iter().map(|a| (*a).to_owned()).collect();
        expected.extend(GROUPS.iter().map(|g| (*g).to_owned()));
        assert_eq!(in_schema, expected);
        assert_eq!(ALL.len(), ALL.iter().collect::<BTreeSet<_>>().len(), "no duplicates");

        // Every `rpc` of every service in proto/ is an action.
        let mut from_proto = BTreeSet::new();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/palyra");
        let mut dirs = vec![root];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir)? {
                let path = entry?.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "proto") {
                    let text = std::fs::read_to_string(&path)?;
                    let mut package = String::new();
                    let mut service = String::new();
                    for line in text.lines().map(str::trim) {
                        if let Some(rest) = line.strip_prefix("package ") {
                            package = rest.trim_end_matches(';').to_owned();
                        } else if let Some(rest) = line.strip_prefix("service ") {
                            service = rest.split_whitespace().next().unwrap_or_default().to_owned();
                        } else if let Some(rest) = line.strip_prefix("rpc ") {
                            let method = rest.split('(').next().unwrap_or_default().trim();
                            from_proto.insert(format!("{package}.{service}/{method}"));
                        }
                    }
                }
            }
        }
        assert!(from_proto.len() >= 28, "{from_proto:?}");
        for method in &from_proto {
            assert!(ALL.contains(&method.as_str()), "{method} has no action");
        }
        for extra in
            [HEALTH_CHECK, HEALTH_WATCH, REFLECTION_V1, REFLECTION_V1ALPHA, NODE_HEALTH, NODE_STREAM_EVENTS]
        {
            assert!(!from_proto.contains(extra) && ALL.contains(&extra));
        }
        assert_eq!(ALL.len(), from_proto.len() + 6, "no action without a method");
        Ok(())
    }

    /// Who the matrix is checked for.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Who {
        Anonymous,
        Device,
        Node,
        Admin,
        Revoked,
    }
    const EVERYONE: [Who; 5] = [Who::Anonymous, Who::Device, Who::Node, Who::Admin, Who::Revoked];

    /// The method gate (resource Node) of DESIGN.md §3's matrix.
    fn gate_allows(action: &str, who: Who) -> bool {
        use Who::*;
        let public = [
            HEALTH_CHECK,
            HEALTH_WATCH,
            GET_NODE_IDENTITY,
            WHO_AM_I,
            GET_RENEWAL_CHALLENGE,
            START_PAIRING,
            FINISH_PAIRING,
            GET_PAIRING_STATUS,
        ];
        let vault = [PUT_SECRET, GET_SECRET, LIST_SECRETS, DELETE_SECRET, GET_SECRET_METADATA];
        match who {
            // Defence in depth: a revoked device gets nothing, not even what Anonymous gets.
            Revoked => false,
            Admin => true,
            _ if public.contains(&action) => true,
            Anonymous => action == RENEW_CERTIFICATE,
            // GetAccessToken: every device passes the gate; the Profile check decides.
            _ if [
                REFLECTION_V1,
                REFLECTION_V1ALPHA,
                GET_DEVICE,
                RENEW_CERTIFICATE,
                NODE_HEALTH,
                GET_ACCESS_TOKEN,
            ]
            .contains(&action) =>
            {
                true
            }
            Device => vault.contains(&action),
            Node => action == NODE_STREAM_EVENTS,
        }
    }

    struct Cast {
        engine: PolicyEngine,
        device: Principal,
        node: Principal,
        admin: Principal,
        revoked: Device,
        granted: Vec<Scope>,
    }

    impl Cast {
        fn new() -> Self {
            let device = device(Role::Device);
            let revoked_principal = device_like(&device);
            Cast {
                engine: engine(),
                revoked: record(&revoked_principal, DeviceStatus::Revoked, vec![scope("agents/alpha")]),
                device,
                node: self::device(Role::Node),
                admin: self::device(Role::Admin),
                granted: vec![scope("agents/alpha"), scope("connectors/slack")],
            }
        }

        fn decide(
            &self,
            who: Who,
            action: &str,
            resource: &Resource,
            context: Option<&serde_json::Value>,
        ) -> AuthzDecision {
            let e = &self.engine;
            match who {
                Who::Anonymous => e.authorize(&Principal::Anonymous, &[], action, resource, context),
                Who::Device => e.authorize(&self.device, &self.granted, action, resource, context),
                Who::Node => e.authorize(&self.node, &self.granted, action, resource, context),
                Who::Admin => e.authorize(&self.admin, &[], action, resource, context),
                Who::Revoked => {
                    e.authorize_subject(&Subject::device(&self.revoked), action, resource, context)
                }
            }
        }

        fn id(&self, who: Who) -> DeviceId {
            match who {
                Who::Device => self.device.device_id(),
                Who::Node => self.node.device_id(),
                Who::Admin => self.admin.device_id(),
                Who::Revoked => Some(self.revoked.id),
                Who::Anonymous => None,
            }
            .unwrap_or_else(DeviceId::generate)
        }
    }

    /// A revoked device with the same role as `p` but its own id.
    fn device_like(p: &Principal) -> Principal {
        match p {
            Principal::Device { role, .. } => device(*role),
            Principal::Anonymous => Principal::Anonymous,
        }
    }

    #[test]
    fn the_method_gate_implements_the_matrix() {
        let cast = Cast::new();
        for &action in ALL {
            for who in EVERYONE {
                let decision = cast.decide(who, action, &Resource::Node, None);
                assert_eq!(decision.allow, gate_allows(action, who), "{action} for {who:?}: {decision:?}");
                assert!(decision.errors.is_empty(), "{action} for {who:?}: {decision:?}");
                if decision.allow {
                    assert!(decision.explanation.starts_with("permitted by "), "{decision:?}");
                    assert!(!decision.determining_policies.is_empty());
                } else if who == Who::Revoked {
                    assert!(decision.explanation.contains("is revoked"), "{decision:?}");
                    assert!(decision.determining_policies.is_empty());
                } else {
                    assert_eq!(decision.explanation, "no policy permits");
                    assert!(decision.determining_policies.is_empty());
                }
            }
        }
    }

    #[test]
    fn devices_and_nodes_may_touch_only_themselves() {
        let cast = Cast::new();
        for action in [GET_DEVICE, RENEW_CERTIFICATE] {
            for who in EVERYONE {
                let own = cast.decide(who, action, &Resource::Device(cast.id(who)), None);
                let other = cast.decide(who, action, &Resource::Device(DeviceId::generate()), None);
                let (want_own, want_other) = match who {
                    Who::Admin => (true, true),
                    Who::Device | Who::Node => (true, false),
                    Who::Anonymous | Who::Revoked => (false, false),
                };
                assert_eq!(own.allow, want_own, "{action} {who:?} self: {own:?}");
                assert_eq!(other.allow, want_other, "{action} {who:?} other: {other:?}");
            }
        }
        let self_only = cast.decide(Who::Device, GET_DEVICE, &Resource::Device(cast.id(Who::Device)), None);
        assert_eq!(self_only.determining_policies, vec!["self-only".to_owned()]);
    }

    #[test]
    fn anonymous_renewal_needs_the_verified_proof_context() {
        let cast = Cast::new();
        let target = Resource::Device(DeviceId::generate());
        let renew = |context: Option<serde_json::Value>| {
            cast.decide(Who::Anonymous, RENEW_CERTIFICATE, &target, context.as_ref())
        };
        assert!(!renew(None).allow);
        assert!(!renew(Some(json!({}))).allow);
        assert!(!renew(Some(json!({ RENEWAL_PROOF: false }))).allow);
        let proven = renew(Some(json!({ RENEWAL_PROOF: true })));
        assert!(proven.allow, "{proven:?}");
        assert_eq!(proven.determining_policies, vec!["renewal-proof".to_owned()]);
        // The context does not make a device another device.
        let device =
            cast.decide(Who::Device, RENEW_CERTIFICATE, &target, Some(&json!({ RENEWAL_PROOF: true })));
        assert!(!device.allow);
        // Nor does it open other actions: the key is not in their context type.
        let other = cast.decide(Who::Anonymous, GET_DEVICE, &target, Some(&json!({ RENEWAL_PROOF: true })));
        assert!(!other.allow && !other.errors.is_empty(), "{other:?}");
        // A mistyped value is an invalid request, denied.
        let bad = renew(Some(json!({ RENEWAL_PROOF: "yes" })));
        assert!(!bad.allow && bad.explanation.starts_with("invalid "), "{bad:?}");
    }

    #[test]
    fn vault_resource_checks_follow_ownership_and_grants() {
        let cast = Cast::new();
        let own = |who: Who, rest: &str| scope(&format!("devices/{}{rest}", cast.id(who)));
        let other = DeviceId::generate();
        for action in [PUT_SECRET, GET_SECRET, LIST_SECRETS, DELETE_SECRET, GET_SECRET_METADATA] {
            let cases = [
                (own(Who::Device, ""), true),
                (own(Who::Device, "/apps/x"), true),
                (scope(&format!("devices/{other}")), false),
                (scope(&format!("devices/{other}/apps")), false),
                (scope("agents/alpha"), true),
                (scope("agents/alpha/deep/er"), true),
                (scope("agents/beta"), false),
                (scope("agents/alphabet"), false),
                (scope("agents"), false),
                (scope("devices"), false),
                (scope("connectors/slack"), true),
                (scope("connectors/github"), false),
            ];
            for (resource, device_allowed) in cases {
                let resource = Resource::Scope(resource);
                for who in EVERYONE {
                    let want = match who {
                        Who::Admin => true,
                        Who::Device => device_allowed,
                        Who::Node | Who::Anonymous | Who::Revoked => false,
                    };
                    let decision = cast.decide(who, action, &resource, None);
                    assert_eq!(decision.allow, want, "{action} {who:?} {resource:?}: {decision:?}");
                    assert!(decision.errors.is_empty(), "{decision:?}");
                }
            }
            // A node's own subtree is not open to it either (role node: vault denied).
            assert!(!cast.decide(Who::Node, action, &Resource::Scope(own(Who::Node, "")), None).allow);
            // The revoked device's own subtree and its grant: refused.
            for resource in [own(Who::Revoked, ""), scope("agents/alpha")] {
                let revoked = cast.decide(Who::Revoked, action, &Resource::Scope(resource), None);
                assert!(!revoked.allow && revoked.explanation.contains("is revoked"), "{revoked:?}");
            }
        }
        let mine = cast.decide(Who::Device, GET_SECRET, &Resource::Scope(own(Who::Device, "/a")), None);
        assert_eq!(mine.determining_policies, vec!["vault-device-own".to_owned()]);
        let granted = cast.decide(Who::Device, GET_SECRET, &Resource::Scope(scope("agents/alpha/x")), None);
        assert_eq!(granted.determining_policies, vec!["vault-device-granted".to_owned()]);
    }

    #[test]
    fn unknown_actions_and_misfit_requests_are_denied_with_a_reason() {
        let cast = Cast::new();
        for action in ["", "palyra.vault.v1.VaultService/StealSecret", "vault", "public", &"x".repeat(10_000)]
        {
            for who in EVERYONE {
                let d = cast.decide(who, action, &Resource::Node, None);
                assert!(!d.allow, "{action:?}");
                assert!(d.explanation.starts_with("unknown action"), "{d:?}");
                assert!(d.explanation.len() < 200);
            }
        }
        // A vault action on a device, an admin action on a scope: not what the schema allows.
        let d = cast.decide(Who::Admin, GET_SECRET, &Resource::Device(DeviceId::generate()), None);
        assert!(!d.allow && d.explanation.starts_with("invalid request"), "{d:?}");
        let d = cast.decide(Who::Admin, ROTATE_KEY, &Resource::Scope(scope("a")), None);
        assert!(!d.allow && !d.errors.is_empty(), "{d:?}");
        let d = cast.decide(Who::Admin, WHO_AM_I, &Resource::Node, Some(&json!([1, 2])));
        assert!(!d.allow && d.explanation.contains("invalid context"), "{d:?}");
    }

    #[test]
    fn diagnostics_locate_a_syntax_error() {
        let engine = engine();
        let text =
            "@id(\"ok\")\npermit (principal, action, resource);\n\npermit (principal, action resource);\n";
        let diagnostics = engine.validate(text);
        let first = diagnostics.first().cloned().unwrap_or_else(|| panic!("an error"));
        assert_eq!(first.severity, Severity::Error);
        assert_eq!((first.line, first.column), (4, 27), "{first}");
        assert_eq!(first.policy_id, None);
        assert!(!first.message.contains('\n'));
        assert!(matches!(engine.install(text, 2), Err(PolicyError::Invalid { .. })));
        assert_eq!(engine.active().0, 1, "an invalid set is not installed");
    }

    #[test]
    fn diagnostics_locate_a_schema_error() {
        let engine = engine();
        let text = "@id(\"fine\")\npermit (principal, action, resource);\n@id(\"typo\")\npermit (principal is Palyra::Device, action, resource)\nwhen { principal.nmae == \"x\" };\n";
        let diagnostics = engine.validate(text);
        let errors: Vec<&Diagnostic> = diagnostics.iter().filter(|d| d.severity == Severity::Error).collect();
        assert!(!errors.is_empty(), "{diagnostics:?}");
        let first = errors[0];
        assert_eq!(first.policy_id.as_deref(), Some("typo"));
        assert_eq!(first.line, 5, "{first}");
        assert!(first.column >= 8 && first.column <= 18, "{first}");
        assert!(first.message.contains("nmae"), "{first}");

        let unknown_action = "permit (principal, action == Palyra::Action::\"nope\", resource);";
        let d = engine.validate(unknown_action);
        assert!(d.iter().any(|d| d.severity == Severity::Error && d.line == 1 && d.column > 1), "{d:?}");
        let unknown_type = "\n  forbid (principal is Palyra::User, action, resource);";
        let d = engine.validate(unknown_type);
        assert!(d.iter().any(|d| d.severity == Severity::Error && d.line == 2 && d.column >= 24), "{d:?}");
    }

    #[test]
    fn policy_ids_come_from_annotations_and_must_be_unique() {
        let engine = engine();
        let text = "@id(\"a\") permit (principal, action, resource);\npermit (principal, action, resource);\n@id(\"a\") forbid (principal, action, resource);";
        let d = engine.validate(text);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].policy_id.as_deref(), Some("a"));
        assert_eq!((d[0].line, d[0].column), (3, 1));
        assert!(d[0].message.contains("duplicate policy id"));

        let ok = "permit (principal, action == Palyra::Action::\"node.health\", resource);\n@id(\"named\") permit (principal, action in Palyra::Action::\"public\", resource);";
        assert!(engine.install(ok, 2).is_ok());
        let d = engine.authorize(&Principal::Anonymous, &[], NODE_HEALTH, &Resource::Node, None);
        assert_eq!(d.determining_policies, vec!["policy0".to_owned()]);
        let d = engine.authorize(&Principal::Anonymous, &[], WHO_AM_I, &Resource::Node, None);
        assert_eq!(d.determining_policies, vec!["named".to_owned()]);
        assert_eq!(d.explanation, "permitted by named");
    }

    /// The position of the first occurrence of `needle` on its line, 1-based.
    fn position_of(text: &str, needle: &str, nth: usize) -> (u32, u32) {
        let offset =
            text.match_indices(needle).nth(nth).map(|(at, _)| at).unwrap_or_else(|| panic!("{needle}"));
        crate::policy::diagnostics::line_column(text, offset)
    }

    #[test]
    fn literals_that_can_never_match_are_errors_with_their_position() {
        let engine = engine();
        let id = DeviceId::generate();
        let (lower, upper) = (id.to_string(), id.to_string().to_uppercase());
        let overflow = format!("{}{}", char::from(lower.as_bytes()[0] + 8), &lower[1..]);
        // Every literal that compares as text and never equals what the engine builds: in a
        // principal or resource scope, an action list's neighbour, and `when`/`unless`.
        let cases = [
            (format!("forbid (principal == Palyra::Device::\"{upper}\", action, resource);"), upper.clone(), "lower case"),
            (format!("forbid (principal in Palyra::Device::\"{overflow}\", action, resource);"), overflow.clone(), "overflows"),
            (
                format!("forbid (principal, action, resource) when {{ principal == Palyra::Device::\"{upper}\" }};"),
                upper.clone(),
                "lower case",
            ),
            (
                format!("forbid (principal, action, resource is Palyra::Scope)\n  unless {{ resource has owner && resource.owner == Palyra::Device::\"{upper}\" }};"),
                upper.clone(),
                "lower case",
            ),
            (
                format!("forbid (principal, action, resource is Palyra::Scope) when {{ resource has owner && resource.owner == Palyra::Device::\"{upper}\" }};"),
                upper.clone(),
                "lower case",
            ),
            ("forbid (principal, action, resource == Palyra::Scope::\"Agents\");".to_owned(), "Agents".to_owned(), "invalid scope"),
            ("forbid (principal, action, resource in Palyra::Scope::\"palyra/\");".to_owned(), "palyra/".to_owned(), "invalid scope"),
            (
                "forbid (principal, action, resource) when { resource in [Palyra::Scope::\"a\", Palyra::Scope::\"a//b\"] };".to_owned(),
                "a//b".to_owned(),
                "invalid scope",
            ),
            ("forbid (principal, action, resource == Palyra::Node::\"remote\");".to_owned(), "remote".to_owned(), "Palyra::Node::\"local\""),
            ("forbid (principal == Palyra::Anonymous::\"bob\", action, resource);".to_owned(), "bob".to_owned(), "anonymous"),
            ("forbid (principal in Palyra::Role::\"Admin\", action, resource);".to_owned(), "Admin".to_owned(), "roles are"),
            ("forbid (principal, action, resource == Palyra::Profile::\"GitHub\");".to_owned(), "GitHub".to_owned(), "profile name"),
        ];
        for (policy, literal, want) in &cases {
            // A line of padding before, so that positions are checked past the first line.
            let text = format!("{DEFAULT_POLICIES}\n{policy}\n");
            let d = engine.validate(&text);
            let errors: Vec<&Diagnostic> = d.iter().filter(|d| d.severity == Severity::Error).collect();
            assert_eq!(errors.len(), 1, "{policy}: {d:?}");
            let e = errors[0];
            assert!(e.message.contains("never matches") && e.message.contains(want), "{policy}: {e}");
            let quoted = format!("\"{literal}\"");
            assert_eq!((e.line, e.column), position_of(&text, &quoted, 0), "{policy}: {e}");
            assert!(matches!(engine.install(&text, 2), Err(PolicyError::Invalid { .. })), "{policy}");
        }
        // The canonical spellings are fine, and the suggestion names it.
        let d =
            engine.validate(&format!("permit (principal == Palyra::Device::\"{upper}\", action, resource);"));
        assert!(d[0].message.contains(&format!("Palyra::Device::\"{lower}\"")), "{d:?}");
        let ok = format!(
            "permit (principal == Palyra::Device::\"{lower}\", action, resource in Palyra::Scope::\"devices/{lower}/x\") when {{ resource in Palyra::Scope::\"palyra\" || resource == Palyra::Profile::\"github\" }};"
        );
        assert!(engine.validate(&ok).is_empty(), "{:?}", engine.validate(&ok));
        assert_eq!(engine.active().0, 1);
    }

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
    fn install_swaps_atomically_and_readers_keep_their_snapshot() -> TestResult {
        let engine = engine();
        let before = engine.current();
        engine.install("permit (principal, action, resource);", 7)?;
        assert_eq!(engine.active().0, 7);
        assert_eq!(before.version, 1, "a reader's snapshot is unchanged");
        let d = engine.authorize(&Principal::Anonymous, &[], ROTATE_KEY, &Resource::Node, None);
        assert!(d.allow);
        engine.install(DEFAULT_POLICIES, 8)?;
        assert!(!engine.authorize(&Principal::Anonymous, &[], ROTATE_KEY, &Resource::Node, None).allow);
        Ok(())
    }

    #[test]
    fn concurrent_readers_see_one_set_or_the_other() -> TestResult {
        let engine = Arc::new(engine());
        let admin = device(Role::Admin);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let engine = engine.clone();
                let admin = admin.clone();
                s.spawn(move || {
                    for _ in 0..300 {
                        let d = engine.authorize(&admin, &[], LIST_DEVICES, &Resource::Node, None);
                        assert!(d.allow, "admin-all is in both sets: {d:?}");
                    }
                });
            }
            for v in 2..12 {
                let text = if v % 2 == 0 {
                    "@id(\"admin-all\") permit (principal, action, resource);"
                } else {
                    DEFAULT_POLICIES
                };
                assert!(engine.install(text, v).is_ok());
            }
        });
        assert_eq!(engine.active().0, 11);
        Ok(())
    }

    #[test]
    fn lockout_is_detected() -> TestResult {
        let engine = engine();
        let admin = device(Role::Admin);
        assert!(!engine.would_lock_out(DEFAULT_POLICIES, &admin)?);
        let without_admin = DEFAULT_POLICIES.replace(
            "@id(\"admin-all\")\npermit (principal is Palyra::Device in Palyra::Role::\"admin\", action, resource);",
            "",
        );
        assert_ne!(without_admin, DEFAULT_POLICIES);
        assert!(engine.would_lock_out(&without_admin, &admin)?);
        let forbid = format!(
            "{DEFAULT_POLICIES}\nforbid (principal, action == Palyra::Action::\"{UPDATE_POLICY_SET}\", resource);"
        );
        assert!(engine.would_lock_out(&forbid, &admin)?);
        // Forbidding only another admin is fine for this one.
        let other = device(Role::Admin);
        let forbid_other =
            format!("{DEFAULT_POLICIES}\nforbid (principal == {}, action, resource);", principal_uid(&other));
        assert!(!engine.would_lock_out(&forbid_other, &admin)?);
        assert!(engine.would_lock_out(&forbid_other, &other)?);
        assert!(engine.would_lock_out(DEFAULT_POLICIES, &device(Role::Device))?);
        assert!(matches!(engine.would_lock_out("permit (", &admin), Err(PolicyError::Invalid { .. })));
        assert_eq!(engine.active().0, 1, "a lockout check installs nothing");
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

    #[test]
    fn evaluation_errors_are_reported_and_the_policy_skipped() -> TestResult {
        let engine = engine();
        // `resource.owner` without `has`: valid only under a permissive reading; here it is
        // guarded by the schema, so provoke an error through an extension call instead.
        let text = format!(
            "{DEFAULT_POLICIES}\n@id(\"overflow\") permit (principal, action == Palyra::Action::\"{WHO_AM_I}\", resource) when {{ 9223372036854775807 + 1 > 0 }};"
        );
        engine.install(&text, 2)?;
        let d = engine.authorize(&Principal::Anonymous, &[], WHO_AM_I, &Resource::Node, None);
        assert!(d.allow, "the public policy still permits");
        assert_eq!(d.errors.len(), 1, "{d:?}");
        assert!(d.errors[0].contains("overflow"), "{d:?}");
        assert!(d.explanation.contains("skipped"), "{d:?}");
        Ok(())
    }

    #[test]
    fn oversized_policy_text_is_refused() {
        let engine = engine();
        let mut text = DEFAULT_POLICIES.to_owned();
        while text.len() <= MAX_POLICY_TEXT_BYTES {
            text.push_str("// padding padding padding padding padding padding padding padding\n");
        }
        let d = engine.validate(&text);
        assert_eq!(d.len(), 1);
        assert!(d[0].message.contains("limit is 1048576 bytes"), "{d:?}");
        assert!(matches!(engine.install(&text, 2), Err(PolicyError::Invalid { .. })));
        assert!(matches!(
            engine.would_lock_out(&text, &device(Role::Admin)),
            Err(PolicyError::Invalid { .. })
        ));
    }

    #[test]
    fn deeply_nested_text_gets_an_error_not_a_stack_overflow() {
        let engine = engine();
        // Run on a 2 MiB stack, like an async worker.
        let outcome = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let parens = format!(
                    "permit (principal, action, resource) when {{ {}true{} }};",
                    "(".repeat(10_000),
                    ")".repeat(10_000)
                );
                let ifs = format!(
                    "permit (principal, action, resource) when {{ {}true }};",
                    "if false then false else ".repeat(10_000)
                );
                let sums = format!(
                    "permit (principal, action, resource) when {{ {} == 0 }};",
                    vec!["1"; 100_000].join(" + ")
                );
                let mut found = Vec::new();
                for text in [parens, ifs, sums] {
                    let d = engine.validate(&text);
                    found.push(d.first().map(|d| (d.severity, d.line, d.message.clone())));
                    assert!(engine.install(&text, 2).is_err());
                }
                // Just inside the bounds: accepted, and deciding does not overflow either.
                let inside = format!(
                    "permit (principal, action, resource) when {{ {}true }};",
                    "if false then false else ".repeat(500)
                );
                let accepted = engine.install(&inside, 3).is_ok();
                let decision = engine.authorize(&Principal::Anonymous, &[], WHO_AM_I, &Resource::Node, None);
                (found, accepted, decision)
            })
            .map_err(|e| e.to_string())
            .and_then(|h| h.join().map_err(|_| "panicked".to_owned()));
        let (found, accepted, decision) = outcome.unwrap_or_else(|e| panic!("{e}"));
        for (d, want) in found.iter().zip(["brackets nest deeper", "operators", "operators"]) {
            let (severity, line, message) = d.clone().unwrap_or_else(|| panic!("an error for {want}"));
            assert_eq!((severity, line), (Severity::Error, 1));
            assert!(message.contains(want), "{message}");
        }
        assert!(accepted);
        // Whether Cedar evaluates 500 nested ifs or reports its recursion limit, it denies
        // nothing it should allow: WhoAmI has no other policy now.
        assert!(decision.allow || !decision.errors.is_empty(), "{decision:?}");
    }
}
