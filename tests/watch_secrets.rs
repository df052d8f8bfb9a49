//! VaultService.WatchSecrets end to end over mTLS: changes in order with their metadata and no
//! value, scope and recursive filtering, per-scope authorization (the scope asked for, and
//! sub-scopes a policy forbids, decided once per policy version), resume by sequence,
//! retention, progress markers, revocation and shutdown ending the stream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use palyra::identity::Role;
use palyra::policy::DEFAULT_POLICIES;
use palyra::testkit::{Creds, NodeInternals, TestNode, reason};
use palyra::wire::pb::audit::v1::{self as audit, audit_service_client::AuditServiceClient};
use palyra::wire::pb::identity::v1::{RevokeDeviceRequest, identity_service_client::IdentityServiceClient};
use palyra::wire::pb::policy::v1::{UpdatePolicySetRequest, policy_service_client::PolicyServiceClient};
use palyra::wire::pb::vault::v1::{
    self as pb, SecretChange, WatchSecretsResponse, vault_service_client::VaultServiceClient,
};
use prost::Message;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

/// How long any one message may take to arrive.
const WAIT: Duration = Duration::from_secs(10);

const WATCH: &str = "palyra.vault.v1.VaultService/WatchSecrets";

async fn watch(
    channel: Channel,
    scope: &str,
    recursive: bool,
    since_sequence: u64,
    progress: bool,
) -> Result<Streaming<WatchSecretsResponse>, Status> {
    let request = pb::WatchSecretsRequest { scope: scope.into(), recursive, since_sequence, progress };
    let mut client = VaultServiceClient::new(channel);
    tokio::time::timeout(WAIT, client.watch_secrets(request))
        .await
        .expect("the call answers in time")
        .map(tonic::Response::into_inner)
}

/// The next message, which must come in time.
async fn next(stream: &mut Streaming<WatchSecretsResponse>) -> WatchSecretsResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a message in time")
        .expect("the stream goes on")
        .expect("the stream is not over")
}

/// The error that ends the stream, which must come in time.
async fn ended(stream: &mut Streaming<WatchSecretsResponse>) -> Status {
    match tokio::time::timeout(WAIT, stream.message()).await.expect("the stream ends in time") {
        Err(status) => status,
        Ok(other) => panic!("expected the stream to end with an error, got {other:?}"),
    }
}

fn change(m: &WatchSecretsResponse) -> (&str, &str, u64, SecretChange) {
    (m.scope.as_str(), m.key.as_str(), m.version, m.change())
}

async fn put(vault: &mut VaultServiceClient<Channel>, scope: &str, key: &str, value: &[u8]) -> u64 {
    vault
        .put_secret(pb::PutSecretRequest {
            scope: scope.into(),
            key: key.into(),
            value: value.to_vec(),
            expected_version: None,
        })
        .await
        .unwrap()
        .into_inner()
        .metadata
        .unwrap()
        .version
}

async fn delete(vault: &mut VaultServiceClient<Channel>, scope: &str, key: &str, destroy: bool) {
    vault
        .delete_secret(pb::DeleteSecretRequest { scope: scope.into(), key: key.into(), destroy })
        .await
        .unwrap();
}

async fn operator_vault(node: &TestNode) -> VaultServiceClient<Channel> {
    VaultServiceClient::new(node.operator().await)
}

/// A device granted `team`.
async fn team_device(node: &TestNode) -> Creds {
    node.add_device(Role::Device, "watcher", &["team"]).await
}

async fn install_policies(node: &TestNode, text: String) {
    PolicyServiceClient::new(node.operator().await)
        .update_policy_set(UpdatePolicySetRequest { policies: text, expected_version: None })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_delete_and_destroy_arrive_in_order_with_metadata_and_no_value() {
    let node = TestNode::start().await;
    let watcher = team_device(&node).await;
    let mut stream = watch(node.channel(Some(&watcher)).await, "team", false, 0, false).await.unwrap();
    let mut vault = operator_vault(&node).await;
    let value = b"correct-horse-battery-staple";
    put(&mut vault, "team", "db", value).await;
    put(&mut vault, "team/sub", "db", value).await; // a sub-scope: not watched
    put(&mut vault, "other", "db", value).await; // another scope
    put(&mut vault, "team", "db", value).await;
    delete(&mut vault, "team", "db", false).await;
    delete(&mut vault, "team", "db", true).await;

    let mut messages = Vec::new();
    for _ in 0..4 {
        messages.push(next(&mut stream).await);
    }
    let seen: Vec<_> = messages.iter().map(change).collect();
    assert_eq!(
        seen,
        [
            ("team", "db", 1, SecretChange::Put),
            ("team", "db", 2, SecretChange::Put),
            ("team", "db", 2, SecretChange::Delete),
            ("team", "db", 2, SecretChange::Destroy),
        ]
    );
    // The node's sequences: increasing, and the two changes elsewhere passed between.
    let sequences: Vec<u64> = messages.iter().map(|m| m.sequence).collect();
    assert_eq!(sequences[1], sequences[0] + 3, "{sequences:?}");
    assert_eq!((sequences[2], sequences[3]), (sequences[1] + 1, sequences[1] + 2), "{sequences:?}");
    for m in &messages {
        assert!(m.changed_at.is_some());
        let bytes = m.encode_to_vec();
        assert!(!bytes.windows(value.len()).any(|w| w == value), "a value in a watch message");
    }

    // Nothing else is pending: the next message is the next change in the scope itself.
    put(&mut vault, "team/sub", "later", b"x").await;
    put(&mut vault, "team", "later", b"x").await;
    assert_eq!(change(&next(&mut stream).await), ("team", "later", 1, SecretChange::Put));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recursive_watch_sees_sub_scopes_and_not_neighbours() {
    let node = TestNode::start().await;
    let watcher = team_device(&node).await;
    let mut stream = watch(node.channel(Some(&watcher)).await, "team", true, 0, false).await.unwrap();
    let mut vault = operator_vault(&node).await;
    put(&mut vault, "teamx", "k", b"v").await; // shares a prefix, not a sub-scope
    put(&mut vault, "team/a/b", "k", b"v").await;
    put(&mut vault, "tea", "k", b"v").await;
    put(&mut vault, "team", "k", b"v").await;
    assert_eq!(change(&next(&mut stream).await), ("team/a/b", "k", 1, SecretChange::Put));
    assert_eq!(change(&next(&mut stream).await), ("team", "k", 1, SecretChange::Put));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_the_caller_may_not_use_is_denied_and_recorded() {
    let node = TestNode::start().await;
    let watcher = team_device(&node).await;
    let channel = node.channel(Some(&watcher)).await;
    let denied = watch(channel.clone(), "other", true, 0, false).await.unwrap_err();
    assert_eq!(
        (denied.code(), reason(&denied).as_str()),
        (Code::PermissionDenied, "ERROR_REASON_POLICY_DENIED")
    );
    let reserved = watch(node.operator().await, "palyra/auth", true, 0, false).await.unwrap_err();
    assert_eq!(reserved.code(), Code::PermissionDenied, "the reserved scope, even for the operator");
    let bad = watch(channel.clone(), "Team/../x", false, 0, false).await.unwrap_err();
    assert_eq!((bad.code(), reason(&bad).as_str()), (Code::InvalidArgument, "ERROR_REASON_INVALID_ARGUMENT"));
    let last = node.node.events().last_sequence().await.unwrap();
    let ahead = watch(channel.clone(), "team", false, last + 5, false).await.unwrap_err();
    assert_eq!(
        (ahead.code(), reason(&ahead).as_str()),
        (Code::InvalidArgument, "ERROR_REASON_INVALID_ARGUMENT")
    );
    // Its own subtree needs no grant.
    watch(channel, &format!("devices/{}", watcher.id), true, 0, false).await.unwrap();

    node.node.audit().flush().await.unwrap();
    let records = AuditServiceClient::new(node.operator().await)
        .list_audit_records(audit::ListAuditRecordsRequest {
            action: Some(WATCH.into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(
        records.iter().any(|r| r.resource == "Scope:other" && r.decision() == audit::AuditDecision::Deny),
        "{records:?}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_with_the_last_sequence_gets_exactly_the_missed_changes() {
    let node = TestNode::start().await;
    let watcher = team_device(&node).await;
    let channel = node.channel(Some(&watcher)).await;
    let mut vault = operator_vault(&node).await;
    let mut stream = watch(channel.clone(), "team", true, 0, false).await.unwrap();
    put(&mut vault, "team", "a", b"v").await;
    let seen = next(&mut stream).await;
    assert_eq!(change(&seen), ("team", "a", 1, SecretChange::Put));
    drop(stream);

    // While away: three changes here, noise elsewhere.
    put(&mut vault, "team", "b", b"v").await;
    put(&mut vault, "elsewhere", "x", b"v").await;
    put(&mut vault, "team/deep", "c", b"v").await;
    delete(&mut vault, "team", "a", false).await;

    let mut stream = watch(channel, "team", true, seen.sequence, false).await.unwrap();
    let replayed = [next(&mut stream).await, next(&mut stream).await, next(&mut stream).await];
    assert_eq!(
        replayed.iter().map(change).collect::<Vec<_>>(),
        [
            ("team", "b", 1, SecretChange::Put),
            ("team/deep", "c", 1, SecretChange::Put),
            ("team", "a", 1, SecretChange::Delete),
        ]
    );
    assert!(replayed.windows(2).all(|w| w[0].sequence < w[1].sequence));
    assert!(replayed[0].sequence > seen.sequence);
    // Then live, with no repeat of the replay.
    put(&mut vault, "team", "live", b"v").await;
    let live = next(&mut stream).await;
    assert_eq!(change(&live), ("team", "live", 1, SecretChange::Put));
    assert!(live.sequence > replayed[2].sequence);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_before_retention_is_out_of_range_with_the_oldest_sequence() {
    let node = TestNode::start().await;
    let watcher = team_device(&node).await;
    let mut vault = operator_vault(&node).await;
    for i in 0..10 {
        put(&mut vault, "team", &format!("k{i}"), b"v").await;
    }
    let last = node.node.events().last_sequence().await.unwrap();
    node.event_log_with(palyra::events::Retention { max_events: 3, max_age: Duration::from_secs(3600) })
        .prune()
        .await
        .unwrap();
    let channel = node.channel(Some(&watcher)).await;
    let truncated = watch(channel.clone(), "team", false, 1, false).await.unwrap_err();
    assert_eq!(
        (truncated.code(), reason(&truncated).as_str()),
        (Code::OutOfRange, "ERROR_REASON_EVENTS_TRUNCATED")
    );
    let info = tonic_types::StatusExt::get_error_details(&truncated).error_info().cloned().unwrap();
    assert_eq!(info.metadata.get("oldest_available_sequence"), Some(&(last - 2).to_string()));
    // Resuming where it says replays what is left.
    let mut stream = watch(channel, "team", false, last - 3, false).await.unwrap();
    let first = next(&mut stream).await;
    assert_eq!((first.sequence, first.key.as_str()), (last - 2, "k7"));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_watchers_device_ends_its_stream_within_a_second() {
    let node = TestNode::start().await;
    let watcher = team_device(&node).await;
    let mut stream = watch(node.channel(Some(&watcher)).await, "team", true, 0, false).await.unwrap();
    let mut vault = operator_vault(&node).await;
    put(&mut vault, "team", "k", b"v").await;
    next(&mut stream).await;
    let revoked_at = Instant::now();
    IdentityServiceClient::new(node.operator().await)
        .revoke_device(RevokeDeviceRequest { device_id: watcher.id.to_string(), reason: "lost".into() })
        .await
        .unwrap();
    let status = ended(&mut stream).await;
    assert!(revoked_at.elapsed() < Duration::from_secs(2), "took {:?}", revoked_at.elapsed());
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::Unauthenticated, "ERROR_REASON_DEVICE_REVOKED")
    );
    // And it cannot start another.
    let again = watch(node.channel(Some(&watcher)).await, "team", true, 0, false).await.unwrap_err();
    assert_eq!(again.code(), Code::Unauthenticated);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_sub_scope_is_left_out_decided_once_per_policy_version() {
    let node = TestNode::start().await;
    let watcher = team_device(&node).await;
    let forbid = format!(
        "{DEFAULT_POLICIES}\n@id(\"no-private\")\nforbid (principal == Palyra::Device::\"{}\", action, resource in Palyra::Scope::\"team/private\");\n",
        watcher.id
    );
    install_policies(&node, forbid.clone()).await;
    let mut stream = watch(node.channel(Some(&watcher)).await, "team", true, 0, false).await.unwrap();
    let mut vault = operator_vault(&node).await;
    for key in ["a", "b", "c"] {
        put(&mut vault, "team/private", key, b"v").await;
        put(&mut vault, "team/private/deeper", key, b"v").await;
    }
    put(&mut vault, "team/open", "k", b"v").await;
    put(&mut vault, "team", "k", b"v").await;
    assert_eq!(change(&next(&mut stream).await), ("team/open", "k", 1, SecretChange::Put));
    assert_eq!(change(&next(&mut stream).await), ("team", "k", 1, SecretChange::Put));

    // One decision recorded per sub-scope, not one per change.
    node.node.audit().flush().await.unwrap();
    let records = AuditServiceClient::new(node.operator().await)
        .list_audit_records(audit::ListAuditRecordsRequest {
            action: Some(WATCH.into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    let on = |scope: &str| records.iter().filter(|r| r.resource == format!("Scope:{scope}")).count();
    assert_eq!(
        (on("team"), on("team/private"), on("team/private/deeper"), on("team/open")),
        (1, 1, 1, 1),
        "{records:?}"
    );
    assert!(
        records
            .iter()
            .filter(|r| r.resource.contains("private"))
            .all(|r| r.decision() == audit::AuditDecision::Deny)
    );

    // A policy update takes effect on the open stream: without the forbid, private is seen.
    install_policies(&node, DEFAULT_POLICIES.to_owned()).await;
    put(&mut vault, "team/private", "after", b"v").await;
    assert_eq!(change(&next(&mut stream).await), ("team/private", "after", 1, SecretChange::Put));

    // And a policy that takes the watched scope itself away ends the stream at its next change
    // anywhere under it (here in a sub-scope: the watched scope is asked again first).
    let forbid_all = format!(
        "{DEFAULT_POLICIES}\n@id(\"no-team\")\nforbid (principal == Palyra::Device::\"{}\", action, resource in Palyra::Scope::\"team\");\n",
        watcher.id
    );
    install_policies(&node, forbid_all).await;
    put(&mut vault, "team/open", "k", b"v").await;
    let status = ended(&mut stream).await;
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::PermissionDenied, "ERROR_REASON_POLICY_DENIED")
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_device_holds_a_bounded_number_of_watches() {
    let node = TestNode::start().await;
    let watcher = team_device(&node).await;
    let other = node.add_device(Role::Device, "other", &["team"]).await;
    let channel = node.channel(Some(&watcher)).await;
    let mut open = Vec::new();
    for _ in 0..palyra::rpc::vault::MAX_WATCHES_PER_PRINCIPAL {
        open.push(watch(channel.clone(), "team", true, 0, true).await.unwrap());
    }
    for stream in &mut open {
        next(stream).await; // the first progress marker: the stream is live
    }
    let refused = watch(channel.clone(), "team", true, 0, false).await.unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::ResourceExhausted, "ERROR_REASON_RATE_LIMITED")
    );
    assert!(refused.message().contains("close one"), "{}", refused.message());
    // Another device is not affected, and a closed stream gives its slot back.
    let mut theirs = watch(node.channel(Some(&other)).await, "team", false, 0, true).await.unwrap();
    next(&mut theirs).await;
    drop(open.pop());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match watch(channel.clone(), "team", false, 0, false).await {
            Ok(_) => break,
            Err(status)
                if status.code() == Code::ResourceExhausted && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(status) => panic!("the slot was not given back: {status:?}"),
        }
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_markers_carry_the_resume_point_past_other_scopes() {
    let node = TestNode::start().await;
    let watcher = team_device(&node).await;
    let mut vault = operator_vault(&node).await;
    put(&mut vault, "elsewhere", "before", b"v").await;
    let start = node.node.events().last_sequence().await.unwrap();
    let channel = node.channel(Some(&watcher)).await;
    let mut stream = watch(channel.clone(), "team", false, 0, true).await.unwrap();
    let first = next(&mut stream).await;
    assert_eq!(
        (first.change(), first.sequence, first.scope.as_str(), first.key.as_str()),
        (SecretChange::Progress, start, "", "")
    );

    put(&mut vault, "elsewhere", "k", b"v").await;
    let passed = node.node.events().last_sequence().await.unwrap();
    let marker = next(&mut stream).await;
    assert_eq!((marker.change(), marker.sequence), (SecretChange::Progress, passed));
    put(&mut vault, "team", "k", b"v").await;
    let change = next(&mut stream).await;
    assert_eq!((change.change(), change.sequence), (SecretChange::Put, passed + 1));

    // Without asking for them, no markers: the first message is a change.
    let mut quiet = watch(channel, "team", false, passed, false).await.unwrap();
    assert_eq!(next(&mut quiet).await.sequence, passed + 1);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_ends_open_watches_so_the_server_drains() {
    let node = TestNode::start().await;
    let watcher = team_device(&node).await;
    let mut stream = watch(node.channel(Some(&watcher)).await, "team", true, 0, false).await.unwrap();
    tokio::time::timeout(WAIT, node.stop()).await.expect("the server stops with a watch open");
    let status = ended(&mut stream).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

/// Kills the child when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_one_json_object_per_change() {
    use std::io::BufRead;
    const PALYRA: palyra::testkit::Palyra = palyra::testkit::palyra_bin!();

    let node = TestNode::start().await;
    let mut vault = operator_vault(&node).await;
    put(&mut vault, "team", "before", b"v").await;
    let since = node.node.events().last_sequence().await.unwrap();
    // Replayed from `since`, so the changes below are seen whenever the watch starts.
    let mut child = Child(
        PALYRA
            .cli(&node.data_dir())
            .args(["--json", "--server", &node.url(), "vault", "watch", "team", "--recursive"])
            .args(["--since", &since.to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let secret = "s3cret-value-never-printed";
    put(&mut vault, "elsewhere", "k", secret.as_bytes()).await;
    put(&mut vault, "team/sub", "token", secret.as_bytes()).await;
    delete(&mut vault, "team/sub", "token", true).await;
    let mut lines = Vec::new();
    for _ in 0..2 {
        lines.push(rx.recv_timeout(WAIT).expect("a line per change"));
    }
    let changes: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(changes[0]["sequence"], since + 2, "{lines:?}");
    assert_eq!(
        (&changes[0]["change"], &changes[0]["scope"], &changes[0]["key"], &changes[0]["version"]),
        (&"put".into(), &"team/sub".into(), &"token".into(), &1.into())
    );
    assert_eq!(
        (&changes[1]["change"], changes[1]["sequence"].as_u64()),
        (&"destroy".into(), Some(since + 3))
    );
    assert!(lines.iter().all(|l| !l.contains(secret)));
    assert!(child.0.try_wait().unwrap().is_none(), "it goes on until interrupted");

    // A node that stops ends the watch with a failure that says where to resume.
    put(&mut vault, "elsewhere", "last", b"v").await;
    let last = node.node.events().last_sequence().await.unwrap();
    node.stop().await;
    let mut stderr = child.0.stderr.take().unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let mut process = child;
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        let _ = done_tx.send((process.0.wait().unwrap(), text));
        drop(process);
    });
    let (status, stderr) = done_rx.recv_timeout(WAIT).expect("the watch ends with the node");
    assert!(!status.success());
    // The last change printed, or the node's last event if a progress marker came first.
    let resume: u64 = stderr
        .trim()
        .rsplit("resume with --since ")
        .next()
        .and_then(|tail| tail.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or_else(|| panic!("no resume point in {stderr:?}"));
    assert!(resume == since + 3 || resume == last, "{stderr}");
}

/// A response body waits for nothing before its first frame: it checks a revocation count
/// instead of subscribing. A revocation announced after the gate resolved the peer (the count
/// moved) makes it ask the registry and send nothing of a revoked device's response; another
/// device's revocation lets it through.
#[tokio::test]
async fn a_response_revoked_after_its_peer_was_resolved_sends_nothing() {
    use http_body_util::{BodyExt, Full};
    use palyra::rpc::streams::RevocableBody;
    use std::sync::Arc;
    use tonic::body::Body;
    use tonic::codegen::Bytes;

    let served = TestNode::start().await;
    let kept = palyra::testkit::mint(&served.node, Role::Device, "kept", &["team"]).await;
    let lost = palyra::testkit::mint(&served.node, Role::Device, "lost", &["team"]).await;
    let gate = Arc::new(served.node.gate().clone());
    let payload = || Body::new(Full::new(Bytes::from_static(b"payload")).map_err(|e| match e {}));
    let first_frame = |body: RevocableBody| async move {
        let mut body = std::pin::pin!(body);
        body.as_mut().frame().await.unwrap().unwrap()
    };

    // Nothing revoked since the epoch: the data passes.
    let epoch = gate.peers.revocation_epoch();
    let frame = first_frame(RevocableBody::of_device(payload(), lost.id, epoch, Arc::clone(&gate))).await;
    assert_eq!(frame.into_data().unwrap(), Bytes::from_static(b"payload"));

    // `lost` revoked after its peer was resolved (the epoch taken before).
    served.node.revoke(lost.id, "lost").await.unwrap();
    gate.peers.revoked(lost.id);
    let frame = first_frame(RevocableBody::of_device(payload(), lost.id, epoch, Arc::clone(&gate))).await;
    let trailers = frame.into_trailers().expect("the revoked device's body ends at once, with no data");
    assert_eq!(trailers.get("grpc-status").unwrap(), "16");

    // The count moved, but `kept` is not revoked: the registry says so and its data passes.
    let frame = first_frame(RevocableBody::of_device(payload(), kept.id, epoch, Arc::clone(&gate))).await;
    assert_eq!(frame.into_data().unwrap(), Bytes::from_static(b"payload"));
}
