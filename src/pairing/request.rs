//! Pairing requests: what a successful handshake leaves for an admin to decide.

use std::time::SystemTime;

use crate::identity::{DeviceId, Role};
use crate::vault::Scope;

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
