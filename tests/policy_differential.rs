//! The engine's slicing against Cedar itself: random policy sets and random requests, decided
//! by the sliced `PolicyEngine` and by a plain `cedar_policy::Authorizer` over the whole set
//! with the same entities built through Cedar's public API (closure computed by Cedar). They
//! must agree on the decision, the determining policies and the evaluation errors.
//!
//! The sets mix every scope constraint form (`==`, `in E`, `in [..]`, `is`, `is .. in`,
//! unconstrained) for principal, action and resource; permits and forbids; the schema's action
//! groups; roles; per-device policies; nested scopes, the reserved `palyra/` prefix, scopes
//! that share a text prefix without being nested (`palyraz`, `agents-x`), and a `devices/`
//! segment that is an overflowing spelling of a device id (it owns nothing); Anonymous; and
//! `when`/`unless` conditions that slicing cannot see through (action, role and resource
//! tests in the condition, an evaluation error). Half of the sets include the defaults.
//!
//! Cases: `PROPTEST_CASES` (default 32); each case decides every action for a few principals
//! and resources. Prints what it covered (`--nocapture`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityUid, PolicyId, PolicySet, Request,
    RestrictedExpression, Schema,
};
use palyra::identity::{DeviceId, DeviceStatus, Role};
use palyra::policy::actions::{ALL, GROUPS, RENEW_CERTIFICATE, RENEWAL_PROOF};
use palyra::policy::{DEFAULT_POLICIES, PolicyEngine, PolicyError, Resource, SCHEMA_TEXT, Severity, Subject};
use palyra::vault::Scope;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Devices of the world (canonical ids; the last is the largest ULID).
const DEVICES: [&str; 3] =
    ["01j9zq8x7c6v5b4n3m2k1j0h9a", "01j9zq8x7c6v5b4n3m2k1j0h9b", "7zzzzzzzzzzzzzzzzzzzzzzzzz"];
/// The spelling of `DEVICES[0]` whose first character overflows 128 bits: a valid scope
/// segment, but no device's.
const ALIAS_OF_A: &str = "81j9zq8x7c6v5b4n3m2k1j0h9a";
const ROLES: [&str; 3] = ["admin", "device", "node"];
const PROFILES: [&str; 2] = ["github", "mail"];

fn scopes() -> Vec<String> {
    let [a, b, _] = DEVICES;
    [
        "agents".to_owned(),
        "agents/alpha".to_owned(),
        "agents/alpha/x".to_owned(),
        "agents/beta".to_owned(),
        "agents-x".to_owned(),
        "palyra".to_owned(),
        "palyra/auth".to_owned(),
        "palyra/auth/github".to_owned(),
        "palyraz".to_owned(),
        "devices".to_owned(),
        format!("devices/{a}"),
        format!("devices/{a}/apps"),
        format!("devices/{a}/apps/mail"),
        format!("devices/{b}"),
        format!("devices/{b}/shared"),
        format!("devices/{ALIAS_OF_A}"),
        format!("devices/{ALIAS_OF_A}/x"),
        "shared".to_owned(),
        "shared/team".to_owned(),
    ]
    .into()
}

fn device_lit(i: usize) -> String {
    format!("Palyra::Device::\"{}\"", DEVICES[i])
}
fn role_lit(r: &str) -> String {
    format!("Palyra::Role::\"{r}\"")
}
fn scope_lit(s: &str) -> String {
    format!("Palyra::Scope::\"{s}\"")
}
fn action_lit(a: &str) -> String {
    format!("Palyra::Action::\"{a}\"")
}
const ANON: &str = "Palyra::Anonymous::\"anonymous\"";
const NODE: &str = "Palyra::Node::\"local\"";

fn device_index() -> impl Strategy<Value = usize> {
    0..DEVICES.len()
}
fn role() -> impl Strategy<Value = &'static str> {
    select(ROLES.to_vec())
}
fn scope_text() -> impl Strategy<Value = String> {
    select(scopes())
}
/// The scopes of requests: the pool, device subtrees twice as likely.
fn request_scope() -> impl Strategy<Value = String> {
    let under_devices: Vec<String> = scopes().into_iter().filter(|s| s.starts_with("devices/")).collect();
    prop_oneof![select(scopes()), select(under_devices)]
}
fn concrete_action() -> impl Strategy<Value = &'static str> {
    select(ALL.to_vec())
}
fn any_action() -> impl Strategy<Value = &'static str> {
    prop_oneof![3 => concrete_action(), 2 => select(GROUPS.to_vec())]
}

fn principal_constraint() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("principal".to_owned()),
        1 => device_index().prop_map(|d| format!("principal == {}", device_lit(d))),
        1 => Just(format!("principal == {ANON}")),
        1 => device_index().prop_map(|d| format!("principal in {}", device_lit(d))),
        2 => role().prop_map(|r| format!("principal in {}", role_lit(r))),
        1 => Just(format!("principal in {ANON}")),
        2 => Just("principal is Palyra::Device".to_owned()),
        1 => Just("principal is Palyra::Anonymous".to_owned()),
        2 => role().prop_map(|r| format!("principal is Palyra::Device in {}", role_lit(r))),
        1 => device_index().prop_map(|d| format!("principal is Palyra::Device in {}", device_lit(d))),
        1 => Just(format!("principal is Palyra::Anonymous in {ANON}")),
    ]
}

fn action_constraint() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just("action".to_owned()),
        2 => concrete_action().prop_map(|a| format!("action == {}", action_lit(a))),
        2 => concrete_action().prop_map(|a| format!("action in {}", action_lit(a))),
        2 => select(GROUPS.to_vec()).prop_map(|g| format!("action in {}", action_lit(g))),
        3 => prop::collection::vec(any_action(), 1..=3).prop_map(|list| {
            let list: Vec<String> = list.into_iter().map(action_lit).collect();
            format!("action in [{}]", list.join(", "))
        }),
    ]
}

fn resource_constraint() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("resource".to_owned()),
        2 => scope_text().prop_map(|s| format!("resource == {}", scope_lit(&s))),
        3 => scope_text().prop_map(|s| format!("resource in {}", scope_lit(&s))),
        1 => Just("resource is Palyra::Scope".to_owned()),
        2 => scope_text().prop_map(|s| format!("resource is Palyra::Scope in {}", scope_lit(&s))),
        1 => Just("resource is Palyra::Node".to_owned()),
        1 => Just(format!("resource == {NODE}")),
        1 => Just(format!("resource in {NODE}")),
        1 => Just(format!("resource is Palyra::Node in {NODE}")),
        1 => Just("resource is Palyra::Device".to_owned()),
        1 => device_index().prop_map(|d| format!("resource == {}", device_lit(d))),
        1 => device_index().prop_map(|d| format!("resource in {}", device_lit(d))),
        1 => role().prop_map(|r| format!("resource in {}", role_lit(r))),
        1 => role().prop_map(|r| format!("resource is Palyra::Device in {}", role_lit(r))),
        1 => Just("resource is Palyra::Profile".to_owned()),
        1 => select(PROFILES.to_vec()).prop_map(|p| format!("resource == Palyra::Profile::\"{p}\"")),
    ]
}

fn condition() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just("true".to_owned()),
        1 => Just("principal is Palyra::Device && principal.name == \"phone\"".to_owned()),
        1 => Just("principal is Palyra::Device && principal.status == \"active\"".to_owned()),
        1 => Just(format!("principal is Palyra::Device && principal.fingerprint == \"{FINGERPRINT}\"")),
        3 => Just("resource is Palyra::Scope && resource has owner && resource.owner == principal".to_owned()),
        1 => device_index().prop_map(|d| format!(
            "resource is Palyra::Scope && resource has owner && resource.owner == {}",
            device_lit(d)
        )),
        1 => Just(
            "principal is Palyra::Device && resource is Palyra::Scope && resource in principal.granted"
                .to_owned()
        ),
        1 => Just("context has renewal_proof && context.renewal_proof".to_owned()),
        1 => Just("principal == resource".to_owned()),
        3 => Just("9223372036854775807 + 1 > 0".to_owned()),
        1 => any_action().prop_map(|a| format!("action in {}", action_lit(a))),
        1 => concrete_action().prop_map(|a| format!("action == {}", action_lit(a))),
        1 => role().prop_map(|r| format!("principal in {}", role_lit(r))),
        1 => scope_text().prop_map(|s| format!("resource in {}", scope_lit(&s))),
        1 => device_index().prop_map(|d| format!("principal == {}", device_lit(d))),
    ]
}

fn policy() -> impl Strategy<Value = String> {
    (
        prop::bool::weighted(0.35),
        principal_constraint(),
        action_constraint(),
        resource_constraint(),
        prop::collection::vec((any::<bool>(), condition()), 0..=2),
    )
        .prop_map(|(forbid, p, a, r, conditions)| {
            let effect = if forbid { "forbid" } else { "permit" };
            let mut text = format!("{effect} ({p}, {a}, {r})");
            for (when, c) in conditions {
                text.push_str(&format!(" {} {{ {c} }}", if when { "when" } else { "unless" }));
            }
            text.push(';');
            text
        })
}

/// A principal of a request.
#[derive(Debug, Clone)]
enum Who {
    Anonymous,
    Device { device: usize, role: Role, name: &'static str, revoked: bool, granted: Vec<String> },
}

fn who() -> impl Strategy<Value = Who> {
    let device = (
        // Mostly device A, whose subtree (and its overflowing alias) the scopes exercise.
        select(vec![0, 0, 1, 2]),
        select(vec![Role::Admin, Role::Device, Role::Node]),
        select(vec!["phone", ""]),
        prop::bool::weighted(0.1),
        prop::collection::vec(scope_text(), 0..=2),
    )
        .prop_map(|(device, role, name, revoked, granted)| Who::Device {
            device,
            role,
            name,
            revoked,
            granted,
        });
    prop_oneof![1 => Just(Who::Anonymous), 4 => device]
}

/// A resource of a request.
#[derive(Debug, Clone)]
enum What {
    Node,
    Scope(String),
    Device(usize),
    Profile(&'static str),
}

#[derive(Debug, Clone)]
struct Case {
    defaults: bool,
    policies: Vec<String>,
    principals: Vec<Who>,
    resources: Vec<What>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        prop::collection::vec(policy(), 1..=10),
        prop::collection::vec(who(), 1..=3),
        prop::collection::vec(request_scope(), 1..=3),
        prop::option::of(device_index()),
        prop::option::of(select(PROFILES.to_vec())),
    )
        .prop_map(|(defaults, policies, principals, scopes, device, profile)| {
            // The gate's resource, which every action takes; then the resource checks.
            let mut resources = vec![What::Node];
            resources.extend(scopes.into_iter().map(What::Scope));
            resources.extend(device.map(What::Device));
            resources.extend(profile.map(What::Profile));
            Case { defaults, policies, principals, resources }
        })
}

#[derive(Debug, Default)]
struct Stats {
    sets: usize,
    policies_kept: usize,
    policies_invalid: usize,
    decisions: usize,
    allows: usize,
    forbidden: usize,
    default_denies: usize,
    with_errors: usize,
    compile: std::time::Duration,
    entities: std::time::Duration,
    sliced: std::time::Duration,
    whole: std::time::Duration,
}

/// The reference: the whole set, Cedar's own entity store and closure, schema-checked requests.
struct Oracle {
    schema: Schema,
    authorizer: Authorizer,
}

fn uid(text: &str) -> EntityUid {
    EntityUid::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// The owner of a scope: the device whose id is the segment after `devices/`.
fn owner(scope: &str) -> Option<usize> {
    let segment = scope.strip_prefix("devices/")?.split('/').next()?;
    DEVICES.iter().position(|d| *d == segment)
}

impl Oracle {
    fn new() -> Self {
        let (schema, _) = Schema::from_cedarschema_str(SCHEMA_TEXT).unwrap();
        Oracle { schema, authorizer: Authorizer::new() }
    }

    fn principal_uid(who: &Who) -> EntityUid {
        match who {
            Who::Anonymous => uid(ANON),
            Who::Device { device, .. } => uid(&device_lit(*device)),
        }
    }

    fn resource_uid(what: &What) -> EntityUid {
        match what {
            What::Node => uid(NODE),
            What::Scope(s) => uid(&scope_lit(s)),
            What::Device(d) => uid(&device_lit(*d)),
            What::Profile(p) => uid(&format!("Palyra::Profile::\"{p}\"")),
        }
    }

    fn scope_entity(text: &str) -> Entity {
        let parents: HashSet<EntityUid> =
            text.match_indices('/').map(|(at, _)| uid(&scope_lit(&text[..at]))).collect();
        let attrs: HashMap<String, RestrictedExpression> = owner(text)
            .map(|d| ("owner".to_owned(), RestrictedExpression::new_entity_uid(uid(&device_lit(d)))))
            .into_iter()
            .collect();
        Entity::new(uid(&scope_lit(text)), attrs, parents).unwrap()
    }

    /// The entities of the node's model: the principal (attributes, role as parent) and its
    /// role, the resource (a scope with every enclosing scope as an entity of its own, each
    /// with its owner; the Node; a Profile), the actions from the schema. A device resource
    /// is known only as the principal (the schema's note: the engine does not look up other
    /// devices).
    fn entities(&self, who: &Who, what: &What) -> Entities {
        let mut out = Vec::new();
        match who {
            Who::Anonymous => out.push(Entity::new_no_attrs(uid(ANON), HashSet::new())),
            Who::Device { device, role, name, revoked, granted } => {
                let role = uid(&role_lit(role.as_str()));
                let attrs = HashMap::from([
                    ("name".to_owned(), RestrictedExpression::new_string((*name).to_owned())),
                    (
                        "status".to_owned(),
                        RestrictedExpression::new_string(
                            if *revoked { "revoked" } else { "active" }.to_owned(),
                        ),
                    ),
                    ("fingerprint".to_owned(), RestrictedExpression::new_string(FINGERPRINT.to_owned())),
                    (
                        "granted".to_owned(),
                        RestrictedExpression::new_set(
                            granted.iter().map(|s| RestrictedExpression::new_entity_uid(uid(&scope_lit(s)))),
                        ),
                    ),
                ]);
                out.push(
                    Entity::new(uid(&device_lit(*device)), attrs, HashSet::from([role.clone()])).unwrap(),
                );
                out.push(Entity::new_no_attrs(role, HashSet::new()));
            }
        }
        match what {
            What::Node | What::Profile(_) => {
                out.push(Entity::new_no_attrs(Self::resource_uid(what), HashSet::new()))
            }
            What::Scope(text) => {
                out.push(Self::scope_entity(text));
                for (at, _) in text.match_indices('/') {
                    out.push(Self::scope_entity(&text[..at]));
                }
            }
            What::Device(_) => {}
        }
        Entities::from_entities(out, Some(&self.schema)).unwrap_or_else(|e| panic!("{who:?} {what:?}: {e}"))
    }
}

const FINGERPRINT: &str = "abababababababababababababababababababababababababababababababab";

fn device_id(i: usize) -> DeviceId {
    DeviceId::parse_canonical(DEVICES[i]).unwrap()
}

fn resource_of(what: &What) -> Resource {
    match what {
        What::Node => Resource::Node,
        What::Scope(s) => Resource::Scope(Scope::parse(s).unwrap()),
        What::Device(d) => Resource::Device(device_id(*d)),
        What::Profile(p) => Resource::Profile(palyra::auth::ProfileName::parse(p).unwrap()),
    }
}

fn check(
    engine: &PolicyEngine,
    oracle: &Oracle,
    case: &Case,
    stats: &RefCell<Stats>,
) -> Result<(), TestCaseError> {
    // Install the set; drop the generated policies validation refuses (by the policy ids
    // of its errors) and try again. Strict validation is per policy, so the rest stays valid.
    let t0 = std::time::Instant::now();
    let mut kept: Vec<String> =
        case.policies.iter().enumerate().map(|(i, policy)| format!("@id(\"g{i}\")\n{policy}")).collect();
    let text = loop {
        let mut text = if case.defaults { format!("{DEFAULT_POLICIES}\n") } else { String::new() };
        text.push_str(&kept.join("\n"));
        if !case.defaults && kept.is_empty() {
            return Ok(());
        }
        let version = engine.active().0 + 1;
        match engine.install(&text, version) {
            Ok(()) => break text,
            Err(PolicyError::Invalid { diagnostics }) => {
                let refused: HashSet<String> = diagnostics
                    .iter()
                    .filter(|d| d.severity == Severity::Error)
                    .filter_map(|d| d.policy_id.clone())
                    .collect();
                let before = kept.len();
                kept.retain(|p| !refused.iter().any(|id| p.starts_with(&format!("@id(\"{id}\")\n"))));
                prop_assert!(kept.len() < before, "an error outside the generated policies: {diagnostics:?}");
                stats.borrow_mut().policies_invalid += before - kept.len();
            }
            Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
        }
    };
    stats.borrow_mut().policies_kept += kept.len();
    // The reference set: the same text, each policy under its @id (as the engine reports).
    let parsed = PolicySet::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}")))?;
    let mut whole = PolicySet::new();
    for policy in parsed.policies() {
        let id = policy.annotation("id").expect("every policy has an @id").to_owned();
        whole.add(policy.new_id(PolicyId::new(id))).unwrap();
    }
    stats.borrow_mut().sets += 1;
    stats.borrow_mut().compile += t0.elapsed();

    let proof = serde_json::json!({ RENEWAL_PROOF: true });
    for who in &case.principals {
        let granted: Vec<Scope> = match who {
            Who::Device { granted, .. } => granted.iter().map(|s| Scope::parse(s).unwrap()).collect(),
            Who::Anonymous => Vec::new(),
        };
        let subject = match who {
            Who::Anonymous => Subject::Anonymous,
            Who::Device { device, role, name, revoked, .. } => Subject::Device {
                id: device_id(*device),
                role: *role,
                name,
                fingerprint: FINGERPRINT,
                status: if *revoked { DeviceStatus::Revoked } else { DeviceStatus::Active },
                granted: &granted,
            },
        };
        for what in &case.resources {
            let resource = resource_of(what);
            let t1 = std::time::Instant::now();
            let entities = oracle.entities(who, what);
            stats.borrow_mut().entities += t1.elapsed();
            for &action in ALL {
                let action_uid = uid(&action_lit(action));
                let applies = oracle.schema.resources_for_action(&action_uid).is_some_and(|mut types| {
                    types.any(|t| *t == Oracle::resource_uid(what).type_name().clone())
                });
                if !applies {
                    continue;
                }
                let contexts: &[Option<&serde_json::Value>] =
                    if action == RENEW_CERTIFICATE { &[None, Some(&proof)] } else { &[None] };
                for &context in contexts {
                    let t2 = std::time::Instant::now();
                    let got = engine.authorize_subject(&subject, action, &resource, context);
                    let mut stats = stats.borrow_mut();
                    stats.sliced += t2.elapsed();
                    stats.decisions += 1;
                    let label = || {
                        format!("{action} for {who:?} on {what:?} with {context:?}\n--- policies:\n{text}")
                    };
                    if matches!(who, Who::Device { revoked: true, .. }) {
                        // The engine refuses a revoked device before any policy.
                        prop_assert!(
                            !got.allow && got.determining_policies.is_empty(),
                            "{got:?}: {}",
                            label()
                        );
                        continue;
                    }
                    let cedar_context = match context {
                        None => Context::empty(),
                        Some(json) => {
                            Context::from_json_value(json.clone(), Some((&oracle.schema, &action_uid)))
                                .unwrap()
                        }
                    };
                    let request = Request::new(
                        Oracle::principal_uid(who),
                        action_uid.clone(),
                        Oracle::resource_uid(what),
                        cedar_context,
                        Some(&oracle.schema),
                    )
                    .unwrap_or_else(|e| panic!("{e}: {}", label()));
                    let t3 = std::time::Instant::now();
                    let want = oracle.authorizer.is_authorized(&request, &whole, &entities);
                    stats.whole += t3.elapsed();
                    let mut reasons: Vec<String> =
                        want.diagnostics().reason().map(ToString::to_string).collect();
                    reasons.sort();
                    let mut errors: Vec<String> =
                        want.diagnostics().errors().map(ToString::to_string).collect();
                    errors.sort();
                    let want_allow = want.decision() == Decision::Allow;
                    prop_assert_eq!(got.allow, want_allow, "decision: {:?}: {}", got, label());
                    prop_assert_eq!(&got.determining_policies, &reasons, "determining: {}", label());
                    prop_assert_eq!(&got.errors, &errors, "errors: {}", label());
                    match (want_allow, reasons.is_empty()) {
                        (true, _) => stats.allows += 1,
                        (false, false) => stats.forbidden += 1,
                        (false, true) => stats.default_denies += 1,
                    }
                    stats.with_errors += usize::from(!errors.is_empty());
                }
            }
        }
    }
    Ok(())
}

#[test]
fn sliced_engine_agrees_with_cedar_over_the_whole_set() {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let engine = PolicyEngine::with_defaults().unwrap();
    let oracle = Oracle::new();
    let stats = RefCell::new(Stats::default());
    let started = std::time::Instant::now();
    let result = runner.run(&case(), |case| check(&engine, &oracle, &case, &stats));
    let stats = stats.into_inner();
    eprintln!("{cases} cases in {:?}: {stats:?}", started.elapsed());
    if let Err(e) = result {
        panic!("{e}");
    }
    // Not vacuous: the sets validate, and every kind of outcome was compared.
    assert!(stats.policies_kept * 2 > stats.policies_invalid, "{stats:?}");
    assert!(stats.allows > 0 && stats.default_denies > 0, "{stats:?}");
}

/// The reported forbid, and the forms of one action named in a list or alone, decided by the
/// engine and by Cedar over the whole set, for every action of the vault.
#[test]
fn the_reported_forbid_applies() {
    let oracle = Oracle::new();
    let admin = Who::Device { device: 0, role: Role::Admin, name: "", revoked: false, granted: Vec::new() };
    let x = What::Scope("agents".to_owned());
    let get = "palyra.vault.v1.VaultService/GetSecret";
    let put = "palyra.vault.v1.VaultService/PutSecret";
    let forms = [
        format!("forbid (principal, action in [{}], resource == {});", action_lit(get), scope_lit("agents")),
        format!(
            "forbid (principal, action in [{}, {}], resource == {});",
            action_lit(get),
            action_lit(put),
            scope_lit("agents")
        ),
        format!("forbid (principal, action in {}, resource == {});", action_lit(get), scope_lit("agents")),
    ];
    for form in forms {
        let case = Case {
            defaults: true,
            policies: vec![form.clone()],
            principals: vec![admin.clone()],
            resources: vec![x.clone()],
        };
        let engine = PolicyEngine::with_defaults().unwrap();
        let stats = RefCell::new(Stats::default());
        check(&engine, &oracle, &case, &stats).unwrap_or_else(|e| panic!("{form}: {e}"));
        assert_eq!(stats.borrow().policies_kept, 1, "{form}");
        let d = engine.authorize_subject(
            &Subject::Device {
                id: device_id(0),
                role: Role::Admin,
                name: "",
                fingerprint: "",
                status: DeviceStatus::Active,
                granted: &[],
            },
            get,
            &resource_of(&x),
            None,
        );
        assert_eq!((d.allow, d.determining_policies.clone()), (false, vec!["g0".to_owned()]), "{form}");
    }
}
