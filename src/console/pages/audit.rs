//! The "Audit log" page: the chain's verification and the newest records, filtered by
//! principal or action (VerifyAuditLog, ListAuditRecords).

use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::response::IntoResponse;
use serde::Deserialize;

use super::Page;
use crate::console::html::{esc, page, time};
use crate::console::{App, Failure, Operator};

#[derive(Debug, Deserialize)]
pub(in crate::console) struct AuditQuery {
    principal: Option<String>,
    action: Option<String>,
}

/// Records shown.
const AUDIT_PAGE: usize = 200;

pub(in crate::console) async fn audit(
    State(app): State<App>,
    op: Operator,
    Query(q): Query<AuditQuery>,
) -> Page {
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
    let mut body = if verification.ok && verification.from_sequence > 0 {
        format!(
            "<p class=\"ok\" role=\"status\" id=\"chain\">Chain verified: {} records after the signed checkpoint at record {}, no edit, insertion or reordering found (records before it: <code>palyra audit verify --full</code>).</p>",
            verification.records_checked, verification.from_sequence
        )
    } else if verification.ok {
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
