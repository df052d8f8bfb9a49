//! The console's pages and actions, one file per page: [`pair`] (pairing codes and requests),
//! [`enrollment`] (enrollment keys, revocation), [`devices`] (the registry, revocation), [`vault`] (secret metadata), [`policies`] (the
//! Cedar editor and its history) and [`audit`] (the log and its verification). This file
//! holds what they share (the [`Page`] result, redirects, the reason form) and the pages of no
//! one section: login and logout, the fallback, and the live event stream.
//!
//! The route layer ([`super::routes`]) has already found the signed-in [`Operator`], checked a
//! POST's CSRF token and asked the gate with the actions of the gRPC call each page stands
//! for; a handler asks only the resource checks that call would make (a `Scope`, a `Device`),
//! then calls the same service as that call. The route table names every handler through the
//! re-exports below.

mod audit;
mod devices;
mod enrollment;
mod pair;
mod policies;
mod vault;

pub(super) use audit::audit;
pub(super) use devices::{devices, devices_fragment, revoke};
pub(super) use enrollment::{enrollment, enrollment_fragment, revoke_key};
pub(super) use pair::{approve, create_code, pair, pending_fragment, qr, reject};
pub(super) use policies::{policies, rollback_policies, update_policies, validate_policies};
pub(super) use vault::{secret, vault};

use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use tokio_stream::wrappers::ReceiverStream;

use super::html::page_plain;
use super::{App, Failure, Operator, SESSION_COOKIE, cookie};
use crate::login::SESSION_LIFETIME;

/// What a page handler returns: the page (or a redirect), or the error page.
type Page = Result<Response, Failure>;

/// A `303 See Other` to `to` (after a form, and for `/`).
fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

pub(super) async fn home() -> Response {
    see_other("/pair")
}

pub(super) async fn not_found() -> Failure {
    Failure::new(StatusCode::NOT_FOUND, "Not found", "There is no such page.")
}

#[derive(Debug, Deserialize)]
pub(super) struct LoginQuery {
    token: Option<String>,
}

/// `GET /login?token=…`: redeems a one-time token for a session and redirects, so the token
/// does not stay in the address bar.
pub(super) async fn login(State(app): State<App>, Query(q): Query<LoginQuery>) -> Page {
    let token = q.token.unwrap_or_default();
    let redeemed = if token.len() == 64 { app.logins.redeem(&token, SystemTime::now()).ok() } else { None };
    let Some((id, session)) = redeemed else {
        tracing::info!("console: a login link was refused (unknown, used or expired)");
        return Err(Failure::new(
            StatusCode::UNAUTHORIZED,
            "Login link refused",
            "This login link is invalid, already used or expired. Run `palyra console` on the node for a new one.",
        ));
    };
    tracing::info!(device_id = %session.device, "console: signed in");
    // Not `Secure`: the console is plain HTTP on loopback (SECURITY.md).
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        id.expose(),
        SESSION_LIFETIME.as_secs()
    );
    let mut response = see_other("/pair");
    let value = HeaderValue::from_str(&cookie).map_err(Failure::internal)?;
    response.headers_mut().insert(header::SET_COOKIE, value);
    Ok(response)
}

/// `POST /logout` (a session and its CSRF token, checked by the route layer; no Cedar action).
pub(super) async fn logout(State(app): State<App>, _op: Operator, headers: HeaderMap) -> Page {
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        app.logins.end_session(id);
    }
    let mut response =
        page_plain("Signed out", "Run `palyra console` on the node to sign in again.").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("palyra_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(response)
}

/// A form with an optional free-text reason (a rejection, a revocation).
#[derive(Debug, Deserialize)]
pub(in crate::console) struct ReasonForm {
    #[serde(default)]
    reason: String,
}

// --- Live updates -------------------------------------------------------------------------------

/// How often an open event stream re-checks its session.
const SESSION_RECHECK: Duration = Duration::from_secs(15);

/// `GET /events`: the event log as server-sent events (`node.stream_events` for the operator),
/// from now on. Each message is JSON `{sequence, kind, subject}`; the stream ends with the
/// session, on the operator's revocation, and at shutdown.
pub(super) async fn events(State(app): State<App>, op: Operator, headers: HeaderMap) -> Page {
    let session_id = cookie(&headers, SESSION_COOKIE).unwrap_or_default().to_owned();
    let Some(slot) = app.stream_slot(op.session.device) else {
        return Err(Failure::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many live pages",
            format!(
                "At most {} pages of one operator get live updates at once; close some.",
                super::MAX_EVENT_STREAMS_PER_OPERATOR
            ),
        ));
    };
    let since = app.node.events.last_sequence().await.map_err(Failure::internal)?;
    let mut subscription = app.node.events.subscribe(since, Vec::new()).await.map_err(Failure::internal)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let device = op.session.device;
    let mut stopping = app.stopping.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let mut recheck = tokio::time::interval(SESSION_RECHECK);
        let stop = async move {
            let _ = stopping.wait_for(|s| *s).await;
        };
        tokio::pin!(stop);
        loop {
            tokio::select! {
                event = subscription.next() => {
                    let Ok(event) = event else { break };
                    if event.kind == crate::events::DEVICE_REVOKED && event.subject == device.to_string() {
                        break;
                    }
                    let data = serde_json::json!({
                        "sequence": event.sequence,
                        "kind": event.kind,
                        "subject": event.subject,
                    });
                    if tx.send(Ok(SseEvent::default().data(data.to_string()))).await.is_err() {
                        break;
                    }
                }
                _ = recheck.tick() => {
                    if !app.logins.is_open(&session_id, SystemTime::now()) {
                        break;
                    }
                }
                () = &mut stop => break,
                () = tx.closed() => break,
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()).into_response())
}
