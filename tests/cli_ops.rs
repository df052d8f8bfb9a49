//! The operator's scripting surface of the `palyra` binary (issue 20): `policy test` and
//! `policy set --test`, `vault get --reveal --raw`, `vault put` of an empty value,
//! `vault import`/`export` round trips through a real node, shell completions, man pages,
//! `config check`, and an example line in every subcommand's help.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Output, Stdio};

use palyra::testkit::{self, Palyra, TestNode, palyra_bin};

const PALYRA: Palyra = palyra_bin!();
const CASES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/policy/default.cases.toml");
const DEFAULTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/policy/default.cedar");

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `palyra --server URL ARGS...` on the node's data dir (the operator's credentials), off the
/// runtime's threads, with `input` on stdin.
async fn cli(node: &TestNode, args: &[&str], input: Option<&[u8]>) -> Output {
    let mut command = PALYRA.cli(&node.data_dir());
    command.args(["--server", &node.url()]).args(args);
    command.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let input = input.map(<[u8]>::to_vec);
    tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().unwrap();
        if let Some(input) = input {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(&input).unwrap();
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

#[test]
fn policy_test_passes_fails_with_an_explanation_and_refuses_malformed_files() {
    let dir = testkit::private_tempdir();
    let data = dir.path().join("none");
    // Offline: no node, no data dir.
    let pass = PALYRA.run(&data, &["policy", "test", CASES]);
    assert_eq!(pass.status.code(), Some(0), "{}{}", stdout(&pass), stderr(&pass));
    assert!(stdout(&pass).contains("ok   operator updates policies"), "{}", stdout(&pass));
    assert!(!data.exists(), "policy test needs no data dir");

    // The operator role no longer gets admin-all: those cases fail, and say why.
    let changed = dir.path().join("changed.cedar");
    let text = std::fs::read_to_string(DEFAULTS).unwrap();
    std::fs::write(&changed, text.replace("in Palyra::Role::\"admin\"", "in Palyra::Role::\"node\""))
        .unwrap();
    let fail = PALYRA.run(&data, &["policy", "test", CASES, "--policies", changed.to_str().unwrap()]);
    assert_eq!(fail.status.code(), Some(1));
    let out = stdout(&fail);
    assert!(out.contains("FAIL operator updates policies: expected allow, got deny"), "{out}");
    assert!(out.contains("no policy permitted") && out.contains("- admin-all"), "{out}");
    assert!(out.contains("ok   anonymous health check"), "{out}");
    let json: serde_json::Value = serde_json::from_slice(
        &PALYRA
            .run(&data, &["--json", "policy", "test", CASES, "--policies", changed.to_str().unwrap()])
            .stdout,
    )
    .unwrap();
    assert!(json["failed"].as_u64().unwrap() >= 2);

    // Malformed: exit 2, the file and the line.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[case]]\nname = \"x\"\nprincipal = \"anonymous\"\naction = \"nope\"\nresource = 'Palyra::Node::\"local\"'\nexpect = \"allow\"\n").unwrap();
    let malformed = PALYRA.run(&data, &["policy", "test", bad.to_str().unwrap()]);
    assert_eq!(malformed.status.code(), Some(2));
    assert!(stderr(&malformed).contains(&format!("{}:4:", bad.display())), "{}", stderr(&malformed));
    // Bounded.
    std::fs::write(&bad, vec![b'#'; 2 * 1024 * 1024]).unwrap();
    let big = PALYRA.run(&data, &["policy", "test", bad.to_str().unwrap()]);
    assert_eq!(big.status.code(), Some(2));
    assert!(stderr(&big).contains("larger than"), "{}", stderr(&big));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_set_with_failing_cases_installs_nothing() {
    let node = TestNode::start().await;
    let changed = node.dir.path().join("changed.cedar");
    let text = std::fs::read_to_string(DEFAULTS).unwrap();
    // Still lets the operator in (no lockout), but opens every device's scope to every device.
    let wider = format!(
        "{text}\n@id(\"too-wide\")\npermit (principal is Palyra::Device, action in Palyra::Action::\"vault\", resource);\n"
    );
    std::fs::write(&changed, &wider).unwrap();
    let refused = cli(&node, &["policy", "set", changed.to_str().unwrap(), "--test", CASES], None).await;
    assert_eq!(refused.status.code(), Some(1), "{}{}", stdout(&refused), stderr(&refused));
    assert!(
        stderr(&refused).contains("refused") && stderr(&refused).contains("nothing installed"),
        "{}",
        stderr(&refused)
    );
    assert!(
        stdout(&refused)
            .contains("FAIL device cannot read another device's subtree: expected deny, got allow"),
        "{}",
        stdout(&refused)
    );
    assert!(stdout(&refused).contains("+ too-wide"), "{}", stdout(&refused));
    let history = cli(&node, &["--json", "policy", "history"], None).await;
    let versions: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(versions.as_array().unwrap().len(), 1, "nothing installed: {versions}");

    // The defaults themselves pass, and are installed.
    let ok = cli(&node, &["policy", "set", DEFAULTS, "--test", CASES], None).await;
    assert!(ok.status.success(), "{}{}", stdout(&ok), stderr(&ok));
    assert!(stdout(&ok).contains("policy version 2 is active"), "{}", stdout(&ok));
}

/// Values that quoting tends to break.
const EDGE_CASES: &[(&str, &str)] = &[
    ("PLAIN", "plain"),
    ("SPACES", "  two  spaces  "),
    ("QUOTES", "it's \"quoted\" `back`"),
    ("DOLLAR", "$HOME ${PATH} $(id) $"),
    ("HASH", "# not a comment #"),
    ("HASH_MID", "a #b"),
    ("BACKSLASH", "C:\\path\\n\\"),
    ("NEWLINES", "line one\nline two\r\n\ttabbed\n"),
    ("EQUALS", "a=b==c="),
    ("UNICODE", "pässwörd ✓ 🔑 日本"),
    ("EMPTY", ""),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_export_round_trip_keeps_every_value_exactly() {
    let node = TestNode::start().await;
    let dir = node.dir.path();
    let source: serde_json::Map<String, serde_json::Value> = EDGE_CASES
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String((*v).to_owned())))
        .collect();
    let json_file = dir.join("in.json");
    std::fs::write(&json_file, serde_json::to_vec(&source).unwrap()).unwrap();

    // An empty value is refused unless asked for; nothing is written then.
    let refused =
        cli(&node, &["vault", "import", json_file.to_str().unwrap(), "--scope", "rt/json"], None).await;
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("EMPTY") && stderr(&refused).contains("--allow-empty"),
        "{}",
        stderr(&refused)
    );
    let none = cli(&node, &["--json", "vault", "list", "rt/json"], None).await;
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&none.stdout).unwrap(), serde_json::json!([]));

    let imported = cli(
        &node,
        &["--json", "vault", "import", json_file.to_str().unwrap(), "--scope", "rt/json", "--allow-empty"],
        None,
    )
    .await;
    assert!(imported.status.success(), "{}", stderr(&imported));
    let report: serde_json::Value = serde_json::from_slice(&imported.stdout).unwrap();
    assert_eq!(report["imported"], EDGE_CASES.len());

    // Each value exactly, through get --reveal --raw.
    for (key, value) in EDGE_CASES {
        let got = cli(&node, &["vault", "get", "rt/json", key, "--reveal", "--raw"], None).await;
        assert!(got.status.success(), "{key}: {}", stderr(&got));
        assert_eq!(got.stdout, value.as_bytes(), "{key}");
    }

    // export env → import into another scope → export json: the same map.
    let exported = cli(&node, &["vault", "export", "rt/json", "--format", "env"], None).await;
    assert!(exported.status.success(), "{}", stderr(&exported));
    let env_file = dir.join("out.env");
    std::fs::write(&env_file, &exported.stdout).unwrap();
    let again = cli(
        &node,
        &["vault", "import", env_file.to_str().unwrap(), "--scope", "rt/env", "--allow-empty"],
        None,
    )
    .await;
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains(&format!("imported {} secrets into rt/env", EDGE_CASES.len())),
        "{}",
        stdout(&again)
    );
    let back = cli(&node, &["vault", "export", "rt/env", "--format", "json"], None).await;
    assert!(back.status.success(), "{}", stderr(&back));
    let back: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&back.stdout).unwrap();
    assert_eq!(back, source);
    // The exported .env text never shows a value in an error, and values are quoted.
    assert!(stdout(&exported).contains("DOLLAR=\"\\$HOME"), "{}", stdout(&exported));

    // A file that fails halfway through its checks writes nothing.
    let bad = dir.join("bad.env");
    std::fs::write(&bad, "GOOD=fine\nBAD-NAME=hunter2\n").unwrap();
    let failed = cli(&node, &["vault", "import", bad.to_str().unwrap(), "--scope", "rt/bad"], None).await;
    assert_eq!(failed.status.code(), Some(2));
    assert!(
        stderr(&failed).contains("line 2") && !stderr(&failed).contains("hunter2"),
        "{}",
        stderr(&failed)
    );
    let none = cli(&node, &["--json", "vault", "list", "rt/bad"], None).await;
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&none.stdout).unwrap(), serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_refuses_an_empty_value_unless_allowed() {
    let node = TestNode::start().await;
    let empty = cli(&node, &["vault", "put", "e/s", "K", "--value-stdin"], Some(b"")).await;
    assert_eq!(empty.status.code(), Some(2));
    assert!(
        stderr(&empty).contains("empty") && stderr(&empty).contains("--allow-empty"),
        "{}",
        stderr(&empty)
    );
    let missing = cli(&node, &["vault", "get", "e/s", "K"], None).await;
    assert_eq!(missing.status.code(), Some(4), "{}", stderr(&missing));
    let allowed =
        cli(&node, &["vault", "put", "e/s", "K", "--value-stdin", "--allow-empty"], Some(b"")).await;
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    let got = cli(&node, &["vault", "get", "e/s", "K", "--reveal", "--raw"], None).await;
    assert!(got.status.success() && got.stdout.is_empty(), "{}", stderr(&got));
    // Not a terminal: --reveal adds nothing either; --raw without --reveal is a usage error.
    cli(&node, &["vault", "put", "e/s", "V", "--value-stdin"], Some(b"abc")).await;
    assert_eq!(cli(&node, &["vault", "get", "e/s", "V", "--reveal"], None).await.stdout, b"abc");
    assert_eq!(cli(&node, &["vault", "get", "e/s", "V", "--raw"], None).await.status.code(), Some(2));

    // On a terminal (util-linux `script` gives the command a pty): --reveal ends the line,
    // --raw does not, and export refuses without --reveal.
    let on_tty = |args: &str| {
        let line = format!(
            "{} --data-dir {} --server {} {args}",
            PALYRA.path().display(),
            node.data_dir().display(),
            node.url()
        );
        std::process::Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .env("PALYRA_LOG", "off")
            .output()
    };
    let Ok(revealed) = on_tty("vault get e/s V --reveal") else {
        eprintln!("SKIPPED: the terminal checks (no `script` here)");
        return;
    };
    assert_eq!(stdout(&revealed), "abc\r\n");
    assert_eq!(stdout(&on_tty("vault get e/s V --reveal --raw").unwrap()), "abc");
    let refused = on_tty("vault export e/s").unwrap();
    assert_eq!(refused.status.code(), Some(2), "{}", stdout(&refused));
    assert!(
        stdout(&refused).contains("refusing to print secret values to a terminal")
            && !stdout(&refused).contains("abc")
    );
    let shown = on_tty("vault export e/s --reveal").unwrap();
    assert!(shown.status.success() && stdout(&shown).contains("V=\"abc\""), "{}", stdout(&shown));
}

/// The subcommand paths of `palyra` (from `palyra man`'s page names, checked below against
/// `--help`).
const SOME_COMMANDS: &[&str] = &["vault", "policy", "completions", "devices", "pairing", "audit", "backup"];

#[test]
fn completions_for_every_shell_name_the_subcommands() {
    let dir = testkit::private_tempdir();
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let out = PALYRA.run(dir.path(), &["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        assert!(script.len() > 1000, "{shell}: {} bytes", script.len());
        for word in SOME_COMMANDS.iter().chain(&["import", "export", "--reveal", "--data-dir"]) {
            assert!(script.contains(word), "{shell}: {word} missing");
        }
    }
    let bad = PALYRA.run(dir.path(), &["completions", "cmd.exe"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn man_writes_a_page_for_every_command_and_subcommand() {
    let dir = testkit::private_tempdir();
    let out_dir = dir.path().join("man/man1");
    let out = PALYRA.run(dir.path(), &["--json", "man", "--out", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut written: Vec<String> =
        std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    written.sort();
    assert_eq!(report["pages"].as_array().unwrap().len(), written.len());
    // Every subcommand `--help` lists has its page, recursively.
    fn expect(path: &[&str], written: &[String]) {
        let page = format!("{}.1", path.join("-"));
        assert!(written.contains(&page), "{page} missing");
        let mut args: Vec<&str> = path[1..].to_vec();
        args.push("--help");
        let help = PALYRA.command().args(&args).output().unwrap();
        let text = String::from_utf8_lossy(&help.stdout).into_owned();
        let Some(commands) = text.split("Commands:\n").nth(1) else { return };
        for line in commands.lines().take_while(|l| l.starts_with("  ")) {
            let name = line.split_whitespace().next().unwrap();
            if name != "help" {
                let mut sub = path.to_vec();
                sub.push(name);
                expect(&sub, written);
            }
        }
    }
    expect(&["palyra"], &written);
    for page in
        ["palyra.1", "palyra-vault-get.1", "palyra-vault-import.1", "palyra-policy-test.1", "palyra-man.1"]
    {
        assert!(written.iter().any(|w| w == page), "{page} missing: {written:?}");
    }
    let get = std::fs::read_to_string(out_dir.join("palyra-vault-get.1")).unwrap();
    assert!(get.contains(".TH") && get.contains("reveal"), "{get}");
}

/// `systemd-analyze verify` on dist/systemd/palyra.service (its ExecStart pointed at the binary
/// under test): no error and no warning, and a broken copy is caught. Where systemd-analyze is
/// missing this says SKIPPED on stderr; `PALYRA_REQUIRE_SYSTEMD_ANALYZE=1` makes that a failure.
#[test]
fn the_systemd_unit_is_hardened_and_verifies() {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/systemd/palyra.service")).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/palyra serve",
        "Environment=PALYRA_HOME=/var/lib/palyra",
        "StateDirectory=palyra",
        "ReadWritePaths=/var/lib/palyra",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service",
        "LockPersonality=yes",
        "DynamicUser=yes",
    ] {
        assert!(unit.contains(line), "{line:?} missing");
    }
    let verify = |text: &str| {
        let dir = testkit::private_tempdir();
        let path = dir.path().join("palyra.service");
        std::fs::write(&path, text).unwrap();
        std::process::Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output()
    };
    let here =
        unit.replace("ExecStart=/usr/local/bin/palyra", &format!("ExecStart={}", PALYRA.path().display()));
    let out = match verify(&here) {
        Ok(out) => out,
        Err(e) if std::env::var_os("PALYRA_REQUIRE_SYSTEMD_ANALYZE").is_none() => {
            eprintln!("SKIPPED: systemd-analyze not runnable here ({e})");
            return;
        }
        Err(e) => panic!("systemd-analyze: {e}"),
    };
    assert!(out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(), "{}", stderr(&out));
    let broken = verify(&here.replace("ProtectHome=yes", "ProtectHome=yess")).unwrap();
    assert!(String::from_utf8_lossy(&broken.stderr).contains("yess"), "a broken unit passes verify");
}

#[test]
fn config_check_says_ok_or_names_the_key_and_line() {
    let dir = testkit::private_tempdir();
    let data = dir.path().join("node");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(
        data.join("palyra.toml"),
        "grpc_addr = \"127.0.0.1:9000\"\n[grpc]\nmax_connections = 10\n",
    )
    .unwrap();
    let ok = PALYRA.run(&data, &["config", "check"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(stdout(&ok).starts_with("ok   ") && stdout(&ok).contains("palyra.toml"), "{}", stdout(&ok));
    let bad = dir.path().join("bad.toml");
    for (text, want) in [
        ("grpc_addr = \"127.0.0.1:9000\"\n\nconsole_addr = \"x\"\n", "line 3"),
        ("[grpc]\nmax_connections = \"many\"\n", "line 2"),
        ("[console]\n\nmax_connections = 0\n", "line 3, key console.max_connections"),
    ] {
        std::fs::write(&bad, text).unwrap();
        let out = PALYRA.run(&data, &["config", "check", bad.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{text}: {}", stderr(&out));
        assert!(stderr(&out).contains("bad.toml") && stderr(&out).contains(want), "{want}: {}", stderr(&out));
    }
    let missing = PALYRA.run(&data, &["config", "check", dir.path().join("nope.toml").to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn the_environment_is_read_but_not_shown_as_given_in_usage() {
    let dir = testkit::private_tempdir();
    let data = dir.path().join("from-env");
    // PALYRA_HOME is the data dir; PALYRA_SERVER the node (nothing listens on port 9: 6).
    let init = PALYRA
        .command()
        .arg("--json")
        .arg("init")
        .env("PALYRA_HOME", &data)
        .env("PALYRA_KEY_BACKEND", "file")
        .env("PALYRA_LOG", "off")
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", stderr(&init));
    assert!(data.join("operator/cert.pem").exists());
    let down = PALYRA
        .command()
        .args(["identity", "show"])
        .env("PALYRA_HOME", &data)
        .env("PALYRA_SERVER", "https://127.0.0.1:9")
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(6), "{}", stderr(&down));
    // A usage error's Usage line does not list them as if they were required.
    let usage = PALYRA
        .command()
        .args(["vault", "get"])
        .env("PALYRA_HOME", &data)
        .env("PALYRA_SERVER", "https://x:1")
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(2));
    assert!(stderr(&usage).contains("Usage: palyra vault get <SCOPE> <KEY>"), "{}", stderr(&usage));
    // Global options under their own heading; init and serve do not offer --server.
    let help = stdout(&PALYRA.command().args(["init", "--help"]).output().unwrap());
    assert!(
        help.contains("Global options:") && help.contains("--data-dir") && !help.contains("--server <"),
        "{help}"
    );
    let refused = PALYRA.run(&data, &["serve", "--server", "https://127.0.0.1:7443"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(stderr(&refused).contains("--grpc-addr"), "{}", stderr(&refused));
    let root = stdout(&PALYRA.command().arg("--help").output().unwrap());
    for word in ["PALYRA_HOME", "PALYRA_SERVER", "cert.pem", "Exit codes:"] {
        assert!(root.contains(word), "{word}: {root}");
    }
}

/// The unit's `MemoryDenyWriteExecute=yes` holds: `palyra serve` and the CLI run under the
/// kernel's PR_SET_MDWE (what systemd applies; set here through python3's ctypes, then exec)
/// and a vault round trip over mTLS works. Where python3 or the prctl is missing (Linux < 6.3)
/// this says SKIPPED on stderr.
#[test]
fn serve_works_with_memory_deny_write_execute() {
    const MDWE: &str = "import ctypes, os, sys\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        if libc.prctl(65, 1, 0, 0, 0) != 0 or libc.prctl(66, 0, 0, 0, 0) != 1: sys.exit(97)\n\
        if len(sys.argv) > 1: os.execv(sys.argv[1], sys.argv[1:])\n";
    let mdwe = || {
        let mut command = std::process::Command::new("python3");
        command.args(["-c", MDWE]);
        command
    };
    match mdwe().status() {
        Ok(status) if status.success() => {}
        other => {
            eprintln!("SKIPPED: no python3 or no PR_SET_MDWE here ({other:?})");
            return;
        }
    }
    let dir = testkit::private_tempdir();
    let data = dir.path().join("node");
    let mut serve = mdwe();
    serve
        .arg(PALYRA.path())
        .arg("--data-dir")
        .arg(&data)
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--quic-addr",
            "127.0.0.1:0",
            "--console-addr",
            "127.0.0.1:0",
        ])
        .env("PALYRA_KEY_BACKEND", "file")
        .env("PALYRA_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut serving = testkit::spawn_serving(serve, std::time::Duration::from_secs(120), |_| {});
    let url = format!("https://{}", serving.grpc);
    let cli = |args: &[&str], input: &[u8]| {
        let mut command = mdwe();
        command.arg(PALYRA.path()).arg("--data-dir").arg(&data).args(["--server", &url]).args(args);
        command.env("PALYRA_LOG", "off").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), input).unwrap();
        child.wait_with_output().unwrap()
    };
    let put = cli(&["vault", "put", "m/d", "K", "--value-stdin"], b"w^x");
    assert!(put.status.success(), "{}", stderr(&put));
    let get = cli(&["vault", "get", "m/d", "K", "--reveal", "--raw"], b"");
    assert_eq!((get.status.code(), get.stdout.as_slice()), (Some(0), b"w^x".as_slice()), "{}", stderr(&get));
    assert!(serving.child.try_wait().unwrap().is_none(), "serve died under MDWE");
    serving.kill();
}
