//! The integration suite as one test binary: each `tests/<name>.rs` is a module of it (its
//! tests are `<name>::…`, so `cargo test --test integration <name>::` runs one file's). One
//! binary, linked once, instead of one per file: a debug test binary of this stack is ~100 MB,
//! and three dozen of them took gigabytes of a CI machine's disk and a link each.
//!
//! Two files stay binaries of their own (Cargo.toml): `flood.rs` reads this process's RSS and
//! `open_files_limit.rs` lowers this process's open-files limit, so neither may share its
//! process with other tests.

mod audit_export;
mod audit_integrity;
mod audit_retention;
mod audit_sink;
mod audit_witness;
mod auth_profiles;
mod authz_matrix;
mod backup;
mod certificate_lifetime;
mod cli;
mod cli_address;
mod cli_ops;
mod console;
mod crash_recovery;
mod datadir_lock;
mod device_renewal;
mod enrollment;
mod events;
mod flood_limits;
mod fuzz_seeds;
mod grpc_policy_audit;
mod grpc_vault;
mod hostile_input;
mod keychain_secret_service;
mod metrics;
mod no_leaks;
mod pairing_flow;
mod policy_differential;
mod quic;
mod row_integrity;
mod run_inject;
mod serve_crash;
mod vault;
mod watch_secrets;

/// With `autotests = false`, a file added to `tests/` builds and runs only if it is a module
/// here or a `[[test]]` of Cargo.toml: every file is one or the other.
#[test]
fn every_file_of_tests_is_a_module_here_or_a_test_binary() {
    use std::collections::BTreeSet;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let files: BTreeSet<String> = std::fs::read_dir(dir.join("tests"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".rs") && name != "integration.rs")
        .collect();
    let modules: BTreeSet<String> = include_str!("integration.rs")
        .lines()
        .filter_map(|line| Some(format!("{}.rs", line.strip_prefix("mod ")?.strip_suffix(';')?)))
        .collect();
    let binaries: BTreeSet<String> =
        files.iter().filter(|name| manifest.contains(&format!("path = \"tests/{name}\""))).cloned().collect();
    assert!(
        modules.is_disjoint(&binaries),
        "both a module and a binary: {:?}",
        modules.intersection(&binaries)
    );
    let covered: BTreeSet<String> = modules.union(&binaries).cloned().collect();
    assert_eq!(files, covered, "tests/ files that build nowhere, or modules without a file");
    assert!(binaries.contains("flood.rs") && binaries.contains("open_files_limit.rs"), "{binaries:?}");
}
