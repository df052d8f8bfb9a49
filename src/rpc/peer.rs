//! Who is on the other end of a connection: the typed [`Peer`], resolved once per request from
//! the client certificate rustls verified and the device registry.
//!
//! rustls has already checked that a presented certificate chains to the node CA (with the
//! client-auth EKU). Here the certificate's `palyra://device/<id>` SAN is mapped to the
//! registry: unknown → `UNAUTHENTICATED` + `UNKNOWN_DEVICE`; revoked → `UNAUTHENTICATED` +
//! `DEVICE_REVOKED`; no certificate → [`Principal::Anonymous`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls_pki_types::CertificateDer;
use tokio::sync::broadcast;
use tonic::Status;

use super::status::{device_revoked, internal, unknown_device};
use crate::identity::{Device, DeviceId, DeviceStatus, Principal, ca};
use crate::storage::Store;

/// The caller of a request, in the request's extensions.
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

/// Resolves certificates to peers, with the registry cached in memory.
///
/// Every registry change made by this process calls [`PeerResolver::invalidate`]. A lookup
/// that raced with a change (read the registry before the change committed, and would cache
/// the stale row after the invalidation) is detected by a generation counter and not cached.
#[derive(Debug, Clone)]
pub struct PeerResolver {
    store: Store,
    cache: Arc<RwLock<HashMap<DeviceId, Arc<Device>>>>,
    generation: Arc<AtomicU64>,
    revocations: broadcast::Sender<DeviceId>,
}

/// Revocations announced while a stream is open; beyond this many unread, a listener re-reads
/// the registry instead.
const REVOCATION_BACKLOG: usize = 64;

impl PeerResolver {
    /// A resolver over the registry in `store`.
    pub fn new(store: Store) -> Self {
        PeerResolver {
            store,
            cache: Arc::default(),
            generation: Arc::default(),
            revocations: broadcast::channel(REVOCATION_BACKLOG).0,
        }
    }

    /// After device `id` was revoked in the registry: forgets it and tells every open stream
    /// of that device to end (see [`super::streams`]).
    pub fn revoked(&self, id: DeviceId) {
        self.invalidate(id);
        // No receiver means no open stream: nothing to end.
        let _ = self.revocations.send(id);
    }

    /// Revocations from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<DeviceId> {
        self.revocations.subscribe()
    }

    /// Whether the registry (not the cache) says `id` is revoked or gone; an unreadable
    /// registry counts as revoked.
    pub async fn is_revoked(&self, id: DeviceId) -> bool {
        !matches!(self.store.device(id).await, Ok(Some(d)) if d.status == DeviceStatus::Active)
    }

    /// Forgets what is cached about `id`. Call it after every change to the device's row
    /// (revocation, renewal, granted scopes), once the change has committed.
    pub fn invalidate(&self, id: DeviceId) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut cache) = self.cache.write() {
            cache.remove(&id);
        }
    }

    /// The peer presenting `certs` (leaf first), or the status that refuses it.
    pub async fn resolve(
        &self,
        certs: Option<&[CertificateDer<'static>]>,
        address: Option<SocketAddr>,
    ) -> Result<Peer, Status> {
        let Some(leaf) = certs.and_then(|c| c.first()) else {
            return Ok(Peer::anonymous(address));
        };
        let Some(id) = ca::device_id_from_certificate(leaf.as_ref()) else {
            return Err(unknown_device(None));
        };
        let device = self.device(id).await?.ok_or_else(|| unknown_device(Some(id)))?;
        if device.status == DeviceStatus::Revoked {
            return Err(device_revoked(id));
        }
        Ok(Peer {
            principal: Principal::Device { id, role: device.role, fingerprint: device.fingerprint.clone() },
            device: Some(device),
            address,
        })
    }

    async fn device(&self, id: DeviceId) -> Result<Option<Arc<Device>>, Status> {
        if let Ok(cache) = self.cache.read()
            && let Some(device) = cache.get(&id)
        {
            return Ok(Some(Arc::clone(device)));
        }
        let before = self.generation.load(Ordering::SeqCst);
        let Some(device) = self.store.device(id).await.map_err(internal)? else {
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
