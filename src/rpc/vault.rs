//! `palyra.vault.v1.VaultService` over the vault core. Each handler parses its request, asks
//! the gate about the scope it touches (the resource check), then calls the vault.

use std::collections::HashMap;

use tonic::{Request, Response, Status};

use super::authz::{Gate, GateExt, peer_of};
use crate::policy::Resource;
use crate::vault::{Scope, SecretValue, Vault};
use crate::wire::convert::{Listing, page_token, parse_page_token, requested_version, scope, secret_key, secret_reply};
use crate::wire::pb::vault::v1::{self as pb, vault_service_server::VaultService};
use crate::wire::status::internal;

const SERVICE: &str = "palyra.vault.v1.VaultService";

/// The vault service.
#[derive(Debug, Clone)]
pub struct VaultApi {
    vault: Vault,
    gate: Gate,
}

impl VaultApi {
    /// The service over `vault`.
    pub fn new(vault: Vault, gate: Gate) -> Self {
        VaultApi { vault, gate }
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

    type WatchSecretsStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchSecretsResponse, Status>> + Send>>;

    async fn watch_secrets(
        &self,
        _request: Request<pb::WatchSecretsRequest>,
    ) -> Result<Response<Self::WatchSecretsStream>, Status> {
        Err(Status::unimplemented("WatchSecrets is not implemented yet"))
    }
}
