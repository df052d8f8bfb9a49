//! The console's one route table and the layer that enforces it.
//!
//! [`ROUTES`] names every route (method + path pattern), who may reach it ([`Access`]: public,
//! any session, or the Cedar actions of the gRPC call it stands for) and its largest form
//! body. The router is built from it (`super::router`), and [`authorize`] decides every request
//! from it before any handler runs: a method and path that is not in the table is refused
//! (fail closed), a gated route needs a session, on POST the session's CSRF token, and then an
//! allow from the [`Gate`](crate::access::Gate) for each of its actions on the node, each
//! decision audited. Handlers keep only their resource checks (a `Device`, a `Scope`).

use std::net::SocketAddr;

use axum::Form;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequest, MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use serde::Deserialize;

use super::{App, Failure, Operator, assets, pages};
use crate::policy::{MAX_POLICY_TEXT_BYTES, actions};

/// The methods the console answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `GET` (never `HEAD`: that is refused like any method not in the table).
    Get,
    /// `POST`, a form.
    Post,
}

impl Verb {
    /// The method's name.
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Verb::Get => MethodFilter::GET,
            Verb::Post => MethodFilter::POST,
        }
    }

    fn of(method: &Method) -> Option<Verb> {
        match *method {
            Method::GET => Some(Verb::Get),
            Method::POST => Some(Verb::Post),
            _ => None,
        }
    }
}

/// Who may reach a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: the static assets, the login link (its one-time token is the credential) and
    /// the redirect of `/`.
    Public,
    /// Any signed-in operator, with no Cedar action: signing out ends only the caller's own
    /// session and is never denied.
    Session,
    /// A signed-in operator whose policy allows each of these actions on the node (the method
    /// gate of the gRPC calls the page stands for), asked in order and each audited.
    Gate(&'static [&'static str]),
}

/// One route of the console.
#[derive(Debug)]
pub struct Route {
    /// Its method.
    pub method: Verb,
    /// Its path pattern, as the router matches it (`{name}` is one segment).
    pub path: &'static str,
    /// Who may reach it.
    pub access: Access,
    /// Largest form body a POST may send (0 for a GET: a GET body is never read).
    pub body_limit: usize,
    handler: fn(MethodFilter) -> MethodRouter<App>,
}

impl Route {
    pub(super) fn method_router(&self) -> MethodRouter<App> {
        (self.handler)(self.method.filter())
    }
}

/// A form of a few short fields (a CSRF token, a role, a reason of ≤ 1,024 characters, a scope
/// list), percent-encoded.
const SMALL_FORM: usize = 16 * 1024;
/// A policy form: the text (≤ [`MAX_POLICY_TEXT_BYTES`]) percent-encoded (≤ 3 bytes per byte).
const POLICY_FORM: usize = 3 * MAX_POLICY_TEXT_BYTES + SMALL_FORM;

const fn get(path: &'static str, access: Access, handler: fn(MethodFilter) -> MethodRouter<App>) -> Route {
    Route { method: Verb::Get, path, access, body_limit: 0, handler }
}

const fn post(
    path: &'static str,
    access: Access,
    body_limit: usize,
    handler: fn(MethodFilter) -> MethodRouter<App>,
) -> Route {
    Route { method: Verb::Post, path, access, body_limit, handler }
}

/// What the policies page itself reads (GetPolicySet, ListPolicyVersions); its POSTs show it
/// again with the draft.
const POLICIES_PAGE: [&str; 2] = [actions::GET_POLICY_SET, actions::LIST_POLICY_VERSIONS];

/// Every route of the console; nothing else is served.
pub static ROUTES: &[Route] = &[
    get("/", Access::Public, |f| on(f, pages::home)),
    get("/login", Access::Public, |f| on(f, pages::login)),
    get("/assets/console.js", Access::Public, |f| on(f, assets::script)),
    get("/assets/console.css", Access::Public, |f| on(f, assets::style)),
    post("/logout", Access::Session, SMALL_FORM, |f| on(f, pages::logout)),
    get("/pair", Access::Gate(&[actions::LIST_PAIRING_REQUESTS]), |f| on(f, pages::pair)),
    get("/pair/requests", Access::Gate(&[actions::LIST_PAIRING_REQUESTS]), |f| {
        on(f, pages::pending_fragment)
    }),
    post("/pair/code", Access::Gate(&[actions::CREATE_PAIRING_CODE]), SMALL_FORM, |f| {
        on(f, pages::create_code)
    }),
    // The QR image of a code this operator made: CreatePairingCode's answer, shown again.
    get("/pair/codes/{code_id}/qr.svg", Access::Gate(&[actions::CREATE_PAIRING_CODE]), |f| on(f, pages::qr)),
    post("/pair/requests/{id}/approve", Access::Gate(&[actions::APPROVE_PAIRING]), SMALL_FORM, |f| {
        on(f, pages::approve)
    }),
    post("/pair/requests/{id}/reject", Access::Gate(&[actions::REJECT_PAIRING]), SMALL_FORM, |f| {
        on(f, pages::reject)
    }),
    get("/enrollment", Access::Gate(&[actions::LIST_ENROLLMENT_KEYS]), |f| on(f, pages::enrollment)),
    get("/enrollment/table", Access::Gate(&[actions::LIST_ENROLLMENT_KEYS]), |f| {
        on(f, pages::enrollment_fragment)
    }),
    post("/enrollment/{id}/revoke", Access::Gate(&[actions::REVOKE_ENROLLMENT_KEY]), SMALL_FORM, |f| {
        on(f, pages::revoke_key)
    }),
    get("/devices", Access::Gate(&[actions::LIST_DEVICES]), |f| on(f, pages::devices)),
    get("/devices/table", Access::Gate(&[actions::LIST_DEVICES]), |f| on(f, pages::devices_fragment)),
    post("/devices/{id}/revoke", Access::Gate(&[actions::REVOKE_DEVICE]), SMALL_FORM, |f| {
        on(f, pages::revoke)
    }),
    get("/vault", Access::Gate(&[actions::LIST_SECRETS]), |f| on(f, pages::vault)),
    get("/vault/secret", Access::Gate(&[actions::LIST_SECRETS, actions::GET_SECRET_METADATA]), |f| {
        on(f, pages::secret)
    }),
    get("/policies", Access::Gate(&POLICIES_PAGE), |f| on(f, pages::policies)),
    post(
        "/policies",
        Access::Gate(&[actions::UPDATE_POLICY_SET, POLICIES_PAGE[0], POLICIES_PAGE[1]]),
        POLICY_FORM,
        |f| on(f, pages::update_policies),
    ),
    post(
        "/policies/validate",
        Access::Gate(&[actions::VALIDATE_POLICY_SET, POLICIES_PAGE[0], POLICIES_PAGE[1]]),
        POLICY_FORM,
        |f| on(f, pages::validate_policies),
    ),
    post("/policies/rollback", Access::Gate(&[actions::ROLLBACK_POLICY_SET]), SMALL_FORM, |f| {
        on(f, pages::rollback_policies)
    }),
    get("/audit", Access::Gate(&[actions::VERIFY_AUDIT_LOG, actions::LIST_AUDIT_RECORDS]), |f| {
        on(f, pages::audit)
    }),
    get("/events", Access::Gate(&[actions::NODE_STREAM_EVENTS]), |f| on(f, pages::events)),
];

/// The table entry of `method` on the pattern the router matched.
fn route_of(method: &Method, matched: &str) -> Option<&'static Route> {
    let verb = Verb::of(method)?;
    ROUTES.iter().find(|r| r.method == verb && r.path == matched)
}

/// The layer: decides every request from [`ROUTES`] before its handler (see the module doc).
pub(super) async fn authorize(State(app): State<App>, request: Request, next: Next) -> Response {
    match authorized(&app, request).await {
        Ok(request) => next.run(request).await,
        Err(failure) => failure.into_response(),
    }
}

async fn authorized(app: &App, request: Request) -> Result<Request, Failure> {
    let Some(matched) = request.extensions().get::<MatchedPath>() else {
        return Err(Failure::new(StatusCode::NOT_FOUND, "Not found", "There is no such page."));
    };
    let Some(route) = route_of(request.method(), matched.as_str()) else {
        return Err(Failure::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            "This page does not answer that method.",
        ));
    };
    if route.access == Access::Public {
        return Ok(request);
    }
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .ok_or_else(|| Failure::internal("a console request without its client address"))?;
    let op = Operator::of(app, request.headers(), address).await?;
    let mut request = if route.method == Verb::Post {
        // Only a signed-in operator's body is read, bounded in size and time.
        let (parts, body) = request.into_parts();
        let read = axum::body::to_bytes(body, route.body_limit);
        let bytes = tokio::time::timeout(app.options.limits.header_read_timeout, read)
            .await
            .map_err(|_| {
                Failure::new(StatusCode::REQUEST_TIMEOUT, "Refused", "the form took too long to arrive")
            })?
            .map_err(|_| {
                Failure::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Refused",
                    "the form is too large or was cut short",
                )
            })?;
        op.check_csrf(csrf_of(&parts.headers, &bytes).await.as_deref())?;
        Request::from_parts(parts, Body::from(bytes))
    } else {
        request
    };
    if let Access::Gate(actions) = route.access {
        for action in actions {
            op.may(app, action)?;
        }
    }
    request.extensions_mut().insert(op);
    Ok(request)
}

/// The `csrf` field of a form body (`None` when it is not a form or has none).
async fn csrf_of(headers: &HeaderMap, body: &axum::body::Bytes) -> Option<String> {
    #[derive(Deserialize)]
    struct CsrfField {
        csrf: Option<String>,
    }
    let mut form = Request::new(Body::from(body.clone()));
    *form.method_mut() = Method::POST;
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        form.headers_mut().insert(header::CONTENT_TYPE, content_type.clone());
    }
    let Form(field) = Form::<CsrfField>::from_request(form, &()).await.ok()?;
    field.csrf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_route_and_only_known_actions() {
        let mut seen = std::collections::HashSet::new();
        for route in ROUTES {
            assert!(
                seen.insert((route.method, route.path)),
                "{} {} twice",
                route.method.as_str(),
                route.path
            );
            if let Access::Gate(list) = route.access {
                assert!(!list.is_empty(), "{}", route.path);
                for action in list {
                    assert!(
                        actions::ALL.contains(action),
                        "{} {}: {action}",
                        route.method.as_str(),
                        route.path
                    );
                }
            }
            assert_eq!(route.method == Verb::Post, route.body_limit > 0, "{}", route.path);
        }
    }
}
