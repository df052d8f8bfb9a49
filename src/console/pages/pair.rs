//! The "Pair a device" page: a form that makes a pairing code, the code shown once (PIN, URI,
//! QR image) to the operator who made it, and the pending requests with Approve and Reject
//! forms (CreatePairingCode, ListPairingRequests, ApprovePairing, RejectPairing), all through
//! [`crate::pairing::Pairing`].

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use serde::Deserialize;

use super::{Page, ReasonForm, see_other};
use crate::console::html::{esc, page, time};
use crate::console::{App, Failure, Operator, ShownCode};
use crate::identity::Role;
use crate::pairing::{DeviceName, PairingRequest, RequestState};
use crate::unix_time::unix_ms;

#[derive(Debug, Deserialize)]
pub(in crate::console) struct PairQuery {
    code: Option<String>,
}

/// The TTL choices of the form, in seconds.
const TTLS: [(u64, &str); 4] =
    [(120, "2 minutes"), (600, "10 minutes"), (1800, "30 minutes"), (3600, "1 hour")];

pub(in crate::console) async fn pair(
    State(app): State<App>,
    op: Operator,
    Query(q): Query<PairQuery>,
) -> Page {
    let now = SystemTime::now();
    let shown = q.code.and_then(|id| {
        let mut codes = app.codes();
        codes.retain(|_, c| c.code.expires_at > now);
        codes.get(&id).filter(|c| c.owner == op.session.device).cloned()
    });
    let pending = pending_list(&app, &op).await?;
    let csrf = esc(op.session.csrf.expose());
    let mut body = String::new();
    let mut ttl_options = String::new();
    for (secs, label) in TTLS {
        let selected = if secs == 600 { " selected" } else { "" };
        let _ = write!(ttl_options, "<option value=\"{secs}\"{selected}>{label}</option>");
    }
    let _ = write!(
        body,
        "<section aria-labelledby=\"new-code\"><h2 id=\"new-code\">New pairing code</h2>\
<form method=\"post\" action=\"/pair/code\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<label for=\"role\">Role</label><select id=\"role\" name=\"role\"><option value=\"device\">device (a phone, an app)</option>\
<option value=\"node\">node (a peer node)</option></select>\
<label for=\"ttl\">Valid for</label><select id=\"ttl\" name=\"ttl\">{ttl_options}</select>\
<button type=\"submit\">Create pairing code</button></form></section>"
    );
    if let Some(shown) = shown {
        let code = &shown.code;
        let uri = code.uri.to_uri();
        let expires = unix_ms(code.expires_at);
        let _ = write!(
            body,
            "<section aria-labelledby=\"code\" class=\"code\"><h2 id=\"code\">Pairing code {code_id}</h2>\
<div class=\"code-grid\"><img id=\"qr\" src=\"/pair/codes/{code_id}/qr.svg\" width=\"240\" height=\"240\" \
alt=\"QR code of the pairing URI (it carries the PIN)\">\
<dl><dt>PIN</dt><dd class=\"pin\" id=\"pin\">{pin}</dd><dt>Code</dt><dd><code id=\"code-id\">{code_id}</code></dd>\
<dt>Role</dt><dd>{role}</dd><dt>Expires</dt><dd><time datetime=\"{at}\">{at}</time> \
(<span class=\"countdown\" data-expires=\"{expires}\">—</span>)</dd>\
<dt>Attempts</dt><dd>{attempts}</dd></dl></div>\
<p><label for=\"uri\">Pairing URI</label> <input id=\"uri\" class=\"uri\" readonly value=\"{uri}\"></p>\
<p class=\"hint\">Scan the QR code, or on the joining device run <code>palyra pair --uri '…' --name NAME</code>. \
The PIN and the URI are secrets until the code is used. The request appears below once the device finishes the handshake.</p></section>",
            code_id = esc(code.uri.code_id.as_str()),
            pin = esc(code.uri.pin.as_str()),
            role = code.role,
            at = esc(&time(Some(code.expires_at))),
            attempts = code.max_attempts,
            uri = esc(&uri),
        );
    }
    let _ = write!(
        body,
        "<section aria-labelledby=\"pending-title\"><h2 id=\"pending-title\">Pending requests</h2>\
<div id=\"pending\" data-live=\"/pair/requests\" data-live-kinds=\"pairing.\">{pending}</div></section>"
    );
    Ok(page("Pair a device", "/pair", op.session.csrf.expose(), &body).into_response())
}

/// The pending requests, with Approve and Reject forms.
async fn pending_list(app: &App, op: &Operator) -> Result<String, Failure> {
    let requests = app.pairing.requests(Some(RequestState::Pending)).await?;
    let csrf = esc(op.session.csrf.expose());
    if requests.is_empty() {
        return Ok(
            "<p class=\"empty\">No pending requests. A device that uses a code appears here.</p>".to_owned()
        );
    }
    let mut out = String::from("<ul class=\"cards\">");
    for r in &requests {
        out.push_str(&request_card(r, &csrf));
    }
    out.push_str("</ul>");
    Ok(out)
}

fn request_card(r: &PairingRequest, csrf: &str) -> String {
    let id = esc(&r.id);
    let mut roles = String::new();
    for role in [Role::Device, Role::Node] {
        let selected = if role == r.role { " selected" } else { "" };
        let _ = write!(roles, "<option value=\"{role}\"{selected}>{role}</option>");
    }
    format!(
        "<li class=\"card request\" data-request=\"{id}\"><h3>{name}</h3>\
<dl><dt>Fingerprint</dt><dd><code class=\"fingerprint\">{fp}</code></dd><dt>Role asked</dt><dd>{role}</dd>\
<dt>From</dt><dd>{peer}</dd><dt>Requested</dt><dd>{created}</dd></dl>\
<p class=\"hint\">Compare the fingerprint with the one the device printed before approving.</p>\
<form method=\"post\" action=\"/pair/requests/{id}/approve\" class=\"approve\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<label for=\"role-{id}\">Role</label><select id=\"role-{id}\" name=\"role\">{roles}</select>\
<label for=\"scopes-{id}\">Extra vault scopes</label><input id=\"scopes-{id}\" name=\"scopes\" \
placeholder=\"agents/alpha, connectors/slack\" autocomplete=\"off\">\
<button type=\"submit\">Approve {name}</button></form>\
<form method=\"post\" action=\"/pair/requests/{id}/reject\" class=\"reject\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<label for=\"reason-{id}\">Reason</label><input id=\"reason-{id}\" name=\"reason\" maxlength=\"1024\">\
<button type=\"submit\" class=\"danger\">Reject</button></form></li>",
        name = esc(&DeviceName::shown(&r.device_name)),
        fp = esc(&r.fingerprint),
        role = r.role,
        peer = esc(if r.peer_address.is_empty() { "—" } else { &r.peer_address }),
        created = esc(&time(Some(r.created_at))),
    )
}

/// `GET /pair/requests`: the pending list alone, for live refresh.
pub(in crate::console) async fn pending_fragment(State(app): State<App>, op: Operator) -> Page {
    Ok(Html(pending_list(&app, &op).await?).into_response())
}

#[derive(Debug, Deserialize)]
pub(in crate::console) struct CodeForm {
    role: String,
    ttl: Option<u64>,
}

/// `POST /pair/code` (CreatePairingCode).
pub(in crate::console) async fn create_code(
    State(app): State<App>,
    op: Operator,
    Form(form): Form<CodeForm>,
) -> Page {
    let ttl = form.ttl.map(Duration::from_secs);
    let code = app.pairing.create_code(&form.role, ttl, None, app.options.grpc_server.clone()).await?;
    let id = code.uri.code_id.to_string();
    app.keep_code(id.clone(), ShownCode { owner: op.session.device, code });
    Ok(see_other(&format!("/pair?code={id}")))
}

/// `GET /pair/codes/{id}/qr.svg`: the QR code of a code this operator made, while it lives.
pub(in crate::console) async fn qr(
    State(app): State<App>,
    op: Operator,
    Path(code_id): Path<String>,
) -> Page {
    let now = SystemTime::now();
    let shown = app
        .codes()
        .get(&code_id)
        .filter(|c| c.owner == op.session.device && c.code.expires_at > now)
        .cloned()
        .ok_or_else(|| {
            Failure::new(StatusCode::NOT_FOUND, "Not found", "No such pairing code (or it expired).")
        })?;
    let uri = shown.code.uri.to_uri();
    let qr = qrcode::QrCode::with_error_correction_level(uri.as_bytes(), qrcode::EcLevel::M)
        .map_err(Failure::internal)?;
    let svg = qr.render::<qrcode::render::svg::Color<'_>>().min_dimensions(240, 240).quiet_zone(true).build();
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}

#[derive(Debug, Deserialize)]
pub(in crate::console) struct ApproveForm {
    #[serde(default)]
    role: String,
    #[serde(default)]
    scopes: String,
}

/// `POST /pair/requests/{id}/approve` (ApprovePairing).
pub(in crate::console) async fn approve(
    State(app): State<App>,
    op: Operator,
    Path(id): Path<String>,
    Form(form): Form<ApproveForm>,
) -> Page {
    let scopes: Vec<String> = form
        .scopes
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let approved = app.pairing.approve(&op.peer, &id, &form.role, &scopes).await?;
    let device = approved.device_id.map(|d| d.to_string()).unwrap_or_default();
    Ok(see_other(&format!("/devices?paired={device}")))
}

/// `POST /pair/requests/{id}/reject` (RejectPairing).
pub(in crate::console) async fn reject(
    State(app): State<App>,
    _op: Operator,
    Path(id): Path<String>,
    Form(form): Form<ReasonForm>,
) -> Page {
    app.pairing.reject(&id, &form.reason).await?;
    Ok(see_other("/pair"))
}
