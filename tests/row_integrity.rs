//! Edits of `palyra.db` by someone without the root key (finding 4a): a secret's latest version
//! rolled back or its deleted flag flipped, a device's status or role changed, a policy version
//! slipped in. Each is an integrity error (DATA_LOSS + INTEGRITY naming the row), never the old
//! or edited value; a data dir from before the row MACs keeps working (backfill at open).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use palyra::identity::{DeviceStatus, Role};
use palyra::node::Node;
use palyra::testkit::{self, NodeInternals, TestNode, private_tempdir, reason};
use palyra::vault::{ObjectId, Scope, SecretKey, SecretValue, VaultError};
use tonic::Code;

fn names(scope: &str, key: &str) -> (Scope, SecretKey, String) {
    let (scope, key) = (Scope::parse(scope).unwrap(), SecretKey::parse(key).unwrap());
    let id = ObjectId::new(&scope, &key).as_str().to_owned();
    (scope, key, id)
}

fn attacker(data: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(data.join("palyra.db")).unwrap()
}

fn assert_integrity(err: VaultError, names: &str) {
    let text = err.to_string();
    let status = tonic::Status::from(err);
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::DataLoss, "ERROR_REASON_INTEGRITY"),
        "{text}"
    );
    assert!(text.contains("integrity check failed") && text.contains(names), "{text}");
    eprintln!("refused: {}", status.message());
}

async fn open(data: &Path) -> Result<Node, palyra::node::InitError> {
    testkit::try_open_node(data, testkit::node_options()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_or_undeleted_secret_is_an_integrity_error() {
    let node = TestNode::start().await;
    let vault = &node.node.vault();
    let data = node.data_dir();
    let (scope, key, id) = names("team/app", "token");
    vault.put(&scope, &key, SecretValue::new(b"old".to_vec()), None).await.unwrap();
    let db = attacker(&data);
    let old_row: (i64, Vec<u8>) = db
        .query_row("SELECT latest_version, mac FROM secrets WHERE object_id = ?1", [&id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    vault.put(&scope, &key, SecretValue::new(b"new".to_vec()), None).await.unwrap();

    // latest_version 2 → 1, the MAC left as it is.
    db.execute("UPDATE secrets SET latest_version = 1 WHERE object_id = ?1", [&id]).unwrap();
    assert_integrity(vault.get(&scope, &key, None).await.unwrap_err(), &id);
    // The row's own earlier state, MAC and all (a replay): caught by the stored version 2.
    db.execute(
        "UPDATE secrets SET latest_version = ?2, mac = ?3 WHERE object_id = ?1",
        (&id, old_row.0, &old_row.1),
    )
    .unwrap();
    let err = vault.get(&scope, &key, None).await.unwrap_err();
    assert!(err.to_string().contains("below stored version 2"), "{err}");
    assert_integrity(err, &id);
    // A row without a MAC is no better than a wrong one.
    db.execute("UPDATE secrets SET latest_version = 2, mac = NULL WHERE object_id = ?1", [&id]).unwrap();
    assert_integrity(vault.get(&scope, &key, None).await.unwrap_err(), &id);
    db.execute("UPDATE secrets SET mac = NULL WHERE object_id = ?1", [&id]).unwrap();

    // Deleted, then undeleted by flipping the flag.
    let (scope, key, id) = names("team/app", "gone");
    vault.put(&scope, &key, SecretValue::new(b"x".to_vec()), None).await.unwrap();
    vault.delete(&scope, &key, false).await.unwrap();
    assert!(matches!(vault.get(&scope, &key, None).await, Err(VaultError::NotFound { .. })));
    db.execute("UPDATE secrets SET deleted = 0 WHERE object_id = ?1", [&id]).unwrap();
    assert_integrity(vault.get(&scope, &key, None).await.unwrap_err(), &id);
    // Listing and history check the rows too.
    let listed = vault.list(&scope, true, true, 0, None).await.unwrap_err();
    assert_integrity(listed, "integrity");
    assert_integrity(vault.history(&scope, &key).await.unwrap_err(), &id);
    // A write on a forged row is refused, not re-MAC'd as if sound.
    assert_integrity(vault.put(&scope, &key, SecretValue::new(b"y".to_vec()), None).await.unwrap_err(), &id);

    // An envelope moved to another version's row fails its AAD (the version is bound).
    let (scope, key, id) = names("team/app", "swap");
    vault.put(&scope, &key, SecretValue::new(b"one".to_vec()), None).await.unwrap();
    vault.put(&scope, &key, SecretValue::new(b"two".to_vec()), None).await.unwrap();
    db.execute(
        "UPDATE secret_versions SET envelope = (SELECT envelope FROM secret_versions WHERE secret = (SELECT id FROM secrets WHERE object_id = ?1) AND version = 1)
         WHERE secret = (SELECT id FROM secrets WHERE object_id = ?1) AND version = 2",
        [&id],
    )
    .unwrap();
    assert!(matches!(vault.get(&scope, &key, None).await, Err(VaultError::Integrity { version: 2, .. })));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_device_row_is_refused() {
    let node = TestNode::start().await;
    let data = node.data_dir();
    let phone = node.add_device(Role::Device, "phone", &[]).await;
    let tablet = node.add_device(Role::Device, "tablet", &[]).await;
    node.revoke(phone.id, "lost").await.unwrap();
    node.node.peers().revoked(phone.id);
    let db = attacker(&data);
    db.execute(
        "UPDATE devices SET status = 'active', revoked_at = NULL, revoke_reason = NULL WHERE id = ?1",
        [phone.id.to_string()],
    )
    .unwrap();
    db.execute("UPDATE devices SET role = 'admin' WHERE id = ?1", [tablet.id.to_string()]).unwrap();
    for id in [phone.id, tablet.id] {
        let err = node.device(id).await.unwrap_err();
        let text = err.to_string();
        let status = tonic::Status::from(err);
        assert_eq!(
            (status.code(), reason(&status).as_str()),
            (Code::DataLoss, "ERROR_REASON_INTEGRITY"),
            "{text}"
        );
        assert!(text.contains(&format!("device {id}")), "{text}");
        // The peer resolver refuses it: neither the revoked device nor the promoted one is let in.
        assert!(node.node.peers().resolve_device(id, None).await.is_err());
    }
    // Over mTLS: the undeleted device gets no answer but a refusal.
    let mut client = palyra::wire::pb::identity::v1::identity_service_client::IdentityServiceClient::new(
        node.channel(Some(&tablet)).await,
    );
    let refused = client.list_devices(palyra::wire::pb::identity::v1::ListDevicesRequest::default()).await;
    assert!(refused.is_err(), "{refused:?}");
    let _ = DeviceStatus::Active;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_version_slipped_in_fails_the_start() {
    let dir = private_tempdir();
    let data = dir.path().join("node");
    let node = open(&data).await.unwrap();
    let current = node.policies().current().await.unwrap();
    node.close_db();
    drop(node);
    let db = attacker(&data);
    db.execute(
        "INSERT INTO policy_versions (version, text, updated_at, updated_by) VALUES (?1, ?2, 0, 'palyra init')",
        (current.info.version as i64 + 1, "permit (principal, action, resource);"),
    )
    .unwrap();
    let err = open(&data).await.unwrap_err().to_string();
    assert!(err.contains("integrity check failed") && err.contains("policy version 2"), "{err}");
    eprintln!("refused: {err}");
    // Its text edited in place: the same.
    db.execute("DELETE FROM policy_versions WHERE version = 2", []).unwrap();
    db.execute(
        "UPDATE policy_versions SET text = 'permit (principal, action, resource);' WHERE version = 1",
        [],
    )
    .unwrap();
    let err = open(&data).await.unwrap_err().to_string();
    assert!(err.contains("policy version 1"), "{err}");
}

/// A node in `data` with one secret (`team/app/token` = `v`), closed: its names and object id.
async fn one_secret_stored(data: &Path) -> (Scope, SecretKey, String) {
    let node = open(data).await.unwrap();
    let names = names("team/app", "token");
    node.vault().put(&names.0, &names.1, SecretValue::new(b"v".to_vec()), None).await.unwrap();
    node.close_db();
    names
}

/// Puts the vault's tables back as they were before migration 0015: secrets keyed by their
/// object id, versions by (object id, version); the rows (and their MACs) as they are.
fn to_schema_14(db: &rusqlite::Connection) {
    db.execute_batch(
        "CREATE TABLE old_secrets (
             object_id TEXT PRIMARY KEY NOT NULL, scope TEXT NOT NULL, key TEXT NOT NULL,
             latest_version INTEGER NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
             deleted INTEGER NOT NULL DEFAULT 0, size INTEGER NOT NULL, mac BLOB, UNIQUE (scope, key)) STRICT;
         INSERT INTO old_secrets SELECT object_id, scope, key, latest_version, created_at, updated_at, deleted, size, mac
             FROM secrets ORDER BY id;
         CREATE TABLE old_versions (
             object_id TEXT NOT NULL REFERENCES old_secrets (object_id), version INTEGER NOT NULL,
             created_at INTEGER NOT NULL, size INTEGER NOT NULL, destroyed INTEGER NOT NULL DEFAULT 0,
             kek_generation INTEGER, envelope BLOB, PRIMARY KEY (object_id, version)) STRICT, WITHOUT ROWID;
         INSERT INTO old_versions SELECT s.object_id, v.version, v.created_at, v.size, v.destroyed, v.kek_generation, v.envelope
             FROM secret_versions v JOIN secrets s ON s.id = v.secret;
         DROP TABLE secret_versions; DROP TABLE secrets;
         ALTER TABLE old_secrets RENAME TO secrets; ALTER TABLE old_versions RENAME TO secret_versions;
         PRAGMA user_version = 14;",
    )
    .unwrap();
}

/// Puts the database back as it was before migration 0009: no row MACs (nor what 0010–0015
/// added).
fn to_schema_8(db: &rusqlite::Connection) {
    to_schema_14(db);
    db.execute_batch(
        "ALTER TABLE secrets DROP COLUMN mac; ALTER TABLE devices DROP COLUMN mac;
         ALTER TABLE policy_versions DROP COLUMN mac; DELETE FROM meta WHERE key = 'row_macs';
         DELETE FROM meta WHERE key = 'rewrapped_generation';
         DROP TABLE audit_head; DROP TABLE enrollment_keys; DROP TABLE audit_checkpoints;
         DROP TABLE audit_sink_cursor; PRAGMA user_version = 8;",
    )
    .unwrap();
}

/// A version row whose secret is gone cannot be reached; migration 0015 stops on one rather
/// than leave it (and the sign of an edit) behind without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_0015_stops_on_a_version_row_without_its_secret() {
    let dir = private_tempdir();
    let data = dir.path().join("node");
    one_secret_stored(&data).await;
    let db = attacker(&data);
    to_schema_14(&db);
    db.execute_batch(
        "PRAGMA foreign_keys = OFF;
         INSERT INTO secret_versions (object_id, version, created_at, size, kek_generation, envelope)
             SELECT 'ff' || substr(object_id, 3), version, created_at, size, kek_generation, envelope FROM secret_versions;",
    )
    .unwrap();
    drop(db);
    let Err(err) = open(&data).await else { panic!("the migration went on") };
    let err = err.to_string();
    assert!(
        err.contains("0015_secret_ids") && err.contains("secret_versions_rows_without_their_secret"),
        "{err}"
    );
}

/// Found by scope and key, a row must name the object id they make: one that names another
/// (MAC'd so by the backfill of a database edited before it had row MACs) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_naming_another_object_id_is_refused() {
    let dir = private_tempdir();
    let data = dir.path().join("node");
    let (scope, key, id) = one_secret_stored(&data).await;
    let db = attacker(&data);
    to_schema_8(&db);
    let other = names("team/app", "other").2;
    db.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
    db.execute("UPDATE secrets SET object_id = ?2 WHERE object_id = ?1", (&id, &other)).unwrap();
    db.execute("UPDATE secret_versions SET object_id = ?2 WHERE object_id = ?1", (&id, &other)).unwrap();
    drop(db);
    let node = testkit::try_open_node(&data, testkit::uncached_node_options()).await.unwrap();
    assert_integrity(node.vault().get(&scope, &key, None).await.unwrap_err(), &other);
    assert_integrity(node.vault().list(&scope, false, false, 0, None).await.unwrap_err(), &other);
}

/// Migration 0015 keys secrets by an id in order of creation: every secret, version, destroyed
/// version and row MAC comes through, reads and writes go on, and the ids follow the old rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_keyed_by_object_id_move_to_ids_with_their_versions_and_macs() {
    let dir = private_tempdir();
    let data = dir.path().join("node");
    let node = open(&data).await.unwrap();
    let vault = node.vault();
    let (team, token, _) = names("team/app", "token");
    let (_, gone, _) = names("team/app", "gone");
    let (other, shared, _) = names("other", "shared");
    for v in [&b"one"[..], b"two", b"three"] {
        vault.put(&team, &token, SecretValue::new(v.to_vec()), None).await.unwrap();
    }
    vault.put(&team, &gone, SecretValue::new(b"x".to_vec()), None).await.unwrap();
    vault.delete(&team, &gone, true).await.unwrap();
    vault.put(&other, &shared, SecretValue::new(b"s".to_vec()), None).await.unwrap();
    node.close_db();
    drop(node);
    to_schema_14(&attacker(&data));

    let node = testkit::try_open_node(&data, testkit::uncached_node_options()).await.unwrap();
    let vault = node.vault();
    for (version, want) in [(1, &b"one"[..]), (2, b"two"), (3, b"three")] {
        let (value, meta) = vault.get(&team, &token, Some(version)).await.unwrap();
        assert_eq!((value.expose(), meta.version), (want, 3));
    }
    assert_eq!(vault.get(&other, &shared, None).await.unwrap().0.expose(), b"s");
    let (meta, versions) = vault.history(&team, &gone).await.unwrap();
    assert!(meta.deleted);
    assert_eq!(versions.iter().map(|v| (v.version, v.destroyed)).collect::<Vec<_>>(), [(1, true)]);
    assert!(matches!(vault.get(&team, &gone, None).await, Err(VaultError::NotFound { .. })));
    vault.put(&team, &token, SecretValue::new(b"four".to_vec()), Some(3)).await.unwrap();
    let (_, fresh, _) = names("team/app", "fresh");
    vault.put(&team, &fresh, SecretValue::new(b"f".to_vec()), None).await.unwrap();
    assert_eq!(vault.get(&team, &token, None).await.unwrap().0.expose(), b"four");

    // The old rows keep their order (rowid), the new secret comes last; the object id stays
    // a column and no table or index is keyed by it any more.
    let db = attacker(&data);
    let order: Vec<String> = db
        .prepare("SELECT key FROM secrets ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(order, ["token", "gone", "shared", "fresh"]);
    let keyed_by_object_id: i64 = db
        .query_row(
            "SELECT count(*) FROM sqlite_schema s, pragma_index_info(s.name) i
             WHERE s.type = 'index' AND s.tbl_name IN ('secrets', 'secret_versions') AND i.name = 'object_id'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(keyed_by_object_id, 0);
    let version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert!(version >= 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_from_before_row_macs_is_backfilled_once() {
    let dir = private_tempdir();
    let data = dir.path().join("node");
    let (scope, key, id) = one_secret_stored(&data).await;
    // Turn it into a database written before migration 0009 (and so before 0010's audit head
    // 0011's enrollment keys, 0012's audit checkpoints, 0013's sink cursors and 0015's secret
    // ids).
    to_schema_8(&attacker(&data));
    // The edit below must be found by the very next read: no read cache.
    let node = testkit::try_open_node(&data, testkit::uncached_node_options()).await.unwrap();
    let (value, _) = node.vault().get(&scope, &key, None).await.unwrap();
    assert_eq!(value.expose(), b"v");
    let db = attacker(&data);
    let unmacd: i64 = db
        .query_row(
            "SELECT (SELECT count(*) FROM secrets WHERE mac IS NULL) + (SELECT count(*) FROM devices WHERE mac IS NULL)
                  + (SELECT count(*) FROM policy_versions WHERE mac IS NULL)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(unmacd, 0);
    // Once: from now on an edit is caught.
    db.execute("UPDATE secrets SET deleted = 1 WHERE object_id = ?1", [&id]).unwrap();
    assert_integrity(node.vault().get(&scope, &key, None).await.unwrap_err(), &id);
}

/// With the read cache on (the default), a GetSecret may be answered from the row the node
/// checked less than a lifetime ago: an edit on disk is then never served (the verified row is),
/// and it is found by the first read once that row's lifetime is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_read_cache_an_edit_is_never_served_and_is_found_once_the_cached_row_expires() {
    let dir = private_tempdir();
    let data = dir.path().join("node");
    let lifetime = std::time::Duration::from_secs(2);
    let mut options = testkit::node_options();
    options.vault.read_cache = lifetime;
    let node = testkit::try_open_node(&data, options).await.unwrap();
    let vault = node.vault();
    let (scope, key, id) = names("team/app", "token");
    vault.put(&scope, &key, SecretValue::new(b"one".to_vec()), None).await.unwrap();
    vault.put(&scope, &key, SecretValue::new(b"two".to_vec()), None).await.unwrap();
    let read_at = std::time::Instant::now();
    assert_eq!(vault.get(&scope, &key, None).await.unwrap().0.expose(), b"two");
    // Rolled back to version 1 behind the node's back.
    attacker(&data).execute("UPDATE secrets SET latest_version = 1 WHERE object_id = ?1", [&id]).unwrap();
    match vault.get(&scope, &key, None).await {
        Ok((value, meta)) => {
            assert!(read_at.elapsed() < lifetime);
            assert_eq!((value.expose(), meta.version), (&b"two"[..], 2));
        }
        // Only if this machine took longer than the lifetime to get here.
        Err(e) => {
            assert!(read_at.elapsed() >= lifetime, "{e}");
            assert_integrity(e, &id);
        }
    }
    tokio::time::sleep(lifetime).await;
    assert_integrity(vault.get(&scope, &key, None).await.unwrap_err(), &id);
}
