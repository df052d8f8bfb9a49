//! gRPC channel to the node with the operator's (or a paired device's) client certificate.

use std::path::Path;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::output::{CliError, Context};
use crate::config::Layout;

/// A channel authenticated with the credentials in the data dir: `operator/` on the node
/// itself, `client/` on a paired device.
pub async fn connect(ctx: &Context) -> Result<Channel, CliError> {
    let layout = Layout::new(&ctx.data_dir);
    let dir = [layout.operator_dir(), layout.client_dir()]
        .into_iter()
        .find(|d| d.join("cert.pem").exists())
        .ok_or_else(|| {
            CliError::new(format!("no client credentials in {}", ctx.data_dir.display()))
                .hint("run `palyra init` on the node, or `palyra pair` on a device, or pass --data-dir")
        })?;
    channel(&ctx.server, &dir).await
}

/// A channel to `server` with `ca.pem`, `cert.pem` and `key.pem` from `dir`.
pub async fn channel(server: &str, dir: &Path) -> Result<Channel, CliError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| CliError::new(format!("cannot read {}: {e}", path.display())))
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")?))
        .identity(Identity::from_pem(read("cert.pem")?, read("key.pem")?));
    let endpoint = Channel::from_shared(server.to_owned())
        .map_err(|e| CliError::new(format!("bad --server {server:?}: {e}")).hint("use https://HOST:PORT"))?
        .tls_config(tls)
        .map_err(|e| CliError::new(format!("tls: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(5));
    endpoint.connect().await.map_err(|e| {
        CliError::new(format!("cannot connect to {server}: {e}"))
            .hint("is `palyra serve` running, and is --server right?")
    })
}
