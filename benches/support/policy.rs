//! The Cedar workload of one vault request, and the generated policy sets.

use std::hint::black_box;
use std::time::Instant;

use hdrhistogram::Histogram;
use palyra::identity::{DeviceId, Principal, Role};
use palyra::policy::{DEFAULT_POLICIES, PolicyEngine, Resource, Subject, actions};
use palyra::vault::Scope;

/// Generated policies per set.
pub const GENERATED: usize = 1000;

/// One decision of each kind a request makes: the method gate, then the vault resource check
/// (the costlier one: principal, role, Node, a three-scope chain, two granted scopes).
pub struct Workload {
    principal: Principal,
    granted: Vec<Scope>,
    own: Resource,
}

impl Workload {
    pub fn new(id: DeviceId) -> Self {
        Workload {
            principal: Principal::Device { id, role: Role::Device, fingerprint: "ab".repeat(32) },
            granted: vec![Scope::parse("agents/alpha").unwrap(), Scope::parse("connectors/slack").unwrap()],
            own: Resource::Scope(Scope::parse(&format!("devices/{id}/apps/mail")).unwrap()),
        }
    }

    fn subject(&self) -> Subject<'_> {
        Subject::principal(&self.principal, &self.granted)
    }

    /// The method gate, evaluated by Cedar (never from the engine's remembered decisions).
    pub fn gate(&self, engine: &PolicyEngine) -> bool {
        engine.evaluate(&self.subject(), actions::GET_SECRET, &Resource::Node, None).allow
    }

    /// The vault resource check, evaluated by Cedar.
    pub fn resource(&self, engine: &PolicyEngine) -> bool {
        engine.evaluate(&self.subject(), actions::GET_SECRET, &self.own, None).allow
    }

    /// The vault resource check as a request makes it: remembered after the first time.
    #[allow(dead_code)] // e2e uses it; the policy bench does not
    pub fn resource_remembered(&self, engine: &PolicyEngine) -> bool {
        engine.authorize_subject(&self.subject(), actions::GET_SECRET, &self.own, None).allow
    }
}

/// The defaults plus one policy per generated device.
pub fn per_device_policies(ids: &[DeviceId]) -> String {
    let mut text = DEFAULT_POLICIES.to_owned();
    for (i, id) in ids.iter().enumerate() {
        text.push_str(&format!(
            "\n@id(\"device-{i}\")\npermit (principal == Palyra::Device::\"{id}\", action in Palyra::Action::\"vault.read\", resource in Palyra::Scope::\"shared/team-{i}\");\n"
        ));
    }
    text
}

/// The defaults plus policies anchored at one vault scope each.
pub fn anchored_policies() -> String {
    let mut text = DEFAULT_POLICIES.to_owned();
    for i in 0..GENERATED {
        text.push_str(&format!(
            "\n@id(\"team-{i}\")\npermit (principal is Palyra::Device, action in Palyra::Action::\"vault.read\", resource in Palyra::Scope::\"shared/team-{i}\")\nwhen {{ principal.name == \"member-{i}\" }};\n"
        ));
    }
    text
}

/// The defaults plus policies whose scope says nothing: every vault decision evaluates them.
pub fn unsliceable_policies() -> String {
    let mut text = DEFAULT_POLICIES.to_owned();
    for i in 0..GENERATED {
        text.push_str(&format!(
            "\n@id(\"team-{i}\")\npermit (principal, action, resource is Palyra::Scope)\nwhen {{ resource in Palyra::Scope::\"shared/team-{i}\" && principal is Palyra::Device && principal.name == \"member-{i}\" }};\n"
        ));
    }
    text
}

/// `samples` timed calls (after a warm-up) in a histogram of nanoseconds.
pub fn sample(samples: usize, mut decide: impl FnMut() -> bool) -> Histogram<u64> {
    for _ in 0..(samples / 10).max(100) {
        black_box(decide());
    }
    let mut h = Histogram::<u64>::new(3).unwrap();
    for _ in 0..samples {
        let start = Instant::now();
        black_box(decide());
        h.record(start.elapsed().as_nanos() as u64).unwrap();
    }
    h
}
