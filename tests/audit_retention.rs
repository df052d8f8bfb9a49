//! Audit retention with signed checkpoints: a prune removes the oldest records in transactions
//! that each write a checkpoint (signed with the node's Ed25519 key) at the last record removed,
//! and the kept suffix verifies from it. Someone who can write palyra.db (but holds neither the
//! root key nor the identity key) cannot remove records without a checkpoint, edit a record
//! after one, or edit or forge a checkpoint, without VerifyAuditLog saying so. Verification is
//! incremental from the last verified checkpoint; `--full` walks everything. The configured
//! retention is applied by `palyra serve` on its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime};

use palyra::audit::{Checkpoint, CheckpointKind, Retention};
use palyra::testkit::{self, NodeInternals, TestNode};
use palyra::wire::pb::audit::v1::{self as audit, audit_service_client::AuditServiceClient};
use palyra::wire::pb::identity::v1::{self as identity, identity_service_client::IdentityServiceClient};
use tonic::transport::Channel;

fn db(node: &TestNode) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(node.data_dir().join("palyra.db")).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

async fn calls(node: &TestNode, n: usize) {
    let mut ids = IdentityServiceClient::new(node.operator().await);
    for _ in 0..n {
        ids.who_am_i(identity::WhoAmIRequest {}).await.unwrap();
    }
    node.node.audit().flush().await.unwrap();
}

async fn audits(node: &TestNode) -> AuditServiceClient<Channel> {
    AuditServiceClient::new(node.operator().await)
}

async fn verify(node: &TestNode, full: bool) -> audit::VerifyAuditLogResponse {
    audits(node).await.verify_audit_log(audit::VerifyAuditLogRequest { full }).await.unwrap().into_inner()
}

/// One integer the database answers.
fn number(node: &TestNode, sql: &str) -> u64 {
    db(node).query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as u64
}

fn first_and_last(node: &TestNode) -> (u64, u64) {
    (number(node, "SELECT MIN(sequence) FROM audit"), number(node, "SELECT MAX(sequence) FROM audit"))
}

/// A node with 40 calls recorded, pruned over gRPC to its newest 10 records.
async fn pruned_node() -> (TestNode, audit::PruneAuditLogResponse) {
    let node = TestNode::start().await;
    calls(&node, 40).await;
    let pruned = audits(&node)
        .await
        .prune_audit_log(audit::PruneAuditLogRequest { retain_records: Some(10), retain_days: None })
        .await
        .unwrap()
        .into_inner();
    node.node.audit().flush().await.unwrap();
    (node, pruned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pruned_log_verifies_from_its_signed_checkpoint() {
    let (node, pruned) = pruned_node().await;
    assert!(pruned.removed > 30, "{pruned:?}");
    assert_eq!(pruned.first_sequence, 1);
    let checkpoint = pruned.checkpoint.clone().unwrap();
    assert_eq!((checkpoint.sequence, checkpoint.kind.as_str()), (pruned.last_sequence, "prune"));
    let (first, _) = first_and_last(&node);
    assert_eq!(first, pruned.last_sequence + 1, "the kept records start right after the checkpoint");

    // The checkpoint verifies under the node's identity key, as GetNodeIdentity shows it.
    let key = node.node.identity().device().signing_public_key();
    let signed = Checkpoint {
        head: palyra::audit::AuditHead {
            sequence: checkpoint.sequence,
            hash: hex::decode(&checkpoint.head).unwrap().try_into().unwrap(),
        },
        at_millis: checkpoint.at_unix_ms,
        kind: CheckpointKind::Prune,
        signature: hex::decode(&checkpoint.signature).unwrap().try_into().unwrap(),
    };
    assert!(signed.verify(&key));

    let full = verify(&node, true).await;
    assert!(full.ok, "{full:?}");
    assert_eq!(full.from_sequence, pruned.last_sequence);
    // The prune is recorded, saying what went.
    let records = audits(&node)
        .await
        .list_audit_records(audit::ListAuditRecordsRequest {
            action: Some("palyra.audit/Pruned".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(records[0].reason.contains(&format!("to {}", pruned.last_sequence)), "{:?}", records[0]);

    // Nothing more is due: the log is pruned once more only after it grew.
    let again = audits(&node)
        .await
        .prune_audit_log(audit::PruneAuditLogRequest { retain_records: Some(1_000), retain_days: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.removed, 0, "{again:?}");
    assert!(verify(&node, false).await.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_by_age_in_chunks_leaves_a_verifiable_log_and_keeps_the_head() {
    let node = TestNode::start().await;
    calls(&node, 25).await;
    let audit = node.node.audit();
    let (_, last) = first_and_last(&node);
    // Everything is older than a minute an hour from now; the head is kept all the same.
    let later = SystemTime::now() + Duration::from_secs(3600);
    let retention = Retention { records: None, max_age: Some(Duration::from_secs(60)) };
    let report = audit.prune_in_chunks(retention, later, 7).await.unwrap();
    assert_eq!((report.first, report.through), (1, last - 1), "{report:?}");
    let prunes = number(&node, "SELECT COUNT(*) FROM audit_checkpoints WHERE kind = 'prune'");
    assert_eq!(prunes, (last - 1).div_ceil(7), "one signed checkpoint per transaction");
    audit.flush().await.unwrap();
    let v = audit.verify_with(true).await.unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.from_sequence, last - 1);
}

/// Prunes, then runs `tamper` on the database: a full verification must fail at `first_bad`
/// with `words` in its problem.
async fn tampered_after_prune(tamper: &str, first_bad: impl Fn(u64) -> u64, words: &str) {
    let (node, pruned) = pruned_node().await;
    let through = pruned.last_sequence;
    let changed = db(&node).execute(&tamper.replace("{through}", &through.to_string()), []).unwrap();
    assert!(changed > 0, "{tamper}");
    let v = verify(&node, true).await;
    eprintln!("{tamper}: {v:?}");
    assert!(!v.ok, "{tamper}: {v:?}");
    assert_eq!(v.first_bad_sequence, Some(first_bad(through)), "{tamper}: {v:?}");
    assert!(v.problem.as_deref().unwrap_or_default().contains(words), "{tamper}: {v:?}");
    // A prune over the damage is refused rather than laundering it into a signed checkpoint.
    let refused = audits(&node)
        .await
        .prune_audit_log(audit::PruneAuditLogRequest { retain_records: Some(1), retain_days: None })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::DataLoss, "{tamper}: {refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_record_after_the_checkpoint_is_found() {
    tampered_after_prune(
        "UPDATE audit SET reason = 'nothing to see' WHERE sequence = {through} + 3",
        |t| t + 3,
        "does not follow the chain",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_removed_after_the_checkpoint_without_one_are_found() {
    tampered_after_prune(
        "DELETE FROM audit WHERE sequence <= {through} + 2",
        |t| t + 1,
        "removed without a signed checkpoint",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_checkpoint_is_found() {
    // Moved forward over two more records (with their real hash): the signature no longer
    // matches what the row says.
    tampered_after_prune(
        "UPDATE audit_checkpoints SET sequence = {through} + 2,
             hash = (SELECT hash FROM audit WHERE sequence = {through} + 2) WHERE kind = 'prune';
         ",
        |t| t + 2,
        "does not verify under the node's signing key",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_checkpoint_covering_removed_records_is_found() {
    let (node, pruned) = pruned_node().await;
    let through = pruned.last_sequence;
    let c = db(&node);
    c.execute_batch(&format!(
        "INSERT INTO audit_checkpoints (kind, sequence, hash, at, signature)
             SELECT 'prune', sequence, hash, at, '{}' FROM audit WHERE sequence = {through} + 4;
         DELETE FROM audit WHERE sequence <= {through} + 4;",
        "ab".repeat(64)
    ))
    .unwrap();
    let v = verify(&node, true).await;
    assert!(!v.ok, "{v:?}");
    assert_eq!(v.first_bad_sequence, Some(through + 4), "{v:?}");
    assert!(v.problem.unwrap().contains("forged or edited"));
    // The incremental verification checks the checkpoints written since the last one too.
    assert!(!verify(&node, false).await.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_checkpoint_or_records_deleted_without_one_are_found() {
    // The prune checkpoint removed: the kept records follow nothing signed.
    tampered_after_prune(
        "DELETE FROM audit_checkpoints WHERE kind = 'prune'",
        |_| 1,
        "removed without a signed checkpoint",
    )
    .await;
    // A log never pruned, its oldest records deleted.
    let node = TestNode::start().await;
    calls(&node, 10).await;
    db(&node).execute("DELETE FROM audit WHERE sequence <= 4", []).unwrap();
    let v = verify(&node, false).await;
    assert!(!v.ok, "{v:?}");
    assert_eq!(v.first_bad_sequence, Some(1), "{v:?}");
    assert!(v.problem.unwrap().contains("audit records 1 to 4 were removed without a signed checkpoint"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tail_of_a_pruned_log_is_found_at_start() {
    let (node, pruned) = pruned_node().await;
    let data = node.data_dir();
    let (dir, stopped) = node.stop().await;
    stopped.close_db();
    drop(stopped);
    let c = rusqlite::Connection::open(data.join("palyra.db")).unwrap();
    c.execute("DELETE FROM audit WHERE sequence > (SELECT MAX(sequence) - 2 FROM audit)", []).unwrap();
    drop(c);
    let again = testkit::open_node(&data).await;
    assert!(again.audit().integrity().is_some());
    let v = again.audit().verify_with(true).await.unwrap();
    assert!(!v.ok && v.problem.unwrap().contains("removed from the end"));
    assert!(pruned.removed > 0);
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_verification_starts_at_the_last_verified_point() {
    let node = TestNode::start().await;
    calls(&node, 20).await;
    let first = verify(&node, true).await;
    assert!(first.ok && first.from_sequence == 0, "{first:?}");
    let verified = number(&node, "SELECT MAX(sequence) FROM audit_checkpoints WHERE kind = 'verified'");
    calls(&node, 5).await;
    let next = verify(&node, false).await;
    assert!(next.ok, "{next:?}");
    assert_eq!(next.from_sequence, verified, "{next:?}");
    assert!(next.records_checked < 15, "only what followed the last verification is walked: {next:?}");

    // An edit after the verified point is found by the incremental walk.
    calls(&node, 5).await;
    let (_, last) = first_and_last(&node);
    db(&node).execute("UPDATE audit SET reason = 'x' WHERE sequence = ?1", [last as i64 - 2]).unwrap();
    let v = verify(&node, false).await;
    assert!(!v.ok && v.first_bad_sequence == Some(last - 2), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_before_the_verified_point_needs_a_full_verification() {
    // What the incremental walk cannot see, stated as a test: records before the last verified
    // checkpoint are not walked again; `--full` finds the edit.
    let node = TestNode::start().await;
    calls(&node, 20).await;
    assert!(verify(&node, true).await.ok);
    db(&node).execute("UPDATE audit SET reason = 'rewritten' WHERE sequence = 5", []).unwrap();
    calls(&node, 3).await;
    assert!(verify(&node, false).await.ok, "the incremental walk starts after record 5");
    let full = verify(&node, true).await;
    assert!(!full.ok && full.first_bad_sequence == Some(5), "{full:?}");
    // Replacing the verified record itself is seen by the incremental walk too (more records
    // first, so it is not the head the appender checks).
    calls(&node, 2).await;
    let verified = number(&node, "SELECT MAX(sequence) FROM audit_checkpoints WHERE kind = 'verified'");
    db(&node)
        .execute("UPDATE audit SET hash = ?1 WHERE sequence = ?2", ("00".repeat(32), verified as i64))
        .unwrap();
    let v = verify(&node, false).await;
    assert!(!v.ok && v.first_bad_sequence == Some(verified), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_rpc_signs_the_current_head() {
    let node = TestNode::start().await;
    calls(&node, 3).await;
    let (_, last) = first_and_last(&node);
    let r = audits(&node)
        .await
        .get_audit_checkpoint(audit::GetAuditCheckpointRequest { sequence: Some(2) })
        .await
        .unwrap()
        .into_inner();
    let c = r.checkpoint.unwrap();
    assert!(c.sequence >= last, "{c:?}");
    assert_eq!(r.public_key, hex::encode(node.node.identity().device().signing_public_key()));
    let hash2: String =
        db(&node).query_row("SELECT hash FROM audit WHERE sequence = 2", [], |r| r.get(0)).unwrap();
    assert_eq!(r.hash_at_sequence, Some(hash2));
}

/// `palyra serve` with `[audit] retain_records` prunes on its own (at start, then hourly), and
/// the CLI verifies the result and prints the signed checkpoint.
#[test]
fn serve_prunes_by_the_configured_retention() {
    testkit::install_crypto_provider();
    let palyra = palyra::palyra_bin!();
    let dir = testkit::private_tempdir();
    let data = dir.path().join("node");
    assert!(palyra.run(&data, &["init"]).status.success());
    let cli = |server: &str, args: &[&str]| {
        let out = palyra.cli(&data).env("PALYRA_SERVER", server).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let mut serving = palyra.serve(&data, "warn");
    let server = format!("https://{}", serving.grpc);
    for _ in 0..15 {
        assert_eq!(cli(&server, &["identity", "show"]).0, Some(0));
    }
    serving.kill();
    std::fs::write(data.join("palyra.toml"), "[audit]\nretain_records = 5\n").unwrap();
    let mut serving = palyra.serve(&data, "warn");
    let server = format!("https://{}", serving.grpc);
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        let (code, out, err) = cli(&server, &["--json", "audit", "list", "--limit", "1"]);
        assert_eq!(code, Some(0), "{err}");
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        let first = list[0]["sequence"].as_u64().unwrap();
        if first > 1 {
            break first;
        }
        assert!(Instant::now() < deadline, "serve did not prune: {out}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let (code, out, err) = cli(&server, &["--json", "audit", "verify", "--full"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["from_sequence"].as_u64(), Some(first - 1), "{out}");
    let (code, out, err) = cli(&server, &["--json", "audit", "checkpoint"]);
    assert_eq!(code, Some(0), "{err}");
    let c: serde_json::Value = serde_json::from_str(&out).unwrap();
    for field in ["sequence", "head", "at", "signature"] {
        assert!(!c[field].is_null(), "{field} missing: {out}");
    }
    assert_eq!(c["signature"].as_str().unwrap().len(), 128);
    serving.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_checkpoint_from_another_history_stops_the_prune_and_the_full_verification() {
    // A validly signed checkpoint naming record 5 with another hash (what an attacker could copy
    // from another copy of this node's log) must not become the node's word for record 5 once
    // pruned: the prune refuses, and a full verification reports it.
    let node = TestNode::start().await;
    calls(&node, 20).await;
    let identity = std::sync::Arc::clone(node.node.identity());
    let signer = palyra::audit::CheckpointSigner {
        public_key: identity.device().signing_public_key(),
        sign: std::sync::Arc::new(move |m| identity.device().sign(m)),
    };
    let other = palyra::audit::AuditHead { sequence: 5, hash: [7; 32] };
    let c = Checkpoint::sign(other, 1, CheckpointKind::Served, &signer);
    db(&node)
        .execute(
            "INSERT INTO audit_checkpoints (kind, sequence, hash, at, signature) VALUES ('served', 5, ?1, 1, ?2)",
            (hex::encode(c.head.hash), hex::encode(c.signature)),
        )
        .unwrap();
    let refused = audits(&node)
        .await
        .prune_audit_log(audit::PruneAuditLogRequest { retain_records: Some(3), retain_days: None })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::DataLoss, "{refused:?}");
    assert!(refused.message().contains("names record 5 with another hash"), "{refused:?}");
    assert_eq!(first_and_last(&node).0, 1, "nothing was removed");
    let v = verify(&node, true).await;
    assert!(!v.ok && v.first_bad_sequence == Some(5), "{v:?}");
    assert!(v.problem.unwrap().contains("is not the one signed checkpoint"));
}
