//! `palyra policy ...`

use std::path::PathBuf;

use clap::Subcommand;
use serde::Serialize;

use super::client::connect;
use super::output::{CliError, Context, Exit, time};
use crate::wire::pb::policy::v1::{self as pb, policy_service_client::PolicyServiceClient};

#[derive(Debug, Subcommand)]
pub(super) enum PolicyCommand {
    /// Print the active policy set.
    #[command(after_help = "Example:\n  palyra policy get --schema")]
    Get {
        /// Also print the Cedar schema.
        #[arg(long)]
        schema: bool,
    },
    /// Replace the policy set with FILE (validated; refused if it would lock you out).
    #[command(
        after_help = "Example:\n  palyra policy set my.cedar --test src/policy/default.cases.toml --expected-version 3"
    )]
    Set {
        /// Cedar policy file.
        file: PathBuf,
        /// Only if the active version is this one.
        #[arg(long)]
        expected_version: Option<u64>,
        /// Run this cases file against FILE first (offline, as `policy test`); install nothing
        /// if any case fails.
        #[arg(long, value_name = "CASES")]
        test: Option<PathBuf>,
    },
    /// Validate FILE against the schema without installing it.
    #[command(after_help = "Example:\n  palyra policy validate my.cedar")]
    Validate {
        /// Cedar policy file.
        file: PathBuf,
    },
    /// Ask the node for a decision, e.g. `check 'Palyra::Device::"01j…"' palyra.vault.v1.VaultService/GetSecret 'Palyra::Scope::"a/b"'`
    /// (a bare device id stands for its `Palyra::Device` uid).
    #[command(
        after_help = "Example:\n  palyra policy check 'Palyra::Device::\"01jf3k8m2q9x7v5t4r6w8y0z1a\"' palyra.vault.v1.VaultService/GetSecret 'Palyra::Scope::\"agents/alpha\"'   # exit 3 on DENY"
    )]
    Check {
        /// Principal entity uid, or a bare device id for `Palyra::Device::"<id>"`, or
        /// `anonymous`.
        principal: String,
        /// Action id (full gRPC method or QUIC method).
        action: String,
        /// Resource entity uid.
        resource: String,
        /// Context as JSON.
        #[arg(long)]
        context: Option<String>,
    },
    /// Check a policy file against expected decisions, offline (no node): one line a case,
    /// exit 1 if any fails, 2 if the cases file is malformed.
    Test(super::policy_test::TestArgs),
    /// List policy versions.
    #[command(after_help = "Example:\n  palyra policy history --json")]
    History,
    /// Make an earlier version active again (as a new version).
    #[command(after_help = "Example:\n  palyra policy rollback 3")]
    Rollback {
        /// The version to restore.
        version: u64,
    },
    /// Offline break-glass: install the default policies in the data dir's database. Run it
    /// with the server stopped.
    #[command(after_help = "Example:\n  palyra policy reset   # with `palyra serve` stopped")]
    Reset,
}

/// `palyra policy reset`: takes the data dir's lock (refused while `palyra serve` runs), then
/// the node installs the defaults and appends an audit record through the same hash chain as
/// every other decision (`node::reset_policies_offline`).
async fn reset(ctx: &Context) -> Result<u64, CliError> {
    let db = ctx.data_dir.join("palyra.db");
    if !db.exists() {
        return Err(CliError::new(format!("no node database at {}", db.display())).hint("check --data-dir"));
    }
    let _lock = crate::datadir_lock::DataDirLock::acquire(&ctx.data_dir, "palyra policy reset")
        .map_err(|e| CliError::new(e.to_string()).hint("stop `palyra serve` first: reset is offline"))?;
    crate::node::reset_policies_offline(&ctx.data_dir).await.map_err(|e| {
        use crate::node::OfflineResetError;
        use crate::policy::ResetError;
        let hint = match &e {
            OfflineResetError::Reset(ResetError::AuditIntegrity(_)) => {
                Some("restore palyra.db from a backup")
            }
            OfflineResetError::Reset(ResetError::Unrecorded { .. }) => Some("run `palyra audit verify`"),
            _ => None,
        };
        let error = CliError::new(e.to_string());
        match hint {
            Some(hint) => error.hint(hint),
            None => error,
        }
    })
}

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
    if let PolicyCommand::Test(args) = cmd {
        return super::policy_test::run(ctx, args);
    }
    if let PolicyCommand::Set { file, test: Some(cases), .. } = &cmd {
        // Offline first: a set that fails its cases never reaches the node.
        let outcomes =
            super::policy_test::Cases::load(cases)?.run(&super::policy_test::engine_for(Some(file))?)?;
        if !ctx.json || outcomes.iter().any(|o| !o.ok) {
            super::policy_test::print(ctx, cases, &outcomes).map_err(|_| {
                CliError::new(format!(
                    "refused: {} fails {}; nothing installed",
                    file.display(),
                    cases.display()
                ))
            })?;
        }
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
        PolicyCommand::Set { file, expected_version, .. } => {
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
                    principal: principal_uid(&principal),
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
            ctx.print(&out, || format!("{}: {}", out.decision.to_uppercase(), out.explanation))?;
            // A DENY is the answer, already printed; the exit code says it too (3).
            if out.decision == "allow" { Ok(()) } else { Err(CliError::status(Exit::Denied.code())) }
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
        PolicyCommand::Reset | PolicyCommand::Test(_) => Ok(()),
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

/// The principal as a Cedar uid: a bare device id is `Palyra::Device::"<id>"` (lower case),
/// `anonymous` the anonymous principal; anything else is passed on as written.
fn principal_uid(text: &str) -> String {
    let text = text.trim();
    if text.contains("::") {
        return text.to_owned();
    }
    if text.eq_ignore_ascii_case("anonymous") {
        return "Palyra::Anonymous::\"anonymous\"".to_owned();
    }
    match crate::identity::DeviceId::parse(text) {
        Ok(id) => format!("Palyra::Device::\"{id}\""),
        Err(_) => text.to_owned(),
    }
}
