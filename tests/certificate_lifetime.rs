//! `device_certificate_lifetime_seconds` in `palyra.toml`: a real `palyra serve` issues device
//! certificates of that lifetime at pairing approval (by an operator or an enrollment key) and
//! at renewal, and the CLI renews past two
//! thirds of the lifetime counted from issuance (not from the backdated `notBefore`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, SystemTime};

use palyra::cli::pair::{PairEvent, PairOptions, PairWith, pair};
use palyra::identity::ca::{CLOCK_SKEW_ALLOWANCE, certificate_validity_pem};
use palyra::pairing::{EnrollmentToken, PairingUri};
use palyra::testkit::tls::Pems;
use palyra::testkit::{Palyra, palyra_bin, private_tempdir};
use palyra::wire::pb::pairing::v1::{self as pb, pairing_service_client::PairingServiceClient};
use tokio::sync::mpsc;

const PALYRA: Palyra = palyra_bin!();
const LIFETIME: Duration = Duration::from_secs(12);

/// (issued at, not after) of `dir`'s `client/cert.pem`.
fn validity(data: &Path) -> (SystemTime, SystemTime) {
    let (not_before, not_after) =
        certificate_validity_pem(&std::fs::read(data.join("client/cert.pem")).unwrap()).unwrap();
    (not_before + CLOCK_SKEW_ALLOWANCE, not_after)
}

/// The serve child, killed however the test ends.
struct Killed(palyra::testkit::Serving);

impl Drop for Killed {
    fn drop(&mut self) {
        self.0.kill();
    }
}

fn identity_show(url: &str, data: &Path) -> std::process::Output {
    PALYRA.cli(data).args(["--json", "--server", url, "identity", "show"]).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_lifetime_is_issued_at_approval_and_renewal() {
    palyra::testkit::install_crypto_provider();
    let dir = private_tempdir();
    let node_data = dir.path().join("node");
    palyra::fsutil::ensure_private_dir(&node_data).unwrap();
    std::fs::write(
        node_data.join("palyra.toml"),
        format!("device_certificate_lifetime_seconds = {}\n", LIFETIME.as_secs()),
    )
    .unwrap();
    let serving = Killed(PALYRA.serve(&node_data, "warn"));
    let serving = &serving.0;
    let url = format!("https://{}", serving.grpc);
    let operator = Pems::from_dir(&node_data.join("operator")).channel(serving.grpc).await;

    // Pair a second data dir, approved by the operator.
    let code = PairingServiceClient::new(operator.clone())
        .create_pairing_code(pb::CreatePairingCodeRequest {
            ttl_seconds: None,
            role: String::new(),
            max_attempts: None,
        })
        .await
        .unwrap()
        .into_inner();
    let device = dir.path().join("device");
    let opts = PairOptions {
        server: url.clone(),
        data_dir: device.clone(),
        with: PairWith::Uri(PairingUri::parse(&code.uri).unwrap()),
        name: "agent".into(),
        poll_interval: Duration::from_millis(100),
        wait: Duration::from_secs(20),
    };
    let (tx, mut events) = mpsc::unbounded_channel();
    let pairing = tokio::spawn(async move {
        let mut progress = move |e: PairEvent| {
            let _ = tx.send(e);
        };
        pair(&opts, &|_: &str| false, &mut progress).await.map_err(|e| e.to_string())
    });
    let request_id = loop {
        match tokio::time::timeout(Duration::from_secs(20), events.recv()).await.unwrap() {
            Some(PairEvent::Pending { request_id, .. }) => break request_id,
            Some(_) => {}
            None => panic!("pairing ended before it was pending: {:?}", pairing.await),
        }
    };
    PairingServiceClient::new(operator.clone())
        .approve_pairing(pb::ApprovePairingRequest { request_id, role: String::new(), scopes: vec![] })
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), pairing).await.unwrap().unwrap().unwrap();

    // At approval: the configured lifetime, counted from issuance.
    let (issued, not_after) = validity(&device);
    assert_eq!(not_after.duration_since(issued).unwrap(), LIFETIME);

    // Approved at once with an enrollment key: the same lifetime.
    let key = PairingServiceClient::new(operator)
        .create_enrollment_key(pb::CreateEnrollmentKeyRequest {
            role: String::new(),
            scopes: vec![],
            max_uses: Some(1),
            ttl_seconds: None,
        })
        .await
        .unwrap()
        .into_inner();
    let enrolled = dir.path().join("enrolled");
    let opts = PairOptions {
        server: url.clone(),
        data_dir: enrolled.clone(),
        with: PairWith::Enrollment(EnrollmentToken::parse(&key.token).unwrap()),
        name: "enrolled".into(),
        poll_interval: Duration::from_millis(100),
        wait: Duration::from_secs(20),
    };
    pair(&opts, &|_: &str| false, &mut |_| {}).await.unwrap();
    let (enrolled_issued, enrolled_not_after) = validity(&enrolled);
    assert_eq!(enrolled_not_after.duration_since(enrolled_issued).unwrap(), LIFETIME);

    // Fresh: the CLI leaves it alone (counted from the backdated notBefore, 300 of 312 s would
    // look gone and every command would renew).
    let first = std::fs::read(device.join("client/cert.pem")).unwrap();
    let out = identity_show(&url, &device);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("renewed"));
    assert_eq!(std::fs::read(device.join("client/cert.pem")).unwrap(), first);

    // Past two thirds of it (8 of 12 s; this waits for the clock, nothing else): renewed, with
    // the configured lifetime again.
    let due = issued + LIFETIME * 2 / 3 + Duration::from_millis(500);
    tokio::time::sleep(due.duration_since(SystemTime::now()).unwrap_or_default()).await;
    let out = identity_show(&url, &device);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("renewed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (renewed_issued, renewed_not_after) = validity(&device);
    assert!(renewed_issued > issued, "a new certificate");
    assert_eq!(renewed_not_after.duration_since(renewed_issued).unwrap(), LIFETIME);
}
