//! `palyra policy ...`

use std::path::PathBuf;

use clap::Subcommand;
use serde::Serialize;

use super::client::connect;
use super::output::{CliError, Context, time};
use crate::rpc::pb::policy::v1::{self as pb, policy_service_client::PolicyServiceClient};

#[derive(Debug, Subcommand)]
pub(super) enum PolicyCommand {
    /// Print the active policy set.
    Get {
        /// Also print the Cedar schema.
        #[arg(long)]
        schema: bool,
    },
    /// Replace the policy set with FILE (validated; refused if it would lock you out).
    Set {
        /// Cedar policy file.
        file: PathBuf,
        /// Only if the active version is this one.
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Validate FILE against the schema without installing it.
    Validate {
        /// Cedar policy file.
        file: PathBuf,
    },
    /// Ask the node for a decision, e.g. `check 'Palyra::Device::"01j…"' palyra.vault.v1.VaultService/GetSecret 'Palyra::Scope::"a/b"'`.
    Check {
        /// Principal entity uid.
        principal: String,
        /// Action id (full gRPC method or QUIC method).
        action: String,
        /// Resource entity uid.
        resource: String,
        /// Context as JSON.
        #[arg(long)]
        context: Option<String>,
    },
    /// List policy versions.
    History,
    /// Make an earlier version active again (as a new version).
    Rollback {
        /// The version to restore.
        version: u64,
    },
    /// Offline break-glass: install the default policies in the data dir's database. Run it
    /// with the server stopped.
    Reset,
}

/// `palyra policy reset`: takes the data dir's lock (refused while `palyra serve` runs), opens
/// the node's core (the root key: the new version gets its row MAC), installs the defaults and
/// appends an audit record through the same hash chain as every other decision.
async fn reset(ctx: &Context) -> Result<u64, CliError> {
    let db = ctx.data_dir.join("palyra.db");
    if !db.exists() {
        return Err(CliError::new(format!("no node database at {}", db.display())).hint("check --data-dir"));
    }
    let _lock = crate::datadir_lock::DataDirLock::acquire(&ctx.data_dir, "palyra policy reset")
        .map_err(|e| CliError::new(e.to_string()).hint("stop `palyra serve` first: reset is offline"))?;
    let core = crate::node::NodeCore::open(&ctx.data_dir, crate::node::NodeOptions::default())
        .await
        .map_err(|e| CliError::new(e.to_string()))?;
    let store = core.store.clone();
    let (audit_key, head_key) = (core.keys.audit_chain_key(), core.keys.audit_head_key());
    let audit =
        tokio::task::spawn_blocking(move || crate::storage::AuditLog::start(&store, audit_key, head_key))
            .await
            .map_err(|e| CliError::new(e.to_string()))?
            .map_err(|e| CliError::new(e.to_string()))?;
    // The reset is recorded in the chain, so it runs only where a record can be appended.
    if let Some(problem) = audit.integrity() {
        return Err(CliError::new(format!(
            "the audit log failed its integrity check: {problem}; not resetting"
        ))
        .hint("restore palyra.db from a backup"));
    }
    let version = crate::policy::Policies::reset_to_defaults(&core.store)
        .await
        .map_err(|e| CliError::new(e.to_string()))?
        .version;
    let recorded = audit.record(crate::audit::AuditEntry {
        at: std::time::SystemTime::now(),
        principal: RESET_PRINCIPAL.to_owned(),
        action: crate::policy::UPDATED_BY_RESET.to_owned(),
        resource: "Node".to_owned(),
        decision: crate::audit::AuditDecision::Allow,
        reason: format!(
            "default policies installed as version {version} (offline, pid {})",
            std::process::id()
        ),
    });
    let recorded = match recorded {
        Ok(()) => audit.flush().await,
        Err(e) => Err(e),
    };
    core.store.close();
    recorded.map_err(|e| {
        CliError::new(format!(
            "default policies installed as version {version}, but its audit record failed: {e}"
        ))
        .hint("run `palyra audit verify`")
    })?;
    Ok(version)
}

/// The principal of the audit record of an offline reset: whoever can run it on the node's
/// machine with access to the data dir and the root key.
const RESET_PRINCIPAL: &str = "local-operator";

fn read_file(path: &PathBuf) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|e| CliError::new(format!("cannot read {}: {e}", path.display())))
}

pub(super) async fn run(ctx: &Context, cmd: PolicyCommand) -> Result<(), CliError> {
    if let PolicyCommand::Reset = cmd {
        let version = reset(ctx).await?;
        #[derive(Serialize)]
        struct Out {
            version: u64,
        }
        return ctx.print(&Out { version }, || format!("default policies installed as version {version}"));
    }
    let mut client = PolicyServiceClient::new(connect(ctx).await?);
    match cmd {
        PolicyCommand::Get { schema } => {
            let set = client
                .get_policy_set(pb::GetPolicySetRequest {})
                .await?
                .into_inner()
                .policy_set
                .unwrap_or_default();
            print_set(ctx, set, schema)
        }
        PolicyCommand::Set { file, expected_version } => {
            let policies = read_file(&file)?;
            let set = client
                .update_policy_set(pb::UpdatePolicySetRequest { policies, expected_version })
                .await?
                .into_inner()
                .policy_set
                .unwrap_or_default();
            ctx.print(&Summary::from(&set), || format!("policy version {} is active", set.version))
        }
        PolicyCommand::Validate { file } => {
            let policies = read_file(&file)?;
            let v = client.validate_policy_set(pb::ValidatePolicySetRequest { policies }).await?.into_inner();
            #[derive(Serialize)]
            struct Diag {
                severity: &'static str,
                message: String,
                policy_id: String,
                line: u32,
                column: u32,
            }
            let diags: Vec<Diag> = v
                .diagnostics
                .iter()
                .map(|d| Diag {
                    severity: if d.severity() == pb::DiagnosticSeverity::Warning {
                        "warning"
                    } else {
                        "error"
                    },
                    message: d.message.clone(),
                    policy_id: d.policy_id.clone(),
                    line: d.line,
                    column: d.column,
                })
                .collect();
            ctx.print(&diags, || {
                if v.valid && diags.is_empty() {
                    format!("{} is valid", file.display())
                } else {
                    diags
                        .iter()
                        .map(|d| {
                            format!(
                                "{}:{}:{}: {}: {}",
                                file.display(),
                                d.line,
                                d.column,
                                d.severity,
                                d.message
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                }
            })?;
            if v.valid { Ok(()) } else { Err(CliError::new(format!("{} is not valid", file.display()))) }
        }
        PolicyCommand::Check { principal, action, resource, context } => {
            let r = client
                .authorize(pb::AuthorizeRequest {
                    principal,
                    action,
                    resource,
                    context_json: context.unwrap_or_default(),
                })
                .await?
                .into_inner();
            #[derive(Serialize)]
            struct Out {
                decision: &'static str,
                determining_policies: Vec<String>,
                errors: Vec<String>,
                explanation: String,
            }
            let out = Out {
                decision: if r.decision() == pb::Decision::Allow { "allow" } else { "deny" },
                determining_policies: r.determining_policies,
                errors: r.errors,
                explanation: r.explanation,
            };
            ctx.print(&out, || format!("{}: {}", out.decision.to_uppercase(), out.explanation))
        }
        PolicyCommand::History => {
            let versions =
                client.list_policy_versions(pb::ListPolicyVersionsRequest {}).await?.into_inner().versions;
            #[derive(Serialize)]
            struct Out {
                version: u64,
                updated_at: String,
                updated_by: String,
            }
            let out: Vec<Out> = versions
                .into_iter()
                .map(|v| Out {
                    version: v.version,
                    updated_at: time(v.updated_at.as_ref()),
                    updated_by: v.updated_by,
                })
                .collect();
            ctx.print(&out, || {
                out.iter()
                    .map(|v| format!("v{}  {}  {}", v.version, v.updated_at, v.updated_by))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        PolicyCommand::Rollback { version } => {
            let set = client
                .rollback_policy_set(pb::RollbackPolicySetRequest { version })
                .await?
                .into_inner()
                .policy_set
                .unwrap_or_default();
            ctx.print(&Summary::from(&set), || {
                format!("version {version} restored as version {}", set.version)
            })
        }
        PolicyCommand::Reset => Ok(()),
    }
}

#[derive(Serialize)]
struct Summary {
    version: u64,
    updated_at: String,
    updated_by: String,
}

impl From<&pb::PolicySet> for Summary {
    fn from(s: &pb::PolicySet) -> Self {
        Summary {
            version: s.version,
            updated_at: time(s.updated_at.as_ref()),
            updated_by: s.updated_by.clone(),
        }
    }
}

fn print_set(ctx: &Context, set: pb::PolicySet, schema: bool) -> Result<(), CliError> {
    #[derive(Serialize)]
    struct Out {
        version: u64,
        updated_at: String,
        updated_by: String,
        policies: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        schema: Option<String>,
    }
    let out = Out {
        version: set.version,
        updated_at: time(set.updated_at.as_ref()),
        updated_by: set.updated_by,
        policies: set.policies,
        schema: schema.then_some(set.schema),
    };
    ctx.print(&out, || {
        let mut text = format!(
            "// version {} (updated {} by {})\n{}",
            out.version, out.updated_at, out.updated_by, out.policies
        );
        if let Some(schema) = &out.schema {
            text.push_str("\n// schema\n");
            text.push_str(schema);
        }
        text
    })
}
