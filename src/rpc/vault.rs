//! `palyra.vault.v1.VaultService` over the vault core. Each handler parses its request, asks
//! the gate about the scope it touches (the resource check), then calls the vault.

use tonic::{Request, Response, Status};

use super::authz::{Gate, GateExt, peer_of};
use super::convert::{page_token, parse_page_token, scope, secret_key};
use super::pb::vault::v1::{self as pb, vault_service_server::VaultService};
use crate::policy::Resource;
use crate::vault::{SecretValue, Vault};

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
        let version = Some(request.get_ref().version).filter(|&v| v != 0);
        let (value, metadata) = self.vault.get(&s, &k, version).await?;
        let served = version.unwrap_or(metadata.version);
        Ok(Response::new(pb::GetSecretResponse {
            // Moved, not copied: the only plaintext buffer goes to the transport, which
            // encodes it into the TLS stream and frees it.
            value: std::mem::take(&mut *value.into_inner()),
            metadata: Some(metadata.into()),
            version: served,
        }))
    }

    async fn list_secrets(
        &self,
        request: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        let s = scope("scope", &request.get_ref().scope)?;
        self.check_scope(&request, "ListSecrets", &s)?;
        let req = request.into_inner();
        let after = parse_page_token(&req.page_token)?;
        let (page, next) =
            self.vault.list(&s, req.recursive, req.include_deleted, req.page_size as usize, after).await?;
        Ok(Response::new(pb::ListSecretsResponse {
            secrets: page.into_iter().map(Into::into).collect(),
            next_page_token: next.as_ref().map(page_token).unwrap_or_default(),
        }))
    }

    async fn delete_secret(
        &self,
        request: Request<pb::DeleteSecretRequest>,
    ) -> Result<Response<pb::DeleteSecretResponse>, Status> {
        let s = scope("scope", &request.get_ref().scope)?;
        let k = secret_key("key", &request.get_ref().key)?;
        self.check_scope(&request, "DeleteSecret", &s)?;
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
        // Admin-only at the method gate; there is no finer resource.
        let rotation = self.vault.rotate_key().await?;
        tracing::info!(generation = rotation.generation, rewrapped = rotation.rewrapped, "vault key rotated");
        Ok(Response::new(pb::RotateKeyResponse {
            generation: rotation.generation,
            rewrapped: rotation.rewrapped,
        }))
    }
}
