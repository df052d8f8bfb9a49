//! Who is calling and may they: the part of authorization shared by the gRPC and QUIC edges.
//!
//! [`PeerResolver`] maps a client certificate that rustls has verified against the node CA to
//! a typed [`Peer`] through the device registry (unknown or revoked → [`Refusal`]).
//! [`Gate::decide`] asks the one [`PolicyEngine`] `(principal, action, resource)` and records
//! the decision in the audit log. The edges only translate: `rpc/` turns a refusal or denial
//! into a `tonic::Status`, `quic/` into a connection close or an `Error` frame.
//!
//! This module knows no transport and no SQL.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;

use crate::audit::{AuditDecision, AuditEntry};
use crate::identity::{Device, DeviceId, DeviceStatus, Principal, ca};
use crate::policy::{AuthzDecision, PolicyEngine, Resource};
use crate::storage::{AuditLog, Store};
use crate::vault::Scope;

/// The caller of a request.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Who it is.
    pub principal: Principal,
    /// Vault scopes granted to it beyond its own (empty for anonymous).
    pub granted: Arc<[Scope]>,
    /// Its network address, when known.
    pub address: Option<SocketAddr>,
}

impl Peer {
    /// An anonymous peer at `address`.
    pub fn anonymous(address: Option<SocketAddr>) -> Self {
        Peer { principal: Principal::Anonymous, granted: Arc::from(Vec::new()), address }
    }
}

/// Why a verified certificate does not make a peer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The certificate names no registered device.
    #[error("{0}")]
    UnknownDevice(String),
    /// The device is revoked.
    #[error("device {0} is revoked")]
    Revoked(DeviceId),
    /// The registry could not be read (detail logged).
    #[error("internal error")]
    Internal(String),
}

/// Resolves certificates to peers, with the registry cached in memory. Every registry change
/// made by this process goes through [`PeerResolver::invalidate`] (and the QUIC edge also
/// invalidates on each `device.revoked` event), so the cache never serves a revoked device as
/// active.
#[derive(Debug, Clone)]
pub struct PeerResolver {
    store: Store,
    cache: Arc<RwLock<HashMap<DeviceId, Arc<Device>>>>,
}

impl PeerResolver {
    /// A resolver over the registry in `store`.
    pub fn new(store: Store) -> Self {
        PeerResolver { store, cache: Arc::default() }
    }

    /// Forgets what is cached about `id` (call after revoking, renewing, re-granting).
    pub fn invalidate(&self, id: DeviceId) {
        if let Ok(mut cache) = self.cache.write() {
            cache.remove(&id);
        }
    }

    /// The peer presenting `certs` (leaf first; already verified against the node CA), or why
    /// it is refused. No certificate → anonymous.
    pub async fn resolve(
        &self,
        certs: Option<&[CertificateDer<'static>]>,
        address: Option<SocketAddr>,
    ) -> Result<Peer, Refusal> {
        let Some(leaf) = certs.and_then(|c| c.first()) else {
            return Ok(Peer::anonymous(address));
        };
        let Some(id) = ca::device_id_from_certificate(leaf.as_ref()) else {
            return Err(Refusal::UnknownDevice("the client certificate names no palyra device".into()));
        };
        let device = self
            .device(id)
            .await?
            .ok_or_else(|| Refusal::UnknownDevice(format!("device {id} is not registered")))?;
        if device.status == DeviceStatus::Revoked {
            return Err(Refusal::Revoked(id));
        }
        Ok(Peer {
            principal: Principal::Device { id, role: device.role, fingerprint: device.fingerprint.clone() },
            granted: Arc::from(device.scopes.clone()),
            address,
        })
    }

    async fn device(&self, id: DeviceId) -> Result<Option<Arc<Device>>, Refusal> {
        if let Ok(cache) = self.cache.read()
            && let Some(device) = cache.get(&id)
        {
            return Ok(Some(Arc::clone(device)));
        }
        let Some(device) = self.store.device(id).await.map_err(|e| Refusal::Internal(e.to_string()))? else {
            return Ok(None);
        };
        let device = Arc::new(device);
        if let Ok(mut cache) = self.cache.write() {
            cache.insert(id, Arc::clone(&device));
        }
        Ok(Some(device))
    }
}

/// A denied call: what to tell the caller.
#[derive(Debug, Clone)]
pub struct Denied {
    /// Lower-case explanation naming the principal, action and resource; no policy text.
    pub message: String,
}

/// What every authorization needs: the engine, the audit log and the peer resolver.
#[derive(Debug, Clone)]
pub struct Gate {
    /// The one policy engine.
    pub engine: Arc<PolicyEngine>,
    /// Where decisions are recorded.
    pub audit: AuditLog,
    /// Certificates → peers.
    pub peers: PeerResolver,
}

/// Health checks are not audited: load balancers poll them constantly.
fn audited(action: &str) -> bool {
    !action.starts_with("grpc.health.v1.")
}

impl Gate {
    /// Decides `action` on `resource` for `peer` (with an optional Cedar context) and records
    /// the decision.
    pub fn decide(
        &self,
        peer: &Peer,
        action: &str,
        resource: &Resource,
        context: Option<&serde_json::Value>,
    ) -> Result<(), Denied> {
        let decision = self.engine.authorize(&peer.principal, &peer.granted, action, resource, context);
        if audited(action) {
            self.audit.record(AuditEntry {
                at: SystemTime::now(),
                principal: peer.principal.label(),
                action: action.to_owned(),
                resource: resource.to_string(),
                decision: if decision.allow { AuditDecision::Allow } else { AuditDecision::Deny },
                reason: reason_text(&decision),
            });
        }
        if decision.allow {
            return Ok(());
        }
        tracing::info!(principal = %peer.principal.label(), action, resource = %resource, explanation = %decision.explanation, "denied");
        let message = match peer.principal {
            Principal::Anonymous => format!("{action} requires a paired device's client certificate"),
            Principal::Device { .. } => {
                format!("{} may not call {action} on {resource}", peer.principal.label())
            }
        };
        Err(Denied { message })
    }
}

fn reason_text(decision: &AuthzDecision) -> String {
    if decision.determining_policies.is_empty() {
        decision.explanation.clone()
    } else {
        decision.determining_policies.join(",")
    }
}
