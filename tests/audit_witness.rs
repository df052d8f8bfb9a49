//! Witnessed audit: node B follows node A's signed audit checkpoints over QUIC
//! (`node.audit_checkpoint`) with `palyra audit verify --peer`. A's database rolled back to an
//! older copy (the attack A's own verification cannot see: the copy is consistent) is found by
//! B (exit 5); A pruning its log with checkpoints is not mistaken for it. Only peer nodes and
//! admins may ask for a checkpoint.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, SystemTime};

use palyra::audit::Retention;
use palyra::identity::Role;
use palyra::quic::{ClientError, QuicClient, QuicConfig};
use palyra::testkit::{self, Creds, NodeInternals, TestNode};
use palyra::wire::pb::identity::v1::{self as identity, identity_service_client::IdentityServiceClient};

async fn calls(node: &TestNode, n: usize) {
    let mut ids = IdentityServiceClient::new(node.operator().await);
    for _ in 0..n {
        ids.who_am_i(identity::WhoAmIRequest {}).await.unwrap();
    }
    node.node.audit().flush().await.unwrap();
}

/// B's data dir, holding the credentials A issued it (role node) in `client/`.
fn witness_dir(a: &TestNode, creds: &Creds, b: &Path) {
    let client = b.join("client");
    palyra::fsutil::ensure_private_dir(b).unwrap();
    palyra::fsutil::ensure_private_dir(&client).unwrap();
    let ca = a.node.identity().ca().certificate_pem().to_owned();
    for (name, text) in [("ca.pem", &ca), ("cert.pem", &creds.cert_pem), ("key.pem", &creds.key_pem)] {
        palyra::fsutil::write_private_atomic(&client.join(name), text.as_bytes(), true).unwrap();
    }
}

/// `palyra --data-dir B audit verify --peer ADDR --json`: exit code, stdout, stderr.
fn witness(b: &Path, peer: std::net::SocketAddr) -> (Option<i32>, serde_json::Value, String) {
    let out = palyra::palyra_bin!()
        .cli(b)
        .args(["--json", "audit", "verify", "--peer", &peer.to_string()])
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), json, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_finds_a_peer_rolled_back_to_an_older_copy_and_accepts_a_pruned_one() {
    let a = TestNode::start().await;
    let b_creds = a.add_device(Role::Node, "witness-b", &[]).await;
    let b_dir = testkit::private_tempdir();
    let b = b_dir.path().join("b");
    witness_dir(&a, &b_creds, &b);
    calls(&a, 5).await;
    // The attacker's older copy of A's database, consistent in itself.
    let old = a.dir.path().join("old.db");
    a.node.audit().flush().await.unwrap();
    rusqlite::Connection::open(a.data_dir().join("palyra.db"))
        .unwrap()
        .execute("VACUUM INTO ?1", [old.to_str().unwrap()])
        .unwrap();
    calls(&a, 30).await;

    let quic = a.serve_quic(QuicConfig::default());
    let (code, first, err) = witness(&b, quic.addr);
    assert_eq!(code, Some(0), "{first} {err}");
    assert_eq!(first["first_witness"], true, "{first}");
    let witnessed = first["checkpoint"]["sequence"].as_u64().unwrap();
    let files: Vec<_> = std::fs::read_dir(b.join("witness")).unwrap().collect();
    assert_eq!(files.len(), 1, "one pinned peer");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = files[0].as_ref().unwrap().metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (code, second, err) = witness(&b, quic.addr);
    assert_eq!(code, Some(0), "{second} {err}");
    assert_eq!(second["first_witness"], false);

    // A prunes past what B witnessed, legitimately (signed checkpoints): B still verifies, from
    // the checkpoint A stored when it served it.
    calls(&a, 10).await;
    let report =
        a.node.audit().prune(Retention { records: Some(3), max_age: None }, SystemTime::now()).await.unwrap();
    assert!(report.through > witnessed, "{report:?} past {witnessed}");
    calls(&a, 3).await;
    let (code, pruned, err) = witness(&b, quic.addr);
    assert_eq!(code, Some(0), "a pruned peer still extends what was witnessed: {pruned} {err}");

    // The rollback: A stopped, its database replaced by the older copy, restarted.
    quic.stop().await;
    let data = a.data_dir();
    let (dir, stopped) = a.stop().await;
    stopped.close_db();
    drop(stopped);
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(data.join(format!("palyra.db{suffix}")));
    }
    std::fs::copy(&old, data.join("palyra.db")).unwrap();
    let a = TestNode::start_in(dir, &data).await;
    // A's own verification cannot see it: the copy is a consistent log.
    assert!(a.node.audit().integrity().is_none());
    let own = a.node.audit().verify_with(true).await.unwrap();
    assert!(own.ok, "{own:?}");
    let quic = a.serve_quic(QuicConfig::default());
    let (code, rolled, err) = witness(&b, quic.addr);
    assert_eq!(code, Some(5), "{rolled} {err}");
    assert!(
        err.contains("NO LONGER EXTENDS WHAT THIS NODE WITNESSED") && err.contains("went backwards"),
        "{err}"
    );
    quic.stop().await;
    drop(b_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_peer_nodes_and_admins_may_ask_for_the_audit_checkpoint() {
    let node = TestNode::start().await;
    let quic = node.serve_quic(QuicConfig::default());
    let tls = |creds: &Creds| testkit::tls::quic(&node.node, Some(creds));
    for (role, allowed) in [(Role::Device, false), (Role::Node, true), (Role::Admin, true)] {
        let creds = node.add_device(role, "asker", &[]).await;
        let client = QuicClient::connect(quic.addr, "localhost", tls(&creds)).await.unwrap();
        let answer = client.audit_checkpoint(Some(1)).await;
        match (allowed, answer) {
            (true, Ok(answer)) => {
                let c = answer.checkpoint.unwrap();
                assert_eq!(c.kind, "served");
                assert_eq!(
                    answer.public_key,
                    hex::encode(node.node.identity().device().signing_public_key())
                );
                assert!(answer.hash_at_sequence.is_some(), "record 1 is there");
            }
            (false, Err(ClientError::Remote { code, .. })) => assert_eq!(code, "permission_denied"),
            (allowed, other) => panic!("{role:?} (allowed {allowed}): {other:?}"),
        }
        client.close().await;
    }
    node.node.audit().flush().await.unwrap();
    let records =
        node.node.audit().list(0, 10_000, None, Some("node.audit_checkpoint".into())).await.unwrap();
    let decisions: Vec<&str> = records.iter().map(|r| r.entry.decision.as_str()).collect();
    assert_eq!(decisions, ["deny", "allow", "allow"]);
    quic.stop().await;
}

/// `palyra serve` with `[audit] witness` witnesses its peers on its own (at start, then every
/// 10 minutes) and pins them as the CLI does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_witnesses_the_peers_it_is_configured_with() {
    let a = TestNode::start().await;
    let b_creds = a.add_device(Role::Node, "witness-b", &[]).await;
    let quic = a.serve_quic(QuicConfig::default());
    let b_dir = testkit::private_tempdir();
    let b = b_dir.path().join("b");
    witness_dir(&a, &b_creds, &b);
    std::fs::write(b.join("palyra.toml"), format!("[audit]\nwitness = [\"{}\"]\n", quic.addr)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut serving = testkit::spawn_serving(
        palyra::palyra_bin!().serve_command(&b, "info"),
        Duration::from_secs(120),
        move |line| {
            let _ = tx.send(line);
        },
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let line = loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())).unwrap();
        if line.contains("witnessed the peer's audit log") || line.contains("WITNESSED AUDIT LOG BROKEN") {
            break line;
        }
    };
    assert!(line.contains("witnessed the peer's audit log"), "{line}");
    assert_eq!(std::fs::read_dir(b.join("witness")).unwrap().count(), 1);
    serving.kill();
    quic.stop().await;
}
