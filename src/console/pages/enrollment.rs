//! The "Enrollment" page: the node's enrollment keys (ListEnrollmentKeys, never their
//! secrets) with their use counts, live-refreshed, and a Revoke form on every key that can
//! still pair (RevokeEnrollmentKey). Keys are made with `palyra enrollment create`, so a token
//! is never shown in a browser.

use std::fmt::Write as _;
use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse};

use super::{Page, see_other};
use crate::console::html::{esc, page, time};
use crate::console::{App, Operator};
use crate::pairing::enrollment::KeyState;

async fn keys_table(app: &App, op: &Operator) -> Result<String, crate::console::Failure> {
    let keys = app.node.pairing.enrollment_keys(true).await?;
    if keys.is_empty() {
        return Ok("<p class=\"hint\">No enrollment keys. Make one on the node with \
<code>palyra enrollment create --scope SCOPE --uses N --ttl 24h</code>.</p>"
            .to_owned());
    }
    let csrf = esc(op.session.csrf.expose());
    let now = SystemTime::now();
    let mut out = String::from(
        "<div class=\"scroll\"><table><caption class=\"sr-only\">Enrollment keys</caption><thead><tr>\
<th scope=\"col\">Key</th><th scope=\"col\">Role</th><th scope=\"col\">Scopes</th><th scope=\"col\">Uses</th>\
<th scope=\"col\">State</th><th scope=\"col\">Expires</th><th scope=\"col\">Action</th></tr></thead><tbody>",
    );
    for k in &keys {
        let id = k.key_id.to_string();
        let state = k.state_at(now);
        let state_text = match state {
            KeyState::Active => "active".to_owned(),
            KeyState::UsedUp => "used up".to_owned(),
            KeyState::Expired => "expired".to_owned(),
            KeyState::Revoked => format!("revoked {}", time(k.revoked_at)),
        };
        let action = if state == KeyState::Active {
            format!(
                "<form method=\"post\" action=\"/enrollment/{id}/revoke\" class=\"revoke\" data-confirm=\"Revoke key {id}?\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<button type=\"submit\" class=\"danger\">Revoke {id}</button></form>"
            )
        } else {
            String::new()
        };
        let scopes: Vec<&str> = k.grants.scopes.iter().map(|s| s.as_str()).collect();
        let _ = write!(
            out,
            "<tr data-key=\"{id}\" data-state=\"{state:?}\"><th scope=\"row\"><code>{id}</code></th><td>{role}</td>\
<td>{scopes}</td><td>{uses} of {max}</td><td>{state_text}</td><td>{expires}</td><td>{action}</td></tr>",
            role = k.grants.role,
            scopes = esc(&if scopes.is_empty() { "—".to_owned() } else { scopes.join(", ") }),
            uses = k.uses,
            max = k.grants.max_uses,
            state_text = esc(&state_text),
            expires = esc(&time(Some(k.grants.expires_at))),
        );
    }
    out.push_str("</tbody></table></div>");
    Ok(out)
}

/// `GET /enrollment`.
pub(in crate::console) async fn enrollment(State(app): State<App>, op: Operator) -> Page {
    let table = keys_table(&app, &op).await?;
    let body = format!(
        "<p>Enrollment keys pair headless machines (agents, servers, CI) with no approval step: \
each device that pairs with a key gets the key's role and scopes at once. The token is shown once, \
by <code>palyra enrollment create</code>.</p>\
<div id=\"enrollment\" data-live=\"/enrollment/table\" data-live-kinds=\"pairing.approved\">{table}</div>"
    );
    Ok(page("Enrollment", "/enrollment", op.session.csrf.expose(), &body).into_response())
}

/// `GET /enrollment/table`: the table alone, for live refresh.
pub(in crate::console) async fn enrollment_fragment(State(app): State<App>, op: Operator) -> Page {
    Ok(Html(keys_table(&app, &op).await?).into_response())
}

/// `POST /enrollment/{id}/revoke` (RevokeEnrollmentKey).
pub(in crate::console) async fn revoke_key(State(app): State<App>, Path(id): Path<String>) -> Page {
    app.node.pairing.revoke_enrollment_key(&id).await?;
    Ok(see_other("/enrollment"))
}
