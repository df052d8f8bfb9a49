//! Observability of `palyra serve` as an operator runs it: Prometheus metrics scraped over real
//! HTTP from `--metrics-addr` move with the calls made (requests by method and code,
//! authorization decisions, QUIC connections and streams, secrets), never name a scope, key or
//! value; the endpoint answers
//! only `GET /metrics` and holds few connections per address. `--log-format json` writes one
//! JSON object a line, the gate's decision among them with its method, principal and decision.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palyra::quic::client::QuicClient;
use palyra::testkit::tls::Pems;
use palyra::testkit::{self, Palyra, Serving, palyra_bin, spawn_serving};
use palyra::wire::pb::vault::v1::{self as pb, vault_service_client::VaultServiceClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PALYRA: Palyra = palyra_bin!();

/// Names no metric may carry: the test's own scope, key and value.
const SCOPE: &str = "tenant-zebra-7q";
const KEY: &str = "KEY_OKAPI_93";
const VALUE: &str = "value-narwhal-5521";

const GET_SECRET: &str = "palyra.vault.v1.VaultService/GetSecret";

/// `palyra serve` with metrics on a free loopback port; its stderr lines (but the banner) go
/// to the returned list.
fn serve(data: &Path, log: &str, extra: &[&str]) -> (Serving, Arc<Mutex<Vec<String>>>) {
    let mut command = PALYRA.serve_command(data, log);
    command.args(["--metrics-addr", "127.0.0.1:0"]).args(extra);
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let serving =
        spawn_serving(command, Duration::from_secs(120), move |line| sink.lock().unwrap().push(line));
    (serving, lines)
}

/// The metrics address from serve's log line `... serving Prometheus metrics at http://ADDR/metrics`.
fn metrics_addr(lines: &Mutex<Vec<String>>) -> SocketAddr {
    let lines = lines.lock().unwrap();
    lines
        .iter()
        .find_map(|line| {
            let rest = line.split("metrics at http://").nth(1)?;
            rest.split("/metrics").next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{}", lines.join("\n")))
}

/// Sends `request` raw and returns the whole answer (the request closes the connection).
async fn http(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    String::from_utf8(answer).unwrap()
}

async fn scrape(addr: SocketAddr) -> String {
    let answer = http(addr, "GET /metrics HTTP/1.1\r\nhost: prometheus\r\nconnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{answer}");
    answer.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// The value of the sample `series` (name and labels exactly as printed), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn operator(data: &Path, grpc: SocketAddr) -> VaultServiceClient<tonic::transport::Channel> {
    VaultServiceClient::new(testkit::tls::channel_from_dir(grpc, &data.join("operator")).await)
}

async fn put_and_get(client: &mut VaultServiceClient<tonic::transport::Channel>, gets: usize) {
    client
        .put_secret(pb::PutSecretRequest {
            scope: SCOPE.into(),
            key: KEY.into(),
            value: VALUE.as_bytes().to_vec(),
            expected_version: None,
        })
        .await
        .unwrap();
    for _ in 0..gets {
        let got = client
            .get_secret(pb::GetSecretRequest { scope: SCOPE.into(), key: KEY.into(), version: 0 })
            .await
            .unwrap();
        assert_eq!(got.into_inner().value, VALUE.as_bytes());
    }
}

/// A call the default policies deny even the operator: the reserved scope `palyra/`.
async fn denied_get(client: &mut VaultServiceClient<tonic::transport::Channel>) {
    let refused = client
        .get_secret(pb::GetSecretRequest { scope: "palyra/reserved".into(), key: KEY.into(), version: 0 })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_calls_and_never_name_a_scope_key_or_value() {
    let dir = testkit::private_tempdir();
    let data = dir.path().join("node");
    let (mut serving, lines) = serve(&data, "palyra=info", &[]);
    let addr = metrics_addr(&lines);

    let before = scrape(addr).await;
    let ok = format!(r#"palyra_rpc_requests_total{{method="{GET_SECRET}",code="OK"}}"#);
    let denied = format!(r#"palyra_rpc_requests_total{{method="{GET_SECRET}",code="PERMISSION_DENIED"}}"#);
    let deny = r#"palyra_authz_decisions_total{decision="deny"}"#;
    assert_eq!(sample(&before, &ok), 0.0);
    assert!(before.contains(&format!("palyra_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))));

    let mut client = operator(&data, serving.grpc).await;
    put_and_get(&mut client, 3).await;
    denied_get(&mut client).await;
    assert!(before.contains("\npalyra_quic_connections 0\n"), "{before}");
    // A QUIC peer following the event log: one connection, its health stream done, its event
    // stream open.
    let quic = QuicClient::connect(serving.quic, "localhost", Pems::from_dir(&data.join("operator")).quic())
        .await
        .unwrap();
    quic.health().await.unwrap();
    let mut events = quic.stream_events(0, Vec::new()).await.unwrap();
    events.next().await.unwrap().expect("the put's event");

    // The node's state (secrets, sizes, expiry) is read at most once a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = scrape(addr).await;
    assert_eq!(sample(&after, &ok), 3.0, "{after}");
    assert_eq!(sample(&after, &denied), 1.0, "{after}");
    assert!(sample(&after, deny) >= sample(&before, deny) + 1.0, "{after}");
    assert!(sample(&after, r#"palyra_authz_decisions_total{decision="allow"}"#) >= 4.0);
    let requests = format!(r#"palyra_rpc_duration_seconds_count{{method="{GET_SECRET}"}}"#);
    assert_eq!(sample(&after, &requests), 4.0, "{after}");
    assert_eq!(sample(&after, "palyra_secrets"), 1.0, "{after}");
    assert!(sample(&after, "palyra_audit_records_total") >= 5.0, "{after}");
    assert!(sample(&after, "palyra_db_size_bytes") > 0.0);
    assert!(sample(&after, "palyra_server_certificate_expiry_timestamp_seconds") > 1.7e9, "{after}");
    // The operator's certificate is the one device.
    assert!(sample(&after, "palyra_device_certificate_expiry_timestamp_seconds") > 1.7e9, "{after}");
    assert_eq!(sample(&after, "palyra_quic_connections"), 1.0, "{after}");
    assert_eq!(sample(&after, "palyra_quic_streams"), 1.0, "{after}");
    assert_eq!(sample(&after, "palyra_quic_streams_opened_total"), 2.0, "{after}");
    assert!(sample(&after, "palyra_event_subscribers") >= 1.0, "{after}");
    for name in [SCOPE, KEY, VALUE, "palyra/reserved"] {
        assert!(!after.contains(name), "the metrics name {name:?}:\n{after}");
    }
    // Every line is a comment or a sample of a palyra_ metric.
    for line in after.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        assert!(line.starts_with("palyra_"), "{line}");
    }
    serving.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_get_metrics_is_served_and_connections_are_bounded_per_address() {
    let dir = testkit::private_tempdir();
    let data = dir.path().join("node");
    let (mut serving, lines) = serve(&data, "palyra=info", &[]);
    let addr = metrics_addr(&lines);
    for request in [
        "POST /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        "GET /metrics/../admin HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        "DELETE /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    ] {
        let answer = http(addr, request).await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{request:?} → {answer}");
        assert!(!answer.contains("palyra_"), "{answer}");
    }
    let with_body =
        http(addr, "GET /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nconnection: close\r\n\r\nabcd")
            .await;
    assert!(with_body.starts_with("HTTP/1.1 400"), "{with_body}");
    // A head larger than the server buffers is refused, not read on.
    let huge = format!("GET /metrics HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n", "a".repeat(200 * 1024));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(huge.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await.unwrap();
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));

    // Four keep-alive connections from one address hold its share (each answered once, so the
    // server has surely accepted it); the fifth is turned away at once.
    let mut held = Vec::new();
    for attempt in 0.. {
        if held.len() == 4 {
            break;
        }
        // The connections above may still hold their slots until the server sees them close:
        // a refused one (503, or closed) is tried again.
        assert!(attempt < 200, "no slot came back");
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(b"GET /held HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        let answered = loop {
            if String::from_utf8_lossy(&answer).contains("only GET /metrics\n") {
                break true;
            }
            match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await.unwrap() {
                Ok(n) if n > 0 => answer.extend_from_slice(&buf[..n]),
                _ => break false,
            }
        };
        if answered {
            held.push(stream);
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // (Nothing is sent: the answer comes at accept, before any request is read.)
    let mut fifth = TcpStream::connect(addr).await.unwrap();
    let mut refused = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), fifth.read_to_end(&mut refused)).await.unwrap();
    let refused = String::from_utf8_lossy(&refused);
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    drop(held);
    // Their slots come back as the server sees them close.
    let mut served = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        if answer.starts_with(b"HTTP/1.1 200") {
            served = true;
            break;
        }
    }
    assert!(served, "the address's slots did not come back");
    serving.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_a_line_with_the_gates_decisions() {
    let dir = testkit::private_tempdir();
    let data = dir.path().join("node");
    let (mut serving, lines) = serve(&data, "palyra=debug,info", &["--log-format", "json"]);
    let mut client = operator(&data, serving.grpc).await;
    put_and_get(&mut client, 1).await;
    denied_get(&mut client).await;
    // The log is written as the calls are decided; give the reader thread a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    serving.kill();

    let lines = lines.lock().unwrap().clone();
    let mut events = Vec::new();
    for line in &lines {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(event.is_object() && event["level"].is_string() && event["timestamp"].is_string(), "{line}");
        assert!(!line.contains(VALUE), "a log line carries the value: {line}");
        events.push(event);
    }
    let decided = |decision: &str, scope: &str| {
        events.iter().any(|e| {
            e["method"] == GET_SECRET
                && e["decision"] == decision
                && e["principal"].as_str().is_some_and(|p| p.starts_with("device:"))
                && e["resource"].as_str().is_some_and(|r| r.contains(scope))
        })
    };
    assert!(decided("allow", SCOPE), "no allow decision in:\n{}", lines.join("\n"));
    assert!(decided("deny", "palyra/reserved"), "no deny decision in:\n{}", lines.join("\n"));
    assert!(events.iter().any(|e| e["message"] == "palyra is serving"), "{}", lines.join("\n"));
}

/// Scrapes until `series` satisfies `done` (20 s at most) and returns its last value.
async fn scrape_until(addr: SocketAddr, series: &str, done: impl Fn(f64) -> bool) -> f64 {
    let mut value = f64::NAN;
    for _ in 0..200 {
        let text = scrape(addr).await;
        assert!(text.contains(series), "{series} is exported:\n{text}");
        value = sample(&text, series);
        if done(value) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_sinks_lag_is_a_metric_that_grows_while_it_fails_and_drains() {
    let dir = testkit::private_tempdir();
    let data = dir.path().join("node");
    let logs = dir.path().join("logs");
    let config = dir.path().join("palyra.toml");
    let sink = logs.join("audit.jsonl");
    std::fs::write(&config, format!("[audit]\nsink = \"file:{}\"\n", sink.display())).unwrap();
    let (mut serving, lines) = serve(&data, "palyra=info", &["--config", config.to_str().unwrap()]);
    let addr = metrics_addr(&lines);
    let lag = "palyra_audit_sink_lag_records";

    let mut client = operator(&data, serving.grpc).await;
    put_and_get(&mut client, 3).await;
    assert_eq!(scrape_until(addr, lag, |v| v == 0.0).await, 0.0, "the sink catches up");

    // The sink's directory goes away: records wait in the table and the lag shows them.
    std::fs::remove_dir_all(&logs).unwrap();
    put_and_get(&mut client, 5).await;
    assert!(scrape_until(addr, lag, |v| v >= 5.0).await >= 5.0, "undelivered records are counted");

    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700).create(&logs).unwrap();
    assert_eq!(scrape_until(addr, lag, |v| v == 0.0).await, 0.0, "and drained once it is back");
    assert!(std::fs::read_to_string(&sink).unwrap().lines().count() >= 5);
    serving.kill();
}
