//! The CLI finds its node and says why it cannot: `palyra serve` records the addresses it
//! actually bound (port 0 included) in `serve.json`, removed on a clean stop and ignored once
//! stale; the CLI takes `--server`, else that record, else `grpc_addr` of `palyra.toml`, else
//! the server a device paired with. Connection failures name their cause (wrong CA, plain
//! HTTP, nothing listening, `http://`); `--as` picks the credentials and errors name them.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![cfg(unix)]

use std::path::Path;
use std::process::Output;

use palyra::testkit::{self, Palyra, Serving, palyra_bin};

const PALYRA: Palyra = palyra_bin!();

/// SIGKILLs the serve child when dropped (also when a test panics).
struct Killed(Serving);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn record(data: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(data.join("serve.json")).unwrap()).unwrap()
}

#[test]
fn the_cli_finds_the_serving_node_then_the_config_and_stale_records_are_ignored() {
    let dir = testkit::private_tempdir();
    let data = dir.path().join("node");
    // init (like serve) dials nothing: a server it could not use does not stop it.
    let init = PALYRA.cli(&data).arg("init").env("PALYRA_SERVER", "http://127.0.0.1:1").output().unwrap();
    assert!(init.status.success(), "{}", stderr(&init));
    let config_port = closed_port();
    std::fs::write(data.join("palyra.toml"), format!("grpc_addr = \"127.0.0.1:{config_port}\"\n")).unwrap();

    // Serving on port 0 (flags over the file): the record names the ports actually bound.
    let mut served = Killed(PALYRA.serve(&data, "warn"));
    let rec = record(&data);
    assert_eq!(rec["grpc"], served.0.grpc.to_string());
    assert_eq!(rec["quic"], served.0.quic.to_string());
    assert!(rec["console"].as_str().is_some());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(data.join("serve.json")).unwrap().permissions().mode() & 0o777, 0o600);
    // The banner's `try:` command, without --server: reaches it (record over config).
    let show = ok(PALYRA.run(&data, &["--json", "identity", "show"]));
    assert!(show["device_id"].as_str().is_some(), "{show}");
    // The QUIC data plane too, without --peer.
    let health = ok(PALYRA.run(&data, &["--json", "node", "health"]));
    assert_eq!(health["status"], "ok", "{health}");
    // --server overrides everything.
    let closed = closed_port();
    let down = PALYRA.run(&data, &["--server", &format!("https://127.0.0.1:{closed}"), "identity", "show"]);
    assert_eq!(down.status.code(), Some(6));
    assert!(
        stderr(&down).contains(&format!("nothing is listening on 127.0.0.1:{closed}")),
        "{}",
        stderr(&down)
    );
    assert!(stderr(&down).contains("is `palyra serve` running?"), "{}", stderr(&down));

    // Killed: the record stays but its writer no longer holds the lock; the config is next.
    served.0.kill();
    assert!(data.join("serve.json").exists());
    let stale = PALYRA.run(&data, &["identity", "show"]);
    assert_eq!(stale.status.code(), Some(6), "{}", stderr(&stale));
    let text = stderr(&stale);
    assert!(text.contains(&format!("nothing is listening on 127.0.0.1:{config_port}")), "{text}");
    assert!(text.contains("grpc_addr in") && text.contains("palyra.toml"), "{text}");

    // A clean stop (SIGTERM) removes the record.
    let served = Killed(PALYRA.serve(&data, "warn"));
    // Served once: its signal handlers are in place.
    ok(PALYRA.run(&data, &["--json", "identity", "show"]));
    let pid = rustix::process::Pid::from_raw(served.0.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let mut served = served;
    assert!(served.0.child.wait().unwrap().success());
    assert!(!data.join("serve.json").exists(), "a clean stop removes serve.json");
}

#[test]
fn a_paired_device_remembers_its_node_and_as_picks_the_credentials() {
    let dir = testkit::private_tempdir();
    let data = dir.path().join("node");
    let _served = Killed(PALYRA.serve(&data, "warn"));
    let created =
        ok(PALYRA.run(&data, &["--json", "enrollment", "create", "--scope", "agents/alpha", "--uses", "2"]));
    let token = created["token"].as_str().unwrap().to_owned();

    // A device paired from the token (which names the server) needs no --server afterwards.
    let device = dir.path().join("device");
    let paired = PALYRA
        .cli(&device)
        .args(["--json", "pair", "--name", "agent"])
        .env("PALYRA_ENROLLMENT_KEY", &token)
        .output();
    let device_id = ok(paired.unwrap())["device_id"].as_str().unwrap().to_owned();
    // `policy check` takes the bare device id (either case) for its principal; a bad one gets
    // a principal's example.
    let get = "palyra.vault.v1.VaultService/GetSecret";
    let upper = device_id.to_uppercase();
    let check = PALYRA.run(&data, &["policy", "check", &upper, get, "Palyra::Scope::\"agents/alpha\""]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
    let check = PALYRA.run(&data, &["policy", "check", &device_id, get, "Palyra::Scope::\"connectors/x\""]);
    assert_eq!(check.status.code(), Some(3), "{}", stderr(&check));
    let bad = PALYRA.run(&data, &["policy", "check", "nobody", get, "Palyra::Scope::\"agents/alpha\""]);
    assert_eq!(bad.status.code(), Some(2));
    let text = stderr(&bad);
    assert!(text.contains("such as Palyra::Device::") && !text.contains("Scope::\"a/b\""), "{text}");
    let who = ok(PALYRA.run(&device, &["--json", "identity", "show"]));
    assert_eq!(who["caller"]["principal_type"], "Device", "{who}");
    assert_eq!(who["caller"]["role"], "device", "{who}");

    // The node's own data dir paired as a device too: operator/ by default, --as picks.
    let paired = PALYRA
        .cli(&data)
        .args(["--json", "pair", "--name", "self"])
        .env("PALYRA_ENROLLMENT_KEY", &token)
        .output();
    ok(paired.unwrap());
    assert_eq!(ok(PALYRA.run(&data, &["--json", "identity", "show"]))["caller"]["role"], "admin");
    let as_device = ok(PALYRA.run(&data, &["--json", "--as", "device", "identity", "show"]));
    assert_eq!(as_device["caller"]["role"], "device");
    let as_env = PALYRA.cli(&data).args(["--json", "identity", "show"]).env("PALYRA_AS", "device").output();
    assert_eq!(ok(as_env.unwrap())["caller"]["role"], "device");
    // A denial names the credentials it was made with.
    let denied = PALYRA.run(&data, &["--as", "device", "devices", "list"]);
    assert_eq!(denied.status.code(), Some(3), "{}", stderr(&denied));
    let client_dir = data.join("client");
    assert!(stderr(&denied).contains(&client_dir.display().to_string()), "{}", stderr(&denied));
}

#[test]
fn connection_failures_say_which() {
    let dir = testkit::private_tempdir();
    let data = dir.path().join("node");
    let _served = Killed(PALYRA.serve(&data, "warn"));
    let rec = record(&data);
    let grpc = rec["grpc"].as_str().unwrap().to_owned();
    let console = rec["console"].as_str().unwrap().to_owned();

    // HOST:PORT, as a pairing URI names it: taken as https://.
    ok(PALYRA.run(&data, &["--json", "--server", &grpc, "identity", "show"]));
    // http://: usage, with what to use.
    let http = PALYRA.run(&data, &["--server", &format!("http://{grpc}"), "identity", "show"]);
    assert_eq!(http.status.code(), Some(2));
    assert!(stderr(&http).contains(&format!("TLS only: use https://{grpc}")), "{}", stderr(&http));
    // The console's port.
    let wrong_port = PALYRA.run(&data, &["--server", &format!("https://{console}"), "identity", "show"]);
    assert_eq!(wrong_port.status.code(), Some(6));
    assert!(stderr(&wrong_port).contains("that is the console port"), "{}", stderr(&wrong_port));

    // Credentials of another node: its CA did not sign this node's certificate.
    let other = dir.path().join("other");
    PALYRA.run(&other, &["init"]);
    let foreign = PALYRA.run(&other, &["--server", &grpc, "identity", "show"]);
    assert_eq!(foreign.status.code(), Some(6));
    let text = stderr(&foreign);
    assert!(text.contains("not signed by this node's CA"), "{text}");
    assert!(text.contains(&other.join("operator/ca.pem").display().to_string()), "{text}");

    // `pair`, before it has any credentials, says the same about the console's port.
    let device = dir.path().join("device");
    let pair = PALYRA.run(
        &device,
        &[
            "--server",
            &format!("https://{console}"),
            "pair",
            "--code",
            "c0dec0dec0",
            "--pin",
            "123456",
            "--ca-fingerprint",
            &"a".repeat(64),
        ],
    );
    assert_eq!(pair.status.code(), Some(6), "{}", stderr(&pair));
    assert!(stderr(&pair).contains("that is the console port"), "{}", stderr(&pair));
}

#[test]
fn node_events_start_from_now_unless_since_is_given() {
    use std::io::{BufRead, BufReader, Write};
    let dir = testkit::private_tempdir();
    let data = dir.path().join("node");
    let _served = Killed(PALYRA.serve(&data, "warn"));
    let put = |key: &str| {
        let mut child = PALYRA
            .cli(&data)
            .args(["vault", "put", "team", key, "--value-stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"v").unwrap();
        assert!(child.wait().unwrap().success());
    };
    put("before");
    // Follows the event log (by the recorded QUIC address) until killed; lines to a channel.
    let follow = |args: &[&str]| {
        let mut child = PALYRA
            .cli(&data)
            .args(["--json", "node", "events"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        (child, rx)
    };
    let first_line = |rx: &std::sync::mpsc::Receiver<String>, key: &str| {
        // Writes until the follower (which may still be connecting) shows a line.
        for _ in 0..40 {
            put(key);
            if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(500)) {
                return serde_json::from_str::<serde_json::Value>(&line).unwrap();
            }
        }
        panic!("node events printed nothing");
    };
    let (mut now, rx) = follow(&[]);
    let event = first_line(&rx, "after");
    let _ = now.kill();
    let _ = now.wait();
    assert_eq!(event["subject"], "team/after", "from now on, nothing replayed: {event}");
    let (mut all, rx) = follow(&["--since", "0"]);
    let event = first_line(&rx, "again");
    let _ = all.kill();
    let _ = all.wait();
    assert_eq!(event["sequence"], 1, "--since 0 replays everything retained: {event}");
}

/// `--credentials DIR` (or `PALYRA_CREDENTIALS`) names a directory of client credentials outright,
/// as one mounted into a container: a data dir with none of its own works with it; a directory
/// without a certificate says so; `--as` and `--credentials` together are a usage error.
#[test]
fn credentials_from_a_directory_named_outright() {
    let dir = testkit::private_tempdir();
    let data = dir.path().join("node");
    let served = Killed(PALYRA.serve(&data, "warn"));
    let url = format!("https://{}", served.0.grpc);
    // The operator's credentials copied elsewhere (0700 dir, 0600 files).
    let mounted = dir.path().join("mounted");
    std::fs::create_dir(&mounted).unwrap();
    std::fs::set_permissions(&mounted, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    for name in ["ca.pem", "cert.pem", "key.pem"] {
        palyra::fsutil::write_private_atomic(
            &mounted.join(name),
            &std::fs::read(data.join("operator").join(name)).unwrap(),
            false,
        )
        .unwrap();
    }
    let elsewhere = dir.path().join("empty");
    let mounted_arg = mounted.to_str().unwrap();
    let by_flag = ok(PALYRA
        .run(&elsewhere, &["--json", "--server", &url, "--credentials", mounted_arg, "identity", "show"]));
    assert_eq!(by_flag["caller"]["role"], "admin", "{by_flag}");
    let by_env = PALYRA
        .cli(&elsewhere)
        .args(["--json", "--server", &url, "identity", "show"])
        .env("PALYRA_CREDENTIALS", &mounted)
        .output()
        .unwrap();
    assert_eq!(ok(by_env)["caller"]["role"], "admin");

    // With the server a paired device records beside its credentials, no --server is needed.
    palyra::fsutil::write_private_atomic(&mounted.join("server"), url.as_bytes(), false).unwrap();
    let by_record = ok(PALYRA.run(&elsewhere, &["--json", "--credentials", mounted_arg, "identity", "show"]));
    assert_eq!(by_record["caller"]["role"], "admin", "{by_record}");

    // A key others could read is refused, as in a data dir: the directory 0700, key.pem 0600.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&mounted, std::fs::Permissions::from_mode(0o755)).unwrap();
    let loose = PALYRA.run(&elsewhere, &["--server", &url, "--credentials", mounted_arg, "identity", "show"]);
    assert_ne!(loose.status.code(), Some(0), "a directory others can read was used");
    std::fs::set_permissions(&mounted, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(mounted.join("key.pem"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let loose = PALYRA.run(&elsewhere, &["--server", &url, "--credentials", mounted_arg, "identity", "show"]);
    assert_ne!(loose.status.code(), Some(0), "a world-readable key.pem was used");
    assert!(stderr(&loose).contains("key.pem"), "{}", stderr(&loose));
    std::fs::set_permissions(mounted.join("key.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();

    let missing = PALYRA.run(
        &elsewhere,
        &["--server", &url, "--credentials", elsewhere.to_str().unwrap(), "identity", "show"],
    );
    assert_ne!(missing.status.code(), Some(0));
    assert!(stderr(&missing).contains("cert.pem is missing"), "{}", stderr(&missing));
    let both = PALYRA.run(&data, &["--as", "device", "--credentials", mounted_arg, "identity", "show"]);
    assert_eq!(both.status.code(), Some(2), "{}", stderr(&both));
}
