//! The console's pages and actions. The route layer ([`super::routes`]) has already found the
//! signed-in [`Operator`], checked a POST's CSRF token and asked the gate with the actions of
//! the gRPC call each page stands for; a handler asks only the resource checks that call would
//! make (a `Scope`, a `Device`), then calls the same domain code as that call.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use tokio_stream::wrappers::ReceiverStream;

use super::html::{esc, page, page_plain, time};
use super::{App, Failure, Operator, SESSION_COOKIE, ShownCode, cookie};
use crate::identity::{DeviceId, DeviceStatus, Role};
use crate::login::SESSION_LIFETIME;
use crate::pairing::{DeviceName, PairingRequest, RequestState};
use crate::policy::{Diagnostic, MAX_POLICY_TEXT_BYTES, Resource, Severity, actions};
use crate::unix_time::unix_ms;
use crate::vault::{Scope, SecretKey};

type Page = Result<Response, Failure>;

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

// --- Pair a device ------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub(super) struct PairQuery {
    code: Option<String>,
}

/// The TTL choices of the form, in seconds.
const TTLS: [(u64, &str); 4] =
    [(120, "2 minutes"), (600, "10 minutes"), (1800, "30 minutes"), (3600, "1 hour")];

pub(super) async fn pair(State(app): State<App>, op: Operator, Query(q): Query<PairQuery>) -> Page {
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
    let requests = app.admin.pairing_requests(Some(RequestState::Pending)).await?;
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
pub(super) async fn pending_fragment(State(app): State<App>, op: Operator) -> Page {
    Ok(Html(pending_list(&app, &op).await?).into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct CodeForm {
    role: String,
    ttl: Option<u64>,
}

/// `POST /pair/code` (CreatePairingCode).
pub(super) async fn create_code(State(app): State<App>, op: Operator, Form(form): Form<CodeForm>) -> Page {
    let ttl = form.ttl.map(Duration::from_secs);
    let code = app.admin.create_pairing_code(&form.role, ttl, None, app.options.grpc_server.clone()).await?;
    let id = code.uri.code_id.to_string();
    app.keep_code(id.clone(), ShownCode { owner: op.session.device, code });
    Ok(see_other(&format!("/pair?code={id}")))
}

/// `GET /pair/codes/{id}/qr.svg`: the QR code of a code this operator made, while it lives.
pub(super) async fn qr(State(app): State<App>, op: Operator, Path(code_id): Path<String>) -> Page {
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
pub(super) struct ApproveForm {
    #[serde(default)]
    role: String,
    #[serde(default)]
    scopes: String,
}

/// `POST /pair/requests/{id}/approve` (ApprovePairing).
pub(super) async fn approve(
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
    let approved = app.admin.approve_pairing(&op.peer, &id, &form.role, &scopes).await?;
    let device = approved.device_id.map(|d| d.to_string()).unwrap_or_default();
    Ok(see_other(&format!("/devices?paired={device}")))
}

#[derive(Debug, Deserialize)]
pub(super) struct ReasonForm {
    #[serde(default)]
    reason: String,
}

/// `POST /pair/requests/{id}/reject` (RejectPairing).
pub(super) async fn reject(
    State(app): State<App>,
    _op: Operator,
    Path(id): Path<String>,
    Form(form): Form<ReasonForm>,
) -> Page {
    app.admin.reject_pairing(&id, &form.reason).await?;
    Ok(see_other("/pair"))
}

// --- Devices ------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub(super) struct DevicesQuery {
    paired: Option<String>,
}

async fn devices_table(app: &App, op: &Operator, highlight: Option<&str>) -> Result<String, Failure> {
    let devices = app.node.core.store.devices().await.map_err(Failure::internal)?;
    let csrf = esc(op.session.csrf.expose());
    let mut out = String::from(
        "<div class=\"scroll\"><table><caption class=\"sr-only\">Registered devices</caption><thead><tr>\
<th scope=\"col\">Name</th><th scope=\"col\">Role</th><th scope=\"col\">Status</th>\
<th scope=\"col\">Certificate expires</th><th scope=\"col\">Paired</th><th scope=\"col\">Action</th></tr></thead><tbody>",
    );
    for d in &devices {
        let id = d.id.to_string();
        let status = match d.status {
            DeviceStatus::Active => "active".to_owned(),
            DeviceStatus::Revoked => format!(
                "revoked {}{}",
                time(d.revoked_at),
                d.revoke_reason
                    .as_deref()
                    .filter(|r| !r.is_empty())
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
        };
        let action = if d.status == DeviceStatus::Revoked {
            String::new()
        } else if op.peer.principal.device_id() == Some(d.id) {
            "<span class=\"hint\">you</span>".to_owned()
        } else {
            format!(
                "<form method=\"post\" action=\"/devices/{id}/revoke\" class=\"revoke\" data-confirm=\"Revoke {name}?\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<label for=\"reason-{id}\" class=\"sr-only\">Reason for revoking {name}</label>\
<input id=\"reason-{id}\" name=\"reason\" placeholder=\"reason\" maxlength=\"1024\">\
<button type=\"submit\" class=\"danger\">Revoke {name}</button></form>",
                name = esc(&DeviceName::shown(&d.name)),
            )
        };
        let mark = if highlight == Some(id.as_str()) { " class=\"new\"" } else { "" };
        let _ = write!(
            out,
            "<tr{mark} data-device=\"{id}\" data-status=\"{state}\"><th scope=\"row\">{name}<br><code class=\"small\">{id}</code>\
<br><code class=\"small fingerprint\">{fp}</code></th><td>{role}</td><td>{status}</td><td>{expires}</td><td>{paired}</td><td>{action}</td></tr>",
            state = if d.status == DeviceStatus::Active { "active" } else { "revoked" },
            name = esc(&DeviceName::shown(&d.name)),
            fp = esc(&d.fingerprint),
            role = d.role,
            status = esc(&status),
            expires = esc(&time(Some(d.certificate_expires_at))),
            paired = esc(&time(Some(d.paired_at))),
        );
    }
    out.push_str("</tbody></table></div>");
    Ok(out)
}

pub(super) async fn devices(State(app): State<App>, op: Operator, Query(q): Query<DevicesQuery>) -> Page {
    let table = devices_table(&app, &op, q.paired.as_deref()).await?;
    let body = format!(
        "<div id=\"devices\" data-live=\"/devices/table\" data-live-kinds=\"device.,pairing.approved\">{table}</div>"
    );
    Ok(page("Devices", "/devices", op.session.csrf.expose(), &body).into_response())
}

/// `GET /devices/table`: the table alone, for live refresh.
pub(super) async fn devices_fragment(State(app): State<App>, op: Operator) -> Page {
    Ok(Html(devices_table(&app, &op, None).await?).into_response())
}

/// `POST /devices/{id}/revoke` (RevokeDevice; the resource check on the device is the
/// shared action's).
pub(super) async fn revoke(
    State(app): State<App>,
    op: Operator,
    Path(id): Path<String>,
    Form(form): Form<ReasonForm>,
) -> Page {
    let id: DeviceId =
        id.parse().map_err(|_| Failure::new(StatusCode::BAD_REQUEST, "Refused", "not a device id"))?;
    app.admin.revoke_device(&op.peer, id, &form.reason).await?;
    Ok(see_other("/devices"))
}

// --- Vault (metadata only) ----------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub(super) struct VaultQuery {
    scope: Option<String>,
    key: Option<String>,
}

/// Most scopes drawn in the tree.
const MAX_TREE_SCOPES: usize = 1000;

#[derive(Default)]
struct Tree(BTreeMap<String, Tree>);

impl Tree {
    fn insert(&mut self, scope: &Scope) {
        let mut node = self;
        for segment in scope.segments() {
            node = node.0.entry(segment.to_owned()).or_default();
        }
    }

    fn render(&self, prefix: &str, selected: Option<&str>, out: &mut String) {
        out.push_str("<ul>");
        for (segment, child) in &self.0 {
            let path = if prefix.is_empty() { segment.clone() } else { format!("{prefix}/{segment}") };
            let mark = if selected == Some(path.as_str()) { " aria-current=\"true\"" } else { "" };
            let _ = write!(
                out,
                "<li><a href=\"/vault?scope={p}\"{mark}>{s}</a>",
                p = esc(&path),
                s = esc(segment)
            );
            if !child.0.is_empty() {
                child.render(&path, selected, out);
            }
            out.push_str("</li>");
        }
        out.push_str("</ul>");
    }
}

/// `GET /vault?scope=…`: the scope tree and a scope's secrets (ListSecrets).
pub(super) async fn vault(State(app): State<App>, op: Operator, Query(q): Query<VaultQuery>) -> Page {
    vault_page(&app, &op, q.scope.as_deref(), None).await
}

/// `GET /vault/secret?scope=…&key=…`: the same with one secret's metadata and versions
/// (ListSecrets and GetSecretMetadata).
pub(super) async fn secret(State(app): State<App>, op: Operator, Query(q): Query<VaultQuery>) -> Page {
    let key = q.key.as_deref().filter(|k| !k.is_empty());
    let scope = q.scope.as_deref().filter(|s| !s.is_empty());
    if key.is_none() || scope.is_none() {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "Refused",
            "a secret is named by a scope and a key",
        ));
    }
    vault_page(&app, &op, scope, key).await
}

async fn vault_page(app: &App, op: &Operator, selected: Option<&str>, key: Option<&str>) -> Page {
    let vault = &app.node.core.vault;
    let mut tree = Tree::default();
    for scope in vault.scopes(MAX_TREE_SCOPES).await? {
        // Like a recursive ListSecrets: a scope a policy hides is left out.
        if op.may_on(app, actions::LIST_SECRETS, &Resource::Scope(scope.clone())).is_ok() {
            tree.insert(&scope);
        }
    }
    let selected = selected.filter(|s| !s.is_empty());
    let mut body = String::from(
        "<p class=\"hint\">Metadata only: the console never shows a secret's value \
(<code>palyra vault get --reveal</code> does, on the node).</p>\
<div class=\"split\"><nav aria-label=\"Scopes\" class=\"tree\"><h2>Scopes</h2>",
    );
    if tree.0.is_empty() {
        body.push_str("<p class=\"empty\">No secrets yet.</p>");
    } else {
        tree.render("", selected, &mut body);
    }
    body.push_str("</nav><div>");
    if let Some(text) = selected {
        let scope = Scope::parse(text)
            .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, "Refused", e.to_string()))?;
        op.may_on(app, actions::LIST_SECRETS, &Resource::Scope(scope.clone()))?;
        let (page_rows, more) = vault.list(&scope, true, true, 200, None).await?;
        let _ = write!(
            body,
            "<h2>{s}</h2><div class=\"scroll\"><table><thead><tr><th scope=\"col\">Scope</th><th scope=\"col\">Key</th>\
<th scope=\"col\">Version</th><th scope=\"col\">Size</th><th scope=\"col\">Updated</th><th scope=\"col\">State</th></tr></thead><tbody>",
            s = esc(scope.as_str())
        );
        for m in page_rows {
            if m.scope != scope
                && op.may_on(app, actions::LIST_SECRETS, &Resource::Scope(m.scope.clone())).is_err()
            {
                continue;
            }
            let _ = write!(
                body,
                "<tr><td>{sc}</td><th scope=\"row\"><a href=\"/vault/secret?scope={sc}&amp;key={k}\">{k}</a></th><td>{v}</td>\
<td>{size} B</td><td>{u}</td><td>{state}</td></tr>",
                sc = esc(m.scope.as_str()),
                k = esc(m.key.as_str()),
                v = m.version,
                size = m.size,
                u = esc(&time(Some(m.updated_at))),
                state = if m.deleted { "deleted" } else { "live" },
            );
        }
        body.push_str("</tbody></table></div>");
        if more.is_some() {
            body.push_str("<p class=\"hint\">The first 200 secrets are shown; use <code>palyra vault list</code> for all.</p>");
        }
        if let Some(key) = key {
            let key = SecretKey::parse(key)
                .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, "Refused", e.to_string()))?;
            op.may_on(app, actions::GET_SECRET_METADATA, &Resource::Scope(scope.clone()))?;
            let (m, versions) = vault.history(&scope, &key).await?;
            let _ = write!(
                body,
                "<section aria-labelledby=\"meta\"><h2 id=\"meta\">{sc}/{k}</h2><dl><dt>Object id</dt><dd><code class=\"small\">{oid}</code></dd>\
<dt>Latest version</dt><dd>{v}</dd><dt>Created</dt><dd>{c}</dd><dt>Updated</dt><dd>{u}</dd><dt>State</dt><dd>{state}</dd></dl>\
<table><thead><tr><th scope=\"col\">Version</th><th scope=\"col\">Written</th><th scope=\"col\">Size</th><th scope=\"col\">Ciphertext</th></tr></thead><tbody>",
                sc = esc(m.scope.as_str()),
                k = esc(m.key.as_str()),
                oid = esc(m.object_id.as_str()),
                v = m.version,
                c = esc(&time(Some(m.created_at))),
                u = esc(&time(Some(m.updated_at))),
                state = if m.deleted { "deleted" } else { "live" },
            );
            for v in versions {
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td>{}</td><td>{} B</td><td>{}</td></tr>",
                    v.version,
                    esc(&time(Some(v.created_at))),
                    v.size,
                    if v.destroyed { "destroyed" } else { "kept" }
                );
            }
            body.push_str("</tbody></table></section>");
        }
    } else {
        body.push_str("<p>Choose a scope.</p>");
    }
    body.push_str("</div></div>");
    Ok(page("Vault", "/vault", op.session.csrf.expose(), &body).into_response())
}

// --- Policies -----------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub(super) struct PolicyForm {
    #[serde(default)]
    policies: String,
    expected_version: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RollbackForm {
    version: u64,
}

/// The policies page; `draft` replaces the current text in the editor, with its diagnostics.
async fn policies_page(app: &App, op: &Operator, draft: Option<(&str, &[Diagnostic])>, note: &str) -> Page {
    let current = app.node.policies.current().await?;
    let versions = app.node.policies.versions().await?;
    let csrf = esc(op.session.csrf.expose());
    let mut body = String::new();
    if !note.is_empty() {
        let _ = write!(body, "<p class=\"ok\" role=\"status\">{}</p>", esc(note));
    }
    let text = draft.map_or(current.text.as_str(), |(t, _)| t);
    if let Some((_, diagnostics)) = draft {
        if diagnostics.is_empty() {
            body.push_str(
                "<p class=\"ok\" role=\"status\" id=\"diagnostics\">Valid: no errors, no warnings.</p>",
            );
        } else {
            body.push_str("<ul class=\"diagnostics\" id=\"diagnostics\" role=\"alert\">");
            for d in diagnostics {
                let _ = write!(
                    body,
                    "<li class=\"{class}\"><strong>{sev}</strong> line {line}, column {col}{policy}: {msg}</li>",
                    class = if d.severity == Severity::Error { "error" } else { "warning" },
                    sev = if d.severity == Severity::Error { "error" } else { "warning" },
                    line = d.line,
                    col = d.column,
                    policy = d.policy_id.as_deref().map(|p| format!(" ({})", esc(p))).unwrap_or_default(),
                    msg = esc(&d.message),
                );
            }
            body.push_str("</ul>");
        }
    }
    let _ = write!(
        body,
        "<p>Version {v}, stored {at} by <code>{by}</code>.</p>\
<form method=\"post\" action=\"/policies\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<input type=\"hidden\" name=\"expected_version\" value=\"{v}\">\
<label for=\"policies\">Cedar policies</label><textarea id=\"policies\" name=\"policies\" rows=\"24\" spellcheck=\"false\">{text}</textarea>\
<p class=\"buttons\"><button type=\"submit\" formaction=\"/policies/validate\">Validate</button> \
<button type=\"submit\">Save as version {next}</button></p></form>\
<h2>History</h2><div class=\"scroll\"><table><thead><tr><th scope=\"col\">Version</th><th scope=\"col\">Stored</th>\
<th scope=\"col\">By</th><th scope=\"col\">Action</th></tr></thead><tbody>",
        v = current.info.version,
        at = esc(&time(Some(current.info.updated_at))),
        by = esc(&current.info.updated_by),
        text = esc(text),
        next = current.info.version + 1,
    );
    for v in versions.iter().rev() {
        let action = if v.version == current.info.version {
            "current".to_owned()
        } else {
            format!(
                "<form method=\"post\" action=\"/policies/rollback\" data-confirm=\"Restore version {n}?\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"version\" value=\"{n}\">\
<button type=\"submit\">Restore version {n}</button></form>",
                n = v.version
            )
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{action}</td></tr>",
            v.version,
            esc(&time(Some(v.updated_at))),
            esc(&v.updated_by)
        );
    }
    body.push_str("</tbody></table></div>");
    Ok(page("Policies", "/policies", op.session.csrf.expose(), &body).into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct PoliciesQuery {
    saved: Option<u64>,
}

pub(super) async fn policies(State(app): State<App>, op: Operator, Query(q): Query<PoliciesQuery>) -> Page {
    let note = q.saved.map(|v| format!("Saved: version {v} is in force.")).unwrap_or_default();
    policies_page(&app, &op, None, &note).await
}

fn bounded_policy_text(text: &str) -> Result<(), Failure> {
    if text.len() > MAX_POLICY_TEXT_BYTES {
        return Err(Failure::new(StatusCode::PAYLOAD_TOO_LARGE, "Refused", "the policy text is too large"));
    }
    Ok(())
}

/// `POST /policies/validate` (ValidatePolicySet): the page again with the draft and its
/// diagnostics.
pub(super) async fn validate_policies(
    State(app): State<App>,
    op: Operator,
    Form(form): Form<PolicyForm>,
) -> Page {
    bounded_policy_text(&form.policies)?;
    let engine = std::sync::Arc::clone(app.node.policies.engine());
    let text = form.policies.clone();
    let diagnostics =
        tokio::task::spawn_blocking(move || engine.validate(&text)).await.map_err(Failure::internal)?;
    policies_page(&app, &op, Some((&form.policies, &diagnostics)), "").await
}

/// `POST /policies` (UpdatePolicySet, with the lockout guard of the domain).
pub(super) async fn update_policies(
    State(app): State<App>,
    op: Operator,
    Form(form): Form<PolicyForm>,
) -> Page {
    bounded_policy_text(&form.policies)?;
    app.gate().audit_before_write().await?;
    match app.node.policies.update(&form.policies, form.expected_version, &op.peer.principal).await {
        Ok(v) => {
            tracing::warn!(version = v.version, by = %op.peer.principal.label(), "policy set updated (console)");
            Ok(see_other(&format!("/policies?saved={}", v.version)))
        }
        Err(crate::policy::PolicyError::Invalid { diagnostics }) => {
            let page = policies_page(&app, &op, Some((&form.policies, &diagnostics)), "").await?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

/// `POST /policies/rollback` (RollbackPolicySet).
pub(super) async fn rollback_policies(
    State(app): State<App>,
    op: Operator,
    Form(form): Form<RollbackForm>,
) -> Page {
    app.gate().audit_before_write().await?;
    let v = app.node.policies.rollback(form.version, &op.peer.principal).await?;
    tracing::warn!(version = v.version, restored = form.version, by = %op.peer.principal.label(), "policy set rolled back (console)");
    Ok(see_other(&format!("/policies?saved={}", v.version)))
}

// --- Audit --------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub(super) struct AuditQuery {
    principal: Option<String>,
    action: Option<String>,
}

/// Records shown.
const AUDIT_PAGE: usize = 200;

pub(super) async fn audit(State(app): State<App>, op: Operator, Query(q): Query<AuditQuery>) -> Page {
    let filter =
        |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty() && s.len() <= 512);
    let (principal, action) = (filter(q.principal), filter(q.action));
    let verification = app.node.audit.verify().await.map_err(Failure::internal)?;
    // A failing log still shows what is committed (the verification above says why).
    let _ = app.node.audit.flush().await;
    let records = app
        .node
        .audit
        .recent(AUDIT_PAGE, principal.clone(), action.clone())
        .await
        .map_err(Failure::internal)?;
    let mut body = if verification.ok {
        format!(
            "<p class=\"ok\" role=\"status\" id=\"chain\">Chain verified: {} records, no edit, insertion or reordering found.</p>",
            verification.records_checked
        )
    } else {
        format!(
            "<p class=\"error\" role=\"alert\" id=\"chain\">Chain broken at record {}: the log was edited. {} records checked.</p>",
            verification.first_bad_sequence.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
            verification.records_checked
        )
    };
    let _ = write!(
        body,
        "<form method=\"get\" action=\"/audit\" class=\"inline\" role=\"search\">\
<label for=\"principal\">Principal</label><input id=\"principal\" name=\"principal\" value=\"{p}\" placeholder=\"device:01J…\">\
<label for=\"action\">Action</label><input id=\"action\" name=\"action\" value=\"{a}\" placeholder=\"palyra.identity.v1.IdentityService/RevokeDevice\">\
<button type=\"submit\">Filter</button></form>\
<p class=\"hint\">The newest {AUDIT_PAGE} records, newest first (exact matches).</p>\
<div class=\"scroll\"><table><thead><tr><th scope=\"col\">#</th><th scope=\"col\">Time</th><th scope=\"col\">Principal</th>\
<th scope=\"col\">Action</th><th scope=\"col\">Resource</th><th scope=\"col\">Decision</th><th scope=\"col\">Reason</th></tr></thead><tbody>",
        p = esc(principal.as_deref().unwrap_or("")),
        a = esc(action.as_deref().unwrap_or("")),
    );
    for r in records {
        let decision = match r.entry.decision {
            crate::audit::AuditDecision::Allow => "allow",
            crate::audit::AuditDecision::Deny => "deny",
        };
        let _ = write!(
            body,
            "<tr class=\"{decision}\"><td>{}</td><td>{}</td><td><code class=\"small\">{}</code></td><td><code class=\"small\">{}</code></td>\
<td><code class=\"small\">{}</code></td><td>{decision}</td><td>{}</td></tr>",
            r.sequence,
            esc(&time(Some(r.entry.at))),
            esc(&r.entry.principal),
            esc(&r.entry.action),
            esc(&r.entry.resource),
            esc(&r.entry.reason),
        );
    }
    body.push_str("</tbody></table></div>");
    Ok(page("Audit log", "/audit", op.session.csrf.expose(), &body).into_response())
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
