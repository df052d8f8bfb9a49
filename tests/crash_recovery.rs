//! Kill a process that is writing secrets (and rotating the key) with SIGKILL at random
//! moments, many times over, and prove after each crash that every acknowledged write is
//! readable with the value that was acknowledged, and that SQLite reports no corruption.
//!
//! The writer is this same test binary re-executed with `PALYRA_CRASH_CHILD` set: it prints
//! `ACK <key> <version>` only after `put` returned, i.e. after the commit was durable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use palyra::testkit::{self, NodeInternals, Rng};
use palyra::vault::{Scope, SecretKey, SecretValue};

const CHILD_ENV: &str = "PALYRA_CRASH_CHILD";
const ROUNDS: usize = 20;
const WRITERS: usize = 8;
const KEYS_PER_WRITER: usize = 16;

/// The value acknowledged for `key` at `version`: deterministic, of varying size.
fn expected_value(key: &str, version: u64) -> Vec<u8> {
    let mut v = format!("{key}#{version}#").into_bytes();
    let pad = (version as usize * 131 + key.len() * 17) % 3000;
    v.extend(std::iter::repeat_n(b'x', pad));
    v
}

/// `crash_child`'s name in this test binary: its module path without the crate's name.
fn child_test_name() -> String {
    let module = module_path!().split_once("::").map_or("", |(_, rest)| rest);
    if module.is_empty() { "crash_child".to_owned() } else { format!("{module}::crash_child") }
}

/// The writer process. A no-op unless the parent test started it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let node = testkit::open_core(Path::new(&dir)).await;
    let scope = Scope::parse("crash").unwrap();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (vault, scope) = (node.vault.clone(), scope.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let key = SecretKey::parse(&format!("w{w}-k{}", i % KEYS_PER_WRITER)).unwrap();
                // The version is only known after the write; seal what that version must hold
                // by writing with check-and-set on the version we saw last.
                let next = match vault.history(&scope, &key).await {
                    Ok((meta, _)) => meta.version + 1,
                    Err(_) => 1,
                };
                let value = SecretValue::new(expected_value(key.as_str(), next));
                let meta = vault.put(&scope, &key, value, Some(next - 1)).await.unwrap();
                assert_eq!(meta.version, next);
                let mut out = std::io::stdout().lock();
                writeln!(out, "ACK {} {}", key, meta.version).unwrap();
                out.flush().unwrap();
            }
        }));
    }
    let vault = node.vault.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(40)).await;
            let rotation = vault.rotate_key().await.unwrap();
            println!("ROT {}", rotation.generation);
        }
    }));
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let tmp = testkit::private_tempdir();
    let dir = tmp.path().join("node");
    let seed = testkit::time_seed();
    println!("crash test seed {seed}");
    let mut rng = Rng::new(seed);
    // Highest acknowledged version per key, over all rounds.
    let mut acked: std::collections::BTreeMap<String, u64> = Default::default();
    let mut total_acks = 0usize;
    let mut rotations = 0usize;

    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &child_test_name(), "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<String>>()
        });
        // Kill at a random moment: sometimes while opening or migrating, mostly mid-write.
        let delay = Duration::from_millis(20 + rng.below(600));
        let started = Instant::now();
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL on Unix
        let killed_after = started.elapsed();
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        let mut round_acks = 0;
        for line in &lines {
            let mut parts = line.split_whitespace();
            match parts.next() {
                Some("ACK") => {
                    let key = parts.next().unwrap().to_owned();
                    let version: u64 = parts.next().unwrap().parse().unwrap();
                    let best = acked.entry(key).or_default();
                    *best = (*best).max(version);
                    round_acks += 1;
                }
                Some("ROT") => rotations += 1,
                _ => {}
            }
        }
        total_acks += round_acks;

        // Recover and check everything acknowledged so far, every version of it.
        let node = testkit::open_core(&dir).await;
        assert_eq!(node.integrity_check().await.unwrap(), "ok", "round {round}");
        let scope = Scope::parse("crash").unwrap();
        for (key, &version) in &acked {
            let k = SecretKey::parse(key).unwrap();
            for v in 1..=version {
                let (value, _) = node
                    .vault
                    .get(&scope, &k, Some(v))
                    .await
                    .unwrap_or_else(|e| panic!("round {round}: acknowledged {key} v{v} lost: {e}"));
                assert_eq!(value.expose(), expected_value(key, v).as_slice(), "round {round}: {key} v{v}");
            }
        }
        // Writes that committed but were not acknowledged before the kill must be whole too:
        // every stored version of every key opens to exactly its value.
        let (all, _) = node.vault.list(&scope, false, true, 1000, None).await.unwrap();
        for meta in all {
            let (_, versions) = node.vault.history(&scope, &meta.key).await.unwrap();
            for v in versions {
                let (value, _) = node.vault.get(&scope, &meta.key, Some(v.version)).await.unwrap();
                assert_eq!(value.expose(), expected_value(meta.key.as_str(), v.version).as_slice());
            }
        }
        node.close_db();
        println!("round {round}: killed after {killed_after:?}, {round_acks} acks");
    }
    println!("{ROUNDS} crashes survived, {total_acks} acknowledged writes checked, {rotations} rotations");
    assert!(total_acks > 0, "the writer never acknowledged anything: the test proved nothing");
}
