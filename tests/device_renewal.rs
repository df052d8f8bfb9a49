//! A paired device's CLI renews its certificate by itself: over mTLS once two thirds of the
//! lifetime have passed, and with the Ed25519 proof after it expired (no re-pairing). A
//! revoked device cannot renew.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::TestNode;
use palyra::identity::ca::{certificate_validity_pem, generate_tls_key_and_csr};
use palyra::identity::{Device, DeviceIdentity, DeviceStatus, Role};

/// Registers a device and writes its `client/` as `palyra pair` would, with a certificate
/// issued `issued_ago` ago for `lifetime`.
async fn device_dir(node: &TestNode, data: &Path, issued_ago: Duration, lifetime: Duration) -> Device {
    let identity = DeviceIdentity::generate().unwrap();
    let id = identity.id();
    let (key_pem, csr_pem) = generate_tls_key_and_csr(id).unwrap();
    let issued_at = SystemTime::now() - issued_ago;
    let cert = node
        .node
        .identity
        .ca()
        .issue_client_certificate(&csr_pem, id, Role::Device, lifetime, issued_at)
        .unwrap();
    let device = Device {
        id,
        name: "phone".into(),
        fingerprint: identity.fingerprint(),
        signing_public_key: identity.signing_public_key(),
        role: Role::Device,
        status: DeviceStatus::Active,
        paired_at: issued_at,
        certificate_expires_at: cert.not_after,
        revoked_at: None,
        revoke_reason: None,
        scopes: Vec::new(),
    };
    node.node.core.store.insert_device(&device).await.unwrap();
    let client = data.join("client");
    palyra::fsutil::write_private_atomic(&client.join("identity.key"), &identity.to_bytes(), false).unwrap();
    palyra::fsutil::write_private_atomic(&client.join("key.pem"), key_pem.as_bytes(), false).unwrap();
    palyra::fsutil::write_private_atomic(&client.join("cert.pem"), cert.cert_pem.as_bytes(), true).unwrap();
    palyra::fsutil::write_private_atomic(
        &client.join("ca.pem"),
        node.node.identity.ca().certificate_pem().as_bytes(),
        false,
    )
    .unwrap();
    device
}

fn identity_show(node: &TestNode, data: &Path) -> std::process::Output {
    let data = data.to_owned();
    let url = node.url();
    // The CLI is a separate process, as on a real device.
    std::thread::spawn(move || {
        Command::new(env!("CARGO_BIN_EXE_palyra"))
            .args(["--json", "--server", &url, "--data-dir"])
            .arg(&data)
            .args(["identity", "show"])
            .env("PALYRA_LOG", "off")
            .output()
            .unwrap()
    })
    .join()
    .unwrap()
}

fn not_after(data: &Path) -> SystemTime {
    certificate_validity_pem(&std::fs::read(data.join("client/cert.pem")).unwrap()).unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_certificate_is_renewed_over_mtls_and_an_expired_one_with_a_proof() {
    let node = TestNode::start().await;
    let hour = Duration::from_secs(3600);

    // Due: 50 of 60 minutes gone.
    let dir = common::private_tempdir();
    let due = device_dir(&node, dir.path(), 50 * Duration::from_secs(60), hour).await;
    let before = not_after(dir.path());
    let out = identity_show(&node, dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("renewed"));
    let caller: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(caller["caller"]["device_id"], due.id.to_string());
    assert!(
        not_after(dir.path()) > before + Duration::from_secs(20 * 24 * 3600),
        "a fresh 30-day certificate"
    );
    // Not due any more: left alone.
    let renewed = std::fs::read(dir.path().join("client/cert.pem")).unwrap();
    assert!(identity_show(&node, dir.path()).status.success());
    assert_eq!(std::fs::read(dir.path().join("client/cert.pem")).unwrap(), renewed);

    // Expired an hour ago: renewed anonymously with the Ed25519 proof.
    let dir = common::private_tempdir();
    let expired = device_dir(&node, dir.path(), 2 * hour, hour).await;
    let out = identity_show(&node, dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let caller: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(caller["caller"]["device_id"], expired.id.to_string());
    assert!(not_after(dir.path()) > SystemTime::now() + Duration::from_secs(20 * 24 * 3600));

    // Revoked and expired: no renewal, and the error says why.
    let dir = common::private_tempdir();
    let revoked = device_dir(&node, dir.path(), 2 * hour, hour).await;
    node.node.core.store.revoke_device(revoked.id, "lost", SystemTime::now()).await.unwrap();
    let out = identity_show(&node, dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ERROR_REASON_DEVICE_REVOKED"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    node.stop().await;
}
