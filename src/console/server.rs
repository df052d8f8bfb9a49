//! The console's HTTP/1.1 server: hyper directly (not `axum::serve`), so a connection is
//! bounded before any of it reaches the router. A connection holds a slot from accept to close;
//! over the total cap or its address's cap (an IPv4 address, an IPv6 /64) it is answered `503`
//! and closed at once. A request's head must arrive within the header-read timeout, which hyper
//! also runs while a keep-alive connection is idle between requests (so an idle connection is
//! closed after it too). At shutdown the listener closes, every connection is told to finish
//! its request in flight and close, and `run` returns when the last one has.

use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt as _;

use crate::net_limits::AddressBudget;

/// Bounds on the console's connections. The defaults suit a personal node (one operator, a
/// few browser tabs: a browser opens up to 6 connections per origin and each open page holds
/// one event stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleLimits {
    /// Time a client has to send a request's head, and a signed-in form POST its body; hyper
    /// also runs it while a keep-alive connection is idle, so it bounds idle connections too.
    pub header_read_timeout: Duration,
    /// Connections held at once, all addresses together.
    pub max_connections: usize,
    /// Connections held at once from one IPv4 address or one IPv6 /64.
    pub max_connections_per_address: usize,
    /// How long one connection may live (`None`: as long as it is used). Past it the
    /// connection finishes the request in flight and closes; one that does not within
    /// [`CLOSE_GRACE`] (a reader that never reads its responses) is dropped. Without it a
    /// client asking again before each idle timeout keeps its slot for ever.
    pub max_connection_age: Option<Duration>,
}

/// Time a connection past its [`ConsoleLimits::max_connection_age`] has to finish.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Default [`ConsoleLimits::header_read_timeout`].
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ConsoleLimits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 128;
/// Default [`ConsoleLimits::max_connections_per_address`].
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 32;

impl Default for ConsoleLimits {
    fn default() -> Self {
        ConsoleLimits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            max_connection_age: None,
        }
    }
}

/// Largest request head hyper buffers (the URL, the cookie and a few headers fit many times).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// What an over-cap connection is told before it is closed (best effort, never waited for).
const REFUSED: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\nretry-after: 5\r\n\r\n";

/// Serves `router` on `listener` until `stop` turns true, then drains (see the module doc).
pub(super) async fn run(
    listener: TcpListener,
    router: Router,
    limits: ConsoleLimits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = AddressBudget::new(limits.max_connections, limits.max_connections_per_address);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_HEAD_BYTES);
    let mut connections = JoinSet::new();
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next() => continue,
            () = stopped(&mut stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "console: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.try_acquire(peer.ip()) else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(peer = %peer, refused, "console: connection refused (connection cap)");
            }
            let _ = stream.try_write(REFUSED);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = router.clone().map_request(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        });
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let mut stop = stop.clone();
        let max_age = limits.max_connection_age;
        connections.spawn(async move {
            let _slot = slot;
            tokio::pin!(connection);
            let aged = async {
                match max_age {
                    Some(age) => tokio::time::sleep(age).await,
                    None => std::future::pending().await,
                }
            };
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stopped(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
                () = aged => {
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(CLOSE_GRACE, connection.as_mut()).await {
                        Ok(result) => result,
                        Err(_) => {
                            tracing::debug!(peer = %peer, "console: connection past its age dropped");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(peer = %peer, error = %e, "console: connection ended with an error");
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Completes when `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
