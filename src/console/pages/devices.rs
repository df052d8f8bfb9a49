//! The "Devices" page: the registry as a table (ListDevices), live-refreshed, with a Revoke
//! form on every device but the operator's own (RevokeDevice).

use std::fmt::Write as _;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse};
use serde::Deserialize;

use super::{Page, ReasonForm, see_other};
use crate::console::html::{esc, page, time};
use crate::console::{App, Failure, Operator};
use crate::identity::{DeviceId, DeviceStatus};
use crate::pairing::DeviceName;

#[derive(Debug, Deserialize)]
pub(in crate::console) struct DevicesQuery {
    paired: Option<String>,
}

async fn devices_table(app: &App, op: &Operator, highlight: Option<&str>) -> Result<String, Failure> {
    let devices = app.node.registry.devices().await?;
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

pub(in crate::console) async fn devices(
    State(app): State<App>,
    op: Operator,
    Query(q): Query<DevicesQuery>,
) -> Page {
    let table = devices_table(&app, &op, q.paired.as_deref()).await?;
    let body = format!(
        "<div id=\"devices\" data-live=\"/devices/table\" data-live-kinds=\"device.,pairing.approved\">{table}</div>"
    );
    Ok(page("Devices", "/devices", op.session.csrf.expose(), &body).into_response())
}

/// `GET /devices/table`: the table alone, for live refresh.
pub(in crate::console) async fn devices_fragment(State(app): State<App>, op: Operator) -> Page {
    Ok(Html(devices_table(&app, &op, None).await?).into_response())
}

/// `POST /devices/{id}/revoke` (RevokeDevice; the resource check on the device is the
/// shared action's).
pub(in crate::console) async fn revoke(
    State(app): State<App>,
    op: Operator,
    Path(id): Path<String>,
    Form(form): Form<ReasonForm>,
) -> Page {
    let id: DeviceId =
        id.parse().map_err(|_| Failure::new(StatusCode::BAD_REQUEST, "Refused", "not a device id"))?;
    app.node.registry.revoke(&op.peer, id, &form.reason).await?;
    Ok(see_other("/devices"))
}
