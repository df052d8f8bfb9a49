//! PolicyService (update, validate with positions, lockout, CAS, rollback), AuditService
//! (a modified row is found), revocation, renewal with a proof, lax permissions, and a
//! graceful shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use palyra::identity::Role;
use palyra::identity::ca::generate_tls_key_and_csr;
use palyra::testkit::{self, NodeInternals, TestNode, private_tempdir, reason};
use palyra::wire::pb::audit::v1::{self as audit, audit_service_client::AuditServiceClient};
use palyra::wire::pb::identity::v1::{self as identity, identity_service_client::IdentityServiceClient};
use palyra::wire::pb::policy::v1::{self as policy, policy_service_client::PolicyServiceClient};
use palyra::wire::pb::vault::v1::{self as vault, vault_service_client::VaultServiceClient};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_update_validate_lockout_and_rollback() {
    let node = TestNode::start().await;
    let mut client = PolicyServiceClient::new(node.operator().await);
    let current =
        client.get_policy_set(policy::GetPolicySetRequest {}).await.unwrap().into_inner().policy_set.unwrap();
    assert_eq!(current.version, 1);
    assert!(current.schema.contains("namespace Palyra"));

    // Validation reports line and column.
    let broken =
        format!("{}\npermit(principal, action, resource) when {{ principal.nope }};", current.policies);
    let v = client
        .validate_policy_set(policy::ValidatePolicySetRequest { policies: broken.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(!v.valid);
    let d = &v.diagnostics[0];
    assert!(d.line > 1 && d.column > 0, "{d:?}");
    let syntax = client
        .validate_policy_set(policy::ValidatePolicySetRequest {
            policies: "permit(principal,\n  action resource);".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!syntax.valid && syntax.diagnostics[0].line == 2, "{:?}", syntax.diagnostics);
    // An invalid set is refused and changes nothing.
    let refused = client
        .update_policy_set(policy::UpdatePolicySetRequest { policies: broken, expected_version: None })
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::InvalidArgument, "ERROR_REASON_POLICY_INVALID")
    );

    // Lockout: a set in which the admin could no longer update policies is refused.
    let lockout = client
        .update_policy_set(policy::UpdatePolicySetRequest {
            policies: "@id(\"health\") permit(principal, action == Palyra::Action::\"grpc.health.v1.Health/Check\", resource);".into(),
            expected_version: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (lockout.code(), reason(&lockout).as_str()),
        (Code::FailedPrecondition, "ERROR_REASON_LOCKOUT")
    );

    // A real change: forbid devices from writing the vault, with CAS.
    let stricter = format!(
        "{}\n@id(\"no-device-writes\")\nforbid(principal in Palyra::Role::\"device\", action in Palyra::Action::\"vault.write\", resource);",
        current.policies
    );
    let stale = client
        .update_policy_set(policy::UpdatePolicySetRequest {
            policies: stricter.clone(),
            expected_version: Some(7),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&stale), "ERROR_REASON_VERSION_CONFLICT");
    let v2 = client
        .update_policy_set(policy::UpdatePolicySetRequest { policies: stricter, expected_version: Some(1) })
        .await
        .unwrap()
        .into_inner()
        .policy_set
        .unwrap();
    assert_eq!(v2.version, 2);
    let phone = node.add_device(Role::Device, "phone", &[]).await;
    let mut phone_vault = VaultServiceClient::new(node.channel(Some(&phone)).await);
    let write = vault::PutSecretRequest {
        scope: format!("devices/{}", phone.id),
        key: "k".into(),
        value: b"v".to_vec(),
        expected_version: None,
    };
    let denied = phone_vault.put_secret(write.clone()).await.unwrap_err();
    assert_eq!(reason(&denied), "ERROR_REASON_POLICY_DENIED");
    // Authorize explains a forbid differently from a default deny.
    let explain = client
        .authorize(policy::AuthorizeRequest {
            principal: format!("Palyra::Device::\"{}\"", phone.id),
            action: "palyra.vault.v1.VaultService/PutSecret".into(),
            resource: format!("Palyra::Scope::\"devices/{}\"", phone.id),
            context_json: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(explain.decision(), policy::Decision::Deny);
    assert_eq!(explain.determining_policies, ["no-device-writes"]);
    let default_deny = client
        .authorize(policy::AuthorizeRequest {
            principal: "Palyra::Anonymous::\"anonymous\"".into(),
            action: "palyra.vault.v1.VaultService/RotateKey".into(),
            resource: "Palyra::Node::\"local\"".into(),
            context_json: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(default_deny.determining_policies.is_empty());
    assert!(default_deny.explanation.contains("no policy permits"), "{}", default_deny.explanation);

    // Rollback restores version 1's text as version 3; the device may write again.
    let v3 = client
        .rollback_policy_set(policy::RollbackPolicySetRequest { version: 1 })
        .await
        .unwrap()
        .into_inner()
        .policy_set
        .unwrap();
    assert_eq!(v3.version, 3);
    assert_eq!(v3.policies, current.policies);
    phone_vault.put_secret(write).await.unwrap();
    let versions = client
        .list_policy_versions(policy::ListPolicyVersionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert_eq!(versions.len(), 3);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_chain_finds_a_modified_row() {
    let node = TestNode::start().await;
    let operator = node.operator().await;
    let mut ids = IdentityServiceClient::new(operator.clone());
    for _ in 0..5 {
        ids.who_am_i(identity::WhoAmIRequest {}).await.unwrap();
    }
    let anonymous = node.channel(None).await;
    let _ = IdentityServiceClient::new(anonymous)
        .list_devices(identity::ListDevicesRequest {})
        .await
        .unwrap_err();
    let mut audit_client = AuditServiceClient::new(operator);
    let ok =
        audit_client.verify_audit_log(audit::VerifyAuditLogRequest::default()).await.unwrap().into_inner();
    assert!(ok.ok && ok.records_checked >= 6, "{ok:?}");
    let denials = audit_client
        .list_audit_records(audit::ListAuditRecordsRequest {
            principal: Some("anonymous".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(
        denials
            .iter()
            .any(|r| r.decision() == audit::AuditDecision::Deny && r.action.ends_with("ListDevices"))
    );

    let db = rusqlite::Connection::open(node.data_dir().join("palyra.db")).unwrap();
    let changed =
        db.execute("UPDATE audit SET principal = 'device:someone-else' WHERE sequence = 3", []).unwrap();
    assert_eq!(changed, 1);
    // Record 3 is before the point the first verification reached: the incremental walk starts
    // after it (what it cannot see, by design); the full one finds it.
    let incremental =
        audit_client.verify_audit_log(audit::VerifyAuditLogRequest::default()).await.unwrap().into_inner();
    assert!(incremental.ok && incremental.from_sequence > 3, "{incremental:?}");
    let bad = audit_client
        .verify_audit_log(audit::VerifyAuditLogRequest { full: true })
        .await
        .unwrap()
        .into_inner();
    assert!(!bad.ok);
    assert_eq!(bad.first_bad_sequence, Some(3));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_takes_effect_on_the_next_request() {
    let node = TestNode::start().await;
    let phone = node.add_device(Role::Device, "phone", &[]).await;
    let mut as_phone = IdentityServiceClient::new(node.channel(Some(&phone)).await);
    assert_eq!(
        as_phone.who_am_i(identity::WhoAmIRequest {}).await.unwrap().into_inner().device_id,
        phone.id.to_string()
    );
    let mut ops = IdentityServiceClient::new(node.operator().await);
    let revoked = ops
        .revoke_device(identity::RevokeDeviceRequest {
            device_id: phone.id.to_string(),
            reason: "lost".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .device
        .unwrap();
    assert_eq!(revoked.status(), identity::DeviceStatus::Revoked);
    assert_eq!(revoked.revoke_reason, "lost");
    // Same connection, next request.
    let refused = as_phone.who_am_i(identity::WhoAmIRequest {}).await.unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::Unauthenticated, "ERROR_REASON_DEVICE_REVOKED")
    );
    // The operator cannot revoke itself.
    let me = node.node.operator().to_string();
    let lockout = ops
        .revoke_device(identity::RevokeDeviceRequest { device_id: me, reason: String::new() })
        .await
        .unwrap_err();
    assert_eq!(reason(&lockout), "ERROR_REASON_LOCKOUT");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_over_mtls_and_with_a_proof() {
    let node = TestNode::start().await;
    let phone = node.add_device(Role::Device, "phone", &[]).await;

    // Over mTLS, with a fresh TLS key.
    let (key_pem, csr_pem) = generate_tls_key_and_csr(phone.id).unwrap();
    let renewed = IdentityServiceClient::new(node.channel(Some(&phone)).await)
        .renew_certificate(identity::RenewCertificateRequest { csr_pem, proof: None })
        .await
        .unwrap()
        .into_inner();
    let renewed_creds =
        testkit::Creds { cert_pem: renewed.certificate_pem, key_pem: key_pem.to_string(), ..phone.clone() };
    let who = IdentityServiceClient::new(node.channel(Some(&renewed_creds)).await)
        .who_am_i(identity::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(who.device_id, phone.id.to_string());

    // Anonymously, as a device whose certificate expired: challenge, then signed proof.
    let mut anon = IdentityServiceClient::new(node.channel(None).await);
    let challenge = anon
        .get_renewal_challenge(identity::GetRenewalChallengeRequest { device_id: phone.id.to_string() })
        .await
        .unwrap()
        .into_inner()
        .challenge;
    let (_, csr_pem) = generate_tls_key_and_csr(phone.id).unwrap();
    let csr_der = palyra::identity::ca::Csr::parse_pem(&csr_pem).unwrap().der().to_vec();
    let message = palyra::identity::renewal_proof_message(&challenge, &csr_der);
    let proof = identity::RenewalProof {
        device_id: phone.id.to_string(),
        challenge: challenge.clone(),
        signature: phone.identity.sign(&message).to_vec(),
    };
    // A proof signed by someone else fails.
    let impostor = palyra::identity::DeviceIdentity::generate().unwrap();
    let forged = identity::RenewalProof { signature: impostor.sign(&message).to_vec(), ..proof.clone() };
    let err = anon
        .renew_certificate(identity::RenewCertificateRequest {
            csr_pem: csr_pem.clone(),
            proof: Some(forged),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "ERROR_REASON_RENEWAL_PROOF_INVALID");
    // Challenges are single-use: the forged attempt consumed it, so get a new one.
    let challenge = anon
        .get_renewal_challenge(identity::GetRenewalChallengeRequest { device_id: phone.id.to_string() })
        .await
        .unwrap()
        .into_inner()
        .challenge;
    let message = palyra::identity::renewal_proof_message(&challenge, &csr_der);
    let proof =
        identity::RenewalProof { challenge, signature: phone.identity.sign(&message).to_vec(), ..proof };
    let renewed = anon
        .renew_certificate(identity::RenewCertificateRequest {
            csr_pem: csr_pem.clone(),
            proof: Some(proof.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(renewed.certificate_pem.contains("BEGIN CERTIFICATE"));
    // Replaying the same proof fails.
    let replay = anon
        .renew_certificate(identity::RenewCertificateRequest { csr_pem, proof: Some(proof) })
        .await
        .unwrap_err();
    assert_eq!(reason(&replay), "ERROR_REASON_RENEWAL_PROOF_INVALID");
    node.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn the_server_refuses_lax_permissions_and_names_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = private_tempdir();
    let data = dir.path().join("node");
    let options = testkit::node_options;
    let node = testkit::open_node(&data).await;
    node.close_db();
    drop(node);
    for (path, mode, fix) in [
        (data.join("keys/root.key"), 0o644, "chmod 600"),
        (data.join("identity"), 0o755, "chmod 700"),
        (data.join("identity/ca.pem"), 0o640, "chmod 600"),
        (data.clone(), 0o750, "chmod 700"),
    ] {
        let before = std::fs::metadata(&path).unwrap().permissions();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = testkit::try_open_node(&data, options()).await.unwrap_err().to_string();
        assert!(err.contains(fix) && err.contains(&*path.to_string_lossy()), "{}: {err}", path.display());
        std::fs::set_permissions(&path, before).unwrap();
    }
    testkit::open_node(&data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let node = TestNode::start().await;
    let mut vault = VaultServiceClient::new(node.operator().await);
    // Writes in flight when shutdown begins complete; then the port stops answering.
    let mut writes = Vec::new();
    for i in 0..20 {
        let mut v = vault.clone();
        writes.push(tokio::spawn(async move {
            v.put_secret(vault::PutSecretRequest {
                scope: "s".into(),
                key: format!("k{i}"),
                value: b"v".to_vec(),
                expected_version: None,
            })
            .await
        }));
    }
    vault
        .put_secret(vault::PutSecretRequest {
            scope: "s".into(),
            key: "last".into(),
            value: b"v".to_vec(),
            expected_version: None,
        })
        .await
        .unwrap();
    let addr = node.addr;
    let (dir, n) = node.stop().await;
    let mut acknowledged = 0;
    for w in writes {
        if w.await.unwrap().is_ok() {
            acknowledged += 1;
        }
    }
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener must be closed");
    // Everything acknowledged is there after a restart.
    n.close_db();
    drop(n);
    let again = testkit::open_node(&dir.path().join("node")).await;
    let (stored, _) = again
        .vault()
        .list(&palyra::vault::Scope::parse("s").unwrap(), false, false, 100, None)
        .await
        .unwrap();
    assert!(stored.len() > acknowledged, "{} stored, {acknowledged} acknowledged", stored.len());
}

#[tokio::test]
async fn the_server_certificate_is_renewed_when_due() {
    let node = TestNode::start().await;
    let current = node.node.identity().server_certificate().cert_der.to_vec();
    let now = std::time::SystemTime::now();
    assert!(node.node.refresh_server_certificate(&current, now).unwrap().is_none(), "not due yet");
    // With less than a third of the 90-day lifetime left, a new one is issued and kept.
    let later = now + std::time::Duration::from_secs(70 * 24 * 3600);
    let (chain, _key) = node.node.refresh_server_certificate(&current, later).unwrap().expect("renewed");
    assert_ne!(chain[0].as_ref(), current.as_slice());
    assert!(
        node.node.refresh_server_certificate(chain[0].as_ref(), later).unwrap().is_none(),
        "stored, so stable"
    );
    node.stop().await;
}

/// Issue 15, findings 1 and 2 over the wire: the reported forbid (`action in [GetSecret]`)
/// applies to GetSecret; a forbid naming a device in the upper-case spelling of its ULID is
/// refused with INVALID_ARGUMENT and the literal's position (it used to be accepted and never
/// apply); an overflowing device id is INVALID_ARGUMENT wherever a device id is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbids_apply_and_never_matching_literals_are_refused() {
    let node = TestNode::start().await;
    let mut client = PolicyServiceClient::new(node.operator().await);
    let current =
        client.get_policy_set(policy::GetPolicySetRequest {}).await.unwrap().into_inner().policy_set.unwrap();
    let phone = node.add_device(Role::Device, "phone", &["x"]).await;
    let mut phone_vault = VaultServiceClient::new(node.channel(Some(&phone)).await);
    let put = vault::PutSecretRequest {
        scope: "x".into(),
        key: "k".into(),
        value: b"v".to_vec(),
        expected_version: None,
    };
    phone_vault.put_secret(put).await.unwrap();
    let get = vault::GetSecretRequest { scope: "x".into(), key: "k".into(), version: 0 };
    phone_vault.get_secret(get.clone()).await.unwrap();

    // The reported forbid.
    let forbid = format!(
        "{}\n@id(\"no-x\")\nforbid (principal, action in [Palyra::Action::\"palyra.vault.v1.VaultService/GetSecret\"], resource == Palyra::Scope::\"x\");",
        current.policies
    );
    client
        .update_policy_set(policy::UpdatePolicySetRequest {
            policies: forbid.clone(),
            expected_version: None,
        })
        .await
        .unwrap();
    let denied = phone_vault.get_secret(get.clone()).await.unwrap_err();
    assert_eq!(
        (denied.code(), reason(&denied).as_str()),
        (Code::PermissionDenied, "ERROR_REASON_POLICY_DENIED")
    );
    let explain = client
        .authorize(policy::AuthorizeRequest {
            principal: format!("Palyra::Device::\"{}\"", phone.id),
            action: "palyra.vault.v1.VaultService/GetSecret".into(),
            resource: "Palyra::Scope::\"x\"".into(),
            context_json: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(explain.determining_policies, ["no-x"]);

    // The same device in the upper-case spelling: refused, with where.
    let upper = phone.id.to_string().to_uppercase();
    let text = format!(
        "{forbid}\n@id(\"no-phone\")\nforbid (principal == Palyra::Device::\"{upper}\", action, resource);"
    );
    let refused = client
        .update_policy_set(policy::UpdatePolicySetRequest { policies: text.clone(), expected_version: None })
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::InvalidArgument, "ERROR_REASON_POLICY_INVALID")
    );
    let line = text.lines().count();
    assert!(refused.message().contains(&format!("at {line}:")), "{}", refused.message());
    assert!(refused.message().contains(&phone.id.to_string()), "{}", refused.message());
    let v = client
        .validate_policy_set(policy::ValidatePolicySetRequest { policies: text })
        .await
        .unwrap()
        .into_inner();
    assert!(!v.valid);
    assert!(v.diagnostics.iter().any(|d| d.line as usize == line && d.column > 0), "{:?}", v.diagnostics);

    // An overflowing spelling of the phone's id is refused where ids are read.
    let text = phone.id.to_string();
    let overflow = format!("{}{}", char::from(text.as_bytes()[0] + 8), &text[1..]);
    let authorize = client
        .authorize(policy::AuthorizeRequest {
            principal: format!("Palyra::Device::\"{overflow}\""),
            action: "palyra.vault.v1.VaultService/GetSecret".into(),
            resource: "Palyra::Scope::\"x\"".into(),
            context_json: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(authorize.code(), Code::InvalidArgument);
    assert!(authorize.message().contains("overflows"), "{}", authorize.message());
    let mut identity = IdentityServiceClient::new(node.operator().await);
    let get_device =
        identity.get_device(identity::GetDeviceRequest { device_id: overflow.clone() }).await.unwrap_err();
    assert_eq!(get_device.code(), Code::InvalidArgument, "{}", get_device.message());
    // The upper-case spelling reads as the canonical id.
    let found =
        identity.get_device(identity::GetDeviceRequest { device_id: upper }).await.unwrap().into_inner();
    assert_eq!(found.device.unwrap().device_id, phone.id.to_string());
}
