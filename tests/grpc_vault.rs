//! VaultService end to end over mTLS: versions, check-and-set with its reason, delete and
//! destroy, list paging, the size limit, and a tampered database row answered with DATA_LOSS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use palyra::testkit::{self, TestNode, reason};
use palyra::wire::pb::vault::v1::{self as pb, vault_service_client::VaultServiceClient};
use tonic::Code;

fn put(scope: &str, key: &str, value: &[u8], expected: Option<u64>) -> pb::PutSecretRequest {
    pb::PutSecretRequest {
        scope: scope.into(),
        key: key.into(),
        value: value.to_vec(),
        expected_version: expected,
    }
}

fn get(scope: &str, key: &str, version: u64) -> pb::GetSecretRequest {
    pb::GetSecretRequest { scope: scope.into(), key: key.into(), version }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_over_grpc() {
    // The tampered row below must be found by the very next read: no read cache.
    let node = TestNode::start_with(testkit::uncached_node_options()).await;
    let mut vault = VaultServiceClient::new(node.operator().await);

    // Versions.
    let m1 = vault
        .put_secret(put("agents/alpha", "API_KEY", b"one", Some(0)))
        .await
        .unwrap()
        .into_inner()
        .metadata
        .unwrap();
    let m2 = vault
        .put_secret(put("agents/alpha", "API_KEY", b"two", None))
        .await
        .unwrap()
        .into_inner()
        .metadata
        .unwrap();
    assert_eq!((m1.version, m2.version, m2.size), (1, 2, 3));
    let latest = vault.get_secret(get("agents/alpha", "API_KEY", 0)).await.unwrap().into_inner();
    assert_eq!((latest.value.as_slice(), latest.version), (&b"two"[..], 2));
    let first = vault.get_secret(get("agents/alpha", "API_KEY", 1)).await.unwrap().into_inner();
    assert_eq!((first.value.as_slice(), first.version, first.metadata.unwrap().version), (&b"one"[..], 1, 2));

    // Check-and-set conflict carries its reason and the latest version.
    let conflict = vault.put_secret(put("agents/alpha", "API_KEY", b"x", Some(1))).await.unwrap_err();
    assert_eq!(conflict.code(), Code::FailedPrecondition);
    assert_eq!(reason(&conflict), "ERROR_REASON_VERSION_CONFLICT");

    // Bad input: INVALID_ARGUMENT naming the field.
    let bad = vault.put_secret(put("Agents/../x", "k", b"v", None)).await.unwrap_err();
    assert_eq!((bad.code(), reason(&bad).as_str()), (Code::InvalidArgument, "ERROR_REASON_INVALID_ARGUMENT"));
    assert!(bad.message().starts_with("scope:"), "{}", bad.message());
    let bad = vault.get_secret(get("a", &"k".repeat(10_000), 0)).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().len() < 300, "errors quote bounded input");

    // Size limit.
    let big = vault.put_secret(put("a", "big", &vec![0; 64 * 1024 + 1], None)).await.unwrap_err();
    assert_eq!((big.code(), reason(&big).as_str()), (Code::InvalidArgument, "ERROR_REASON_VALUE_TOO_LARGE"));
    vault.put_secret(put("a", "big", &vec![0; 64 * 1024], None)).await.unwrap();

    // Soft delete, then destroy.
    vault
        .delete_secret(pb::DeleteSecretRequest {
            scope: "agents/alpha".into(),
            key: "API_KEY".into(),
            destroy: false,
        })
        .await
        .unwrap();
    let gone = vault.get_secret(get("agents/alpha", "API_KEY", 0)).await.unwrap_err();
    assert_eq!((gone.code(), reason(&gone).as_str()), (Code::NotFound, "ERROR_REASON_NOT_FOUND"));
    let history = vault
        .get_secret_metadata(pb::GetSecretMetadataRequest {
            scope: "agents/alpha".into(),
            key: "API_KEY".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(history.metadata.unwrap().deleted);
    assert_eq!(history.versions.len(), 2);
    vault
        .delete_secret(pb::DeleteSecretRequest {
            scope: "agents/alpha".into(),
            key: "API_KEY".into(),
            destroy: true,
        })
        .await
        .unwrap();
    let history = vault
        .get_secret_metadata(pb::GetSecretMetadataRequest {
            scope: "agents/alpha".into(),
            key: "API_KEY".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(history.versions.iter().all(|v| v.destroyed));

    // Paging through a recursive listing.
    for i in 0..25 {
        vault.put_secret(put(&format!("team/s{}", i % 3), &format!("k{i:02}"), b"v", None)).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = vault
            .list_secrets(pb::ListSecretsRequest {
                scope: "team".into(),
                recursive: true,
                page_size: 7,
                page_token: token,
                include_deleted: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.secrets.len() <= 7);
        seen.extend(page.secrets.into_iter().map(|m| format!("{}/{}", m.scope, m.key)));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 25);
    let bad = vault
        .list_secrets(pb::ListSecretsRequest {
            scope: "team".into(),
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    // Rotation keeps everything readable.
    let rotated = vault.rotate_key(pb::RotateKeyRequest {}).await.unwrap().into_inner();
    assert_eq!(rotated.generation, 2);
    assert!(rotated.rewrapped >= 26);
    assert_eq!(vault.get_secret(get("team/s0", "k00", 0)).await.unwrap().into_inner().value, b"v");

    // A tampered row answers DATA_LOSS + INTEGRITY, never wrong plaintext.
    let db = rusqlite::Connection::open(node.data_dir().join("palyra.db")).unwrap();
    let object_id = palyra::vault::ObjectId::new(
        &palyra::vault::Scope::parse("team/s0").unwrap(),
        &palyra::vault::SecretKey::parse("k00").unwrap(),
    );
    let mut envelope: Vec<u8> = db
        .query_row("SELECT envelope FROM secret_versions WHERE secret = (SELECT id FROM secrets WHERE object_id = ?1)", [object_id.as_str()], |r| {
            r.get(0)
        })
        .unwrap();
    let last = envelope.len() - 1;
    envelope[last] ^= 0x40;
    db.execute(
        "UPDATE secret_versions SET envelope = ?2 WHERE secret = (SELECT id FROM secrets WHERE object_id = ?1)",
        (object_id.as_str(), envelope),
    )
    .unwrap();
    let tampered = vault.get_secret(get("team/s0", "k00", 0)).await.unwrap_err();
    assert_eq!((tampered.code(), reason(&tampered).as_str()), (Code::DataLoss, "ERROR_REASON_INTEGRITY"));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_reaches_its_own_subtree_and_granted_scopes_only() {
    let node = TestNode::start().await;
    let phone = node.add_device(palyra::identity::Role::Device, "phone", &["shared/team"]).await;
    let mut vault = VaultServiceClient::new(node.channel(Some(&phone)).await);
    let own = format!("devices/{}", phone.id);
    vault.put_secret(put(&own, "token", b"mine", None)).await.unwrap();
    vault.put_secret(put(&format!("{own}/nested/deeper"), "token", b"mine too", None)).await.unwrap();
    assert_eq!(vault.get_secret(get(&own, "token", 0)).await.unwrap().into_inner().value, b"mine");
    vault.put_secret(put("shared/team/sub", "k", b"team", None)).await.unwrap();
    for scope in ["shared", "shared/teammates", "devices", "agents/alpha"] {
        let denied = vault.put_secret(put(scope, "k", b"x", None)).await.unwrap_err();
        assert_eq!(
            (denied.code(), reason(&denied).as_str()),
            (Code::PermissionDenied, "ERROR_REASON_POLICY_DENIED"),
            "{scope}"
        );
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recursive_listing_leaves_out_sub_scopes_the_policy_denies() {
    use palyra::wire::pb::policy::v1::{self as policy, policy_service_client::PolicyServiceClient};
    let node = TestNode::start().await;
    let operator = node.operator().await;
    let mut vault = VaultServiceClient::new(operator.clone());
    for scope in ["team", "team/public", "team/private", "team/private/deeper"] {
        vault.put_secret(put(scope, "k", b"v", None)).await.unwrap();
    }
    let mut policies = PolicyServiceClient::new(operator);
    let current = policies
        .get_policy_set(policy::GetPolicySetRequest {})
        .await
        .unwrap()
        .into_inner()
        .policy_set
        .unwrap();
    let text = format!(
        "{}\n@id(\"hide-private\")\nforbid(principal, action == Palyra::Action::\"palyra.vault.v1.VaultService/ListSecrets\", resource in Palyra::Scope::\"team/private\");",
        current.policies
    );
    policies
        .update_policy_set(policy::UpdatePolicySetRequest { policies: text, expected_version: None })
        .await
        .unwrap();

    let listed: Vec<String> = vault
        .list_secrets(pb::ListSecretsRequest { scope: "team".into(), recursive: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .secrets
        .into_iter()
        .map(|m| m.scope)
        .collect();
    assert_eq!(listed, ["team", "team/public"]);
    let direct = vault
        .list_secrets(pb::ListSecretsRequest {
            scope: "team/private".into(),
            recursive: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&direct), "ERROR_REASON_POLICY_DENIED");
    node.stop().await;
}

/// Every page of a listing, with `page_size` rows at most per call: (scope, key) in order.
async fn list_all(
    vault: &mut VaultServiceClient<tonic::transport::Channel>,
    scope: &str,
    recursive: bool,
    page_size: u32,
) -> Result<Vec<(String, String)>, tonic::Status> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = vault
            .list_secrets(pb::ListSecretsRequest {
                scope: scope.into(),
                recursive,
                page_size,
                page_token,
                include_deleted: false,
            })
            .await?
            .into_inner();
        assert!(page.secrets.len() <= page_size as usize);
        all.extend(page.secrets.into_iter().map(|m| (m.scope, m.key)));
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_returns_what_the_caller_may_see_from_the_top_level_down() {
    let node = TestNode::start().await;
    let mut admin = VaultServiceClient::new(node.operator().await);
    admin.put_secret(put("agents", "root", b"v", None)).await.unwrap();
    admin.put_secret(put("agents/alpha", "a1", b"v", None)).await.unwrap();
    admin.put_secret(put("agents/alpha/sub", "a2", b"v", None)).await.unwrap();
    for i in 0..40 {
        admin.put_secret(put("agents/beta", &format!("b{i:02}"), b"v", None)).await.unwrap();
    }
    admin.put_secret(put("agents/gamma", "g", b"v", None)).await.unwrap();
    admin.put_secret(put("connectors/slack", "s", b"v", None)).await.unwrap();

    // The operator lists every scope from the top ("/" or "").
    let everything = list_all(&mut admin, "/", false, 7).await.unwrap();
    assert_eq!(everything.len(), 45);
    assert_eq!(everything.first().unwrap(), &("agents".to_owned(), "root".to_owned()));
    assert_eq!(list_all(&mut admin, "", true, 1000).await.unwrap(), everything);

    // A device granted agents/alpha only: its part of `agents`, not a denial; the hidden rows
    // (more than a call's scan budget at page size 1) never show and the paging still ends.
    let alpha = node.add_device(palyra::identity::Role::Device, "alpha", &["agents/alpha"]).await;
    let mut device = VaultServiceClient::new(node.channel(Some(&alpha)).await);
    let want =
        vec![("agents/alpha".to_owned(), "a1".to_owned()), ("agents/alpha/sub".to_owned(), "a2".to_owned())];
    for page_size in [1, 2, 100] {
        assert_eq!(list_all(&mut device, "agents", true, page_size).await.unwrap(), want, "{page_size}");
        assert_eq!(list_all(&mut device, "/", false, page_size).await.unwrap(), want, "{page_size}");
    }
    // A flat listing of the denied scope, and a subtree with nothing of its own, stay denied.
    for (scope, recursive) in [("agents", false), ("connectors", true), ("agents/beta", true)] {
        let denied = list_all(&mut device, scope, recursive, 10).await.unwrap_err();
        assert_eq!(reason(&denied), "ERROR_REASON_POLICY_DENIED", "{scope}");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_on_the_reserved_palyra_scopes_says_they_are_reserved() {
    let node = TestNode::start().await;
    let mut admin = VaultServiceClient::new(node.operator().await);
    let denied = admin.put_secret(put("palyra/auth/openai", "api_key", b"v", None)).await.unwrap_err();
    assert_eq!(reason(&denied), "ERROR_REASON_POLICY_DENIED");
    assert!(denied.message().contains("reserved for the node"), "{}", denied.message());
    let other = admin.put_secret(put("palyra-like/x", "k", b"v", None)).await;
    assert!(other.is_ok(), "only palyra/ itself is reserved: {other:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_token_reveals_no_hidden_name_and_one_call_decides_a_bounded_number_of_scopes() {
    let node = TestNode::start().await;
    let mut admin = VaultServiceClient::new(node.operator().await);
    for i in 0..150 {
        admin.put_secret(put(&format!("team-{i:03}"), &format!("HIDDEN_{i:03}"), b"v", None)).await.unwrap();
    }
    admin.put_secret(put("zz-shared/ci", "token", b"v", None)).await.unwrap();
    let ci = node.add_device(palyra::identity::Role::Device, "ci", &["zz-shared/ci"]).await;
    let mut device = VaultServiceClient::new(node.channel(Some(&ci)).await);

    let audit = node.node.audit();
    audit.flush().await.unwrap();
    let before = *audit.committed().borrow();
    let first = device
        .list_secrets(pb::ListSecretsRequest {
            scope: "/".into(),
            recursive: true,
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    audit.flush().await.unwrap();
    let written = *audit.committed().borrow() - before;
    // 150 scopes the device may not see: one call decides at most 64 of them (+ the gate's own
    // record of the call), and says where to go on.
    assert!(written <= 66, "one listing wrote {written} audit records");
    assert!(first.secrets.is_empty());
    let token = first.next_page_token;
    assert!(!token.is_empty());
    // The token is the position after a hidden row: none of it can be read back.
    use base64::Engine as _;
    let decoded = [
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&token).unwrap_or_default(),
        hex::decode(&token).unwrap_or_default(),
    ];
    for bytes in decoded {
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("team-") && !text.contains("HIDDEN_"), "{text}");
    }
    // Another caller cannot use it, and a token forged in the old plaintext form is refused.
    let other = node.add_device(palyra::identity::Role::Device, "other", &["zz-shared/ci"]).await;
    let mut other = VaultServiceClient::new(node.channel(Some(&other)).await);
    let forged = hex::encode("\n1\n0\nteam-100\nHIDDEN_100");
    for (client, token) in [(&mut other, token.clone()), (&mut device, forged)] {
        let refused = client
            .list_secrets(pb::ListSecretsRequest {
                scope: "/".into(),
                recursive: true,
                page_size: 1,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }
    // Paging on reaches the one row the device may see, and ends.
    let want = vec![("zz-shared/ci".to_owned(), "token".to_owned())];
    assert_eq!(list_all(&mut device, "/", true, 1).await.unwrap(), want);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_vault_call_is_one_audit_record_naming_both_decisions() {
    use palyra::audit::AuditDecision;
    let node = TestNode::start().await;
    let phone = node.add_device(palyra::identity::Role::Device, "phone", &[]).await;
    let mut vault = VaultServiceClient::new(node.channel(Some(&phone)).await);
    let own = format!("devices/{}", phone.id);
    let principal = format!("device:{}", phone.id);
    let audit = node.node.audit();
    // One call at a time, each followed by what it added to the log.
    let mut seen = audit.list(0, 100_000, None, None).await.unwrap().last().map_or(0, |r| r.sequence);
    let mut added = async || {
        audit.flush().await.unwrap();
        let new: Vec<_> = audit
            .list(seen, 100_000, Some(principal.clone()), None)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.sequence > seen)
            .collect();
        seen = audit.list(0, 100_000, None, None).await.unwrap().last().map_or(seen, |r| r.sequence);
        new.into_iter().map(|r| r.entry).collect::<Vec<_>>()
    };

    // An allowed write and read: one record each, the scope's, the method's policies included.
    vault.put_secret(put(&own, "token", b"mine", None)).await.unwrap();
    let mut calls = vec![("PutSecret", added().await)];
    vault.get_secret(get(&own, "token", 0)).await.unwrap();
    calls.push(("GetSecret", added().await));
    vault
        .get_secret_metadata(pb::GetSecretMetadataRequest { scope: own.clone(), key: "token".into() })
        .await
        .unwrap();
    calls.push(("GetSecretMetadata", added().await));
    vault
        .delete_secret(pb::DeleteSecretRequest { scope: own.clone(), key: "token".into(), destroy: false })
        .await
        .unwrap();
    calls.push(("DeleteSecret", added().await));
    for (method, records) in calls {
        let [record] = records.as_slice() else { panic!("{method}: {records:?}") };
        assert_eq!(record.action, format!("palyra.vault.v1.VaultService/{method}"));
        assert_eq!(
            (record.resource.as_str(), record.decision),
            (format!("Scope:{own}").as_str(), AuditDecision::Allow)
        );
        assert!(
            record.reason.starts_with("method: ") && record.reason.contains("; resource: "),
            "{record:?}"
        );
    }

    // Denied on the scope: one record, the denial.
    vault.get_secret(get("agents/alpha", "k", 0)).await.unwrap_err();
    let records = added().await;
    let [record] = records.as_slice() else { panic!("{records:?}") };
    assert_eq!((record.resource.as_str(), record.decision), ("Scope:agents/alpha", AuditDecision::Deny));
    let caller = record.principal.clone();

    // Refused before its resource decision (a bad argument): the method decision alone, whole.
    vault.get_secret(get("Agents/../x", "k", 0)).await.unwrap_err();
    let records = added().await;
    let [record] = records.as_slice() else { panic!("{records:?}") };
    assert_eq!((record.resource.as_str(), record.decision), ("Node", AuditDecision::Allow));
    assert_eq!(
        (record.principal.as_str(), record.action.as_str()),
        (caller.as_str(), "palyra.vault.v1.VaultService/GetSecret")
    );
    assert!(!record.reason.is_empty() && !record.reason.contains("resource: "), "{record:?}");

    // A call whose handler decides no single scope keeps its method record.
    vault.list_secrets(pb::ListSecretsRequest { scope: own.clone(), ..Default::default() }).await.unwrap();
    let records = added().await;
    let resources: Vec<_> = records.iter().map(|r| r.resource.as_str()).collect();
    assert_eq!(resources, ["Node".to_owned(), format!("Scope:{own}")]);
    node.stop().await;
}
