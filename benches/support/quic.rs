//! The QUIC data plane scenario: `node.stream_events` to 1 and 16 peers and publish-to-receive
//! latency, each beside a raw quinn stream carrying the same frames in the same run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use palyra::events::NewEvent;
use palyra::identity::Role;
use palyra::node::Node;
use palyra::quic::client::QuicClient;
use palyra::quic::frame;
use palyra::quic::{QuicConfig, pb};
use palyra::testkit::tls::Pems;
use palyra::testkit::{self, NodeInternals, QuicServing};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

pub fn event(i: u64) -> NewEvent {
    NewEvent::new("vault.secret.written", format!("bench/scope/key-{i}"))
        .with("scope", "bench/scope")
        .with("key", format!("key-{i}"))
        .with("version", 1)
}

// ---- the raw quinn baseline: same TLS stack, same frames, no policy, no database ----

pub struct Raw {
    addr: SocketAddr,
    ca: CertificateDer<'static>,
}

/// A bare quinn server: on each stream, after one byte of request, either writes `frames` and
/// finishes, or (request byte 1) forwards what arrives on the live channel.
pub fn raw_server(frames: Bytes, live: Arc<Mutex<Option<mpsc::UnboundedReceiver<Bytes>>>>) -> Raw {
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

pub async fn raw_client(raw: &Raw) -> (quinn::Endpoint, quinn::Connection) {
    let mut tls = palyra::testkit::tls::rustls_config(raw.ca.clone(), None);
    tls.alpn_protocols = vec![b"raw".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = endpoint.connect(raw.addr, "localhost").unwrap().await.unwrap();
    (endpoint, conn)
}

/// Reads and decodes every frame of one raw stream; returns how many.
pub async fn raw_replay(raw: &Raw) -> u64 {
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
pub async fn replay_rate<F, Fut>(subscribers: usize, count: u64, run: F) -> f64
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

/// What the scenario measured.
#[derive(Debug)]
pub struct QuicFigures {
    /// Events replayed per subscriber.
    pub count: u64,
    /// (subscribers, palyra events/s in total, raw quinn events/s in total).
    pub rates: Vec<(usize, f64, f64)>,
    /// Publish-to-receive latency through the node, microseconds.
    pub palyra_latency: Histogram<u64>,
    /// The same frame through a raw quinn stream, microseconds.
    pub raw_latency: Histogram<u64>,
}

/// Serves QUIC for `node` on loopback, fills its event log with `count` durable events, then
/// measures replay to 1 and 16 subscribers and `latency_samples` publish-to-receive round trips,
/// each beside the raw quinn baseline.
pub async fn run(node: &Node, count: u64, latency_samples: u64) -> QuicFigures {
    // Every subscriber of the bench comes from 127.0.0.1, 16 of them connecting at once: no
    // per-address share in the way (the shares are measured by tests/flood.rs).
    let config = QuicConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        max_handshakes_per_address: palyra::quic::DEFAULT_MAX_HANDSHAKES,
        max_connections_per_address: palyra::quic::DEFAULT_MAX_CONNECTIONS,
        ..Default::default()
    };
    // Served until the scenario is done (dropping it stops the server).
    let serving = QuicServing::start(node, config);
    let addr = serving.addr;
    let creds = testkit::mint(node, Role::Node, "bench-peer", &[]).await;
    let pems = Pems::device(node, Some(&creds));
    let tls = move || pems.quic();
    let mut rates = Vec::new();

    // Fill the log (group commit: concurrent appends share fsyncs).
    let start_seq = node.events().last_sequence().await.unwrap();
    let fill = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..64u64 {
        let log = node.events().clone();
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
    let stored = node.events_after(start_seq, count as usize).await.unwrap();
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
        rates.push((subscribers, palyra_rate, raw_rate));
    }

    // Publish-to-receive latency: "published" = the moment the hub hands the committed event
    // to subscribers, stamped by a local hub receiver; "received" = decoded by the client.
    let published: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let mut hub = node.event_hub();
    let stamps = Arc::clone(&published);
    tokio::spawn(async move {
        while let Ok(e) = hub.recv().await {
            stamps.lock().unwrap().insert(e.sequence, Instant::now());
        }
    });
    let client = QuicClient::connect(addr, "localhost", tls()).await.unwrap();
    let tail = node.events().last_sequence().await.unwrap();
    let mut stream = client.stream_events(tail, Vec::new()).await.unwrap();
    let mut palyra_hist = Histogram::<u64>::new(3).unwrap();
    for i in 0..latency_samples {
        let appended = node.events().append(event(i)).await.unwrap();
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
        frame::encode(
            &pb::Response { body: Some(pb::response::Body::Event(palyra::quic::event_to_pb(&stored[0]))) },
            &mut b,
        );
        b.freeze()
    };
    let mut raw_hist = Histogram::<u64>::new(3).unwrap();
    for _ in 0..latency_samples {
        let sent = Instant::now();
        tx.send(one.clone()).unwrap();
        frame::read::<pb::Response, _>(&mut frames, 1 << 20).await.unwrap().unwrap();
        raw_hist.record(sent.elapsed().as_micros() as u64).unwrap();
    }
    drop(serving);
    QuicFigures { count, rates, palyra_latency: palyra_hist, raw_latency: raw_hist }
}
