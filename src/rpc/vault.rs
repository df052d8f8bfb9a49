//! `palyra.vault.v1.VaultService` over the vault core. Each handler parses its request, asks
//! the gate about the scope it touches (the resource check), then calls the vault.
//! WatchSecrets follows a [`Watch`] of the event log, each sub-scope decided through the
//! gate's [`crate::access::ScopeDecisions`].


use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::authz::{Gate, GateExt, peer_of};
use super::slots::{StreamSlots, forward};
use crate::access::{Denied, DenialKind};
use crate::events::EventLog;
use crate::policy::{Resource, actions};
use crate::vault::{Scope, SecretValue, Vault, Watch};
use crate::wire::convert::{Listing, PageTokens, requested_version, scope, secret_key, secret_reply};
use crate::wire::pb::vault::v1::{self as pb, vault_service_server::VaultService};
use crate::wire::status::{denied, internal, stream_shutdown};

/// Rows one ListSecrets call reads while it skips secrets the caller may not list: 16 pages,
/// at most this many (past its first page); then it returns what it has with a token to go on.
/// It bounds the scopes one call decides, so the audit records it writes.
const MAX_LIST_SCAN_ROWS: usize = 2000;

/// Scopes one ListSecrets call decides (and audits) at most; past them it returns what it has
/// with a token to go on. A listing from `/` over a vault of many scopes the caller may not see
/// so costs the audit log this many records a call, not one per scope in the vault.
const MAX_LIST_DECISIONS: usize = 64;

/// Messages of one WatchSecrets stream waiting for the client: the stream's task waits when
/// they are not taken (HTTP/2 flow control holds the rest back), so a slow reader costs this
/// and the subscription's page, never more.
const WATCH_BUFFER: usize = 16;

/// Open WatchSecrets streams one principal may hold. Each stream decides (and audits) every
/// sub-scope it meets once per policy version, so the streams of one caller multiply what one
/// of its puts costs the audit log: bounded here.
pub const MAX_WATCHES_PER_PRINCIPAL: usize = 8;
/// Open WatchSecrets streams on the node.
pub const MAX_WATCHES: usize = 1024;

/// The methods whose handler makes its resource decision ([`VaultApi::check_scope`]) before
/// anything else: the method gate holds its allow for it, and the two are one audit record
/// (`crate::access::HeldAllow`).
pub(crate) const HOLDS_METHOD_ALLOW: &[&str] =
    &[actions::GET_SECRET, actions::PUT_SECRET, actions::DELETE_SECRET, actions::GET_SECRET_METADATA];

/// The vault service.
#[derive(Debug, Clone)]
pub struct VaultApi {
    vault: Vault,
    gate: Gate,
    events: EventLog,
    /// Becomes true when the server shuts down: open watches end so that it can drain.
    stopping: watch::Receiver<bool>,
    watches: StreamSlots,
    /// ListSecrets page tokens: sealed, since a position may be a row the caller was not shown.
    tokens: std::sync::Arc<PageTokens>,
}

impl VaultApi {
    /// The service over `vault`; watches follow `events` until `stopping` turns true.
    pub fn new(
        vault: Vault,
        gate: Gate,
        events: EventLog,
        stopping: watch::Receiver<bool>,
    ) -> Result<Self, ring::error::Unspecified> {
        Ok(VaultApi {
            vault,
            gate,
            events,
            stopping,
            watches: StreamSlots::new("WatchSecrets", MAX_WATCHES_PER_PRINCIPAL, MAX_WATCHES),
            tokens: std::sync::Arc::new(PageTokens::new()?),
        })
    }

    /// Decides `action` on `scope` for the request's peer (recorded, with the method decision
    /// the gate held for it); hands the scope back, so the resource is built without a copy.
    fn check_scope<T>(&self, request: &Request<T>, action: &'static str, scope: Scope) -> Result<Scope, Status> {
        let peer = request
            .extensions()
            .get::<crate::access::Peer>()
            .ok_or_else(|| internal("request reached a handler without passing the gate"))?;
        let anonymous = matches!(peer.principal, crate::identity::Principal::Anonymous);
        let resource = Resource::Scope(scope);
        let held = request.extensions().get::<crate::access::HeldAllow>();
        let decision = self.gate.decide_after(peer, action, &resource, held);
        // Built as a scope above: moved in for the decision, moved back out for the caller.
        let Resource::Scope(scope) = resource else { return Err(internal("a scope decision without its scope")) };
        decision.map_err(|d| denied(anonymous, reserved(&scope, d)))?;
        Ok(scope)
    }
}

/// A policy denial on the node's own `palyra/` scopes says they are reserved.
fn reserved(scope: &Scope, mut d: Denied) -> Denied {
    let reserved = scope.as_str() == "palyra" || scope.as_str().starts_with("palyra/");
    if reserved && d.kind == DenialKind::Policy {
        d.message = format!(
            "{}: the palyra/ scopes are reserved for the node (auth profiles keep their keys in {}; use `palyra auth`)",
            d.message,
            crate::auth::RESERVED_SCOPE
        );
    }
    d
}

#[tonic::async_trait]
impl VaultService for VaultApi {
    async fn put_secret(
        &self,
        request: Request<pb::PutSecretRequest>,
    ) -> Result<Response<pb::PutSecretResponse>, Status> {
        let s = scope("scope", &request.get_ref().scope)?;
        let k = secret_key("key", &request.get_ref().key)?;
        let s = self.check_scope(&request, actions::PUT_SECRET, s)?;
        self.gate.before_write().await?;
        let req = request.into_inner();
        let metadata = self.vault.put(&s, &k, SecretValue::new(req.value), req.expected_version).await?;
        tracing::info!(scope = %s, key = %k, version = metadata.version, "secret written");
        Ok(Response::new(pb::PutSecretResponse { metadata: Some(metadata.into()) }))
    }

    async fn get_secret(
        &self,
        request: Request<pb::GetSecretRequest>,
    ) -> Result<Response<pb::GetSecretResponse>, Status> {
        let s = scope("scope", &request.get_ref().scope)?;
        let k = secret_key("key", &request.get_ref().key)?;
        let s = self.check_scope(&request, actions::GET_SECRET, s)?;
        let version = requested_version(request.get_ref().version);
        let (value, metadata) = self.vault.get(&s, &k, version).await?;
        Ok(Response::new(secret_reply(value, metadata, version)))
    }

    async fn list_secrets(
        &self,
        request: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        // "" or "/": every scope the caller may list (the top-level ones and below).
        let root = match request.get_ref().scope.as_str() {
            "" | "/" => None,
            text => Some(scope("scope", text)?),
        };
        let peer = peer_of(&request)?;
        let anonymous = matches!(peer.principal, crate::identity::Principal::Anonymous);
        let caller = peer.principal.label();
        let req = request.into_inner();
        let recursive = req.recursive || root.is_none();
        // Each scope met is decided (and audited) once per call, at most MAX_REMEMBERED_SCOPES.
        let mut decisions = self.gate.scope_decisions(peer, actions::LIST_SECRETS);
        // The scope asked for. Denied by the policy, a recursive listing still returns the
        // sub-scopes the caller may list (names it may read anyway: nothing is revealed about
        // the rest); a flat listing, an anonymous caller or an audit failure stays refused.
        let mut root_denied = None;
        match &root {
            Some(s) => match decisions.decide(s) {
                Ok(()) => {}
                Err(d) if recursive && !anonymous && d.kind == DenialKind::Policy => root_denied = Some(d),
                Err(d) => return Err(denied(anonymous, reserved(s, d))),
            },
            None if anonymous => {
                let message = "an anonymous caller lists no scope".to_owned();
                return Err(denied(true, Denied { kind: DenialKind::Policy, message }));
            }
            None => {}
        }
        let listing = Listing { scope: root.as_ref(), recursive, include_deleted: req.include_deleted };
        let mut after = self.tokens.open(&listing, &caller, &req.page_token)?;
        let first_page = after.is_none();
        let limit = match req.page_size as usize {
            0 => crate::vault::DEFAULT_PAGE_SIZE,
            n => n.min(crate::vault::MAX_PAGE_SIZE),
        };
        // Hidden rows are skipped a page at a time, up to a budget per call; the token resumes.
        let mut scanned = 0;
        let mut secrets = Vec::with_capacity(limit);
        let next = 'scan: loop {
            let (page, next) = self
                .vault
                .list_under(root.as_ref(), recursive, req.include_deleted, limit, after.clone())
                .await?;
            let rows = page.len();
            scanned += rows;
            for (i, metadata) in page.into_iter().enumerate() {
                let position = (metadata.scope.clone(), metadata.key.clone());
                let visible = match (&root, &root_denied) {
                    (Some(s), None) if metadata.scope == *s => true,
                    _ if decisions.made() >= MAX_LIST_DECISIONS && !decisions.remembers(&metadata.scope) => {
                        // Out of decisions for this call: the next one goes on from this row.
                        break 'scan after.clone();
                    }
                    _ => decisions.decide(&metadata.scope).is_ok(),
                };
                if visible {
                    secrets.push(metadata.into());
                }
                after = Some(position);
                if secrets.len() == limit {
                    // Full: go on after this row, unless it was the listing's last.
                    let more = i + 1 < rows || next.is_some();
                    break 'scan after.clone().filter(|_| more);
                }
            }
            if next.is_none() {
                break None;
            }
            if scanned >= (16 * limit).min(MAX_LIST_SCAN_ROWS) {
                break after.clone();
            }
        };
        if let (Some(d), true, true, None) = (root_denied, first_page, secrets.is_empty(), &next) {
            // Nothing under it is the caller's to list: the denial of the scope asked for.
            let d = match &root {
                Some(s) => reserved(s, d),
                None => d,
            };
            return Err(denied(anonymous, d));
        }
        Ok(Response::new(pb::ListSecretsResponse {
            secrets,
            next_page_token: match &next {
                Some(position) => self.tokens.seal(&listing, &caller, position)?,
                None => String::new(),
            },
        }))
    }

    async fn delete_secret(
        &self,
        request: Request<pb::DeleteSecretRequest>,
    ) -> Result<Response<pb::DeleteSecretResponse>, Status> {
        let s = scope("scope", &request.get_ref().scope)?;
        let k = secret_key("key", &request.get_ref().key)?;
        let s = self.check_scope(&request, actions::DELETE_SECRET, s)?;
        self.gate.before_write().await?;
        let destroy = request.get_ref().destroy;
        let metadata = self.vault.delete(&s, &k, destroy).await?;
        tracing::info!(scope = %s, key = %k, destroy, "secret deleted");
        Ok(Response::new(pb::DeleteSecretResponse { metadata: Some(metadata.into()) }))
    }

    async fn get_secret_metadata(
        &self,
        request: Request<pb::GetSecretMetadataRequest>,
    ) -> Result<Response<pb::GetSecretMetadataResponse>, Status> {
        let s = scope("scope", &request.get_ref().scope)?;
        let k = secret_key("key", &request.get_ref().key)?;
        let s = self.check_scope(&request, actions::GET_SECRET_METADATA, s)?;
        let (metadata, versions) = self.vault.history(&s, &k).await?;
        Ok(Response::new(pb::GetSecretMetadataResponse {
            metadata: Some(metadata.into()),
            versions: versions.into_iter().map(Into::into).collect(),
        }))
    }

    async fn rotate_key(
        &self,
        _request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        // Admin-only at the method gate; there is no finer resource. The rotation runs in its
        // own task so that a client that goes away does not leave it half done.
        self.gate.before_write().await?;
        let vault = self.vault.clone();
        let rotation = tokio::spawn(async move { vault.rotate_key().await }).await.map_err(internal)??;
        tracing::info!(generation = rotation.generation, rewrapped = rotation.rewrapped, "vault key rotated");
        Ok(Response::new(rotation.into()))
    }

    type WatchSecretsStream = ReceiverStream<Result<pb::WatchSecretsResponse, Status>>;

    async fn watch_secrets(
        &self,
        request: Request<pb::WatchSecretsRequest>,
    ) -> Result<Response<Self::WatchSecretsStream>, Status> {
        let root = scope("scope", &request.get_ref().scope)?;
        let peer = peer_of(&request)?;
        let anonymous = matches!(peer.principal, crate::identity::Principal::Anonymous);
        // The scope asked for is the first decision of the stream's own memory: recorded like
        // every other resource check, and asked again for changes made under a later policy.
        let principal = peer.principal.label();
        let mut decisions = self.gate.scope_decisions(peer, actions::WATCH_SECRETS);
        decisions.decide(&root).map_err(|d| denied(anonymous, d))?;
        let slot = self.watches.take(principal).map_err(|d| denied(anonymous, d))?;
        let req = request.into_inner();
        let mut watch =
            Watch::start(&self.events, root.clone(), req.recursive, req.since_sequence, req.progress).await?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            let _slot = slot;
            // The watched scope is asked first at every change in its subtree (once per policy
            // version, the decisions remember the rest): a policy update that takes it away ends
            // the stream at the next change anywhere under it. A sub-scope the policy denies is
            // left out; an audit log that cannot record ends the stream.
            let mut visible = |scope: &Scope| {
                decisions.decide(&root).map_err(|d| denied(anonymous, d))?;
                match decisions.decide(scope) {
                    Ok(()) => Ok(true),
                    Err(d) if d.kind == DenialKind::Policy => Ok(false),
                    Err(d) => Err(denied(anonymous, d)),
                }
            };
            loop {
                let item = tokio::select! {
                    item = watch.next(&mut visible) => item.map(Into::into),
                    _ = stopping.wait_for(|stop| *stop) => Err(stream_shutdown()),
                    () = tx.closed() => return,
                };
                if !forward(&tx, item, &mut stopping).await {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every method whose gate allow is held must make its scope decision first thing, or its
    /// record would be written only when the request is dropped, after the effect. The four
    /// below do (`check_scope` is their first step), and
    /// `grpc_vault::a_scoped_vault_call_is_one_audit_record_naming_both_decisions` checks each
    /// against a real node: a method added to the list must be added there too.
    #[test]
    fn the_methods_that_hold_their_allow_are_the_four_tested_ones() {
        let mut held: Vec<&str> = HOLDS_METHOD_ALLOW.to_vec();
        held.sort_unstable();
        let mut tested =
            vec![actions::DELETE_SECRET, actions::GET_SECRET, actions::GET_SECRET_METADATA, actions::PUT_SECRET];
        tested.sort_unstable();
        assert_eq!(held, tested);
    }
}
