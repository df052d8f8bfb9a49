//! A paired device's CLI renews its certificate by itself: over mTLS once two thirds of the
//! lifetime have passed, and with the Ed25519 proof after it expired (no re-pairing). A
//! revoked device cannot renew.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, SystemTime};

use palyra::identity::ca::certificate_validity_pem;
use palyra::identity::{Device, Role};
use palyra::testkit::{self, Minting, NodeInternals, Palyra, TestNode, palyra_bin};

const PALYRA: Palyra = palyra_bin!();

/// Registers a device and writes its `client/` as `palyra pair` would, with a certificate
/// issued `issued_ago` ago for `lifetime`.
async fn device_dir(node: &TestNode, data: &Path, issued_ago: Duration, lifetime: Duration) -> Device {
    let minting = Minting {
        issued_at: SystemTime::now() - issued_ago,
        lifetime,
        ..Minting::new(Role::Device, "phone", &[])
    };
    let (creds, device) = testkit::mint_with(&node.node, &minting).await;
    let client = data.join("client");
    palyra::fsutil::write_private_atomic(&client.join("identity.key"), &creds.identity.to_bytes(), false)
        .unwrap();
    palyra::fsutil::write_private_atomic(&client.join("key.pem"), creds.key_pem.as_bytes(), false).unwrap();
    palyra::fsutil::write_private_atomic(&client.join("cert.pem"), creds.cert_pem.as_bytes(), true).unwrap();
    palyra::fsutil::write_private_atomic(
        &client.join("ca.pem"),
        node.node.identity().ca().certificate_pem().as_bytes(),
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
        PALYRA.cli(&data).args(["--json", "--server", &url, "identity", "show"]).output().unwrap()
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
    let dir = testkit::private_tempdir();
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
    let dir = testkit::private_tempdir();
    let expired = device_dir(&node, dir.path(), 2 * hour, hour).await;
    let out = identity_show(&node, dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let caller: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(caller["caller"]["device_id"], expired.id.to_string());
    assert!(not_after(dir.path()) > SystemTime::now() + Duration::from_secs(20 * 24 * 3600));

    // Revoked and expired: no renewal, exit 3 (denied), and the error says why.
    let dir = testkit::private_tempdir();
    let revoked = device_dir(&node, dir.path(), 2 * hour, hour).await;
    node.revoke(revoked.id, "lost").await.unwrap();
    let out = identity_show(&node, dir.path());
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ERROR_REASON_DEVICE_REVOKED"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    node.stop().await;
}
