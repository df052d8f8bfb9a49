//! Who is calling and may they: the part of authorization shared by the gRPC and QUIC edges.
//!
//! [`PeerResolver`] maps a client certificate that rustls has verified against the node CA to
//! a typed [`Peer`] through the device registry (unknown or revoked → [`Refusal`]).
//! [`Gate::decide`] asks the one [`PolicyEngine`] `(principal, action, resource)` and records
//! the decision in the audit log. The edges only translate a refusal or a denial into their
//! wire's error (`crate::wire::status` for gRPC, a connection close or an `Error` frame for
//! QUIC).
//!
//! `node.rs` builds the one [`Gate`] and hands clones (shared state) to every edge. The
//! registry is read through [`DeviceLookup`], a one-method trait the database implements.
//!
//! This module knows no transport and no SQL.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use tokio::sync::broadcast;

use crate::audit::{Audit, AuditDecision, AuditEntry, AuditUnavailable};
use crate::metrics::Metrics;
use crate::identity::{Device, DeviceId, DeviceStatus, IdentityError, Principal, ca};
use crate::policy::{AuthzDecision, PolicyEngine, Resource, Subject};
use crate::store_error::BoxFuture;
use crate::vault::Scope;

/// The one registry read the resolver needs: a device by id, revoked ones included.
pub(crate) trait DeviceLookup: Send + Sync + fmt::Debug {
    /// The registered device `id`, if any.
    fn device(&self, id: DeviceId) -> BoxFuture<'_, Result<Option<Device>, IdentityError>>;
}

/// The caller of a request.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Who it is.
    pub principal: Principal,
    /// Its registry record (name, status, granted scopes), for a device.
    pub device: Option<Arc<Device>>,
    /// Its network address, when known.
    pub address: Option<SocketAddr>,
}

impl Peer {
    /// An anonymous peer at `address`.
    pub fn anonymous(address: Option<SocketAddr>) -> Self {
        Peer { principal: Principal::Anonymous, device: None, address }
    }
}

/// Why a verified certificate does not make a peer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The certificate names no registered device (`None`: names no device at all).
    #[error("{}", match .0 { Some(id) => format!("device {id} is not registered"), None => "the client certificate names no palyra device".to_owned() })]
    UnknownDevice(Option<DeviceId>),
    /// The device is revoked.
    #[error("device {0} is revoked")]
    Revoked(DeviceId),
    /// The registry could not be read (detail logged).
    #[error("internal error")]
    Internal(String),
}

/// Revocations a slow subscriber may miss before it re-checks the registry instead.
const REVOCATION_BACKLOG: usize = 64;

/// Certificates whose device id [`PeerResolver`] remembers at most; past it, it starts over.
const MAX_REMEMBERED_CERTIFICATES: usize = 1024;

/// A certificate's DER and the device id it names, by [`certificate_slot`].
type CertificateIds = HashMap<u64, (Vec<u8>, DeviceId)>;

/// Resolves certificates to peers, with the registry cached in memory.
///
/// Every registry change made by this process calls [`PeerResolver::invalidate`] (revocations
/// [`PeerResolver::revoked`], which also ends the device's open gRPC streams). A lookup that
/// raced with a change — read the registry before the change committed, and would cache the
/// stale row after the invalidation — is detected by a generation counter and not cached.
#[derive(Debug, Clone)]
pub struct PeerResolver {
    devices: Arc<dyn DeviceLookup>,
    cache: Arc<RwLock<HashMap<DeviceId, Arc<Device>>>>,
    generation: Arc<AtomicU64>,
    revocations: broadcast::Sender<DeviceId>,
    /// Revocations announced so far (see [`PeerResolver::revocation_epoch`]).
    revoked_count: Arc<AtomicU64>,
    /// The device id each certificate names: a pure function of its DER, remembered (with the
    /// whole DER, compared in full on every hit) so that a connection's requests parse its
    /// certificate once. Keyed by [`certificate_slot`], a cheap digest of the DER; a clash
    /// only costs a parse. Never decides by itself: every request still looks its device up
    /// (status included) in the registry cache, which a revocation invalidates at once.
    /// Bounded; past the bound it starts over.
    ids: Arc<RwLock<CertificateIds>>,
}

impl PeerResolver {
    /// A resolver over the registry `devices`.
    pub(crate) fn new(devices: Arc<dyn DeviceLookup>) -> Self {
        PeerResolver {
            devices,
            cache: Arc::default(),
            generation: Arc::default(),
            revocations: broadcast::channel(REVOCATION_BACKLOG).0,
            revoked_count: Arc::default(),
            ids: Arc::default(),
        }
    }

    /// Forgets what is cached about `id`. Call it after every change to the device's row
    /// (revocation, renewal, granted scopes), once the change has committed.
    pub fn invalidate(&self, id: DeviceId) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut cache) = self.cache.write() {
            cache.remove(&id);
        }
    }

    /// After device `id` was revoked in the registry: forgets it and tells every open stream
    /// of that device to end (see `rpc::streams`).
    pub fn revoked(&self, id: DeviceId) {
        self.invalidate(id);
        // Counted before it is sent: whoever subscribes after the send sees the count moved.
        self.revoked_count.fetch_add(1, Ordering::SeqCst);
        // No receiver means no open stream: nothing to end.
        let _ = self.revocations.send(id);
    }

    /// How many revocations were announced so far. A response that takes it before resolving
    /// its peer and finds it unchanged after [`PeerResolver::subscribe`] missed none (see
    /// `rpc::streams`).
    pub fn revocation_epoch(&self) -> u64 {
        self.revoked_count.load(Ordering::SeqCst)
    }

    /// Revocations from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<DeviceId> {
        self.revocations.subscribe()
    }

    /// Whether the registry (not the cache) says `id` is revoked or gone; an unreadable
    /// registry counts as revoked.
    pub async fn is_revoked(&self, id: DeviceId) -> bool {
        !matches!(self.devices.device(id).await, Ok(Some(d)) if d.status == DeviceStatus::Active)
    }

    /// The registry's record of `id` (not the cache), revoked ones included: what
    /// PolicyService.Authorize decides for.
    pub async fn registered(&self, id: DeviceId) -> Result<Option<Device>, IdentityError> {
        self.devices.device(id).await
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
        let Some(id) = self.certificate_device(leaf.as_ref()) else {
            return Err(Refusal::UnknownDevice(None));
        };
        self.resolve_device(id, address).await
    }

    /// The device id `der` names ([`ca::device_id_from_certificate`]), parsed once per
    /// certificate.
    fn certificate_device(&self, der: &[u8]) -> Option<DeviceId> {
        let slot = certificate_slot(der);
        if let Ok(ids) = self.ids.read()
            && let Some((known, id)) = ids.get(&slot)
            && known.as_slice() == der
        {
            return Some(*id);
        }
        let id = ca::device_id_from_certificate(der)?;
        if let Ok(mut ids) = self.ids.write() {
            if ids.len() >= MAX_REMEMBERED_CERTIFICATES {
                ids.clear();
            }
            ids.insert(slot, (der.to_vec(), id));
        }
        Some(id)
    }

    /// The peer acting as registered device `id` (authenticated by other means than a
    /// certificate: the console's session), or why it is refused.
    pub async fn resolve_device(&self, id: DeviceId, address: Option<SocketAddr>) -> Result<Peer, Refusal> {
        let device = self.device(id).await?.ok_or(Refusal::UnknownDevice(Some(id)))?;
        if device.status == DeviceStatus::Revoked {
            return Err(Refusal::Revoked(id));
        }
        Ok(Peer {
            principal: Principal::Device { id, role: device.role, fingerprint: device.fingerprint.clone() },
            device: Some(device),
            address,
        })
    }

    async fn device(&self, id: DeviceId) -> Result<Option<Arc<Device>>, Refusal> {
        if let Ok(cache) = self.cache.read()
            && let Some(device) = cache.get(&id)
        {
            return Ok(Some(Arc::clone(device)));
        }
        let before = self.generation.load(Ordering::SeqCst);
        let Some(device) = self.devices.device(id).await.map_err(|e| Refusal::Internal(e.to_string()))?
        else {
            return Ok(None);
        };
        let device = Arc::new(device);
        if let Ok(mut cache) = self.cache.write()
            && self.generation.load(Ordering::SeqCst) == before
        {
            cache.insert(id, Arc::clone(&device));
        }
        Ok(Some(device))
    }
}

/// Where [`PeerResolver`] keeps what a certificate names: its length and last 8 bytes (the
/// tail of its signature, which differs between any two certificates the node issued). Not a
/// security boundary: a hit is compared with the whole DER.
fn certificate_slot(der: &[u8]) -> u64 {
    let mut tail = [0u8; 8];
    let start = der.len().saturating_sub(tail.len());
    tail[..der.len() - start].copy_from_slice(&der[start..]);
    u64::from_le_bytes(tail) ^ (der.len() as u64).rotate_left(48)
}

/// A denied call: what to tell the caller.
#[derive(Debug, Clone)]
pub struct Denied {
    /// Why it was refused.
    pub kind: DenialKind,
    /// Lower-case explanation naming the principal, action and resource; no policy text.
    pub message: String,
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DenialKind {
    /// The policy engine denied it (and the denial is recorded).
    Policy,
    /// The audit log cannot record it (appends failing, or its integrity check failed at
    /// start): a call that would go unrecorded is refused.
    AuditUnavailable,
    /// An anonymous caller's address is over its rate of audited calls: refused without a
    /// record (a summary record counts them).
    RateLimited,
}

impl Denied {
    fn audit_unavailable(e: AuditUnavailable) -> Self {
        Denied { kind: DenialKind::AuditUnavailable, message: e.0 }
    }
}

/// What every authorization needs: the engine, the audit log and the peer resolver. Built
/// once (`node.rs`); clones share everything.
#[derive(Debug, Clone)]
pub struct Gate {
    /// The one policy engine.
    pub engine: Arc<PolicyEngine>,
    /// Where decisions are recorded.
    pub audit: Audit,
    /// Certificates → peers.
    pub peers: PeerResolver,
    /// Counts every decision (`palyra_authz_decisions_total`).
    pub metrics: Metrics,
}

/// Health checks are not audited: load balancers poll them constantly.
fn audited(action: &str) -> bool {
    !action.starts_with("grpc.health.v1.")
}

impl Gate {
    /// Decides `action` on `resource` for `peer` (with an optional Cedar context) and records
    /// the decision. The subject is the peer's registry record, so live decisions see the same
    /// name, status and granted scopes as PolicyService.Authorize does.
    pub fn decide(
        &self,
        peer: &Peer,
        action: &str,
        resource: &Resource,
        context: Option<&serde_json::Value>,
    ) -> Result<(), Denied> {
        self.decide_as(peer, action, resource, context, Record::Now).map(drop)
    }

    /// [`Gate::decide`] for the resource decision of a call whose method decision was held
    /// (`held`, taken from the request): the two are recorded as one record (see
    /// [`HeldAllow`]). Without a held decision, or one of another action, as [`Gate::decide`].
    pub fn decide_after(
        &self,
        peer: &Peer,
        action: &str,
        resource: &Resource,
        held: Option<&HeldAllow>,
    ) -> Result<(), Denied> {
        let record = match held.and_then(|h| h.take()) {
            Some(method) if method.action == action => Record::With(method),
            Some(method) => {
                // Not this call's method: recorded on its own, as it would have been.
                method.record().map_err(Denied::audit_unavailable)?;
                Record::Now
            }
            None => Record::Now,
        };
        self.decide_as(peer, action, resource, None, record).map(drop)
    }

    /// The method decision of a call (`action` on [`Resource::Node`]) whose handler makes a
    /// resource decision first thing: an allow for a device is not recorded but returned, to be
    /// held ([`HeldAllow::new`]) and recorded with that resource decision, in a place of the
    /// audit queue taken now ([`Audit::reserve`](crate::audit::Audit::reserve)): refused, as a
    /// record would be, while the log cannot record or its queue is full, and never refused
    /// later. Denials, anonymous callers and unaudited actions are recorded (or not) as
    /// [`Gate::decide`] does.
    pub fn decide_method_held(&self, peer: &Peer, action: &'static str) -> Result<Option<HeldEntry>, Denied> {
        let record = match peer.principal {
            Principal::Device { .. } => Record::Hold(action),
            Principal::Anonymous => Record::Now,
        };
        self.decide_as(peer, action, &Resource::Node, None, record)
    }

    fn decide_as(
        &self,
        peer: &Peer,
        action: &str,
        resource: &Resource,
        context: Option<&serde_json::Value>,
        record: Record,
    ) -> Result<Option<HeldEntry>, Denied> {
        let subject = match &peer.device {
            Some(device) => Subject::device(device),
            None => Subject::Anonymous,
        };
        let audited = audited(action);
        // Only an audited device decision shares its record with a held one (the only kind
        // `decide_method_held` holds); anything else records the held decision on its own.
        let record = match record {
            Record::With(method) if !audited || matches!(peer.principal, Principal::Anonymous) => {
                method.record().map_err(Denied::audit_unavailable)?;
                Record::Now
            }
            record => record,
        };
        // Anonymous callers are bounded per address before they cost a record (or a policy
        // evaluation); authenticated callers never are.
        if audited
            && matches!(peer.principal, Principal::Anonymous)
            && !self.audit.admit_anonymous(peer.address)
        {
            return Err(Denied {
                kind: DenialKind::RateLimited,
                message: "too many anonymous calls from this address; slow down".to_owned(),
            });
        }
        let decision = self.engine.authorize_subject(&subject, action, resource, context);
        // Method names come from the request: record and echo a bounded prefix.
        let action = bounded(action);
        if audited {
            let reason = reason_text(&decision);
            let at = SystemTime::now();
            let (principal, reason, slot) = match record {
                // An allowed method decision asked to be held is returned, not recorded. Not
                // recorded yet: its place in the queue is taken now, so an unrecordable call is
                // refused here and the record cannot be refused later. Its action and resource
                // are known (a held action, the node): no text is made for them unless it is
                // recorded alone.
                Record::Hold(held_action) if decision.allow => {
                    let slot = self.audit.reserve().map_err(Denied::audit_unavailable)?;
                    let principal = peer.principal.label();
                    let held = HeldEntry { at, principal, action: held_action, reason, slot };
                    return self.allowed(peer, &action, resource, Some(held));
                }
                // The method decision and this one, as one record, in the place the method
                // decision took.
                Record::With(method) => (
                    method.principal,
                    format!("method: {}; resource: {reason}", method.reason),
                    Some(method.slot),
                ),
                Record::Hold(_) | Record::Now => (peer.principal.label(), reason, None),
            };
            let entry = AuditEntry {
                at,
                principal,
                action: action.clone().into_owned(),
                resource: resource.to_string(),
                decision: if decision.allow { AuditDecision::Allow } else { AuditDecision::Deny },
                reason,
            };
            match slot {
                // The combined record always goes in (its place was taken when the method was
                // allowed); the call still fails closed while the log cannot append.
                Some(slot) => {
                    slot.record(entry).map_err(Denied::audit_unavailable)?;
                    self.audit.available().map_err(Denied::audit_unavailable)?;
                }
                // No record, no call: an unrecordable decision refuses (fail closed).
                None => self.audit.record(entry).map_err(Denied::audit_unavailable)?,
            }
        }
        if decision.allow {
            return self.allowed(peer, &action, resource, None);
        }
        self.metrics.decision(false);
        // The same disclosure as the audit record: who, which method, on what; never a value.
        tracing::info!(method = %action, principal = %peer.principal.label(), decision = "deny", resource = %resource, explanation = %decision.explanation, "denied");
        let message = match peer.principal {
            Principal::Anonymous => format!("{action} requires a paired device's client certificate"),
            Principal::Device { .. } => {
                format!("{} may not call {action} on {resource}", peer.principal.label())
            }
        };
        Err(Denied { kind: DenialKind::Policy, message })
    }

    /// An allow: counted, logged (the same disclosure as its audit record: who, which method,
    /// on what; never a value), `held` handed back.
    fn allowed(&self, peer: &Peer, action: &str, resource: &Resource, held: Option<HeldEntry>) -> Result<Option<HeldEntry>, Denied> {
        self.metrics.decision(true);
        tracing::debug!(method = %action, principal = %peer.principal.label(), decision = "allow", resource = %resource, "allowed");
        Ok(held)
    }

    /// Records what a service did on its own authority (not a policy decision, e.g. a device
    /// enrolled with an enrollment key), in the commit of the next write; refuses while the
    /// audit log cannot record.
    pub fn record(&self, entry: AuditEntry) -> Result<(), Denied> {
        self.audit.record(entry).map_err(Denied::audit_unavailable)
    }

    /// Before a write: refuses while the audit log cannot record. The write itself needs no
    /// round trip: the store's batch that takes it appends every record queued before it in
    /// the same transaction (see [`Audit::before_write`]).
    pub async fn audit_before_write(&self) -> Result<(), Denied> {
        self.audit.before_write().map_err(Denied::audit_unavailable)
    }
}

/// How [`Gate::decide_as`] records its decision.
enum Record {
    /// As one record now.
    Now,
    /// An allow of this held action is returned unrecorded, to be held; anything else is
    /// recorded now.
    Hold(&'static str),
    /// With this held method decision, as one record now.
    With(HeldEntry),
}

/// An allowed method decision on the node not yet recorded, and the place in the audit queue
/// kept for it.
#[derive(Debug)]
pub struct HeldEntry {
    at: SystemTime,
    principal: String,
    action: &'static str,
    reason: String,
    slot: crate::audit::AuditSlot,
}

impl HeldEntry {
    /// Records the method decision on its own, in its place.
    fn record(self) -> Result<(), crate::audit::AuditUnavailable> {
        self.slot.record(AuditEntry {
            at: self.at,
            principal: self.principal,
            action: self.action.to_owned(),
            resource: Resource::Node.to_string(),
            decision: AuditDecision::Allow,
            reason: self.reason,
        })
    }
}

/// A method decision the gate allowed and did not record, held in the request for the
/// resource decision its handler makes first thing ([`Gate::decide_after`]): the two are one
/// audit record (the resource decision's resource and decision, the determining policies of
/// both in its reason). Dropped untaken (the handler failed before its resource decision, its
/// request did not decode, or the client went away), it records the method decision alone, so
/// every call the gate let through has its record. Clones share the one decision.
#[derive(Debug, Clone)]
pub struct HeldAllow(Arc<Held>);

#[derive(Debug)]
struct Held {
    entry: std::sync::Mutex<Option<HeldEntry>>,
}

impl HeldAllow {
    /// Holds `entry` (from [`Gate::decide_method_held`], with its place in the audit queue)
    /// until a resource decision takes it, or records it when the last clone is dropped.
    pub fn new(entry: HeldEntry) -> Self {
        HeldAllow(Arc::new(Held { entry: std::sync::Mutex::new(Some(entry)) }))
    }

    fn take(&self) -> Option<HeldEntry> {
        self.0.entry.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let entry = self.entry.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        // Its place in the queue was kept: only a stopped audit writer (the node shutting
        // down) can refuse it. The call ended before its resource decision, so it touched
        // nothing.
        if let Some(entry) = entry
            && let Err(e) = entry.record()
        {
            tracing::error!(error = %e.0, "a held method decision could not be recorded");
        }
    }
}

/// Scopes a [`ScopeDecisions`] remembers at most; past it, it starts over.
const MAX_REMEMBERED_SCOPES: usize = 4096;

/// One peer's decisions on one action over many scopes (the sub-scopes a recursive watch
/// reaches): each scope is decided through [`Gate::decide`], so recorded, once while the same
/// policy set is in force; a new set starts over, so an update takes effect at the next
/// change. Only policy decisions are remembered: an audit refusal is asked again.
#[derive(Debug)]
pub struct ScopeDecisions {
    gate: Gate,
    peer: Peer,
    action: String,
    /// The policy version the remembered decisions were made under.
    version: u64,
    known: HashMap<Scope, Result<(), Denied>>,
    /// Decisions made (each audited).
    made: usize,
}

impl ScopeDecisions {
    /// Whether `scope` would be answered from memory (no new decision, no new audit record).
    pub fn remembers(&self, scope: &Scope) -> bool {
        self.version == self.gate.engine.active().0 && self.known.contains_key(scope)
    }

    /// Decisions made (and audited) so far, answers from memory not counted.
    pub fn made(&self) -> usize {
        self.made
    }

    /// Decides `scope`, or answers from memory when it was decided under the set in force.
    pub fn decide(&mut self, scope: &Scope) -> Result<(), Denied> {
        // The version is read before deciding: a decision made under a newer set is at worst
        // asked again, never kept for one it was not made under.
        let version = self.gate.engine.active().0;
        if version != self.version {
            self.known.clear();
            self.version = version;
        }
        if let Some(known) = self.known.get(scope) {
            return known.clone();
        }
        self.made += 1;
        let decision = self.gate.decide(&self.peer, &self.action, &Resource::Scope(scope.clone()), None);
        if matches!(&decision, Err(denied) if denied.kind != DenialKind::Policy) {
            return decision;
        }
        if self.known.len() >= MAX_REMEMBERED_SCOPES {
            self.known.clear();
        }
        self.known.insert(scope.clone(), decision.clone());
        decision
    }
}

impl Gate {
    /// `peer`'s decisions on `action` over scopes, each made once per policy version.
    pub fn scope_decisions(&self, peer: Peer, action: &str) -> ScopeDecisions {
        ScopeDecisions {
            gate: self.clone(),
            peer,
            action: action.to_owned(),
            version: self.engine.active().0,
            known: HashMap::new(),
            made: 0,
        }
    }
}

/// At most 200 bytes of `action`, cut at a character boundary.
fn bounded(action: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 200;
    if action.len() <= MAX {
        return action.into();
    }
    let mut end = MAX;
    while !action.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &action[..end]).into()
}

fn reason_text(decision: &AuthzDecision) -> String {
    if decision.determining_policies.is_empty() {
        decision.explanation.clone()
    } else {
        decision.determining_policies.join(",")
    }
}
