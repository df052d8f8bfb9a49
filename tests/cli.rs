//! The `palyra` binary as a user runs it: `init` is idempotent and never overwrites, exit codes
//! (0 ok, 1 failure, 2 usage, 6 unavailable; the rest in tests/run_inject.rs), one-line errors
//! with a hint, `--json`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;

use palyra::testkit::{self, Palyra, palyra_bin};

const PALYRA: Palyra = palyra_bin!();

fn json(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn init_is_idempotent_and_never_overwrites() {
    let dir = testkit::private_tempdir();
    let data = dir.path().join("node");
    let first = json(&PALYRA.run(&data, &["--json", "init"]));
    let cert = std::fs::read(data.join("operator/cert.pem")).unwrap();
    let key = std::fs::read(data.join("operator/key.pem")).unwrap();
    let ca = std::fs::read(data.join("identity/ca.pem")).unwrap();

    let second = json(&PALYRA.run(&data, &["--json", "init"]));
    assert_eq!(first["node_id"], second["node_id"]);
    assert_eq!(first["ca_fingerprint"], second["ca_fingerprint"]);
    assert_eq!(first["operator_device_id"], second["operator_device_id"]);
    assert_eq!(first["key_backend"], "file");
    assert_eq!(std::fs::read(data.join("operator/cert.pem")).unwrap(), cert);
    assert_eq!(std::fs::read(data.join("operator/key.pem")).unwrap(), key);
    assert_eq!(std::fs::read(data.join("identity/ca.pem")).unwrap(), ca);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| std::fs::metadata(data.join(p)).unwrap().permissions().mode() & 0o777;
        for dir in ["", "keys", "identity", "operator"] {
            assert_eq!(mode(dir), 0o700, "{dir}");
        }
        for file in [
            "keys/root.key",
            "identity/ca.pem",
            "identity/server.pem",
            "operator/key.pem",
            "operator/cert.pem",
            "palyra.db",
        ] {
            assert_eq!(mode(file), 0o600, "{file}");
        }
    }
}

#[test]
fn exit_codes_and_one_line_errors() {
    let dir = testkit::private_tempdir();
    let data = dir.path().join("node");
    // Usage error: 2.
    let usage = PALYRA.run(&data, &["vault", "put", "a", "k"]);
    assert_eq!(usage.status.code(), Some(2));
    // No credentials yet: 1, one line, with what to do.
    let missing = PALYRA.run(&data, &["vault", "list", "a"]);
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains("palyra init"), "{stderr}");
    // No server: 6 (unavailable), says what to check.
    PALYRA.run(&data, &["init"]);
    let down = PALYRA.run(&data, &["--server", "https://127.0.0.1:9", "identity", "show"]);
    assert_eq!(down.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&down.stderr).contains("is `palyra serve` running"));
    // With --json the error is one JSON object on stderr, its exit code inside.
    let down = PALYRA.run(&data, &["--json", "--server", "https://127.0.0.1:9", "identity", "show"]);
    assert_eq!(down.status.code(), Some(6));
    let error: serde_json::Value = serde_json::from_slice(&down.stderr).unwrap();
    assert_eq!(error["exit"], 6);
    assert!(error["error"].as_str().unwrap().contains("127.0.0.1:9"), "{error}");
    // A bad config file names itself.
    std::fs::write(data.join("palyra.toml"), "grpc_adr = 1\n").unwrap();
    let bad = PALYRA.run(&data, &["init"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("palyra.toml"));
    // --help helps.
    let help = PALYRA.command().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    for word in ["serve", "vault", "policy", "audit", "run", "inject", "--data-dir", "--json", "Exit codes:"]
    {
        assert!(text.contains(word), "{word} missing from --help");
    }
}
