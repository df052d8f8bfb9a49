//! Vault micro-benchmarks: envelope seal/open by value size, and durable `put` throughput with
//! 1 and 64 concurrent writers (group commit), printed with their ratio (target ≥ 10×).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use palyra::testkit;
use palyra::vault::envelope::{self, Binding};
use palyra::vault::{KeyHierarchy, RootKey, Scope, SecretKey, SecretValue, Vault};

fn envelopes(c: &mut Criterion) {
    let keys = KeyHierarchy::new(&RootKey::generate().unwrap());
    let kek = keys.vault_kek(1);
    let scope = Scope::parse("bench/envelope").unwrap();
    let key = SecretKey::parse("KEY").unwrap();
    let binding = Binding { scope: &scope, key: &key, version: 1 };
    let mut group = c.benchmark_group("envelope");
    for size in [64usize, 1024, 64 * 1024] {
        let value = vec![0x5a; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("seal", size), &value, |b, v| {
            b.iter(|| envelope::seal(&kek, 1, binding, v).unwrap())
        });
        let sealed = envelope::seal(&kek, 1, binding, &value).unwrap();
        group.bench_with_input(BenchmarkId::new("open", size), &sealed, |b, s| {
            b.iter(|| envelope::open(s, binding, |_| Some(&kek)).unwrap())
        });
    }
    group.finish();
}

/// `total` durable puts spread over `writers` concurrent tasks; returns the elapsed time.
async fn puts(vault: &Vault, writers: usize, total: usize, round: usize) -> Duration {
    let start = Instant::now();
    let per_writer = total / writers;
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let vault = vault.clone();
        tasks.push(tokio::spawn(async move {
            let scope = Scope::parse("bench/put").unwrap();
            for i in 0..per_writer {
                let key = SecretKey::parse(&format!("r{round}-w{w}-k{i}")).unwrap();
                vault.put(&scope, &key, SecretValue::new(vec![7; 256]), None).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

fn durable_puts(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = testkit::private_tempdir();
    let data = dir.path().join("node");
    let node = rt.block_on(testkit::open_core(&data));
    let vault = Arc::new(node.vault.clone());

    // The headline figure: one run of each, in the same process, as a ratio.
    let one = 200;
    let many = 4096;
    let t1 = rt.block_on(puts(&vault, 1, one, 0));
    let t64 = rt.block_on(puts(&vault, 64, many, 1));
    let (r1, r64) = (one as f64 / t1.as_secs_f64(), many as f64 / t64.as_secs_f64());
    println!(
        "durable put (synchronous=FULL): 1 writer {r1:.0}/s, 64 writers {r64:.0}/s, ratio {:.1}x (target >= 10x: {})",
        r64 / r1,
        if r64 / r1 >= 10.0 { "pass" } else { "miss" }
    );

    let mut group = c.benchmark_group("durable_put");
    group.sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_millis(500));
    let mut round = 2;
    for writers in [1usize, 64] {
        group.throughput(Throughput::Elements(writers as u64));
        group.bench_function(BenchmarkId::new("writers", writers), |b| {
            b.iter_custom(|iters| {
                round += 1;
                // Each iteration is one put per writer.
                rt.block_on(puts(&vault, writers, writers * iters as usize, round))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, envelopes, durable_puts);
criterion_main!(benches);
