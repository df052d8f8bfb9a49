//! `palyra run`, `palyra inject` and `palyra identity renew` as an agent's machine runs them:
//! the real binary, with a paired device's `client/` credentials, against a real node.
//!
//! Covers: the child sees granted values (from `--env`, `--env-file` and the environment) in
//! its environment and nowhere else; a denied, missing or malformed reference starts nothing and
//! exits 3, 4 or 2 with one line naming it; the child's status and signals pass through;
//! `--watch` restarts the child on a put and stops it (exit 3) when the device is revoked; a long-lived `run` renews its certificate; `inject`
//! writes a 0600 file atomically or nothing; exit codes of ordinary commands (3, 4, 6, 7, 2).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, SystemTime};

use palyra::identity::Role;
use palyra::identity::ca::certificate_validity_pem;
use palyra::testkit::{self, Minting, Palyra, TestNode, palyra_bin};
use palyra::vault::{ObjectId, Scope, SecretKey};
use palyra::wire::pb::vault::v1::{self as pb, vault_service_client::VaultServiceClient};
use tokio::sync::mpsc;

const PALYRA: Palyra = palyra_bin!();
const API_KEY: &str = "sk-live-0123456789abcdef";
const DB_PASSWORD: &str = "correct horse battery staple";
const TOKEN: &str = "tok-with-'quotes'-and-$dollars";
const OTHER: &str = "never-given-to-the-agent";

/// A node with secrets in `agents/alpha` (granted to the agent) and `other` (not), and an
/// agent device whose `client/` is in `<dir>/agent`, its certificate issued now for `lifetime`.
struct World {
    node: TestNode,
    dir: tempfile::TempDir,
    agent_id: String,
}

impl World {
    async fn start(lifetime: Duration) -> World {
        let node = TestNode::start().await;
        let mut vault = VaultServiceClient::new(node.operator().await);
        for (scope, key, value) in [
            ("agents/alpha", "API_KEY", API_KEY),
            ("agents/alpha", "DB_PASSWORD", DB_PASSWORD),
            ("agents/alpha/tools", "TOKEN", TOKEN),
            ("other", "SECRET", OTHER),
        ] {
            put(&mut vault, scope, key, value).await;
        }
        let dir = testkit::private_tempdir();
        let minting = Minting { lifetime, ..Minting::new(Role::Device, "agent", &["agents/alpha"]) };
        let (creds, device) = testkit::mint_with(&node.node, &minting).await;
        let client = dir.path().join("agent/client");
        let write = |name: &str, bytes: &[u8]| {
            palyra::fsutil::write_private_atomic(&client.join(name), bytes, false).unwrap();
        };
        write("identity.key", &creds.identity.to_bytes());
        write("key.pem", creds.key_pem.as_bytes());
        write("cert.pem", creds.cert_pem.as_bytes());
        write("ca.pem", node.node.identity().ca().certificate_pem().as_bytes());
        World { node, dir, agent_id: device.id.to_string() }
    }

    fn agent(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `palyra --server URL ARGS...` on the agent's data dir, with `OUT` naming the temp dir.
    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut command = PALYRA.cli(&self.agent());
        command.args(["--server", &self.node.url()]).args(args).env("OUT", self.dir.path());
        command
    }

    /// Runs [`command`](Self::command) to completion off the runtime's threads.
    async fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = self.command(args);
        command.envs(env.iter().copied());
        tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
    }

    async fn vault(&self) -> VaultServiceClient<tonic::transport::Channel> {
        VaultServiceClient::new(self.node.operator().await)
    }
}

async fn put(vault: &mut VaultServiceClient<tonic::transport::Channel>, scope: &str, key: &str, value: &str) {
    let request = pb::PutSecretRequest {
        scope: scope.into(),
        key: key.into(),
        value: value.as_bytes().to_vec(),
        expected_version: None,
    };
    vault.put_secret(request).await.unwrap();
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Lines of a child's stdout or stderr, one by one, on a channel.
fn lines(reader: impl std::io::Read + Send + 'static) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits (bounded) for a line that contains `want`; returns it.
async fn line_with(rx: &mut mpsc::UnboundedReceiver<String>, want: &str, within: Duration) -> String {
    let found = tokio::time::timeout(within, async {
        while let Some(line) = rx.recv().await {
            if line.contains(want) {
                return Some(line);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(line)) => line,
        Ok(None) => panic!("the output ended without a line with {want:?}"),
        Err(_) => panic!("no line with {want:?} within {within:?}"),
    }
}

/// Waits (bounded) for `child` to exit; kills it and fails past `within`.
async fn wait(mut child: Child, within: Duration) -> std::process::ExitStatus {
    let pid = child.id();
    let waited =
        tokio::time::timeout(within, tokio::task::spawn_blocking(move || child.wait().unwrap())).await;
    match waited {
        Ok(status) => status.unwrap(),
        Err(_) => {
            signal(pid, rustix::process::Signal::KILL);
            panic!("palyra run did not exit within {within:?}");
        }
    }
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    let _ = rustix::process::kill_process(pid, signal);
}

/// Stops a long-lived `palyra run` if the test panics before waiting for it: SIGTERM and
/// SIGUSR1, which it forwards to its command (one of them ends every command here), so no
/// process outlives a failed test.
struct StopOnPanic(u32);

impl Drop for StopOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            signal(self.0, rustix::process::Signal::TERM);
            signal(self.0, rustix::process::Signal::USR1);
        }
    }
}

/// SIGKILLs a `palyra serve` child if the test panics before stopping it.
struct KillOnPanic(u32);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            signal(self.0, rustix::process::Signal::KILL);
        }
    }
}

fn sigterm(child: &Child) {
    signal(child.id(), rustix::process::Signal::TERM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_gives_the_child_its_secrets_in_its_environment_only() {
    let w = World::start(Duration::from_secs(3600)).await;
    std::fs::write(
        w.path("agent.env"),
        "# the agent's settings\nexport DB_PASSWORD=\"palyra://agents/alpha/DB_PASSWORD?version=1\"\nMODE='plain value' # not a secret\n",
    )
    .unwrap();
    let env_file = w.path("agent.env");
    let script = r#"printf '%s|%s|%s|%s' "$API_KEY" "$DB_PASSWORD" "$MODE" "$TOKEN" > "$OUT/seen"
cat /proc/$$/cmdline > "$OUT/child.cmdline"; cat /proc/$PPID/cmdline > "$OUT/palyra.cmdline"
cat /proc/$PPID/environ > "$OUT/palyra.environ"; exit 42"#;
    let out = w
        .run(
            &[
                "run",
                "--env",
                "API_KEY=palyra://agents/alpha/API_KEY",
                "--env-file",
                env_file.to_str().unwrap(),
                "--",
                "sh",
                "-c",
                script,
            ],
            &[("TOKEN", "palyra://agents/alpha/tools/TOKEN")],
        )
        .await;
    // The child's status is palyra's, and palyra itself says nothing.
    assert_eq!(out.status.code(), Some(42), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    assert_eq!(read(&w.path("seen")), format!("{API_KEY}|{DB_PASSWORD}|plain value|{TOKEN}"));
    for file in ["child.cmdline", "palyra.cmdline", "palyra.environ"] {
        let text = read(&w.path(file));
        assert!(!text.is_empty(), "{file}");
        for value in [API_KEY, DB_PASSWORD, TOKEN] {
            assert!(!text.contains(value), "{value} in {file}");
        }
    }
    assert!(read(&w.path("palyra.cmdline")).contains("palyra://agents/alpha/API_KEY"));

    // Death by a signal: 128 + N, as a shell reports it.
    let killed = w.run(&["run", "--", "sh", "-c", "kill -KILL $$"], &[]).await;
    assert_eq!(killed.status.code(), Some(137));
    let ok = w.run(&["run", "--", "true"], &[]).await;
    assert_eq!(ok.status.code(), Some(0));
    // A command that does not exist: not found, and nothing ran.
    let missing = w.run(&["run", "--", "/nonexistent/agent"], &[]).await;
    assert_eq!(missing.status.code(), Some(4), "{}", stderr(&missing));
    assert!(stderr(&missing).contains("cannot start /nonexistent/agent"));
    w.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_that_fails_starts_nothing_and_says_which() {
    let w = World::start(Duration::from_secs(3600)).await;
    let marker = w.path("started");
    let start = format!("touch {}", marker.display());
    let wr = &w;
    let run = |env: &'static str| {
        let start = start.clone();
        async move {
            let good = "GOOD=palyra://agents/alpha/API_KEY";
            wr.run(&["run", "--env", good, "--env", env, "--", "sh", "-c", &start], &[]).await
        }
    };

    for (flag, code, reason) in [
        ("X=palyra://other/SECRET", 3, "ERROR_REASON_POLICY_DENIED"),
        ("X=palyra://agents/alpha/NOPE", 4, "ERROR_REASON_NOT_FOUND"),
        ("X=palyra://agents/alpha/API_KEY?version=9", 4, "ERROR_REASON_NOT_FOUND"),
        ("X=palyra://Agents/alpha/API_KEY", 2, "invalid scope"),
        ("X=palyra://agents", 2, "names no key"),
        ("X=sk-not-a-reference", 2, "is not a secret reference"),
        ("sk-no-equals-sign", 2, "takes NAME=REF"),
        ("1X=palyra://agents/alpha/API_KEY", 2, "is not a variable name"),
    ] {
        let out = run(flag).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{flag}: {err}");
        assert_eq!(err.lines().count(), 1, "{flag}: {err}");
        assert!(err.starts_with("error: ") && err.contains(reason), "{flag}: {err}");
        if code != 2 {
            assert!(err.contains(flag), "names the variable and the reference: {err}");
        }
        for value in [API_KEY, OTHER, "sk-"] {
            assert!(!err.contains(value), "{err}");
        }
        assert!(!marker.exists(), "{flag}: the command ran");
    }
    // The failing variable is named, with where it came from.
    let out = run("X=palyra://other/SECRET").await;
    assert!(stderr(&out).contains("X=palyra://other/SECRET (--env)"), "{}", stderr(&out));

    // From the environment and from a file, likewise.
    let out = w.run(&["run", "--", "sh", "-c", &start], &[("FROM_ENV", "palyra://other/SECRET")]).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("FROM_ENV=palyra://other/SECRET (the environment)"));
    std::fs::write(w.path("bad.env"), "A=1\nB=palyra://agents/alpha/Bad Key\n").unwrap();
    let bad = w.path("bad.env");
    let out = w.run(&["run", "--env-file", bad.to_str().unwrap(), "--", "sh", "-c", &start], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("bad.env line 2: B: "), "{}", stderr(&out));
    std::fs::write(w.path("bad.env"), "A=\"unclosed\n").unwrap();
    let out = w.run(&["run", "--env-file", bad.to_str().unwrap(), "--", "true"], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!marker.exists());

    // The node down: unavailable (6).
    let url = w.node.url();
    let agent = w.agent();
    let _dir = w.dir;
    w.node.stop().await;
    let mut command = PALYRA.cli(&agent);
    command.args([
        "--server",
        &url,
        "run",
        "--env",
        "X=palyra://agents/alpha/API_KEY",
        "--",
        "sh",
        "-c",
        &start,
    ]);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(!marker.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_reach_the_child_and_its_status_comes_back() {
    let w = World::start(Duration::from_secs(3600)).await;
    let marker = w.path("got-term");
    let script = format!(
        "trap 'echo \"$API_KEY\" > {}; exit 5' TERM; echo ready; while :; do sleep 0.05; done",
        marker.display()
    );
    let mut child = w
        .command(&["run", "--env", "API_KEY=palyra://agents/alpha/API_KEY", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _stop = StopOnPanic(child.id());
    let mut out = lines(child.stdout.take().unwrap());
    line_with(&mut out, "ready", Duration::from_secs(30)).await;
    sigterm(&child);
    let status = wait(child, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(5));
    assert_eq!(read(&marker).trim(), API_KEY);
    w.node.stop().await;
}

/// `palyra run --watch --env API_KEY=palyra://agents/alpha/API_KEY -- sh -c SCRIPT`, once the
/// script printed `started <the key>`: the child, its guard, and its stdout and stderr lines.
async fn watch_api_key(
    w: &World,
    script: &str,
) -> (Child, StopOnPanic, mpsc::UnboundedReceiver<String>, mpsc::UnboundedReceiver<String>) {
    let mut child = w
        .command(&[
            "run",
            "--watch",
            "--env",
            "API_KEY=palyra://agents/alpha/API_KEY",
            "--",
            "sh",
            "-c",
            script,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stop = StopOnPanic(child.id());
    let mut out = lines(child.stdout.take().unwrap());
    let err = lines(child.stderr.take().unwrap());
    line_with(&mut out, &format!("started {API_KEY}"), Duration::from_secs(30)).await;
    (child, stop, out, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_restarts_the_child_when_a_referenced_secret_changes() {
    let w = World::start(Duration::from_secs(3600)).await;
    let script = r#"trap 'exit 0' TERM; echo "started $API_KEY"; while :; do sleep 0.05; done"#;
    let (child, _stop, mut out, mut err) = watch_api_key(&w, script).await;

    // A put to another key of the scope, and to another scope: no restart.
    let mut vault = w.vault().await;
    put(&mut vault, "agents/alpha", "DB_PASSWORD", "rotated-db").await;
    // The referenced key: restarted with the new value within seconds.
    put(&mut vault, "agents/alpha", "API_KEY", "sk-rotated").await;
    line_with(&mut out, "started sk-rotated", Duration::from_secs(10)).await;
    line_with(&mut err, "restarted the command", Duration::from_secs(5)).await;
    // Nothing started in between with another value.
    while let Ok(line) = out.try_recv() {
        assert!(!line.starts_with("started"), "{line}");
    }

    // A deleted secret: the re-resolution fails, the child keeps running and one line says so.
    let mut vault = w.vault().await;
    vault
        .delete_secret(pb::DeleteSecretRequest {
            scope: "agents/alpha".into(),
            key: "API_KEY".into(),
            destroy: false,
        })
        .await
        .unwrap();
    let line = line_with(&mut err, "keeps its old values", Duration::from_secs(10)).await;
    assert!(line.contains("ERROR_REASON_NOT_FOUND") && !line.contains("sk-rotated"), "{line}");

    sigterm(&child);
    assert_eq!(wait(child, Duration::from_secs(30)).await.code(), Some(0));
    w.node.stop().await;
}

/// Revoking the agent's device withdraws its access: `run --watch` stops the command and exits
/// 3 within seconds, instead of retrying the watch for ever with the command still holding the
/// secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_stops_the_command_and_exits_3_when_the_device_is_revoked() {
    use palyra::wire::pb::identity::v1::{
        RevokeDeviceRequest, identity_service_client::IdentityServiceClient,
    };
    let w = World::start(Duration::from_secs(3600)).await;
    let script = r#"trap 'echo stopped; exit 0' TERM; echo "started $API_KEY"; while :; do sleep 0.05; done"#;
    let (child, _stop, mut out, mut err) = watch_api_key(&w, script).await;

    IdentityServiceClient::new(w.node.operator().await)
        .revoke_device(RevokeDeviceRequest { device_id: w.agent_id.clone(), reason: "lost laptop".into() })
        .await
        .unwrap();
    let line = line_with(&mut err, "stopping the command", Duration::from_secs(10)).await;
    assert!(line.contains("ERROR_REASON_DEVICE_REVOKED") && !line.contains(API_KEY), "{line}");
    line_with(&mut out, "stopped", Duration::from_secs(10)).await;
    assert_eq!(wait(child, Duration::from_secs(15)).await.code(), Some(3));
    while let Ok(line) = err.try_recv() {
        assert!(!line.contains("retrying"), "{line}");
    }
    w.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_never_restarts_a_command_that_was_told_to_stop() {
    let w = World::start(Duration::from_secs(3600)).await;
    // A command that takes its time to stop; and an enrollment key in palyra's environment,
    // which the command must not inherit.
    let script = r#"trap 'echo stopping; sleep 2; exit 7' TERM; echo "started $API_KEY ${PALYRA_ENROLLMENT_KEY:-no-key}"; while :; do sleep 0.05; done"#;
    let mut child = w
        .command(&[
            "run",
            "--watch",
            "--env",
            "API_KEY=palyra://agents/alpha/API_KEY",
            "--",
            "sh",
            "-c",
            script,
        ])
        .env("PALYRA_ENROLLMENT_KEY", "palyra-enroll:v1:not-for-the-agent")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _stop = StopOnPanic(child.id());
    let mut out = lines(child.stdout.take().unwrap());
    line_with(&mut out, &format!("started {API_KEY} no-key"), Duration::from_secs(30)).await;
    sigterm(&child);
    line_with(&mut out, "stopping", Duration::from_secs(10)).await;
    // A change while it stops: palyra must exit with the command, not start it again.
    let mut vault = w.vault().await;
    put(&mut vault, "agents/alpha", "API_KEY", "sk-rotated").await;
    assert_eq!(wait(child, Duration::from_secs(30)).await.code(), Some(7));
    while let Ok(line) = out.try_recv() {
        assert!(!line.starts_with("started"), "restarted after a stop: {line}");
    }
    w.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_kills_a_child_that_ignores_sigterm_after_ten_seconds() {
    let w = World::start(Duration::from_secs(3600)).await;
    let script = r#"trap '' TERM; echo "started $API_KEY"; while :; do sleep 0.05; done"#;
    let mut child = w
        .command(&[
            "run",
            "--watch",
            "--env",
            "API_KEY=palyra://agents/alpha/API_KEY",
            "--",
            "sh",
            "-c",
            script,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _stop = StopOnPanic(child.id());
    let mut out = lines(child.stdout.take().unwrap());
    line_with(&mut out, &format!("started {API_KEY}"), Duration::from_secs(30)).await;
    let mut vault = w.vault().await;
    put(&mut vault, "agents/alpha", "API_KEY", "sk-rotated").await;
    let put_at = std::time::Instant::now();
    line_with(&mut out, "started sk-rotated", Duration::from_secs(40)).await;
    let took = put_at.elapsed();
    assert!(took >= Duration::from_secs(9), "SIGKILL only after the grace period: {took:?}");
    // SIGUSR1 is not ignored: forwarded, the command dies of it, palyra exits 128 + 10.
    signal(child.id(), rustix::process::Signal::USR1);
    assert_eq!(wait(child, Duration::from_secs(30)).await.code(), Some(138));
    w.node.stop().await;
}

/// `palyra serve` on `data` as a child, gRPC on `grpc` (port 0: any).
fn serve(data: &Path, grpc: &str) -> testkit::Serving {
    let mut command = PALYRA.cli(data);
    command
        .args(["serve", "--grpc-addr", grpc, "--quic-addr", "127.0.0.1:0", "--console-addr", "127.0.0.1:0"])
        .env("PALYRA_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    testkit::spawn_serving(command, Duration::from_secs(120), |_| {})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_the_node_restarts() {
    let dir = testkit::private_tempdir();
    let data = dir.path().join("node");
    let put_cli = |value: &str| {
        let file = dir.path().join("value");
        std::fs::write(&file, value).unwrap();
        let mut command = PALYRA.cli(&data);
        command.args(["vault", "put", "agents/alpha", "K", "--value-file", file.to_str().unwrap()]);
        command
    };
    let mut serving = tokio::task::spawn_blocking({
        let data = data.clone();
        move || serve(&data, "127.0.0.1:0")
    })
    .await
    .unwrap();
    let _kill_first = KillOnPanic(serving.child.id());
    let grpc = serving.grpc;
    let url = format!("https://{grpc}");
    let mut put = put_cli("v1");
    put.args(["--server", &url]);
    assert!(tokio::task::spawn_blocking(move || put.output().unwrap()).await.unwrap().status.success());

    // The operator's own run, on the node's data dir.
    let script = r#"trap 'exit 0' TERM; echo "started $K"; while :; do sleep 0.05; done"#;
    let mut child = PALYRA
        .cli(&data)
        .args([
            "--server",
            &url,
            "run",
            "--watch",
            "--env",
            "K=palyra://agents/alpha/K",
            "--",
            "sh",
            "-c",
            script,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _stop = StopOnPanic(child.id());
    let mut out = lines(child.stdout.take().unwrap());
    let mut err = lines(child.stderr.take().unwrap());
    line_with(&mut out, "started v1", Duration::from_secs(30)).await;

    // The node stops (its streams end UNAVAILABLE) and comes back on the same address; a put
    // made before the watch is back is replayed from the last sequence it saw.
    signal(serving.child.id(), rustix::process::Signal::TERM);
    let status = tokio::task::spawn_blocking(move || serving.child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status:?}");
    line_with(&mut err, "watching agents/alpha failed", Duration::from_secs(30)).await;
    let data_again = data.clone();
    let mut serving =
        tokio::task::spawn_blocking(move || serve(&data_again, &grpc.to_string())).await.unwrap();
    let _kill_second = KillOnPanic(serving.child.id());
    let mut put = put_cli("v2");
    put.args(["--server", &url]);
    assert!(tokio::task::spawn_blocking(move || put.output().unwrap()).await.unwrap().status.success());
    line_with(&mut out, "started v2", Duration::from_secs(60)).await;

    sigterm(&child);
    assert_eq!(wait(child, Duration::from_secs(30)).await.code(), Some(0));
    tokio::task::spawn_blocking(move || serving.kill()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_running_run_renews_its_certificate() {
    // Due 8 s after issue: two thirds of a 12 s lifetime, counted from issuance (notBefore is
    // backdated 300 s; the renewal rule leaves that out).
    let w = World::start(Duration::from_secs(12)).await;
    let cert = w.agent().join("client/cert.pem");
    let before = certificate_validity_pem(&std::fs::read(&cert).unwrap()).unwrap().1;
    let mut child = w
        .command(&[
            "run",
            "--watch",
            "--env",
            "K=palyra://agents/alpha/API_KEY",
            "--",
            "sh",
            "-c",
            "echo up; exec sleep 600",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _stop = StopOnPanic(child.id());
    let mut out = lines(child.stdout.take().unwrap());
    let mut err = lines(child.stderr.take().unwrap());
    line_with(&mut out, "up", Duration::from_secs(30)).await;
    line_with(&mut err, "renewed this device's certificate", Duration::from_secs(30)).await;
    let after = certificate_validity_pem(&std::fs::read(&cert).unwrap()).unwrap().1;
    assert!(after > before + Duration::from_secs(3600), "a fresh certificate");
    sigterm(&child);
    assert_eq!(wait(child, Duration::from_secs(30)).await.code(), Some(143));
    w.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inject_writes_everything_or_nothing() {
    let w = World::start(Duration::from_secs(3600)).await;
    let template = w.path("app.tmpl");
    std::fs::write(
        &template,
        "api_key: {{ palyra://agents/alpha/API_KEY }}\ndb: \"{{palyra://agents/alpha/DB_PASSWORD?version=1}}\"\nother: {{ not.ours }}\n",
    )
    .unwrap();
    let want = format!("api_key: {API_KEY}\ndb: \"{DB_PASSWORD}\"\nother: {{{{ not.ours }}}}\n");

    // To a file: 0600, the whole text.
    let target = w.path("app.yaml");
    let out = w.run(&["inject", "-i", template.to_str().unwrap(), "-o", target.to_str().unwrap()], &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read(&target), want);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o600);

    // To stdout, from stdin.
    let mut command = w.command(&["inject"]);
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let text = std::fs::read(&template).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), &text).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), want);

    // One reference denied: exit 3, the existing file untouched, nothing new written.
    std::fs::write(&template, "a: {{ palyra://agents/alpha/API_KEY }}\nb: {{ palyra://other/SECRET }}\n")
        .unwrap();
    std::fs::write(&target, "old content").unwrap();
    let fresh = w.path("fresh.yaml");
    for (into, code) in [(&target, 3), (&fresh, 3)] {
        let out =
            w.run(&["inject", "-i", template.to_str().unwrap(), "-o", into.to_str().unwrap()], &[]).await;
        assert_eq!(out.status.code(), Some(code), "{}", stderr(&out));
        assert_eq!(stderr(&out).lines().count(), 1);
        assert!(stderr(&out).contains("palyra://other/SECRET"), "{}", stderr(&out));
        assert!(!stderr(&out).contains(API_KEY));
    }
    assert_eq!(read(&target), "old content");
    assert!(!fresh.exists());
    // Missing (4) and malformed (2), likewise.
    for (text, code) in [
        ("{{ palyra://agents/alpha/NOPE }}", 4),
        ("{{ palyra://agents/alpha/A B }}", 2),
        ("{{ palyra://a/k", 2),
    ] {
        std::fs::write(&template, text).unwrap();
        let out =
            w.run(&["inject", "-i", template.to_str().unwrap(), "-o", fresh.to_str().unwrap()], &[]).await;
        assert_eq!(out.status.code(), Some(code), "{text}: {}", stderr(&out));
        assert!(!fresh.exists());
    }
    // No leftover temp files beside the target.
    let names: Vec<String> = std::fs::read_dir(w.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
    w.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_renew_replaces_the_certificate_now() {
    let w = World::start(Duration::from_secs(3600)).await;
    let cert = w.agent().join("client/cert.pem");
    let before = std::fs::read(&cert).unwrap();
    let out = w.run(&["--json", "identity", "renew"], &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let after = std::fs::read(&cert).unwrap();
    assert_ne!(after, before);
    let not_after = certificate_validity_pem(&after).unwrap().1;
    assert!(not_after > SystemTime::now() + Duration::from_secs(20 * 24 * 3600));
    assert_eq!(json["not_after"], palyra_time(not_after));
    // The new certificate works.
    let show = w.run(&["identity", "show"], &[]).await;
    assert!(show.status.success(), "{}", stderr(&show));
    w.node.stop().await;
}

fn palyra_time(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    // The CLI prints RFC 3339 seconds in UTC; compare through the same fields.
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil(days as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_commands_exit_with_the_table() {
    let w = World::start(Duration::from_secs(3600)).await;
    let node_dir = w.node.data_dir();
    let operator = |args: &[&str]| {
        let mut command = PALYRA.cli(&node_dir);
        command.args(["--server", &w.node.url()]).args(args);
        command
    };
    let run = |mut command: std::process::Command| async move {
        tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
    };
    // Not found: 4. Denied (the agent on another scope): 3. Malformed scope: 2.
    let out = run(operator(&["vault", "get", "agents/alpha", "NOPE"])).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let out = w.run(&["vault", "get", "other", "SECRET"], &[]).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = w.run(&["vault", "get", "Agents", "K"], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // A check-and-set that lost: 7.
    std::fs::write(w.path("value"), "v").unwrap();
    let value = w.path("value");
    let cas = operator(&[
        "vault",
        "put",
        "agents/alpha",
        "API_KEY",
        "--value-file",
        value.to_str().unwrap(),
        "--expected-version",
        "9",
    ]);
    let out = run(cas).await;
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    // The agent reading its own secret: 0.
    let out = w.run(&["vault", "get", "agents/alpha", "API_KEY"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // `policy check`: DENY is 3, ALLOW 0.
    let principal = format!("Palyra::Device::\"{}\"", w.agent_id);
    let get = "palyra.vault.v1.VaultService/GetSecret";
    let out = run(operator(&["policy", "check", &principal, get, "Palyra::Scope::\"other\""])).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("DENY"));
    let out = run(operator(&["policy", "check", &principal, get, "Palyra::Scope::\"agents/alpha\""])).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // A secret row edited behind the node's back: integrity (5), and `run` starts nothing.
    let mut vault = w.vault().await;
    put(&mut vault, "team/app", "token", "old").await;
    put(&mut vault, "team/app", "token", "new").await;
    let (scope, key) = (Scope::parse("team/app").unwrap(), SecretKey::parse("token").unwrap());
    let id = ObjectId::new(&scope, &key).as_str().to_owned();
    let db = rusqlite::Connection::open(node_dir.join("palyra.db")).unwrap();
    db.execute("UPDATE secrets SET latest_version = 1 WHERE object_id = ?1", [&id]).unwrap();
    let out = run(operator(&["run", "--env", "T=palyra://team/app/token", "--", "true"])).await;
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("T=palyra://team/app/token") && !stderr(&out).contains("old"));
    let out = run(operator(&["vault", "get", "team/app", "token"])).await;
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    // Clap's usage errors: 2; --help documents the table.
    let out = w.run(&["run", "sh"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    let help = w.run(&["--help"], &[]).await;
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("Exit codes:") && text.contains("6  unavailable"), "{text}");
    w.node.stop().await;
}
