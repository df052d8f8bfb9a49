//! The end-to-end benchmark harness: every performance target (README.md, "Performance"), each figure beside
//! a baseline measured in the same run, as a ratio, with its target and pass/miss.
//!
//! ```text
//! cargo bench --bench e2e              # the full run, about 2 minutes on 2 cores
//! cargo bench --bench e2e -- --quick   # each scenario briefly (CI smoke test: it completes)
//! ```
//!
//! It starts what it needs in-process on loopback (a node serving gRPC over mTLS and QUIC, a
//! bare tonic service and a bare quinn server as baselines, a bare rusqlite database), plus
//! `palyra serve` as a child process for the footprint figures. It prints a table and writes
//! `target/bench/report.json`, `target/bench/report.md` and `target/bench/unary.svg`
//! (throughput and p99 against requests in flight). `target` is the cargo target directory
//! (`CARGO_TARGET_DIR` is honoured). Reports, never asserts: a miss is a finding, not a failure.
//! Where a figure and its baseline are the same kind of call (scenarios 1, 5 and 8), they take
//! turns in short windows (`in_turns`) rather than one after the other, so a drift in the
//! machine's speed meets both alike. A missed target whose ceiling on this machine (estimated
//! from the run's baselines) is below it says so.
//!
//! Scenarios: (1) unary GetSecret vs a bare tonic service, (2) durable PutSecret, (3) Cedar
//! decisions, (4) QUIC events, (5) scale, (6) footprint, (7) pairing CPU, (8) metrics overhead.
//! `PALYRA_BENCH_ONLY=1,4`
//! runs a subset (by number).
//!
//! Profiling a scenario: build once, then run the bench binary under a profiler, e.g.
//!
//! ```text
//! CARGO_PROFILE_BENCH_DEBUG=true cargo bench --bench e2e --no-run   # prints the binary path
//! PALYRA_BENCH_ONLY=1 perf record -g --call-graph dwarf <that binary> --bench
//! perf report                                # or: cargo flamegraph --bench e2e -- --bench
//! PALYRA_BENCH_ONLY=7 valgrind --tool=callgrind <that binary> --bench --quick
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use support::host::{fmt_value, free_port, target_dir};

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use palyra::identity::{DeviceId, DeviceIdentity, Role};
use palyra::node::Node;
use palyra::policy::PolicyEngine;
use palyra::rpc::server;
use palyra::testkit::tls::Pems;
use palyra::testkit::{self, Creds, DeviceKeys, NodeInternals, TestNode, palyra_bin};
use palyra::vault::{Scope, SecretKey, SecretValue};
use palyra::wire::pb::vault::v1::vault_service_client::VaultServiceClient;
use palyra::wire::pb::vault::v1::vault_service_server::{VaultService, VaultServiceServer};
use palyra::wire::pb::vault::v1::{self as pb};
use serde_json::json;
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

// ---------------------------------------------------------------------------------------------
// Sizing

/// How long each measured load runs; everything else is sized from `quick`.
#[derive(Debug, Clone, Copy)]
struct Sizing {
    quick: bool,
    load: Duration,
    warmup: Duration,
}

impl Sizing {
    fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }
}

// ---------------------------------------------------------------------------------------------
// The report

/// One figure of the table.
#[derive(Debug, Clone)]
struct Row {
    scenario: &'static str,
    metric: String,
    value: f64,
    unit: &'static str,
    /// What the baseline is and its value (same unit).
    baseline: Option<(String, f64)>,
    target: String,
    /// Whether the target is met; `None` when the figure has no target.
    pass: Option<bool>,
    /// For a missed target: the best ratio this machine allows for the figure, when that is
    /// below the target's. An estimate from baselines of the same run (a node that added
    /// nothing to a bare call and a bare commit), not a bound.
    ceiling: Option<f64>,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        self.baseline.as_ref().map(|(_, b)| self.value / b).filter(|r| r.is_finite())
    }
}

/// (in flight, GetSecret req/s, GetSecret p99 ms, bare req/s, bare p99 ms).
type UnaryPoint = (usize, f64, f64, f64, f64);
/// A chart panel: its title and the (GetSecret, bare) values it plots.
type Panel = (&'static str, fn(&UnaryPoint) -> (f64, f64));

#[derive(Debug, Default)]
struct Report {
    rows: Vec<Row>,
    /// The chart's points.
    unary: Vec<UnaryPoint>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        scenario: &'static str,
        metric: impl Into<String>,
        value: f64,
        unit: &'static str,
        baseline: Option<(&str, f64)>,
        target: &str,
        pass: Option<bool>,
    ) {
        let row = Row {
            scenario,
            metric: metric.into(),
            value,
            unit,
            baseline: baseline.map(|(n, v)| (n.to_owned(), v)),
            target: target.to_owned(),
            pass,
            ceiling: None,
        };
        let ratio = row.ratio().map(|r| format!("  ratio {r:.2}")).unwrap_or_default();
        let base = row
            .baseline
            .as_ref()
            .map(|(n, v)| format!("  [{n}: {}]", fmt_value(*v, unit)))
            .unwrap_or_default();
        let verdict = match row.pass {
            Some(true) => "  pass",
            Some(false) => "  MISS",
            None => "",
        };
        println!("  {:<52} {:>14}{base}{ratio}  {}{verdict}", row.metric, fmt_value(value, unit), row.target);
        self.rows.push(row);
    }

    /// Marks the last row, a missed target, as above this machine's ceiling when the best
    /// ratio the machine allows (`best`, estimated from the run's baselines) is below the ratio
    /// the target asks for (`needed`).
    fn ceiling(&mut self, best: f64, needed: f64) {
        let row = self.rows.last_mut().expect("a row to cap");
        assert!(row.pass.is_some(), "{}: a ceiling belongs to a row with a target", row.metric);
        if row.pass == Some(false) && best < needed {
            row.ceiling = Some(best);
            println!(
                "  {:<52} {:>14}  this machine allows at most {best:.2}: the target is above its ceiling",
                "", ""
            );
        }
    }

    fn markdown(&self, header: &str) -> String {
        let mut out = format!("{header}\n\n");
        out.push_str("| # | Figure | Value | Baseline (same run) | Ratio | Target | |\n");
        out.push_str("|---|---|---:|---|---:|---|---|\n");
        for r in &self.rows {
            let baseline = r
                .baseline
                .as_ref()
                .map(|(n, v)| format!("{n}: {}", fmt_value(*v, r.unit)))
                .unwrap_or("—".into());
            let ratio = r.ratio().map(|x| format!("{x:.2}")).unwrap_or("—".into());
            let verdict = match (r.pass, r.ceiling) {
                (Some(true), _) => "pass".to_owned(),
                (Some(false), Some(best)) => format!("**miss** (this machine allows ≤ {best:.2})"),
                (Some(false), None) => "**miss**".to_owned(),
                (None, _) => String::new(),
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                r.scenario,
                r.metric,
                fmt_value(r.value, r.unit),
                baseline,
                ratio,
                if r.target.is_empty() { "—" } else { &r.target },
                verdict
            ));
        }
        out
    }

    fn json(&self, sizing: &Sizing, elapsed: Duration) -> serde_json::Value {
        json!({
            "quick": sizing.quick,
            "elapsed_seconds": elapsed.as_secs_f64(),
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "rows": self.rows.iter().map(|r| json!({
                "scenario": r.scenario,
                "metric": r.metric,
                "value": r.value,
                "unit": r.unit,
                "baseline": r.baseline.as_ref().map(|(n, v)| json!({"name": n, "value": v})),
                "ratio": r.ratio(),
                "target": r.target,
                "pass": r.pass,
                "ceiling": r.ceiling,
            })).collect::<Vec<_>>(),
            "unary": self.unary.iter().map(|(n, g, gp, e, ep)| json!({
                "in_flight": n, "get_secret_rps": g, "get_secret_p99_ms": gp, "echo_rps": e, "echo_p99_ms": ep,
            })).collect::<Vec<_>>(),
        })
    }

    /// Two panels, drawn by hand: throughput and p99 against requests in flight, GetSecret and
    /// the bare tonic service.
    fn svg(&self) -> String {
        const W: f64 = 360.0;
        const H: f64 = 240.0;
        const PAD: f64 = 50.0;
        let xs: Vec<usize> = self.unary.iter().map(|u| u.0).collect();
        let x_at = |i: usize| PAD + (W - PAD - 20.0) * (i as f64) / ((xs.len().max(2) - 1) as f64);
        let mut out = String::new();
        out.push_str(&format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
            2.0 * W,
            H + 30.0
        ));
        let panels: [Panel; 2] =
            [("throughput (requests/s)", |u| (u.1, u.3)), ("p99 latency (ms)", |u| (u.2, u.4))];
        for (p, (title, pick)) in panels.iter().enumerate() {
            let ox = p as f64 * W;
            let max =
                self.unary.iter().map(|u| pick(u).0.max(pick(u).1)).fold(0.0f64, f64::max).max(1e-9) * 1.1;
            let y_at = |v: f64| H - PAD / 2.0 - (H - PAD) * v / max;
            out.push_str(&format!(
                "<text x=\"{}\" y=\"16\" text-anchor=\"middle\" font-weight=\"bold\">{title}</text>\n",
                ox + W / 2.0
            ));
            // Axes, ticks and grid.
            out.push_str(&format!(
                "<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"black\"/><line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{3}\" stroke=\"black\"/>\n",
                ox + PAD,
                y_at(0.0),
                ox + W - 20.0,
                y_at(max)
            ));
            for k in 0..=4 {
                let v = max * k as f64 / 4.0;
                out.push_str(&format!(
                    "<line x1=\"{0}\" y1=\"{1:.1}\" x2=\"{2}\" y2=\"{1:.1}\" stroke=\"#ddd\"/><text x=\"{3}\" y=\"{4:.1}\" text-anchor=\"end\">{5}</text>\n",
                    ox + PAD,
                    y_at(v),
                    ox + W - 20.0,
                    ox + PAD - 4.0,
                    y_at(v) + 4.0,
                    if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") }
                ));
            }
            for (i, n) in xs.iter().enumerate() {
                out.push_str(&format!(
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{n}</text>\n",
                    ox + x_at(i),
                    y_at(0.0) + 14.0
                ));
            }
            out.push_str(&format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">requests in flight</text>\n",
                ox + W / 2.0,
                H + 22.0
            ));
            for (series, colour, label) in
                [(0, "#c0392b", "GetSecret"), (1, "#2c7fb8", "bare tonic (same mTLS)")]
            {
                let points: Vec<String> = self
                    .unary
                    .iter()
                    .enumerate()
                    .map(|(i, u)| {
                        let v = if series == 0 { pick(u).0 } else { pick(u).1 };
                        format!("{:.1},{:.1}", ox + x_at(i), y_at(v))
                    })
                    .collect();
                out.push_str(&format!(
                    "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\n",
                    points.join(" ")
                ));
                for pt in &points {
                    let (x, y) = pt.split_once(',').unwrap();
                    out.push_str(&format!("<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" fill=\"{colour}\"/>\n"));
                }
                let ly = 34.0 + 14.0 * series as f64;
                out.push_str(&format!(
                    "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{colour}\"/><text x=\"{}\" y=\"{}\">{label}</text>\n",
                    ox + PAD + 10.0,
                    ly - 9.0,
                    ox + PAD + 24.0,
                    ly
                ));
            }
        }
        out.push_str("</svg>\n");
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Load generation

type Call = Arc<dyn Fn(u64) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What a closed-loop load measured.
#[derive(Debug)]
struct Load {
    /// Latency in nanoseconds.
    latency: Histogram<u64>,
    /// This process's CPU time per completed call, in µs (client and server alike; what a
    /// loaded machine disturbs least, since it counts only the time this process ran).
    cpu_us: f64,
    /// Calls completed, and the seconds they took.
    calls: u64,
    secs: f64,
}

/// CPU time this process's threads have run, in ns (`/proc/self/task/*/schedstat`; 0 where
/// that is not readable).
fn process_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
        .sum()
}

impl Load {
    /// Completed calls per second.
    fn rate(&self) -> f64 {
        self.calls as f64 / self.secs
    }

    /// Windows of the same load as one: their calls over their summed time, their latencies
    /// and CPU together.
    fn merged(windows: &[Load]) -> Load {
        let (calls, secs) = windows.iter().fold((0, 0.0), |(c, t), w| (c + w.calls, t + w.secs));
        let cpu_us = windows.iter().map(|w| w.cpu_us * w.calls as f64).sum::<f64>() / calls.max(1) as f64;
        let mut latency = Histogram::<u64>::new(3).unwrap();
        for w in windows {
            latency.add(&w.latency).unwrap();
        }
        Load { latency, cpu_us, calls, secs }
    }

    fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1e6
    }
    fn us(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1e3
    }
}

/// `in_flight` tasks each calling `call` back to back for `duration` (after `warmup`);
/// completed calls per second and their latency.
async fn closed_loop(in_flight: usize, warmup: Duration, duration: Duration, call: Call) -> Load {
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let run = |d: Duration, record: bool| {
        let tasks: Vec<_> = (0..in_flight)
            .map(|_| {
                let (call, counter) = (Arc::clone(&call), Arc::clone(&counter));
                tokio::spawn(async move {
                    let mut h = Histogram::<u64>::new(3).unwrap();
                    let end = Instant::now() + d;
                    let mut n = 0u64;
                    while Instant::now() < end {
                        let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let start = Instant::now();
                        call(i).await;
                        if record {
                            h.record(start.elapsed().as_nanos() as u64).unwrap();
                        }
                        n += 1;
                    }
                    (n, h)
                })
            })
            .collect();
        async move {
            let start = Instant::now();
            let cpu = process_cpu_ns();
            let mut total = 0;
            let mut latency = Histogram::<u64>::new(3).unwrap();
            for t in tasks {
                let (n, h) = t.await.unwrap();
                total += n;
                latency.add(h).unwrap();
            }
            let cpu_us = process_cpu_ns().saturating_sub(cpu) as f64 / 1e3 / total.max(1) as f64;
            Load { latency, cpu_us, calls: total, secs: start.elapsed().as_secs_f64() }
        }
    };
    run(warmup, false).await;
    run(duration, true).await
}

/// Each of `calls` under the same closed loop, taking turns in `rounds` windows that add up to
/// `s.load` each, so that a change in the machine's speed (two shared cores drift by tens of
/// percent within a minute) meets them alike; one merged [`Load`] per call, in order.
async fn in_turns<const N: usize>(in_flight: usize, s: &Sizing, rounds: u32, calls: &[Call; N]) -> [Load; N] {
    let window = s.load / rounds;
    let mut windows: [Vec<Load>; N] = std::array::from_fn(|_| Vec::new());
    for round in 0..rounds {
        // The first window warms the connections up; each later one first runs unmeasured
        // for a moment, so that what the other call left running (its threads' wake-ups,
        // lazy writes) is not counted to this one.
        let warmup = if round == 0 { s.warmup } else { s.warmup.min(Duration::from_millis(50)) };
        for (call, windows) in calls.iter().zip(&mut windows) {
            windows.push(closed_loop(in_flight, warmup, window, Arc::clone(call)).await);
        }
    }
    windows.map(|w| Load::merged(&w))
}

// ---------------------------------------------------------------------------------------------
// (8) Metrics overhead

/// GetSecret on a node keeping Prometheus metrics (`--metrics-addr`) against the same node
/// without them, both served in this run with the same client; rounds alternate (off, on) so a
/// load change on the machine hits both alike.
async fn metrics_overhead(report: &mut Report, s: &Sizing) {
    println!("\n(8) metrics: GetSecret (1 KiB, 16 in flight) with metrics on vs off, same process");
    let mut clients = Vec::new();
    for metrics in [false, true] {
        let options = palyra::node::NodeOptions { metrics, ..testkit::node_options() };
        let (served, _, client) = node_with_value(options, "bench/metrics").await;
        clients.push((served, client));
    }
    let calls =
        [&clients[0].1, &clients[1].1].map(|client| get_call(client.clone(), "bench/metrics", "VALUE"));
    // Six windows each, as long in all as six full loads (three when quick).
    let sizing = Sizing { load: s.load * s.pick(6, 3), ..*s };
    let [off, on] = in_turns(16, &sizing, s.pick(6, 3), &calls).await;
    let (off, on) = ((off.rate(), off.us(0.5)), (on.rate(), on.us(0.5)));
    let requests = clients[1].0.node.metrics().encode().unwrap_or_default();
    assert!(requests.contains(
        "palyra_rpc_requests_total{method=\"palyra.vault.v1.VaultService/GetSecret\",code=\"OK\"}"
    ));
    let ratio = on.0 / off.0;
    println!("  metrics on / off throughput ratio {ratio:.3} (overhead {:.1} %)", (1.0 - ratio) * 100.0);
    report.add(
        "8",
        "GetSecret throughput with metrics on, 16 in flight",
        on.0,
        "req/s",
        Some(("metrics off", off.0)),
        "ratio ≥ 0.97",
        Some(ratio >= 0.97),
    );
    report.add(
        "8",
        "GetSecret p50 with metrics on, 16 in flight",
        on.1,
        "µs",
        Some(("metrics off", off.1)),
        "",
        None,
    );
}

// ---------------------------------------------------------------------------------------------
// Nodes and clients

/// A node serving gRPC (mTLS) on loopback, in-process (until it is dropped).
async fn serve_node() -> TestNode {
    TestNode::start().await
}

/// A node started with `options`, a device's credentials and client (scope `bench` granted), and
/// a 1 KiB value stored at `scope`/`VALUE`: what the GetSecret figures read.
async fn node_with_value(
    options: palyra::node::NodeOptions,
    scope: &str,
) -> (TestNode, Creds, VaultServiceClient<Channel>) {
    let served = TestNode::start_with(options).await;
    let creds = testkit::mint(&served.node, Role::Device, "bench-peer", &["bench"]).await;
    let mut client = VaultServiceClient::new(channel(&served.node, served.addr, &creds).await);
    client
        .put_secret(pb::PutSecretRequest {
            scope: scope.into(),
            key: "VALUE".into(),
            value: vec![0x5a; 1024],
            expected_version: None,
        })
        .await
        .unwrap();
    (served, creds, client)
}

/// The client every unary figure uses: tonic over mTLS with a device certificate.
async fn channel(node: &Node, addr: SocketAddr, creds: &Creds) -> Channel {
    testkit::tls::channel(node, addr, Some(creds)).await
}

/// The node's own rustls server config (certificate, optional verified client certificates, h2).
fn node_tls(node: &Node) -> Arc<rustls::ServerConfig> {
    let certificate = server::ServerCertificate::new(
        node.identity().server_cert_chain(),
        node.identity().server_private_key().unwrap(),
    )
    .unwrap();
    server::server_tls_config(certificate, node.identity().ca().certificate_der().clone()).unwrap()
}

/// The bare baseline: the generated VaultService server answering GetSecret with a canned
/// response (the bytes the node answered), no gate, no policy, no database, no crypto.
#[derive(Debug, Clone)]
struct Echo(pb::GetSecretResponse);

#[tonic::async_trait]
impl VaultService for Echo {
    async fn put_secret(
        &self,
        _: Request<pb::PutSecretRequest>,
    ) -> Result<Response<pb::PutSecretResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
    async fn get_secret(
        &self,
        _: Request<pb::GetSecretRequest>,
    ) -> Result<Response<pb::GetSecretResponse>, Status> {
        Ok(Response::new(self.0.clone()))
    }
    async fn list_secrets(
        &self,
        _: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
    async fn delete_secret(
        &self,
        _: Request<pb::DeleteSecretRequest>,
    ) -> Result<Response<pb::DeleteSecretResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
    async fn get_secret_metadata(
        &self,
        _: Request<pb::GetSecretMetadataRequest>,
    ) -> Result<Response<pb::GetSecretMetadataResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
    async fn rotate_key(
        &self,
        _: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
    type WatchSecretsStream = tokio_stream::Empty<Result<pb::WatchSecretsResponse, Status>>;
    async fn watch_secrets(
        &self,
        _: Request<pb::WatchSecretsRequest>,
    ) -> Result<Response<Self::WatchSecretsStream>, Status> {
        Err(Status::unimplemented("echo"))
    }
}

/// Serves [`Echo`] behind the node's TLS config and accept loop.
async fn serve_echo(node: &Node, canned: pb::GetSecretResponse) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The bench's clients all come from 127.0.0.1: no per-address share in the way.
    let limits = server::GrpcLimits {
        max_connections_per_address: 65_536,
        max_connections: 65_536,
        ..Default::default()
    };
    let incoming = server::tls_incoming(
        listener,
        node_tls(node),
        &limits,
        server::GrpcLoad::new(&limits),
        Default::default(),
    );
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(VaultServiceServer::new(Echo(canned)))
            .serve_with_incoming(incoming)
            .await
            .unwrap()
    });
    addr
}

fn get_call(client: VaultServiceClient<Channel>, scope: &str, key: &str) -> Call {
    let (scope, key) = (scope.to_owned(), key.to_owned());
    Arc::new(move |_| {
        let mut client = client.clone();
        let request = pb::GetSecretRequest { scope: scope.clone(), key: key.clone(), version: 0 };
        Box::pin(async move {
            let r = client.get_secret(request).await.unwrap().into_inner();
            assert_eq!(r.value.len(), 1024);
        })
    })
}

// ---------------------------------------------------------------------------------------------
// (1) Unary over mTLS, (2) durable writes, (3) authorization share

struct Unary {
    get_p50_at_1_us: f64,
}

async fn unary(report: &mut Report, s: &Sizing, durable: bool) -> Unary {
    println!(
        "\n(1) unary over mTLS: VaultService/GetSecret (1 KiB) vs a bare tonic service, same TLS, same client"
    );
    let (served, creds, mut client) = node_with_value(testkit::node_options(), "bench/unary").await;
    let canned = client
        .get_secret(pb::GetSecretRequest { scope: "bench/unary".into(), key: "VALUE".into(), version: 0 })
        .await
        .unwrap()
        .into_inner();
    let echo_addr = serve_echo(&served.node, canned).await;
    let echo = VaultServiceClient::new(channel(&served.node, echo_addr, &creds).await);

    let mut p50_at_1 = 0.0;
    // The bare service's round trip at 1 in flight and its rate at 64: what scenario 2 sets
    // its ceilings with (a node that did nothing but answer).
    let (mut bare_p50_at_1_us, mut bare_rate_at_64, mut bare_cpu_at_64) = (0.0, 0.0, 0.0);
    let calls =
        [get_call(echo.clone(), "bench/unary", "VALUE"), get_call(client.clone(), "bench/unary", "VALUE")];
    for in_flight in [1usize, 16, 64] {
        let [e, g] = in_turns(in_flight, s, s.pick(6, 2), &calls).await;
        if in_flight == 1 {
            p50_at_1 = g.us(0.5);
            bare_p50_at_1_us = e.us(0.5);
        }
        if in_flight == 64 {
            bare_rate_at_64 = e.rate();
            bare_cpu_at_64 = e.cpu_us;
        }
        report.add(
            "1",
            format!("GetSecret throughput, {in_flight} in flight"),
            g.rate(),
            "req/s",
            Some(("bare tonic", e.rate())),
            "ratio ≥ 0.8",
            Some(g.rate() / e.rate() >= 0.8),
        );
        report.add(
            "1",
            format!("GetSecret CPU per call, {in_flight} in flight"),
            g.cpu_us,
            "µs",
            Some(("bare tonic", e.cpu_us)),
            "",
            None,
        );
        report.add(
            "1",
            format!("GetSecret p50, {in_flight} in flight"),
            g.ms(0.5),
            "ms",
            Some(("bare tonic", e.ms(0.5))),
            "",
            None,
        );
        report.add(
            "1",
            format!("GetSecret p99, {in_flight} in flight"),
            g.ms(0.99),
            "ms",
            Some(("bare tonic", e.ms(0.99))),
            "",
            None,
        );
        report.unary.push((in_flight, g.rate(), g.ms(0.99), e.rate(), e.ms(0.99)));
    }
    // The same reads with the vault's read cache off (every call reads its row from SQLite and
    // checks its MAC): what the cache buys, beside the same bare figures. No target.
    {
        let (uncached, _, client) = node_with_value(testkit::uncached_node_options(), "bench/unary").await;
        let u = closed_loop(64, s.warmup, s.load, get_call(client, "bench/unary", "VALUE")).await;
        report.add(
            "1",
            "GetSecret throughput, 64 in flight, read cache off",
            u.rate(),
            "req/s",
            Some(("bare tonic", bare_rate_at_64)),
            "",
            None,
        );
        report.add(
            "1",
            "GetSecret CPU per call, 64 in flight, read cache off",
            u.cpu_us,
            "µs",
            Some(("bare tonic", bare_cpu_at_64)),
            "",
            None,
        );
        uncached.stop().await;
    }

    if !durable {
        return Unary { get_p50_at_1_us: p50_at_1 };
    }
    println!("\n(2) durable writes: PutSecret over gRPC (synchronous=FULL, group commit) vs bare rusqlite");
    // `keys` = 0: every write a new secret (the worst case for the database: each lands on
    // random B-tree pages); otherwise new versions of `keys` secrets (rotating a token).
    let put = |client: VaultServiceClient<Channel>, tag: &'static str, keys: u64| -> Call {
        Arc::new(move |i| {
            let mut client = client.clone();
            let request = pb::PutSecretRequest {
                scope: "bench/put".into(),
                key: if keys == 0 { format!("{tag}-{i}") } else { format!("{tag}-{}", i % keys) },
                value: vec![0x5a; 1024],
                expected_version: None,
            };
            Box::pin(async move {
                client.put_secret(request).await.unwrap();
            })
        })
    };
    // 64 clients, each with its own connection.
    let mut clients = Vec::new();
    for _ in 0..64 {
        clients.push(VaultServiceClient::new(channel(&served.node, served.addr, &creds).await));
    }
    let many_call = |tag: &'static str, keys: u64| -> Call {
        let calls: Arc<Vec<Call>> = Arc::new(clients.iter().map(|c| put(c.clone(), tag, keys)).collect());
        Arc::new(move |i| calls[(i % 64) as usize](i))
    };
    // Each baseline runs right after the figure it is compared with: fsync times on a shared
    // disk move several-fold within a minute.
    let bare = |per_commit: usize| {
        let load = s.load;
        tokio::task::spawn_blocking(move || rusqlite_loop(per_commit, load))
    };
    let one = closed_loop(1, s.warmup, s.load, put(client.clone(), "one", 0)).await;
    let bare_one = bare(1).await.unwrap();
    let many = closed_loop(64, s.warmup, s.load, many_call("many", 0)).await;
    let bare_batched = bare(64).await.unwrap();
    let one_versions = closed_loop(1, s.warmup, s.load, put(client.clone(), "one-v", 1)).await;
    let many_versions = closed_loop(64, s.warmup, s.load, many_call("many-v", 64)).await;
    report.add(
        "2",
        "PutSecret, 1 client",
        one.rate(),
        "writes/s",
        Some(("rusqlite, 1 insert/commit", bare_one)),
        "ratio ≥ 0.8",
        Some(one.rate() / bare_one >= 0.8),
    );
    // A durable put from one client cannot beat one gRPC round trip plus one commit: the
    // best ratio this machine allows (a fast fsync makes it small; a slow disk, near 1).
    let one_ceiling = 1.0 / (1.0 / bare_one + bare_p50_at_1_us / 1e6);
    report.ceiling(one_ceiling / bare_one, 0.8);
    report.add(
        "2",
        "ceiling (estimate), 1 client: bare tonic p50 round trip + 1 rusqlite commit",
        one_ceiling,
        "writes/s",
        Some(("rusqlite, 1 insert/commit", bare_one)),
        "",
        None,
    );
    // 64 clients against one: the group-commit target, and the CPU each write took.
    let scaling = |report: &mut Report, what: &str, one: &Load, many: &Load| {
        report.add(
            "2",
            format!("PutSecret, {what}64 clients"),
            many.rate(),
            "writes/s",
            Some((
                format!("{}1 client", if what.is_empty() { "PutSecret, " } else { what }).as_str(),
                one.rate(),
            )),
            "ratio ≥ 10",
            Some(many.rate() / one.rate() >= 10.0),
        );
        // 64 clients cannot outrun bare tonic at 64 in flight (below), so neither can their
        // ratio to one client: the faster one client's round trip, the lower this ceiling.
        report.ceiling(bare_rate_at_64 / one.rate(), 10.0);
        report.add(
            "2",
            format!("PutSecret CPU per write, {what}64 clients"),
            many.cpu_us,
            "µs",
            Some(("1 client", one.cpu_us)),
            "",
            None,
        );
    };
    scaling(report, "", &one, &many);
    report.add(
        "2",
        "PutSecret, 64 clients (vs bare batches)",
        many.rate(),
        "writes/s",
        Some(("rusqlite, 64 inserts/commit", bare_batched)),
        "ratio ≥ 0.3",
        Some(many.rate() / bare_batched >= 0.3),
    );
    report.ceiling(bare_rate_at_64 / bare_batched, 0.3);
    // Nor can 64 clients' puts outrun 64 in flight of a service that answers canned bytes.
    report.add(
        "2",
        "ceiling (estimate), 64 clients: bare tonic unary, 64 in flight",
        bare_rate_at_64,
        "req/s",
        Some(("rusqlite, 64 inserts/commit", bare_batched)),
        "",
        None,
    );
    report.add(
        "2",
        "PutSecret, new versions, 1 client",
        one_versions.rate(),
        "writes/s",
        Some(("rusqlite, 1 insert/commit", bare_one)),
        "",
        None,
    );
    scaling(report, "new versions, ", &one_versions, &many_versions);
    report.add(
        "2",
        "PutSecret p99, 64 clients",
        many.ms(0.99),
        "ms",
        Some(("1 client", one.ms(0.99))),
        "",
        None,
    );
    Unary { get_p50_at_1_us: p50_at_1 }
}

/// Inserts 1 KiB rows into a bare SQLite database with the node's durability settings (WAL,
/// synchronous=FULL, secure_delete), `per_commit` rows per transaction, for `duration`; rows/s.
fn rusqlite_loop(per_commit: usize, duration: Duration) -> f64 {
    let dir = testkit::private_tempdir();
    let conn = rusqlite::Connection::open(dir.path().join("bare.db")).unwrap();
    let _: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).unwrap();
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON;
         CREATE TABLE t (scope TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL, value BLOB NOT NULL,
                         PRIMARY KEY (scope, key, version));",
    )
    .unwrap();
    let value = vec![0x5au8; 1024 + 28];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        {
            let mut stmt = conn
                .prepare_cached("INSERT INTO t (scope, key, version, value) VALUES ('bench/put', ?1, 1, ?2)")
                .unwrap();
            for _ in 0..per_commit {
                stmt.execute(rusqlite::params![format!("k{n}"), value]).unwrap();
                n += 1;
            }
        }
        conn.execute_batch("COMMIT").unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn authorization(report: &mut Report, s: &Sizing, get_p50_us: f64) {
    use support::policy::{GENERATED, Workload, per_device_policies, sample};
    println!("\n(3) authorization: Cedar decisions, defaults vs +{GENERATED} per-device policies");
    let samples = s.pick(20_000, 2_000);
    let ids: Vec<DeviceId> = (0..GENERATED).map(|_| DeviceId::generate()).collect();
    let work = Workload::new(ids[GENERATED / 2]);
    let defaults = PolicyEngine::with_defaults().unwrap();
    let generated = PolicyEngine::with_policies(&per_device_policies(&ids), 2).unwrap();
    assert!(work.gate(&defaults) && work.resource(&defaults) && work.resource(&generated));
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let gate = sample(samples, || work.gate(&defaults));
    let d = sample(samples, || work.resource(&defaults));
    let g = sample(samples, || work.resource(&generated));
    let r = sample(samples, || work.resource_remembered(&defaults));
    report.add(
        "3",
        "Cedar gate decision p50, defaults",
        us(&gate, 0.5),
        "µs",
        None,
        "≤ 10 µs",
        Some(us(&gate, 0.5) <= 10.0),
    );
    report.add(
        "3",
        "Cedar vault decision p50, defaults",
        us(&d, 0.5),
        "µs",
        None,
        "≤ 10 µs",
        Some(us(&d, 0.5) <= 10.0),
    );
    report.add("3", "Cedar vault decision p99, defaults", us(&d, 0.99), "µs", None, "", None);
    report.add(
        "3",
        format!("Cedar vault decision p50, +{GENERATED} policies"),
        us(&g, 0.5),
        "µs",
        Some(("defaults", us(&d, 0.5))),
        "ratio ≤ 5",
        Some(us(&g, 0.5) / us(&d, 0.5) <= 5.0),
    );
    report.add(
        "3",
        format!("Cedar vault decision p99, +{GENERATED} policies"),
        us(&g, 0.99),
        "µs",
        Some(("defaults", us(&d, 0.99))),
        "",
        None,
    );
    report.add(
        "3",
        "vault decision p50, remembered (the same request again)",
        us(&r, 0.5),
        "µs",
        Some(("Cedar evaluation", us(&d, 0.5))),
        "",
        None,
    );
    // One GetSecret asks twice: the method gate and the vault resource check; a repeated
    // request finds both remembered.
    let authz = us(&r, 0.5) * 2.0;
    report.add(
        "3",
        "authorization in one repeated GetSecret (gate + resource p50, remembered)",
        authz,
        "µs",
        Some(("GetSecret p50, 1 in flight", get_p50_us)),
        "",
        None,
    );
}

// ---------------------------------------------------------------------------------------------
// (4) QUIC

async fn quic(report: &mut Report, s: &Sizing) {
    let count = s.pick(20_000u64, 2_000);
    println!("\n(4) QUIC node.stream_events ({count} durable events) vs raw quinn, same frames");
    let dir = testkit::private_tempdir();
    let node = testkit::open_node(&dir.path().join("node")).await;
    let f = support::quic::run(&node, count, s.pick(2_000, 200)).await;
    for (subscribers, palyra, raw) in &f.rates {
        let (target, pass) =
            if *subscribers == 1 { ("≥ 100k events/s", Some(*palyra >= 100_000.0)) } else { ("", None) };
        report.add(
            "4",
            format!("stream_events to {subscribers} subscriber(s), total"),
            *palyra,
            "events/s",
            Some(("raw quinn", *raw)),
            target,
            pass,
        );
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    report.add(
        "4",
        "publish-to-receive p50",
        ms(&f.palyra_latency, 0.5),
        "ms",
        Some(("raw quinn", ms(&f.raw_latency, 0.5))),
        "",
        None,
    );
    report.add(
        "4",
        "publish-to-receive p99",
        ms(&f.palyra_latency, 0.99),
        "ms",
        Some(("raw quinn", ms(&f.raw_latency, 0.99))),
        "≤ 2 ms",
        Some(ms(&f.palyra_latency, 0.99) <= 2.0),
    );
    node.close_db();
}

// ---------------------------------------------------------------------------------------------
// (5) Scale

/// Stores secrets `from..to` in `scope` with 64 concurrent writers straight into the vault
/// (group commit), so 100k take seconds, not minutes.
async fn fill(node: &Node, scope: &str, from: usize, to: usize) {
    let tasks: Vec<_> = (0..64)
        .map(|w| {
            let vault = node.vault().clone();
            let scope = Scope::parse(scope).unwrap();
            tokio::spawn(async move {
                for i in (from + w..to).step_by(64) {
                    let key = SecretKey::parse(&format!("K{i:06}")).unwrap();
                    vault.put(&scope, &key, SecretValue::new(vec![0x5a; 1024]), None).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Walks every page of `scope` `rounds` times; page latency.
async fn list_pages(client: &VaultServiceClient<Channel>, scope: &str, rounds: usize) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new(3).unwrap();
    for _ in 0..rounds {
        let mut token = String::new();
        loop {
            let start = Instant::now();
            let page = client
                .clone()
                .list_secrets(pb::ListSecretsRequest {
                    scope: scope.into(),
                    page_size: 100,
                    page_token: token,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            h.record(start.elapsed().as_nanos() as u64).unwrap();
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
    }
    h
}

async fn scale(report: &mut Report, s: &Sizing) {
    let (small, large) = s.pick((1_000usize, 100_000usize), (1_000, 5_000));
    println!(
        "\n(5) scale: GetSecret (read cache off) and ListSecrets with {small} vs {large} stored secrets"
    );
    // The read cache off: this measures the database's point read at each size (with it on,
    // the one key read here would be answered from memory at both).
    // One node at each size, so their reads can take turns (see `in_turns`).
    let mut nodes = Vec::new();
    for count in [small, large] {
        let served = TestNode::start_with(testkit::uncached_node_options()).await;
        let creds = testkit::mint(&served.node, Role::Device, "bench-peer", &["bench"]).await;
        let client = VaultServiceClient::new(channel(&served.node, served.addr, &creds).await);
        let started = Instant::now();
        fill(&served.node, "bench/scale", 0, count).await;
        println!("  (stored {count} secrets in {:.1?})", started.elapsed());
        nodes.push((served, client));
    }
    let gets = [&nodes[0].1, &nodes[1].1].map(|client| get_call(client.clone(), "bench/scale", "K000500"));
    let [at_small, at_large] = in_turns(1, s, s.pick(6, 2), &gets).await;
    let list_small = list_pages(&nodes[0].1, "bench/scale", 10).await;
    let list_large = list_pages(&nodes[1].1, "bench/scale", 1).await;
    report.add(
        "5",
        format!("GetSecret p50 at {large} secrets, read cache off"),
        at_large.us(0.5),
        "µs",
        Some((format!("at {small}").as_str(), at_small.us(0.5))),
        "ratio ≤ 1.2",
        Some(at_large.us(0.5) / at_small.us(0.5) <= 1.2),
    );
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e6;
    report.add(
        "5",
        format!("ListSecrets page (100) p50 at {large}"),
        ms(&list_large, 0.5),
        "ms",
        Some((format!("at {small}").as_str(), ms(&list_small, 0.5))),
        "",
        None,
    );
    report.add(
        "5",
        format!("ListSecrets page (100) p99 at {large}"),
        ms(&list_large, 0.99),
        "ms",
        Some((format!("at {small}").as_str(), ms(&list_small, 0.99))),
        "",
        None,
    );
}

// ---------------------------------------------------------------------------------------------
// (6) Footprint

/// `palyra serve` as a child process on a data dir that already exists.
struct Child {
    child: std::process::Child,
}

impl Child {
    fn spawn(data: &Path, port: u16) -> (Child, Instant) {
        let started = Instant::now();
        let child = palyra_bin!()
            .cli(data)
            .args([
                "serve",
                "--grpc-addr",
                &format!("127.0.0.1:{port}"),
                "--quic-addr",
                "127.0.0.1:0",
                "--console-addr",
                "127.0.0.1:0",
            ])
            .env("PALYRA_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        (Child { child }, started)
    }

    /// Polls `grpc.health.v1.Health/Check` with the operator certificate until it says SERVING.
    async fn wait_serving(&mut self, data: &Path, port: u16) {
        let dir = data.join("operator");
        loop {
            assert!(self.child.try_wait().unwrap().is_none(), "palyra serve exited");
            if let Ok(ca) = std::fs::read_to_string(dir.join("ca.pem"))
                && let (Ok(cert), Ok(key)) = (
                    std::fs::read_to_string(dir.join("cert.pem")),
                    std::fs::read_to_string(dir.join("key.pem")),
                )
            {
                let tls = Pems { ca, client: Some((cert, key)) }.tonic();
                let endpoint = testkit::tls::endpoint(&format!("https://127.0.0.1:{port}"), tls);
                if let Ok(ch) = endpoint.connect().await {
                    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
                    if let Ok(r) = health.check(tonic_health::pb::HealthCheckRequest::default()).await
                        && r.into_inner().status
                            == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                    {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn rss_kib(&self) -> f64 {
        support::host::proc_status(self.child.id(), "VmRSS").map_or(f64::NAN, |kib| kib as f64)
    }

    fn stop(mut self) {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn footprint(report: &mut Report, s: &Sizing) {
    println!("\n(6) footprint: palyra serve as a child process; full mTLS handshakes");
    let dir = testkit::private_tempdir();
    let data = dir.path().join("node");
    // The first start initialises the data dir; the timed starts reuse it.
    let port = free_port();
    let (mut first, _) = Child::spawn(&data, port);
    first.wait_serving(&data, port).await;
    first.stop();
    let mut starts = Vec::new();
    let mut rss = f64::NAN;
    for round in 0..s.pick(5, 2) {
        let port = free_port();
        let (mut child, started) = Child::spawn(&data, port);
        child.wait_serving(&data, port).await;
        starts.push(started.elapsed().as_secs_f64() * 1000.0);
        if round == 0 {
            tokio::time::sleep(s.pick(Duration::from_secs(2), Duration::from_millis(300))).await;
            rss = child.rss_kib() / 1024.0;
        }
        child.stop();
    }
    // The floor of starting any process of this binary: `palyra --version` to exit.
    let mut floor = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        palyra_bin!().command().arg("--version").output().unwrap();
        floor.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    report.add("6", "idle RSS of palyra serve", rss, "MiB", None, "≤ 30 MiB", Some(rss <= 30.0));
    let start_ms = median(starts);
    report.add(
        "6",
        "start to serving, existing data dir (median)",
        start_ms,
        "ms",
        Some(("palyra --version", median(floor))),
        "≤ 50 ms",
        Some(start_ms <= 50.0),
    );

    // Full handshakes (no resumption, client certificate) against the node's accept loop, and
    // against a bare tokio-rustls accept loop with the same rustls config.
    let served = serve_node().await;
    let creds = testkit::mint(&served.node, Role::Device, "bench-peer", &["bench"]).await;
    let bare = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(node_tls(&served.node));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = acceptor.accept(tcp).await;
                });
            }
        });
        addr
    };
    let palyra_rate = handshakes(&served.node, served.addr, &creds, s).await;
    let bare_rate = handshakes(&served.node, bare, &creds, s).await;
    report.add(
        "6",
        "full mTLS handshakes/s (client in the same process)",
        palyra_rate,
        "/s",
        Some(("bare tokio-rustls accept", bare_rate)),
        "",
        None,
    );
}

async fn handshakes(node: &Node, addr: SocketAddr, creds: &Creds, s: &Sizing) -> f64 {
    use rustls_pki_types::ServerName;
    let mut config = Pems::device(node, Some(creds)).rustls();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let call: Call = Arc::new(move |_| {
        let connector = connector.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
            drop(tls);
        })
    });
    closed_loop(4, s.warmup, s.load, call).await.rate()
}

// ---------------------------------------------------------------------------------------------
// (7) Pairing

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    #[cfg(target_os = "linux")]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    }
    #[cfg(not(target_os = "linux"))]
    {
        // Elsewhere wall time on an otherwise idle thread stands in for CPU time.
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        ORIGIN.get_or_init(Instant::now).elapsed()
    }
}

/// Runs `f`, adding the thread CPU time it took to `acc`.
fn cpu(acc: &mut Duration, f: &mut dyn FnMut()) {
    let t = thread_cpu();
    f();
    *acc += thread_cpu() - t;
}

fn pairing(report: &mut Report, s: &Sizing) {
    use palyra::pairing::CodeState;
    use palyra::pairing::code::{CodeId, PairingCode, Pin};
    use palyra::pairing::handshake::{
        DEVICE_IDENTITY, DeviceName, DevicePairing, FinishMessage, NODE_IDENTITY, NodeSession, StartMessage,
    };
    use spake2::{Ed25519Group, Identity as PakeId, Password, Spake2};
    println!("\n(7) pairing: CPU time of one complete handshake, each side (sans-IO state machines)");
    let n = s.pick(300, 30);
    const CA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let now = SystemTime::now();
    let pin = Pin::parse("482913").unwrap();
    // Setup outside the measurement: identities and CSRs exist before a handshake starts.
    let setups: Vec<(DeviceIdentity, String, PairingCode)> = (0..n)
        .map(|_| {
            let DeviceKeys { identity, csr_pem: csr, .. } = DeviceKeys::generate();
            let code = PairingCode {
                code_id: CodeId::generate().unwrap(),
                sealed_pin: Some(vec![0]),
                role: Role::Device,
                created_at: now,
                expires_at: now + Duration::from_secs(600),
                max_attempts: 5,
                attempts_left: 5,
                state: CodeState::Active,
            };
            (identity, csr, code)
        })
        .collect();
    let (mut device_cpu, mut node_cpu) = (Duration::ZERO, Duration::ZERO);
    for (identity, csr, code) in &setups {
        let mut device_state = None;
        cpu(&mut device_cpu, &mut || {
            device_state = Some(
                DevicePairing::start(
                    identity,
                    code.code_id.clone(),
                    &pin,
                    CA,
                    DeviceName::parse("phone").unwrap(),
                    csr,
                )
                .unwrap(),
            );
        });
        let (mut device, start) = device_state.unwrap();
        let mut node_state = None;
        cpu(&mut node_cpu, &mut || {
            let wire = StartMessage::decode(
                start.code_id.as_str(),
                start.device_name.as_str(),
                &start.signing_public_key,
                &start.agreement_public_key,
                &start.csr_pem,
                &start.pake_message,
            )
            .unwrap();
            node_state = Some(NodeSession::start(code, &pin, CA, wire, now).unwrap());
        });
        let (mut session, reply) = node_state.unwrap();
        let mut finish = None;
        cpu(&mut device_cpu, &mut || finish = Some(device.handle_reply(identity, &reply, now).unwrap()));
        let finish = finish.unwrap();
        cpu(&mut node_cpu, &mut || {
            let wire =
                FinishMessage::decode(&finish.session_id, &finish.client_confirmation, &finish.signature)
                    .unwrap();
            session.handle_finish(&wire, now).unwrap();
        });
    }
    // Baseline: the bare SPAKE2 exchange, both sides, the floor of any PAKE handshake.
    let mut bare = Duration::ZERO;
    for _ in 0..n {
        cpu(&mut bare, &mut || {
            let pw = Password::new(b"482913");
            let (a, ma) = Spake2::<Ed25519Group>::start_a(
                &pw,
                &PakeId::new(DEVICE_IDENTITY),
                &PakeId::new(NODE_IDENTITY),
            );
            let (b, mb) = Spake2::<Ed25519Group>::start_b(
                &pw,
                &PakeId::new(DEVICE_IDENTITY),
                &PakeId::new(NODE_IDENTITY),
            );
            let ka = a.finish(&mb).unwrap();
            let kb = b.finish(&ma).unwrap();
            assert_eq!(ka, kb);
        });
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    let bare_side = per(bare) / 2.0;
    report.add(
        "7",
        "pairing handshake CPU, device side",
        per(device_cpu),
        "µs",
        Some(("bare SPAKE2, one side", bare_side)),
        "",
        None,
    );
    report.add(
        "7",
        "pairing handshake CPU, node side",
        per(node_cpu),
        "µs",
        Some(("bare SPAKE2, one side", bare_side)),
        "",
        None,
    );
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes --bench; without it (`cargo test --benches`) stay quick too.
    let quick = args.iter().any(|a| a == "--quick") || !args.iter().any(|a| a == "--bench");
    let sizing = if quick {
        Sizing { quick, load: Duration::from_millis(300), warmup: Duration::from_millis(50) }
    } else {
        Sizing { quick, load: Duration::from_secs(3), warmup: Duration::from_millis(300) }
    };
    let only: Option<Vec<u32>> = std::env::var("PALYRA_BENCH_ONLY")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    let wants = |n: u32| only.as_ref().is_none_or(|o| o.contains(&n));
    testkit::install_crypto_provider();
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut report = Report::default();
    println!(
        "palyra end-to-end bench ({}; {} cores)",
        if quick { "--quick" } else { "full" },
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    runtime.block_on(async {
        let mut get_p50 = f64::NAN;
        if wants(1) || wants(2) || wants(3) {
            get_p50 = unary(&mut report, &sizing, wants(2)).await.get_p50_at_1_us;
        }
        if wants(3) {
            authorization(&mut report, &sizing, get_p50);
        }
        if wants(4) {
            quic(&mut report, &sizing).await;
        }
        if wants(5) {
            scale(&mut report, &sizing).await;
        }
        if wants(6) {
            footprint(&mut report, &sizing).await;
        }
        if wants(8) {
            metrics_overhead(&mut report, &sizing).await;
        }
    });
    if wants(7) {
        pairing(&mut report, &sizing);
    }
    let elapsed = started.elapsed();

    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let header = format!(
        "`cargo bench --bench e2e`{} on {} cores, {:.0} s.",
        if quick { " -- --quick" } else { "" },
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        elapsed.as_secs_f64()
    );
    let md = report.markdown(&header);
    std::fs::write(dir.join("report.md"), &md).unwrap();
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&report.json(&sizing, elapsed)).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("unary.svg"), report.svg()).unwrap();
    println!("\n{md}");
    let misses = report.rows.iter().filter(|r| r.pass == Some(false)).count();
    let capped = report.rows.iter().filter(|r| r.ceiling.is_some()).count();
    println!(
        "{} figures, {misses} target(s) missed ({capped} of them above what this machine allows), {:.0} s; \
         wrote {}/report.json, report.md, unary.svg",
        report.rows.len(),
        elapsed.as_secs_f64(),
        dir.display()
    );
    // Dropping the runtime would wait on servers that never stop.
    runtime.shutdown_background();
}
