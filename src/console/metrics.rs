//! The Prometheus endpoint (`palyra serve --metrics-addr`): `GET /metrics` on its own listener,
//! served by the console's bounded HTTP/1.1 server ([`super::server`]).
//!
//! It needs no credentials (Prometheus scrapes without them), so it is an anonymous resource:
//! few connections in total and per address, each closed after 30 s whatever it does, a short
//! time to send the request's head, a
//! bounded head, no request body, and the node's state read at most once a second however
//! often it is scraped. It shows activity counts and sizes, never a name, scope, key or value
//! (see `crate::metrics`). Anything but `GET /metrics` is `404`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, watch};

use super::server::{self, ConsoleLimits};
use crate::node::Node;

/// The endpoint's connection bounds: a Prometheus server or two, and a person with curl.
pub const LIMITS: ConsoleLimits = ConsoleLimits {
    header_read_timeout: Duration::from_secs(10),
    max_connections: 16,
    max_connections_per_address: 4,
    // A scraper reconnects; a client that keeps asking cannot keep its slot.
    max_connection_age: Some(Duration::from_secs(30)),
};

/// The node's state (secret count, database size, …) is read at most this often.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct Scrape {
    node: Node,
    /// When the node's state was last read; held while it is read, so concurrent scrapes wait
    /// for one read instead of each making their own.
    refreshed: Arc<Mutex<Option<Instant>>>,
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(node: Node, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) {
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let router = Router::new().fallback(scrape).with_state(Scrape { node, refreshed: Arc::default() });
    server::run(listener, router, LIMITS, stop).await;
}

async fn scrape(State(scrape): State<Scrape>, request: Request) -> Response {
    if request.method() != Method::GET || request.uri().path() != "/metrics" {
        return (StatusCode::NOT_FOUND, "not found: only GET /metrics\n").into_response();
    }
    // A scrape has no body: one announced is refused before anything is read.
    let headers = request.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers.get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        return (StatusCode::BAD_REQUEST, "a scrape has no body\n").into_response();
    }
    {
        let mut refreshed = scrape.refreshed.lock().await;
        if refreshed.is_none_or(|at| at.elapsed() >= REFRESH_EVERY) {
            scrape.node.refresh_metrics().await;
            *refreshed = Some(Instant::now());
        }
    }
    let Some(text) = scrape.node.metrics.encode() else {
        return (StatusCode::NOT_FOUND, "metrics are off\n").into_response();
    };
    let mut response = text.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::metrics::CONTENT_TYPE));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
