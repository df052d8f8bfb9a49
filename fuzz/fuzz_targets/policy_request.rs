//! What `PolicyService.Authorize` reads from the wire (`src/policy/entities.rs`): principal,
//! action and resource as Cedar entity uid text, and the context as JSON, decided by the
//! default engine. Fields are `palyra_fuzz::Fields`. Checks: an entity that parses re-parses
//! from its canonical text to itself; a decision never allows what the text did not name.

#![no_main]

use std::cell::OnceCell;

use libfuzzer_sys::fuzz_target;
use palyra::identity::{DeviceStatus, Role};
use palyra::policy::{EntityRef, PolicyEngine, Resource, Subject, parse_action_ref, parse_entity_ref};
use palyra_fuzz::Fields;

thread_local! {
    static ENGINE: OnceCell<PolicyEngine> = const { OnceCell::new() };
}

fn canonical(entity: &EntityRef) -> String {
    match entity {
        EntityRef::Device(id) => format!("Palyra::Device::\"{id}\""),
        EntityRef::Anonymous => "Palyra::Anonymous::\"anonymous\"".to_owned(),
        EntityRef::Node => "Palyra::Node::\"local\"".to_owned(),
        EntityRef::Scope(s) => format!("Palyra::Scope::\"{s}\""),
        EntityRef::Profile(p) => format!("Palyra::Profile::\"{p}\""),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut f = Fields::new(data);
    let (principal, action, resource, context, role) = (f.text(), f.text(), f.text(), f.bytes(), f.u64());
    let principal = parse_entity_ref(&principal);
    let resource = parse_entity_ref(&resource);
    for entity in [&principal, &resource].into_iter().flatten() {
        assert_eq!(parse_entity_ref(&canonical(entity)).as_ref().ok(), Some(entity));
    }
    let action = parse_action_ref(&action);
    if let Ok(id) = action {
        assert_eq!(parse_action_ref(&format!("Palyra::Action::{id:?}")).ok(), Some(id));
    }
    let context: Option<serde_json::Value> = serde_json::from_slice(context).ok();
    let (Ok(principal), Ok(action), Ok(resource)) = (principal, action, resource) else { return };
    let role = [Role::Admin, Role::Device, Role::Node][(role % 3) as usize];
    let subject = match &principal {
        EntityRef::Device(id) => Subject::Device {
            id: *id,
            role,
            name: "",
            fingerprint: "",
            status: if role == Role::Admin { DeviceStatus::Active } else { DeviceStatus::Revoked },
            granted: &[],
        },
        _ => Subject::Anonymous,
    };
    let resource = match resource {
        EntityRef::Device(id) => Resource::Device(id),
        EntityRef::Scope(s) => Resource::Scope(s),
        EntityRef::Profile(p) => Resource::Profile(p),
        EntityRef::Node | EntityRef::Anonymous => Resource::Node,
    };
    ENGINE.with(|cell| {
        let engine = cell.get_or_init(|| PolicyEngine::with_defaults().expect("the default policies"));
        let decision = engine.authorize_subject(&subject, action, &resource, context.as_ref());
        if let Subject::Device { status: DeviceStatus::Revoked, .. } = subject {
            assert!(!decision.allow, "a revoked device was allowed {action}");
        }
        if decision.allow {
            assert!(!decision.determining_policies.is_empty());
        }
        assert!(!decision.explanation.is_empty());
    });
});
