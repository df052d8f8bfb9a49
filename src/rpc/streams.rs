//! Revocation ends open streams: the gate wraps the response body of every device peer in a
//! [`RevocableBody`] that also watches the resolver's revocation broadcast. When the device is
//! revoked, the body ends at once with trailers `UNAUTHENTICATED` + `DEVICE_REVOKED`, so a
//! long-lived stream (`grpc.health.v1.Health/Watch`, later event streams) is closed within a
//! moment of the revocation, not at its next request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Frame, SizeHint};
use tokio::sync::broadcast::error::RecvError;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Bytes;

use super::peer::PeerResolver;
use crate::identity::DeviceId;
use crate::wire::status::stream_revoked;

type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A response body that ends with `UNAUTHENTICATED` + `DEVICE_REVOKED` once its device is
/// revoked.
pub struct RevocableBody {
    inner: Body,
    revoked: Signal,
    ended: bool,
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
    /// Wraps `inner`; it ends when `revoked` completes.
    pub fn new(inner: Body, revoked: impl Future<Output = ()> + Send + 'static) -> Self {
        RevocableBody { inner, revoked: Box::pin(revoked), ended: false }
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
        if this.revoked.as_mut().poll(cx).is_ready() {
            this.ended = true;
            let revoked = stream_revoked();
            let mut trailers = tonic::codegen::http::HeaderMap::new();
            return Poll::Ready(Some(match revoked.add_header(&mut trailers) {
                Ok(()) => Ok(Frame::trailers(trailers)),
                Err(_) => Err(revoked),
            }));
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.ended = true,
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => this.ended = true,
            _ => {}
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
