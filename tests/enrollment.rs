//! Enrollment keys end to end over real mTLS: an operator makes a key; headless devices pair
//! with its token through `palyra::cli::pair::pair` (what `palyra pair --enrollment-key` runs)
//! and are approved at once with the key's role and scopes; uses are counted atomically;
//! revoked, used-up, wrong and edited keys are refused with a reason; every use is audited and
//! emits `pairing.approved`; the CLI commands work from the binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use palyra::cli::pair::{PairOptions, PairWith, Paired, pair};
use palyra::pairing::EnrollmentToken;
use palyra::testkit::{self, NodeInternals, Palyra, TestNode, palyra_bin, private_tempdir};
use palyra::wire::pb::pairing::v1::{self as pb, pairing_service_client::PairingServiceClient};
use palyra::wire::pb::vault::v1::{self as pbv, vault_service_client::VaultServiceClient};
use tonic::Code;

const PALYRA: Palyra = palyra_bin!();

async fn create_key(node: &TestNode, scopes: &[&str], uses: u32) -> pb::CreateEnrollmentKeyResponse {
    PairingServiceClient::new(node.operator().await)
        .create_enrollment_key(pb::CreateEnrollmentKeyRequest {
            role: String::new(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            max_uses: Some(uses),
            ttl_seconds: None,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn keys(node: &TestNode) -> Vec<pb::EnrollmentKey> {
    PairingServiceClient::new(node.operator().await)
        .list_enrollment_keys(pb::ListEnrollmentKeysRequest { include_inactive: true })
        .await
        .unwrap()
        .into_inner()
        .keys
}

async fn enroll(node: &TestNode, data: &Path, token: &str, name: &str) -> Result<Paired, String> {
    let opts = PairOptions {
        server: node.url(),
        data_dir: data.to_path_buf(),
        with: PairWith::Enrollment(EnrollmentToken::parse(token).map_err(|e| e.to_string())?),
        name: name.into(),
        poll_interval: Duration::from_millis(50),
        wait: Duration::from_secs(10),
    };
    let mut progress = |_| {};
    pair(&opts, &|_: &str| false, &mut progress).await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_pairs_a_device_at_once_with_its_grants_audited_and_announced() {
    let node = TestNode::start().await;
    let created = create_key(&node, &["agents/ci"], 2).await;
    assert!(created.token.starts_with("palyra-enroll:v1:"));
    let key = created.key.clone().unwrap();
    assert_eq!((key.uses, key.max_uses, key.state()), (0, 2, pb::EnrollmentKeyState::Active));
    assert_eq!(key.scopes, ["agents/ci"]);

    let data = private_tempdir();
    let paired = enroll(&node, data.path(), &created.token, "ci-runner").await.unwrap();
    // The device works at once, within its grants and nowhere else.
    let channel = testkit::tls::channel_from_dir(node.addr, &data.path().join("client")).await;
    let mut vault = VaultServiceClient::new(channel);
    vault
        .put_secret(pbv::PutSecretRequest {
            scope: "agents/ci".into(),
            key: "token".into(),
            value: b"v".to_vec(),
            expected_version: None,
        })
        .await
        .unwrap();
    let denied = vault
        .get_secret(pbv::GetSecretRequest { scope: "agents/other".into(), key: "k".into(), version: 0 })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let device = node.node.device(paired.device_id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!((device.name.as_str(), device.role.as_str()), ("ci-runner", "device"));
    assert_eq!(device.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(), ["agents/ci"]);

    let listed = keys(&node).await;
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].uses, listed[0].state()), (1, pb::EnrollmentKeyState::Active));

    // The use is in the audit log (durable with the enrollment) and in the event log.
    let resource = format!("EnrollmentKey:{}", created.key_id);
    let records = node.node.audit().list(0, 10_000, None, None).await.unwrap();
    let used: Vec<_> = records.iter().filter(|r| r.entry.resource == resource).collect();
    assert_eq!(used.len(), 1, "one record per use");
    assert_eq!(used[0].entry.principal, format!("device:{}", paired.device_id));
    assert!(used[0].entry.reason.contains("use 1 of 2"), "{}", used[0].entry.reason);
    let mut events =
        node.node.events().subscribe(0, vec![palyra::events::PAIRING_APPROVED.to_owned()]).await.unwrap();
    let approved = loop {
        let event = tokio::time::timeout(Duration::from_secs(5), events.next()).await.unwrap().unwrap();
        if event.kind == palyra::events::PAIRING_APPROVED {
            break event;
        }
    };
    assert_eq!(approved.attributes.get("enrollment_key"), Some(&created.key_id));
    assert_eq!(approved.attributes.get("device_id"), Some(&paired.device_id));
    // Neither carries the secret.
    let token = EnrollmentToken::parse(&created.token).unwrap();
    let secret = token.secret.as_str();
    assert!(records.iter().all(|r| !format!("{r:?}").contains(secret)));
    assert!(!format!("{approved:?}").contains(secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_devices_never_take_more_uses_than_the_key_has() {
    let node = TestNode::start().await;
    let created = create_key(&node, &[], 2).await;
    let dirs: Vec<_> = (0..5).map(|_| private_tempdir()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    let node = std::sync::Arc::new(node);
    for (i, d) in dirs.iter().enumerate() {
        let (node, path, token) = (node.clone(), d.path().to_owned(), created.token.clone());
        tasks.spawn(async move { enroll(&node, &path, &token, &format!("agent-{i}")).await });
    }
    let results: Vec<Result<Paired, String>> = tasks.join_all().await;
    let paired = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(paired, 2, "{results:?}");
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(refused.contains("used up"), "{refused}");
    }
    let listed = keys(&node).await;
    assert_eq!((listed[0].uses, listed[0].state()), (2, pb::EnrollmentKeyState::UsedUp));
    // The last use erased the sealed secret: nothing left to open.
    let sealed: Option<Vec<u8>> = rusqlite::Connection::open(node.node.db_path())
        .unwrap()
        .query_row("SELECT sealed_secret FROM enrollment_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sealed, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_wrong_and_edited_keys_are_refused_with_a_reason() {
    let node = TestNode::start().await;
    let mut operator = PairingServiceClient::new(node.operator().await);

    // Revoked: refused, and the listing says so.
    let revoked = create_key(&node, &[], 3).await;
    let after = operator
        .revoke_enrollment_key(pb::RevokeEnrollmentKeyRequest { key_id: revoked.key_id.clone() })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(after.state(), pb::EnrollmentKeyState::Revoked);
    let err = enroll(&node, private_tempdir().path(), &revoked.token, "a").await.unwrap_err();
    assert!(err.contains("revoked"), "{err}");
    let unknown = operator
        .revoke_enrollment_key(pb::RevokeEnrollmentKeyRequest { key_id: "0000000000".into() })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let active = operator
        .list_enrollment_keys(pb::ListEnrollmentKeysRequest { include_inactive: false })
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert!(active.is_empty(), "a revoked key is not listed as active");

    // Expired: refused with its reason (the key was made two days ago for a day).
    let day = Duration::from_secs(86_400);
    let expired = node.enrollment_token_made(2 * day, day).await;
    let err = enroll(&node, private_tempdir().path(), &expired, "old").await.unwrap_err();
    assert!(err.contains("expired"), "{err}");

    // A token with the right key id but another secret: the node's confirmation fails on the
    // device, nothing is paired, no use is taken.
    let good = create_key(&node, &["agents/x"], 1).await;
    let mut forged = EnrollmentToken::parse(&good.token).unwrap();
    forged.secret = palyra::pairing::EnrollmentSecret::generate().unwrap();
    let err = enroll(&node, private_tempdir().path(), &forged.to_text(), "b").await.unwrap_err();
    assert!(err.contains("does not verify"), "{err}");
    let listed = keys(&node).await;
    assert!(listed.iter().all(|k| k.uses == 0));

    // Someone who can write the database widens the key's scopes: the sealed secret no longer
    // opens, so the key pairs nobody (and never with the edited grants).
    let db = rusqlite::Connection::open(node.node.db_path()).unwrap();
    db.execute(
        "UPDATE enrollment_keys SET scopes = '[\"agents/x\",\"everything\"]' WHERE key_id = ?1",
        [&good.key_id],
    )
    .unwrap();
    let err = enroll(&node, private_tempdir().path(), &good.token, "c").await.unwrap_err();
    assert!(err.contains("integrity"), "{err}");

    // Bad arguments are refused before anything is stored.
    for (req, field) in [
        (pb::CreateEnrollmentKeyRequest { role: "admin".into(), ..Default::default() }, "role"),
        (pb::CreateEnrollmentKeyRequest { max_uses: Some(0), ..Default::default() }, "max_uses"),
        (pb::CreateEnrollmentKeyRequest { ttl_seconds: Some(10), ..Default::default() }, "ttl_seconds"),
        (pb::CreateEnrollmentKeyRequest { scopes: vec!["../x".into()], ..Default::default() }, "scopes"),
    ] {
        let err = operator.create_enrollment_key(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert!(err.message().contains(field), "{}", err.message());
    }
}

#[test]
fn the_cli_creates_lists_uses_and_revokes_keys() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let node = runtime.block_on(TestNode::start());
    let data = node.data_dir();
    let url = node.url();
    let cli = |args: &[&str]| {
        let out = PALYRA.cli(&data).args(["--server", &url]).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let created =
        cli(&["--json", "enrollment", "create", "--scope", "agents/cli", "--uses", "3", "--ttl", "1h"]);
    let token = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(created["expires_at"].as_str().is_some());

    // The agent's machine: the token from the environment, no operator step.
    let agent = private_tempdir();
    let out = PALYRA
        .cli(agent.path())
        .args(["--json", "pair", "--name", "agent-1"])
        .env("PALYRA_ENROLLMENT_KEY", &token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(agent.path().join("client/cert.pem").exists());
    // The token never shows in --help, even when set in the environment.
    let help = PALYRA
        .cli(agent.path())
        .args(["pair", "--help"])
        .env("PALYRA_ENROLLMENT_KEY", &token)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains(&token));

    // A second machine: the token from a file, no warning about the command line.
    let second = private_tempdir();
    let token_file = second.path().join("token.txt");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let out = PALYRA
        .cli(&second.path().join("data"))
        .args(["--json", "pair", "--name", "agent-2", "--enrollment-key-file"])
        .arg(&token_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));

    let listed = cli(&["--json", "enrollment", "list"]);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["uses"], 2);
    assert_eq!(listed[0]["scopes"][0], "agents/cli");
    let revoked = cli(&["--json", "enrollment", "revoke", &id]);
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(cli(&["--json", "enrollment", "list"]), serde_json::json!([]));
    assert_eq!(cli(&["--json", "enrollment", "list", "--all"])[0]["state"], "revoked");
    drop(runtime.block_on(node.stop()));
}

/// Runs the handshake by hand up to the FinishPairing message, so a test can act in between.
async fn handshake(
    node: &TestNode,
    token: &EnrollmentToken,
    keys: &palyra::testkit::DeviceKeys,
) -> (PairingServiceClient<tonic::transport::Channel>, pb::FinishPairingRequest) {
    use palyra::pairing::handshake::StartReply;
    use palyra::pairing::{DeviceName, DevicePairing};
    let mut client = PairingServiceClient::new(node.channel(None).await);
    let (mut machine, start) = DevicePairing::start(
        &keys.identity,
        token.key_id.clone(),
        &token.secret,
        &token.ca_fingerprint,
        DeviceName::parse("agent").unwrap(),
        &keys.csr_pem,
    )
    .unwrap();
    let reply = client
        .start_pairing(pb::StartPairingRequest {
            code_id: token.key_id.to_string(),
            device_name: "agent".into(),
            signing_public_key: start.signing_public_key.to_vec(),
            agreement_public_key: start.agreement_public_key.to_vec(),
            csr_pem: keys.csr_pem.clone(),
            pake_message: start.pake_message.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let expires = std::time::SystemTime::now() + Duration::from_secs(60);
    let reply =
        StartReply::decode(&reply.session_id, &reply.pake_message, &reply.server_confirmation, expires)
            .unwrap();
    let finish = machine.handle_reply(&keys.identity, &reply, std::time::SystemTime::now()).unwrap();
    let finish = pb::FinishPairingRequest {
        session_id: finish.session_id,
        client_confirmation: finish.client_confirmation.to_vec(),
        signature: finish.signature.to_vec(),
    };
    (client, finish)
}

async fn enrollment_records(node: &TestNode, key_id: &str) -> Vec<palyra::audit::AuditRecord> {
    node.node.audit().flush().await.unwrap();
    let resource = format!("EnrollmentKey:{key_id}");
    let all = node.node.audit().list(0, 100_000, None, None).await.unwrap();
    all.into_iter().filter(|r| r.entry.resource == resource).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_never_claims_an_enrollment_that_did_not_happen() {
    let node = TestNode::start().await;
    // Revoked between the device's StartPairing and its FinishPairing: refused, no use taken,
    // and no record of an enrollment.
    let created = create_key(&node, &["agents/ci"], 2).await;
    let token = EnrollmentToken::parse(&created.token).unwrap();
    let device = palyra::testkit::DeviceKeys::generate();
    let (mut client, finish) = handshake(&node, &token, &device).await;
    PairingServiceClient::new(node.operator().await)
        .revoke_enrollment_key(pb::RevokeEnrollmentKeyRequest { key_id: created.key_id.clone() })
        .await
        .unwrap();
    let refused = client.finish_pairing(finish).await.unwrap_err();
    assert_eq!(testkit::reason(&refused), "ERROR_REASON_ENROLLMENT_KEY_REVOKED");
    assert!(enrollment_records(&node, &created.key_id).await.is_empty());
    assert_eq!(keys(&node).await[0].uses, 0);

    // The same device identity enrolling twice: the second is refused by the registry after
    // its decision was recorded, and the log says it did not complete.
    let created = create_key(&node, &[], 3).await;
    let token = EnrollmentToken::parse(&created.token).unwrap();
    let keys_once = palyra::testkit::DeviceKeys::generate();
    let (mut client, finish) = handshake(&node, &token, &keys_once).await;
    let first = client.finish_pairing(finish).await.unwrap().into_inner();
    assert_eq!(first.state(), pb::PairingState::Approved, "an enrollment is approved at once");
    let (mut client, finish) = handshake(&node, &token, &keys_once).await;
    client.finish_pairing(finish).await.unwrap_err();
    let records = enrollment_records(&node, &created.key_id).await;
    let decisions: Vec<_> = records.iter().map(|r| r.entry.decision).collect();
    use palyra::audit::AuditDecision::{Allow, Deny};
    assert_eq!(decisions, [Allow, Allow, Deny], "{records:?}");
    assert!(records[2].entry.reason.contains("did not complete"), "{}", records[2].entry.reason);
    let listed = keys(&node).await;
    assert_eq!(listed.iter().find(|k| k.key_id == created.key_id).unwrap().uses, 1);
}
