//! The action ids of the schema, as constants for the edges that ask the engine.
//!
//! An action id is the full gRPC method without the leading slash (what tonic's request URI
//! path carries after `/`), or the QUIC method name. [`ALL`] lists every one; a test checks it
//! against the schema and against every `rpc` in `proto/`. Groups are actions too; policies
//! speak of them with `action in Palyra::Action::"<group>"`.

/// `grpc.health.v1.Health/Check`.
pub const HEALTH_CHECK: &str = "grpc.health.v1.Health/Check";
/// `grpc.health.v1.Health/Watch`.
pub const HEALTH_WATCH: &str = "grpc.health.v1.Health/Watch";
/// Server reflection v1.
pub const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
/// Server reflection v1alpha.
pub const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

/// IdentityService.GetNodeIdentity.
pub const GET_NODE_IDENTITY: &str = "palyra.identity.v1.IdentityService/GetNodeIdentity";
/// IdentityService.WhoAmI.
pub const WHO_AM_I: &str = "palyra.identity.v1.IdentityService/WhoAmI";
/// IdentityService.ListDevices.
pub const LIST_DEVICES: &str = "palyra.identity.v1.IdentityService/ListDevices";
/// IdentityService.GetDevice (resource check: `Resource::Device`).
pub const GET_DEVICE: &str = "palyra.identity.v1.IdentityService/GetDevice";
/// IdentityService.RevokeDevice.
pub const REVOKE_DEVICE: &str = "palyra.identity.v1.IdentityService/RevokeDevice";
/// IdentityService.RenewCertificate (resource check: `Resource::Device`; the anonymous path
/// with context [`RENEWAL_PROOF`]).
pub const RENEW_CERTIFICATE: &str = "palyra.identity.v1.IdentityService/RenewCertificate";
/// IdentityService.GetRenewalChallenge.
pub const GET_RENEWAL_CHALLENGE: &str = "palyra.identity.v1.IdentityService/GetRenewalChallenge";

/// PairingService.CreatePairingCode.
pub const CREATE_PAIRING_CODE: &str = "palyra.pairing.v1.PairingService/CreatePairingCode";
/// PairingService.StartPairing.
pub const START_PAIRING: &str = "palyra.pairing.v1.PairingService/StartPairing";
/// PairingService.FinishPairing.
pub const FINISH_PAIRING: &str = "palyra.pairing.v1.PairingService/FinishPairing";
/// PairingService.GetPairingStatus.
pub const GET_PAIRING_STATUS: &str = "palyra.pairing.v1.PairingService/GetPairingStatus";
/// PairingService.ListPairingRequests.
pub const LIST_PAIRING_REQUESTS: &str = "palyra.pairing.v1.PairingService/ListPairingRequests";
/// PairingService.ApprovePairing.
pub const APPROVE_PAIRING: &str = "palyra.pairing.v1.PairingService/ApprovePairing";
/// PairingService.RejectPairing.
pub const REJECT_PAIRING: &str = "palyra.pairing.v1.PairingService/RejectPairing";
/// PairingService.CreateEnrollmentKey.
pub const CREATE_ENROLLMENT_KEY: &str = "palyra.pairing.v1.PairingService/CreateEnrollmentKey";
/// PairingService.ListEnrollmentKeys.
pub const LIST_ENROLLMENT_KEYS: &str = "palyra.pairing.v1.PairingService/ListEnrollmentKeys";
/// PairingService.RevokeEnrollmentKey.
pub const REVOKE_ENROLLMENT_KEY: &str = "palyra.pairing.v1.PairingService/RevokeEnrollmentKey";

/// VaultService.PutSecret (resource check: `Resource::Scope`).
pub const PUT_SECRET: &str = "palyra.vault.v1.VaultService/PutSecret";
/// VaultService.GetSecret (resource check: `Resource::Scope`).
pub const GET_SECRET: &str = "palyra.vault.v1.VaultService/GetSecret";
/// VaultService.ListSecrets (resource check: `Resource::Scope`).
pub const LIST_SECRETS: &str = "palyra.vault.v1.VaultService/ListSecrets";
/// VaultService.DeleteSecret (resource check: `Resource::Scope`).
pub const DELETE_SECRET: &str = "palyra.vault.v1.VaultService/DeleteSecret";
/// VaultService.GetSecretMetadata (resource check: `Resource::Scope`).
pub const GET_SECRET_METADATA: &str = "palyra.vault.v1.VaultService/GetSecretMetadata";
/// VaultService.RotateKey.
pub const ROTATE_KEY: &str = "palyra.vault.v1.VaultService/RotateKey";
/// VaultService.WatchSecrets (resource check: `Resource::Scope`).
pub const WATCH_SECRETS: &str = "palyra.vault.v1.VaultService/WatchSecrets";

/// PolicyService.Authorize.
pub const AUTHORIZE: &str = "palyra.policy.v1.PolicyService/Authorize";
/// PolicyService.GetPolicySet.
pub const GET_POLICY_SET: &str = "palyra.policy.v1.PolicyService/GetPolicySet";
/// PolicyService.UpdatePolicySet (the action the lockout guard protects).
pub const UPDATE_POLICY_SET: &str = "palyra.policy.v1.PolicyService/UpdatePolicySet";
/// PolicyService.ValidatePolicySet.
pub const VALIDATE_POLICY_SET: &str = "palyra.policy.v1.PolicyService/ValidatePolicySet";
/// PolicyService.ListPolicyVersions.
pub const LIST_POLICY_VERSIONS: &str = "palyra.policy.v1.PolicyService/ListPolicyVersions";
/// PolicyService.RollbackPolicySet.
pub const ROLLBACK_POLICY_SET: &str = "palyra.policy.v1.PolicyService/RollbackPolicySet";

/// AuditService.ListAuditRecords.
pub const LIST_AUDIT_RECORDS: &str = "palyra.audit.v1.AuditService/ListAuditRecords";
/// AuditService.VerifyAuditLog.
pub const VERIFY_AUDIT_LOG: &str = "palyra.audit.v1.AuditService/VerifyAuditLog";
/// AuditService.ExportAuditLog.
pub const EXPORT_AUDIT_LOG: &str = "palyra.audit.v1.AuditService/ExportAuditLog";
/// AuditService.PruneAuditLog.
pub const PRUNE_AUDIT_LOG: &str = "palyra.audit.v1.AuditService/PruneAuditLog";
/// AuditService.GetAuditCheckpoint.
pub const GET_AUDIT_CHECKPOINT: &str = "palyra.audit.v1.AuditService/GetAuditCheckpoint";

/// AuthProfileService.CreateProfile.
pub const CREATE_PROFILE: &str = "palyra.auth.v1.AuthProfileService/CreateProfile";
/// AuthProfileService.ListProfiles.
pub const LIST_PROFILES: &str = "palyra.auth.v1.AuthProfileService/ListProfiles";
/// AuthProfileService.GetProfile.
pub const GET_PROFILE: &str = "palyra.auth.v1.AuthProfileService/GetProfile";
/// AuthProfileService.DeleteProfile.
pub const DELETE_PROFILE: &str = "palyra.auth.v1.AuthProfileService/DeleteProfile";
/// AuthProfileService.StartAuthorization.
pub const START_AUTHORIZATION: &str = "palyra.auth.v1.AuthProfileService/StartAuthorization";
/// AuthProfileService.CompleteAuthorization.
pub const COMPLETE_AUTHORIZATION: &str = "palyra.auth.v1.AuthProfileService/CompleteAuthorization";
/// AuthProfileService.GetAccessToken (resource check: `Resource::Profile`).
pub const GET_ACCESS_TOKEN: &str = "palyra.auth.v1.AuthProfileService/GetAccessToken";
/// AuthProfileService.RevokeProfile.
pub const REVOKE_PROFILE: &str = "palyra.auth.v1.AuthProfileService/RevokeProfile";

/// ConsoleService.CreateLoginToken.
pub const CREATE_LOGIN_TOKEN: &str = "palyra.console.v1.ConsoleService/CreateLoginToken";

/// QUIC `node.health`.
pub const NODE_HEALTH: &str = "node.health";
/// QUIC `node.stream_events`.
pub const NODE_STREAM_EVENTS: &str = "node.stream_events";
/// QUIC `node.audit_checkpoint`.
pub const NODE_AUDIT_CHECKPOINT: &str = "node.audit_checkpoint";

/// The context key of RenewCertificate's anonymous path: `{"renewal_proof": true}` once the
/// handler has verified the proof for the resource device.
#[cfg_attr(not(feature = "testkit"), allow(dead_code))]
pub const RENEWAL_PROOF: &str = "renewal_proof";

/// Every requestable action (groups excluded).
pub const ALL: &[&str] = &[
    HEALTH_CHECK,
    HEALTH_WATCH,
    REFLECTION_V1,
    REFLECTION_V1ALPHA,
    GET_NODE_IDENTITY,
    WHO_AM_I,
    LIST_DEVICES,
    GET_DEVICE,
    REVOKE_DEVICE,
    RENEW_CERTIFICATE,
    GET_RENEWAL_CHALLENGE,
    CREATE_PAIRING_CODE,
    START_PAIRING,
    FINISH_PAIRING,
    GET_PAIRING_STATUS,
    LIST_PAIRING_REQUESTS,
    APPROVE_PAIRING,
    REJECT_PAIRING,
    CREATE_ENROLLMENT_KEY,
    LIST_ENROLLMENT_KEYS,
    REVOKE_ENROLLMENT_KEY,
    PUT_SECRET,
    GET_SECRET,
    LIST_SECRETS,
    DELETE_SECRET,
    GET_SECRET_METADATA,
    ROTATE_KEY,
    WATCH_SECRETS,
    AUTHORIZE,
    GET_POLICY_SET,
    UPDATE_POLICY_SET,
    VALIDATE_POLICY_SET,
    LIST_POLICY_VERSIONS,
    ROLLBACK_POLICY_SET,
    LIST_AUDIT_RECORDS,
    VERIFY_AUDIT_LOG,
    EXPORT_AUDIT_LOG,
    PRUNE_AUDIT_LOG,
    GET_AUDIT_CHECKPOINT,
    CREATE_PROFILE,
    LIST_PROFILES,
    GET_PROFILE,
    DELETE_PROFILE,
    START_AUTHORIZATION,
    COMPLETE_AUTHORIZATION,
    GET_ACCESS_TOKEN,
    REVOKE_PROFILE,
    CREATE_LOGIN_TOKEN,
    NODE_HEALTH,
    NODE_STREAM_EVENTS,
    NODE_AUDIT_CHECKPOINT,
];

/// The action groups of the schema.
#[cfg_attr(not(feature = "testkit"), allow(dead_code))]
pub const GROUPS: &[&str] = &[
    "public",
    "reflection",
    "self",
    "admin",
    "quic",
    "vault",
    "vault.read",
    "vault.write",
    "auth",
    "auth.manage",
    "auth.token",
];
