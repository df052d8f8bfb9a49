//! Load and soak: `palyra serve` as a child process (built with this bench's profile) holding
//! 1,000 concurrent gRPC clients — each its own mTLS connection and device certificate, doing
//! vault reads and writes (80/20) on its own `devices/<id>` scope — and 256 QUIC peers following
//! `node.stream_events`, for a set time.
//!
//! It reports errors by kind (target 0: it exits 1 on any), throughput (reads/s, writes/s,
//! events/s delivered to all peers), latency p50/p99/max (hdrhistogram), the server's peak RSS
//! (VmHWM), its open descriptors and threads, and the warnings and errors in its log. Checked
//! on the way, each failure an error: every read returns exactly what this client wrote last
//! (writes are check-and-set on the version it knows: a lost update is a conflict), every peer
//! sees a dense event sequence and catches up with the last event, QUIC connection peers+1 is
//! refused with 0x1, the audit chain verifies afterwards, and the server exits 0 on SIGTERM.
//!
//! ```sh
//! cargo bench --bench load -- --duration 20s     # release; CI runs it with --profile dev
//! cargo bench --bench load -- --duration 5m      # a soak
//! ```
//!
//! Options: `--duration` (`20s`, `5m`, `1h`; env `PALYRA_LOAD_DURATION`), `--clients` (1000),
//! `--peers` (256), `--read-percent` (80), `--rate` (total ops/s offered; 0, the default, = each
//! client sends its next request as soon as the last one is answered). Devices are minted
//! in-process with the library (as pairing approval would) before the server starts. Client
//! and server share the machine: on 2 cores the client side takes about half the CPU.
//! `cargo test --benches` runs a small version (16 clients, 4 peers, 2 s).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use palyra::identity::Role;
use palyra::node::Node;
use palyra::quic::client::{ClientError, ClientTls, QuicClient};
use palyra::testkit::tls::Pems;
use palyra::testkit::{self, Creds, NodeInternals, Rng, Serving, palyra_bin};
use palyra::wire::pb::audit::v1::{self as pba, audit_service_client::AuditServiceClient};
use palyra::wire::pb::vault::v1::{self as pbv, vault_service_client::VaultServiceClient};
use tokio::sync::{Semaphore, watch};
use tonic::transport::Channel;

use support::host::{cpu_seconds, proc_status};

const KEYS_PER_CLIENT: usize = 4;
const VALUE_LEN: usize = 200;
/// Connections (TLS handshakes) being set up at once.
const CONNECT_CONCURRENCY: usize = 64;

#[derive(Debug, Clone)]
struct Options {
    duration: Duration,
    clients: usize,
    peers: usize,
    read_percent: u64,
    /// Total requests per second offered; 0 = closed loop.
    rate: f64,
}

fn parse_duration(text: &str) -> Duration {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len()));
    let n: f64 = number.parse().unwrap_or_else(|_| panic!("bad duration {text:?} (try 20s, 5m, 1h)"));
    let seconds = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => panic!("bad duration unit in {text:?} (try 20s, 5m, 1h)"),
    };
    Duration::from_secs_f64(seconds)
}

impl Options {
    fn parse() -> Options {
        let args: Vec<String> = std::env::args().skip(1).collect();
        // `cargo bench` passes --bench; `cargo test --benches` runs us without it: stay small.
        let quick = !args.iter().any(|a| a == "--bench");
        let mut o = if quick {
            Options { duration: Duration::from_secs(2), clients: 16, peers: 4, read_percent: 80, rate: 0.0 }
        } else {
            Options {
                duration: Duration::from_secs(20),
                clients: 1000,
                peers: 256,
                read_percent: 80,
                rate: 0.0,
            }
        };
        if let Ok(d) = std::env::var("PALYRA_LOAD_DURATION") {
            o.duration = parse_duration(&d);
        }
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (arg.as_str(), None),
            };
            let mut value = || inline.clone().or_else(|| it.next().cloned()).expect("a value after the flag");
            match name {
                "--duration" => o.duration = parse_duration(&value()),
                "--clients" => o.clients = value().parse().expect("--clients N"),
                "--peers" => o.peers = value().parse().expect("--peers N"),
                "--read-percent" => {
                    o.read_percent = value().parse::<u64>().expect("--read-percent P").min(100)
                }
                "--rate" => o.rate = value().parse().expect("--rate OPS_PER_S"),
                // cargo's own (--bench), and libtest-style filters: ignored.
                _ => {}
            }
        }
        o.peers = o.peers.max(1);
        o
    }
}

/// Errors by kind, with the first message of each.
#[derive(Default)]
struct Errors(Mutex<BTreeMap<String, (u64, String)>>);

impl Errors {
    fn add(&self, kind: impl Into<String>, detail: impl std::fmt::Display) {
        let mut map = self.0.lock().unwrap();
        let entry = map.entry(kind.into()).or_insert_with(|| (0, detail.to_string()));
        entry.0 += 1;
    }

    fn status(&self, method: &str, status: &tonic::Status) {
        use tonic_types::StatusExt;
        let reason = status.get_error_details().error_info().map(|i| i.reason.clone()).unwrap_or_default();
        self.add(format!("{method} {:?} {reason}", status.code()), status.message());
    }

    fn total(&self) -> u64 {
        self.0.lock().unwrap().values().map(|(n, _)| n).sum()
    }
}

fn histogram() -> Histogram<u64> {
    // Microseconds, up to 10 minutes.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap()
}

// ---- the server ------------------------------------------------------------------------------

/// `palyra serve` as a child, and what its log said.
struct Server {
    child: Child,
    grpc: SocketAddr,
    quic: SocketAddr,
    /// WARN and ERROR lines of its log (the first 50), and how many there were.
    log: Arc<Mutex<(Vec<String>, u64, u64)>>,
}

fn spawn_server(data: &Path, max_quic: usize) -> Server {
    let mut command = palyra_bin!().serve_command(data, "warn");
    command
        .args(["--quic-max-connections", &max_quic.to_string()])
        // Every client and peer of the bench comes from 127.0.0.1.
        .args(["--quic-max-connections-per-address", &max_quic.to_string()])
        // All the bench's peers come from 127.0.0.1 and set up 64 connections at once.
        .args(["--quic-max-handshakes", "256", "--quic-max-handshakes-per-address", "256"])
        .args(["--grpc-max-connections", "65536", "--grpc-max-connections-per-address", "65536"])
        .env("NO_COLOR", "1");
    let log: Arc<Mutex<(Vec<String>, u64, u64)>> = Arc::default();
    let lines = Arc::clone(&log);
    let Serving { child, grpc, quic } =
        testkit::spawn_serving(command, Duration::from_secs(120), move |line| {
            let mut log = lines.lock().unwrap();
            let (warn, error) = (line.contains(" WARN "), line.contains(" ERROR "));
            log.1 += u64::from(warn);
            log.2 += u64::from(error);
            if (warn || error) && log.0.len() < 50 {
                log.0.push(line);
            }
        });
    Server { child, grpc, quic, log }
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0)
}

/// The soft "Max open files" of a process.
fn open_files_limit(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l["Max open files".len()..].split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

// ---- provisioning ----------------------------------------------------------------------------

/// Mints `n` devices with `role`, 64 at a time (their registry rows share commits).
async fn mint(node: &Node, role: Role, n: usize) -> Vec<Creds> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..(n - out.len()).min(64) {
            let node = node.clone();
            batch.spawn(async move { testkit::mint(&node, role, "bench-peer", &[]).await });
        }
        out.extend(batch.join_all().await);
    }
    out
}

async fn channel(addr: SocketAddr, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Channel, String> {
    Pems { ca: ca_pem.to_owned(), client: Some((cert_pem.to_owned(), key_pem.to_owned())) }
        .endpoint(addr)
        .timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))
}

// ---- gRPC clients ----------------------------------------------------------------------------

/// One client: its connection, scope, and what it last wrote to each key.
struct Client {
    vault: VaultServiceClient<Channel>,
    scope: String,
    /// (version, value) per key; `None` after a failed write (unknown until read again).
    known: Vec<Option<(u64, Vec<u8>)>>,
    rng: Rng,
    writes: u64,
}

/// The value a client writes as its `n`th write of `key`.
fn value_for(scope: &str, key: usize, n: u64) -> Vec<u8> {
    let mut v = format!("{scope} k{key} write {n} ").into_bytes();
    v.resize(VALUE_LEN, b'.');
    v
}

fn scope_of(creds: &Creds) -> String {
    format!("devices/{}", creds.id.to_string().to_lowercase())
}

/// Each client's keys at version 1, written in-process before the server starts.
async fn seed_secrets(node: &Node, clients: &[Creds]) {
    for chunk in clients.chunks(64) {
        let mut batch = tokio::task::JoinSet::new();
        for creds in chunk {
            let (vault, scope) = (node.vault().clone(), scope_of(creds));
            batch.spawn(async move {
                let parsed = palyra::vault::Scope::parse(&scope).unwrap();
                for key in 0..KEYS_PER_CLIENT {
                    let name = palyra::vault::SecretKey::parse(&format!("k{key}")).unwrap();
                    let value = palyra::vault::SecretValue::new(value_for(&scope, key, 0));
                    vault.put(&parsed, &name, value, Some(0)).await.unwrap();
                }
            });
        }
        batch.join_all().await;
    }
}

impl Client {
    fn new(vault: VaultServiceClient<Channel>, creds: &Creds, index: usize) -> Client {
        let scope = scope_of(creds);
        let known = (0..KEYS_PER_CLIENT).map(|key| Some((1, value_for(&scope, key, 0)))).collect();
        let rng = Rng::new(0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
        Client { vault, scope, known, rng, writes: 0 }
    }

    fn value(&mut self, key: usize) -> Vec<u8> {
        self.writes += 1;
        value_for(&self.scope, key, self.writes)
    }

    /// A check-and-set write on the version this client knows.
    async fn write(&mut self, key: usize, errors: &Errors) -> bool {
        let value = self.value(key);
        let expected = self.known[key].as_ref().map(|(v, _)| *v);
        let request = pbv::PutSecretRequest {
            scope: self.scope.clone(),
            key: format!("k{key}"),
            value: value.clone(),
            expected_version: Some(expected.unwrap_or(0)),
        };
        match self.vault.put_secret(request).await {
            Ok(reply) => {
                let version = reply.into_inner().metadata.map(|m| m.version).unwrap_or(0);
                if expected.is_some_and(|e| version != e + 1) {
                    errors.add("PutSecret wrong version", format!("{} k{key}: {version}", self.scope));
                }
                self.known[key] = Some((version, value));
                true
            }
            Err(status) => {
                errors.status("PutSecret", &status);
                self.known[key] = None;
                false
            }
        }
    }

    async fn read(&mut self, key: usize, errors: &Errors) -> bool {
        let request = pbv::GetSecretRequest { scope: self.scope.clone(), key: format!("k{key}"), version: 0 };
        match self.vault.get_secret(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                let version = reply.metadata.as_ref().map(|m| m.version).unwrap_or(0);
                match &self.known[key] {
                    Some((v, value)) if *v != version || *value != reply.value => {
                        errors.add(
                            "GetSecret wrong value",
                            format!("{} k{key}: v{version}, expected v{v}", self.scope),
                        );
                    }
                    Some(_) => {}
                    None => self.known[key] = Some((version, reply.value)),
                }
                true
            }
            Err(status) => {
                errors.status("GetSecret", &status);
                false
            }
        }
    }
}

#[derive(Default)]
struct ClientFigures {
    reads: u64,
    writes: u64,
    read_latency: Option<Histogram<u64>>,
    write_latency: Option<Histogram<u64>>,
}

async fn run_client(
    mut client: Client,
    opts: Options,
    index: usize,
    deadline: Instant,
    errors: Arc<Errors>,
    done_ops: Arc<AtomicU64>,
) -> ClientFigures {
    let (mut reads, mut writes) = (histogram(), histogram());
    let mut figures = ClientFigures::default();
    let mut pace = (opts.rate > 0.0).then(|| {
        let every = Duration::from_secs_f64(opts.clients as f64 / opts.rate);
        let offset = every.mul_f64((index as f64 / opts.clients as f64).fract());
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    while Instant::now() < deadline {
        if let Some(pace) = &mut pace {
            pace.tick().await;
        }
        let key = (client.rng.below(KEYS_PER_CLIENT as u64)) as usize;
        let started = Instant::now();
        if client.rng.below(100) < opts.read_percent {
            if client.read(key, &errors).await {
                reads.saturating_record(started.elapsed().as_micros() as u64);
                figures.reads += 1;
            }
        } else if client.write(key, &errors).await {
            writes.saturating_record(started.elapsed().as_micros() as u64);
            figures.writes += 1;
        }
        done_ops.fetch_add(1, Ordering::Relaxed);
    }
    figures.read_latency = Some(reads);
    figures.write_latency = Some(writes);
    figures
}

// ---- QUIC peers ------------------------------------------------------------------------------

#[derive(Default)]
struct PeerFigures {
    events: u64,
    in_window: u64,
    last: u64,
    lag: Option<Histogram<u64>>,
}

/// Follows the event log from `since` until told to stop; every sequence must follow the last.
async fn run_peer(
    client: QuicClient,
    since: u64,
    measuring: Arc<AtomicBool>,
    mut stop: watch::Receiver<Option<u64>>,
    errors: Arc<Errors>,
    highest: Arc<AtomicU64>,
) -> PeerFigures {
    let mut lag = histogram();
    let mut figures = PeerFigures { last: since, ..Default::default() };
    let mut stream = match client.stream_events(since, Vec::new()).await {
        Ok(s) => s,
        Err(e) => {
            errors.add("stream_events open", e);
            return figures;
        }
    };
    loop {
        // Stop once told to, and caught up with the sequence named.
        if stop.borrow().is_some_and(|target| figures.last >= target) {
            break;
        }
        let event = tokio::select! {
            event = stream.next() => event,
            changed = stop.changed() => {
                if changed.is_err() { break }
                continue;
            }
        };
        match event {
            Ok(Some(event)) => {
                if event.sequence != figures.last + 1 {
                    errors
                        .add("stream_events gap", format!("after {} came {}", figures.last, event.sequence));
                }
                figures.last = event.sequence;
                figures.events += 1;
                highest.fetch_max(event.sequence, Ordering::Relaxed);
                if measuring.load(Ordering::Relaxed) {
                    figures.in_window += 1;
                    let age = SystemTime::now().duration_since(event.at).unwrap_or_default();
                    lag.saturating_record(age.as_micros() as u64);
                }
            }
            Ok(None) => {
                errors.add("stream_events ended", "the node finished the stream");
                break;
            }
            Err(e) => {
                errors.add(format!("stream_events {}", error_kind(&e)), e);
                break;
            }
        }
    }
    client.close().await;
    figures.lag = Some(lag);
    figures
}

fn error_kind(e: &ClientError) -> &'static str {
    match e {
        ClientError::Tls(_) => "tls",
        ClientError::Connect(_) => "connect",
        ClientError::Closed { .. } => "closed",
        ClientError::Lost(_) => "lost",
        ClientError::Remote { .. } => "remote",
        ClientError::Protocol(_) => "protocol",
        _ => "other",
    }
}

fn peer_tls(ca_pem: &str, creds: &Creds) -> ClientTls {
    Pems { ca: ca_pem.to_owned(), client: Some((creds.cert_pem.clone(), creds.key_pem.clone())) }.quic()
}

// ---- the run ---------------------------------------------------------------------------------

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn latency_line(name: &str, count: u64, seconds: f64, h: &Histogram<u64>) -> String {
    format!(
        "  {name:<8} {count:>10} ok {:>9.0} /s   p50 {:>8.2} ms   p99 {:>8.2} ms   max {:>8.2} ms",
        count as f64 / seconds,
        ms(h, 0.5),
        ms(h, 0.99),
        h.max() as f64 / 1000.0
    )
}

async fn run(opts: Options) -> bool {
    let profile = if cfg!(debug_assertions) { "dev" } else { "release" };
    println!(
        "load: {} gRPC clients (own mTLS connection and certificate each, {}% reads), {} QUIC peers, {:?}, {profile} profile",
        opts.clients, opts.read_percent, opts.peers, opts.duration
    );
    let errors = Arc::new(Errors::default());
    let limit = palyra::limits::raise_open_files_limit().unwrap();
    println!("  open files limit of this tool: {:?} -> {:?}", limit.before, limit.after);

    // Devices, minted before the server starts (as approval would register them).
    let dir = testkit::private_tempdir();
    let data = dir.path().join("node");
    let t = Instant::now();
    let node = testkit::open_node(&data).await;
    let clients_creds = mint(&node, Role::Device, opts.clients).await;
    let peers_creds = mint(&node, Role::Node, opts.peers + 1).await;
    seed_secrets(&node, &clients_creds).await;
    let since = node.events().last_sequence().await.unwrap();
    let ca_pem = node.identity().ca().certificate_pem().to_owned();
    node.audit().flush().await.unwrap();
    node.close_db();
    drop(node);
    println!(
        "  minted {} device certificates and wrote {} secrets in {:.1?}",
        opts.clients + opts.peers + 1,
        opts.clients * KEYS_PER_CLIENT,
        t.elapsed()
    );

    let mut server = spawn_server(&data, opts.peers);
    let pid = server.child.id();
    println!(
        "  palyra serve pid {pid}: gRPC {} QUIC {}; open files limit {}",
        server.grpc,
        server.quic,
        open_files_limit(pid)
    );

    // Sample the server's descriptors and memory while it works.
    let sampling = Arc::new(AtomicBool::new(true));
    let peak_fds = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (sampling, peak_fds) = (Arc::clone(&sampling), Arc::clone(&peak_fds));
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak_fds.fetch_max(open_fds(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };

    // QUIC peers, each its own connection and certificate, following the log live.
    let t = Instant::now();
    let measuring = Arc::new(AtomicBool::new(false));
    let highest = Arc::new(AtomicU64::new(since));
    let (stop_tx, stop_rx) = watch::channel(None::<u64>);
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut connecting = tokio::task::JoinSet::new();
    for creds in &peers_creds[..opts.peers] {
        let (tls, addr, gate) = (peer_tls(&ca_pem, creds), server.quic, Arc::clone(&gate));
        connecting.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let client = QuicClient::connect(addr, "localhost", tls).await?;
            // The client is connected once its Finished is sent; the node takes the connection
            // slot when it has read it. One round trip makes sure the slot is held before the
            // limit is tested below.
            client.health().await?;
            Ok::<_, ClientError>(client)
        });
    }
    let mut peers = tokio::task::JoinSet::new();
    while let Some(connected) = connecting.join_next().await {
        match connected.unwrap() {
            Ok(client) => {
                peers.spawn(run_peer(
                    client,
                    since,
                    Arc::clone(&measuring),
                    stop_rx.clone(),
                    Arc::clone(&errors),
                    Arc::clone(&highest),
                ));
            }
            Err(e) => errors.add(format!("QUIC connect {}", error_kind(&e)), e),
        }
    }
    println!("  {} QUIC peers connected in {:.1?}", peers.len(), t.elapsed());
    // One more than the limit: refused with 0x1 `connection limit`.
    let extra = peer_tls(&ca_pem, &peers_creds[opts.peers]);
    let refusal = match QuicClient::connect(server.quic, "localhost", extra).await {
        Ok(client) => match client.health().await {
            Err(ClientError::Closed { code, reason }) => Some((code, reason)),
            Ok(_) => None,
            Err(e) => {
                errors.add("QUIC extra connection", e);
                Some((0, String::new()))
            }
        },
        Err(ClientError::Closed { code, reason }) => Some((code, reason)),
        Err(e) => {
            errors.add("QUIC extra connection", e);
            Some((0, String::new()))
        }
    };
    match &refusal {
        Some((1, reason)) => println!("  QUIC connection {}: refused, 0x1 {reason:?}", opts.peers + 1),
        Some(_) => {}
        None => errors.add("QUIC connection limit", format!("connection {} was served", opts.peers + 1)),
    }

    // gRPC clients, each its own mTLS connection, and the keys they will read.
    let t = Instant::now();
    let mut connecting = tokio::task::JoinSet::new();
    for (i, creds) in clients_creds.iter().enumerate() {
        let (creds, ca_pem, addr, gate) = (creds.clone(), ca_pem.clone(), server.grpc, Arc::clone(&gate));
        connecting.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let channel = channel(addr, &ca_pem, &creds.cert_pem, &creds.key_pem).await?;
            Ok::<_, String>(Client::new(VaultServiceClient::new(channel), &creds, i))
        });
    }
    let mut clients = Vec::with_capacity(opts.clients);
    while let Some(connected) = connecting.join_next().await {
        match connected.unwrap() {
            Ok(client) => clients.push(client),
            Err(e) => errors.add("gRPC connect", e),
        }
    }
    println!("  {} gRPC connections (mTLS) in {:.1?}", clients.len(), t.elapsed());

    // The measured window.
    let rss_before = proc_status(pid, "VmRSS").unwrap_or(0);
    let done_ops = Arc::new(AtomicU64::new(0));
    let cpu_before = (cpu_seconds(pid), cpu_seconds("self"));
    let start = Instant::now();
    let deadline = start + opts.duration;
    measuring.store(true, Ordering::Relaxed);
    let mut running = tokio::task::JoinSet::new();
    for (i, client) in clients.into_iter().enumerate() {
        running.spawn(run_client(
            client,
            opts.clone(),
            i,
            deadline,
            Arc::clone(&errors),
            Arc::clone(&done_ops),
        ));
    }
    // Progress, for long runs.
    let progress = {
        let done_ops = Arc::clone(&done_ops);
        let errors = Arc::clone(&errors);
        let every = if opts.duration >= Duration::from_secs(120) { 30 } else { 5 };
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(every)).await;
                let done = done_ops.load(Ordering::Relaxed);
                println!(
                    "  .. {:>5.0} s: {:>7.0} ops/s, server RSS {:.1} MiB, {} fds, {} errors",
                    start.elapsed().as_secs_f64(),
                    (done - last) as f64 / every as f64,
                    proc_status(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0,
                    open_fds(pid),
                    errors.total()
                );
                last = done;
            }
        })
    };
    let mut totals = ClientFigures {
        read_latency: Some(histogram()),
        write_latency: Some(histogram()),
        ..Default::default()
    };
    while let Some(figures) = running.join_next().await {
        let f = figures.unwrap();
        totals.reads += f.reads;
        totals.writes += f.writes;
        totals.read_latency.as_mut().unwrap().add(f.read_latency.unwrap()).unwrap();
        totals.write_latency.as_mut().unwrap().add(f.write_latency.unwrap()).unwrap();
    }
    let window = start.elapsed().as_secs_f64();
    let cpu = ((cpu_seconds(pid) - cpu_before.0) / window, (cpu_seconds("self") - cpu_before.1) / window);
    measuring.store(false, Ordering::Relaxed);
    progress.abort();
    let rss_end = proc_status(pid, "VmRSS").unwrap_or(0);
    let threads = proc_status(pid, "Threads").unwrap_or(0);

    // Every peer catches up with the last event any peer saw, then stops.
    let t = Instant::now();
    let last_event = highest.load(Ordering::Relaxed);
    let _ = stop_tx.send(Some(last_event));
    let mut events = (0u64, 0u64, histogram());
    let mut behind = 0;
    let caught_up = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(figures) = peers.join_next().await {
            let f = figures.unwrap();
            events.0 += f.events;
            events.1 += f.in_window;
            if let Some(lag) = f.lag {
                events.2.add(lag).unwrap();
            }
            if f.last < last_event {
                behind += 1;
            }
        }
    })
    .await;
    if caught_up.is_err() || behind > 0 {
        errors.add(
            "stream_events behind",
            format!("{} peers not caught up after {:.1?}", peers.len() + behind, t.elapsed()),
        );
    }

    // The audit chain, as the operator.
    let op = data.join("operator");
    let read = |n: &str| std::fs::read_to_string(op.join(n)).unwrap();
    let audit = match channel(server.grpc, &read("ca.pem"), &read("cert.pem"), &read("key.pem")).await {
        Ok(ch) => AuditServiceClient::new(ch).verify_audit_log(pba::VerifyAuditLogRequest::default()).await,
        Err(e) => Err(tonic::Status::unavailable(e)),
    };
    let audit_line = match audit {
        Ok(r) => {
            let r = r.into_inner();
            if !r.ok {
                errors.add("audit chain broken", format!("at {:?}", r.first_bad_sequence));
            }
            format!("{} ({} records checked)", if r.ok { "ok" } else { "BROKEN" }, r.records_checked)
        }
        Err(status) => {
            errors.status("VerifyAuditLog", &status);
            "not verified".into()
        }
    };

    // Stop the server: SIGTERM, a clean exit.
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    let hwm = proc_status(pid, "VmHWM").unwrap_or(0);
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let exit = tokio::task::spawn_blocking(move || server.child.wait()).await.unwrap().unwrap();
    if !exit.success() {
        errors.add("palyra serve exit", exit);
    }
    let (log_lines, warnings, log_errors) = server.log.lock().unwrap().clone();
    if log_errors > 0 {
        errors.add(
            "server log ERROR",
            log_lines.iter().find(|l| l.contains(" ERROR ")).cloned().unwrap_or_default(),
        );
    }

    // The report.
    println!(
        "\nload results ({:.1} s measured, {} clients, {} peers, {profile} profile):",
        window, opts.clients, opts.peers
    );
    println!("{}", latency_line("reads", totals.reads, window, totals.read_latency.as_ref().unwrap()));
    println!("{}", latency_line("writes", totals.writes, window, totals.write_latency.as_ref().unwrap()));
    println!("  {:<8} {:>10.0} ops/s", "total", (totals.reads + totals.writes) as f64 / window);
    println!(
        "  events   {:>10} delivered in the window {:>9.0} /s to {} peers; delivery lag p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        events.1,
        events.1 as f64 / window,
        opts.peers,
        ms(&events.2, 0.5),
        ms(&events.2, 0.99),
        events.2.max() as f64 / 1000.0
    );
    println!(
        "  events   every peer saw sequences {}..={} with no gap ({} events in all)",
        since + 1,
        last_event,
        events.0
    );
    println!(
        "  server   peak RSS (VmHWM) {:.1} MiB; RSS {:.1} MiB before the window, {:.1} MiB at its end; open fds peak {}; {} threads",
        hwm as f64 / 1024.0,
        rss_before as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        peak_fds.load(Ordering::Relaxed),
        threads
    );
    println!(
        "  cpu      server {:.2} cores, this tool {:.2} cores (of {}), averaged over the window",
        cpu.0,
        cpu.1,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!("  audit    chain {audit_line}");
    println!("  server   log: {warnings} warnings, {log_errors} errors; exit on SIGTERM: {exit}");
    for line in log_lines.iter().take(10) {
        println!("    | {line}");
    }
    let total = errors.total();
    println!("  errors   {total}");
    for (kind, (n, first)) in errors.0.lock().unwrap().iter() {
        println!("    {n:>8}  {kind}: {first}");
    }
    total == 0
}

fn main() -> ExitCode {
    let opts = Options::parse();
    testkit::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let ok = runtime.block_on(run(opts));
    runtime.shutdown_timeout(Duration::from_secs(1));
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
