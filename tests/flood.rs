//! Anonymous floods from one address (127.0.0.1) while another address (127.0.0.2) is served:
//! QUIC abandoned handshakes and full connections, gRPC half-open TCP, idle TLS and idle
//! anonymous HTTP/2 connections. Each budget is shown bounded per address, refusing beyond its
//! share, and released on its timeout. Timeouts are made short through the config knobs.
//! Figures (held, refused, RSS) are printed; run with `--nocapture` to see them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use palyra::identity::Role;
use palyra::quic::client::{ClientOptions, ClientTls, QuicClient};
use palyra::quic::{AddressValidation, ClientError, QuicConfig, QuicLoad};
use palyra::rpc::server::{GrpcLimits, GrpcLoad};
use palyra::testkit::tls::Pems;
use palyra::testkit::{self, Creds, GrpcServing, QuicServing, TestNode};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tonic::transport::Channel;

const FLOODER: &str = "127.0.0.1";
const OTHER: &str = "127.0.0.2";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Waits (bounded) until `check` holds, polling.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "not in time: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------- QUIC

/// A node serving QUIC with the limits under test (stopped when dropped).
struct QuicNode {
    test: TestNode,
    addr: SocketAddr,
    load: QuicLoad,
    _quic: QuicServing,
}

impl QuicNode {
    async fn start(config: QuicConfig) -> QuicNode {
        let test = TestNode::start().await;
        let quic = test.serve_quic(config);
        QuicNode { addr: quic.addr, load: quic.load.clone(), test, _quic: quic }
    }

    fn tls(&self, creds: &Creds) -> ClientTls {
        testkit::tls::quic(&self.test.node, Some(creds))
    }

    async fn connect_from(
        &self,
        local: &str,
        to: SocketAddr,
        creds: &Creds,
    ) -> Result<QuicClient, ClientError> {
        let options = ClientOptions { local_addr: Some(SocketAddr::new(ip(local), 0)), ..Default::default() };
        QuicClient::connect_with(to, "localhost", self.tls(creds), options).await
    }
}

/// A UDP relay on 127.0.0.1 that forwards a client's packets to `server` but only the first
/// `pass_back` of the server's answers back: the client's handshake is abandoned half way (after
/// its address was validated, when the first answer is the Retry).
async fn black_hole(server: SocketAddr, pass_back: usize) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let socket = UdpSocket::bind((ip(FLOODER), 0)).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        let (mut client, mut passed) = (None, 0);
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            if from == server {
                if let Some(client) = client
                    && passed < pass_back
                {
                    passed += 1;
                    let _ = socket.send_to(&buf[..n], client).await;
                }
            } else {
                client = Some(from);
                let _ = socket.send_to(&buf[..n], server).await;
            }
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_handshake_flood_from_one_address_does_not_deny_another() {
    let node = QuicNode::start(QuicConfig {
        max_connections: 8,
        max_connections_per_address: 4,
        max_handshakes: 8,
        max_handshakes_per_address: 4,
        handshake_timeout: Duration::from_secs(1),
        address_validation: AddressValidation::Always,
        ..Default::default()
    })
    .await;
    let peer = node.test.add_device(Role::Node, "peer", &[]).await;
    let rss_before = rss_kib();

    // 24 clients on 127.0.0.1 whose handshakes are abandoned after the Retry.
    let mut flood = Vec::new();
    for _ in 0..24 {
        let (relay, relay_task) = black_hole(node.addr, 1).await;
        let tls = node.tls(&peer);
        let client = tokio::spawn(async move {
            let options =
                ClientOptions { local_addr: Some(SocketAddr::new(ip(FLOODER), 0)), ..Default::default() };
            let _ = QuicClient::connect_with(relay, "localhost", tls, options).await;
        });
        flood.push((relay_task, client));
    }
    eventually("the flood holds its address's handshake share", || {
        let s = node.load.stats();
        s.handshakes.held == 4 && s.handshakes.refused_per_address > 0
    })
    .await;
    let during = node.load.stats();
    assert_eq!(during.connections.held, 0, "no slot for an unfinished handshake");

    // Meanwhile another address completes its handshake and is served.
    let started = Instant::now();
    let other =
        node.connect_from(OTHER, node.addr, &peer).await.expect("127.0.0.2 is served during the flood");
    let health = other.health().await.unwrap();
    assert_eq!(health.status, "ok");
    let other_handshake = started.elapsed();
    let stats = node.load.stats();
    println!(
        "quic flood: 24 abandoned handshakes from {FLOODER}: handshakes held {} (cap 4 per address), refused per address {}, refused total {}, retries sent {}; {OTHER} served (connect + health {:?}); connections held {}; test RSS {} KiB -> {} KiB",
        during.handshakes.held,
        stats.handshakes.refused_per_address,
        stats.handshakes.refused_total,
        stats.retries,
        other_handshake,
        stats.connections.held,
        rss_before,
        rss_kib(),
    );
    assert!(stats.retries >= 24, "every new address was asked to validate");

    // The abandoned handshakes time out and give their budget back.
    for (relay, client) in flood {
        relay.abort();
        client.abort();
    }
    eventually("abandoned handshakes time out", || node.load.stats().handshakes.held == 0).await;

    // Established connections: 4 per address, the fifth closed with code 0x1.
    let mut held = Vec::new();
    for _ in 0..4 {
        let client = node.connect_from(FLOODER, node.addr, &peer).await.unwrap();
        client.health().await.unwrap();
        held.push(client);
    }
    let refused = match node.connect_from(FLOODER, node.addr, &peer).await {
        Err(e) => e,
        Ok(client) => client.health().await.expect_err("a fifth connection from one address was served"),
    };
    match refused {
        ClientError::Closed { code, reason } => {
            assert_eq!(code, 0x1);
            assert_eq!(reason, "connection limit per address");
        }
        other => panic!("expected code 0x1, got {other}"),
    }
    // The other address still gets a slot of the total.
    let second = node.connect_from(OTHER, node.addr, &peer).await.unwrap();
    second.health().await.unwrap();
    let stats = node.load.stats();
    println!(
        "quic connections: {} held over {} addresses, {} refused per address, {} refused total",
        stats.connections.held,
        stats.connections.addresses,
        stats.connections.refused_per_address,
        stats.connections.refused_total
    );
    assert_eq!(stats.connections.held, 6);
    for c in held {
        c.close().await;
    }
    other.close().await;
    second.close().await;
}

/// The cost of Retry: full handshakes (connect + health) in sequence with address validation
/// always on and off (under load, with no load, never sends one). A debug-build figure; the
/// ratio is what matters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_retry_cost_is_printed() {
    const N: u32 = 40;
    let mut figures = Vec::new();
    for validation in [AddressValidation::UnderLoad, AddressValidation::Always] {
        let node = QuicNode::start(QuicConfig { address_validation: validation, ..Default::default() }).await;
        let peer = node.test.add_device(Role::Node, "peer", &[]).await;
        let mut spent = Duration::ZERO;
        for _ in 0..N {
            let started = Instant::now();
            let client = node.connect_from(OTHER, node.addr, &peer).await.unwrap();
            client.health().await.unwrap();
            spent += started.elapsed();
            drop(client);
        }
        let per = spent / N;
        let retries = node.load.stats().retries;
        figures.push((validation, per, retries));
    }
    let (_, without, r0) = figures[0];
    let (_, with, r1) = figures[1];
    assert_eq!(r0, 0);
    assert_eq!(r1, u64::from(N));
    println!(
        "quic retry cost (debug build, loopback, {N} sequential connect+health, each from a new client endpoint): without Retry {without:?} per connection, with Retry {with:?}, ratio {:.2}",
        with.as_secs_f64() / without.as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------- gRPC

/// A node serving gRPC with the limits under test (stopped when dropped).
struct GrpcNode {
    test: TestNode,
    addr: SocketAddr,
    load: GrpcLoad,
    _grpc: GrpcServing,
}

impl GrpcNode {
    async fn start(limits: GrpcLimits) -> GrpcNode {
        // The test node's own gRPC listener is not used: this one has the limits under test.
        let test = TestNode::start().await;
        let load = GrpcLoad::new(&limits);
        let grpc = GrpcServing::start_with(&test.node, limits, load.clone()).await;
        GrpcNode { test, addr: grpc.addr, load, _grpc: grpc }
    }

    /// An anonymous channel from `local`, connected (TCP, TLS and HTTP/2 done).
    async fn anonymous(&self, local: &str) -> Result<Channel, tonic::transport::Error> {
        let tls = Pems::device(&self.test.node, None).tonic().domain_name("localhost");
        testkit::tls::endpoint(&format!("https://{}", self.addr), tls)
            .local_address(Some(ip(local)))
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
    }
}

async fn health(channel: Channel) -> Result<(), tonic::Status> {
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    client.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.map(|_| ())
}

async fn tcp_from(local: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip(local), 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the node closed `tcp` within `wait` (EOF or reset), without sending anything.
async fn closed_within(tcp: &mut TcpStream, wait: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(tokio::time::timeout(wait, tcp.read(&mut byte)).await, Ok(Ok(0)) | Ok(Err(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_connection_flood_from_one_address_does_not_deny_another() {
    let node = GrpcNode::start(GrpcLimits {
        max_connections: 16,
        max_connections_per_address: 6,
        handshake_timeout: Duration::from_secs(1),
        anonymous_idle_timeout: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let rss_before = rss_kib();

    // 20 half-open TCP connections from 127.0.0.1 (no ClientHello): 6 held, the rest closed
    // at once.
    let mut half_open = Vec::new();
    for _ in 0..20 {
        half_open.push(tcp_from(FLOODER, node.addr).await);
    }
    eventually("the flood holds its share", || node.load.stats().connections.held == 6).await;
    let mut refused_at_once = 0;
    for tcp in &mut half_open {
        if closed_within(tcp, Duration::from_millis(20)).await {
            refused_at_once += 1;
        }
    }
    assert_eq!(refused_at_once, 14, "connections beyond the share are closed before any TLS");
    let stats = node.load.stats();
    assert_eq!(stats.connections.refused_per_address, 14);

    // Meanwhile 127.0.0.2 connects anonymously and is served.
    health(node.anonymous(OTHER).await.expect("127.0.0.2 connects during the flood")).await.unwrap();
    println!(
        "grpc half-open flood: 20 from {FLOODER}: held {}, closed at once {refused_at_once} (refused per address {}); {OTHER} served; test RSS {rss_before} KiB -> {} KiB",
        stats.connections.held,
        stats.connections.refused_per_address,
        rss_kib()
    );

    // The held ones are closed by the handshake timeout.
    let mut timed_out = 0;
    for tcp in &mut half_open {
        if closed_within(tcp, Duration::from_secs(3)).await {
            timed_out += 1;
        }
    }
    assert_eq!(timed_out, 20, "every half-open connection is closed by the handshake timeout");
    drop(half_open);

    // Idle anonymous HTTP/2 connections from 127.0.0.1: 6 connect, the 7th is refused.
    let mut idle = Vec::new();
    for _ in 0..6 {
        idle.push(node.anonymous(FLOODER).await.unwrap());
    }
    assert!(node.anonymous(FLOODER).await.is_err(), "a 7th connection from one address is refused");
    let other = node.anonymous(OTHER).await.expect("127.0.0.2 connects during the idle flood");
    health(other.clone()).await.unwrap();
    let held = node.load.stats().connections.held;
    // An operator (client certificate) connection is not subject to the idle timeout.
    let operator = {
        let tls = Pems::from_dir(&node.test.data_dir().join("operator")).tonic().domain_name("localhost");
        testkit::tls::endpoint(&format!("https://{}", node.addr), tls)
            .local_address(Some(ip("127.0.0.3")))
            .connect()
            .await
            .unwrap()
    };
    health(operator.clone()).await.unwrap();

    // Anonymous connections with no request in flight are closed after the idle timeout.
    eventually("idle anonymous connections are closed", || node.load.stats().connections.held == 1).await;
    let stats = node.load.stats();
    println!(
        "grpc idle flood: 6 idle anonymous HTTP/2 from {FLOODER} + 1 from {OTHER} held {held}, all {} closed after the 1 s idle timeout; operator connection kept (held now {}); refused per address {} in all; test RSS {} KiB",
        stats.idle_closed,
        stats.connections.held,
        stats.connections.refused_per_address,
        rss_kib()
    );
    assert!(stats.idle_closed >= 7, "the 7 idle anonymous connections were closed by the node");
    assert!(stats.connections.refused_per_address >= 15);
    drop(idle);
    health(operator).await.unwrap();
}

/// A request in flight keeps an anonymous connection open past the idle timeout; the idle time
/// counts from the end of the last request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_idle_timeout_counts_from_the_last_request() {
    let node = GrpcNode::start(GrpcLimits {
        anonymous_idle_timeout: Duration::from_millis(800),
        ..Default::default()
    })
    .await;
    let channel = node.anonymous(OTHER).await.unwrap();
    // Calls every 300 ms for 2 s: the connection stays (no reconnect: one connection served).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        health(channel.clone()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let stats = node.load.stats();
    assert_eq!(stats.idle_closed, 0, "an active anonymous connection is kept");
    assert_eq!(stats.connections.held, 1);
    eventually("then closed once idle", || node.load.stats().idle_closed == 1).await;
}
