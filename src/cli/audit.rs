//! `palyra audit ...`

use clap::Subcommand;
use serde::Serialize;

use super::client::connect;
use super::output::{CliError, Context, Exit, time};
use crate::wire::pb::audit::v1::{self as pb, audit_service_client::AuditServiceClient};

#[derive(Debug, Subcommand)]
pub(super) enum AuditCommand {
    /// List audit records.
    #[command(
        after_help = "Example:\n  palyra audit list --since 100 --limit 20 --action palyra.vault.v1.VaultService/GetSecret"
    )]
    List {
        /// Only records after this sequence.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Most records to show.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Only this principal (e.g. anonymous, device:<id>).
        #[arg(long)]
        principal: Option<String>,
        /// Only this action.
        #[arg(long)]
        action: Option<String>,
    },
    /// Re-compute the hash chain and report the first bad record.
    #[command(after_help = "Example:\n  palyra audit verify || echo \"audit log damaged (exit $?)\"")]
    Verify,
}

pub(super) async fn run(ctx: &Context, cmd: AuditCommand) -> Result<(), CliError> {
    let mut client = AuditServiceClient::new(connect(ctx).await?);
    match cmd {
        AuditCommand::List { since, limit, principal, action } => {
            let records = client
                .list_audit_records(pb::ListAuditRecordsRequest {
                    since_sequence: since,
                    limit,
                    principal,
                    action,
                })
                .await?
                .into_inner()
                .records;
            #[derive(Serialize)]
            struct Out {
                sequence: u64,
                at: String,
                principal: String,
                action: String,
                resource: String,
                decision: &'static str,
                reason: String,
                hash: String,
            }
            let out: Vec<Out> = records
                .into_iter()
                .map(|r| Out {
                    sequence: r.sequence,
                    at: time(r.at.as_ref()),
                    decision: if r.decision() == pb::AuditDecision::Allow { "allow" } else { "deny" },
                    principal: r.principal,
                    action: r.action,
                    resource: r.resource,
                    reason: r.reason,
                    hash: r.hash,
                })
                .collect();
            ctx.print(&out, || {
                out.iter()
                    .map(|r| {
                        format!(
                            "{:>6} {} {:<5} {} {} on {} ({})",
                            r.sequence, r.at, r.decision, r.principal, r.action, r.resource, r.reason
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        AuditCommand::Verify => {
            let v = client.verify_audit_log(pb::VerifyAuditLogRequest {}).await?.into_inner();
            #[derive(Serialize)]
            struct Out {
                ok: bool,
                records_checked: u64,
                first_bad_sequence: Option<u64>,
                #[serde(skip_serializing_if = "Option::is_none")]
                problem: Option<String>,
            }
            let out = Out {
                ok: v.ok,
                records_checked: v.records_checked,
                first_bad_sequence: v.first_bad_sequence,
                problem: v.problem.clone(),
            };
            ctx.print(&out, || match (v.ok, v.first_bad_sequence) {
                (true, _) => format!("audit chain ok: {} records checked", v.records_checked),
                (false, bad) => format!(
                    "AUDIT CHAIN BROKEN at record {} ({} records checked): {}",
                    bad.unwrap_or_default(),
                    v.records_checked,
                    v.problem.as_deref().unwrap_or("no detail")
                ),
            })?;
            if v.ok {
                Ok(())
            } else {
                let problem = v.problem.unwrap_or_else(|| "the chain does not verify".to_owned());
                Err(CliError::of(Exit::Integrity, format!("the audit log failed verification: {problem}")))
            }
        }
    }
}
