//! The gRPC edge: the only module that knows tonic and the generated `pb` types.
//!
//! [`serve`] runs every service behind TLS ([`server`]) and the Cedar method gate
//! ([`authz::GateLayer`]): Vault, Identity, Policy, Audit, `grpc.health.v1` (overall and per
//! service) and server reflection v1 and v1alpha, so `buf curl` and grpcurl can list, describe
//! and call everything. Handlers convert requests to domain types ([`convert`]), ask the gate
//! again for the resource they touch, call the domain, and map errors in one place
//! ([`status`]). Pairing is served by the pairing issue's service (not yet).

pub mod audit;
pub mod authz;
pub mod convert;
pub mod identity;
pub mod pb;
pub mod peer;
pub mod policy;
pub mod server;
pub mod status;
pub mod vault;

use std::future::Future;

use tokio::net::TcpListener;
use tonic::transport::Server;

use self::authz::{Gate, GateLayer};
use self::pb::audit::v1::audit_service_server::AuditServiceServer;
use self::pb::identity::v1::identity_service_server::IdentityServiceServer;
use self::pb::policy::v1::policy_service_server::PolicyServiceServer;
use self::pb::vault::v1::vault_service_server::VaultServiceServer;
use crate::node::Node;

/// Why the gRPC server stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] server::TlsSetupError),
    /// The server key could not be read.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// Reflection could not be built.
    #[error("server reflection: {0}")]
    Reflection(String),
    /// The transport failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Largest request message, whatever the vault's value limit (plus room for the other fields).
fn max_message_bytes(node: &Node) -> usize {
    node.core.vault.config().max_value_len.max(1024 * 1024) + 64 * 1024
}

/// Serves the node's gRPC API on `listener` until `shutdown` completes, then drains in-flight
/// requests and returns.
pub async fn serve(
    node: &Node,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let tls = server::server_tls_config(
        node.identity.server_cert_chain(),
        node.identity.server_private_key()?,
        node.identity.ca().certificate_der().clone(),
    )?;
    let gate = Gate {
        engine: std::sync::Arc::clone(node.policies.engine()),
        audit: node.audit.clone(),
        peers: node.peers.clone(),
    };
    let limit = max_message_bytes(node);

    let vault = VaultServiceServer::new(vault::VaultApi::new(node.core.vault.clone(), gate.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let identity = IdentityServiceServer::new(identity::IdentityApi::new(
        std::sync::Arc::clone(&node.identity),
        node.core.store.clone(),
        gate.clone(),
    ))
    .max_decoding_message_size(256 * 1024);
    let policy = PolicyServiceServer::new(policy::PolicyApi::new(
        std::sync::Arc::clone(&node.policies),
        node.core.store.clone(),
    ))
    .max_decoding_message_size(crate::policy::MAX_POLICY_TEXT_BYTES + 64 * 1024);
    let audit = AuditServiceServer::new(audit::AuditApi::new(node.audit.clone()))
        .max_decoding_message_size(64 * 1024);

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<VaultServiceServer<vault::VaultApi>>().await;
    health_reporter.set_serving::<IdentityServiceServer<identity::IdentityApi>>().await;
    health_reporter.set_serving::<PolicyServiceServer<policy::PolicyApi>>().await;
    health_reporter.set_serving::<AuditServiceServer<audit::AuditApi>>().await;

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_v1alpha =
        reflection().build_v1alpha().map_err(|e| ServeError::Reflection(e.to_string()))?;

    let incoming = server::tls_incoming(listener, tls);
    Server::builder()
        .layer(GateLayer::new(gate))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(vault)
        .add_service(identity)
        .add_service(policy)
        .add_service(audit)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    health_reporter.set_not_serving::<VaultServiceServer<vault::VaultApi>>().await;
    Ok(())
}
