//! `palyra vault ...`

use std::io::Read;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;
use zeroize::Zeroizing;

use super::client::connect;
use super::output::{CliError, Context, time};
use crate::wire::pb::vault::v1::{self as pb, vault_service_client::VaultServiceClient};

#[derive(Debug, Subcommand)]
pub(super) enum VaultCommand {
    /// Write a new version of a secret. The value comes from stdin or a file, never argv.
    #[command(
        after_help = "Example:\n  printf %s \"$TOKEN\" | palyra vault put agents/alpha GITHUB_TOKEN --value-stdin"
    )]
    Put(PutArgs),
    /// Read a secret (redacted unless --reveal).
    #[command(
        after_help = "Example:\n  palyra vault get agents/alpha GITHUB_TOKEN --reveal --raw | gh auth login --with-token"
    )]
    Get {
        /// Scope, e.g. agents/alpha.
        scope: String,
        /// Key, e.g. OPENAI_API_KEY.
        key: String,
        /// Version to read (default: latest).
        #[arg(long)]
        version: Option<u64>,
        /// Print the value itself (with a newline added on a terminal).
        #[arg(long)]
        reveal: bool,
        /// With --reveal: exactly the value's bytes, no newline added (for pipes).
        #[arg(long, requires = "reveal")]
        raw: bool,
    },
    /// Write a scope's secrets from a `.env` file or a JSON object (all checked before any write).
    Import(super::vault_io::ImportArgs),
    /// Print a scope's secrets as `.env` or JSON (to a terminal only with --reveal).
    Export(super::vault_io::ExportArgs),
    /// List secrets' metadata (never values): only what this caller may list.
    #[command(
        after_help = "Example:\n  palyra vault list agents -r --json   # or `palyra vault list /`: every scope you may list"
    )]
    List {
        /// Scope to list; `/` (or none): every scope, recursively.
        #[arg(default_value = "/")]
        scope: String,
        /// Include sub-scopes.
        #[arg(short = 'r', long)]
        recursive: bool,
        /// Include deleted secrets.
        #[arg(long)]
        deleted: bool,
    },
    /// Delete a secret (soft: history kept; --destroy erases every version).
    #[command(after_help = "Example:\n  palyra vault delete agents/alpha OLD_KEY --destroy")]
    Delete {
        /// Scope.
        scope: String,
        /// Key.
        key: String,
        /// Erase every version's ciphertext and key.
        #[arg(long)]
        destroy: bool,
    },
    /// Rotate the vault's key-encryption key and rewrap every data key.
    #[command(after_help = "Example:\n  palyra vault rotate-key --json")]
    RotateKey,
    /// Follow the changes of a scope's secrets (metadata only, never values), one line each,
    /// until interrupted.
    #[command(after_help = "Example:\n  palyra vault watch agents -r --since 120")]
    Watch {
        /// Scope to watch.
        scope: String,
        /// Include sub-scopes.
        #[arg(short = 'r', long)]
        recursive: bool,
        /// First replay the changes after this event sequence (the `sequence` of the last
        /// change seen); default: only changes from now on.
        #[arg(long, value_name = "N", default_value_t = 0)]
        since: u64,
    },
}

#[derive(Debug, Args)]
pub(super) struct PutArgs {
    /// Scope, e.g. agents/alpha.
    scope: String,
    /// Key, e.g. OPENAI_API_KEY.
    key: String,
    /// Read the value from standard input (trailing newline kept as given).
    #[arg(long, conflicts_with = "value_file", required_unless_present = "value_file")]
    value_stdin: bool,
    /// Read the value from a file.
    #[arg(long, value_name = "FILE")]
    value_file: Option<PathBuf>,
    /// Only write if the latest version is this one (0: only if it does not exist).
    #[arg(long)]
    expected_version: Option<u64>,
    /// Store an empty value (refused by default: often an unset shell variable).
    #[arg(long)]
    allow_empty: bool,
}

#[derive(Debug, Serialize)]
struct Metadata {
    scope: String,
    key: String,
    object_id: String,
    version: u64,
    created_at: String,
    updated_at: String,
    deleted: bool,
    size: u32,
}

impl From<pb::SecretMetadata> for Metadata {
    fn from(m: pb::SecretMetadata) -> Self {
        Metadata {
            created_at: time(m.created_at.as_ref()),
            updated_at: time(m.updated_at.as_ref()),
            scope: m.scope,
            key: m.key,
            object_id: m.object_id,
            version: m.version,
            deleted: m.deleted,
            size: m.size,
        }
    }
}

impl Metadata {
    fn line(&self) -> String {
        format!(
            "{}/{}  v{}  {} bytes  updated {}{}",
            self.scope,
            self.key,
            self.version,
            self.size,
            self.updated_at,
            if self.deleted { "  (deleted)" } else { "" }
        )
    }
}

pub(super) async fn run(ctx: &Context, cmd: VaultCommand) -> Result<(), CliError> {
    let cmd = match cmd {
        VaultCommand::Import(args) => return super::vault_io::import(ctx, args).await,
        VaultCommand::Export(args) => return super::vault_io::export(ctx, args).await,
        cmd => cmd,
    };
    let mut client = VaultServiceClient::new(connect(ctx).await?);
    match cmd {
        VaultCommand::Put(args) => {
            let mut value = read_value(&args)?;
            if value.is_empty() && !args.allow_empty {
                return Err(CliError::of(super::output::Exit::Usage, "the value is empty; nothing stored")
                    .hint("an unset variable? pass --allow-empty to store an empty value"));
            }
            let response = client
                .put_secret(pb::PutSecretRequest {
                    scope: args.scope,
                    key: args.key,
                    // Moved into the request; the zeroizing buffer left behind is empty.
                    value: std::mem::take(&mut *value),
                    expected_version: args.expected_version,
                })
                .await?
                .into_inner();
            let meta = Metadata::from(response.metadata.unwrap_or_default());
            ctx.print(&meta, || format!("stored {}", meta.line()))
        }
        VaultCommand::Get { scope, key, version, reveal, raw } => {
            let response = client
                .get_secret(pb::GetSecretRequest { scope, key, version: version.unwrap_or(0) })
                .await?
                .into_inner();
            let value = Zeroizing::new(response.value);
            let meta = Metadata::from(response.metadata.unwrap_or_default());
            #[derive(Serialize)]
            struct Out<'a> {
                version: u64,
                value: Option<String>,
                value_hex: Option<String>,
                metadata: &'a Metadata,
            }
            let text = std::str::from_utf8(&value).ok();
            let out = Out {
                version: response.version,
                value: if reveal { text.map(str::to_owned) } else { None },
                value_hex: if reveal && text.is_none() { Some(hex::encode(&*value)) } else { None },
                metadata: &meta,
            };
            if reveal && !ctx.json {
                return super::vault_io::write_value(&value, raw);
            }
            ctx.print(&out, || {
                format!("<redacted>  (version {}; --reveal to print)\n{}", response.version, meta.line())
            })
        }
        VaultCommand::List { scope, recursive, deleted } => {
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_secrets(pb::ListSecretsRequest {
                        scope: scope.clone(),
                        recursive,
                        page_size: 500,
                        page_token,
                        include_deleted: deleted,
                    })
                    .await?
                    .into_inner();
                all.extend(page.secrets.into_iter().map(Metadata::from));
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            ctx.print(&all, || {
                if all.is_empty() {
                    format!("no secrets in {scope} that you may list")
                } else {
                    all.iter().map(Metadata::line).collect::<Vec<_>>().join("\n")
                }
            })
        }
        VaultCommand::Delete { scope, key, destroy } => {
            let response =
                client.delete_secret(pb::DeleteSecretRequest { scope, key, destroy }).await?.into_inner();
            let meta = Metadata::from(response.metadata.unwrap_or_default());
            ctx.print(&meta, || format!("{} {}", if destroy { "destroyed" } else { "deleted" }, meta.line()))
        }
        VaultCommand::Watch { scope, recursive, since } => {
            let request =
                pb::WatchSecretsRequest { scope, recursive, since_sequence: since, progress: false };
            watch(ctx, &mut client, request).await
        }
        VaultCommand::Import(_) | VaultCommand::Export(_) => Ok(()),
        VaultCommand::RotateKey => {
            let r = client.rotate_key(pb::RotateKeyRequest {}).await?.into_inner();
            #[derive(Serialize)]
            struct Out {
                generation: u32,
                rewrapped: u64,
            }
            let out = Out { generation: r.generation, rewrapped: r.rewrapped };
            ctx.print(&out, || {
                format!("key generation {} is current; {} data keys rewrapped", r.generation, r.rewrapped)
            })
        }
    }
}

/// One change as `vault watch` prints it.
#[derive(Debug, Serialize)]
struct Change {
    sequence: u64,
    change: &'static str,
    scope: String,
    key: String,
    version: u64,
    changed_at: String,
}

impl Change {
    fn from_pb(m: pb::WatchSecretsResponse) -> Option<Change> {
        let change = match m.change() {
            pb::SecretChange::Put => "put",
            pb::SecretChange::Delete => "delete",
            pb::SecretChange::Destroy => "destroy",
            // Progress markers (not asked for) and values of a newer node: not changes.
            pb::SecretChange::Progress | pb::SecretChange::Unspecified => return None,
        };
        Some(Change {
            sequence: m.sequence,
            change,
            changed_at: time(m.changed_at.as_ref()),
            scope: m.scope,
            key: m.key,
            version: m.version,
        })
    }

    fn line(&self) -> String {
        format!(
            "{}  {:<7}  {}/{}  v{}  {}",
            self.sequence, self.change, self.scope, self.key, self.version, self.changed_at
        )
    }
}

/// Prints each change as it comes (a JSON object per line with `--json`) until the stream ends;
/// a stream that ends, with an error or not, is a failure: the watch was meant to go on. The
/// watch asks for progress markers (never printed) so that the sequence to resume from, named
/// in the error, is exact even when nothing in the scope changed.
async fn watch(
    ctx: &Context,
    client: &mut VaultServiceClient<tonic::transport::Channel>,
    request: pb::WatchSecretsRequest,
) -> Result<(), CliError> {
    use std::io::Write;
    let mut resume = request.since_sequence;
    let mut stream =
        client.watch_secrets(pb::WatchSecretsRequest { progress: true, ..request }).await?.into_inner();
    let ended = loop {
        let message = match stream.message().await {
            Ok(Some(message)) => message,
            Ok(None) => break CliError::new("the node ended the watch"),
            // Revoked or denied: resuming would not help, the status's own hint says what does.
            Err(status) if status.code() != tonic::Code::Unavailable => return Err(status.into()),
            Err(status) => break CliError::from(status),
        };
        resume = resume.max(message.sequence);
        let Some(change) = Change::from_pb(message) else { continue };
        let line = if ctx.json {
            serde_json::to_string(&change).map_err(|e| CliError::new(e.to_string()))?
        } else {
            change.line()
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").and_then(|()| out.flush()).map_err(|e| CliError::new(e.to_string()))?;
    };
    Err(ended.hint(format!("nothing was missed up to sequence {resume}: resume with --since {resume}")))
}

fn read_value(args: &PutArgs) -> Result<Zeroizing<Vec<u8>>, CliError> {
    let mut value = Zeroizing::new(Vec::new());
    match &args.value_file {
        Some(path) => {
            std::fs::File::open(path)
                .and_then(|mut f| f.read_to_end(&mut value))
                .map_err(|e| CliError::new(format!("cannot read {}: {e}", path.display())))?;
        }
        None => {
            std::io::stdin()
                .read_to_end(&mut value)
                .map_err(|e| CliError::new(format!("cannot read stdin: {e}")))?;
        }
    }
    Ok(value)
}
