//! Hostile input against a real node: raw HTTP/2 and gRPC framing, malformed protobuf, hostile
//! scopes and keys, oversized values, metadata and policy text, bad CSRs, foreign and expired
//! certificates, hostile QUIC peers and pairing messages. Every case asserts the exact gRPC code
//! and `ErrorInfo.reason` (or the QUIC `Error.code`) and that the message names the problem;
//! after each group the node still serves and a secret written first is intact.
//!
//! The in-process part uses `TestNode` (it needs the node's CA to mint certificates); the part
//! where memory matters (1 MiB of headers, stalled gRPC messages, 1,000 QUIC streams, 4 GiB
//! frame headers) runs against a `palyra serve` child process whose VmRSS/VmHWM are read from
//! /proc. The memory bound is a resource bound, not a timing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use palyra::identity::ca::generate_tls_key_and_csr;
use palyra::identity::{DeviceCa, DeviceId, DeviceIdentity, Role};
use palyra::pairing::code::{CodeId, Pin};
use palyra::pairing::handshake::{DeviceName, DevicePairing};
use palyra::testkit::tls::Pems;
use palyra::testkit::{self, DeviceKeys, Serving, TestNode, palyra_bin, reason};
use palyra::wire::pb::identity::v1::{self as pbi, identity_service_client::IdentityServiceClient};
use palyra::wire::pb::pairing::v1::{self as pbp, pairing_service_client::PairingServiceClient};
use palyra::wire::pb::policy::v1::{self as pbpol, policy_service_client::PolicyServiceClient};
use palyra::wire::pb::vault::v1::{self as pbv, vault_service_client::VaultServiceClient};
use prost::Message;
use rustls_pki_types::{PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

const CANARY_SCOPE: &str = "hostile/canary";
const CANARY_KEY: &str = "before";
const CANARY_VALUE: &[u8] = b"intact";
/// Generous guard so a hang fails the test instead of stalling CI; never a timing assertion.
const GUARD: Duration = Duration::from_secs(30);
/// Largest growth of the server's peak RSS over its idle RSS that the hostile load may cause.
const RSS_BOUND_MIB: f64 = 64.0;

/// Counts hostile inputs, per group, for the summary line.
#[derive(Default)]
struct Tally {
    groups: Vec<(&'static str, usize)>,
}

impl Tally {
    fn add(&mut self, group: &'static str, n: usize) {
        match self.groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, count)) => *count += n,
            None => self.groups.push((group, n)),
        }
    }
    fn one(&mut self, group: &'static str) {
        self.add(group, 1);
    }
    fn total(&self) -> usize {
        self.groups.iter().map(|(_, n)| n).sum()
    }
}

/// Asserts a refusal: exact code, exact reason, and words of the message.
#[track_caller]
fn refused(status: &Status, code: Code, want_reason: &str, words: &[&str], case: &str) {
    assert_eq!(
        (status.code(), reason(status).as_str()),
        (code, want_reason),
        "{case}: {} {:?}",
        status.code(),
        status.message()
    );
    for word in words {
        assert!(status.message().contains(word), "{case}: {:?} does not say {word:?}", status.message());
    }
    // Bounded, and free of raw control or bidi characters an operator's terminal would obey.
    assert!(status.message().len() < 512, "{case}: message of {} bytes", status.message().len());
    assert!(
        !status.message().chars().any(|c| c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c)),
        "{case}: raw control characters in {:?}",
        status.message()
    );
}

#[track_caller]
fn refused_as<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    want_reason: &str,
    words: &[&str],
    case: &str,
) -> Status {
    let status = result.expect_err(case);
    refused(&status, code, want_reason, words, case);
    status
}

fn metadata_of(status: &Status) -> HashMap<String, String> {
    use tonic_types::StatusExt;
    status.get_error_details().error_info().map(|i| i.metadata.clone()).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// TLS and raw HTTP/2

/// An h2 rustls client config with `pems`, for raw HTTP/2 connections.
fn h2_tls(pems: &Pems) -> Arc<rustls::ClientConfig> {
    let mut config = pems.rustls();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

async fn tls(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::clone(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// A raw HTTP/2 connection (its driver runs in a task).
async fn h2(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> h2::client::SendRequest<Bytes> {
    let stream = tls(addr, config).await.unwrap();
    let (send, conn) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

fn grpc_request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> http::Request<()> {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("https://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(()).unwrap()
}

/// A gRPC message: flag 0, 4-byte big-endian length, bytes.
fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// What the node answered to a raw call.
#[derive(Debug)]
#[allow(dead_code, reason = "the refusal text is shown through Debug in assertion messages")]
enum Answer {
    /// grpc-status 0 and the response message.
    Ok(Vec<u8>),
    /// A gRPC status (trailers-only or trailers).
    Status(Status),
    /// Not gRPC: an HTTP status without grpc-status.
    Http(http::StatusCode),
    /// The stream or connection was refused at the HTTP/2 level.
    Refused(String),
}

impl Answer {
    #[track_caller]
    fn status(self, case: &str) -> Status {
        match self {
            Answer::Status(s) if s.code() != Code::Ok => s,
            other => panic!("{case}: expected a gRPC error, got {other:?}"),
        }
    }
}

/// Sends `body` to `path` on `send` (ending the stream) and reads the answer.
async fn raw_call(
    send: &h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answer {
    tokio::time::timeout(GUARD, raw_call_inner(send, addr, path, headers, body))
        .await
        .expect("answer in time")
}

async fn raw_call_inner(
    send: &h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answer {
    let mut send = match send.clone().ready().await {
        Ok(s) => s,
        Err(e) => return Answer::Refused(e.to_string()),
    };
    let (response, mut stream) = match send.send_request(grpc_request(addr, path, headers), false) {
        Ok(pair) => pair,
        Err(e) => return Answer::Refused(e.to_string()),
    };
    if let Err(e) = stream.send_data(Bytes::from(body), true) {
        return Answer::Refused(e.to_string());
    }
    let response = match response.await {
        Ok(r) => r,
        Err(e) => return Answer::Refused(e.to_string()),
    };
    let (parts, mut body) = response.into_parts();
    if let Some(status) = Status::from_header_map(&parts.headers) {
        return Answer::Status(status);
    }
    if parts.status != http::StatusCode::OK {
        return Answer::Http(parts.status);
    }
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        match chunk {
            Ok(chunk) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
            }
            Err(e) => return Answer::Refused(e.to_string()),
        }
    }
    let trailers = match body.trailers().await {
        Ok(t) => t.unwrap_or_default(),
        Err(e) => return Answer::Refused(e.to_string()),
    };
    match Status::from_header_map(&trailers) {
        Some(s) if s.code() == Code::Ok => Answer::Ok(data.get(5..).unwrap_or_default().to_vec()),
        Some(s) => Answer::Status(s),
        None => Answer::Refused("no grpc-status".into()),
    }
}

/// Opens a stream to `path` and sends `body` without ending it; the stream stays open as long
/// as the returned handles live.
async fn stalled_call(
    send: &h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    path: &str,
    body: Vec<u8>,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let mut send = send.clone().ready().await.unwrap();
    let (response, mut stream) = send.send_request(grpc_request(addr, path, &[]), false).unwrap();
    stream.send_data(Bytes::from(body), false).unwrap();
    (response, stream)
}

// ---------------------------------------------------------------------------------------------
// The canary: written first, read after every group.

async fn write_canary(channel: &Channel) {
    VaultServiceClient::new(channel.clone())
        .put_secret(pbv::PutSecretRequest {
            scope: CANARY_SCOPE.into(),
            key: CANARY_KEY.into(),
            value: CANARY_VALUE.to_vec(),
            expected_version: Some(0),
        })
        .await
        .unwrap();
}

fn canary_request() -> pbv::GetSecretRequest {
    pbv::GetSecretRequest { scope: CANARY_SCOPE.into(), key: CANARY_KEY.into(), version: 0 }
}

/// The node serves (health, on a fresh connection) and the canary is intact.
async fn assert_alive(pems: &Pems, addr: SocketAddr, after: &str) {
    let channel = tokio::time::timeout(GUARD, pems.channel(addr)).await.expect("connect in time");
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap_or_else(|e| panic!("after {after}: health: {e}"))
        .into_inner();
    assert_eq!(health.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let got = VaultServiceClient::new(channel)
        .get_secret(canary_request())
        .await
        .unwrap_or_else(|e| panic!("after {after}: the canary: {e}"))
        .into_inner();
    assert_eq!((got.value.as_slice(), got.version), (CANARY_VALUE, 1), "after {after}: the canary changed");
}

// ---------------------------------------------------------------------------------------------
// CSRs

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n.to_be_bytes().into_iter().skip_while(|&b| b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A well-formed PKCS#10 request with an RSA key of `modulus_bytes` (its signature is junk: the
/// key is refused before any signature check, which is the point: no RSA arithmetic on it).
fn rsa_csr(modulus_bytes: usize) -> String {
    let modulus = [vec![0x00, 0xc1], vec![0x5a; modulus_bytes - 1]].concat();
    let rsa_key = der(0x30, &[der(0x02, &modulus), der(0x02, &[1, 0, 1])].concat());
    let rsa_oid = der(0x06, &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01]);
    let spki = der(
        0x30,
        &[der(0x30, &[rsa_oid, vec![0x05, 0x00]].concat()), der(0x03, &[&[0u8][..], &rsa_key].concat())]
            .concat(),
    );
    let cn = der(0x30, &[der(0x06, &[0x55, 0x04, 0x03]), der(0x0c, b"huge")].concat());
    let name = der(0x30, &der(0x31, &cn));
    let info = der(0x30, &[der(0x02, &[0]), name, spki, der(0xa0, &[])].concat());
    let sha256_rsa = der(0x06, &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b]);
    let signature = der(0x03, &[&[0u8][..], &vec![0x33; modulus_bytes]].concat());
    let csr = der(0x30, &[info, der(0x30, &[sha256_rsa, vec![0x05, 0x00]].concat()), signature].concat());
    pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr))
}

/// Hostile CSRs and a word the refusal must say.
fn bad_csrs() -> Vec<(&'static str, String, &'static str)> {
    let (_, good) = generate_tls_key_and_csr(DeviceId::generate()).unwrap();
    let good_der = pem::parse(&good).unwrap().into_contents();
    let mut bad_signature = good_der.clone();
    *bad_signature.last_mut().unwrap() ^= 1;
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let p384_csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&p384)
        .unwrap()
        .pem()
        .unwrap();
    let block = |der: Vec<u8>| pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    vec![
        ("bad signature", block(bad_signature), "signature does not verify"),
        ("RSA 4096", rsa_csr(512), "unsupported key algorithm 1.2.840.113549.1.1.1"),
        ("RSA 16384", rsa_csr(2048), "unsupported key algorithm"),
        ("RSA 65536 (over the size limit)", rsa_csr(8192), "16384"),
        ("P-384", p384_csr, "unsupported elliptic curve"),
        ("garbage", "garbage \u{202e} not pem".into(), "no PEM CERTIFICATE REQUEST block"),
        (
            "garbage base64",
            "-----BEGIN CERTIFICATE REQUEST-----\n!!!!\u{0}\n-----END CERTIFICATE REQUEST-----\n".into(),
            "malformed PEM",
        ),
        ("not DER", block(b"\x30\x84\xff\xff\xff\xff".to_vec()), "not a DER-encoded"),
        ("two requests", format!("{good}{good}"), "2 PEM blocks"),
        (
            "a key beside the request",
            format!("{}{good}", pem::encode(&pem::Pem::new("PRIVATE KEY", vec![1]))),
            "2 PEM blocks",
        ),
        (
            "a certificate, not a request",
            pem::encode(&pem::Pem::new("CERTIFICATE", good_der)),
            "no PEM CERTIFICATE REQUEST block",
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// The in-process node

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_are_refused_cleanly_and_the_node_survives() {
    let mut tally = Tally::default();
    let node = TestNode::start().await;
    let addr = node.addr;
    let operator = Pems::from_dir(&node.data_dir().join("operator"));
    let channel = node.operator().await;
    write_canary(&channel).await;

    grpc_framing(&mut tally, addr, &operator).await;
    assert_alive(&operator, addr, "raw gRPC framing").await;
    protobuf_fields(&mut tally, addr, &operator).await;
    assert_alive(&operator, addr, "malformed protobuf").await;
    names_and_values(&mut tally, &channel).await;
    assert_alive(&operator, addr, "hostile names and values").await;
    policy_text(&mut tally, &channel).await;
    assert_alive(&operator, addr, "policy text").await;
    certificates(&mut tally, &node, &operator).await;
    assert_alive(&operator, addr, "foreign, expired and revoked certificates").await;
    csr_intake(&mut tally, &node).await;
    assert_alive(&operator, addr, "CSR intake").await;
    pairing_messages(&mut tally, &node, &channel).await;
    assert_alive(&operator, addr, "pairing messages").await;

    let in_process = tally.total();
    let memory = serve_child_under_load(&mut tally).await;
    let groups: Vec<String> = tally.groups.iter().map(|(g, n)| format!("{g} {n}")).collect();
    println!(
        "hostile input: {} inputs tried ({} in-process, {} against palyra serve; {}); {memory}; \
         the node served and the canary was intact after every group",
        tally.total(),
        in_process,
        tally.total() - in_process,
        groups.join(", ")
    );
    node.stop().await;
}

/// Raw HTTP/2: bytes that are not protobuf, prefixes that lie, compressed flags, garbage for
/// the HTTP/2 preface, unknown paths.
async fn grpc_framing(tally: &mut Tally, addr: SocketAddr, operator: &Pems) {
    const GROUP: &str = "raw gRPC/HTTP2";
    let config = h2_tls(operator);
    let send = h2(addr, &config).await;
    let get = "/palyra.vault.v1.VaultService/GetSecret";
    let invalid = "ERROR_REASON_INVALID_ARGUMENT";

    // Not protobuf at all: each gets INVALID_ARGUMENT naming the decode failure.
    let nested_groups: Vec<u8> = std::iter::repeat_n([0x9b_u8, 0x06], 200).flatten().collect();
    let not_protobuf: [(&str, Vec<u8>); 7] = [
        ("wire type 7", vec![0x0f]),
        ("field number 0", vec![0x00, 0x01]),
        ("varint of 11 bytes", vec![0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]),
        ("length past the end", vec![0x0a, 0x64, b'a']),
        ("unterminated group", vec![0x0b]),
        ("200 nested groups", nested_groups),
        ("all ones", vec![0xff; 64]),
    ];
    for (case, bytes) in not_protobuf {
        let status = raw_call(&send, addr, get, &[], framed(&bytes)).await.status(case);
        refused(&status, Code::InvalidArgument, invalid, &["malformed request message"], case);
        tally.one(GROUP);
    }

    // Prefixes that lie or break the framing.
    let valid = canary_request().encode_to_vec();
    let mut announces_more = framed(&valid);
    announces_more[1..5].copy_from_slice(&100u32.to_be_bytes());
    let framing_cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("prefix announces 100 bytes, 24 arrive", announces_more, &["100 bytes announced", "24 arrived"]),
        ("body ends inside the prefix", vec![0, 0, 0], &["5 bytes announced, 3 arrived"]),
        ("no message", vec![], &["exactly one request message; got none"]),
        ("two messages", [framed(&valid), framed(&valid)].concat(), &["got more than one"]),
        ("compressed-flag 1, no grpc-encoding", [&[1u8][..], &framed(&valid)[1..]].concat(), &["compressed"]),
        ("compressed-flag 0x80", [&[0x80u8][..], &framed(&valid)[1..]].concat(), &["compressed-flag 128"]),
    ];
    for (case, body, words) in framing_cases {
        let status = raw_call(&send, addr, get, &[], body).await.status(case);
        refused(&status, Code::InvalidArgument, invalid, words, case);
        tally.one(GROUP);
    }
    // A length of 4 GiB - 1 is refused from the prefix: nothing is reserved for it.
    for (case, len) in [("prefix announces 4 GiB", u32::MAX), ("prefix announces 2 MiB", 2 << 20)] {
        let mut body = vec![0];
        body.extend_from_slice(&len.to_be_bytes());
        let status = raw_call(&send, addr, get, &[], body).await.status(case);
        refused(&status, Code::InvalidArgument, "ERROR_REASON_VALUE_TOO_LARGE", &["at most"], case);
        assert_eq!(metadata_of(&status).get("limit").map(String::as_str), Some("1114112"), "{case}");
        tally.one(GROUP);
    }
    // grpc-encoding gzip: tonic refuses the encoding itself before the body, with
    // UNIMPLEMENTED as the gRPC compression spec prescribes; that status carries no ErrorInfo.
    let case = "grpc-encoding gzip";
    let status =
        raw_call(&send, addr, get, &[("grpc-encoding", "gzip")], [&[1u8][..], &framed(&valid)[1..]].concat())
            .await
            .status(case);
    assert_eq!(status.code(), Code::Unimplemented, "{case}: {status:?}");
    assert!(status.message().contains("gzip"), "{case}: {status:?}");
    tally.one(GROUP);

    // Unknown methods and paths: no action in the schema, so the gate denies them.
    for path in [
        "/palyra.vault.v1.VaultService/DropAll",
        "/palyra.vault.v1.VaultService/../../identity",
        "/nope",
        "/palyra.vault.v1.VaultService/GetSecret%00",
    ] {
        let status = raw_call(&send, addr, path, &[], framed(&valid)).await.status(path);
        refused(&status, Code::PermissionDenied, "ERROR_REASON_POLICY_DENIED", &[], path);
        tally.one(GROUP);
    }
    // The connection that carried all of that still works.
    match raw_call(&send, addr, get, &[], framed(&valid)).await {
        Answer::Ok(bytes) => {
            assert_eq!(pbv::GetSecretResponse::decode(&bytes[..]).unwrap().value, CANARY_VALUE)
        }
        other => panic!("the raw connection after the hostile calls: {other:?}"),
    }

    // Garbage instead of the HTTP/2 preface after TLS: the node closes that connection.
    for (case, garbage) in [
        ("HTTP/1.1 request over h2", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("random bytes", (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()),
        (
            "a preface then a frame of 16 MiB",
            [&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], &[0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1]].concat(),
        ),
    ] {
        let mut stream = tls(addr, &config).await.unwrap();
        stream.write_all(&garbage).await.unwrap();
        let mut sink = Vec::new();
        let read = tokio::time::timeout(GUARD, stream.read_to_end(&mut sink)).await.expect(case);
        // Closed: cleanly after a GOAWAY, or reset. Either way it ends, and never with a 200.
        assert!(!String::from_utf8_lossy(&sink).contains("200"), "{case}: {read:?}");
        tally.one(GROUP);
    }

    // 1 MiB of request metadata: hyper's header list limit (16 KiB) refuses it at the HTTP/2
    // level (a 431 or a reset/GOAWAY, whichever h2 picks for the size). There is no gRPC status
    // to carry a reason this early; the point is that it is refused and nothing else suffers.
    let big = "x".repeat(1 << 20);
    let many: Vec<(String, String)> = (0..1024).map(|i| (format!("x-junk-{i}"), "y".repeat(1024))).collect();
    for case in ["one 1 MiB header", "1,024 headers of 1 KiB"] {
        let send = h2(addr, &config).await;
        let headers: Vec<(&str, &str)> = if case.starts_with("one") {
            vec![("x-junk", big.as_str())]
        } else {
            many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
        };
        match raw_call(&send, addr, get, &headers, framed(&valid)).await {
            Answer::Http(code) => {
                assert_eq!(code, http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "{case}")
            }
            Answer::Refused(_) => {}
            other => panic!("{case}: {other:?}"),
        }
        tally.one(GROUP);
    }
}

/// Well-framed messages with unknown fields (accepted) and wrong-typed fields (refused).
async fn protobuf_fields(tally: &mut Tally, addr: SocketAddr, operator: &Pems) {
    const GROUP: &str = "protobuf fields";
    let send = h2(addr, &h2_tls(operator)).await;
    let get = "/palyra.vault.v1.VaultService/GetSecret";
    let put = "/palyra.vault.v1.VaultService/PutSecret";

    // Unknown fields of every wire type are skipped, as proto3 requires.
    let mut with_unknown = canary_request().encode_to_vec();
    with_unknown.extend_from_slice(&[0xf8, 0x06, 0x2a]); // field 111, varint 42
    with_unknown.extend_from_slice(&[0x82, 0x07, 0x03, b'a', b'b', b'c']); // field 112, bytes
    with_unknown.extend_from_slice(&[0x89, 0x07, 1, 2, 3, 4, 5, 6, 7, 8]); // field 113, fixed64
    with_unknown.extend_from_slice(&[0x95, 0x07, 1, 2, 3, 4]); // field 114, fixed32
    with_unknown.extend_from_slice(&[0x9b, 0x07, 0x08, 0x01, 0x9c, 0x07]); // field 115, a group
    match raw_call(&send, addr, get, &[], framed(&with_unknown)).await {
        Answer::Ok(bytes) => {
            assert_eq!(pbv::GetSecretResponse::decode(&bytes[..]).unwrap().value, CANARY_VALUE)
        }
        other => panic!("unknown fields: {other:?}"),
    }
    tally.one(GROUP);

    let wrong: [(&str, &str, Vec<u8>, &str); 7] = [
        ("scope as a varint", get, vec![0x08, 0x01], "GetSecretRequest.scope"),
        ("scope as fixed32", get, vec![0x0d, 1, 2, 3, 4], "GetSecretRequest.scope"),
        ("version as bytes", get, vec![0x1a, 0x01, 0x05], "GetSecretRequest.version"),
        ("scope not UTF-8", get, vec![0x0a, 0x02, 0xff, 0xfe], "not UTF-8"),
        ("key an overlong UTF-8 '/'", get, vec![0x12, 0x02, 0xc0, 0xaf], "not UTF-8"),
        ("key a lone surrogate", get, vec![0x12, 0x03, 0xed, 0xa0, 0x80], "not UTF-8"),
        ("value as a varint", put, vec![0x0a, 0x01, b'a', 0x18, 0x05], "PutSecretRequest.value"),
    ];
    for (case, path, bytes, words) in wrong {
        let status = raw_call(&send, addr, path, &[], framed(&bytes)).await.status(case);
        refused(&status, Code::InvalidArgument, "ERROR_REASON_INVALID_ARGUMENT", &[words], case);
        tally.one(GROUP);
    }
}

/// Scopes and keys that try traversal, control characters, look-alikes and sheer length;
/// values at and over the limit.
async fn names_and_values(tally: &mut Tally, channel: &Channel) {
    const GROUP: &str = "scopes, keys and values";
    let mut vault = VaultServiceClient::new(channel.clone());
    let long = "a".repeat(10 * 1024);
    let deep = ["a"; 9].join("/");
    let bad_scopes: Vec<(&str, String, &str)> = vec![
        ("..", "..".into(), "no relative paths"),
        (".", ".".into(), "no relative paths"),
        ("a/../b", "a/../b".into(), "no relative paths"),
        ("a/./b", "a/./b".into(), "no relative paths"),
        ("a/b..c", "a/b..c".into(), "'..'"),
        ("empty segment", "a//b".into(), "empty segment"),
        ("empty", String::new(), "must not be empty"),
        ("leading slash", "/a".into(), "start or end with '/'"),
        ("trailing slash", "a/".into(), "start or end with '/'"),
        ("only a slash", "/".into(), "start or end with '/'"),
        ("NUL", "a\0b".into(), "'\\0' is not allowed"),
        ("control char", "a\u{1b}[2Jb".into(), "is not allowed"),
        ("newline", "a\nb".into(), "is not allowed"),
        ("DEL", "a\u{7f}".into(), "is not allowed"),
        ("fullwidth solidus", "a\u{ff0f}b".into(), "is not allowed"),
        ("division slash", "a\u{2215}b".into(), "is not allowed"),
        ("RTL override", "a\u{202e}b".into(), "is not allowed"),
        ("zero-width space", "a\u{200b}b".into(), "is not allowed"),
        ("Cyrillic a first", "\u{430}gents".into(), "must start with"),
        ("Cyrillic s inside", "agent\u{455}/x".into(), "is not allowed"),
        ("upper case", "Agents".into(), "lower-case"),
        ("backslash", "a\\b".into(), "is not allowed"),
        ("10 KiB", long.clone(), "at most 519 bytes"),
        ("9 segments", deep, "at most 8 segments"),
        ("65-byte segment", "b".repeat(65), "longer than 64 bytes"),
    ];
    for (case, scope, words) in &bad_scopes {
        for put in [true, false] {
            let result = if put {
                vault
                    .put_secret(pbv::PutSecretRequest {
                        scope: scope.clone(),
                        key: "k".into(),
                        value: b"v".to_vec(),
                        expected_version: None,
                    })
                    .await
                    .map(|_| ())
            } else {
                vault
                    .get_secret(pbv::GetSecretRequest { scope: scope.clone(), key: "k".into(), version: 0 })
                    .await
                    .map(|_| ())
            };
            let status = refused_as(
                result,
                Code::InvalidArgument,
                "ERROR_REASON_INVALID_ARGUMENT",
                &["scope", words],
                case,
            );
            assert_eq!(metadata_of(&status).get("field").map(String::as_str), Some("scope"), "{case}");
            tally.one(GROUP);
        }
    }
    let bad_keys: Vec<(&str, String, &str)> = vec![
        (".", ".".into(), "must start with"),
        ("..", "..".into(), "must start with"),
        ("../etc", "../etc".into(), "must start with"),
        ("slash", "a/b".into(), "is not allowed"),
        ("empty", String::new(), "must not be empty"),
        ("NUL", "k\0".into(), "is not allowed"),
        ("RTL override", "k\u{202e}gpj.exe".into(), "is not allowed"),
        ("fullwidth k", "\u{ff4b}".into(), "must start with"),
        ("Greek omicron", "t\u{3bf}ken".into(), "is not allowed"),
        ("10 KiB", "k".repeat(10 * 1024), "at most 128 bytes"),
    ];
    for (case, key, words) in &bad_keys {
        let result = vault
            .put_secret(pbv::PutSecretRequest {
                scope: "hostile".into(),
                key: key.clone(),
                value: b"v".to_vec(),
                expected_version: None,
            })
            .await;
        let status =
            refused_as(result, Code::InvalidArgument, "ERROR_REASON_INVALID_ARGUMENT", &["key", words], case);
        assert_eq!(metadata_of(&status).get("field").map(String::as_str), Some("key"), "{case}");
        tally.one(GROUP);
    }

    // Values: 64 KiB is the limit; one byte more is refused by the vault, 2 MiB by the framing
    // check from the message prefix. Both say VALUE_TOO_LARGE with the limit.
    let put = |key: &str, len: usize| pbv::PutSecretRequest {
        scope: "hostile".into(),
        key: key.into(),
        value: vec![0x42; len],
        expected_version: None,
    };
    vault.put_secret(put("at-limit", 64 * 1024)).await.unwrap();
    for (case, len, limit, words) in [
        ("64 KiB + 1", 64 * 1024 + 1, "65536", &["65537"][..]),
        ("1 MiB", 1 << 20, "65536", &["1048576"][..]),
        ("2 MiB", 2 << 20, "1114112", &["at most 1114112"][..]),
    ] {
        let status = refused_as(
            vault.put_secret(put("over", len)).await,
            Code::InvalidArgument,
            "ERROR_REASON_VALUE_TOO_LARGE",
            words,
            case,
        );
        assert_eq!(metadata_of(&status).get("limit").map(String::as_str), Some(limit), "{case}");
        tally.one(GROUP);
    }
    let nothing = vault
        .get_secret(pbv::GetSecretRequest { scope: "hostile".into(), key: "over".into(), version: 0 })
        .await;
    refused_as(nothing, Code::NotFound, "ERROR_REASON_NOT_FOUND", &[], "a refused value left nothing");
}

/// Policy text that nests 10,000 deep or is simply huge: bounded diagnostics, no stack
/// overflow, the policy in force unchanged.
async fn policy_text(tally: &mut Tally, channel: &Channel) {
    const GROUP: &str = "policy text";
    let mut policy = PolicyServiceClient::new(channel.clone());
    let before =
        policy.get_policy_set(pbpol::GetPolicySetRequest {}).await.unwrap().into_inner().policy_set.unwrap();
    let when = |expr: String| format!("permit(principal, action, resource) when {{ {expr} }};");
    let n = 10_000;
    let cases: Vec<(&str, String)> = vec![
        ("10,000 nested parentheses", when(format!("{}true{}", "(".repeat(n), ")".repeat(n)))),
        ("10,000 unclosed parentheses", when("(".repeat(n))),
        ("10,000 nested sets", when(format!("{}1{} == 1", "[".repeat(n), "]".repeat(n)))),
        ("10,000 nested records", when(format!("{}{}", "{a:".repeat(n), "}".repeat(n)))),
        ("10,000 negations", when(format!("{}true", "!".repeat(n)))),
        ("10,000 unary minus", when(format!("{}1 == 1", "-".repeat(n)))),
        ("10,000 &&", when(vec!["true"; n].join(" && "))),
        ("10,000 nested if", when(format!("{}true{}", "if true then ".repeat(n), " else false".repeat(n)))),
        ("1 MiB + 1 of text", format!("{}{}", " ".repeat(1 << 20), when("true".into()))),
        ("1 MiB of one identifier", when(format!("principal.{}", "a".repeat(1 << 20)))),
        ("NUL and RTL in text", "permit(principal, action, resource) when { \"\0\u{202e}\" };\0".into()),
    ];
    for (case, text) in &cases {
        // Text over 1 MiB (but within the message limit) is refused by size, as a field, before
        // Cedar sees it; everything else gets diagnostics (Validate) or POLICY_INVALID (Update).
        let oversized = text.len() > palyra::policy::MAX_POLICY_TEXT_BYTES;
        let validated =
            policy.validate_policy_set(pbpol::ValidatePolicySetRequest { policies: text.clone() }).await;
        if oversized {
            let status = refused_as(
                validated,
                Code::InvalidArgument,
                "ERROR_REASON_INVALID_ARGUMENT",
                &["policies: larger than 1048576 bytes"],
                case,
            );
            assert_eq!(metadata_of(&status).get("field").map(String::as_str), Some("policies"));
        } else {
            let answer = validated.unwrap_or_else(|e| panic!("{case}: {e:?}")).into_inner();
            assert!(!answer.valid, "{case}: valid?");
            assert!(
                !answer.diagnostics.is_empty() && answer.diagnostics.len() <= 100,
                "{case}: {} diagnostics",
                answer.diagnostics.len()
            );
            let total: usize = answer.diagnostics.iter().map(|d| d.message.len()).sum();
            assert!(total < 64 * 1024, "{case}: {total} bytes of diagnostics");
        }
        tally.one(GROUP);
        let updated = policy
            .update_policy_set(pbpol::UpdatePolicySetRequest {
                policies: text.clone(),
                expected_version: None,
            })
            .await;
        if oversized {
            refused_as(
                updated,
                Code::InvalidArgument,
                "ERROR_REASON_INVALID_ARGUMENT",
                &["larger than"],
                case,
            );
        } else {
            refused_as(updated, Code::InvalidArgument, "ERROR_REASON_POLICY_INVALID", &[], case);
        }
        tally.one(GROUP);
    }
    // Text far over the policy limit, as one message: refused from its prefix.
    let huge = "/".repeat(3 << 20);
    let status =
        policy.validate_policy_set(pbpol::ValidatePolicySetRequest { policies: huge }).await.unwrap_err();
    refused(
        &status,
        Code::InvalidArgument,
        "ERROR_REASON_VALUE_TOO_LARGE",
        &["at most"],
        "3 MiB of policy text",
    );
    tally.one(GROUP);
    let after =
        policy.get_policy_set(pbpol::GetPolicySetRequest {}).await.unwrap().into_inner().policy_set.unwrap();
    assert_eq!(
        (after.version, after.policies),
        (before.version, before.policies),
        "the policy in force changed"
    );
}

/// Certificates: another CA, expired, the server's own, unregistered and revoked devices.
async fn certificates(tally: &mut Tally, node: &TestNode, operator: &Pems) {
    const GROUP: &str = "TLS certificates";
    let addr = node.addr;
    let ca_pem = node.node.identity().ca().certificate_pem().to_owned();
    let now = SystemTime::now();
    let mint = |ca: &DeviceCa, id: DeviceId, validity: Duration, at: SystemTime| {
        let (cert, key, _) = testkit::issue(ca, id, Role::Device, validity, at);
        Pems { ca: ca_pem.clone(), client: Some((cert, key)) }
    };

    // Refused in the TLS handshake: the node's verifier sends an alert the client reads.
    let registered = node.add_device(Role::Device, "expiring", &[]).await;
    let other_ca = DeviceCa::create(DeviceId::generate(), now).unwrap();
    let server_key = node.node.identity().server_private_key().unwrap();
    let server_as_client = {
        let key_der = match server_key {
            PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
            _ => panic!("server key is PKCS#8"),
        };
        let cert_der = node.node.identity().server_cert_chain()[0].to_vec();
        Pems {
            ca: ca_pem.clone(),
            client: Some((
                pem::encode(&pem::Pem::new("CERTIFICATE", cert_der)),
                pem::encode(&pem::Pem::new("PRIVATE KEY", key_der)),
            )),
        }
    };
    for (case, pems, alert) in [
        (
            "a device certificate from another CA",
            mint(&other_ca, registered.id, Duration::from_secs(3600), now),
            "UnknownCA",
        ),
        (
            "an expired certificate of a registered device",
            mint(
                node.node.identity().ca(),
                registered.id,
                Duration::from_secs(3600),
                now - Duration::from_secs(2 * 86_400),
            ),
            "CertificateExpired",
        ),
        (
            "a certificate not yet valid",
            mint(
                node.node.identity().ca(),
                registered.id,
                Duration::from_secs(3600),
                now + Duration::from_secs(86_400),
            ),
            // TLS has no "not yet valid" alert: rustls sends certificate_expired for both.
            "CertificateExpired",
        ),
        // Its EKU is serverAuth only: webpki refuses it for client auth.
        ("the node's server certificate as a client certificate", server_as_client, "UnsupportedCertificate"),
    ] {
        let refusal = match tls(addr, &h2_tls(&pems)).await {
            Err(e) => e.to_string(),
            Ok(mut stream) => {
                // TLS 1.3: the client finishes first; the node's alert arrives on the first read.
                let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
                let mut buf = Vec::new();
                match tokio::time::timeout(GUARD, stream.read_to_end(&mut buf)).await.expect(case) {
                    Err(e) => e.to_string(),
                    Ok(n) => panic!("{case}: the node talked to it ({n} bytes)"),
                }
            }
        };
        assert!(refusal.contains("alert") && refusal.contains(alert), "{case}: {refusal}");
        tally.one(GROUP);
    }

    // Past the handshake, the registry decides: unknown and revoked devices are refused.
    let unregistered = mint(node.node.identity().ca(), DeviceId::generate(), Duration::from_secs(3600), now);
    let result =
        IdentityServiceClient::new(unregistered.channel(addr).await).who_am_i(pbi::WhoAmIRequest {}).await;
    refused_as(
        result,
        Code::Unauthenticated,
        "ERROR_REASON_UNKNOWN_DEVICE",
        &["not registered"],
        "unregistered device",
    );
    tally.one(GROUP);
    let revoked = node.add_device(Role::Device, "stolen", &[]).await;
    let revoked_pems = Pems::device(&node.node, Some(&revoked));
    let revoked_channel = revoked_pems.channel(addr).await;
    IdentityServiceClient::new(operator.channel(addr).await)
        .revoke_device(pbi::RevokeDeviceRequest {
            device_id: revoked.id.to_string(),
            reason: "stolen".into(),
        })
        .await
        .unwrap();
    for (case, channel) in [
        ("revoked device, open channel", revoked_channel),
        ("revoked device, new channel", revoked_pems.channel(addr).await),
    ] {
        let result = VaultServiceClient::new(channel)
            .get_secret(pbv::GetSecretRequest {
                scope: format!("devices/{}", revoked.id.to_string().to_lowercase()),
                key: "k".into(),
                version: 0,
            })
            .await;
        refused_as(result, Code::Unauthenticated, "ERROR_REASON_DEVICE_REVOKED", &["revoked"], case);
        tally.one(GROUP);
    }
}

/// CSRs through renewal (mTLS) and pairing (anonymous), and the pairing rate limit.
async fn csr_intake(tally: &mut Tally, node: &TestNode) {
    const GROUP: &str = "CSR intake";
    let device = node.add_device(Role::Device, "renewing", &[]).await;
    let mut identity =
        IdentityServiceClient::new(Pems::device(&node.node, Some(&device)).channel(node.addr).await);
    let csrs = bad_csrs();
    for (case, csr, words) in &csrs {
        let result = identity
            .renew_certificate(pbi::RenewCertificateRequest { csr_pem: csr.clone(), proof: None })
            .await;
        let status = refused_as(
            result,
            Code::InvalidArgument,
            "ERROR_REASON_INVALID_ARGUMENT",
            &["csr_pem", words],
            case,
        );
        assert_eq!(metadata_of(&status).get("field").map(String::as_str), Some("csr_pem"), "{case}");
        tally.one(GROUP);
    }

    // StartPairing checks the CSR before it looks at the code, so an unknown (well-formed) code
    // id is enough. Starts are limited to 10 a minute per address: each case comes from its own
    // loopback address (127.0.0.0/8 is all loopback on Linux).
    let ids = DeviceIdentity::generate().unwrap();
    for (i, (case, csr, words)) in csrs.iter().enumerate() {
        let mut pairing = PairingServiceClient::new(node.anonymous_from(10 + i as u8).await);
        let result = pairing.start_pairing(start_request("ABCDEFGHJK", &ids, csr.clone(), vec![0; 33])).await;
        refused_as(result, Code::InvalidArgument, "ERROR_REASON_INVALID_ARGUMENT", &["csr_pem", words], case);
        tally.one(GROUP);
    }
}

fn start_request(
    code_id: &str,
    ids: &DeviceIdentity,
    csr_pem: String,
    pake_message: Vec<u8>,
) -> pbp::StartPairingRequest {
    pbp::StartPairingRequest {
        code_id: code_id.into(),
        device_name: "hostile".into(),
        signing_public_key: ids.signing_public_key().to_vec(),
        agreement_public_key: ids.agreement_public_key().to_vec(),
        csr_pem,
        pake_message,
    }
}

/// Pairing: garbage, wrong lengths, oversized messages, a bad SPAKE2 element, replays, and the
/// rate limit that garbage does not spend.
async fn pairing_messages(tally: &mut Tally, node: &TestNode, operator: &Channel) {
    const GROUP: &str = "pairing messages";
    let invalid = "ERROR_REASON_INVALID_ARGUMENT";
    let DeviceKeys { identity: ids, csr_pem: csr, .. } = DeviceKeys::generate();
    let start = |code: &str, pake: Vec<u8>| start_request(code, &ids, csr.clone(), pake);
    let mut with_name = start("ABCDEFGHJK", vec![0; 33]);
    with_name.device_name = "tab\u{202e}let\0".into();
    let mut long_name = start("ABCDEFGHJK", vec![0; 33]);
    long_name.device_name = "n".repeat(10 * 1024);
    let mut short_key = start("ABCDEFGHJK", vec![0; 33]);
    short_key.signing_public_key.pop();
    let mut long_key = start("ABCDEFGHJK", vec![0; 33]);
    long_key.agreement_public_key.push(0);
    let cases: Vec<(&str, pbp::StartPairingRequest, &str)> = vec![
        ("SPAKE2 element of 0 bytes", start("ABCDEFGHJK", vec![]), "pake_message"),
        ("SPAKE2 element of 32 bytes", start("ABCDEFGHJK", vec![0; 32]), "pake_message"),
        ("SPAKE2 element of 34 bytes", start("ABCDEFGHJK", vec![0; 34]), "pake_message"),
        ("SPAKE2 element of 16 KiB", start("ABCDEFGHJK", vec![0; 16 * 1024]), "pake_message"),
        ("garbage code id", start("../../etc\0", vec![0; 33]), "code_id"),
        ("device name with RTL and NUL", with_name, "device_name"),
        ("device name of 10 KiB", long_name, "device_name"),
        ("signing key of 31 bytes", short_key, "signing_public_key"),
        ("agreement key of 33 bytes", long_key, "agreement_public_key"),
    ];
    for (i, (case, request, field)) in cases.into_iter().enumerate() {
        let mut pairing = PairingServiceClient::new(node.anonymous_from(40 + i as u8).await);
        let status =
            refused_as(pairing.start_pairing(request).await, Code::InvalidArgument, invalid, &[field], case);
        assert_eq!(metadata_of(&status).get("field").map(String::as_str), Some(field), "{case}");
        tally.one(GROUP);
    }
    // Over the pairing message limit (64 KiB): refused from the prefix, before the handler (so
    // it does not even spend a start).
    let mut pairing = PairingServiceClient::new(node.anonymous_from(60).await);
    let status = pairing.start_pairing(start("ABCDEFGHJK", vec![0; 100 * 1024])).await.unwrap_err();
    refused(
        &status,
        Code::InvalidArgument,
        "ERROR_REASON_VALUE_TOO_LARGE",
        &["at most 65536"],
        "100 KiB StartPairing",
    );
    tally.one(GROUP);

    // FinishPairing and GetPairingStatus with garbage.
    let finish_cases: Vec<(&str, pbp::FinishPairingRequest, Code, &str)> = vec![
        (
            "unknown session",
            pbp::FinishPairingRequest {
                session_id: "00".repeat(16),
                client_confirmation: vec![0; 32],
                signature: vec![0; 64],
            },
            Code::FailedPrecondition,
            "ERROR_REASON_PAIRING_SESSION_EXPIRED",
        ),
        (
            "session id with NUL",
            pbp::FinishPairingRequest {
                session_id: "ab\0cd".into(),
                client_confirmation: vec![0; 32],
                signature: vec![0; 64],
            },
            Code::FailedPrecondition,
            "ERROR_REASON_PAIRING_SESSION_EXPIRED",
        ),
        (
            "session id of 10 KiB",
            pbp::FinishPairingRequest {
                session_id: "a".repeat(10 * 1024),
                client_confirmation: vec![0; 32],
                signature: vec![0; 64],
            },
            Code::FailedPrecondition,
            "ERROR_REASON_PAIRING_SESSION_EXPIRED",
        ),
        (
            "confirmation of 31 bytes",
            pbp::FinishPairingRequest {
                session_id: "00".repeat(16),
                client_confirmation: vec![0; 31],
                signature: vec![0; 64],
            },
            Code::InvalidArgument,
            invalid,
        ),
        (
            "signature of 65 bytes",
            pbp::FinishPairingRequest {
                session_id: "00".repeat(16),
                client_confirmation: vec![0; 32],
                signature: vec![0; 65],
            },
            Code::InvalidArgument,
            invalid,
        ),
    ];
    for (case, request, code, want) in finish_cases {
        refused_as(pairing.finish_pairing(request).await, code, want, &[], case);
        tally.one(GROUP);
    }
    let ulid = ulid::Ulid::generate().to_string();
    let status_cases: Vec<(&str, pbp::GetPairingStatusRequest, Code, &str)> = vec![
        (
            "request id not a ULID",
            pbp::GetPairingStatusRequest {
                request_id: "../../x".into(),
                timestamp_unix_ms: 0,
                signature: vec![0; 64],
            },
            Code::InvalidArgument,
            invalid,
        ),
        (
            "signature of 0 bytes",
            pbp::GetPairingStatusRequest {
                request_id: ulid.clone(),
                timestamp_unix_ms: 0,
                signature: vec![],
            },
            Code::InvalidArgument,
            invalid,
        ),
        (
            "unknown request",
            pbp::GetPairingStatusRequest {
                request_id: ulid.clone(),
                timestamp_unix_ms: u64::MAX,
                signature: vec![0; 64],
            },
            Code::NotFound,
            "ERROR_REASON_NOT_FOUND",
        ),
    ];
    for (case, request, code, want) in status_cases {
        refused_as(pairing.get_pairing_status(request).await, code, want, &[], case);
        tally.one(GROUP);
    }

    // A real code: a SPAKE2 element of the right length that is not a point gets a session
    // like any other (no oracle) and fails at FinishPairing as a wrong PIN would.
    let mut admin = PairingServiceClient::new(operator.clone());
    let new_code = |admin: &mut PairingServiceClient<Channel>| {
        let mut admin = admin.clone();
        async move {
            admin
                .create_pairing_code(pbp::CreatePairingCodeRequest {
                    ttl_seconds: None,
                    role: String::new(),
                    max_attempts: Some(3),
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let code = new_code(&mut admin).await;
    let mut pairing = PairingServiceClient::new(node.anonymous_from(61).await);
    let reply = pairing.start_pairing(start(&code.code_id, vec![0xff; 33])).await.unwrap().into_inner();
    let result = pairing
        .finish_pairing(pbp::FinishPairingRequest {
            session_id: reply.session_id.clone(),
            client_confirmation: vec![7; 32],
            signature: vec![7; 64],
        })
        .await;
    let status = refused_as(
        result,
        Code::Unauthenticated,
        "ERROR_REASON_PAIRING_PROOF_INVALID",
        &["does not verify"],
        "SPAKE2 element off the curve",
    );
    assert_eq!(metadata_of(&status).get("attempts_left").map(String::as_str), Some("2"));
    tally.one(GROUP);

    // Replays of a genuine handshake: the finished session and the used code are gone.
    let code = new_code(&mut admin).await;
    let (key_pem_unused, device_csr) = generate_tls_key_and_csr(ids.id()).unwrap();
    drop(key_pem_unused);
    let (mut machine, msg) = DevicePairing::start(
        &ids,
        CodeId::parse(&code.code_id).unwrap(),
        &Pin::parse(&code.pin).unwrap(),
        node.node.identity().ca().fingerprint(),
        DeviceName::parse("replayed").unwrap(),
        &device_csr,
    )
    .unwrap();
    let start_message = pbp::StartPairingRequest {
        code_id: code.code_id.clone(),
        device_name: "replayed".into(),
        signing_public_key: msg.signing_public_key.to_vec(),
        agreement_public_key: msg.agreement_public_key.to_vec(),
        csr_pem: device_csr,
        pake_message: msg.pake_message.clone(),
    };
    let reply = pairing.start_pairing(start_message.clone()).await.unwrap().into_inner();
    let decoded = palyra::pairing::handshake::StartReply::decode(
        &reply.session_id,
        &reply.pake_message,
        &reply.server_confirmation,
        SystemTime::now() + Duration::from_secs(60),
    )
    .unwrap();
    let finish = machine.handle_reply(&ids, &decoded, SystemTime::now()).unwrap();
    let finish = pbp::FinishPairingRequest {
        session_id: finish.session_id,
        client_confirmation: finish.client_confirmation.to_vec(),
        signature: finish.signature.to_vec(),
    };
    let done = pairing.finish_pairing(finish.clone()).await.unwrap().into_inner();
    assert_eq!(done.state(), pbp::PairingState::Pending);
    refused_as(
        pairing.finish_pairing(finish).await,
        Code::FailedPrecondition,
        "ERROR_REASON_PAIRING_SESSION_EXPIRED",
        &[],
        "replayed FinishPairing",
    );
    tally.one(GROUP);
    refused_as(
        pairing.start_pairing(start_message).await,
        Code::FailedPrecondition,
        "ERROR_REASON_PAIRING_CODE_INVALID",
        &[],
        "replayed StartPairing",
    );
    tally.one(GROUP);

    // Garbage spends nothing (it is refused before any limit is charged, so it cannot lock out
    // a real device at the same address); valid-looking starts on a made-up code spend the
    // address's starts: the 11th in a minute is rate limited.
    let mut flood = PairingServiceClient::new(node.anonymous_from(62).await);
    for _ in 0..30 {
        let result = flood.start_pairing(start("ABCDEFGHJK", vec![1; 3])).await;
        refused_as(result, Code::InvalidArgument, invalid, &["pake_message"], "garbage start");
        tally.one(GROUP);
    }
    for _ in 0..10 {
        refused_as(
            flood.start_pairing(start("ABCDEFGHJK", vec![1; 33])).await,
            Code::FailedPrecondition,
            "ERROR_REASON_PAIRING_CODE_INVALID",
            &[],
            "start on a made-up code",
        );
        tally.one(GROUP);
    }
    let result = flood.start_pairing(start("ABCDEFGHJK", vec![1; 33])).await;
    refused_as(
        result,
        Code::ResourceExhausted,
        "ERROR_REASON_RATE_LIMITED",
        &["too many StartPairing"],
        "11th start",
    );
    tally.one(GROUP);
}

// ---------------------------------------------------------------------------------------------
// `palyra serve` as a child process: where memory must be measured.

struct Served {
    child: std::process::Child,
    grpc: SocketAddr,
    quic: SocketAddr,
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
}

impl Served {
    fn start() -> Served {
        let dir = testkit::private_tempdir();
        let data = dir.path().join("node");
        let Serving { child, grpc, quic } =
            testkit::spawn_serving(palyra_bin!().serve_command(&data, "error"), GUARD, |_| {});
        Served { child, grpc, quic, _dir: dir, data }
    }

    /// (VmRSS, VmHWM) in MiB.
    fn memory(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .map(|kib| kib / 1024.0)
                .unwrap()
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The hostile load where memory matters, against `palyra serve`; returns the memory figures.
async fn serve_child_under_load(tally: &mut Tally) -> String {
    let mut served = Served::start();
    let (addr, operator) = (served.grpc, Pems::from_dir(&served.data.join("operator")));
    write_canary(&operator.channel(addr).await).await;
    assert_alive(&operator, addr, "start").await;
    let (idle, _) = served.memory();

    // Stalled gRPC messages: 4 connections x 100 streams, each announcing 1 MiB (under the
    // vault's message limit) and sending 32 KiB of it, held open at once.
    const GROUP: &str = "memory: gRPC";
    let config = h2_tls(&operator);
    let put = "/palyra.vault.v1.VaultService/PutSecret";
    let (mut held, mut connections) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        let send = h2(addr, &config).await;
        for _ in 0..100 {
            let mut body = vec![0];
            body.extend_from_slice(&(1u32 << 20).to_be_bytes());
            body.extend(std::iter::repeat_n(0x0a_u8, 32 * 1024));
            held.push(stalled_call(&send, addr, put, body).await);
            tally.one(GROUP);
        }
        connections.push(send);
    }
    // While they are held, the node answers others, and refuses 4 GiB prefixes at once.
    assert_alive(&operator, addr, "400 stalled messages").await;
    let send = h2(addr, &config).await;
    for _ in 0..100 {
        let mut body = vec![0];
        body.extend_from_slice(&u32::MAX.to_be_bytes());
        let status = raw_call(&send, addr, put, &[], body).await.status("4 GiB prefix");
        refused(&status, Code::InvalidArgument, "ERROR_REASON_VALUE_TOO_LARGE", &[], "4 GiB prefix");
        tally.one(GROUP);
    }
    let (with_stalls, _) = served.memory();
    drop(held);
    drop(connections);

    // 1 MiB of headers, 16 times over, each on its own connection.
    let big = "x".repeat(1 << 20);
    for _ in 0..16 {
        let send = h2(addr, &config).await;
        let answer = raw_call(&send, addr, put, &[("x-junk", big.as_str())], framed(b"")).await;
        assert!(matches!(answer, Answer::Http(_) | Answer::Refused(_)), "1 MiB of headers: {answer:?}");
        tally.one(GROUP);
    }
    assert_alive(&operator, addr, "1 MiB headers").await;

    let quic = quic_hostile_peers(tally, &served, &operator).await;
    assert!(served.running(), "palyra serve died");
    assert_alive(&operator, addr, "hostile QUIC peers").await;
    let (after, hwm) = served.memory();
    // VmHWM is sampled by the kernel lazily; a VmRSS read can be a little above the last one.
    let peak = hwm.max(with_stalls).max(after);
    let figures = format!(
        "palyra serve RSS idle {idle:.1} MiB, with 400 stalled messages {with_stalls:.1} MiB, peak {peak:.1} MiB, \
         after {after:.1} MiB{quic}"
    );
    assert!(peak - idle < RSS_BOUND_MIB, "memory grew by {:.1} MiB: {figures}", peak - idle);
    figures
}

/// QUIC: 1,000 streams from one peer, 32 stalled ones, 4 GiB and truncated frame headers,
/// unknown methods; a legitimate peer is served throughout.
async fn quic_hostile_peers(tally: &mut Tally, served: &Served, operator: &Pems) -> String {
    use palyra::quic::client::{QuicClient, Reply};
    const GROUP: &str = "memory: QUIC";
    let tls = || operator.quic();
    let legit = QuicClient::connect(served.quic, "localhost", tls()).await.unwrap();
    let hostile = Arc::new(QuicClient::connect(served.quic, "localhost", tls()).await.unwrap());

    // 1,000 streams at once from one peer: quinn lets 32 be open at a time (the peer's opens
    // wait for credit), all are answered, and the legitimate peer is served meanwhile.
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let hostile = Arc::clone(&hostile);
        tasks.push(tokio::spawn(async move { hostile.health().await.map(|h| h.status) }));
    }
    assert_eq!(legit.health().await.unwrap().status, "ok");
    for task in tasks {
        assert_eq!(tokio::time::timeout(GUARD, task).await.expect("stream answered").unwrap().unwrap(), "ok");
        tally.one(GROUP);
    }

    // 32 streams that send half a header and stall hold every slot; a 33rd cannot even open
    // (the limit is enforced by the transport, not by the node's goodwill).
    let raw = raw_quinn(served, operator).await;
    let mut stalled = Vec::new();
    for _ in 0..32 {
        let (mut send, recv) = raw.open_bi().await.unwrap();
        send.write_all(&[0, 0]).await.unwrap();
        stalled.push((send, recv));
        tally.one(GROUP);
    }
    use std::future::Future;
    let mut open = std::pin::pin!(raw.open_bi());
    let pending =
        std::future::poll_fn(|cx| std::task::Poll::Ready(open.as_mut().poll(cx).is_pending())).await;
    assert!(pending, "a 33rd concurrent stream opened");
    assert_eq!(legit.health().await.unwrap().status, "ok");
    drop(stalled);
    raw.close(quinn::VarInt::from_u32(0), b"done");

    // Frame headers that announce too much, frames cut short, unknown methods.
    let mut frames: Vec<(String, Vec<u8>, &str)> = Vec::new();
    for len in [u32::MAX, 1 << 30, 64 * 1024 + 1, 0] {
        frames.push((format!("header announcing {len}"), len.to_be_bytes().to_vec(), "frame_too_large"));
    }
    frames.push((
        "100 announced, 10 sent".into(),
        [&100u32.to_be_bytes()[..], &[0u8; 10]].concat(),
        "invalid_request",
    ));
    frames.push(("half a header".into(), vec![0, 0], "invalid_request"));
    frames.push(("not protobuf".into(), [&5u32.to_be_bytes()[..], &[0xff; 5]].concat(), "invalid_request"));
    for method in
        ["node.reboot", "", "../node.health", "node.health\0", "node.\u{202e}htlaeh", &"m".repeat(10 * 1024)]
    {
        // since_sequence keeps the message non-empty (an empty one is the 0-length frame above).
        let body = palyra::quic::pb::Request {
            method: method.into(),
            since_sequence: 1,
            kinds: vec![],
            at_sequence: None,
        }
        .encode_to_vec();
        let bytes = [&(body.len() as u32).to_be_bytes()[..], &body].concat();
        frames.push((
            format!("method {:?}", method.chars().take(20).collect::<String>()),
            bytes,
            "unsupported_method",
        ));
    }
    let count = frames.len();
    for _ in 0..10 {
        for (case, bytes, code) in &frames {
            let mut replies = hostile.send_raw(bytes).await.unwrap();
            match replies.next_reply().await.unwrap() {
                Some(Reply::Error(e)) => {
                    assert_eq!(e.code, *code, "{case}: {}", e.message);
                    assert!(e.message.len() < 512, "{case}: message of {} bytes", e.message.len());
                }
                other => panic!("{case}: {other:?}"),
            }
            assert!(replies.next_reply().await.unwrap().is_none(), "{case}: the stream is finished");
            tally.one(GROUP);
        }
    }
    assert_eq!(hostile.health().await.unwrap().status, "ok");
    assert_eq!(legit.health().await.unwrap().status, "ok");
    legit.close().await;
    format!("; QUIC: 1,000 streams on one connection, at most 32 open, {} hostile frames", count * 10)
}

/// A bare quinn connection with the operator's certificate, to hold streams open by hand.
async fn raw_quinn(served: &Served, operator: &Pems) -> quinn::Connection {
    let mut config = operator.rustls();
    config.alpn_protocols = vec![palyra::quic::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint.connect(served.quic, "localhost").unwrap().await.unwrap()
}
