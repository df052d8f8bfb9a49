//! Revocation ends open streams: the gate wraps the response body of every device peer in a
//! [`RevocableBody`] that also watches the resolver's revocation broadcast. When the device is
//! revoked, the body ends at once with trailers `UNAUTHENTICATED` + `DEVICE_REVOKED`, so a
//! long-lived stream (`grpc.health.v1.Health/Watch`, later event streams) is closed within a
//! moment of the revocation, not at its next request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Frame, SizeHint};
use tokio::sync::broadcast::error::RecvError;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Bytes;

use super::authz::Gate;
use super::peer::PeerResolver;
use crate::identity::DeviceId;
use crate::wire::status::stream_revoked;

type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A response body that ends with `UNAUTHENTICATED` + `DEVICE_REVOKED` once its device is
/// revoked.
///
/// It subscribes to the revocation broadcast only when its inner body first has to wait: a
/// unary response (one message and trailers, ready at once) never subscribes, so it costs no
/// lock on the broadcast. Nothing is missed meanwhile: every poll before subscribing compares
/// the resolver's revocation count with the one taken before the peer was resolved, and a
/// body that finds it moved subscribes and asks the registry, sending nothing until it has
/// the answer (see [`PeerResolver::revocation_epoch`]).
pub struct RevocableBody {
    inner: Body,
    watch: Watch,
    ended: bool,
}

/// How a [`RevocableBody`] learns of its device's revocation.
enum Watch {
    /// Not subscribed yet: no revocation was announced since `epoch`.
    Lazy { id: DeviceId, epoch: u64, gate: Arc<Gate> },
    /// Subscribed after a revocation was announced since `epoch`: the registry is asked
    /// whether it was this device's (`check`, true when revoked) before the body goes on;
    /// then `follow` watches the broadcast.
    Checking { check: Pin<Box<dyn Future<Output = bool> + Send>>, follow: Signal },
    /// Subscribed: completes when the device is revoked.
    Armed(Signal),
}

impl Watch {
    /// Subscribes (a no-op once subscribed).
    fn arm(&mut self) {
        if let Watch::Lazy { id, epoch, gate } = self {
            let (id, peers) = (*id, gate.peers.clone());
            let revocations = peers.subscribe();
            let missed = peers.revocation_epoch() != *epoch;
            let follow: Signal = Box::pin(revocation_of(id, revocations, peers.clone()));
            *self = if missed {
                Watch::Checking { check: Box::pin(async move { peers.is_revoked(id).await }), follow }
            } else {
                Watch::Armed(follow)
            };
        }
    }

    /// `Ready(true)`: the device is revoked; `Ready(false)`: not as far as this watch knows;
    /// `Pending`: the registry is being asked, the body must wait. Subscribes when a
    /// revocation was announced since the watch started.
    fn revoked(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if let Watch::Lazy { epoch, gate, .. } = self
            && gate.peers.revocation_epoch() != *epoch
        {
            self.arm();
        }
        if let Watch::Checking { check, follow } = self {
            match check.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(true) => return Poll::Ready(true),
                Poll::Ready(false) => {
                    let follow = std::mem::replace(follow, Box::pin(std::future::pending()));
                    *self = Watch::Armed(follow);
                }
            }
        }
        match self {
            Watch::Armed(signal) => Poll::Ready(signal.as_mut().poll(cx).is_ready()),
            Watch::Lazy { .. } | Watch::Checking { .. } => Poll::Ready(false),
        }
    }
}

impl std::fmt::Debug for RevocableBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocableBody").field("ended", &self.ended).finish_non_exhaustive()
    }
}

/// A future that completes when device `id` is revoked. Subscribe before resolving the peer,
/// so a revocation between the two is not missed.
pub async fn revocation_of(
    id: DeviceId,
    mut revocations: tokio::sync::broadcast::Receiver<DeviceId>,
    peers: PeerResolver,
) {
    loop {
        match revocations.recv().await {
            Ok(revoked) if revoked == id => return,
            Ok(_) => {}
            // Missed some: ask the registry.
            Err(RecvError::Lagged(_)) => {
                if peers.is_revoked(id).await {
                    return;
                }
            }
            Err(RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

impl RevocableBody {
    /// Wraps `inner` of device `id`'s response; it ends when the device is revoked after
    /// `epoch` ([`PeerResolver::revocation_epoch`], taken before the peer was resolved).
    pub fn of_device(inner: Body, id: DeviceId, epoch: u64, gate: Arc<Gate>) -> Self {
        RevocableBody { inner, watch: Watch::Lazy { id, epoch, gate }, ended: false }
    }

    /// The trailers that end a revoked device's response.
    fn end_revoked(&mut self) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.ended = true;
        let revoked = stream_revoked();
        let mut trailers = tonic::codegen::http::HeaderMap::new();
        Poll::Ready(Some(match revoked.add_header(&mut trailers) {
            Ok(()) => Ok(Frame::trailers(trailers)),
            Err(_) => Err(revoked),
        }))
    }
}

impl http_body::Body for RevocableBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match this.watch.revoked(cx) {
            Poll::Ready(true) => return this.end_revoked(),
            Poll::Pending => return Poll::Pending,
            Poll::Ready(false) => {}
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.ended = true,
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => this.ended = true,
            Poll::Ready(Some(Ok(_))) => {}
            // The body waits (a stream): from now on the revocation must wake it.
            Poll::Pending => {
                if matches!(this.watch, Watch::Lazy { .. }) {
                    this.watch.arm();
                    if this.watch.revoked(cx) == Poll::Ready(true) {
                        return this.end_revoked();
                    }
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
