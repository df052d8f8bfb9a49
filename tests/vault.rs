//! The vault end to end over real SQLite and a real key file: versions, check-and-set,
//! delete/destroy, paging, limits, tampering, moved envelopes, concurrency and rotation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use palyra::node::{KeyBackendChoice, NodeCore, NodeOptions};
use palyra::testkit::{self, NodeInternals, private_tempdir};
use palyra::vault::{Scope, SecretKey, SecretValue, VaultConfig, VaultError};

fn scope(s: &str) -> Scope {
    Scope::parse(s).unwrap()
}

fn key(k: &str) -> SecretKey {
    SecretKey::parse(k).unwrap()
}

fn value(v: &[u8]) -> SecretValue {
    SecretValue::new(v.to_vec())
}

async fn open(dir: &std::path::Path) -> NodeCore {
    testkit::open_core(dir).await
}

/// Direct access to the database file, as an attacker with disk access would have.
fn raw_db(dir: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("palyra.db")).unwrap()
}

#[tokio::test]
async fn versions_round_trip_and_survive_reopen() {
    let dir = private_tempdir();
    let node = open(dir.path()).await;
    let (s, k) = (scope("agents/alpha"), key("OPENAI_API_KEY"));
    let m1 = node.vault.put(&s, &k, value(b"one"), None).await.unwrap();
    let m2 = node.vault.put(&s, &k, value(b"two"), None).await.unwrap();
    assert_eq!((m1.version, m2.version), (1, 2));
    assert_eq!(m2.created_at, m1.created_at);
    assert_eq!(m2.size, 3);
    node.close_db();
    drop(node);

    let node = open(dir.path()).await;
    let (latest, meta) = node.vault.get(&s, &k, None).await.unwrap();
    assert_eq!(latest.expose(), b"two");
    assert_eq!(meta.version, 2);
    assert_eq!(node.vault.get(&s, &k, Some(1)).await.unwrap().0.expose(), b"one");
    assert!(matches!(
        node.vault.get(&s, &k, Some(3)).await,
        Err(VaultError::NotFound { version: Some(3), .. })
    ));
    assert!(matches!(node.vault.get(&s, &key("OTHER"), None).await, Err(VaultError::NotFound { .. })));
}

#[tokio::test]
async fn check_and_set() {
    let dir = private_tempdir();
    let node = open(dir.path()).await;
    let (s, k) = (scope("connectors/slack"), key("token"));
    node.vault.put(&s, &k, value(b"a"), Some(0)).await.unwrap();
    let err = node.vault.put(&s, &k, value(b"b"), Some(0)).await.unwrap_err();
    assert!(matches!(err, VaultError::VersionConflict { expected: 0, actual: 1, .. }), "{err}");
    let err = node.vault.put(&s, &k, value(b"b"), Some(2)).await.unwrap_err();
    assert!(matches!(err, VaultError::VersionConflict { expected: 2, actual: 1, .. }), "{err}");
    assert_eq!(node.vault.put(&s, &k, value(b"b"), Some(1)).await.unwrap().version, 2);
    // A refused put leaves nothing behind.
    assert_eq!(node.vault.history(&s, &k).await.unwrap().1.len(), 2);
}

#[tokio::test]
async fn soft_delete_keeps_history_and_destroy_erases_ciphertext() {
    let dir = private_tempdir();
    let node = open(dir.path()).await;
    let (s, k) = (scope("agents/alpha"), key("k"));
    node.vault.put(&s, &k, value(b"v1"), None).await.unwrap();
    node.vault.put(&s, &k, value(b"v2"), None).await.unwrap();
    let deleted = node.vault.delete(&s, &k, false).await.unwrap();
    assert!(deleted.deleted);
    assert!(matches!(node.vault.get(&s, &k, None).await, Err(VaultError::NotFound { .. })));
    assert!(matches!(node.vault.get(&s, &k, Some(1)).await, Err(VaultError::NotFound { .. })));
    // Deleting again changes nothing.
    let again = node.vault.delete(&s, &k, false).await.unwrap();
    assert_eq!((again.version, again.updated_at), (deleted.version, deleted.updated_at));
    assert!(matches!(node.vault.delete(&s, &key("never"), false).await, Err(VaultError::NotFound { .. })));
    // A deleted secret counts as absent for "must not exist", and numbering goes on.
    let m3 = node.vault.put(&s, &k, value(b"v3"), Some(0)).await.unwrap();
    assert_eq!(m3.version, 3);
    assert_eq!(node.vault.get(&s, &k, Some(1)).await.unwrap().0.expose(), b"v1");

    let destroyed = node.vault.delete(&s, &k, true).await.unwrap();
    assert_eq!(destroyed.size, 0);
    let (meta, versions) = node.vault.history(&s, &k).await.unwrap();
    assert!(meta.deleted);
    assert_eq!(meta.size, 0);
    assert_eq!(versions.len(), 3);
    assert!(versions.iter().all(|v| v.destroyed));
    let remaining: i64 = raw_db(dir.path())
        .query_row(
            "SELECT count(*) FROM secret_versions WHERE envelope IS NOT NULL OR kek_generation IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(remaining, 0, "destroy must erase every envelope");
    let m4 = node.vault.put(&s, &k, value(b"v4"), None).await.unwrap();
    assert_eq!(m4.version, 4);
    assert!(matches!(node.vault.get(&s, &k, Some(2)).await, Err(VaultError::NotFound { .. })));
}

#[tokio::test]
async fn listing_pages_and_recursion() {
    let dir = private_tempdir();
    let node = open(dir.path()).await;
    for sc in ["a", "a/b", "a/b/c", "a-b", "a.b", "ab"] {
        for i in 0..3 {
            node.vault.put(&scope(sc), &key(&format!("k{i}")), value(b"x"), None).await.unwrap();
        }
    }
    node.vault.delete(&scope("a"), &key("k1"), false).await.unwrap();

    let (flat, next) = node.vault.list(&scope("a"), false, false, 0, None).await.unwrap();
    assert_eq!(flat.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(), ["k0", "k2"]);
    assert!(next.is_none());
    let (with_deleted, _) = node.vault.list(&scope("a"), false, true, 0, None).await.unwrap();
    assert_eq!(with_deleted.len(), 3);
    // A flat listing resumes after its cursor.
    let (first, next) = node.vault.list(&scope("a/b"), false, false, 2, None).await.unwrap();
    let (rest, end) = node.vault.list(&scope("a/b"), false, false, 2, next).await.unwrap();
    assert_eq!(first.iter().chain(&rest).map(|m| m.key.as_str()).collect::<Vec<_>>(), ["k0", "k1", "k2"]);
    assert!(end.is_none());

    // Recursive listing covers a, a/b, a/b/c — and not the siblings a-b, a.b, ab.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let (page, next) = node.vault.list(&scope("a"), true, false, 2, cursor).await.unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.into_iter().map(|m| format!("{}:{}", m.scope, m.key)));
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, ["a:k0", "a:k2", "a/b:k0", "a/b:k1", "a/b:k2", "a/b/c:k0", "a/b/c:k1", "a/b/c:k2"]);
}

#[tokio::test]
async fn value_size_limit_is_enforced_and_configurable() {
    let dir = private_tempdir();
    let node = open(dir.path()).await;
    let (s, k) = (scope("a"), key("big"));
    node.vault.put(&s, &k, value(&vec![7; 64 * 1024]), None).await.unwrap();
    let err = node.vault.put(&s, &k, value(&vec![7; 64 * 1024 + 1]), None).await.unwrap_err();
    assert!(matches!(err, VaultError::ValueTooLarge { size: 65537, max: 65536 }), "{err}");

    let small = node.vault_with(VaultConfig { max_value_len: 10, ..VaultConfig::default() });
    assert!(matches!(small.put(&s, &k, value(&[0; 11]), None).await, Err(VaultError::ValueTooLarge { .. })));
}

#[tokio::test]
async fn every_flipped_byte_of_a_stored_envelope_is_an_integrity_error() {
    let dir = private_tempdir();
    // Each edit must be found by the very next read: no read cache.
    let node = testkit::try_open_core(dir.path(), testkit::uncached_node_options()).await.unwrap();
    let (s, k) = (scope("agents/alpha"), key("k"));
    node.vault.put(&s, &k, value(b"the plaintext"), None).await.unwrap();
    let db = raw_db(dir.path());
    let original: Vec<u8> =
        db.query_row("SELECT envelope FROM secret_versions WHERE version = 1", [], |r| r.get(0)).unwrap();
    assert!(!original.windows(13).any(|w| w == b"the plaintext"));
    for i in 0..original.len() {
        let mut bad = original.clone();
        bad[i] ^= 0x01;
        db.execute("UPDATE secret_versions SET envelope = ?1 WHERE version = 1", [&bad]).unwrap();
        match node.vault.get(&s, &k, None).await {
            Err(VaultError::Integrity { version: 1, .. }) => {}
            other => panic!("byte {i}: expected an integrity error, got {other:?}"),
        }
    }
    db.execute("UPDATE secret_versions SET envelope = ?1 WHERE version = 1", [&original]).unwrap();
    assert_eq!(node.vault.get(&s, &k, None).await.unwrap().0.expose(), b"the plaintext");
}

#[tokio::test]
async fn an_envelope_copied_to_another_row_fails_to_open() {
    let dir = private_tempdir();
    let node = open(dir.path()).await;
    let (s, k) = (scope("agents/alpha"), key("k"));
    node.vault.put(&s, &k, value(b"alpha secret v1"), None).await.unwrap();
    node.vault.put(&s, &k, value(b"alpha secret v2"), None).await.unwrap();
    node.vault.put(&scope("agents/beta"), &k, value(b"beta secret"), None).await.unwrap();
    node.vault.put(&s, &key("other"), value(b"other key"), None).await.unwrap();
    let db = raw_db(dir.path());
    let id = |sc: &str, k: &str| palyra::vault::ObjectId::new(&scope(sc), &key(k)).as_str().to_owned();
    let envelope = |oid: &str, v: i64| -> Vec<u8> {
        db.query_row(
            "SELECT envelope FROM secret_versions WHERE secret = (SELECT id FROM secrets WHERE object_id = ?1) AND version = ?2",
            (oid, v),
            |r| r.get(0),
        )
        .unwrap()
    };
    let alpha_v1 = envelope(&id("agents/alpha", "k"), 1);

    // Another scope, same key.
    db.execute(
        "UPDATE secret_versions SET envelope = ?1 WHERE secret = (SELECT id FROM secrets WHERE object_id = ?2)",
        (&alpha_v1, id("agents/beta", "k")),
    )
    .unwrap();
    assert!(matches!(
        node.vault.get(&scope("agents/beta"), &k, None).await,
        Err(VaultError::Integrity { .. })
    ));
    // Same scope, another key.
    db.execute(
        "UPDATE secret_versions SET envelope = ?1 WHERE secret = (SELECT id FROM secrets WHERE object_id = ?2)",
        (&alpha_v1, id("agents/alpha", "other")),
    )
    .unwrap();
    assert!(matches!(node.vault.get(&s, &key("other"), None).await, Err(VaultError::Integrity { .. })));
    // Same secret, another version (a rollback attack).
    db.execute(
        "UPDATE secret_versions SET envelope = ?1 WHERE secret = (SELECT id FROM secrets WHERE object_id = ?2) AND version = 2",
        (&alpha_v1, id("agents/alpha", "k")),
    )
    .unwrap();
    assert!(matches!(node.vault.get(&s, &k, None).await, Err(VaultError::Integrity { version: 2, .. })));
    assert_eq!(node.vault.get(&s, &k, Some(1)).await.unwrap().0.expose(), b"alpha secret v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_writers_lose_no_update() {
    let dir = private_tempdir();
    let node = open(dir.path()).await;
    let (s, counter) = (scope("race"), key("counter"));
    node.vault.put(&s, &counter, value(b"0"), Some(0)).await.unwrap();
    const WRITERS: usize = 64;
    const INCREMENTS: usize = 5;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (vault, s, counter) = (node.vault.clone(), s.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            // Each writer also owns a key of its own, written unconditionally.
            vault.put(&s, &key(&format!("w{w}")), value(format!("{w}").as_bytes()), None).await.unwrap();
            // And increments the shared counter with check-and-set, retrying on conflict.
            let mut conflicts = 0;
            for _ in 0..INCREMENTS {
                loop {
                    let (current, meta) = vault.get(&s, &counter, None).await.unwrap();
                    let n: usize = std::str::from_utf8(current.expose()).unwrap().parse().unwrap();
                    match vault
                        .put(&s, &counter, value((n + 1).to_string().as_bytes()), Some(meta.version))
                        .await
                    {
                        Ok(_) => break,
                        Err(VaultError::VersionConflict { .. }) => conflicts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let (final_value, meta) = node.vault.get(&s, &counter, None).await.unwrap();
    assert_eq!(std::str::from_utf8(final_value.expose()).unwrap(), (WRITERS * INCREMENTS).to_string());
    assert_eq!(meta.version, (WRITERS * INCREMENTS + 1) as u64);
    assert!(conflicts > 0, "the test should have produced real contention");
    for w in 0..WRITERS {
        assert_eq!(
            node.vault.get(&s, &key(&format!("w{w}")), None).await.unwrap().0.expose(),
            format!("{w}").as_bytes()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_under_concurrent_reads_and_writes() {
    let dir = private_tempdir();
    let node = open(dir.path()).await;
    let s = scope("rot");
    for i in 0..600 {
        node.vault
            .put(&s, &key(&format!("k{i}")), value(format!("value-{i}").as_bytes()), None)
            .await
            .unwrap();
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..4 {
        let (vault, s, stop) = (node.vault.clone(), s.clone(), Arc::clone(&stop));
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            let mut i = r;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let k = key(&format!("k{}", i % 600));
                let (v, _) = vault.get(&s, &k, None).await.expect("every read during rotation succeeds");
                assert!(v.expose().starts_with(b"value-"));
                reads += 1;
                i += 7;
            }
            reads
        }));
    }
    let writer = {
        let (vault, s) = (node.vault.clone(), s.clone());
        tokio::spawn(async move {
            for i in 0..100 {
                vault.put(&s, &key(&format!("new{i}")), value(b"value-new"), None).await.unwrap();
            }
        })
    };
    let first = node.vault.rotate_key().await.unwrap();
    assert_eq!(first.generation, 2);
    assert!(first.rewrapped >= 600, "rewrapped {}", first.rewrapped);
    writer.await.unwrap();
    let second = node.vault.rotate_key().await.unwrap();
    assert_eq!(second.generation, 3);
    assert_eq!(second.rewrapped, 700);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }
    let generations: Vec<i64> = {
        let db = raw_db(dir.path());
        let mut stmt = db.prepare("SELECT DISTINCT kek_generation FROM secret_versions").unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
    };
    assert_eq!(generations, [3], "every DEK is under the newest KEK");
    for i in 0..600 {
        let (v, _) = node.vault.get(&s, &key(&format!("k{i}")), None).await.unwrap();
        assert_eq!(v.expose(), format!("value-{i}").as_bytes());
    }
}

/// The read cache (on by default) never answers with a row older than a write its reader could
/// know of: readers racing a writer only ever see the acknowledged version (or one already seen
/// committed) or a newer one, and a delete, a destroy and a new version are seen by the very
/// next read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_never_returns_a_row_older_than_an_acknowledged_write() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let dir = private_tempdir();
    let node = open(dir.path()).await;
    assert!(!VaultConfig::default().read_cache.is_zero(), "this test is about the default read cache");
    let (s, k) = (scope("race"), key("k"));
    node.vault.put(&s, &k, value(b"1"), None).await.unwrap();
    let acknowledged = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (vault, s, k) = (node.vault.clone(), s.clone(), k.clone());
        let (acknowledged, stop) = (Arc::clone(&acknowledged), Arc::clone(&stop));
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let floor = acknowledged.load(Ordering::SeqCst);
                // Every third read, also a version seen in the database directly (a commit is
                // visible there before its write is acknowledged).
                let seen = if reads.is_multiple_of(3) {
                    vault.history(&s, &k).await.unwrap().0.version
                } else {
                    floor
                };
                let (v, m) = vault.get(&s, &k, None).await.unwrap();
                assert!(
                    m.version >= floor,
                    "read version {} after version {floor} was acknowledged",
                    m.version
                );
                assert!(
                    m.version >= seen,
                    "read version {} after version {seen} was seen committed",
                    m.version
                );
                assert_eq!(v.expose(), m.version.to_string().as_bytes());
                reads += 1;
            }
            reads
        }));
    }
    for version in 2..=200u64 {
        let m = node.vault.put(&s, &k, value(version.to_string().as_bytes()), None).await.unwrap();
        assert_eq!(m.version, version);
        acknowledged.store(version, Ordering::SeqCst);
        // Read-your-writes on this task too.
        assert_eq!(node.vault.get(&s, &k, None).await.unwrap().1.version, version);
    }
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }
    // A version read by number, then the secret deleted, then destroyed: each seen at once.
    assert_eq!(node.vault.get(&s, &k, Some(7)).await.unwrap().0.expose(), b"7");
    node.vault.delete(&s, &k, false).await.unwrap();
    assert!(matches!(node.vault.get(&s, &k, None).await, Err(VaultError::NotFound { .. })));
    assert!(matches!(node.vault.get(&s, &k, Some(7)).await, Err(VaultError::NotFound { .. })));
    node.vault.put(&s, &k, value(b"again"), None).await.unwrap();
    assert_eq!(node.vault.get(&s, &k, None).await.unwrap().0.expose(), b"again");
    node.vault.delete(&s, &k, true).await.unwrap();
    assert!(matches!(node.vault.get(&s, &k, None).await, Err(VaultError::NotFound { .. })));
}

#[tokio::test]
async fn an_interrupted_rotation_leaves_everything_readable_and_is_finished_on_open() {
    let dir = private_tempdir();
    let node = open(dir.path()).await;
    let s = scope("rot");
    for i in 0..10 {
        node.vault.put(&s, &key(&format!("k{i}")), value(b"v"), None).await.unwrap();
    }
    node.close_db();
    drop(node);
    // Simulate a crash right after the new generation was committed, before any rewrap.
    raw_db(dir.path()).execute("UPDATE meta SET value = '2' WHERE key = 'kek_generation'", []).unwrap();
    let node = open(dir.path()).await;
    let pending: i64 = raw_db(dir.path())
        .query_row("SELECT count(*) FROM secret_versions WHERE kek_generation < 2", [], |r| r.get(0))
        .unwrap();
    assert_eq!(pending, 0, "open finishes the interrupted rotation");
    // And records it, so the next start reads no envelope to find out.
    let marker: String = raw_db(dir.path())
        .query_row("SELECT value FROM meta WHERE key = 'rewrapped_generation'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(marker, "2");
    for i in 0..10 {
        assert_eq!(node.vault.get(&s, &key(&format!("k{i}")), None).await.unwrap().0.expose(), b"v");
    }
}

#[tokio::test]
async fn the_key_backend_sticks() {
    let dir = private_tempdir();
    let node = open(dir.path()).await;
    node.vault.put(&scope("a"), &key("k"), value(b"v"), None).await.unwrap();
    assert_eq!(node.key_backend(), palyra::vault::KeyBackend::File);
    node.close_db();
    drop(node);

    // Asking for the keychain on a node that uses the file is refused, not silently switched.
    let err = testkit::try_open_core(
        dir.path(),
        NodeOptions { key_backend: KeyBackendChoice::Keychain, ..Default::default() },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("keeps its root key in the file backend"), "{err}");

    // A missing key is an error that says what happened, never a fresh key.
    std::fs::remove_file(dir.path().join("keys/root.key")).unwrap();
    let err = testkit::try_open_core(dir.path(), NodeOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    assert!(!dir.path().join("keys/root.key").exists(), "no new key may be created");
}

#[cfg(unix)]
#[tokio::test]
async fn files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = private_tempdir();
    let data = dir.path().join("node");
    let _node = open(&data).await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("keys")), 0o700);
    assert_eq!(mode(&data.join("keys/root.key")), 0o600);
    assert_eq!(mode(&data.join("palyra.db")), 0o600);
}

#[test]
fn secret_values_never_print() {
    let v = value(b"hunter2");
    assert_eq!(format!("{v:?}"), "[redacted]");
}
