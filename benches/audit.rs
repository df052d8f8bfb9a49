//! Verifying the audit log at scale: a full walk against an incremental one (from the last
//! verified checkpoint), and a prune.
//!
//! Builds a log of N records (default 10,000,000) straight into a fresh node's database,
//! chained and sealed with the node's own keys (`testkit::fill_audit_log`: the audit writer's
//! hashes, 100,000 records a transaction), opens the node (its start checks the sealed head),
//! then times:
//! - `VerifyAuditLog{full: true}`: every record re-hashed, every checkpoint checked;
//! - 1,000 more decisions recorded, then `VerifyAuditLog{}`: only what followed the last
//!   verified checkpoint;
//! - a prune to the newest N/2 records (signed checkpoints, 10,000 records a transaction).
//!
//! `cargo bench --bench audit` (10 M: ~3 GB of disk in a temp dir, minutes);
//! `cargo bench --bench audit -- 100000` or `PALYRA_BENCH_AUDIT_RECORDS=100000` for a smoke run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Instant, SystemTime};

use palyra::audit::{AuditDecision, AuditEntry, Retention};
use palyra::testkit::{self, NodeInternals};

fn records() -> u64 {
    let arg = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    arg.or_else(|| std::env::var("PALYRA_BENCH_AUDIT_RECORDS").ok())
        .and_then(|n| n.replace('_', "").parse().ok())
        .unwrap_or(10_000_000)
}

fn main() {
    let n = records();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        testkit::install_crypto_provider();
        let dir = testkit::private_tempdir();
        let data = dir.path().join("node");
        let fresh = testkit::open_node(&data).await;
        fresh.close_db();
        drop(fresh);

        let started = Instant::now();
        let last = testkit::fill_audit_log(&data, n).await;
        let fill = started.elapsed();
        let bytes = std::fs::metadata(data.join("palyra.db")).map(|m| m.len()).unwrap_or(0);
        println!(
            "audit log: {n} records built in {:.1} s ({:.0} records/s), last sequence {last}, palyra.db {:.2} GiB",
            fill.as_secs_f64(),
            n as f64 / fill.as_secs_f64(),
            bytes as f64 / f64::from(1u32 << 30)
        );

        let started = Instant::now();
        let node = testkit::open_node(&data).await;
        println!("node open (sealed head checked): {:.2} s", started.elapsed().as_secs_f64());
        let audit = node.audit();

        let started = Instant::now();
        let full = audit.verify_with(true).await.unwrap();
        let full_time = started.elapsed();
        assert!(full.ok, "{full:?}");
        println!(
            "full verify:        {:>10} records in {:>8.3} s ({:.0} records/s)",
            full.records_checked,
            full_time.as_secs_f64(),
            full.records_checked as f64 / full_time.as_secs_f64()
        );

        for i in 0..1000u32 {
            audit
                .record(AuditEntry {
                    at: SystemTime::now(),
                    principal: format!("device:bench-{i}"),
                    action: "palyra.vault.v1.VaultService/GetSecret".into(),
                    resource: "Scope:agents/alpha".into(),
                    decision: AuditDecision::Allow,
                    reason: "vault-read-granted".into(),
                })
                .unwrap();
        }
        audit.flush().await.unwrap();
        let started = Instant::now();
        let incremental = audit.verify_with(false).await.unwrap();
        let incremental_time = started.elapsed();
        assert!(incremental.ok, "{incremental:?}");
        println!(
            "incremental verify: {:>10} records in {:>8.3} s (from the verified checkpoint at {})",
            incremental.records_checked,
            incremental_time.as_secs_f64(),
            incremental.from_sequence
        );

        let started = Instant::now();
        let report = audit
            .prune(Retention { records: Some(n / 2), max_age: None }, SystemTime::now())
            .await
            .unwrap();
        let prune_time = started.elapsed();
        println!(
            "prune to the newest {}: {} records removed in {:.1} s ({} signed checkpoints)",
            n / 2,
            report.removed,
            prune_time.as_secs_f64(),
            report.removed.div_ceil(palyra::audit::PRUNE_CHUNK)
        );
        let started = Instant::now();
        let after = audit.verify_with(true).await.unwrap();
        assert!(after.ok, "{after:?}");
        println!(
            "full verify after the prune: {} records in {:.3} s (from the prune checkpoint at {})",
            after.records_checked,
            started.elapsed().as_secs_f64(),
            after.from_sequence
        );
        node.close_db();
    });
}
