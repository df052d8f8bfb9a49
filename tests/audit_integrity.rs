//! The audit log's guarantees against someone who can write palyra.db (but not the keychain)
//! and against faults: removing records from the end of the log, all of them, or the sealed
//! head is detected (at start and by VerifyAuditLog); an append that fails refuses the calls
//! it would not record (UNAVAILABLE), flips health to NOT_SERVING and recovers when appends
//! succeed again; anonymous callers are bounded per address without losing an authenticated
//! caller's record.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use palyra::node::Node;
use palyra::testkit::{self, NodeInternals, TestNode, reason};
use palyra::wire::pb::audit::v1::{self as audit, audit_service_client::AuditServiceClient};
use palyra::wire::pb::identity::v1::{self as identity, identity_service_client::IdentityServiceClient};
use palyra::wire::pb::vault::v1::{self as vault, vault_service_client::VaultServiceClient};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

fn db(node: &TestNode) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(node.data_dir().join("palyra.db")).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

async fn calls(node: &TestNode, n: usize) {
    let mut ids = IdentityServiceClient::new(node.operator().await);
    for _ in 0..n {
        ids.who_am_i(identity::WhoAmIRequest {}).await.unwrap();
    }
    node.node.audit().flush().await.unwrap();
}

async fn reopen(data: &std::path::Path) -> Node {
    testkit::open_node(data).await
}

/// Stops `node`, runs `tamper` on its database, opens it again: the log must refuse to serve,
/// report the problem, and verify as broken at `first_bad`.
async fn tampered_offline(tamper: &str, first_bad: impl Fn(u64) -> u64, words: &str) {
    let node = TestNode::start().await;
    calls(&node, 8).await;
    let data = node.data_dir();
    let last: i64 = db(&node).query_row("SELECT MAX(sequence) FROM audit", [], |r| r.get(0)).unwrap();
    let (dir, stopped) = node.stop().await;
    stopped.close_db();
    drop(stopped);
    let changed = rusqlite::Connection::open(data.join("palyra.db")).unwrap().execute(tamper, []).unwrap();
    assert!(changed > 0, "{tamper}");

    let again = reopen(&data).await;
    let problem = again.audit().integrity().expect("the tampering is found at start");
    eprintln!("{tamper}: {problem}");
    assert!(problem.to_string().contains(words), "{problem}");
    let v = again.audit().verify().await.unwrap();
    assert!(!v.ok, "{v:?}");
    assert_eq!(v.first_bad_sequence, Some(first_bad(last as u64)), "{v:?}");
    assert!(v.problem.as_deref().unwrap_or_default().contains(words), "{v:?}");
    // The node refuses to serve on it, and does not append to it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let served = palyra::rpc::serve(&again, listener, async {}).await;
    assert!(matches!(served, Err(palyra::rpc::ServeError::AuditIntegrity(_))), "{served:?}");
    assert!(again.audit().flush().await.is_err());
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_tail_is_found_at_start_and_by_verify() {
    tampered_offline(
        "DELETE FROM audit WHERE sequence > (SELECT MAX(sequence) - 3 FROM audit)",
        |last| last - 2,
        "removed from the end",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_every_record_is_found() {
    tampered_offline("DELETE FROM audit", |_| 1, "removed from the end").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_or_editing_the_sealed_head_is_found() {
    tampered_offline("DELETE FROM audit_head", |_| 1, "missing").await;
    tampered_offline(
        "UPDATE audit_head SET sequence = sequence - 2, hash = (SELECT hash FROM audit WHERE sequence = audit_head.sequence - 2)",
        |_| 1,
        "does not verify",
    )
    .await;
}

async fn health(channel: Channel) -> ServingStatus {
    let response =
        HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await.unwrap();
    response.into_inner().status()
}

/// Retries `f` until it returns `Some`, for at most a minute (a wait, not a timing assertion).
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_tail_of_a_live_log_is_found_and_refuses_calls() {
    let node = TestNode::start().await;
    calls(&node, 6).await;
    db(&node)
        .execute("DELETE FROM audit WHERE sequence > (SELECT MAX(sequence) - 2 FROM audit)", [])
        .unwrap();
    // VerifyAuditLog's check (without a new record of its own): the sealed head is ahead.
    let v = node.node.audit().verify().await.unwrap();
    assert!(!v.ok, "{v:?}");
    assert!(v.problem.as_deref().unwrap_or_default().contains("removed from the end"), "{v:?}");
    // The next append sees the table moved under it: calls fail closed.
    let mut ids = IdentityServiceClient::new(node.operator().await);
    let _ = ids.who_am_i(identity::WhoAmIRequest {}).await;
    let refused = eventually("a refused call", || {
        let mut ids = ids.clone();
        async move { ids.who_am_i(identity::WhoAmIRequest {}).await.err() }
    })
    .await;
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(reason(&refused), "ERROR_REASON_UNAVAILABLE");
    let mut audits = AuditServiceClient::new(node.operator().await);
    let over_rpc = audits.verify_audit_log(audit::VerifyAuditLogRequest::default()).await.unwrap_err();
    assert_eq!(over_rpc.code(), Code::Unavailable);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_append_fails_closed_flips_health_and_recovers() {
    let node = TestNode::start().await;
    let operator = node.operator().await;
    let anonymous = node.channel(None).await;
    let mut ids = IdentityServiceClient::new(operator.clone());
    let mut secrets = VaultServiceClient::new(operator.clone());
    let me = ids.who_am_i(identity::WhoAmIRequest {}).await.unwrap().into_inner().device_id;
    assert_eq!(health(anonymous.clone()).await, ServingStatus::Serving);

    // Everything recorded so far is appended first, so that the first append to meet the
    // fault is the one of the write below (the write's own batch, or a batch just before it).
    node.node.audit().flush().await.unwrap();
    // A real fault: the database refuses every insert into the audit table.
    db(&node)
        .execute_batch("CREATE TRIGGER audit_fault BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'injected fault'); END;")
        .unwrap();
    // A write flushes its record first: the append fails, so the write does not happen.
    let put = secrets
        .put_secret(vault::PutSecretRequest {
            scope: "apps/x".into(),
            key: "k".into(),
            value: b"v".to_vec(),
            expected_version: None,
        })
        .await
        .unwrap_err();
    assert_eq!(put.code(), Code::Unavailable, "{put:?}");
    assert_eq!(reason(&put), "ERROR_REASON_UNAVAILABLE");
    eprintln!("refused write: {}", put.message());
    // While it fails, every audited call is refused, reads included, and health says so.
    let read = ids.who_am_i(identity::WhoAmIRequest {}).await.unwrap_err();
    assert_eq!(read.code(), Code::Unavailable, "{read:?}");
    eventually("NOT_SERVING", || {
        let c = anonymous.clone();
        async move { (health(c).await == ServingStatus::NotServing).then_some(()) }
    })
    .await;
    let failures = node.node.audit().failed_appends();
    assert!(failures >= 1);
    // While it fails, the retries back off (50 ms, doubling to 2 s): a few in 600 ms, not a
    // busy loop (every failed batch used to ask for the next retry at once).
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let retried = node.node.audit().failed_appends() - failures;
    assert!(retried <= 8, "{retried} failed appends in 600 ms while failing");

    // The fault goes: the writer's retry succeeds, and the node serves again.
    db(&node).execute_batch("DROP TRIGGER audit_fault;").unwrap();
    eventually("calls served again", || {
        let mut ids = ids.clone();
        async move { ids.who_am_i(identity::WhoAmIRequest {}).await.ok() }
    })
    .await;
    eventually("SERVING", || {
        let c = anonymous.clone();
        async move { (health(c).await == ServingStatus::Serving).then_some(()) }
    })
    .await;
    eprintln!("failed appends counted: {}", node.node.audit().failed_appends());
    // The refused write did not happen; its (allowed) decision was kept and appended on retry.
    let get = secrets
        .get_secret(vault::GetSecretRequest { scope: "apps/x".into(), key: "k".into(), version: 0 })
        .await
        .unwrap_err();
    assert_eq!(get.code(), Code::NotFound);
    let mut audits = AuditServiceClient::new(operator);
    let v = audits.verify_audit_log(audit::VerifyAuditLogRequest::default()).await.unwrap().into_inner();
    assert!(v.ok, "{v:?}");
    let puts = audits
        .list_audit_records(audit::ListAuditRecordsRequest {
            principal: Some(format!("device:{me}")),
            action: Some("palyra.vault.v1.VaultService/PutSecret".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    // The method gate's record, and the scope check's when it was queued before the writer met
    // the fault (a race the test does not fix): kept and appended, none lost.
    assert!(
        (1..=2).contains(&puts.len()),
        "the records of the refused write were kept and appended: {puts:?}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_flood_is_bounded_per_address_and_summed_up() {
    let node = TestNode::start().await;
    let operator = node.operator().await;
    let mut ops = IdentityServiceClient::new(operator.clone());
    let me = ops.who_am_i(identity::WhoAmIRequest {}).await.unwrap().into_inner().device_id;
    let mut flood = IdentityServiceClient::new(node.anonymous_from(1).await);
    let mut other = IdentityServiceClient::new(node.anonymous_from(2).await);

    let started = Instant::now();
    let (mut denied, mut limited, mut operator_calls) = (0u64, 0u64, 1u64);
    for i in 0..1000 {
        match flood.list_devices(identity::ListDevicesRequest {}).await {
            Err(s) if s.code() == Code::Unauthenticated => denied += 1,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert_eq!(reason(&s), "ERROR_REASON_RATE_LIMITED");
                limited += 1;
            }
            other => panic!("{other:?}"),
        }
        if i % 20 == 0 {
            ops.who_am_i(identity::WhoAmIRequest {}).await.unwrap();
            operator_calls += 1;
        }
    }
    let elapsed = started.elapsed();
    // Another address is served (and audited) while the first floods.
    let served = other.list_devices(identity::ListDevicesRequest {}).await.unwrap_err();
    assert_eq!(served.code(), Code::Unauthenticated, "{served:?}");
    eprintln!(
        "flood of 1000 anonymous calls in {elapsed:?}: {denied} recorded denials, {limited} refused unrecorded"
    );
    assert!(limited > 0, "the flood was not bounded");
    // Bucket: 100 at once + 10/s.
    assert!(denied as f64 <= 100.0 + 10.0 * elapsed.as_secs_f64() + 1.0, "{denied} in {elapsed:?}");

    // After a pause, the flooder's next admitted call comes with the summary of what was refused.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = flood.list_devices(identity::ListDevicesRequest {}).await.unwrap_err();

    let records = testkit::audit_records(operator.clone()).await;
    let mut audits = AuditServiceClient::new(operator);
    let summaries: Vec<_> =
        records.iter().filter(|r| r.action == "palyra.audit/AnonymousRecordsDropped").collect();
    let summed: u64 = summaries
        .iter()
        .filter(|r| r.resource == "Address:127.0.0.1")
        .map(|r| r.reason.split(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    eprintln!("summary records: {:?}", summaries.iter().map(|r| &r.reason).collect::<Vec<_>>());
    assert_eq!(summed, limited, "every refused call is counted in a summary");
    let anonymous_lists = records
        .iter()
        .filter(|r| {
            r.principal == "anonymous" && r.action == "palyra.identity.v1.IdentityService/ListDevices"
        })
        .count() as u64;
    assert_eq!(anonymous_lists, denied + 2, "the flooder's admitted calls, its last one, and 127.0.0.2's");
    let mine = records
        .iter()
        .filter(|r| {
            r.principal == format!("device:{me}") && r.action == "palyra.identity.v1.IdentityService/WhoAmI"
        })
        .count() as u64;
    assert_eq!(mine, operator_calls, "no record of an authenticated caller is dropped");
    let v = audits.verify_audit_log(audit::VerifyAuditLogRequest::default()).await.unwrap().into_inner();
    assert!(v.ok, "{v:?}");
    node.stop().await;
}
