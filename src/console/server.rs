//! The console's HTTP/1.1 server: hyper directly (not `axum::serve`), so a connection is
//! bounded before any of it reaches the router. A connection holds a slot from accept to close;
//! over the total cap or its address's cap (an IPv4 address, an IPv6 /64) it is answered `503`
//! and closed at once. A request's head must arrive within the header-read timeout, which hyper
//! also runs while a keep-alive connection is idle between requests (so an idle connection is
//! closed after it too). At shutdown the listener closes, every connection is told to finish
//! its request in flight and close, and `run` returns when the last one has.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
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
}

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
        }
    }
}

/// Largest request head hyper buffers (the URL, the cookie and a few headers fit many times).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// What an over-cap connection is told before it is closed (best effort, never waited for).
const REFUSED: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\nretry-after: 5\r\n\r\n";

/// The address a per-address cap counts: an IPv4 address (IPv4-mapped IPv6 included), or the
/// /64 of an IPv6 address (one host usually holds a whole /64).
pub(super) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// The connection slots: taken at accept, given back when the connection's task ends.
#[derive(Debug)]
pub(super) struct Slots {
    limits: ConsoleLimits,
    counts: Mutex<Counts>,
}

/// A held slot; dropping it gives it back.
#[derive(Debug)]
pub(super) struct Slot {
    slots: Arc<Slots>,
    key: IpAddr,
}

impl Slots {
    pub(super) fn new(limits: ConsoleLimits) -> Arc<Slots> {
        Arc::new(Slots { limits, counts: Mutex::default() })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Counts stay consistent whatever panicked while holding them.
        self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for a connection from `ip`, or `None` over a cap.
    pub(super) fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let key = address_key(ip);
        let mut counts = self.counts();
        if counts.total >= self.limits.max_connections {
            return None;
        }
        let held = counts.per_address.entry(key).or_insert(0);
        if *held >= self.limits.max_connections_per_address {
            return None;
        }
        *held += 1;
        counts.total += 1;
        Some(Slot { slots: Arc::clone(self), key })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.slots.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(held) = counts.per_address.get_mut(&self.key) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.per_address.remove(&self.key);
            }
        }
    }
}

/// Serves `router` on `listener` until `stop` turns true, then drains (see the module doc).
pub(super) async fn run(
    listener: TcpListener,
    router: Router,
    limits: ConsoleLimits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Slots::new(limits);
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
        let Some(slot) = slots.take(peer.ip()) else {
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
        connections.spawn(async move {
            let _slot = slot;
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stopped(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_64() {
        assert_eq!(address_key(ip("2001:db8:1:2::1")), address_key(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(address_key(ip("2001:db8:1:2::1")), address_key(ip("2001:db8:1:3::1")));
        assert_eq!(address_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_ne!(address_key(ip("192.0.2.7")), address_key(ip("192.0.2.8")));
    }

    #[test]
    fn slots_cap_each_address_and_the_total() {
        let slots = Slots::new(ConsoleLimits {
            header_read_timeout: Duration::from_secs(1),
            max_connections: 3,
            max_connections_per_address: 2,
        });
        let a1 = slots.take(ip("2001:db8::1"));
        let a2 = slots.take(ip("2001:db8::2"));
        assert!(a1.is_some() && a2.is_some());
        assert!(slots.take(ip("2001:db8::3")).is_none(), "the /64 is full");
        let b = slots.take(ip("192.0.2.1"));
        assert!(b.is_some());
        assert!(slots.take(ip("192.0.2.2")).is_none(), "the total is full");
        drop(a1);
        assert!(slots.take(ip("192.0.2.2")).is_some(), "a closed connection gives its slot back");
        drop((a2, b));
        assert_eq!(slots.counts().total, 0);
        assert!(slots.counts().per_address.is_empty());
    }
}
