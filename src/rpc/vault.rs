//! `palyra.vault.v1.VaultService` over the vault core. Each handler parses its request, asks
//! the gate about the scope it touches (the resource check), then calls the vault.
//! WatchSecrets follows a [`Watch`] of the event log, each sub-scope decided through the
//! gate's [`crate::access::ScopeDecisions`].

use std::collections::HashMap;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::authz::{Gate, GateExt, peer_of};
use super::slots::StreamSlots;
use crate::access::DenialKind;
use crate::events::EventLog;
use crate::policy::{Resource, actions};
use crate::vault::{Scope, SecretValue, Vault, Watch};
use crate::wire::convert::{Listing, page_token, parse_page_token, requested_version, scope, secret_key, secret_reply};
use crate::wire::pb::vault::v1::{self as pb, vault_service_server::VaultService};
use crate::wire::status::{denied, internal, stream_shutdown};

const SERVICE: &str = "palyra.vault.v1.VaultService";

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

/// The vault service.
#[derive(Debug, Clone)]
pub struct VaultApi {
    vault: Vault,
    gate: Gate,
    events: EventLog,
    /// Becomes true when the server shuts down: open watches end so that it can drain.
    stopping: watch::Receiver<bool>,
    watches: StreamSlots,
}

impl VaultApi {
    /// The service over `vault`; watches follow `events` until `stopping` turns true.
    pub fn new(vault: Vault, gate: Gate, events: EventLog, stopping: watch::Receiver<bool>) -> Self {
        VaultApi { vault, gate, events, stopping, watches: StreamSlots::new("WatchSecrets", MAX_WATCHES_PER_PRINCIPAL, MAX_WATCHES) }
    }

    fn check_scope<T>(
        &self,
        request: &Request<T>,
        method: &str,
        scope: &crate::vault::Scope,
    ) -> Result<(), Status> {
        let peer = peer_of(request)?;
        self.gate.check(&peer, &format!("{SERVICE}/{method}"), &Resource::Scope(scope.clone()))
    }
}

#[tonic::async_trait]
impl VaultService for VaultApi {
    async fn put_secret(
        &self,
        request: Request<pb::PutSecretRequest>,
    ) -> Result<Response<pb::PutSecretResponse>, Status> {
        let s = scope("scope", &request.get_ref().scope)?;
        let k = secret_key("key", &request.get_ref().key)?;
        self.check_scope(&request, "PutSecret", &s)?;
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
        self.check_scope(&request, "GetSecret", &s)?;
        let version = requested_version(request.get_ref().version);
        let (value, metadata) = self.vault.get(&s, &k, version).await?;
        Ok(Response::new(secret_reply(value, metadata, version)))
    }

    async fn list_secrets(
        &self,
        request: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        let s = scope("scope", &request.get_ref().scope)?;
        self.check_scope(&request, "ListSecrets", &s)?;
        let peer = peer_of(&request)?;
        let req = request.into_inner();
        let listing = Listing { scope: &s, recursive: req.recursive, include_deleted: req.include_deleted };
        let after = parse_page_token(&listing, &req.page_token)?;
        let (page, next) =
            self.vault.list(&s, req.recursive, req.include_deleted, req.page_size as usize, after).await?;
        // A recursive listing reaches sub-scopes the check above did not ask about (a policy may
        // forbid `a/private` while permitting `a`): ask once per sub-scope on the page and leave
        // out what is denied.
        let mut allowed: HashMap<Scope, bool> = HashMap::new();
        let mut secrets = Vec::with_capacity(page.len());
        for metadata in page {
            let visible = metadata.scope == s
                || *allowed.entry(metadata.scope.clone()).or_insert_with(|| {
                    self.gate
                        .check(
                            &peer,
                            &format!("{SERVICE}/ListSecrets"),
                            &Resource::Scope(metadata.scope.clone()),
                        )
                        .is_ok()
                });
            if visible {
                secrets.push(metadata.into());
            }
        }
        Ok(Response::new(pb::ListSecretsResponse {
            secrets,
            next_page_token: next.as_ref().map(|position| page_token(&listing, position)).unwrap_or_default(),
        }))
    }

    async fn delete_secret(
        &self,
        request: Request<pb::DeleteSecretRequest>,
    ) -> Result<Response<pb::DeleteSecretResponse>, Status> {
        let s = scope("scope", &request.get_ref().scope)?;
        let k = secret_key("key", &request.get_ref().key)?;
        self.check_scope(&request, "DeleteSecret", &s)?;
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
        self.check_scope(&request, "GetSecretMetadata", &s)?;
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
                let last = item.is_err();
                tokio::select! {
                    biased;
                    sent = tx.send(item) => if sent.is_err() || last { return },
                    // A reader that takes nothing does not hold the server's drain.
                    _ = stopping.wait_for(|stop| *stop) => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
