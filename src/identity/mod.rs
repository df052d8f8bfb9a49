//! Who is who: the node's device identity, the device CA, the types of the paired devices, and
//! the typed principal every request is decided for.
//!
//! - [`device`] — a device's Ed25519/X25519 keys ([`DeviceIdentity`]);
//! - [`sealed`] — the sealed identity store ([`SecretStore`], [`FilesystemSecretStore`]);
//! - [`ca`] — the device CA: server and client certificates, CSR checks;
//! - [`node`] — the node's own identity, CA and server certificate, created on first run.
//!
//! This is the domain only: no gRPC types, no SQL, no Cedar, no gate. The registry service
//! (listing, revocation, renewal, its store trait and its error) is `crate::devices`, which
//! builds on these types; the wire forms and the mapping of [`IdentityError`] to statuses are
//! in `crate::wire`, the policy entities in `crate::policy`.

pub mod ca;
pub mod device;
mod error;
pub mod node;
pub mod sealed;

#[cfg_attr(not(feature = "testkit"), allow(unused_imports))]
pub use ca::DeviceCa;
pub use device::{DeviceIdentity, fingerprint_of, verify_signature};
pub use error::IdentityError;
pub use node::NodeIdentity;
#[cfg_attr(not(feature = "testkit"), allow(unused_imports))]
pub use sealed::{FilesystemSecretStore, InMemorySecretStore, SecretStore};

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use crate::vault::Scope;

/// A device's id: a ULID, written in lower case (it appears in vault scopes, which are lower
/// case, and in Cedar entity uids, which compare as text).
///
/// One id has one spelling. [`DeviceId::parse`] reads either case into the same value, whose
/// [`Display`](fmt::Display) is the canonical (lower-case) form; it refuses a first character
/// above `7`, which the ULID decoder would silently truncate to the same 128 bits as another
/// spelling. [`DeviceId::parse_canonical`] accepts the canonical spelling only, for text that
/// is compared as text (policy literals, certificate SANs the node issued).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(ulid::Ulid);

impl DeviceId {
    /// A fresh id.
    pub fn generate() -> Self {
        DeviceId(ulid::Ulid::generate())
    }

    /// Parses the 26-character text form, in either case. The result prints in the canonical
    /// form, whatever the spelling read.
    pub fn parse(text: &str) -> Result<Self, InvalidDeviceId> {
        if text.len() != 26 {
            return Err(InvalidDeviceId(format!("a device id has 26 characters, got {}", text.len())));
        }
        let ulid = ulid::Ulid::from_string(text).map_err(|e| InvalidDeviceId(format!("not a ULID: {e}")))?;
        // 26 base-32 characters hold 130 bits and a ULID has 128: the decoder drops the top
        // two bits, so `8…`–`z…` would be other spellings of the ids starting `0`–`7`.
        match text.as_bytes()[0] {
            b'0'..=b'7' => Ok(DeviceId(ulid)),
            first => Err(InvalidDeviceId(format!(
                "the first character is {:?}, and a device id starts with 0-7 (a larger one overflows 128 bits)",
                char::from(first)
            ))),
        }
    }

    /// Parses the canonical spelling only: what [`DeviceId::parse`] accepts, in lower case.
    pub fn parse_canonical(text: &str) -> Result<Self, InvalidDeviceId> {
        let id = DeviceId::parse(text)?;
        if id.to_string() != text {
            return Err(InvalidDeviceId(format!("device ids are written in lower case: {id}")));
        }
        Ok(id)
    }

    /// The device's own vault scope, `devices/<id>`.
    pub fn own_scope(&self) -> Scope {
        // Invariant: "devices" and a lower-case ULID both satisfy the scope grammar.
        Scope::parse(&format!("devices/{self}")).unwrap_or_else(|_| unreachable!("device scopes are valid"))
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Spelled on the stack: a device id is formatted into every audit record.
        let mut buf = [0u8; ulid::ULID_LEN];
        let text = self.0.array_to_str(&mut buf);
        text.make_ascii_lowercase();
        f.write_str(text)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

impl FromStr for DeviceId {
    type Err = InvalidDeviceId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeviceId::parse(s)
    }
}

/// A device id that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid device id: {0}")]
pub struct InvalidDeviceId(String);

/// What a paired device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The operator: may do everything.
    Admin,
    /// An app or phone: its own vault subtree and granted scopes.
    Device,
    /// A peer node: the QUIC data plane.
    Node,
}

impl Role {
    /// The role's name, as on the wire and in Cedar (`Palyra::Role::"admin"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Device => "device",
            Role::Node => "node",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "device" => Ok(Role::Device),
            "node" => Ok(Role::Node),
            other => Err(format!("unknown role {other:?}: use admin, device or node")),
        }
    }
}

/// Whether a registered device may still connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceStatus {
    /// Paired and not revoked.
    Active,
    /// Revoked: its certificate is refused.
    Revoked,
}

/// A paired device, as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Its id.
    pub id: DeviceId,
    /// The name it gave when pairing (or "operator").
    pub name: String,
    /// Lowercase hex SHA-256 of its Ed25519 signing key.
    pub fingerprint: String,
    /// Its Ed25519 signing public key.
    pub signing_public_key: [u8; 32],
    /// Its role.
    pub role: Role,
    /// Active or revoked.
    pub status: DeviceStatus,
    /// When it was registered.
    pub paired_at: SystemTime,
    /// When its current certificate expires.
    pub certificate_expires_at: SystemTime,
    /// When it was revoked.
    pub revoked_at: Option<SystemTime>,
    /// Why it was revoked.
    pub revoke_reason: Option<String>,
    /// Vault scopes granted beyond its own `devices/<id>`.
    pub scopes: Vec<Scope>,
}

/// Who is calling, resolved once per request from the verified client certificate and the
/// registry. The gRPC and QUIC edges produce it; the policy engine decides for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No client certificate.
    Anonymous,
    /// A registered, active device.
    Device {
        /// Its id.
        id: DeviceId,
        /// Its role.
        role: Role,
        /// Its fingerprint.
        fingerprint: String,
    },
}

impl Principal {
    /// The device id, for a device.
    pub fn device_id(&self) -> Option<DeviceId> {
        match self {
            Principal::Anonymous => None,
            Principal::Device { id, .. } => Some(*id),
        }
    }

    /// How audit records and logs name it: `anonymous` or `device:<id>`.
    pub fn label(&self) -> String {
        match self {
            Principal::Anonymous => "anonymous".to_owned(),
            Principal::Device { id, .. } => format!("device:{id}"),
        }
    }
}

/// Longest reason an operator may give for revoking a device or rejecting its pairing request
/// (kept with the record, never shown to the device).
pub const MAX_REASON_BYTES: usize = 1024;

/// Domain tag of the renewal proof signature.
pub const RENEWAL_PROOF_TAG: &[u8] = b"palyra-renewal-v1/proof";

/// What a device signs with its Ed25519 key to renew an expired certificate anonymously:
/// `"palyra-renewal-v1/proof" ‖ challenge ‖ SHA-256(CSR DER)` (identity.proto, RenewalProof),
/// binding the proof to the server's fresh challenge and to this request's CSR.
pub fn renewal_proof_message(challenge: &[u8], csr_der: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(RENEWAL_PROOF_TAG.len() + challenge.len() + 32);
    message.extend_from_slice(RENEWAL_PROOF_TAG);
    message.extend_from_slice(challenge);
    message.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, csr_der).as_ref());
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_lower_case_and_parse_either_case() {
        let id = DeviceId::generate();
        let text = id.to_string();
        assert_eq!(text, text.to_lowercase());
        assert_eq!(DeviceId::parse(&text), Ok(id));
        assert_eq!(DeviceId::parse(&text.to_uppercase()), Ok(id));
        assert_eq!(DeviceId::parse(&text.to_uppercase()).map(|id| id.to_string()), Ok(text.clone()));
        assert_eq!(DeviceId::parse_canonical(&text), Ok(id));
        let upper = DeviceId::parse_canonical(&text.to_uppercase()).unwrap_err().to_string();
        assert!(upper.contains("lower case") && upper.contains(&text), "{upper}");
        assert!(DeviceId::parse("short").is_err());
        assert!(DeviceId::parse(&"!".repeat(26)).is_err());
        assert!(DeviceId::parse(&format!("{}\u{e9}", &text[..24])).is_err());
        assert_eq!(id.own_scope().as_str(), format!("devices/{text}"));
    }

    #[test]
    fn one_id_has_one_spelling() {
        // The largest ULID, and every first character above 7 that would alias an id.
        assert!(DeviceId::parse("7zzzzzzzzzzzzzzzzzzzzzzzzz").is_ok());
        let id = DeviceId::generate();
        let text = id.to_string();
        let first = text.as_bytes()[0];
        for alias in ["8", "9", "a", "g", "z", "Z"] {
            let spelled = format!("{alias}{}", &text[1..]);
            let e = DeviceId::parse(&spelled).unwrap_err().to_string();
            assert!(e.contains("starts with 0-7") && e.contains("overflows"), "{spelled}: {e}");
        }
        // Every accepted spelling of one id prints the same.
        for spelled in
            [text.clone(), text.to_uppercase(), format!("{}{}", char::from(first), &text[1..].to_uppercase())]
        {
            assert_eq!(DeviceId::parse(&spelled).map(|d| d.to_string()), Ok(text.clone()));
        }
    }

    #[test]
    fn roles_round_trip() {
        for role in [Role::Admin, Role::Device, Role::Node] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().is_err());
    }
}
