//! Cedar decision latency: the default policies, and the defaults plus 1,000 generated
//! per-device policies, printed as p50s with their ratio (targets: p50 ≤ 10 µs, 1,000
//! policies ≤ 5×). Also printed: 1,000 policies anchored at vault scopes (`resource in
//! Scope::"shared/team-<i>"`), and, for honesty, 1,000 policies whose conditions only a `when`
//! clause states, which the engine cannot slice away and Cedar evaluates one by one.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use palyra::identity::DeviceId;
use palyra::policy::PolicyEngine;
use support::policy::{GENERATED, Workload, anchored_policies, per_device_policies, unsliceable_policies};

mod support;

const SAMPLES: usize = 20_000;

/// The median of `SAMPLES` timed calls (after a warm-up), in nanoseconds.
fn p50(decide: impl FnMut() -> bool) -> f64 {
    support::policy::sample(SAMPLES, decide).value_at_quantile(0.5) as f64
}

fn decisions(c: &mut Criterion) {
    let ids: Vec<DeviceId> = (0..GENERATED).map(|_| DeviceId::generate()).collect();
    // A device that has a generated policy of its own, so its own set is evaluated too.
    let work = Workload::new(ids[GENERATED / 2]);

    let defaults = PolicyEngine::with_defaults().unwrap();
    let generated = PolicyEngine::with_policies(&per_device_policies(&ids), 2).unwrap();
    let anchored = PolicyEngine::with_policies(&anchored_policies(), 3).unwrap();
    let unsliceable = PolicyEngine::with_policies(&unsliceable_policies(), 4).unwrap();
    for engine in [&defaults, &generated, &anchored, &unsliceable] {
        assert!(work.gate(engine) && work.resource(engine), "the workload must be allowed");
    }

    // The headline figures: p50 by Instant, same process, as ratios.
    let d_gate = p50(|| work.gate(&defaults));
    let d_res = p50(|| work.resource(&defaults));
    let g_gate = p50(|| work.gate(&generated));
    let g_res = p50(|| work.resource(&generated));
    let a_res = p50(|| work.resource(&anchored));
    let u_res = p50(|| work.resource(&unsliceable));
    let us = |ns: f64| ns / 1000.0;
    println!(
        "cedar decision p50 (default policies): gate {:.2} µs, vault resource check {:.2} µs (target <= 10 µs: {})",
        us(d_gate),
        us(d_res),
        if d_res <= 10_000.0 { "met" } else { "MISSED" }
    );
    println!(
        "cedar decision p50 (+{GENERATED} per-device policies): gate {:.2} µs, vault resource check {:.2} µs, ratio {:.2}x (target <= 5x: {})",
        us(g_gate),
        us(g_res),
        g_res / d_res,
        if g_res / d_res <= 5.0 { "met" } else { "MISSED" }
    );
    println!(
        "cedar decision p50 (+{GENERATED} policies anchored at vault scopes): vault resource check {:.2} µs, ratio {:.2}x",
        us(a_res),
        a_res / d_res
    );
    println!(
        "cedar decision p50 (+{GENERATED} policies with everything in `when`, not sliceable): vault resource check {:.2} µs, ratio {:.2}x",
        us(u_res),
        u_res / d_res
    );

    let mut group = c.benchmark_group("cedar_decision");
    group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    group.bench_function("defaults/gate", |b| b.iter(|| work.gate(&defaults)));
    group.bench_function("defaults/vault_resource", |b| b.iter(|| work.resource(&defaults)));
    group.bench_function("per_device_1000/vault_resource", |b| b.iter(|| work.resource(&generated)));
    group.bench_function("anchored_1000/vault_resource", |b| b.iter(|| work.resource(&anchored)));
    group.bench_function("unsliceable_1000/vault_resource", |b| b.iter(|| work.resource(&unsliceable)));
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
