//! QUIC data plane: `node.stream_events` throughput to 1 and 16 peers and publish-to-receive
//! latency (p50/p99, hdrhistogram), each beside a raw quinn stream carrying the same frames in
//! the same run, printed as ratios. Targets (DESIGN.md §5): ≥ 100k events/s to one peer,
//! p99 ≤ 2 ms. Reports, does not assert.
//!
//! `cargo bench --bench quic` (release). `PALYRA_BENCH_EVENTS` sets the replayed events
//! (default 100,000, the default retention).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use palyra::events::NewEvent;
use palyra::identity::ca::generate_tls_key_and_csr;
use palyra::identity::{Device, DeviceIdentity, DeviceStatus, Role};
use palyra::node::{KeyBackendChoice, Node, NodeOptions};
use palyra::quic::client::{ClientTls, QuicClient};
use palyra::quic::frame;
use palyra::quic::{QuicConfig, QuicServer, pb};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

fn private_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    dir
}

/// Registers a node-role peer and returns its client TLS material.
async fn peer(node: &Node) -> (String, String) {
    let identity = DeviceIdentity::generate().unwrap();
    let id = identity.id();
    let (key_pem, csr_pem) = generate_tls_key_and_csr(id).unwrap();
    let now = SystemTime::now();
    let issued = node
        .identity
        .ca()
        .issue_client_certificate(&csr_pem, id, Role::Node, Duration::from_secs(3600), now)
        .unwrap();
    node.core
        .store
        .insert_device(&Device {
            id,
            name: "bench-peer".into(),
            fingerprint: identity.fingerprint(),
            signing_public_key: identity.signing_public_key(),
            role: Role::Node,
            status: DeviceStatus::Active,
            paired_at: now,
            certificate_expires_at: issued.not_after,
            revoked_at: None,
            revoke_reason: None,
            scopes: Vec::new(),
        })
        .await
        .unwrap();
    (issued.cert_pem, key_pem.to_string())
}

fn event(i: u64) -> NewEvent {
    NewEvent::new("vault.secret.written", format!("bench/scope/key-{i}"))
        .with("scope", "bench/scope")
        .with("key", format!("key-{i}"))
        .with("version", 1)
}

// ---- the raw quinn baseline: same TLS stack, same frames, no policy, no database ----

struct Raw {
    addr: SocketAddr,
    ca: CertificateDer<'static>,
}

/// A bare quinn server: on each stream, after one byte of request, either writes `frames` and
/// finishes, or (request byte 1) forwards what arrives on the live channel.
fn raw_server(frames: Bytes, live: Arc<Mutex<Option<mpsc::UnboundedReceiver<Bytes>>>>) -> Raw {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let ca = cert.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let mut tls =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ca.clone()], key)
            .unwrap();
    tls.alpn_protocols = vec![b"raw".to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let endpoint = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(crypto)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let (frames, live) = (frames.clone(), Arc::clone(&live));
            tokio::spawn(async move {
                let conn = incoming.await.unwrap();
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let (frames, live) = (frames.clone(), Arc::clone(&live));
                    tokio::spawn(async move {
                        let mut mode = [0u8; 1];
                        recv.read_exact(&mut mode).await.unwrap();
                        if mode[0] == 0 {
                            for chunk in frames.chunks(64 * 1024) {
                                send.write_all(chunk).await.unwrap();
                            }
                            let _ = send.finish();
                            let _ = send.stopped().await;
                        } else {
                            let mut rx = live.lock().unwrap().take().unwrap();
                            while let Some(frame) = rx.recv().await {
                                if send.write_all(&frame).await.is_err() {
                                    return;
                                }
                            }
                        }
                    });
                }
            });
        }
    });
    Raw { addr, ca }
}

async fn raw_client(raw: &Raw) -> (quinn::Endpoint, quinn::Connection) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(raw.ca.clone()).unwrap();
    let mut tls =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    tls.alpn_protocols = vec![b"raw".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = endpoint.connect(raw.addr, "localhost").unwrap().await.unwrap();
    (endpoint, conn)
}

/// Reads and decodes every frame of one raw stream; returns how many.
async fn raw_replay(raw: &Raw) -> u64 {
    let (_endpoint, conn) = raw_client(raw).await;
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0]).await.unwrap();
    let _ = send.finish();
    let mut frames = FramedRead::new(recv, frame::codec(1 << 20));
    let mut n = 0;
    while let Some(response) = frame::read::<pb::Response, _>(&mut frames, 1 << 20).await.unwrap() {
        assert!(matches!(response.body, Some(pb::response::Body::Event(_))));
        n += 1;
    }
    n
}

/// Events/s of `subscribers` concurrent replays of `count` events each.
async fn replay_rate<F, Fut>(subscribers: usize, count: u64, run: F) -> f64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u64> + Send + 'static,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..subscribers).map(|_| tokio::spawn(run())).collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), count);
    }
    (count * subscribers as u64) as f64 / start.elapsed().as_secs_f64()
}

fn report(name: &str, palyra: f64, raw: f64) {
    println!(
        "quic/{name:<28} palyra {:>10.0} events/s   raw quinn {:>10.0} events/s   ratio {:.2}",
        palyra,
        raw,
        palyra / raw
    );
}

fn percentiles(h: &Histogram<u64>) -> (f64, f64) {
    (h.value_at_quantile(0.5) as f64 / 1000.0, h.value_at_quantile(0.99) as f64 / 1000.0)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs us without it: stay quick then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let count: u64 = std::env::var("PALYRA_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 2_000 } else { 100_000 });
    let latency_samples: u64 = if quick { 100 } else { 2_000 };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let dir = private_tempdir();
        let node =
            Node::open(&dir.path().join("node"), NodeOptions { key_backend: KeyBackendChoice::File, ..Default::default() })
                .await
                .unwrap();
        let server =
            QuicServer::bind(&node, QuicConfig { addr: "127.0.0.1:0".parse().unwrap(), ..Default::default() }).unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(server.run(std::future::pending()));
        let (cert, key) = peer(&node).await;
        let ca = node.identity.ca().certificate_pem().to_owned();
        let tls = move || ClientTls::from_pem(ca.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap();

        // Fill the log (group commit: concurrent appends share fsyncs).
        let start_seq = node.events.last_sequence().await.unwrap();
        let fill = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..64u64 {
            let log = node.events.clone();
            tasks.push(tokio::spawn(async move {
                for i in (w..count).step_by(64) {
                    log.append(event(i)).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        println!("quic/fill: {count} durable events in {:.2?}", fill.elapsed());

        // The same frames for the raw baseline.
        let stored = node.core.store.events_after(start_seq, count as usize).await.unwrap();
        let mut buf = BytesMut::new();
        for e in &stored {
            let wire = palyra::quic::event_to_pb(e);
            frame::encode(&pb::Response { body: Some(pb::response::Body::Event(wire)) }, &mut buf);
        }
        let live_rx = Arc::new(Mutex::new(None));
        let raw = Arc::new(raw_server(buf.freeze(), Arc::clone(&live_rx)));

        let tls = Arc::new(tls);
        for subscribers in [1usize, 16] {
            let palyra_rate = replay_rate(subscribers, count, || {
                let tls = Arc::clone(&tls);
                async move {
                    let client = QuicClient::connect(addr, "localhost", tls()).await.unwrap();
                    let mut stream = client.stream_events(start_seq, Vec::new()).await.unwrap();
                    for _ in 0..count {
                        stream.next().await.unwrap().unwrap();
                    }
                    client.close().await;
                    count
                }
            })
            .await;
            let raw_rate = replay_rate(subscribers, count, || {
                let raw = Arc::clone(&raw);
                async move { raw_replay(&raw).await }
            })
            .await;
            report(&format!("stream_events to {subscribers} peer(s) (total)"), palyra_rate, raw_rate);
        }

        // Publish-to-receive latency: "published" = the moment the hub hands the committed event
        // to subscribers, stamped by a local hub receiver; "received" = decoded by the client.
        let published: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
        let mut hub = node.core.store.event_hub().subscribe();
        let stamps = Arc::clone(&published);
        tokio::spawn(async move {
            while let Ok(e) = hub.recv().await {
                stamps.lock().unwrap().insert(e.sequence, Instant::now());
            }
        });
        let client = QuicClient::connect(addr, "localhost", tls()).await.unwrap();
        let tail = node.events.last_sequence().await.unwrap();
        let mut stream = client.stream_events(tail, Vec::new()).await.unwrap();
        let mut palyra_hist = Histogram::<u64>::new(3).unwrap();
        for i in 0..latency_samples {
            let appended = node.events.append(event(i)).await.unwrap();
            let got = stream.next().await.unwrap().unwrap();
            let received = Instant::now();
            assert_eq!(got.sequence, appended.sequence);
            let sent = published.lock().unwrap().get(&got.sequence).copied().unwrap_or(received);
            palyra_hist.record(received.saturating_duration_since(sent).as_micros() as u64).unwrap();
        }
        client.close().await;

        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        *live_rx.lock().unwrap() = Some(rx);
        let (_endpoint, conn) = raw_client(&raw).await;
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&[1]).await.unwrap();
        let mut frames = FramedRead::new(recv, frame::codec(1 << 20));
        let one = {
            let mut b = BytesMut::new();
            frame::encode(&pb::Response { body: Some(pb::response::Body::Event(palyra::quic::event_to_pb(&stored[0]))) }, &mut b);
            b.freeze()
        };
        let mut raw_hist = Histogram::<u64>::new(3).unwrap();
        for _ in 0..latency_samples {
            let sent = Instant::now();
            tx.send(one.clone()).unwrap();
            frame::read::<pb::Response, _>(&mut frames, 1 << 20).await.unwrap().unwrap();
            raw_hist.record(sent.elapsed().as_micros() as u64).unwrap();
        }
        let (p50, p99) = percentiles(&palyra_hist);
        let (raw50, raw99) = percentiles(&raw_hist);
        println!(
            "quic/publish-to-receive latency     palyra p50 {p50:.3} ms p99 {p99:.3} ms   raw quinn p50 {raw50:.3} ms p99 {raw99:.3} ms   p99 ratio {:.2}",
            p99 / raw99.max(0.001)
        );
        println!("quic/targets: >= 100000 events/s to one peer; p99 <= 2 ms");
        node.core.store.close();
    });
}
