//! The gRPC edge: tonic serving every service behind TLS and the gate; the generated code and
//! the error mapping it uses are `wire`'s.
//!
//! [`serve`] runs every service behind TLS ([`server`]) and the Cedar method gate
//! ([`authz::GateLayer`]): Vault, Identity, Policy, Audit, AuthProfile, Console, `grpc.health.v1` (overall and per
//! service), Pairing, and server reflection v1 and v1alpha, so `buf curl` and grpcurl can
//! list, describe and call everything. Handlers convert requests to domain types ([`convert`]), ask the gate
//! again for the resource they touch, call the domain, and map errors in one place
//! ([`status`]). Revocation also ends a device's open streams ([`streams`]).

pub mod audit;
pub mod auth;
pub mod authz;
pub mod codec;
pub mod console;
pub mod framing;
pub mod identity;
pub mod pairing;
pub mod peer;
pub mod policy;
pub mod server;
mod slots;
pub mod streams;
pub mod vault;

use std::future::Future;

use tokio::net::TcpListener;
use tonic::transport::Server;

use self::authz::GateLayer;
use crate::node::Node;
use crate::wire::pb::audit::v1::audit_service_server::AuditServiceServer;
use crate::wire::pb::auth::v1::auth_profile_service_server::AuthProfileServiceServer;
use crate::wire::pb::console::v1::console_service_server::ConsoleServiceServer;
use crate::wire::pb::identity::v1::identity_service_server::IdentityServiceServer;
use crate::wire::pb::pairing::v1::pairing_service_server::PairingServiceServer;
use crate::wire::pb::policy::v1::policy_service_server::PolicyServiceServer;
use crate::wire::pb::vault::v1::vault_service_server::VaultServiceServer;

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
    /// The audit log's sealed head does not match its table: the node does not serve on it.
    #[error("the audit log failed its integrity check: {0}; refusing to serve")]
    AuditIntegrity(crate::audit::HeadMismatch),
    /// The system's random number generator failed.
    #[error("the system's random number generator failed")]
    Random,
}

/// The largest request message of each service: checked from its gRPC prefix by the gate
/// ([`framing`]) and given to tonic as its decoding limit too.
#[derive(Debug, Clone, Copy)]
pub struct MessageLimits {
    /// VaultService: the vault's value limit (at least 1 MiB) plus room for the other fields.
    pub vault: usize,
}

impl MessageLimits {
    /// IdentityService and AuthProfileService (CSRs and certificates are a few KiB).
    pub const IDENTITY: usize = 256 * 1024;
    /// PolicyService: the largest policy text plus room for the other fields.
    pub const POLICY: usize = crate::policy::MAX_POLICY_TEXT_BYTES + 64 * 1024;
    /// Pairing, audit, health, reflection, and anything else (a few hundred bytes each).
    pub const SMALL: usize = 64 * 1024;

    /// The limits of `node`.
    pub fn of(node: &Node) -> Self {
        MessageLimits { vault: node.core.vault.config().max_value_len.max(1024 * 1024) + 64 * 1024 }
    }

    /// What a request to `path` (`/package.Service/Method`) may carry.
    pub fn framing(&self, path: &str) -> framing::Framing {
        let service = path.trim_start_matches('/').split('/').next().unwrap_or_default();
        let max_message = match service {
            "palyra.vault.v1.VaultService" => self.vault,
            "palyra.identity.v1.IdentityService" | "palyra.auth.v1.AuthProfileService" => Self::IDENTITY,
            "palyra.policy.v1.PolicyService" => Self::POLICY,
            _ => Self::SMALL,
        };
        // Reflection is the one service whose requests are a stream.
        let unary = !service.starts_with("grpc.reflection.");
        framing::Framing { max_message, unary }
    }
}

/// The longest a call may take, from its headers to its response (every RPC is unary and
/// answers in milliseconds; GetAccessToken's provider call has its own 30 s bound). It also
/// ends requests whose body never finishes arriving, which would otherwise hold their buffer
/// for as long as the connection lives.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Requests in flight on one connection: what a half-sent request can hold is bounded by its
/// method's message limit, so this bounds a connection's buffers too.
const MAX_CONCURRENT_STREAMS: u32 = 128;

/// How often the server certificate's due date is checked.
const RENEWAL_CHECK: std::time::Duration = std::time::Duration::from_secs(6 * 60 * 60);

/// Renews the server certificate when it is due (a third of its lifetime left) for as long as
/// the server runs; the next handshake uses the new one.
async fn renew_server_certificate(node: Node, certificate: std::sync::Arc<server::ServerCertificate>) {
    loop {
        let expiry = crate::identity::ca::certificate_not_after(&certificate.leaf_der());
        match expiry.and_then(crate::metrics::unix_seconds) {
            Some(at) => node.metrics.set(crate::metrics::StateGauge::ServerCertificateExpiry, at),
            None => node.metrics.clear(crate::metrics::StateGauge::ServerCertificateExpiry),
        }
        tokio::time::sleep(RENEWAL_CHECK).await;
        let (n, current) = (node.clone(), certificate.leaf_der());
        let refreshed = tokio::task::spawn_blocking(move || {
            n.refresh_server_certificate(&current, std::time::SystemTime::now())
        })
        .await;
        match refreshed {
            Ok(Ok(Some((chain, key)))) => match certificate.replace(chain, key) {
                Ok(()) => tracing::info!("serving the renewed server certificate"),
                Err(e) => tracing::error!(error = %e, "cannot use the renewed server certificate"),
            },
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "server certificate renewal failed; retrying later"),
            Err(e) => tracing::error!(error = %e, "server certificate renewal task failed"),
        }
    }
}

/// Serves the node's gRPC API on `listener` until `shutdown` completes, then drains in-flight
/// requests and returns. Default [`server::GrpcLimits`].
#[cfg_attr(not(feature = "testkit"), allow(dead_code))]
pub async fn serve(
    node: &Node,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let limits = server::GrpcLimits::default();
    serve_with(node, listener, &limits, server::GrpcLoad::new(&limits), shutdown).await
}

/// [`serve`] with `limits`; `load` (made with [`server::GrpcLoad::new`] from the same limits)
/// is the live connection budget, for whoever wants to watch it.
pub async fn serve_with(
    node: &Node,
    listener: TcpListener,
    limits: &server::GrpcLimits,
    load: server::GrpcLoad,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    if let Some(problem) = node.audit.integrity() {
        return Err(ServeError::AuditIntegrity(problem));
    }
    let certificate = server::ServerCertificate::new(
        node.identity.server_cert_chain(),
        node.identity.server_private_key()?,
    )?;
    let tls = server::server_tls_config(
        std::sync::Arc::clone(&certificate),
        node.identity.ca().certificate_der().clone(),
    )?;
    let renewal = AbortOnDrop(tokio::spawn(renew_server_certificate(node.clone(), certificate)));
    let gate = node.gate.clone();
    let message_limits = MessageLimits::of(node);
    let limit = message_limits.vault;

    // Long-lived streams (WatchSecrets, ExportAuditLog) end when the server starts to drain, or it never would.
    let (stop_streams, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_streams.send(true);
    };
    let vault = VaultServiceServer::new(vault::VaultApi::new(
        node.core.vault.clone(),
        gate.clone(),
        node.events.clone(),
        stopping.clone(),
    )
    .map_err(|_| ServeError::Random)?)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let identity =
        IdentityServiceServer::new(identity::IdentityApi::new(std::sync::Arc::clone(&node.registry)))
            .max_decoding_message_size(MessageLimits::IDENTITY);
    let policy = PolicyServiceServer::new(policy::PolicyApi::new(
        std::sync::Arc::clone(&node.policies),
        node.peers.clone(),
    ))
    .max_decoding_message_size(MessageLimits::POLICY);
    let fallback_address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    // Pairing sessions (and codes, requests) that expired while the node was down go now.
    if let Err(e) = node.pairing.expire(std::time::SystemTime::now()).await {
        tracing::warn!(error = ?e, "could not prune expired pairing state at startup");
    }
    let pairing = PairingServiceServer::new(pairing::PairingApi::new(
        std::sync::Arc::clone(&node.pairing),
        fallback_address,
    ))
    .max_decoding_message_size(MessageLimits::SMALL);
    let audit = AuditServiceServer::new(
        audit::AuditApi::new(node.audit.clone(), gate.clone(), stopping.clone()).with_metrics(node.metrics.clone()),
    )
        .max_decoding_message_size(MessageLimits::SMALL);

    let auth = AuthProfileServiceServer::new(auth::AuthApi::new(node.auth.clone(), gate.clone()))
        .max_decoding_message_size(MessageLimits::IDENTITY);

    let console = ConsoleServiceServer::new(console::ConsoleApi::new(node.logins.clone()))
        .max_decoding_message_size(MessageLimits::SMALL);

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<VaultServiceServer<vault::VaultApi>>().await;
    health_reporter.set_serving::<IdentityServiceServer<identity::IdentityApi>>().await;
    health_reporter.set_serving::<PolicyServiceServer<policy::PolicyApi>>().await;
    health_reporter.set_serving::<AuditServiceServer<audit::AuditApi>>().await;
    health_reporter.set_serving::<PairingServiceServer<pairing::PairingApi>>().await;
    health_reporter.set_serving::<AuthProfileServiceServer<auth::AuthApi>>().await;
    health_reporter.set_serving::<ConsoleServiceServer<console::ConsoleApi>>().await;
    let audit_health = AbortOnDrop(tokio::spawn(follow_audit_health(node.audit.clone(), health_reporter)));

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::wire::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_v1alpha =
        reflection().build_v1alpha().map_err(|e| ServeError::Reflection(e.to_string()))?;

    let idle = server::IdleTable::default();
    let incoming = server::tls_incoming(listener, tls, limits, load, idle.clone());
    // HTTP/2 pings find connections whose peer vanished without closing them.
    Server::builder()
        .timeout(REQUEST_TIMEOUT)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .layer(server::IdleLayer::new(idle))
        .layer(GateLayer::new(gate, message_limits))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(vault)
        .add_service(identity)
        .add_service(policy)
        .add_service(audit)
        .add_service(pairing)
        .add_service(auth)
        .add_service(console)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    drop(renewal);
    drop(audit_health);
    Ok(())
}

/// How often summaries of anonymous floods whose window closed are written.
const ANONYMOUS_SWEEP: std::time::Duration = std::time::Duration::from_secs(10);

/// Every service (and the overall status `""`) is NOT_SERVING while the audit log cannot
/// record: its calls are refused (UNAVAILABLE), so a load balancer should route elsewhere.
/// SERVING again once appends succeed. Also writes the summaries of anonymous floods.
async fn follow_audit_health(audit: crate::audit::Audit, reporter: tonic_health::server::HealthReporter) {
    use tonic_health::ServingStatus;
    const SERVICES: [&str; 8] = [
        "",
        "palyra.vault.v1.VaultService",
        "palyra.identity.v1.IdentityService",
        "palyra.policy.v1.PolicyService",
        "palyra.audit.v1.AuditService",
        "palyra.pairing.v1.PairingService",
        "palyra.auth.v1.AuthProfileService",
        "palyra.console.v1.ConsoleService",
    ];
    let mut healthy = audit.health();
    let mut sweep = tokio::time::interval(ANONYMOUS_SWEEP);
    loop {
        let status =
            if *healthy.borrow_and_update() { ServingStatus::Serving } else { ServingStatus::NotServing };
        for service in SERVICES {
            reporter.set_service_status(service, status).await;
        }
        if status == ServingStatus::NotServing {
            tracing::error!("health: NOT_SERVING while the audit log cannot record");
        }
        loop {
            tokio::select! {
                changed = healthy.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                _ = sweep.tick() => audit.sweep_anonymous(),
            }
        }
    }
}

/// Stops a background task when the server stops, however it stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
