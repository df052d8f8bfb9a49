//! Pairing end to end over real mTLS: a node (TestNode) and a second data dir that pairs with
//! it through `palyra::cli::pair::pair`, the same function `palyra pair` runs. Approval goes
//! through the gRPC API as `palyra pairing approve` does. Renewal before and after expiry is
//! covered by tests/grpc_policy_audit.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use palyra::cli::pair::{PairEvent, PairOptions, PairWith, Paired, pair};
use palyra::identity::{DeviceIdentity, Role};
use palyra::pairing::handshake::{StartReply, StatusPoll};
use palyra::pairing::{CodeId, CodeState, DeviceName, DevicePairing, PairingUri, Pin};
use palyra::testkit::tls::Pems;
use palyra::testkit::{self, DeviceKeys, NodeInternals, TestNode, private_tempdir, reason};
use palyra::wire::pb::identity::v1::{self as pbi, identity_service_client::IdentityServiceClient};
use palyra::wire::pb::pairing::v1::{self as pb, pairing_service_client::PairingServiceClient};
use palyra::wire::pb::vault::v1::{self as pbv, vault_service_client::VaultServiceClient};
use tokio::sync::mpsc;
use tonic::Code;
use tonic::transport::Channel;

async fn new_code(node: &TestNode, role: &str) -> pb::CreatePairingCodeResponse {
    PairingServiceClient::new(node.operator().await)
        .create_pairing_code(pb::CreatePairingCodeRequest {
            ttl_seconds: None,
            role: role.into(),
            max_attempts: None,
        })
        .await
        .unwrap()
        .into_inner()
}

fn options(node: &TestNode, data_dir: &Path, with: PairWith) -> PairOptions {
    PairOptions {
        server: node.url(),
        data_dir: data_dir.to_path_buf(),
        with,
        name: "phone".into(),
        poll_interval: Duration::from_millis(100),
        wait: Duration::from_secs(20),
    }
}

fn by_code(node: &TestNode, code: &pb::CreatePairingCodeResponse, pin: &str) -> PairWith {
    PairWith::Code {
        code_id: CodeId::parse(&code.code_id).unwrap(),
        pin: Pin::parse(pin).unwrap(),
        ca_fingerprint: Some(node.node.identity().ca().fingerprint().to_owned()),
    }
}

/// Runs `pair` in a task; returns its handle and the request id once it is pending.
async fn start_pairing(
    opts: PairOptions,
) -> (tokio::task::JoinHandle<Result<Paired, String>>, mpsc::UnboundedReceiver<PairEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut progress = move |e: PairEvent| {
            let _ = tx.send(e);
        };
        pair(&opts, &|_: &str| false, &mut progress).await.map_err(|e| e.to_string())
    });
    (task, rx)
}

async fn pending_request(events: &mut mpsc::UnboundedReceiver<PairEvent>) -> (String, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), events.recv()).await.unwrap() {
            Some(PairEvent::Pending { request_id, fingerprint }) => return (request_id, fingerprint),
            Some(_) => {}
            None => panic!("pairing ended before it was pending"),
        }
    }
}

async fn device_channel(node: &TestNode, dir: &Path) -> Channel {
    testkit::tls::channel_from_dir(node.addr, &dir.join("client")).await
}

async fn approve(node: &TestNode, request_id: &str, scopes: &[&str]) -> pb::PairingRequest {
    PairingServiceClient::new(node.operator().await)
        .approve_pairing(pb::ApprovePairingRequest {
            request_id: request_id.into(),
            role: String::new(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap()
}

fn put(scope: &str, key: &str) -> pbv::PutSecretRequest {
    pbv::PutSecretRequest {
        scope: scope.into(),
        key: key.into(),
        value: b"v".to_vec(),
        expected_version: None,
    }
}

/// Pairs a fresh data dir by code (or URI), approves with `scopes`, returns the dir and the id.
async fn pair_and_approve(
    node: &TestNode,
    use_uri: bool,
    scopes: &[&str],
) -> (tempfile::TempDir, PathBuf, String) {
    let code = new_code(node, "").await;
    let dir = private_tempdir();
    let data = dir.path().join("device");
    let with = if use_uri {
        PairWith::Uri(PairingUri::parse(&code.uri).unwrap())
    } else {
        by_code(node, &code, &code.pin)
    };
    let (task, mut events) = start_pairing(options(node, &data, with)).await;
    let (request_id, fingerprint) = pending_request(&mut events).await;

    let listed = PairingServiceClient::new(node.operator().await)
        .list_pairing_requests(pb::ListPairingRequestsRequest {
            state: Some(pb::PairingState::Pending as i32),
        })
        .await
        .unwrap()
        .into_inner()
        .requests;
    let shown = listed.iter().find(|r| r.request_id == request_id).expect("the request is listed");
    assert_eq!(
        (shown.device_name.as_str(), shown.fingerprint.as_str(), shown.role.as_str()),
        ("phone", fingerprint.as_str(), "device")
    );
    assert!(shown.peer_address.starts_with("127.0.0.1:"), "{}", shown.peer_address);

    let approved = approve(node, &request_id, scopes).await;
    assert_eq!(approved.state(), pb::PairingState::Approved);
    let paired = task.await.unwrap().unwrap();
    assert_eq!(paired.device_id, approved.device_id);
    assert_eq!(paired.fingerprint, fingerprint);
    (dir, data, paired.device_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_by_code_then_use_own_scope_only() {
    let node = TestNode::start().await;
    let (_dir, data, id) = pair_and_approve(&node, false, &["agents/alpha"]).await;
    let client = data.join("client");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["key.pem", "identity.key"] {
            assert_eq!(std::fs::metadata(client.join(f)).unwrap().permissions().mode() & 0o777, 0o600, "{f}");
        }
    }
    let channel = device_channel(&node, &data).await;
    let who = IdentityServiceClient::new(channel.clone())
        .who_am_i(pbi::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (who.principal_type.as_str(), who.device_id.as_str(), who.role.as_str()),
        ("Device", id.as_str(), "device")
    );

    let mut vault = VaultServiceClient::new(channel.clone());
    let own = format!("devices/{id}");
    vault.put_secret(put(&own, "token")).await.unwrap();
    let got = vault
        .get_secret(pbv::GetSecretRequest { scope: own.clone(), key: "token".into(), version: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.value, b"v");
    vault.put_secret(put("agents/alpha", "granted")).await.unwrap();

    let other = node.add_device(Role::Device, "laptop", &[]).await;
    let denied = vault.put_secret(put(&format!("devices/{}", other.id), "x")).await.unwrap_err();
    assert_eq!(
        (denied.code(), reason(&denied).as_str()),
        (Code::PermissionDenied, "ERROR_REASON_POLICY_DENIED")
    );
    let admin = IdentityServiceClient::new(channel.clone())
        .list_devices(pbi::ListDevicesRequest {})
        .await
        .unwrap_err();
    assert_eq!(admin.code(), Code::PermissionDenied);
    let code = PairingServiceClient::new(channel.clone())
        .create_pairing_code(pb::CreatePairingCodeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(code.code(), Code::PermissionDenied);

    // A second pairing into the same data dir is refused locally.
    let again = new_code(&node, "").await;
    let err = pair(&options(&node, &data, by_code(&node, &again, &again.pin)), &|_: &str| false, &mut |_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already paired"), "{err}");

    // Revocation: the next request is refused.
    IdentityServiceClient::new(node.operator().await)
        .revoke_device(pbi::RevokeDeviceRequest { device_id: id.clone(), reason: "lost".into() })
        .await
        .unwrap();
    let refused = vault.put_secret(put(&own, "token")).await.unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::Unauthenticated, "ERROR_REASON_DEVICE_REVOKED")
    );

    // Every step is in the event log, in order, and no PIN in any of it.
    let mut subscription = node.node.events().subscribe(0, Vec::new()).await.unwrap();
    let mut seen = Vec::new();
    while let Some(event) = subscription.next_ready().await.unwrap() {
        assert!(!format!("{event:?}").contains(&again.pin), "a PIN reached the event log");
        seen.push(event.kind.clone());
    }
    let pairing: Vec<&str> = seen
        .iter()
        .map(String::as_str)
        .filter(|k| k.starts_with("pairing.") || *k == "device.revoked")
        .collect();
    assert_eq!(pairing, ["pairing.requested", "pairing.approved", "device.revoked"], "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_by_uri_and_the_code_is_single_use() {
    let node = TestNode::start().await;
    let code = new_code(&node, "node").await;
    assert_eq!(code.role, "node");
    let uri = PairingUri::parse(&code.uri).unwrap();
    assert_eq!(uri.server, node.addr.to_string());
    assert_eq!(uri.ca_fingerprint, node.node.identity().ca().fingerprint());

    let dir = private_tempdir();
    let data = dir.path().join("device");
    let (task, mut events) = start_pairing(options(&node, &data, PairWith::Uri(uri.clone()))).await;
    let (request_id, _) = pending_request(&mut events).await;
    let approved = approve(&node, &request_id, &[]).await;
    assert_eq!(approved.role, "node");
    let paired = task.await.unwrap().unwrap();
    let who = IdentityServiceClient::new(device_channel(&node, &data).await)
        .who_am_i(pbi::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((who.device_id, who.role), (paired.device_id, "node".to_owned()));

    // The same URI again: the code is used up.
    let dir2 = private_tempdir();
    let err =
        pair(&options(&node, &dir2.path().join("d"), PairWith::Uri(uri)), &|_: &str| false, &mut |_| {})
            .await
            .unwrap_err()
            .to_string();
    assert!(err.contains("ERROR_REASON_PAIRING_CODE_INVALID"), "{err}");
    // Approving twice is refused.
    let twice = PairingServiceClient::new(node.operator().await)
        .approve_pairing(pb::ApprovePairingRequest { request_id, role: String::new(), scopes: vec![] })
        .await
        .unwrap_err();
    assert_eq!(reason(&twice), "ERROR_REASON_PAIRING_REQUEST_NOT_PENDING");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uri_with_another_ca_is_refused_before_anything_is_sent() {
    let node = TestNode::start().await;
    let code = new_code(&node, "").await;
    let mut uri = PairingUri::parse(&code.uri).unwrap();
    uri.ca_fingerprint = "0".repeat(64);
    let dir = private_tempdir();
    let err = pair(&options(&node, &dir.path().join("d"), PairWith::Uri(uri)), &|_: &str| true, &mut |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match"), "{err}");
    // Nothing was sent: the code still has all its attempts.
    let stored = node.pairing_code(&CodeId::parse(&code.code_id).unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.attempts_left, 5);
    // By code without a fingerprint, a refused confirmation stops it too.
    let with = PairWith::Code {
        code_id: CodeId::parse(&code.code_id).unwrap(),
        pin: Pin::parse(&code.pin).unwrap(),
        ca_fingerprint: None,
    };
    let err =
        pair(&options(&node, &dir.path().join("d"), with), &|_: &str| false, &mut |_| {}).await.unwrap_err();
    assert!(err.to_string().contains("not confirmed"), "{err}");
}

fn wrong_pin(pin: &str) -> String {
    let n: u32 = pin.parse().unwrap();
    format!("{:06}", (n + 1) % 1_000_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_wrong_pins_burn_the_code() {
    let node = TestNode::start().await;
    let code = new_code(&node, "").await;
    let bad = wrong_pin(&code.pin);
    let dir = private_tempdir();
    // Four wrong PINs through `palyra pair`: the device itself sees the node's confirmation fail.
    for i in 0..4 {
        let err = pair(
            &options(&node, &dir.path().join(format!("d{i}")), by_code(&node, &code, &bad)),
            &|_: &str| false,
            &mut |_| {},
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("wrong PIN or impostor node"), "{err}");
    }
    // The fifth by hand, pressing on to FinishPairing as an attacker would.
    let channel = node.channel(None).await;
    let mut client = PairingServiceClient::new(channel);
    let DeviceKeys { identity, csr_pem, .. } = DeviceKeys::generate();
    let (_, start) = DevicePairing::start(
        &identity,
        CodeId::parse(&code.code_id).unwrap(),
        &Pin::parse(&bad).unwrap(),
        node.node.identity().ca().fingerprint(),
        DeviceName::parse("mallory").unwrap(),
        &csr_pem,
    )
    .unwrap();
    let reply = client
        .start_pairing(pb::StartPairingRequest {
            code_id: code.code_id.clone(),
            device_name: "mallory".into(),
            signing_public_key: start.signing_public_key.to_vec(),
            agreement_public_key: start.agreement_public_key.to_vec(),
            csr_pem: csr_pem.clone(),
            pake_message: start.pake_message.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let finish = client
        .finish_pairing(pb::FinishPairingRequest {
            session_id: reply.session_id.clone(),
            client_confirmation: vec![0; 32],
            signature: vec![0; 64],
        })
        .await
        .unwrap_err();
    assert_eq!(
        (finish.code(), reason(&finish).as_str()),
        (Code::FailedPrecondition, "ERROR_REASON_PAIRING_ATTEMPTS_EXHAUSTED")
    );
    // The session is gone: a replay is refused.
    let replay = client
        .finish_pairing(pb::FinishPairingRequest {
            session_id: reply.session_id,
            client_confirmation: vec![0; 32],
            signature: vec![0; 64],
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&replay), "ERROR_REASON_PAIRING_SESSION_EXPIRED");
    // Burned: the right PIN no longer helps, and the sealed PIN is gone.
    let err = pair(
        &options(&node, &dir.path().join("ok"), by_code(&node, &code, &code.pin)),
        &|_: &str| false,
        &mut |_| {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("ERROR_REASON_PAIRING_ATTEMPTS_EXHAUSTED"), "{err}");
    let stored = node.pairing_code(&CodeId::parse(&code.code_id).unwrap()).await.unwrap().unwrap();
    assert_eq!((stored.state, stored.sealed_pin, stored.attempts_left), (CodeState::Burned, None, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_finish_reports_attempts_left() {
    let node = TestNode::start().await;
    let code = new_code(&node, "").await;
    let mut client = PairingServiceClient::new(node.channel(None).await);
    let DeviceKeys { identity, csr_pem, .. } = DeviceKeys::generate();
    let (_, start) = DevicePairing::start(
        &identity,
        CodeId::parse(&code.code_id).unwrap(),
        &Pin::parse(&code.pin).unwrap(),
        node.node.identity().ca().fingerprint(),
        DeviceName::parse("x").unwrap(),
        &csr_pem,
    )
    .unwrap();
    let reply = client
        .start_pairing(pb::StartPairingRequest {
            code_id: code.code_id.clone(),
            device_name: "x".into(),
            signing_public_key: start.signing_public_key.to_vec(),
            agreement_public_key: start.agreement_public_key.to_vec(),
            csr_pem,
            pake_message: start.pake_message.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let err = client
        .finish_pairing(pb::FinishPairingRequest {
            session_id: reply.session_id,
            client_confirmation: vec![0; 32],
            signature: vec![0; 64],
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Unauthenticated, "ERROR_REASON_PAIRING_PROOF_INVALID")
    );
    use tonic_types::StatusExt;
    let left = err.get_error_details().error_info().and_then(|i| i.metadata.get("attempts_left").cloned());
    assert_eq!(left.as_deref(), Some("4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_request_never_yields_a_certificate() {
    let node = TestNode::start().await;
    let code = new_code(&node, "").await;
    let dir = private_tempdir();
    let data = dir.path().join("device");
    let (task, mut events) = start_pairing(options(&node, &data, by_code(&node, &code, &code.pin))).await;
    let (request_id, _) = pending_request(&mut events).await;
    let rejected = PairingServiceClient::new(node.operator().await)
        .reject_pairing(pb::RejectPairingRequest {
            request_id: request_id.clone(),
            reason: "unknown device".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(rejected.state(), pb::PairingState::Rejected);
    let err = task.await.unwrap().unwrap_err();
    assert!(err.contains("rejected"), "{err}");
    assert!(!data.join("client/cert.pem").exists());

    // Polling by hand, signed with the device's key: REJECTED and no certificate, ever.
    let bytes = std::fs::read(data.join("client/identity.key")).unwrap();
    let identity = DeviceIdentity::from_bytes(&bytes).unwrap();
    let mut client = PairingServiceClient::new(node.channel(None).await);
    // Let the device's last polls leave the 4-per-second window.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let poll = StatusPoll::sign(&identity, &request_id, SystemTime::now());
    let status = client
        .get_pairing_status(pb::GetPairingStatusRequest {
            request_id: request_id.clone(),
            timestamp_unix_ms: poll.timestamp_unix_ms,
            signature: poll.signature.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.state(), pb::PairingState::Rejected);
    assert!(status.certificate_pem.is_empty() && status.device_id.is_empty());
    // Approving it afterwards is refused.
    let late = PairingServiceClient::new(node.operator().await)
        .approve_pairing(pb::ApprovePairingRequest {
            request_id: request_id.clone(),
            role: String::new(),
            scopes: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&late), "ERROR_REASON_PAIRING_REQUEST_NOT_PENDING");
    // Someone else's key cannot poll; an old timestamp is skew.
    let stranger = DeviceIdentity::generate().unwrap();
    let forged = StatusPoll::sign(&stranger, &request_id, SystemTime::now());
    let err = client
        .get_pairing_status(pb::GetPairingStatusRequest {
            request_id: request_id.clone(),
            timestamp_unix_ms: forged.timestamp_unix_ms,
            signature: forged.signature.to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Unauthenticated, "ERROR_REASON_PAIRING_PROOF_INVALID")
    );
    let old = StatusPoll::sign(&identity, &request_id, SystemTime::now() - Duration::from_secs(120));
    let err = client
        .get_pairing_status(pb::GetPairingStatusRequest {
            request_id,
            timestamp_unix_ms: old.timestamp_unix_ms,
            signature: old.signature.to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "ERROR_REASON_CLOCK_SKEW");

    let mut subscription = node.node.events().subscribe(0, vec!["pairing.rejected".into()]).await.unwrap();
    assert!(subscription.next_ready().await.unwrap().is_some(), "the rejection is in the event log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_are_rate_limited_per_address() {
    let node = TestNode::start().await;
    let mut client = PairingServiceClient::new(node.channel(None).await);
    // Garbage is refused before any limit is charged: it spends nothing.
    for _ in 0..30 {
        let err = client.start_pairing(pb::StartPairingRequest::default()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
    // Well-formed starts (here on a made-up code) spend the address's 10 a minute.
    let DeviceKeys { identity, csr_pem, .. } = DeviceKeys::generate();
    let well_formed = pb::StartPairingRequest {
        code_id: "ABCDEFGHJK".into(),
        device_name: "phone".into(),
        signing_public_key: identity.signing_public_key().to_vec(),
        agreement_public_key: identity.agreement_public_key().to_vec(),
        csr_pem,
        pake_message: vec![0; 33],
    };
    for _ in 0..10 {
        let err = client.start_pairing(well_formed.clone()).await.unwrap_err();
        assert_eq!(reason(&err), "ERROR_REASON_PAIRING_CODE_INVALID");
    }
    let err = client.start_pairing(well_formed).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::ResourceExhausted, "ERROR_REASON_RATE_LIMITED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_ends_open_streams_within_a_second() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let node = TestNode::start().await;
    let phone = node.add_device(Role::Device, "phone", &[]).await;
    let bystander = node.add_device(Role::Device, "laptop", &[]).await;
    let mut watch = HealthClient::new(node.channel(Some(&phone)).await)
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    let mut other = HealthClient::new(node.channel(Some(&bystander)).await)
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some());
    assert!(other.message().await.unwrap().is_some());

    IdentityServiceClient::new(node.operator().await)
        .revoke_device(pbi::RevokeDeviceRequest { device_id: phone.id.to_string(), reason: "stolen".into() })
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(1), watch.message())
        .await
        .expect("the stream ended within a second");
    let status = ended.unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::Unauthenticated, "ERROR_REASON_DEVICE_REVOKED")
    );
    // Another device's stream stays open.
    assert!(tokio::time::timeout(Duration::from_millis(300), other.message()).await.is_err());
}

/// A device driven by hand (as `palyra pair` does it), between StartPairing and FinishPairing.
struct HandPairing {
    identity: DeviceIdentity,
    key_pem: String,
    machine: DevicePairing,
    reply: pb::StartPairingResponse,
}

async fn start_by_hand(node: &TestNode, code: &pb::CreatePairingCodeResponse) -> HandPairing {
    let DeviceKeys { identity, key_pem, csr_pem } = DeviceKeys::generate();
    let (machine, start) = DevicePairing::start(
        &identity,
        CodeId::parse(&code.code_id).unwrap(),
        &Pin::parse(&code.pin).unwrap(),
        node.node.identity().ca().fingerprint(),
        DeviceName::parse("tablet").unwrap(),
        &csr_pem,
    )
    .unwrap();
    let reply = PairingServiceClient::new(node.channel(None).await)
        .start_pairing(pb::StartPairingRequest {
            code_id: code.code_id.clone(),
            device_name: "tablet".into(),
            signing_public_key: start.signing_public_key.to_vec(),
            agreement_public_key: start.agreement_public_key.to_vec(),
            csr_pem,
            pake_message: start.pake_message.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    HandPairing { identity, key_pem, machine, reply }
}

impl HandPairing {
    /// Checks the node's confirmation and returns the FinishPairing request.
    fn finish(&mut self) -> pb::FinishPairingRequest {
        let r = &self.reply;
        let reply = StartReply::decode(
            &r.session_id,
            &r.pake_message,
            &r.server_confirmation,
            SystemTime::now() + Duration::from_secs(60),
        )
        .unwrap();
        let finish = self.machine.handle_reply(&self.identity, &reply, SystemTime::now()).unwrap();
        pb::FinishPairingRequest {
            session_id: finish.session_id,
            client_confirmation: finish.client_confirmation.to_vec(),
            signature: finish.signature.to_vec(),
        }
    }
}

/// The node's database, opened beside it (WAL: concurrent access is fine).
fn db(node: &TestNode) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(node.db_path()).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c
}

fn stored_sessions(node: &TestNode) -> i64 {
    db(node).query_row("SELECT count(*) FROM pairing_sessions", [], |r| r.get(0)).unwrap()
}

/// Issue 4: a handshake started before a restart finishes after it; the device is approved and
/// works; the session is single use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_survives_a_restart_and_is_single_use() {
    let node = TestNode::start().await;
    let code = new_code(&node, "").await;
    let mut device = start_by_hand(&node, &code).await;
    let finish = device.finish();
    // At rest the session is sealed: neither the expected confirmation nor the name shows.
    let sealed: Vec<u8> = db(&node)
        .query_row(
            "SELECT sealed_state FROM pairing_sessions WHERE session_id = ?1",
            [&device.reply.session_id],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!sealed.windows(32).any(|w| w == finish.client_confirmation.as_slice()));
    assert!(!sealed.windows(6).any(|w| w == b"tablet"));

    let data = node.data_dir();
    let (dir, old) = node.stop().await;
    old.close_db();
    drop(old);
    let node = TestNode::start_in(dir, &data).await;

    let mut client = PairingServiceClient::new(node.channel(None).await);
    let done = client.finish_pairing(finish.clone()).await.unwrap().into_inner();
    assert_eq!(done.state(), pb::PairingState::Pending);
    assert_eq!(stored_sessions(&node), 0);
    // A replay of the successful finish is refused.
    let replay = client.finish_pairing(finish).await.unwrap_err();
    assert_eq!(
        (replay.code(), reason(&replay).as_str()),
        (Code::FailedPrecondition, "ERROR_REASON_PAIRING_SESSION_EXPIRED")
    );

    let approved = approve(&node, &done.request_id, &["agents/alpha"]).await;
    let poll = StatusPoll::sign(&device.identity, &done.request_id, SystemTime::now());
    let status = client
        .get_pairing_status(pb::GetPairingStatusRequest {
            request_id: done.request_id.clone(),
            timestamp_unix_ms: poll.timestamp_unix_ms,
            signature: poll.signature.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (status.state(), status.device_id.as_str()),
        (pb::PairingState::Approved, approved.device_id.as_str())
    );
    let pems = Pems {
        ca: status.ca_certificate_pem.clone(),
        client: Some((status.certificate_pem.clone(), device.key_pem.clone())),
    };
    let channel = pems.channel(node.addr).await;
    let who = IdentityServiceClient::new(channel.clone())
        .who_am_i(pbi::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((who.device_id.as_str(), who.role.as_str()), (approved.device_id.as_str(), "device"));
    VaultServiceClient::new(channel).put_secret(put("agents/alpha", "after-restart")).await.unwrap();
}

/// An expired session is refused (and gone), even if its sealed state says otherwise; a sealed
/// state moved to another session's row does not open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_moved_sessions_are_refused() {
    let node = TestNode::start().await;
    let code = new_code(&node, "").await;
    let mut late = start_by_hand(&node, &code).await;
    db(&node)
        .execute("UPDATE pairing_sessions SET expires_at = 1 WHERE session_id = ?1", [&late.reply.session_id])
        .unwrap();
    let mut client = PairingServiceClient::new(node.channel(None).await);
    let err = client.finish_pairing(late.finish()).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::FailedPrecondition, "ERROR_REASON_PAIRING_SESSION_EXPIRED")
    );
    assert_eq!(stored_sessions(&node), 0);

    // Expired rows are pruned by the next start.
    let mut a = start_by_hand(&node, &code).await;
    db(&node).execute("UPDATE pairing_sessions SET expires_at = 1", []).unwrap();
    let mut b = start_by_hand(&node, &code).await;
    assert_eq!(stored_sessions(&node), 1);
    let err = client.finish_pairing(a.finish()).await.unwrap_err();
    assert_eq!(reason(&err), "ERROR_REASON_PAIRING_SESSION_EXPIRED");

    // b's sealed state put under another session id: refused as an integrity failure, and the
    // row is gone.
    let moved = "0123456789abcdef0123456789abcdef";
    db(&node).execute("UPDATE pairing_sessions SET session_id = ?1", [moved]).unwrap();
    let err = client
        .finish_pairing(pb::FinishPairingRequest { session_id: moved.into(), ..b.finish() })
        .await
        .unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::DataLoss, "ERROR_REASON_INTEGRITY"));
    assert_eq!(stored_sessions(&node), 0);
}
