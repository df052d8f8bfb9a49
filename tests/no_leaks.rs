//! Secrets never leak: run the whole flow — init, serve, put, get, pairing with a PIN, approval,
//! the device writing a secret, an auth profile, an enrollment key and a device enrolled with
//! it, rotation — with `PALYRA_LOG=trace`, then search everything the
//! node wrote (its log, its database and WAL, its events and audit records) for every secret it
//! handled: secret values, the PIN, the root key, private keys. None may appear outside its
//! sealed form.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use palyra::testkit::{self, Palyra, palyra_bin};

const PALYRA: Palyra = palyra_bin!();

fn palyra(data: &Path, server: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = PALYRA
        .cli(data)
        .args(["--server", server])
        .args(args)
        .env("PALYRA_LOG", "trace")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "palyra {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(data: &Path, log: &Path) -> (Server, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let quic = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log_file = std::fs::File::create(log).unwrap();
    let child = PALYRA
        .cli(data)
        .args([
            "serve",
            "--grpc-addr",
            &format!("127.0.0.1:{port}"),
            "--quic-addr",
            &format!("127.0.0.1:{quic}"),
            "--console-addr",
            "127.0.0.1:0",
        ])
        .env("PALYRA_LOG", "trace")
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "palyra serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Server { child }, url)
}

/// Every file under `dir`, as bytes.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A 6-digit PIN as it would appear if disclosed (`pin=123456`, `"123456"`, `pin: 123456`):
/// not inside a longer run of digits or hex (fingerprints, hashes) and not a timestamp's
/// microseconds (`.123456Z`). Trace logs are full of digit runs; a bare search would match one
/// by chance now and then.
fn find_standalone(haystack: &[u8], pin: &[u8]) -> Option<usize> {
    let hexish = |b: u8| b.is_ascii_hexdigit();
    (0..haystack.len().saturating_sub(pin.len() - 1)).find(|&at| {
        &haystack[at..at + pin.len()] == pin
            && (at == 0 || !(hexish(haystack[at - 1]) || haystack[at - 1] == b'.'))
            && haystack.get(at + pin.len()).is_none_or(|&b| !hexish(b))
    })
}

/// The base64 body of a PEM file (what would show if a key were printed).
fn pem_body(pem_text: &str) -> String {
    pem_text.lines().filter(|l| !l.starts_with("-----")).collect()
}

#[test]
fn no_secret_reaches_a_log_the_database_or_an_event() {
    let dir = testkit::private_tempdir();
    let node = dir.path().join("node");
    let device = dir.path().join("device");
    let log = dir.path().join("serve.log");
    let (server, url) = serve(&node, &log);

    let value = format!("LEAK-CANARY-{}", palyra::identity::DeviceId::generate());
    palyra(
        &node,
        &url,
        &["vault", "put", "agents/alpha", "API_KEY", "--value-stdin"],
        Some(value.as_bytes()),
    );
    let revealed = palyra(&node, &url, &["vault", "get", "agents/alpha", "API_KEY", "--reveal"], None);
    assert_eq!(revealed.stdout, value.as_bytes(), "the operator can read it back");
    let redacted = palyra(&node, &url, &["vault", "get", "agents/alpha", "API_KEY"], None);
    assert!(!contains(&redacted.stdout, value.as_bytes()), "get without --reveal prints no value");

    // Pairing with a PIN, approval, and the new device writing a secret of its own.
    let code = palyra(&node, &url, &["--json", "pairing", "code", "--no-qr"], None);
    let code: serde_json::Value = serde_json::from_slice(&code.stdout).unwrap();
    let pin = code["pin"].as_str().unwrap().to_owned();
    let uri = code["uri"].as_str().unwrap().to_owned();
    // Its trace output goes to a file: a pipe nobody reads would fill up and stall it.
    let pair_log = dir.path().join("pair.log");
    let pair_out = std::fs::File::create(&pair_log).unwrap();
    let mut pair = PALYRA
        .command()
        .arg("--data-dir")
        .arg(&device)
        .args(["pair", "--uri", &uri, "--name", "leak-test"])
        .env("PALYRA_LOG", "trace")
        .stdout(pair_out.try_clone().unwrap())
        .stderr(pair_out)
        .spawn()
        .unwrap();
    let request_id = {
        let started = Instant::now();
        loop {
            let list = palyra(&node, &url, &["--json", "pairing", "list"], None);
            let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
            if let Some(id) = list.as_array().and_then(|a| a.first()).and_then(|r| r["request_id"].as_str()) {
                break id.to_owned();
            }
            assert!(started.elapsed() < Duration::from_secs(30), "no pairing request appeared");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    palyra(&node, &url, &["pairing", "approve", &request_id], None);
    let paired = pair.wait().unwrap();
    let pair_output = std::fs::read(&pair_log).unwrap();
    assert!(paired.success(), "{}", String::from_utf8_lossy(&pair_output));
    let device_id = std::fs::read_to_string(device.join("client/device_id")).unwrap();
    let device_value = format!("DEVICE-CANARY-{}", palyra::identity::DeviceId::generate());
    palyra(
        &device,
        &url,
        &["vault", "put", &format!("devices/{}", device_id.trim()), "token", "--value-stdin"],
        Some(device_value.as_bytes()),
    );
    // An auth profile's API key: sealed in the vault, handed out only by `auth token`.
    let api_key = format!("AUTH-CANARY-{}", palyra::identity::DeviceId::generate());
    palyra(
        &node,
        &url,
        &["auth", "add", "canary", "--provider", "test", "--api-key-stdin"],
        Some(api_key.as_bytes()),
    );
    let token = palyra(&node, &url, &["auth", "token", "canary"], None);
    assert_eq!(String::from_utf8_lossy(&token.stdout).trim(), api_key);
    let listed = palyra(&node, &url, &["--json", "auth", "list"], None);
    assert!(!contains(&listed.stdout, api_key.as_bytes()), "auth list prints no key");
    // An enrollment key: its token goes to the operator's stdout once and to the agent, and
    // its secret is nowhere else.
    let created = palyra(&node, &url, &["--json", "enrollment", "create", "--scope", "agents/ci"], None);
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let enrollment_token = created["token"].as_str().unwrap().to_owned();
    let enrollment_secret =
        palyra::pairing::EnrollmentToken::parse(&enrollment_token).unwrap().secret.as_str().to_owned();
    let agent = dir.path().join("agent");
    let enroll_log = dir.path().join("enroll.log");
    let enrolled = PALYRA
        .command()
        .arg("--data-dir")
        .arg(&agent)
        .args(["pair", "--name", "agent"])
        .env("PALYRA_ENROLLMENT_KEY", &enrollment_token)
        .env("PALYRA_LOG", "trace")
        .stdout(std::fs::File::create(&enroll_log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&enroll_log).unwrap())
        .status()
        .unwrap();
    let enroll_output = std::fs::read(&enroll_log).unwrap();
    assert!(enrolled.success(), "{}", String::from_utf8_lossy(&enroll_output));
    palyra(&node, &url, &["vault", "rotate-key"], None);
    palyra(&node, &url, &["audit", "verify"], None);
    drop(server);

    // What must stay secret.
    let root_key = std::fs::read(node.join("keys/root.key")).unwrap();
    let operator_key = pem_body(&std::fs::read_to_string(node.join("operator/key.pem")).unwrap());
    let device_key = pem_body(&std::fs::read_to_string(device.join("client/key.pem")).unwrap());
    let device_identity = std::fs::read(device.join("client/identity.key")).unwrap();
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("secret value", value.clone().into_bytes()),
        ("device secret value", device_value.clone().into_bytes()),
        ("auth profile API key", api_key.clone().into_bytes()),
        ("pin", pin.clone().into_bytes()),
        ("enrollment secret", enrollment_secret.clone().into_bytes()),
        ("enrollment token", enrollment_token.clone().into_bytes()),
        ("root key", root_key.clone()),
        ("root key (hex)", hex::encode(&root_key).into_bytes()),
        ("operator private key", operator_key.into_bytes()),
        ("device private key", device_key.into_bytes()),
        ("device identity key", device_identity[1..].to_vec()),
        ("device identity key (hex)", hex::encode(&device_identity[1..]).into_bytes()),
    ];

    // Where the node writes: its log (trace level, every module) and everything in its data
    // dir except the files that hold these secrets by design.
    let mut places = vec![(log.clone(), std::fs::read(&log).unwrap())];
    // The joining device's own output may name its fingerprint, never the PIN or its keys.
    places.push((pair_log.clone(), pair_output.clone()));
    places.push((enroll_log.clone(), enroll_output.clone()));
    for (path, bytes) in files(&node) {
        let by_design = path.ends_with("keys/root.key") || path.ends_with("operator/key.pem");
        if !by_design {
            places.push((path, bytes));
        }
    }
    let log_text = String::from_utf8_lossy(&places[0].1).into_owned();
    assert!(log_text.contains("TRACE") || log_text.contains("DEBUG"), "the log ran at trace level");
    let mut leaks = Vec::new();
    for (what, secret) in &secrets {
        for (path, bytes) in &places {
            let found = if *what == "pin" { find_standalone(bytes, secret) } else { find(bytes, secret) };
            if let Some(at) = found {
                let from = at.saturating_sub(60);
                let to = (at + secret.len() + 60).min(bytes.len());
                leaks.push(format!(
                    "{what} found in {}: …{}…",
                    path.display(),
                    String::from_utf8_lossy(&bytes[from..to]).escape_debug()
                ));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    // The checks looked at something: the database and its WAL are among the places.
    assert!(places.iter().any(|(p, _)| p.ends_with("palyra.db")));
}
