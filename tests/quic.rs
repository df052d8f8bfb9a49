//! The QUIC data plane end to end: a real node, a real quinn endpoint on 127.0.0.1:0, the
//! crate's client. Health, event streams (order, filter, resume, restart, slow consumer),
//! connection limit, frame limits, unknown method, certificates, policy, revocation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use palyra::events::Event;
use palyra::identity::Role;
use palyra::quic::client::{ClientOptions, ClientTls, QuicClient, Reply};
use palyra::quic::{ClientError, QuicConfig};
use palyra::testkit::tls::Pems;
use palyra::testkit::{self, Creds, NodeInternals, QuicServing, TestNode, palyra_bin};
use palyra::vault::{Scope, SecretKey, SecretValue};

/// A node serving gRPC and QUIC (both from the testkit).
struct QuicNode {
    test: TestNode,
    addr: SocketAddr,
    quic: QuicServing,
}

impl QuicNode {
    async fn start(config: QuicConfig) -> QuicNode {
        QuicNode::serve(TestNode::start().await, config)
    }

    fn serve(test: TestNode, config: QuicConfig) -> QuicNode {
        let quic = test.serve_quic(config);
        QuicNode { test, addr: quic.addr, quic }
    }

    fn tls(&self, creds: Option<&Creds>) -> ClientTls {
        testkit::tls::quic(&self.test.node, creds)
    }

    async fn client(&self, creds: &Creds) -> QuicClient {
        QuicClient::connect(self.addr, "localhost", self.tls(Some(creds))).await.unwrap()
    }

    async fn write(&self, scope: &str, key: &str) {
        self.test
            .node
            .vault()
            .put(
                &Scope::parse(scope).unwrap(),
                &SecretKey::parse(key).unwrap(),
                SecretValue::new(b"v".to_vec()),
                None,
            )
            .await
            .unwrap();
    }

    async fn stop(self) -> (tempfile::TempDir, palyra::node::Node) {
        self.quic.stop().await;
        self.test.stop().await
    }
}

async fn next(stream: &mut palyra::quic::client::EventStream) -> Event {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event in time")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn health_answers_for_a_node_device() {
    let node = QuicNode::start(QuicConfig::default()).await;
    let peer = node.test.add_device(Role::Node, "peer", &[]).await;
    let client = node.client(&peer).await;
    let health = client.health().await.unwrap();
    assert_eq!(health.status, "ok");
    assert_eq!(health.device_id, node.test.node.identity().id().to_string());
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"));
    client.close().await;
    node.stop().await;
}

#[tokio::test]
async fn events_after_vault_writes_arrive_in_order_and_filter_by_kind() {
    let node = QuicNode::start(QuicConfig::default()).await;
    let peer = node.test.add_device(Role::Node, "peer", &[]).await;
    let start = node.test.node.events().last_sequence().await.unwrap();
    let client = node.client(&peer).await;
    node.write("agents/alpha", "one").await;
    node.write("agents/alpha", "two").await;
    node.test
        .node
        .vault()
        .delete(&Scope::parse("agents/alpha").unwrap(), &SecretKey::parse("one").unwrap(), false)
        .await
        .unwrap();
    let mut all = client.stream_events(start, Vec::new()).await.unwrap();
    let mut deleted = client.stream_events(start, vec!["vault.secret.deleted".into()]).await.unwrap();
    let a = next(&mut all).await;
    let b = next(&mut all).await;
    let c = next(&mut all).await;
    assert_eq!((a.sequence, b.sequence, c.sequence), (start + 1, start + 2, start + 3));
    assert_eq!(a.subject, "agents/alpha/one");
    assert_eq!(a.kind, "vault.secret.written");
    assert_eq!(b.subject, "agents/alpha/two");
    assert_eq!(c.kind, "vault.secret.deleted");
    let only = next(&mut deleted).await;
    assert_eq!((only.sequence, only.kind.as_str()), (start + 3, "vault.secret.deleted"));
    // Live: a write after the replay arrives on the open stream.
    node.write("agents/alpha", "three").await;
    let live = next(&mut all).await;
    assert_eq!((live.sequence, live.subject.as_str()), (start + 4, "agents/alpha/three"));
    client.close().await;
    node.stop().await;
}

#[tokio::test]
async fn resume_after_reconnect_and_after_a_server_restart_loses_and_repeats_nothing() {
    let node = QuicNode::start(QuicConfig::default()).await;
    let peer = node.test.add_device(Role::Node, "peer", &[]).await;
    let start = node.test.node.events().last_sequence().await.unwrap();
    let mut seen = Vec::new();
    for i in 0..5 {
        node.write("r", &format!("k{i}")).await;
    }
    let client = node.client(&peer).await;
    let mut stream = client.stream_events(start, Vec::new()).await.unwrap();
    for _ in 0..3 {
        seen.push(next(&mut stream).await.sequence);
    }
    client.close().await;
    // Reconnect, resume after the last one seen; written meanwhile: 2 more.
    for i in 5..7 {
        node.write("r", &format!("k{i}")).await;
    }
    let client = node.client(&peer).await;
    let mut stream = client.stream_events(*seen.last().unwrap(), Vec::new()).await.unwrap();
    for _ in 0..2 {
        seen.push(next(&mut stream).await.sequence);
    }
    client.close().await;
    // Restart the whole node (same data dir), write more, resume again.
    let (dir, old) = node.stop().await;
    old.close_db();
    drop(old);
    let data = dir.path().join("node");
    let node = QuicNode::serve(TestNode::start_in(dir, &data).await, QuicConfig::default());
    for i in 7..9 {
        node.write("r", &format!("k{i}")).await;
    }
    let client = node.client(&peer).await;
    let mut stream = client.stream_events(*seen.last().unwrap(), Vec::new()).await.unwrap();
    for _ in 0..4 {
        seen.push(next(&mut stream).await.sequence);
    }
    let expected: Vec<u64> = (start + 1..=start + 9).collect();
    assert_eq!(seen, expected, "every event once, in order");
    // Nothing more is pending.
    assert!(tokio::time::timeout(Duration::from_millis(300), stream.next()).await.is_err());
    client.close().await;
    node.stop().await;
}

#[tokio::test]
async fn a_slow_consumer_receives_every_event_of_a_burst_larger_than_the_live_buffer() {
    let node = QuicNode::start(QuicConfig::default()).await;
    let peer = node.test.add_device(Role::Node, "peer", &[]).await;
    let start = node.test.node.events().last_sequence().await.unwrap();
    // A small receive window: the server blocks on flow control while the burst is published.
    let client = QuicClient::connect_with(
        node.addr,
        "localhost",
        node.tls(Some(&peer)),
        ClientOptions { stream_receive_window: Some(8 * 1024), ..Default::default() },
    )
    .await
    .unwrap();
    let mut stream = client.stream_events(start, Vec::new()).await.unwrap();
    let burst = palyra::events::DEFAULT_LIVE_BUFFER as u64 * 2;
    let mut writes = Vec::new();
    for i in 0..burst {
        let log = node.test.node.events().clone();
        writes.push(tokio::spawn(async move {
            log.append(palyra::events::NewEvent::new("vault.secret.written", format!("burst/{i}")))
                .await
                .unwrap()
        }));
    }
    // Read slowly at first, while the burst is committed.
    let first = next(&mut stream).await;
    assert_eq!(first.sequence, start + 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for w in writes {
        w.await.unwrap();
    }
    let mut expected = start + 2;
    while expected <= start + burst {
        let event = next(&mut stream).await;
        assert_eq!(event.sequence, expected, "no gap, no duplicate");
        expected += 1;
        if expected % 1000 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    client.close().await;
    node.stop().await;
}

#[tokio::test]
async fn connection_over_the_limit_is_closed_with_code_1_and_a_slot_frees_when_one_ends() {
    let node = QuicNode::start(QuicConfig { max_connections: 2, ..Default::default() }).await;
    let peer = node.test.add_device(Role::Node, "peer", &[]).await;
    let one = node.client(&peer).await;
    let two = node.client(&peer).await;
    one.health().await.unwrap();
    two.health().await.unwrap();
    assert_limit_refused(&node, &peer).await;
    one.close().await;
    // The slot frees once the server sees the close.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let client = node.client(&peer).await;
        match client.health().await {
            Ok(_) => break,
            Err(ClientError::Closed { code: 1, .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("slot not freed: {e}"),
        }
    }
    node.stop().await;
}

async fn assert_limit_refused(node: &QuicNode, peer: &Creds) {
    let refused = match QuicClient::connect(node.addr, "localhost", node.tls(Some(peer))).await {
        Err(e) => e,
        Ok(client) => match client.health().await {
            Err(e) => e,
            Ok(_) => panic!("a connection over the limit was served"),
        },
    };
    match refused {
        ClientError::Closed { code, reason } => {
            assert_eq!(code, 0x1);
            assert_eq!(reason, "connection limit");
        }
        other => panic!("expected close code 0x1, got {other}"),
    }
}

#[tokio::test]
async fn the_default_limit_is_256_connections() {
    // All from 127.0.0.1: lift the per-address share (default 32) to see the total.
    let node = QuicNode::start(QuicConfig { max_connections_per_address: 256, ..Default::default() }).await;
    let peer = node.test.add_device(Role::Node, "peer", &[]).await;
    let mut held = Vec::new();
    for _ in 0..256 {
        let client = node.client(&peer).await;
        held.push(client);
    }
    // Make sure all 256 have passed the server's handshake and hold a slot.
    for client in &held {
        client.health().await.unwrap();
    }
    assert_limit_refused(&node, &peer).await;
    // Dropping a client closes its connection.
    drop(held);
    node.stop().await;
}

#[tokio::test]
async fn a_frame_longer_than_the_maximum_is_rejected_from_its_header() {
    let node = QuicNode::start(QuicConfig { max_frame: 1024, ..Default::default() }).await;
    let peer = node.test.add_device(Role::Node, "peer", &[]).await;
    let client = node.client(&peer).await;
    for header in [u32::MAX, 1025, 0] {
        // Only the 4-byte header is sent: the answer cannot wait for (or buffer) the body.
        let mut replies = client.send_raw(&header.to_be_bytes()).await.unwrap();
        match replies.next_reply().await.unwrap() {
            Some(Reply::Error(e)) => assert_eq!(e.code, "frame_too_large", "{header}"),
            other => panic!("{header}: {other:?}"),
        }
        assert!(replies.next_reply().await.unwrap().is_none(), "the stream is finished");
    }
    client.health().await.unwrap();
    client.close().await;
    node.stop().await;
}

#[tokio::test]
async fn an_undecodable_frame_and_an_unknown_method_get_error_frames() {
    let node = QuicNode::start(QuicConfig::default()).await;
    let peer = node.test.add_device(Role::Node, "peer", &[]).await;
    let client = node.client(&peer).await;
    let garbage = [0xff_u8, 0xff, 0xff, 0xff, 0x0f];
    let mut bytes = (garbage.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&garbage);
    let mut replies = client.send_raw(&bytes).await.unwrap();
    match replies.next_reply().await.unwrap() {
        Some(Reply::Error(e)) => assert_eq!(e.code, "invalid_request"),
        other => panic!("{other:?}"),
    }
    assert!(replies.next_reply().await.unwrap().is_none());

    // A stream that ends inside its frame: the header promises 100 bytes, 10 arrive.
    let mut bytes = 100u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0u8; 10]);
    let mut replies = client.send_raw(&bytes).await.unwrap();
    match replies.next_reply().await.unwrap() {
        Some(Reply::Error(e)) => assert_eq!(e.code, "invalid_request"),
        other => panic!("truncated: {other:?}"),
    }

    // A request header announcing far more than a Request can be is refused from the header,
    // even below max_frame (1 MiB by default), so no large buffer is reserved.
    let mut replies = client.send_raw(&(512 * 1024u32).to_be_bytes()).await.unwrap();
    match replies.next_reply().await.unwrap() {
        Some(Reply::Error(e)) => assert_eq!(e.code, "frame_too_large"),
        other => panic!("oversized request: {other:?}"),
    }

    use prost::Message;
    let request = palyra::quic::pb::Request { method: "node.reboot".into(), ..Default::default() };
    let body = request.encode_to_vec();
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&body);
    let mut replies = client.send_raw(&bytes).await.unwrap();
    match replies.next_reply().await.unwrap() {
        Some(Reply::Error(e)) => assert_eq!(e.code, "unsupported_method"),
        other => panic!("{other:?}"),
    }
    client.close().await;
    node.stop().await;
}

#[tokio::test]
async fn a_client_without_a_certificate_or_with_an_unknown_one_is_refused() {
    let node = QuicNode::start(QuicConfig::default()).await;
    let anonymous = QuicClient::connect(node.addr, "localhost", node.tls(None)).await;
    let refused = match anonymous {
        Err(e) => e,
        Ok(client) => client.health().await.expect_err("no certificate, no answer"),
    };
    assert!(matches!(refused, ClientError::Connect(_) | ClientError::Lost(_)), "{refused}");

    // A certificate from the node's CA for a device the registry does not know.
    let peer = node.test.add_device(Role::Node, "peer", &[]).await;
    let other = TestNode::start().await;
    let stranger = other.add_device(Role::Node, "stranger", &[]).await;
    let tls = testkit::tls::quic(&other.node, Some(&stranger));
    // Another node's CA does not verify this node's server certificate, nor this node the
    // stranger's client certificate.
    assert!(QuicClient::connect(node.addr, "localhost", tls).await.is_err());
    let _ = peer;

    // A certificate from this node's CA for a device id the registry does not know: code 0x2.
    let id = palyra::identity::DeviceIdentity::generate().unwrap().id();
    let (cert_pem, key_pem, _) = testkit::issue(
        node.test.node.identity().ca(),
        id,
        Role::Node,
        Duration::from_secs(600),
        SystemTime::now(),
    );
    let pems = Pems {
        ca: node.test.node.identity().ca().certificate_pem().to_owned(),
        client: Some((cert_pem, key_pem)),
    };
    let tls = pems.quic();
    let unknown = match QuicClient::connect(node.addr, "localhost", tls).await {
        Err(e) => e,
        Ok(client) => client.health().await.expect_err("an unknown device was served"),
    };
    assert!(matches!(unknown, ClientError::Closed { code: 0x2, .. }), "{unknown}");
    node.stop().await;
}

#[tokio::test]
async fn a_device_role_may_ask_health_but_not_stream_events() {
    let node = QuicNode::start(QuicConfig::default()).await;
    let app = node.test.add_device(Role::Device, "phone", &[]).await;
    let client = node.client(&app).await;
    client.health().await.unwrap();
    let mut stream = client.stream_events(0, Vec::new()).await.unwrap();
    match stream.next().await {
        Err(ClientError::Remote { code, .. }) => assert_eq!(code, "permission_denied"),
        other => panic!("expected permission_denied, got {other:?}"),
    }
    // Both decisions are in the audit log.
    node.test.node.audit().flush().await.unwrap();
    let records =
        node.test.node.audit().list(0, 1000, Some(format!("device:{}", app.id)), None).await.unwrap();
    let decisions: Vec<(String, String)> =
        records.iter().map(|r| (r.entry.action.clone(), r.entry.decision.as_str().to_owned())).collect();
    assert!(decisions.contains(&("node.health".into(), "allow".into())), "{decisions:?}");
    assert!(decisions.contains(&("node.stream_events".into(), "deny".into())), "{decisions:?}");
    client.close().await;
    node.stop().await;
}

#[tokio::test]
async fn a_revoked_device_is_cut_off_within_a_second_and_refused_after() {
    let node = QuicNode::start(QuicConfig::default()).await;
    let peer = node.test.add_device(Role::Node, "peer", &[]).await;
    let client = node.client(&peer).await;
    let mut stream = client.stream_events(0, Vec::new()).await.unwrap();
    client.health().await.unwrap();
    let revoked_at = Instant::now();
    node.test.revoke(peer.id, "lost").await.unwrap();
    let closed =
        tokio::time::timeout(Duration::from_secs(1), client.closed()).await.expect("closed within a second");
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
    match closed {
        ClientError::Closed { code, .. } => assert_eq!(code, 0x3),
        other => panic!("{other}"),
    }
    // The open stream ends too, after delivering what was committed before (the revocation).
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), stream.next()).await.unwrap() {}
    // A new connection is refused.
    let again = match QuicClient::connect(node.addr, "localhost", node.tls(Some(&peer))).await {
        Err(e) => e,
        Ok(client) => client.health().await.expect_err("revoked device served"),
    };
    assert!(matches!(again, ClientError::Closed { code: 0x3, .. }), "{again}");
    node.stop().await;
}

#[tokio::test]
async fn since_older_than_retention_gets_events_truncated() {
    let node = QuicNode::start(QuicConfig::default()).await;
    let peer = node.test.add_device(Role::Node, "peer", &[]).await;
    for i in 0..10 {
        node.write("t", &format!("k{i}")).await;
    }
    let last = node.test.node.events().last_sequence().await.unwrap();
    node.test
        .event_log_with(palyra::events::Retention { max_events: 3, max_age: Duration::from_secs(3600) })
        .prune()
        .await
        .unwrap();
    let client = node.client(&peer).await;
    let mut stream = client.stream_events(1, Vec::new()).await.unwrap();
    match stream.next().await {
        Err(ClientError::Remote { code, oldest_available_sequence, .. }) => {
            assert_eq!(code, "events_truncated");
            assert_eq!(oldest_available_sequence, last - 2);
        }
        other => panic!("{other:?}"),
    }
    let mut stream = client.stream_events(last - 3, Vec::new()).await.unwrap();
    assert_eq!(next(&mut stream).await.sequence, last - 2);
    client.close().await;
    node.stop().await;
}

/// Writes `creds` for `node` as a paired data dir keeps them: `client/{ca,cert,key}.pem`.
fn save_client_credentials(data_dir: &std::path::Path, node: &QuicNode, creds: &Creds) {
    let dir = data_dir.join("client");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), node.test.node.identity().ca().certificate_pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), &creds.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &creds.key_pem).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(dir.join("key.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

// The CLI runs as a child process; the nodes are served by this runtime's other worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_one_follows_the_other_with_the_cli() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let a = QuicNode::start(QuicConfig::default()).await;
    let b = TestNode::start().await;
    // B paired with A as a node (what `pairing approve --role node` leaves in B's data dir).
    let b_on_a = a.test.add_device(Role::Node, "node-b", &[]).await;
    save_client_credentials(&b.data_dir(), &a, &b_on_a);
    let bin = palyra_bin!().path();
    let peer = a.addr.to_string();

    let run = |mut command: Command| async move {
        tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
    };
    // With a CARGO_TARGET_DIR shared between worktrees, target/debug/palyra may be another
    // branch's build at this moment: say so instead of failing on someone else's binary.
    let mut probe = Command::new(bin);
    probe.args(["node", "--help"]);
    if !run(probe).await.status.success() {
        eprintln!(
            "SKIPPED: {} has no `node` command (another worktree's build in a shared target dir)",
            bin.display()
        );
        return;
    }
    let mut command = Command::new(bin);
    command.arg("--data-dir").arg(b.data_dir()).args(["--json", "node", "health", "--peer", &peer]);
    let out = run(command).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let health: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(health["device_id"], a.test.node.identity().id().to_string());

    // On A itself the operator's credentials are used.
    let mut command = Command::new(bin);
    command.arg("--data-dir").arg(a.test.data_dir()).args(["node", "health", "--peer", &peer]);
    let out = run(command).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let since = a.test.node.events().last_sequence().await.unwrap();
    let mut follower = Command::new(bin)
        .arg("--data-dir")
        .arg(b.data_dir())
        .args(["--json", "node", "events", "--peer", &peer, "--since", &since.to_string()])
        .args(["--kind", "vault.secret.written"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    a.write("agents/alpha", "db-password").await;
    a.test
        .node
        .vault()
        .delete(&Scope::parse("agents/alpha").unwrap(), &SecretKey::parse("db-password").unwrap(), false)
        .await
        .unwrap();
    a.write("agents/alpha", "api-token").await;
    let stdout = follower.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout).lines().take(2).map(|l| l.unwrap()).collect::<Vec<_>>()
    });
    let lines =
        tokio::time::timeout(Duration::from_secs(20), lines).await.expect("two events in time").unwrap();
    follower.kill().unwrap();
    let _ = follower.wait();
    let events: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events[0]["sequence"], since + 1);
    assert_eq!(events[0]["subject"], "agents/alpha/db-password");
    assert_eq!(events[1]["sequence"], since + 3, "the deletion is filtered out");
    assert_eq!(events[1]["kind"], "vault.secret.written");
    assert_eq!(events[1]["attributes"]["key"], "api-token");
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn revoking_over_grpc_cuts_the_quic_connection_off() {
    use palyra::wire::pb::identity::v1::RevokeDeviceRequest;
    use palyra::wire::pb::identity::v1::identity_service_client::IdentityServiceClient;

    let node = QuicNode::start(QuicConfig::default()).await;
    let peer = node.test.add_device(Role::Node, "peer", &[]).await;
    let client = node.client(&peer).await;
    client.health().await.unwrap();
    let mut operator = IdentityServiceClient::new(node.test.operator().await);
    let revoked_at = Instant::now();
    operator
        .revoke_device(RevokeDeviceRequest { device_id: peer.id.to_string(), reason: "stolen".into() })
        .await
        .unwrap();
    let closed =
        tokio::time::timeout(Duration::from_secs(1), client.closed()).await.expect("closed within a second");
    assert!(matches!(closed, ClientError::Closed { code: 0x3, .. }), "{closed}");
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
    node.stop().await;
}
