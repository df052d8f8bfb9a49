//! One process per data dir (finding 6, lock part) and `palyra serve`'s process hardening
//! (finding 5): `palyra serve` as a real child process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use palyra::testkit::{self, Palyra, palyra_bin};

const PALYRA: Palyra = palyra_bin!();

#[test]
fn a_second_serve_and_an_online_reset_are_refused_and_an_offline_reset_is_audited() {
    let dir = testkit::private_tempdir();
    let data = dir.path().join("node");
    let mut first = PALYRA.serve(&data, "info").child;
    let pid = first.id();

    let second = PALYRA.serve_command(&data, "off").stderr(std::process::Stdio::piped()).output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{err}");
    assert!(err.contains(&format!("pid {pid} (palyra serve)")), "{err}");
    eprintln!("second serve: {}", err.trim());

    let reset = PALYRA.run(&data, &["policy", "reset"]);
    let err = String::from_utf8_lossy(&reset.stderr);
    assert!(!reset.status.success(), "{err}");
    assert!(err.contains(&format!("pid {pid} (palyra serve)")), "{err}");
    eprintln!("online reset: {}", err.trim());
    let init = PALYRA.run(&data, &["init"]);
    assert!(!init.status.success());

    // Process hardening of the serving child.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
    assert_eq!(core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(), ["0", "0"], "{core}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let locked = status.lines().find(|l| l.starts_with("VmLck")).unwrap_or("VmLck: n/a");
    eprintln!("serve child: {core}; {locked}");
    let vm_lck_kb: u64 = locked.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(vm_lck_kb > 0, "the serve child locks its key pages: {locked}");

    first.kill().unwrap();
    first.wait().unwrap();

    // Offline, the reset runs and leaves an audit record in the verified chain.
    let reset = PALYRA.run(&data, &["--json", "policy", "reset"]);
    assert!(reset.status.success(), "{}", String::from_utf8_lossy(&reset.stderr));
    let version =
        serde_json::from_slice::<serde_json::Value>(&reset.stdout).unwrap()["version"].as_u64().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let node = testkit::open_node(&data).await;
        let verification = node.audit().verify().await.unwrap();
        assert!(verification.ok, "{verification:?}");
        let records = node.audit().recent(10, None, Some("palyra policy reset".to_owned())).await.unwrap();
        assert_eq!(records.len(), 1, "{records:?}");
        assert!(records[0].entry.reason.contains(&format!("version {version}")), "{records:?}");
        assert_eq!(node.policies().current().await.unwrap().info.version, version);
        eprintln!("audited: {:?}", records[0].entry);
    });
}
