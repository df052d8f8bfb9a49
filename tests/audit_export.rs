//! `AuditService/ExportAuditLog` and `palyra audit export`: the export is the table (every
//! field as ListAuditRecords shows it, sequences contiguous), `--follow` prints what is
//! committed after it started with no gap and no repeat across the replay/live boundary, open
//! exports are bounded per principal and end on shutdown and on revocation, and a start whose
//! next record was pruned is OUT_OF_RANGE.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use palyra::identity::Role;
use palyra::testkit::{self, TestNode, palyra_bin, reason};
use palyra::wire::pb::audit::v1::{self as audit, audit_service_client::AuditServiceClient};
use palyra::wire::pb::identity::v1::{self as identity, identity_service_client::IdentityServiceClient};
use tonic::Code;
use tonic::transport::Channel;

async fn calls(node: &TestNode, n: usize) {
    let mut ids = IdentityServiceClient::new(node.operator().await);
    for _ in 0..n {
        ids.who_am_i(identity::WhoAmIRequest {}).await.unwrap();
    }
}

async fn export(
    ch: Channel,
    since: u64,
    follow: bool,
) -> Result<tonic::Streaming<audit::ExportAuditLogResponse>, tonic::Status> {
    AuditServiceClient::new(ch)
        .export_audit_log(audit::ExportAuditLogRequest { since_sequence: since, follow })
        .await
        .map(tonic::Response::into_inner)
}

/// Reads `stream` until it ends.
async fn drain(mut stream: tonic::Streaming<audit::ExportAuditLogResponse>) -> Vec<audit::AuditRecord> {
    let mut all = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        assert!(!message.records.is_empty());
        all.extend(message.records);
    }
    all
}

fn assert_contiguous(records: &[audit::AuditRecord], first: u64) {
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.sequence, first + i as u64, "a gap or a repeat at position {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_is_the_table_field_by_field() {
    let node = TestNode::start().await;
    calls(&node, 30).await;
    // A denial too: a device asking for the audit log.
    let device = node.add_device(Role::Device, "d", &[]).await;
    let denied = export(node.channel(Some(&device)).await, 0, false).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    let exported = drain(export(node.operator().await, 0, false).await.unwrap()).await;
    let listed = testkit::audit_records(node.operator().await).await;
    assert!(exported.len() >= 32, "{}", exported.len());
    assert_contiguous(&exported, 1);
    // The table goes on (the calls above are recorded too); the export is its prefix.
    assert_eq!(exported[..], listed[..exported.len()]);
    assert!(
        exported
            .iter()
            .any(|r| r.decision() == audit::AuditDecision::Deny && r.action.ends_with("ExportAuditLog"))
    );

    // --since N starts right after N.
    let tail = drain(export(node.operator().await, 10, false).await.unwrap()).await;
    assert_contiguous(&tail, 11);
    assert_eq!(tail[..exported.len() - 10], exported[10..]);

    // The CLI prints the same records as JSON lines, in the sink's format.
    let mut command = palyra_bin!().cli(&node.data_dir());
    command.arg("--server").arg(node.url()).args(["audit", "export", "--since", "5"]);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    let listed = testkit::audit_records(node.operator().await).await;
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() >= exported.len() - 5);
    for (line, record) in lines.iter().zip(&listed[5..]) {
        let fields = line.as_object().unwrap();
        let keys: Vec<&str> = fields.keys().map(String::as_str).collect();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        assert_eq!(
            keys_sorted,
            ["action", "at", "decision", "hash", "principal", "reason", "resource", "sequence"]
        );
        assert_eq!(line["sequence"], record.sequence);
        assert_eq!(line["principal"], record.principal.as_str());
        assert_eq!(line["action"], record.action.as_str());
        assert_eq!(line["resource"], record.resource.as_str());
        assert_eq!(line["reason"], record.reason.as_str());
        assert_eq!(line["hash"], record.hash.as_str());
        let decision = if record.decision() == audit::AuditDecision::Allow { "allow" } else { "deny" };
        assert_eq!(line["decision"], decision);
        // RFC 3339 UTC with milliseconds, the record's own time.
        let at = record.at.unwrap();
        let at_text = line["at"].as_str().unwrap();
        assert_eq!(at_text.len(), "2026-12-06T04:35:14.123Z".len(), "{at_text}");
        assert!(at_text.ends_with('Z'));
        let millis = u64::try_from(at.seconds).unwrap() * 1000 + u64::try_from(at.nanos).unwrap() / 1_000_000;
        assert!(at_text.ends_with(&format!(".{:03}Z", millis % 1000)), "{at_text} vs {millis}");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_prints_later_records_without_gap_or_repeat() {
    let node = TestNode::start().await;
    calls(&node, 20).await;
    let mut stream = export(node.operator().await, 0, true).await.unwrap();
    // Records are made while the export replays the table and after.
    let writer = {
        let ch = node.operator().await;
        tokio::spawn(async move {
            let mut ids = IdentityServiceClient::new(ch);
            for i in 0..300 {
                ids.who_am_i(identity::WhoAmIRequest {}).await.unwrap();
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    };
    writer.await.unwrap();
    node.node.audit().flush().await.unwrap();
    let head = *node.node.audit().committed().borrow();
    assert!(head >= 320);
    let mut seen: Vec<audit::AuditRecord> = Vec::new();
    while seen.last().map_or(0, |r| r.sequence) < head {
        let message = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("the export follows new records")
            .unwrap()
            .expect("a follow export does not end");
        seen.extend(message.records);
    }
    assert_contiguous(&seen, 1);
    let listed = testkit::audit_records(node.operator().await).await;
    assert_eq!(seen[..], listed[..seen.len()]);
    // And it keeps following.
    calls(&node, 1).await;
    let next =
        tokio::time::timeout(Duration::from_secs(30), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.records[0].sequence, seen.last().unwrap().sequence + 1);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_are_bounded_per_principal_and_end_on_shutdown_and_revocation() {
    let node = TestNode::start().await;
    let admin = node.add_device(Role::Admin, "second admin", &[]).await;
    let mut open = Vec::new();
    for _ in 0..palyra::rpc::audit::MAX_EXPORTS_PER_PRINCIPAL {
        open.push(export(node.operator().await, 0, true).await.unwrap());
    }
    let refused = export(node.operator().await, 0, true).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(reason(&refused), "ERROR_REASON_RATE_LIMITED");
    assert!(refused.message().contains("ExportAuditLog"), "{}", refused.message());
    // Another principal has its own budget.
    let mut revocable = export(node.channel(Some(&admin)).await, 0, true).await.unwrap();
    // A closed stream gives its slot back.
    drop(open.pop());
    let mut again = None;
    for _ in 0..100 {
        match export(node.operator().await, 0, true).await {
            Ok(stream) => {
                again = Some(stream);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    open.push(again.expect("the slot of a closed export is given back"));

    // Revoking the second admin ends its export.
    while let Ok(Ok(Some(_))) = tokio::time::timeout(Duration::from_millis(200), revocable.message()).await {}
    IdentityServiceClient::new(node.operator().await)
        .revoke_device(identity::RevokeDeviceRequest {
            device_id: admin.id.to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), revocable.message()).await.unwrap() {
            Ok(Some(_)) => {}
            other => break other,
        }
    };
    let status = ended.expect_err("a revoked device's export ends with an error");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // Shutdown ends the rest with UNAVAILABLE.
    let mut stream = open.pop().unwrap();
    let stop = tokio::spawn(node.stop());
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap() {
            Ok(Some(_)) => {}
            other => break other,
        }
    };
    assert_eq!(ended.expect_err("shutdown ends the export").code(), Code::Unavailable);
    drop(open);
    tokio::time::timeout(Duration::from_secs(30), stop).await.expect("the server drains").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_after_pruned_records_is_out_of_range_and_past_the_end_is_invalid() {
    let node = TestNode::start().await;
    calls(&node, 10).await;
    node.node.audit().flush().await.unwrap();
    // Retention's effect, by hand: the oldest five records are gone.
    let db = rusqlite::Connection::open(node.data_dir().join("palyra.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute("DELETE FROM audit WHERE sequence <= 5", []).unwrap();

    let status = export(node.operator().await, 2, false).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("pruned") && status.message().contains("starts at 6"),
        "{}",
        status.message()
    );
    // From the start means from the oldest kept; from 5 is exact.
    let all = drain(export(node.operator().await, 0, false).await.unwrap()).await;
    assert_contiguous(&all, 6);
    let from_five = drain(export(node.operator().await, 5, false).await.unwrap()).await;
    assert_contiguous(&from_five, 6);

    let status = export(node.operator().await, 1_000_000, true).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("past the end"), "{}", status.message());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_following_export_ends_when_a_new_policy_no_longer_allows_it() {
    use palyra::wire::pb::policy::v1::{self as policy, policy_service_client::PolicyServiceClient};
    let node = TestNode::start().await;
    let second = node.add_device(Role::Admin, "second admin", &[]).await;
    let mut stream = export(node.channel(Some(&second)).await, 0, true).await.unwrap();
    // Caught up with what was there.
    while let Ok(Ok(Some(_))) = tokio::time::timeout(Duration::from_millis(300), stream.message()).await {}

    let mut policies = PolicyServiceClient::new(node.operator().await);
    let current = policies.get_policy_set(policy::GetPolicySetRequest {}).await.unwrap().into_inner();
    let text = current.policy_set.unwrap().policies;
    let forbid = format!(
        "{text}\n@id(\"no-export-for-second\")\nforbid (principal == Palyra::Device::\"{}\", \
         action == Palyra::Action::\"palyra.audit.v1.AuditService/ExportAuditLog\", resource);\n",
        second.id
    );
    policies
        .update_policy_set(policy::UpdatePolicySetRequest { policies: forbid, expected_version: None })
        .await
        .unwrap();
    // New records after the change are not sent: the export ends with the denial.
    calls(&node, 3).await;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap() {
            Ok(Some(message)) => {
                let last = message.records.last().map(|r| r.action.clone()).unwrap_or_default();
                assert!(!last.contains("WhoAmI"), "a record after the change was exported: {last}");
            }
            other => break other,
        }
    };
    let status = ended.expect_err("the export ends");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "ERROR_REASON_POLICY_DENIED");
    node.stop().await;
}
