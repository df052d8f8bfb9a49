//! `palyra serve` raises its open-files soft limit to the hard limit at start: with the usual
//! soft limit of 1,024 it could not hold a thousand clients (found by benches/load.rs).

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};

use palyra::testkit::{self, Palyra, palyra_bin};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

const PALYRA: Palyra = palyra_bin!();

/// The soft and hard "Max open files" of a process, from /proc/<pid>/limits.
fn open_files_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let mut fields = line["Max open files".len()..].split_whitespace();
    (fields.next().unwrap().to_owned(), fields.next().unwrap().to_owned())
}

// One test in this binary: it changes the limit of the whole test process.
#[test]
fn the_library_and_serve_raise_the_soft_limit_to_the_hard_one() {
    let hard = getrlimit(Resource::Nofile).maximum;
    if hard.is_some_and(|h| h <= 256) {
        println!("SKIPPED: the hard open-files limit is {hard:?}, nothing to raise");
        return;
    }
    // A low soft limit, as many systems give a process (and its children inherit).
    setrlimit(Resource::Nofile, Rlimit { current: Some(256), maximum: hard }).unwrap();

    let tmp = testkit::private_tempdir();
    let mut child = PALYRA.serve_command(&tmp.path().join("node"), "warn").spawn().unwrap();
    // Serving means it got past the start, where the limit is raised.
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let serving = stderr.lines().map_while(Result::ok).any(|l| l.contains("serving gRPC on"));
    let (soft, hard_seen) = open_files_limits(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(serving, "palyra serve did not start");
    assert_eq!(soft, hard_seen, "palyra serve kept a soft limit below its hard limit");
    assert_ne!(soft, "256");

    // The library function, in this process.
    setrlimit(Resource::Nofile, Rlimit { current: Some(256), maximum: hard }).unwrap();
    let limit = palyra::limits::raise_open_files_limit().unwrap();
    assert_eq!(limit.before, Some(256));
    assert_eq!(limit.after, hard);
    assert_eq!(getrlimit(Resource::Nofile).current, hard);
    // Already at the hard limit: nothing changes.
    let again = palyra::limits::raise_open_files_limit().unwrap();
    assert_eq!(again.before, again.after);
}
