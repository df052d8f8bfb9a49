//! The authorization matrix of docs/security-model.md, cell by cell, over real mTLS: every RPC of every
//! service × {anonymous, device, another device, node, admin, revoked device}, with the status
//! code and reason each cell must produce. Zero unexpected allows (and zero unexpected denials).
//!
//! "Allowed" means the call got past authorization: it may still fail for its own reasons
//! (NOT_FOUND, INVALID_ARGUMENT for the empty pairing messages, ...).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::pin::Pin;

use palyra::identity::ca::generate_tls_key_and_csr;
use palyra::identity::{DeviceId, Role};
use palyra::testkit::{Creds, TestNode, reason};
use palyra::wire::pb;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Anonymous,
    Device,
    OtherDevice,
    Node,
    Admin,
    Revoked,
}

const EVERYONE: [Who; 6] =
    [Who::Anonymous, Who::Device, Who::OtherDevice, Who::Node, Who::Admin, Who::Revoked];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Allowed,
    /// Refused by policy: UNAUTHENTICATED (anonymous) or PERMISSION_DENIED, POLICY_DENIED.
    Denied,
    /// Refused before policy: UNAUTHENTICATED + DEVICE_REVOKED.
    Revoked,
    /// Refused by the handler for lack of a renewal proof: UNAUTHENTICATED + RENEWAL_PROOF_INVALID.
    NeedsProof,
}

struct Ctx {
    device: Creds,
    other: Creds,
    node: Creds,
    admin: DeviceId,
}

impl Ctx {
    fn id(&self, who: Who) -> DeviceId {
        match who {
            Who::Device => self.device.id,
            Who::OtherDevice => self.other.id,
            Who::Node => self.node.id,
            _ => self.admin,
        }
    }

    fn own_scope(&self, who: Who) -> String {
        format!("devices/{}", self.id(who))
    }

    /// Someone else's device scope.
    fn foreign_scope(&self, who: Who) -> String {
        let other = if who == Who::Device { self.other.id } else { self.device.id };
        format!("devices/{other}")
    }
}

type Call = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;
type MakeCall = Box<dyn Fn(&Ctx, Who, Channel) -> Call>;

async fn unary<Req: prost::Message + Send + Sync + 'static>(
    ch: Channel,
    path: &'static str,
    req: Req,
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.map_err(|e| Status::unknown(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<Req, ()>::default();
    grpc.unary(tonic::Request::new(req), PathAndQuery::from_static(path), codec).await.map(|_| ())
}

async fn server_streaming<Req: prost::Message + Send + Sync + 'static>(
    ch: Channel,
    path: &'static str,
    req: Req,
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.map_err(|e| Status::unknown(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<Req, ()>::default();
    let mut stream = grpc
        .server_streaming(tonic::Request::new(req), PathAndQuery::from_static(path), codec)
        .await?
        .into_inner();
    stream.message().await.map(|_| ())
}

async fn bidi<Req: prost::Message + Send + Sync + 'static>(
    ch: Channel,
    path: &'static str,
    req: Req,
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.map_err(|e| Status::unknown(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<Req, ()>::default();
    let mut stream = grpc
        .streaming(tonic::Request::new(tokio_stream::once(req)), PathAndQuery::from_static(path), codec)
        .await?
        .into_inner();
    stream.message().await.map(|_| ())
}

struct Case {
    name: &'static str,
    expect: fn(Who) -> Outcome,
    call: MakeCall,
}

fn public(_: Who) -> Outcome {
    Outcome::Allowed
}

fn admin_only(who: Who) -> Outcome {
    if who == Who::Admin { Outcome::Allowed } else { Outcome::Denied }
}

fn devices_only(who: Who) -> Outcome {
    if who == Who::Anonymous { Outcome::Denied } else { Outcome::Allowed }
}

fn nobody(_: Who) -> Outcome {
    Outcome::Denied
}

/// Vault calls on the caller's own `devices/<id>` subtree.
fn vault_own(who: Who) -> Outcome {
    match who {
        Who::Device | Who::OtherDevice | Who::Admin => Outcome::Allowed,
        _ => Outcome::Denied,
    }
}

/// Vault calls on another device's subtree, or a scope granted only to `Device`.
fn vault_foreign(who: Who) -> Outcome {
    admin_only(who)
}

fn vault_granted(who: Who) -> Outcome {
    match who {
        Who::Device | Who::Admin => Outcome::Allowed,
        _ => Outcome::Denied,
    }
}

macro_rules! case {
    ($name:literal, $expect:expr, |$ctx:ident, $who:ident| $req:expr) => {
        Case {
            name: $name,
            expect: $expect,
            call: Box::new(|$ctx: &Ctx, $who: Who, ch: Channel| {
                let _ = (&$ctx, $who);
                let req = $req;
                Box::pin(unary(ch, concat!("/", $name), req))
            }),
        }
    };
}

fn cases() -> Vec<Case> {
    use pb::audit::v1 as audit;
    use pb::auth::v1 as auth;
    use pb::identity::v1 as identity;
    use pb::pairing::v1 as pairing;
    use pb::policy::v1 as policy;
    use pb::vault::v1 as vault;
    vec![
        // grpc.health.v1
        case!("grpc.health.v1.Health/Check", public, |c, w| tonic_health::pb::HealthCheckRequest::default()),
        Case {
            name: "grpc.health.v1.Health/Watch",
            expect: public,
            call: Box::new(|_, _, ch| {
                Box::pin(server_streaming(
                    ch,
                    "/grpc.health.v1.Health/Watch",
                    tonic_health::pb::HealthCheckRequest::default(),
                ))
            }),
        },
        // server reflection
        Case {
            name: "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            expect: devices_only,
            call: Box::new(|_, _, ch| {
                let req = tonic_reflection::pb::v1::ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(
                        tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                            String::new(),
                        ),
                    ),
                };
                Box::pin(bidi(ch, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", req))
            }),
        },
        Case {
            name: "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            expect: devices_only,
            call: Box::new(|_, _, ch| {
                let req = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(
                        tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
                    ),
                };
                Box::pin(bidi(ch, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", req))
            }),
        },
        // IdentityService
        case!("palyra.identity.v1.IdentityService/GetNodeIdentity", public, |c, w| {
            identity::GetNodeIdentityRequest {}
        }),
        case!("palyra.identity.v1.IdentityService/WhoAmI", public, |c, w| identity::WhoAmIRequest {}),
        case!("palyra.identity.v1.IdentityService/GetRenewalChallenge", public, |c, w| {
            identity::GetRenewalChallengeRequest { device_id: c.id(w).to_string() }
        }),
        case!("palyra.identity.v1.IdentityService/GetDevice", devices_only, |c, w| {
            identity::GetDeviceRequest { device_id: c.id(w).to_string() }
        }),
        Case {
            name: "palyra.identity.v1.IdentityService/GetDevice (another device)",
            expect: admin_only,
            call: Box::new(|c, w, ch| {
                let other = if w == Who::Device { c.other.id } else { c.device.id };
                Box::pin(unary(
                    ch,
                    "/palyra.identity.v1.IdentityService/GetDevice",
                    identity::GetDeviceRequest { device_id: other.to_string() },
                ))
            }),
        },
        case!("palyra.identity.v1.IdentityService/ListDevices", admin_only, |c, w| {
            identity::ListDevicesRequest {}
        }),
        case!("palyra.identity.v1.IdentityService/RevokeDevice", admin_only, |c, w| {
            identity::RevokeDeviceRequest {
                device_id: DeviceId::generate().to_string(),
                reason: "matrix".into(),
            }
        }),
        Case {
            name: "palyra.identity.v1.IdentityService/RenewCertificate",
            expect: |w| if w == Who::Anonymous { Outcome::NeedsProof } else { Outcome::Allowed },
            call: Box::new(|c, w, ch| {
                let (_, csr_pem) = generate_tls_key_and_csr(c.id(w)).unwrap();
                Box::pin(unary(
                    ch,
                    "/palyra.identity.v1.IdentityService/RenewCertificate",
                    identity::RenewCertificateRequest { csr_pem, proof: None },
                ))
            }),
        },
        // PairingService (allowed calls fail on their empty fields: INVALID_ARGUMENT, SESSION_EXPIRED)
        case!("palyra.pairing.v1.PairingService/StartPairing", public, |c, w| {
            pairing::StartPairingRequest::default()
        }),
        case!("palyra.pairing.v1.PairingService/FinishPairing", public, |c, w| {
            pairing::FinishPairingRequest::default()
        }),
        case!("palyra.pairing.v1.PairingService/GetPairingStatus", public, |c, w| {
            pairing::GetPairingStatusRequest::default()
        }),
        case!("palyra.pairing.v1.PairingService/CreatePairingCode", admin_only, |c, w| {
            pairing::CreatePairingCodeRequest::default()
        }),
        case!("palyra.pairing.v1.PairingService/ListPairingRequests", admin_only, |c, w| {
            pairing::ListPairingRequestsRequest::default()
        }),
        case!("palyra.pairing.v1.PairingService/ApprovePairing", admin_only, |c, w| {
            pairing::ApprovePairingRequest::default()
        }),
        case!("palyra.pairing.v1.PairingService/RejectPairing", admin_only, |c, w| {
            pairing::RejectPairingRequest::default()
        }),
        // Invalid requests: the gate decides before the handler looks at them.
        case!("palyra.pairing.v1.PairingService/CreateEnrollmentKey", admin_only, |c, w| {
            pairing::CreateEnrollmentKeyRequest { role: "nobody".into(), ..Default::default() }
        }),
        case!("palyra.pairing.v1.PairingService/ListEnrollmentKeys", admin_only, |c, w| {
            pairing::ListEnrollmentKeysRequest::default()
        }),
        case!("palyra.pairing.v1.PairingService/RevokeEnrollmentKey", admin_only, |c, w| {
            pairing::RevokeEnrollmentKeyRequest::default()
        }),
        // VaultService on the caller's own subtree
        case!("palyra.vault.v1.VaultService/PutSecret", vault_own, |c, w| vault::PutSecretRequest {
            scope: c.own_scope(w),
            key: "k".into(),
            value: b"v".to_vec(),
            expected_version: None,
        }),
        case!("palyra.vault.v1.VaultService/GetSecret", vault_own, |c, w| vault::GetSecretRequest {
            scope: c.own_scope(w),
            key: "k".into(),
            version: 0,
        }),
        case!("palyra.vault.v1.VaultService/ListSecrets", vault_own, |c, w| vault::ListSecretsRequest {
            scope: c.own_scope(w),
            ..Default::default()
        }),
        case!("palyra.vault.v1.VaultService/GetSecretMetadata", vault_own, |c, w| {
            vault::GetSecretMetadataRequest { scope: c.own_scope(w), key: "k".into() }
        }),
        case!("palyra.vault.v1.VaultService/DeleteSecret", vault_own, |c, w| vault::DeleteSecretRequest {
            scope: c.own_scope(w),
            key: "k".into(),
            destroy: false,
        }),
        // Server streaming: with progress markers the first message (the stream's start) comes
        // at once, so an allowed call answers without waiting for a change.
        Case {
            name: "palyra.vault.v1.VaultService/WatchSecrets",
            expect: vault_own,
            call: Box::new(|c, w, ch| {
                let req = vault::WatchSecretsRequest {
                    scope: c.own_scope(w),
                    progress: true,
                    ..Default::default()
                };
                Box::pin(server_streaming(ch, "/palyra.vault.v1.VaultService/WatchSecrets", req))
            }),
        },
        // ... on another device's subtree
        Case {
            name: "palyra.vault.v1.VaultService/PutSecret (another device's scope)",
            expect: vault_foreign,
            call: Box::new(|c, w, ch| {
                Box::pin(unary(
                    ch,
                    "/palyra.vault.v1.VaultService/PutSecret",
                    vault::PutSecretRequest {
                        scope: c.foreign_scope(w),
                        key: "intrusion".into(),
                        value: b"x".to_vec(),
                        expected_version: None,
                    },
                ))
            }),
        },
        Case {
            name: "palyra.vault.v1.VaultService/GetSecret (another device's scope)",
            expect: vault_foreign,
            call: Box::new(|c, w, ch| {
                Box::pin(unary(
                    ch,
                    "/palyra.vault.v1.VaultService/GetSecret",
                    vault::GetSecretRequest { scope: c.foreign_scope(w), key: "k".into(), version: 0 },
                ))
            }),
        },
        Case {
            // A recursive listing returns the sub-scopes the caller may list (`devices` gives a
            // device its own subtree: tests/grpc_vault.rs); another device's subtree, nothing.
            name: "palyra.vault.v1.VaultService/ListSecrets (recursive over another device)",
            expect: vault_foreign,
            call: Box::new(|c, w, ch| {
                Box::pin(unary(
                    ch,
                    "/palyra.vault.v1.VaultService/ListSecrets",
                    vault::ListSecretsRequest {
                        scope: c.foreign_scope(w),
                        recursive: true,
                        ..Default::default()
                    },
                ))
            }),
        },
        Case {
            name: "palyra.vault.v1.VaultService/WatchSecrets (recursive over all devices)",
            expect: vault_foreign,
            call: Box::new(|_, _, ch| {
                let req = vault::WatchSecretsRequest {
                    scope: "devices".into(),
                    recursive: true,
                    progress: true,
                    ..Default::default()
                };
                Box::pin(server_streaming(ch, "/palyra.vault.v1.VaultService/WatchSecrets", req))
            }),
        },
        Case {
            name: "palyra.vault.v1.VaultService/WatchSecrets (granted scope)",
            expect: vault_granted,
            call: Box::new(|_, _, ch| {
                let req = vault::WatchSecretsRequest {
                    scope: "connectors/slack".into(),
                    progress: true,
                    ..Default::default()
                };
                Box::pin(server_streaming(ch, "/palyra.vault.v1.VaultService/WatchSecrets", req))
            }),
        },
        // ... on a scope granted to `Device` only
        Case {
            name: "palyra.vault.v1.VaultService/GetSecret (granted scope)",
            expect: vault_granted,
            call: Box::new(|_, _, ch| {
                Box::pin(unary(
                    ch,
                    "/palyra.vault.v1.VaultService/GetSecret",
                    vault::GetSecretRequest {
                        scope: "connectors/slack/bot".into(),
                        key: "token".into(),
                        version: 0,
                    },
                ))
            }),
        },
        Case {
            name: "palyra.vault.v1.VaultService/GetSecret (sibling of a granted scope)",
            expect: vault_foreign,
            call: Box::new(|_, _, ch| {
                Box::pin(unary(
                    ch,
                    "/palyra.vault.v1.VaultService/GetSecret",
                    vault::GetSecretRequest {
                        scope: "connectors/github".into(),
                        key: "token".into(),
                        version: 0,
                    },
                ))
            }),
        },
        case!("palyra.vault.v1.VaultService/RotateKey", admin_only, |c, w| vault::RotateKeyRequest {}),
        // PolicyService
        case!("palyra.policy.v1.PolicyService/Authorize", admin_only, |c, w| policy::AuthorizeRequest {
            principal: "Palyra::Anonymous::\"anonymous\"".into(),
            action: "grpc.health.v1.Health/Check".into(),
            resource: "Palyra::Node::\"local\"".into(),
            context_json: String::new(),
        }),
        case!("palyra.policy.v1.PolicyService/GetPolicySet", admin_only, |c, w| {
            policy::GetPolicySetRequest {}
        }),
        case!("palyra.policy.v1.PolicyService/UpdatePolicySet", admin_only, |c, w| {
            policy::UpdatePolicySetRequest {
                // Invalid text: allowed callers get INVALID_ARGUMENT, nothing changes.
                policies: "permit(".into(),
                expected_version: None,
            }
        }),
        case!("palyra.policy.v1.PolicyService/ValidatePolicySet", admin_only, |c, w| {
            policy::ValidatePolicySetRequest { policies: "permit(principal, action, resource);".into() }
        }),
        case!("palyra.policy.v1.PolicyService/ListPolicyVersions", admin_only, |c, w| {
            policy::ListPolicyVersionsRequest {}
        }),
        case!("palyra.policy.v1.PolicyService/RollbackPolicySet", admin_only, |c, w| {
            policy::RollbackPolicySetRequest { version: 999 }
        }),
        // AuditService
        case!("palyra.audit.v1.AuditService/ListAuditRecords", admin_only, |c, w| {
            audit::ListAuditRecordsRequest::default()
        }),
        case!("palyra.audit.v1.AuditService/VerifyAuditLog", admin_only, |c, w| {
            audit::VerifyAuditLogRequest::default()
        }),
        case!("palyra.audit.v1.AuditService/PruneAuditLog", admin_only, |c, w| {
            // No retention configured or asked for: allowed callers prune nothing.
            audit::PruneAuditLogRequest::default()
        }),
        case!("palyra.audit.v1.AuditService/GetAuditCheckpoint", admin_only, |c, w| {
            audit::GetAuditCheckpointRequest { sequence: Some(1) }
        }),
        Case {
            name: "palyra.audit.v1.AuditService/ExportAuditLog",
            expect: admin_only,
            call: Box::new(|_, _, ch| {
                let req = audit::ExportAuditLogRequest { since_sequence: 0, follow: false };
                Box::pin(server_streaming(ch, "/palyra.audit.v1.AuditService/ExportAuditLog", req))
            }),
        },
        // AuthProfileService: admin only. GetAccessToken passes the gate for devices, whose
        // resource check then finds no policy granting them the profile.
        case!("palyra.auth.v1.AuthProfileService/CreateProfile", admin_only, |c, w| {
            // No kind: allowed callers get INVALID_ARGUMENT, nothing is created.
            auth::CreateProfileRequest { name: "matrix".into(), ..Default::default() }
        }),
        case!("palyra.auth.v1.AuthProfileService/ListProfiles", admin_only, |c, w| {
            auth::ListProfilesRequest {}
        }),
        case!("palyra.auth.v1.AuthProfileService/GetProfile", admin_only, |c, w| {
            auth::GetProfileRequest { name: "matrix".into() }
        }),
        case!("palyra.auth.v1.AuthProfileService/DeleteProfile", admin_only, |c, w| {
            auth::DeleteProfileRequest { name: "matrix".into() }
        }),
        case!("palyra.auth.v1.AuthProfileService/StartAuthorization", admin_only, |c, w| {
            auth::StartAuthorizationRequest { name: "matrix".into(), redirect_uri: String::new() }
        }),
        case!("palyra.auth.v1.AuthProfileService/CompleteAuthorization", admin_only, |c, w| {
            auth::CompleteAuthorizationRequest { state: "nope".into(), code: "nope".into() }
        }),
        case!("palyra.auth.v1.AuthProfileService/GetAccessToken", admin_only, |c, w| {
            auth::GetAccessTokenRequest { name: "matrix".into() }
        }),
        case!("palyra.auth.v1.AuthProfileService/RevokeProfile", admin_only, |c, w| {
            auth::RevokeProfileRequest { name: "matrix".into() }
        }),
        // ConsoleService: admin only (the test node serves no console, so the admin gets
        // FAILED_PRECONDITION + CONSOLE_DISABLED past the gate).
        case!("palyra.console.v1.ConsoleService/CreateLoginToken", admin_only, |c, w| {
            pb::console::v1::CreateLoginTokenRequest {}
        }),
        // The reserved scope of auth profiles: no vault call reaches it, the admin's included.
        Case {
            name: "palyra.vault.v1.VaultService/GetSecret (reserved palyra/auth scope)",
            expect: nobody,
            call: Box::new(|_, _, ch| {
                Box::pin(unary(
                    ch,
                    "/palyra.vault.v1.VaultService/GetSecret",
                    vault::GetSecretRequest {
                        scope: "palyra/auth/matrix".into(),
                        key: "token".into(),
                        version: 0,
                    },
                ))
            }),
        },
        // Methods no schema knows: denied for everyone, admin included.
        case!("palyra.vault.v1.VaultService/ExportEverything", nobody, |c, w| vault::RotateKeyRequest {}),
        case!("evil.v1.Backdoor/Open", nobody, |c, w| vault::RotateKeyRequest {}),
    ]
}

fn classify(who: Who, result: &Result<(), Status>) -> Result<Outcome, String> {
    let Err(status) = result else { return Ok(Outcome::Allowed) };
    let why = reason(status);
    match (status.code(), why.as_str()) {
        (Code::Unauthenticated, "ERROR_REASON_DEVICE_REVOKED") => Ok(Outcome::Revoked),
        (Code::Unauthenticated, "ERROR_REASON_RENEWAL_PROOF_INVALID") => Ok(Outcome::NeedsProof),
        (code @ (Code::Unauthenticated | Code::PermissionDenied), "ERROR_REASON_POLICY_DENIED") => {
            let want = if who == Who::Anonymous { Code::Unauthenticated } else { Code::PermissionDenied };
            if code == want {
                Ok(Outcome::Denied)
            } else {
                Err(format!("denied with {code:?}, expected {want:?}"))
            }
        }
        (Code::Unauthenticated | Code::PermissionDenied, other) => Err(format!(
            "refused with {:?} and unexpected reason {other:?}: {}",
            status.code(),
            status.message()
        )),
        _ => Ok(Outcome::Allowed),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_for_every_principal() {
    let node = TestNode::start().await;
    let ctx = Ctx {
        device: node.add_device(Role::Device, "phone", &["connectors/slack"]).await,
        other: node.add_device(Role::Device, "laptop", &[]).await,
        node: node.add_device(Role::Node, "peer", &[]).await,
        admin: node.node.operator(),
    };
    let revoked = node.add_device(Role::Device, "stolen", &[]).await;
    let operator = node.operator().await;
    pb::identity::v1::identity_service_client::IdentityServiceClient::new(operator.clone())
        .revoke_device(pb::identity::v1::RevokeDeviceRequest {
            device_id: revoked.id.to_string(),
            reason: "stolen".into(),
        })
        .await
        .unwrap();

    let mut channels = Vec::new();
    for who in EVERYONE {
        let ch = match who {
            Who::Anonymous => node.channel(None).await,
            Who::Device => node.channel(Some(&ctx.device)).await,
            Who::OtherDevice => node.channel(Some(&ctx.other)).await,
            Who::Node => node.channel(Some(&ctx.node)).await,
            Who::Admin => operator.clone(),
            Who::Revoked => node.channel(Some(&revoked)).await,
        };
        channels.push((who, ch));
    }

    let cases = cases();
    let mut failures = Vec::new();
    let mut cells = 0;
    for case in &cases {
        for (who, ch) in &channels {
            let expected = if *who == Who::Revoked { Outcome::Revoked } else { (case.expect)(*who) };
            let result = (case.call)(&ctx, *who, ch.clone()).await;
            cells += 1;
            match classify(*who, &result) {
                Ok(got) if got == expected => {}
                Ok(got) => failures.push(format!(
                    "{} as {who:?}: expected {expected:?}, got {got:?} ({result:?})",
                    case.name
                )),
                Err(problem) => failures.push(format!("{} as {who:?}: {problem}", case.name)),
            }
        }
    }
    assert!(failures.is_empty(), "{} of {cells} cells wrong:\n{}", failures.len(), failures.join("\n"));
    println!("{cells} cells checked over {} RPC cases", cases.len());

    // The denials are in the audit log.
    let (_, n) = node.stop().await;
    let denied = n.audit().list(0, 100_000, None, None).await.unwrap();
    assert!(
        denied
            .iter()
            .any(|r| r.entry.decision == palyra::audit::AuditDecision::Deny
                && r.entry.principal == "anonymous")
    );
}

#[tokio::test]
async fn the_matrix_covers_every_rpc_in_the_contract() {
    // Every method the descriptor set declares must have a case above, so a new RPC cannot
    // slip in without a decision on who may call it.
    use prost::Message;
    let fds = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let covered: std::collections::HashSet<String> =
        cases().iter().map(|c| c.name.split(' ').next().unwrap_or_default().to_owned()).collect();
    let mut missing = Vec::new();
    for file in &fds.file {
        for service in &file.service {
            for method in &service.method {
                let name = format!("{}.{}/{}", file.package(), service.name(), method.name());
                if !covered.contains(&name) {
                    missing.push(name);
                }
            }
        }
    }
    assert!(missing.is_empty(), "RPCs without a matrix case: {missing:?}");
}
