//! Pairing requests: what a successful handshake leaves for an admin to decide, and the
//! rules on an admin's decision (the request id, the role and scopes granted, the reason of a
//! rejection).

use std::time::SystemTime;

use super::PairingError;
use crate::identity::{DeviceId, Role};
use crate::vault::Scope;

/// Most scopes one approval may grant.
pub const MAX_GRANTED_SCOPES: usize = 64;
pub use crate::identity::MAX_REASON_BYTES;

/// A pairing request id (a ULID, either case), lower-cased like device ids. (Requests stored
/// before ids were lower case keep their upper-case id; the store finds them either way.)
pub fn request_id(text: &str) -> Result<String, PairingError> {
    if text.len() != 26 || ulid::Ulid::from_string(text).is_err() {
        return Err(PairingError::invalid("request_id", "not a ULID"));
    }
    Ok(text.to_ascii_lowercase())
}

/// A role a pairing may grant: device or node, never admin. Empty → `None`.
pub fn pairable_role(field: &'static str, text: &str) -> Result<Option<Role>, PairingError> {
    if text.is_empty() {
        return Ok(None);
    }
    match text.parse::<Role>() {
        Ok(Role::Admin) => {
            Err(PairingError::invalid(field, "admins are created by `palyra init`, never by pairing"))
        }
        Ok(role) => Ok(Some(role)),
        Err(e) => Err(PairingError::invalid(field, e)),
    }
}

/// The scopes an approval grants: at most [`MAX_GRANTED_SCOPES`], each a valid scope,
/// duplicates dropped (first occurrence kept).
pub fn granted_scopes(scopes: &[String]) -> Result<Vec<Scope>, PairingError> {
    if scopes.len() > MAX_GRANTED_SCOPES {
        return Err(PairingError::invalid("scopes", format!("at most {MAX_GRANTED_SCOPES} scopes")));
    }
    let mut granted = Vec::with_capacity(scopes.len());
    for text in scopes {
        let parsed = Scope::parse(text).map_err(|e| PairingError::invalid("scopes", e.to_string()))?;
        if !granted.contains(&parsed) {
            granted.push(parsed);
        }
    }
    Ok(granted)
}

/// Refuses a rejection reason longer than [`MAX_REASON_BYTES`].
pub fn check_reason(text: &str) -> Result<(), PairingError> {
    if text.len() > MAX_REASON_BYTES {
        return Err(PairingError::invalid("reason", "longer than 1024 bytes"));
    }
    Ok(())
}

/// Where a pairing request stands. Approved, rejected and expired are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestState {
    /// Waiting for an admin.
    Pending,
    /// Approved: the device is registered and its certificate issued.
    Approved,
    /// Rejected by an admin.
    Rejected,
    /// Not decided within 24 hours.
    Expired,
}

impl RequestState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Rejected => "rejected",
            RequestState::Expired => "expired",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => RequestState::Pending,
            "approved" => RequestState::Approved,
            "rejected" => RequestState::Rejected,
            "expired" => RequestState::Expired,
            _ => return None,
        })
    }
}

/// A device's request to join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingRequest {
    /// Its id (a ULID, upper case as generated).
    pub id: String,
    /// The code the handshake used.
    pub code_id: String,
    /// The device's name.
    pub device_name: String,
    /// Lowercase hex SHA-256 of its signing key.
    pub fingerprint: String,
    /// Its Ed25519 signing key (verifies status polls).
    pub signing_public_key: [u8; 32],
    /// Its X25519 agreement key.
    pub agreement_public_key: [u8; 32],
    /// The CSR its certificate is issued from.
    pub csr_pem: String,
    /// The role it gets (the code's, or the approver's override once approved).
    pub role: Role,
    /// As stored; see [`PairingRequest::state_at`].
    pub state: RequestState,
    /// When the handshake finished.
    pub created_at: SystemTime,
    /// When a pending request expires.
    pub expires_at: SystemTime,
    /// When it was decided or expired.
    pub decided_at: Option<SystemTime>,
    /// Where the device paired from.
    pub peer_address: String,
    /// The registered device, once approved.
    pub device_id: Option<DeviceId>,
    /// The issued certificate (PEM), once approved.
    pub certificate_pem: Option<String>,
    /// The admin's reason, once rejected.
    pub reject_reason: String,
    /// Vault scopes granted on approval.
    pub scopes: Vec<Scope>,
}

impl PairingRequest {
    /// The state at `now`: a pending request past its expiry is expired even before a sweep
    /// records it.
    pub fn state_at(&self, now: SystemTime) -> RequestState {
        if self.state == RequestState::Pending && now >= self.expires_at {
            RequestState::Expired
        } else {
            self.state
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_read_either_case_and_are_lower_case_like_device_ids() {
        let id = ulid::Ulid::generate().to_string();
        assert_eq!(request_id(&id).ok(), Some(id.to_ascii_lowercase()));
        assert_eq!(request_id(&id.to_ascii_lowercase()).ok(), Some(id.to_ascii_lowercase()));
        assert!(request_id("not-a-ulid").is_err());
    }
}
