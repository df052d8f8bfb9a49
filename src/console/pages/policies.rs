//! The "Policies" page: the Cedar policy set in an editor with its diagnostics
//! (GetPolicySet, ValidatePolicySet, UpdatePolicySet) and its version history with rollback
//! (ListPolicyVersions, RollbackPolicySet).

use std::fmt::Write as _;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;

use super::{Page, see_other};
use crate::console::html::{esc, page, time};
use crate::console::{App, Failure, Operator};
use crate::policy::{Diagnostic, MAX_POLICY_TEXT_BYTES, Severity};

#[derive(Debug, Deserialize)]
pub(in crate::console) struct PolicyForm {
    #[serde(default)]
    policies: String,
    expected_version: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(in crate::console) struct RollbackForm {
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
pub(in crate::console) struct PoliciesQuery {
    saved: Option<u64>,
}

pub(in crate::console) async fn policies(
    State(app): State<App>,
    op: Operator,
    Query(q): Query<PoliciesQuery>,
) -> Page {
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
pub(in crate::console) async fn validate_policies(
    State(app): State<App>,
    op: Operator,
    Form(form): Form<PolicyForm>,
) -> Page {
    bounded_policy_text(&form.policies)?;
    let diagnostics = app.node.policies.validate(form.policies.clone()).await?;
    policies_page(&app, &op, Some((&form.policies, &diagnostics)), "").await
}

/// `POST /policies` (UpdatePolicySet, with the lockout guard of the domain).
pub(in crate::console) async fn update_policies(
    State(app): State<App>,
    op: Operator,
    Form(form): Form<PolicyForm>,
) -> Page {
    bounded_policy_text(&form.policies)?;
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
pub(in crate::console) async fn rollback_policies(
    State(app): State<App>,
    op: Operator,
    Form(form): Form<RollbackForm>,
) -> Page {
    let v = app.node.policies.rollback(form.version, &op.peer.principal).await?;
    tracing::warn!(version = v.version, restored = form.version, by = %op.peer.principal.label(), "policy set rolled back (console)");
    Ok(see_other(&format!("/policies?saved={}", v.version)))
}
