//! Policy text intake (`src/policy/engine.rs`, `diagnostics.rs`): the bounded pre-check, Cedar
//! parsing and strict validation that `ValidatePolicySet` / `UpdatePolicySet` run on text
//! from the wire. Checks: diagnostics point inside the text; what validates installs; and a
//! differential oracle for the engine's slicing: every decision of the installed set, over
//! every action and a matrix of principals and resources, equals the decision of the same
//! text evaluated whole.

#![no_main]

use std::cell::OnceCell;

use libfuzzer_sys::fuzz_target;
use palyra::auth::ProfileName;
use palyra::fuzzing::{policy_decide_unsliced, policy_unsliced};
use palyra::identity::{DeviceId, DeviceStatus, Principal, Role};
use palyra::policy::actions::{ALL, RENEWAL_PROOF};
use palyra::policy::{PolicyEngine, Resource, Severity, Subject};
use palyra::vault::Scope;

thread_local! {
    static ENGINE: OnceCell<PolicyEngine> = const { OnceCell::new() };
}

const A: &str = "01j9zq8x7c6v5b4n3m2k1j0h9a";
const B: &str = "01j9zq8x7c6v5b4n3m2k1j0h9b";

fn differential(engine: &PolicyEngine) {
    let unsliced = policy_unsliced(engine).expect("an installed text parses again");
    let (a, b) = (DeviceId::parse(A).expect("an id"), DeviceId::parse(B).expect("an id"));
    let principal = |id: DeviceId, role: Role| Principal::Device { id, role, fingerprint: "ab".repeat(32) };
    let (phone, node, admin) =
        (principal(a, Role::Device), principal(b, Role::Node), principal(b, Role::Admin));
    let granted = [Scope::parse("agents/alpha").expect("a scope")];
    let subjects = [
        Subject::Anonymous,
        Subject::principal(&phone, &granted),
        Subject::principal(&node, &[]),
        Subject::principal(&admin, &[]),
        Subject::Device {
            id: a,
            role: Role::Device,
            name: "phone",
            fingerprint: "x",
            status: DeviceStatus::Revoked,
            granted: &[],
        },
    ];
    let resources = [
        Resource::Node,
        Resource::Scope(a.own_scope()),
        Resource::Scope(Scope::parse("agents/alpha/x").expect("a scope")),
        Resource::Scope(Scope::parse("palyra/auth/github").expect("a scope")),
        Resource::Device(a),
        Resource::Profile(ProfileName::parse("github").expect("a name")),
    ];
    let proof = serde_json::json!({ RENEWAL_PROOF: true });
    for &action in ALL {
        for subject in &subjects {
            for resource in &resources {
                let context = action.ends_with("/RenewCertificate").then_some(&proof);
                let sliced = engine.authorize_subject(subject, action, resource, context);
                let whole = policy_decide_unsliced(engine, &unsliced, subject, action, resource, context);
                assert_eq!(*sliced, whole, "{action} {subject:?} {resource:?}");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    ENGINE.with(|cell| {
        let engine = cell.get_or_init(|| PolicyEngine::with_defaults().expect("the default policies"));
        let diagnostics = engine.validate(text);
        let lines = text.split('\n').count() as u32;
        for d in &diagnostics {
            assert!(!d.message.contains('\n'), "{d}");
            assert!(d.line <= lines, "line {} of {lines}: {d}", d.line);
            assert_eq!(d.line == 0, d.column == 0, "{d}");
            if d.line > 0 {
                let line = text.split('\n').nth(d.line as usize - 1).unwrap_or("");
                assert!(d.column as usize <= line.chars().count() + 1, "{d}");
            }
        }
        if diagnostics.iter().any(|d| d.severity == Severity::Error) {
            assert!(engine.install(text, 2).is_err(), "installed what does not validate");
            return;
        }
        let scratch = PolicyEngine::with_defaults().expect("the default policies");
        scratch.install(text, 2).expect("what validates installs");
        let admin = Principal::Device {
            id: DeviceId::parse(B).expect("an id"),
            role: Role::Admin,
            fingerprint: String::new(),
        };
        let _ = scratch.would_lock_out(text, &admin);
        differential(&scratch);
    });
});
