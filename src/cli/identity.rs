//! `palyra identity ...`

use clap::Subcommand;
use serde::Serialize;

use super::client::{connect, credentials_dir, renew_now};
use super::output::{CliError, Context};
use crate::wire::pb::identity::v1::{self as pb, identity_service_client::IdentityServiceClient};

#[derive(Debug, Subcommand)]
pub(super) enum IdentityCommand {
    /// Show the node's identity and who this CLI is to it.
    #[command(after_help = "Example:\n  palyra identity show --json")]
    Show,
    /// Renew this data dir's client certificate now (the CLI also renews on its own past two
    /// thirds of the certificate's lifetime).
    #[command(after_help = "Example: palyra identity renew --json   # prints {\"not_after\": \"...\"}")]
    Renew,
}

pub(super) async fn run(ctx: &Context, cmd: IdentityCommand) -> Result<(), CliError> {
    match cmd {
        IdentityCommand::Renew => {
            let dir = credentials_dir(ctx)?;
            let not_after = renew_now(&ctx.server, &dir).await?;
            let not_after = super::output::time(Some(&prost_types::Timestamp::from(not_after)));
            #[derive(Serialize)]
            struct Out {
                certificate: String,
                not_after: String,
            }
            let out = Out { certificate: dir.join("cert.pem").display().to_string(), not_after };
            ctx.print(&out, || format!("renewed {}; valid until {}", out.certificate, out.not_after))
        }
        IdentityCommand::Show => {
            let mut client = IdentityServiceClient::new(connect(ctx).await?);
            let node = client.get_node_identity(pb::GetNodeIdentityRequest {}).await?.into_inner();
            let me = client.who_am_i(pb::WhoAmIRequest {}).await?.into_inner();
            #[derive(Serialize)]
            struct Out {
                device_id: String,
                fingerprint: String,
                signing_public_key: String,
                agreement_public_key: String,
                ca_fingerprint: String,
                ca_certificate_pem: String,
                caller: Caller,
            }
            #[derive(Serialize)]
            struct Caller {
                principal_type: String,
                device_id: String,
                role: String,
            }
            let out = Out {
                device_id: node.device_id,
                fingerprint: node.fingerprint,
                signing_public_key: hex::encode(&node.signing_public_key),
                agreement_public_key: hex::encode(&node.agreement_public_key),
                ca_fingerprint: node.ca_fingerprint,
                ca_certificate_pem: node.ca_certificate_pem,
                caller: Caller { principal_type: me.principal_type, device_id: me.device_id, role: me.role },
            };
            ctx.print(&out, || {
                format!(
                    "node          {}\nfingerprint   {}\nCA            {}\nyou are       {} {} ({})",
                    out.device_id,
                    out.fingerprint,
                    out.ca_fingerprint,
                    out.caller.principal_type,
                    out.caller.device_id,
                    out.caller.role
                )
            })
        }
    }
}
