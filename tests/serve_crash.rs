//! `palyra serve` as a child process, under concurrent PutSecret (several clients), RotateKey
//! and full pairings (code → SPAKE2 handshake by `palyra::cli::pair::pair` → approval), killed
//! with SIGKILL at random moments over many rounds. Some rounds kill it while it starts.
//!
//! After each kill, before the restart: `PRAGMA integrity_check` on a copy of the database and
//! its WAL (what the next start recovers; the original is left for the server to recover).
//! After each restart, through the node's own APIs: every acknowledged PutSecret reads back
//! with its exact value at its version, every acknowledged approval is an ACTIVE device,
//! VerifyAuditLog is ok, and the event log read over QUIC (`node.stream_events`) is dense up to
//! the last event on disk and holds the event of every acknowledged write, rotation and
//! approval.
//!
//! `PALYRA_CRASH_ROUNDS` (default 20) sets the rounds and `PALYRA_CRASH_SEED` replays a run.
//! tests/crash_recovery.rs does the same at the store level, in-process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palyra::cli::pair::{PairEvent, PairOptions, PairWith, pair};
use palyra::pairing::PairingUri;
use palyra::quic::client::QuicClient;
use palyra::testkit::tls::Pems;
use palyra::testkit::{self, Palyra, Rng, Serving, palyra_bin, private_tempdir};
use palyra::wire::pb::audit::v1::{self as pba, audit_service_client::AuditServiceClient};
use palyra::wire::pb::identity::v1::{self as pbi, identity_service_client::IdentityServiceClient};
use palyra::wire::pb::pairing::v1::{self as pbp, pairing_service_client::PairingServiceClient};
use palyra::wire::pb::vault::v1::{self as pbv, vault_service_client::VaultServiceClient};
use tokio::sync::mpsc;
use tonic::transport::Channel;

const SCOPE: &str = "crash/serve";
const WRITERS: usize = 6;
const KEYS_PER_WRITER: usize = 8;
/// StartPairing is limited to 10 a minute per address; the limiter lives in memory and each
/// round is a new process, so a round stays under it.
const PAIRINGS_PER_ROUND: usize = 6;

const PALYRA: Palyra = palyra_bin!();

/// Starts `palyra serve`; returns it with its addresses once it announces them, or `None` if
/// it did not get that far (it was killed while starting, by `kill_at`).
fn spawn_serve(data: &Path, kill_at: Option<Duration>) -> Option<Serving> {
    let Some(delay) = kill_at else { return Some(PALYRA.serve(data, "warn")) };
    let mut child = PALYRA.serve_command(data, "warn").spawn().unwrap();
    std::thread::sleep(delay);
    child.kill().unwrap();
    child.wait().unwrap();
    None
}

async fn operator_channel(data: &Path, grpc: SocketAddr) -> Channel {
    testkit::tls::channel_from_dir(grpc, &data.join("operator")).await
}

/// What the clients were told succeeded: the server replied OK before it was killed.
#[derive(Default)]
struct Acked {
    /// (key, version) → value.
    puts: BTreeMap<(String, u64), Vec<u8>>,
    /// Rotations to these generations.
    generations: BTreeSet<u32>,
    /// Approved device ids.
    devices: BTreeSet<String>,
}

enum Ack {
    Put { key: String, version: u64, value: Vec<u8> },
    Rotated(u32),
    Approved(String),
}

/// A failure of a call made before the kill: a real error, not the crash.
fn unexpected(killed: &AtomicBool, what: &str, e: impl std::fmt::Display) -> Option<String> {
    (!killed.load(Ordering::SeqCst)).then(|| format!("{what}: {e}"))
}

/// Runs the workload against `served` until the kill; returns what it had acknowledged and the
/// errors seen before the kill.
async fn workload(
    served: &Serving,
    data: &Path,
    devices_dir: &Path,
    round: usize,
    killed: Arc<AtomicBool>,
    errors: Arc<Mutex<Vec<String>>>,
) -> (mpsc::UnboundedReceiver<Ack>, Vec<tokio::task::JoinHandle<()>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut client = VaultServiceClient::new(operator_channel(data, served.grpc).await);
        let (tx, killed, errors) = (tx.clone(), Arc::clone(&killed), Arc::clone(&errors));
        tasks.push(tokio::spawn(async move {
            for i in 0u64.. {
                let key = format!("w{w}-k{}", i % KEYS_PER_WRITER as u64);
                let mut value = format!("round {round} writer {w} write {i} ").into_bytes();
                value.resize(value.len() + (i as usize * 97 + w * 31) % 2000, b'x');
                let request = pbv::PutSecretRequest {
                    scope: SCOPE.into(),
                    key: key.clone(),
                    value: value.clone(),
                    expected_version: None,
                };
                match client.put_secret(request).await {
                    Ok(reply) => {
                        let version = reply.into_inner().metadata.unwrap().version;
                        let _ = tx.send(Ack::Put { key, version, value });
                    }
                    Err(e) => {
                        errors.lock().unwrap().extend(unexpected(&killed, "PutSecret", e));
                        return;
                    }
                }
            }
        }));
    }
    let mut vault = VaultServiceClient::new(operator_channel(data, served.grpc).await);
    let (rotations, killed_r, errors_r) = (tx.clone(), Arc::clone(&killed), Arc::clone(&errors));
    tasks.push(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(60)).await;
            match vault.rotate_key(pbv::RotateKeyRequest {}).await {
                Ok(reply) => {
                    let _ = rotations.send(Ack::Rotated(reply.into_inner().generation));
                }
                Err(e) => {
                    errors_r.lock().unwrap().extend(unexpected(&killed_r, "RotateKey", e));
                    return;
                }
            }
        }
    }));
    let mut pairing = PairingServiceClient::new(operator_channel(data, served.grpc).await);
    let (grpc, devices_dir) = (served.grpc, devices_dir.to_path_buf());
    tasks.push(tokio::spawn(async move {
        // Joining devices still polling for their certificate while the next code is made;
        // dropped (aborted) with this task.
        let mut joining = tokio::task::JoinSet::new();
        for n in 0..PAIRINGS_PER_ROUND {
            let request =
                pbp::CreatePairingCodeRequest { ttl_seconds: None, role: String::new(), max_attempts: None };
            let code = match pairing.create_pairing_code(request).await {
                Ok(code) => code.into_inner(),
                Err(e) => {
                    errors.lock().unwrap().extend(unexpected(&killed, "CreatePairingCode", e));
                    return;
                }
            };
            let uri = PairingUri::parse(&code.uri).unwrap();
            let opts = PairOptions {
                server: format!("https://{grpc}"),
                data_dir: devices_dir.join(format!("r{round}-{n}")),
                with: PairWith::Uri(uri),
                name: format!("crash-{round}-{n}"),
                poll_interval: Duration::from_millis(250),
                wait: Duration::from_secs(60),
            };
            let (events_tx, mut events) = mpsc::unbounded_channel();
            let (killed_d, errors_d) = (Arc::clone(&killed), Arc::clone(&errors));
            joining.spawn(async move {
                let mut progress = move |e: PairEvent| {
                    let _ = events_tx.send(e);
                };
                if let Err(e) = pair(&opts, &|_: &str| false, &mut progress).await {
                    errors_d.lock().unwrap().extend(unexpected(&killed_d, "pair", e));
                }
            });
            let request_id = loop {
                match events.recv().await {
                    Some(PairEvent::Pending { request_id, .. }) => break request_id,
                    Some(_) => {}
                    // `pair` failed before the request was pending (its task said why).
                    None => return,
                }
            };
            let approve = pbp::ApprovePairingRequest { request_id, role: String::new(), scopes: Vec::new() };
            match pairing.approve_pairing(approve).await {
                Ok(reply) => {
                    let _ = tx.send(Ack::Approved(reply.into_inner().request.unwrap().device_id));
                }
                Err(e) => {
                    errors.lock().unwrap().extend(unexpected(&killed, "ApprovePairing", e));
                    return;
                }
            }
        }
        while joining.join_next().await.is_some() {}
    }));
    (rx, tasks)
}

/// Copies the database and its WAL (not the shared-memory index, which a crash leaves stale)
/// and checks the copy as the next start will find it: `PRAGMA integrity_check`, and the last
/// event sequence on disk.
fn check_database_copy(data: &Path, scratch: &Path) -> u64 {
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).unwrap();
    for name in ["palyra.db", "palyra.db-wal"] {
        let from = data.join(name);
        if from.exists() {
            std::fs::copy(&from, scratch.join(name)).unwrap();
        }
    }
    let db = rusqlite::Connection::open(scratch.join("palyra.db")).unwrap();
    let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok", "integrity_check after the kill");
    let last: Option<i64> = db.query_row("SELECT max(sequence) FROM events", [], |r| r.get(0)).unwrap();
    last.unwrap_or(0) as u64
}

/// Everything acknowledged so far is there, through the restarted node's APIs. Returns the
/// number of acknowledged versions read back.
async fn verify(
    served: &Serving,
    data: &Path,
    acked: &Acked,
    fresh: &BTreeSet<(String, u64)>,
    everything: bool,
    events: &mut EventCheck,
) -> usize {
    let channel = operator_channel(data, served.grpc).await;
    let mut vault = VaultServiceClient::new(channel.clone());

    // Values: this round's acknowledgements (everything in the last round), and the newest
    // acknowledged version of every key (a rotation rewraps them all).
    let mut newest: BTreeMap<&str, u64> = BTreeMap::new();
    for (key, version) in acked.puts.keys() {
        newest.insert(key, *version);
    }
    let to_read: Vec<(&String, u64)> = acked
        .puts
        .keys()
        .filter(|(key, version)| {
            everything
                || fresh.contains(&(key.clone(), *version))
                || newest.get(key.as_str()) == Some(version)
        })
        .map(|(k, v)| (k, *v))
        .collect();
    for &(key, version) in &to_read {
        let reply = vault
            .get_secret(pbv::GetSecretRequest { scope: SCOPE.into(), key: key.clone(), version })
            .await
            .unwrap_or_else(|e| panic!("acknowledged {key} v{version} lost: {e}"))
            .into_inner();
        assert_eq!(&reply.value, &acked.puts[&(key.clone(), version)], "{key} v{version}");
    }

    // Devices.
    let devices = IdentityServiceClient::new(channel.clone())
        .list_devices(pbi::ListDevicesRequest {})
        .await
        .unwrap()
        .into_inner()
        .devices;
    for id in &acked.devices {
        let device =
            devices.iter().find(|d| &d.device_id == id).unwrap_or_else(|| panic!("device {id} lost"));
        assert_eq!(device.status(), pbi::DeviceStatus::Active, "device {id}");
    }

    // The audit chain.
    let audit = AuditServiceClient::new(channel)
        .verify_audit_log(pba::VerifyAuditLogRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        audit.ok,
        "audit chain broken at {:?} after {} records",
        audit.first_bad_sequence, audit.records_checked
    );

    // Events: dense from where the last check stopped to the last one on disk.
    if events.on_disk > events.checked {
        let tls = Pems::from_dir(&data.join("operator")).quic();
        let quic = QuicClient::connect(served.quic, "localhost", tls).await.unwrap();
        let mut stream = quic.stream_events(events.checked, Vec::new()).await.unwrap();
        while events.checked < events.on_disk {
            let event = stream.next().await.unwrap().expect("the event stream ended");
            assert_eq!(event.sequence, events.checked + 1, "a gap in the event sequence");
            events.checked = event.sequence;
            events.seen.record(&event);
        }
        quic.close().await;
    }
    to_read.len()
}

/// How far the event log has been checked, and what it held.
#[derive(Default)]
struct EventCheck {
    /// Events up to this sequence were read and found dense.
    checked: u64,
    /// The last sequence on disk after the latest kill.
    on_disk: u64,
    seen: SeenEvents,
}

/// The acknowledged changes found in the event log so far.
#[derive(Default)]
struct SeenEvents {
    writes: BTreeSet<(String, u64)>,
    generations: BTreeSet<u32>,
    approvals: BTreeSet<String>,
}

impl SeenEvents {
    fn record(&mut self, event: &palyra::events::Event) {
        let attr = |name: &str| event.attributes.get(name).cloned().unwrap_or_default();
        match event.kind.as_str() {
            palyra::events::VAULT_SECRET_WRITTEN if attr("scope") == SCOPE => {
                self.writes.insert((attr("key"), attr("version").parse().unwrap()));
            }
            palyra::events::VAULT_KEY_ROTATED => {
                self.generations.insert(attr("generation").parse().unwrap());
            }
            palyra::events::PAIRING_APPROVED => {
                self.approvals.insert(attr("device_id"));
            }
            _ => {}
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "current_thread")]
async fn serve_survives_sigkill_under_writes_rotations_and_approvals() {
    testkit::install_crypto_provider();
    let rounds: usize = env_or("PALYRA_CRASH_ROUNDS", 20);
    let seed = testkit::seed_from_env("PALYRA_CRASH_SEED");
    println!("serve crash test: {rounds} rounds, seed {seed} (PALYRA_CRASH_SEED to replay)");
    let mut rng = Rng::new(seed);
    let tmp = private_tempdir();
    let data: PathBuf = tmp.path().join("node");
    let devices_dir = tmp.path().join("devices");
    let scratch = tmp.path().join("check");
    let mut acked = Acked::default();
    let mut events = EventCheck::default();
    // Acknowledged in the last round, read back in full at the next restart.
    let mut fresh = BTreeSet::new();
    std::fs::create_dir_all(&devices_dir).unwrap();
    let (mut startup_kills, mut reads) = (0usize, 0usize);

    for round in 0..=rounds {
        let last = round == rounds;
        // One round in five (never the first: the operator credentials must exist) is killed
        // while starting: opening, migrating, finishing an interrupted rotation.
        if round > 0 && !last && rng.next_u64().is_multiple_of(5) {
            let delay = Duration::from_millis(rng.below(120));
            assert!(spawn_serve(&data, Some(delay)).is_none());
            events.on_disk = check_database_copy(&data, &scratch);
            startup_kills += 1;
            println!("round {round}: killed while starting, after {delay:?}");
            continue;
        }
        let mut served = spawn_serve(&data, None).unwrap();

        // What the previous rounds acknowledged is all there.
        reads += verify(&served, &data, &acked, &fresh, last, &mut events).await;
        fresh.clear();
        for put in acked.puts.keys() {
            assert!(events.seen.writes.contains(put), "no event for acknowledged write {put:?}");
        }
        for g in &acked.generations {
            assert!(events.seen.generations.contains(g), "no event for acknowledged rotation to {g}");
        }
        for d in &acked.devices {
            assert!(events.seen.approvals.contains(d), "no event for acknowledged approval of {d}");
        }
        if last {
            served.child.kill().unwrap();
            served.child.wait().unwrap();
            break;
        }

        // Load, then SIGKILL at a random moment of it.
        let killed = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let (mut acks, tasks) =
            workload(&served, &data, &devices_dir, round, Arc::clone(&killed), Arc::clone(&errors)).await;
        let delay = Duration::from_millis(100 + rng.below(900));
        tokio::time::sleep(delay).await;
        killed.store(true, Ordering::SeqCst);
        served.child.kill().unwrap(); // SIGKILL
        served.child.wait().unwrap();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        let errors = std::mem::take(&mut *errors.lock().unwrap());
        assert!(errors.is_empty(), "round {round}: calls failed before the kill: {errors:#?}");
        let (mut puts, mut rotations, mut approvals) = (0, 0, 0);
        while let Ok(ack) = acks.try_recv() {
            match ack {
                Ack::Put { key, version, value } => {
                    fresh.insert((key.clone(), version));
                    acked.puts.insert((key, version), value);
                    puts += 1;
                }
                Ack::Rotated(generation) => {
                    acked.generations.insert(generation);
                    rotations += 1;
                }
                Ack::Approved(device) => {
                    acked.devices.insert(device);
                    approvals += 1;
                }
            }
        }
        events.on_disk = check_database_copy(&data, &scratch);
        println!(
            "round {round}: killed after {:?} of load: {puts} writes, {rotations} rotations, {approvals} approvals acknowledged; {} events on disk",
            started.elapsed(),
            events.on_disk
        );
    }
    println!(
        "{rounds} SIGKILLs survived ({startup_kills} while starting): {} acknowledged writes ({reads} reads back), {} rotations, {} approved devices, {} events dense",
        acked.puts.len(),
        acked.generations.len(),
        acked.devices.len(),
        events.checked
    );
    assert!(acked.puts.len() > 100, "too few acknowledged writes: the test proved little");
    assert!(!acked.devices.is_empty(), "no approval was acknowledged: the test proved little");
}
