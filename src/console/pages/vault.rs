//! The "Vault" page: the scope tree and a scope's secrets (ListSecrets), and one secret's
//! metadata and versions (GetSecretMetadata). Metadata only: never a value.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;

use super::Page;
use crate::console::html::{esc, page, time};
use crate::console::{App, Failure, Operator};
use crate::policy::{Resource, actions};
use crate::vault::{Scope, SecretKey};

#[derive(Debug, Deserialize)]
pub(in crate::console) struct VaultQuery {
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
pub(in crate::console) async fn vault(
    State(app): State<App>,
    op: Operator,
    Query(q): Query<VaultQuery>,
) -> Page {
    vault_page(&app, &op, q.scope.as_deref(), None).await
}

/// `GET /vault/secret?scope=…&key=…`: the same with one secret's metadata and versions
/// (ListSecrets and GetSecretMetadata).
pub(in crate::console) async fn secret(
    State(app): State<App>,
    op: Operator,
    Query(q): Query<VaultQuery>,
) -> Page {
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
