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
    /// Print audit records as JSON lines (sequence, at, principal, action, resource, decision,
    /// reason, hash), oldest first: up to the newest record, or on and on with --follow.
    #[command(
        after_help = "Examples:\n  palyra audit export --since 1000 > audit.jsonl\n  palyra audit export --follow --since \"$(tail -n1 audit.jsonl | jq .sequence)\" >> audit.jsonl"
    )]
    Export {
        /// Only records after this sequence (0: from the oldest kept).
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Keep going: print each new record as it is committed (until interrupted).
        #[arg(long)]
        follow: bool,
    },
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
        AuditCommand::Export { since, follow } => export(&mut client, since, follow).await,
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

/// Prints the records of ExportAuditLog as JSON lines, the sink's format, flushing each
/// message's lines. With `--follow` a stream that ends is a failure: the error names the
/// sequence to resume after.
async fn export(
    client: &mut AuditServiceClient<tonic::transport::Channel>,
    since: u64,
    follow: bool,
) -> Result<(), CliError> {
    use std::io::Write;
    let mut stream = client
        .export_audit_log(pb::ExportAuditLogRequest { since_sequence: since, follow })
        .await?
        .into_inner();
    let mut last = since;
    let ended = loop {
        let message = match stream.message().await {
            Ok(Some(message)) => message,
            Ok(None) if !follow => return Ok(()),
            Ok(None) => break CliError::new("the node ended the export"),
            Err(status) if status.code() != tonic::Code::Unavailable || last == since => {
                return Err(status.into());
            }
            Err(status) => break CliError::from(status),
        };
        let mut text = String::new();
        for record in message.records {
            last = record.sequence;
            text.push_str(&crate::audit::export::json_line(&crate::wire::convert::audit_record_from_pb(
                record,
            )));
            text.push('\n');
        }
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| CliError::new(e.to_string()))?;
    };
    Err(ended.hint(format!("every record up to {last} was printed: resume with --since {last}")))
}
