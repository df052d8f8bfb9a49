//! The operator's actions on pairing and on the device registry, shared by the two edges that
//! offer them: the gRPC services (`rpc/pairing.rs`, `rpc/identity.rs`) and the web console
//! (`console/`). Each action validates its input, asks the [`Gate`] about the resource it
//! touches (the method gate is the edge's: a tower layer for gRPC, the console's handler),
//! makes the queued audit records durable before it writes, calls the store, and keeps the
//! peer cache current.
//!
//! This module knows no transport and no SQL; errors are [`AdminError`], mapped to the wire
//! by each edge in its one place.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::access::{Denied, Gate, Peer};
use crate::identity::ca::DEFAULT_CLIENT_CERT_VALIDITY;
use crate::identity::{Device, DeviceId, DeviceStatus, IdentityError, NodeIdentity, Role};
use crate::pairing::code::seal_pin;
use crate::pairing::handshake::code_expiry;
use crate::pairing::{
    CodeId, CodeState, DEFAULT_ATTEMPTS, DEFAULT_CODE_TTL, MAX_ATTEMPTS, PairingCode, PairingError,
    PairingRequest, PairingUri, Pin, RequestState,
};
use crate::policy::{Resource, actions};
use crate::storage::Store;
use crate::vault::{KeyHierarchy, Scope};

/// Most scopes one approval may grant.
pub const MAX_GRANTED_SCOPES: usize = 64;
/// Longest reason for a rejection or a revocation.
pub const MAX_REASON_BYTES: usize = 1024;

/// Why an operator action failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// A pairing rule or argument (`InvalidArgument` names the field).
    #[error(transparent)]
    Pairing(#[from] PairingError),
    /// A registry or certificate error.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The resource check refused.
    #[error("{}", .0.message)]
    Denied(Denied),
    /// The caller tried to revoke the device it calls with.
    #[error("refusing to revoke the device making the call: you would lock yourself out")]
    SelfRevocation,
    /// Storage failed (detail logged by the edge, not sent).
    #[error("internal error")]
    Internal(String),
}

impl From<crate::storage::StorageError> for AdminError {
    fn from(e: crate::storage::StorageError) -> Self {
        AdminError::Internal(e.to_string())
    }
}

/// A pairing code just made: everything to show the operator once. Holds the PIN: `Debug`
/// redacts it (through [`Pin`] and [`PairingUri`]).
#[derive(Debug, Clone)]
pub struct CreatedCode {
    /// The code, its PIN and the node's address and CA fingerprint.
    pub uri: PairingUri,
    /// The role a device paired with it gets.
    pub role: Role,
    /// When it stops being accepted.
    pub expires_at: SystemTime,
    /// PIN attempts before it burns.
    pub max_attempts: u32,
}

/// The operator's actions.
#[derive(Debug, Clone)]
pub struct Admin {
    identity: Arc<NodeIdentity>,
    store: Store,
    keys: Arc<KeyHierarchy>,
    gate: Gate,
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

/// A pairing request id (a ULID), upper-cased.
pub fn request_id(text: &str) -> Result<String, PairingError> {
    if text.len() != 26 || ulid::Ulid::from_string(text).is_err() {
        return Err(PairingError::invalid("request_id", "not a ULID"));
    }
    Ok(text.to_ascii_uppercase())
}

fn reason(text: &str) -> Result<(), PairingError> {
    if text.len() > MAX_REASON_BYTES {
        return Err(PairingError::invalid("reason", "longer than 1024 bytes"));
    }
    Ok(())
}

impl Admin {
    /// The actions over `identity` (the CA), `store`, PINs sealed with `keys`, resource checks
    /// and audit through `gate`.
    pub fn new(identity: Arc<NodeIdentity>, store: Store, keys: Arc<KeyHierarchy>, gate: Gate) -> Self {
        Admin { identity, store, keys, gate }
    }

    /// The gate the actions ask.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// A single-use pairing code for `role` (empty: device), living `ttl` (default 10 min,
    /// 30 s–24 h), with `max_attempts` PIN attempts (default 5, 1–10); `server` is the
    /// `HOST:PORT` its URI names.
    pub async fn create_pairing_code(
        &self,
        role: &str,
        ttl: Option<Duration>,
        max_attempts: Option<u32>,
        server: String,
    ) -> Result<CreatedCode, AdminError> {
        let now = SystemTime::now();
        let expires_at = code_expiry(now, ttl.unwrap_or(DEFAULT_CODE_TTL))?;
        let role = pairable_role("role", role)?.unwrap_or(Role::Device);
        let max_attempts = max_attempts.unwrap_or(DEFAULT_ATTEMPTS);
        if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
            return Err(PairingError::invalid("max_attempts", "a code allows 1 to 10 attempts").into());
        }
        self.store.expire_pairing(now).await?;
        let code_id = CodeId::generate()?;
        let pin = Pin::generate()?;
        let sealed = seal_pin(&self.keys.internal_seal_key(), &code_id, &pin)?;
        let code = PairingCode {
            code_id: code_id.clone(),
            sealed_pin: Some(sealed),
            role,
            created_at: now,
            expires_at,
            max_attempts,
            attempts_left: max_attempts,
            state: CodeState::Active,
        };
        self.store.insert_pairing_code(&code).await?;
        tracing::info!(code_id = %code_id, role = %role, max_attempts, "pairing code created");
        let uri =
            PairingUri { server, code_id, pin, ca_fingerprint: self.identity.ca().fingerprint().to_owned() };
        Ok(CreatedCode { uri, role, expires_at, max_attempts })
    }

    /// Pairing requests (newest first), optionally in one state; expired ones are marked first.
    pub async fn pairing_requests(
        &self,
        state: Option<RequestState>,
    ) -> Result<Vec<PairingRequest>, AdminError> {
        let now = SystemTime::now();
        self.store.expire_pairing(now).await?;
        Ok(self.store.pairing_requests(state, now).await?)
    }

    /// Approves pending request `id` for `approver`: registers the device ACTIVE with `role`
    /// (empty: the code's) and the granted `scopes`, and issues its certificate from the CSR.
    pub async fn approve_pairing(
        &self,
        approver: &Peer,
        id: &str,
        role: &str,
        scopes: &[String],
    ) -> Result<PairingRequest, AdminError> {
        let id = request_id(id)?;
        let override_role = pairable_role("role", role)?;
        if scopes.len() > MAX_GRANTED_SCOPES {
            return Err(
                PairingError::invalid("scopes", format!("at most {MAX_GRANTED_SCOPES} scopes")).into()
            );
        }
        let mut granted = Vec::with_capacity(scopes.len());
        for text in scopes {
            let parsed = Scope::parse(text).map_err(|e| PairingError::invalid("scopes", e.to_string()))?;
            if !granted.contains(&parsed) {
                granted.push(parsed);
            }
        }
        let now = SystemTime::now();
        let pending = self
            .store
            .pairing_request(&id)
            .await?
            .ok_or_else(|| PairingError::RequestNotFound(id.clone()))?;
        let state = pending.state_at(now);
        if state != RequestState::Pending {
            return Err(PairingError::RequestNotPending { id, state: state.as_str() }.into());
        }
        let role = override_role.unwrap_or(pending.role);
        let device_id = DeviceId::generate();
        let issued = self.identity.ca().issue_client_certificate(
            &pending.csr_pem,
            device_id,
            role,
            DEFAULT_CLIENT_CERT_VALIDITY,
            now,
        )?;
        let device = Device {
            id: device_id,
            name: pending.device_name.clone(),
            fingerprint: pending.fingerprint.clone(),
            signing_public_key: pending.signing_public_key,
            role,
            status: DeviceStatus::Active,
            paired_at: now,
            certificate_expires_at: issued.not_after,
            revoked_at: None,
            revoke_reason: None,
            scopes: granted,
        };
        self.gate.audit_before_write().await.map_err(AdminError::Denied)?;
        let approved = self.store.approve_pairing(&id, &device, &issued.cert_pem, now).await??;
        self.gate.peers.invalidate(device_id);
        let approver = approver.principal.label();
        tracing::info!(request_id = %id, device_id = %device_id, role = %role, approver = %approver, "pairing approved");
        Ok(approved)
    }

    /// Rejects pending request `id` with `reason` (kept; not shown to the device).
    pub async fn reject_pairing(&self, id: &str, why: &str) -> Result<PairingRequest, AdminError> {
        let id = request_id(id)?;
        reason(why)?;
        let now = SystemTime::now();
        self.gate.audit_before_write().await.map_err(AdminError::Denied)?;
        let rejected = self.store.reject_pairing(&id, why, now).await??;
        tracing::info!(request_id = %id, reason = %why, "pairing rejected");
        Ok(rejected)
    }

    /// Revokes device `id` for `caller` (resource check on the device; never the caller's own
    /// device): its next request is refused and its open streams end.
    pub async fn revoke_device(&self, caller: &Peer, id: DeviceId, why: &str) -> Result<Device, AdminError> {
        reason(why)?;
        self.gate
            .decide(caller, actions::REVOKE_DEVICE, &Resource::Device(id), None)
            .map_err(AdminError::Denied)?;
        if caller.principal.device_id() == Some(id) {
            return Err(AdminError::SelfRevocation);
        }
        self.gate.audit_before_write().await.map_err(AdminError::Denied)?;
        let device = self.store.revoke_device(id, why, SystemTime::now()).await?;
        self.gate.peers.revoked(id);
        tracing::warn!(device_id = %id, reason = %why, "device revoked");
        Ok(device)
    }
}
