//! The event log: each change commits with its event (and a failed change writes none),
//! sequences are dense, subscriptions replay then follow, a lagging subscriber catches up from
//! the database, retention prunes and reports truncation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use palyra::events::{EventsError, NewEvent, Retention};
use palyra::identity::Principal;
use palyra::node::Node;
use palyra::testkit::{self, NodeInternals};
use palyra::vault::{Scope, SecretKey, SecretValue};

async fn open(dir: &std::path::Path) -> Node {
    testkit::open_node(dir).await
}

fn kinds(events: &[std::sync::Arc<palyra::events::Event>]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

#[tokio::test]
async fn every_change_commits_with_its_event_and_a_failed_change_with_none() {
    let dir = testkit::private_tempdir();
    let node = open(&dir.path().join("n")).await;
    let start = node.events().last_sequence().await.unwrap();
    let vault = &node.vault();
    let scope = Scope::parse("agents/alpha").unwrap();
    let key = SecretKey::parse("db-password").unwrap();
    vault.put(&scope, &key, SecretValue::new(b"hunter2".to_vec()), None).await.unwrap();
    vault.put(&scope, &key, SecretValue::new(b"hunter3".to_vec()), Some(1)).await.unwrap();
    // A failed check-and-set changes nothing and writes no event.
    assert!(vault.put(&scope, &key, SecretValue::new(b"nope".to_vec()), Some(1)).await.is_err());
    vault.delete(&scope, &key, false).await.unwrap();
    vault.delete(&scope, &key, true).await.unwrap();
    vault.rotate_key().await.unwrap();
    let device = node.devices().await.unwrap().remove(0).id;
    node.set_certificate_expiry(device, SystemTime::now()).await.unwrap();
    node.revoke(device, "test").await.unwrap();

    let mut sub = node.events().subscribe(start, Vec::new()).await.unwrap();
    let mut got = Vec::new();
    while let Some(event) = sub.next_ready().await.unwrap() {
        got.push(event);
    }
    assert_eq!(
        kinds(&got),
        [
            "vault.secret.written",
            "vault.secret.written",
            "vault.secret.deleted",
            "vault.secret.destroyed",
            "vault.key.rotated",
            "device.renewed",
            "device.revoked"
        ]
    );
    for (i, event) in got.iter().enumerate() {
        assert_eq!(event.sequence, start + 1 + i as u64, "dense sequence");
    }
    assert_eq!(got[0].subject, "agents/alpha/db-password");
    assert_eq!(got[1].attributes.get("version").map(String::as_str), Some("2"));
    assert_eq!(got[4].attributes.get("generation").map(String::as_str), Some("2"));
    assert_eq!(got[6].subject, device.to_string());
    for event in &got {
        for value in event.attributes.values().chain([&event.subject]) {
            assert!(!value.contains("hunter"), "no secret value in an event: {event:?}");
        }
    }
}

#[tokio::test]
async fn a_policy_update_emits_policy_updated() {
    let dir = testkit::private_tempdir();
    let node = open(&dir.path().join("n")).await;
    let start = node.events().last_sequence().await.unwrap();
    let current = node.policies().current().await.unwrap();
    let operator = Principal::Device {
        id: node.operator(),
        role: palyra::identity::Role::Admin,
        fingerprint: String::new(),
    };
    let version = node.policies().update(&current.text, Some(current.info.version), &operator).await.unwrap();
    let mut sub = node.events().subscribe(start, vec!["policy.updated".into()]).await.unwrap();
    let event = sub.next_ready().await.unwrap().unwrap();
    assert_eq!(event.attributes.get("version"), Some(&version.version.to_string()));
}

#[tokio::test]
async fn a_lagging_subscriber_catches_up_from_the_database_without_gaps() {
    let dir = testkit::private_tempdir();
    let node = open(&dir.path().join("n")).await;
    let start = node.events().last_sequence().await.unwrap();
    let mut sub = node.events().subscribe(start, Vec::new()).await.unwrap();
    let burst = palyra::events::DEFAULT_LIVE_BUFFER as u64 + 1000;
    let mut writes = Vec::new();
    for i in 0..burst {
        let log = node.events().clone();
        writes.push(tokio::spawn(async move {
            log.append(NewEvent::new("vault.secret.written", format!("burst/{i}"))).await.unwrap()
        }));
    }
    for w in writes {
        w.await.unwrap();
    }
    // The live buffer has overflowed while nobody read: every event still arrives, once, in order.
    for expected in start + 1..=start + burst {
        let event = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.unwrap().unwrap();
        assert_eq!(event.sequence, expected);
    }
    // Then live again.
    node.events().append(NewEvent::new("device.renewed", "after")).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), sub.next()).await.unwrap().unwrap();
    assert_eq!((event.sequence, event.subject.as_str()), (start + burst + 1, "after"));
}

#[tokio::test]
async fn retention_prunes_and_reports_the_oldest_available_and_sequences_are_never_reused() {
    let dir = testkit::private_tempdir();
    let node = open(&dir.path().join("n")).await;
    for i in 0..20 {
        node.events().append(NewEvent::new("device.renewed", format!("d{i}"))).await.unwrap();
    }
    let last = node.events().last_sequence().await.unwrap();
    let log = node.event_log_with(Retention { max_events: 5, max_age: Duration::from_secs(3600) });
    assert!(log.prune().await.unwrap() >= 15);
    let oldest = last - 4;
    match log.subscribe(1, Vec::new()).await {
        Err(EventsError::Truncated { oldest_available, .. }) => assert_eq!(oldest_available, oldest),
        other => panic!("expected truncation, got {other:?}"),
    }
    // Resuming right before the oldest works; 0 means "everything retained".
    let mut sub = log.subscribe(oldest - 1, Vec::new()).await.unwrap();
    assert_eq!(sub.next_ready().await.unwrap().unwrap().sequence, oldest);
    let mut sub = log.subscribe(0, Vec::new()).await.unwrap();
    assert_eq!(sub.next_ready().await.unwrap().unwrap().sequence, oldest);
    // Pruning everything by age does not make the next sequence restart.
    let all = node.event_log_with(Retention { max_events: 1_000, max_age: Duration::ZERO });
    tokio::time::sleep(Duration::from_millis(5)).await;
    all.prune().await.unwrap();
    let next = node.events().append(NewEvent::new("device.renewed", "next")).await.unwrap();
    assert_eq!(next.sequence, last + 1);
}

#[tokio::test]
async fn pruning_by_age_removes_a_prefix_never_a_hole_and_a_start_ahead_of_the_log_is_refused() {
    let dir = testkit::private_tempdir();
    let node = open(&dir.path().join("n")).await;
    let now = std::time::SystemTime::now();
    let old = now - Duration::from_secs(10 * 24 * 3600);
    // Handlers stamp `at` before their write is queued: times are not monotonic in sequence.
    let mut sequences = Vec::new();
    for at in [old, now, old, now, now] {
        sequences
            .push(node.append_event_at(NewEvent::new("device.renewed", "d"), at).await.unwrap().sequence);
    }
    let log =
        node.event_log_with(Retention { max_events: 1_000, max_age: Duration::from_secs(7 * 24 * 3600) });
    log.prune().await.unwrap();
    let left: Vec<u64> = node.events_after(0, 100).await.unwrap().iter().map(|e| e.sequence).collect();
    let newest_old = sequences[2];
    assert!(left.iter().all(|&s| s > newest_old), "everything up to the newest old event goes: {left:?}");
    assert!(left.windows(2).all(|w| w[1] == w[0] + 1), "what is left has no hole: {left:?}");
    assert_eq!(left.last(), sequences.last());

    let last = node.events().last_sequence().await.unwrap();
    match node.events().subscribe(last + 10, Vec::new()).await {
        Err(EventsError::AheadOfLog { since, .. }) => assert_eq!(since, last + 10),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(node.events().subscribe(last, Vec::new()).await.is_ok(), "exactly at the end is fine");
}
