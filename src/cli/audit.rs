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
    /// Re-compute the hash chain (from the last verified checkpoint) and report the first bad
    /// record.
    #[command(
        after_help = "Examples:\n  palyra audit verify          # from the last verified checkpoint\n  palyra audit verify --full   # every kept record and every checkpoint\n  palyra audit verify --peer 192.168.1.20:7444   # witness a peer's log (exit 5: it no longer extends what was witnessed)"
    )]
    Verify {
        /// Walk every kept record and check every checkpoint, not only what followed the
        /// last verification.
        #[arg(long, conflicts_with = "peer")]
        full: bool,
        /// Witness another node's log over QUIC instead: its signed checkpoint must extend
        /// every checkpoint this data dir witnessed before (its key pinned the first time).
        #[arg(long, value_name = "HOST:PORT")]
        peer: Option<String>,
    },
    /// Remove the records the retention does not keep, now (the node also prunes hourly).
    #[command(
        after_help = "Examples:\n  palyra audit prune                       # by [audit] retain_records / retain_days\n  palyra audit prune --retain-days 90"
    )]
    Prune {
        /// Keep the newest this many records (instead of the configured retention).
        #[arg(long)]
        retain_records: Option<u64>,
        /// Keep the records of the last this many days (instead of the configured retention).
        #[arg(long)]
        retain_days: Option<u32>,
    },
    /// Print the latest signed checkpoint of the log (Ed25519 by the node's signing key).
    #[command(
        after_help = "Example:\n  palyra audit checkpoint --json   # {\"sequence\", \"head\", \"at\", \"signature\", ...}"
    )]
    Checkpoint,
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

/// A checkpoint as `palyra audit checkpoint` and `prune` print it.
#[derive(Debug, Serialize)]
struct CheckpointOut {
    sequence: u64,
    head: String,
    at: String,
    at_unix_ms: i64,
    kind: String,
    signature: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
}

impl CheckpointOut {
    fn of(c: pb::AuditCheckpoint, public_key: Option<String>) -> Self {
        let at = prost_types::Timestamp {
            seconds: c.at_unix_ms.div_euclid(1000),
            nanos: (c.at_unix_ms.rem_euclid(1000) * 1_000_000) as i32,
        };
        CheckpointOut {
            sequence: c.sequence,
            head: c.head,
            at: time(Some(&at)),
            at_unix_ms: c.at_unix_ms,
            kind: c.kind,
            signature: c.signature,
            public_key,
        }
    }
}

pub(super) async fn run(ctx: &Context, cmd: AuditCommand) -> Result<(), CliError> {
    if let AuditCommand::Verify { peer: Some(peer), .. } = &cmd {
        // The global --credentials (or PALYRA_CREDENTIALS), else client/, then operator/.
        return super::witness::verify_peer(ctx, peer, ctx.credentials.as_deref()).await;
    }
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
        AuditCommand::Prune { retain_records, retain_days } => {
            let r = client
                .prune_audit_log(pb::PruneAuditLogRequest { retain_records, retain_days })
                .await?
                .into_inner();
            #[derive(Serialize)]
            struct Out {
                removed: u64,
                first_sequence: u64,
                last_sequence: u64,
                checkpoint: Option<CheckpointOut>,
            }
            let out = Out {
                removed: r.removed,
                first_sequence: r.first_sequence,
                last_sequence: r.last_sequence,
                checkpoint: r.checkpoint.map(|c| CheckpointOut::of(c, None)),
            };
            ctx.print(&out, || match out.removed {
                0 => "nothing to prune (the retention keeps every record)".to_owned(),
                n => format!(
                    "pruned {n} audit records ({} to {}); signed checkpoint at {}",
                    out.first_sequence, out.last_sequence, out.last_sequence
                ),
            })
        }
        AuditCommand::Checkpoint => {
            let r = client
                .get_audit_checkpoint(pb::GetAuditCheckpointRequest { sequence: None })
                .await?
                .into_inner();
            let checkpoint = r.checkpoint.ok_or_else(|| CliError::new("the node sent no checkpoint"))?;
            let out = CheckpointOut::of(checkpoint, Some(r.public_key));
            ctx.print(&out, || {
                format!(
                    "audit checkpoint ({}): record {} with head {}\n  at {}\n  signature {}\n  signing key {}",
                    out.kind,
                    out.sequence,
                    out.head,
                    out.at,
                    out.signature,
                    out.public_key.as_deref().unwrap_or_default()
                )
            })
        }
        AuditCommand::Verify { full, .. } => {
            let v = client.verify_audit_log(pb::VerifyAuditLogRequest { full }).await?.into_inner();
            #[derive(Serialize)]
            struct Out {
                ok: bool,
                records_checked: u64,
                from_sequence: u64,
                first_bad_sequence: Option<u64>,
                #[serde(skip_serializing_if = "Option::is_none")]
                problem: Option<String>,
            }
            let out = Out {
                ok: v.ok,
                records_checked: v.records_checked,
                from_sequence: v.from_sequence,
                first_bad_sequence: v.first_bad_sequence,
                problem: v.problem.clone(),
            };
            ctx.print(&out, || match (v.ok, v.first_bad_sequence) {
                (true, _) if v.from_sequence > 0 => format!(
                    "audit chain ok: {} records checked after the signed checkpoint at {}",
                    v.records_checked, v.from_sequence
                ),
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
