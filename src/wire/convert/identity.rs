//! `palyra.identity.v1`: devices as the wire shows them, the node's identity, who the caller is,
//! and certificate renewal (the proof a device sends, the challenge and certificate it gets).

use super::timestamp;
use crate::devices::{RenewalChallenge, RenewalProof};
use crate::identity::ca::IssuedCert;
use crate::identity::{Device, DeviceStatus, NodeIdentity, Principal};
use crate::pairing::DeviceName;
use crate::wire::pb::identity::v1 as pb;

impl From<&Device> for pb::Device {
    fn from(d: &Device) -> Self {
        pb::Device {
            device_id: d.id.to_string(),
            name: DeviceName::shown(&d.name),
            fingerprint: d.fingerprint.clone(),
            role: d.role.to_string(),
            status: match d.status {
                DeviceStatus::Active => pb::DeviceStatus::Active,
                DeviceStatus::Revoked => pb::DeviceStatus::Revoked,
            } as i32,
            paired_at: Some(timestamp(d.paired_at)),
            certificate_expires_at: Some(timestamp(d.certificate_expires_at)),
            revoked_at: d.revoked_at.map(timestamp),
            revoke_reason: d.revoke_reason.clone().unwrap_or_default(),
            scopes: d.scopes.iter().map(ToString::to_string).collect(),
        }
    }
}

impl From<&NodeIdentity> for pb::GetNodeIdentityResponse {
    fn from(node: &NodeIdentity) -> Self {
        let device = node.device();
        pb::GetNodeIdentityResponse {
            device_id: node.id().to_string(),
            signing_public_key: device.signing_public_key().to_vec(),
            agreement_public_key: device.agreement_public_key().to_vec(),
            fingerprint: device.fingerprint(),
            ca_certificate_pem: node.ca().certificate_pem().to_owned(),
            ca_fingerprint: node.ca().fingerprint().to_owned(),
        }
    }
}

impl From<Principal> for pb::WhoAmIResponse {
    fn from(principal: Principal) -> Self {
        match principal {
            Principal::Anonymous => {
                pb::WhoAmIResponse { principal_type: "Anonymous".into(), ..Default::default() }
            }
            Principal::Device { id, role, fingerprint } => pb::WhoAmIResponse {
                principal_type: "Device".into(),
                device_id: id.to_string(),
                role: role.to_string(),
                fingerprint,
            },
        }
    }
}

/// RenewCertificate's `proof`, as sent (the registry parses its device id once it knows a
/// proof is how this caller renews).
impl From<pb::RenewalProof> for RenewalProof {
    fn from(p: pb::RenewalProof) -> Self {
        RenewalProof { device_id: p.device_id, challenge: p.challenge, signature: p.signature }
    }
}

/// RenewCertificate's reply: the certificate issued, with the CA that issued it.
pub(crate) fn renewed_certificate(
    issued: IssuedCert,
    ca_certificate_pem: &str,
) -> pb::RenewCertificateResponse {
    pb::RenewCertificateResponse {
        certificate_pem: issued.cert_pem,
        ca_certificate_pem: ca_certificate_pem.to_owned(),
        expires_at: Some(timestamp(issued.not_after)),
    }
}

impl From<RenewalChallenge> for pb::GetRenewalChallengeResponse {
    fn from(issued: RenewalChallenge) -> Self {
        pb::GetRenewalChallengeResponse {
            challenge: issued.challenge.to_vec(),
            expires_at: Some(timestamp(issued.expires_at)),
        }
    }
}
