//! The `palyra` command line. One file per command group; every group except `init`, `serve`
//! and the offline break-glass commands talks to the server over gRPC with the operator's
//! credentials from the data dir.
//!
//! Exit codes: one table (`exit.rs`, shown by `palyra --help`): 0 ok, 1 failure, 2 usage,
//! 3 denied, 4 not found, 5 integrity, 6 unavailable, 7 conflict. Errors print one line saying
//! what went wrong and what to do.

mod address;
mod audit;
mod auth;
mod backup;
mod client;
mod completions;
mod config_check;
mod console;
mod devices;
mod enrollment;
mod exit;
mod identity;
mod inject;
mod key;
mod node;
mod output;
pub mod pair;
mod pairing;
mod policy;
mod policy_test;
mod resolve;
#[cfg(unix)]
mod run;
mod serve;
mod vault;
mod vault_io;
mod witness;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use crate::config::LogFormat;
pub use output::{CliError, Exit};

/// The heading of the flags every command takes. They are read from the environment here, not
/// by clap: clap shows an argument its environment set as given in every usage line.
const GLOBAL: &str = "Global options";

/// What `palyra --help` says about the environment.
const ENVIRONMENT: &str = "\
Environment:
  PALYRA_HOME         the data dir (--data-dir); its operator/ (on the node) or client/ (on a
                      paired device) holds the client certificate: ca.pem, cert.pem, key.pem
  PALYRA_SERVER       the node's gRPC URL (--server)
  PALYRA_AS           whose credentials: operator or device (--as)
  PALYRA_CREDENTIALS  a directory with ca.pem, cert.pem, key.pem (and identity.key) to use
                      instead of the data dir's (--credentials)
  PALYRA_KEY_BACKEND  the root key's backend for init, serve and restore: auto, file, keychain
  PALYRA_LOG          log filter, e.g. debug or palyra=info,warn";

/// Palyra: the security control plane of a personal node.
#[derive(Debug, Parser)]
#[command(name = "palyra", version, about, long_about = None, after_help = format!("{ENVIRONMENT}\n\n{}", exit::TABLE))]
pub struct Cli {
    /// Data directory [env: PALYRA_HOME] [default: $XDG_DATA_HOME/palyra, else ~/.local/share/palyra]
    #[arg(long, global = true, value_name = "DIR", help_heading = GLOBAL)]
    pub data_dir: Option<PathBuf>,
    /// The node to talk to [env: PALYRA_SERVER] [default: the address the node serving on the
    /// data dir recorded, else `grpc_addr` of its palyra.toml, else the server this device paired
    /// with, else https://127.0.0.1:7443].
    #[arg(long, global = true, value_name = "URL", help_heading = GLOBAL)]
    pub server: Option<String>,
    /// Whose credentials: the node's `operator/` or this data dir's paired-device `client/`
    /// [env: PALYRA_AS] [default: operator/ if present, else client/; `node` commands: client/
    /// first].
    #[arg(long = "as", global = true, value_name = "WHO", help_heading = GLOBAL)]
    pub as_: Option<address::As>,
    /// Client credentials from DIR (ca.pem, cert.pem, key.pem; identity.key for renewal), e.g.
    /// mounted into a container, instead of the data dir's operator/ or client/ [env:
    /// PALYRA_CREDENTIALS].
    #[arg(long, global = true, value_name = "DIR", help_heading = GLOBAL, conflicts_with = "as_")]
    pub credentials: Option<PathBuf>,
    /// Machine-readable output (JSON).
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the data dir, root key, identity, CA, server certificate and operator credentials
    /// (idempotent: never overwrites).
    #[command(after_help = "Example:\n  palyra init --server-name node.lan")]
    Init(serve::InitArgs),
    /// Run the node (initialises the data dir on first run).
    #[command(
        after_help = "Example:\n  PALYRA_HOME=/srv/palyra palyra serve --grpc-addr 0.0.0.0:7443 --server-name node.lan\n  palyra serve --metrics-addr 127.0.0.1:9464 --log-format json"
    )]
    Serve(serve::ServeArgs),
    /// This node's identity.
    #[command(subcommand)]
    Identity(identity::IdentityCommand),
    /// Store and read secrets.
    #[command(subcommand)]
    Vault(vault::VaultCommand),
    /// Paired devices.
    #[command(subcommand)]
    Devices(devices::DevicesCommand),
    /// Pairing codes and requests (on the node).
    #[command(subcommand)]
    Pairing(pairing::PairingCommand),
    /// Pair this data dir with a node as a new device (on the joining device).
    Pair(pair::PairArgs),
    /// Enrollment keys: pair headless machines (agents, servers, CI) with no human step.
    #[command(subcommand)]
    Enrollment(enrollment::EnrollmentCommand),
    /// Cedar policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// The QUIC data plane of a node: health, event stream.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Auth profiles: API keys and OAuth 2.0 logins for external providers.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Print (and open) a one-time login link for the web console of a running node.
    Console(console::ConsoleArgs),
    /// Write an encrypted, authenticated backup of this node (serving or stopped).
    Backup(backup::BackupArgs),
    /// Seal the root key under a new recovery code, printed once (node stopped; audited).
    RecoveryKit(backup::RecoveryKitArgs),
    /// Restore a backup into an empty or absent --data-dir with its recovery code.
    Restore(backup::RestoreArgs),
    /// The root key's backend.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Run a command with secrets from the vault in its environment.
    #[cfg(unix)]
    Run(run::RunArgs),
    /// Render a template with secrets from the vault into a 0600 file (or stdout).
    Inject(inject::InjectArgs),
    /// Check a config file as `palyra serve` reads it.
    #[command(subcommand)]
    Config(config_check::ConfigCommand),
    /// Print the shell completion script (bash, zsh, fish, powershell).
    Completions(completions::CompletionsArgs),
    /// Write a man page for every command and subcommand into a directory.
    Man(completions::ManArgs),
}

impl Cli {
    /// The data directory in force.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .or_else(|| env("PALYRA_HOME").map(PathBuf::from))
            .unwrap_or_else(crate::config::default_data_dir)
    }

    /// The server asked for: --server, else $PALYRA_SERVER (else `address::resolve` finds it).
    pub fn server(&self) -> Option<String> {
        self.server.clone().or_else(|| env("PALYRA_SERVER"))
    }

    /// Credentials named outright: --credentials, else $PALYRA_CREDENTIALS.
    fn credentials(&self) -> Option<PathBuf> {
        self.credentials.clone().or_else(|| env("PALYRA_CREDENTIALS").map(PathBuf::from))
    }

    /// Whose credentials: --as, else $PALYRA_AS.
    fn as_(&self) -> Result<Option<address::As>, CliError> {
        match (self.as_, env("PALYRA_AS")) {
            (Some(as_), _) => Ok(Some(as_)),
            (None, None) => Ok(None),
            (None, Some(text)) => {
                <address::As as clap::ValueEnum>::from_str(&text, true).map(Some).map_err(|_| {
                    CliError::of(Exit::Usage, format!("PALYRA_AS={text:?}: expected operator or device"))
                })
            }
        }
    }

    /// The log format `main` sets up before [`Cli::run`]: `palyra serve --log-format` (or
    /// `PALYRA_LOG_FORMAT`, or the config file's `log_format`); text for everything else.
    pub fn log_format(&self) -> LogFormat {
        match &self.command {
            Command::Serve(args) => args.log_format(&self.data_dir()),
            _ => LogFormat::Text,
        }
    }

    /// Runs the command.
    pub async fn run(self) -> Result<(), CliError> {
        let data_dir = self.data_dir();
        let as_ = self.as_()?;
        // gRPC prefers operator/, the QUIC data plane client/ (`--as` picks one).
        let first = if matches!(self.command, Command::Node(_)) {
            address::As::Device
        } else {
            address::As::Operator
        };
        // Commands that dial nothing: a bad PALYRA_SERVER (or credential setting) must not stop them.
        let dials = !matches!(
            self.command,
            Command::Init(_)
                | Command::Serve(_)
                | Command::Config(_)
                | Command::Completions(_)
                | Command::Man(_)
        );
        let credentials = self.credentials();
        if dials && credentials.is_some() && as_.is_some() {
            return Err(CliError::of(
                Exit::Usage,
                "--as (or PALYRA_AS) picks the data dir's credentials and --credentials (or PALYRA_CREDENTIALS) names a directory: give one",
            ));
        }
        let creds = match &credentials {
            Some(dir) => Some(dir.clone()),
            None => address::credential_dirs(&data_dir, as_, first).into_iter().next(),
        };
        let server = if dials {
            address::resolve(&data_dir, self.server().as_deref(), creds.as_deref())?
        } else {
            address::Server { url: String::new(), from: String::new() }
        };
        let ctx = output::Context {
            data_dir,
            server: server.url,
            server_from: server.from,
            as_,
            credentials,
            json: self.json,
        };
        let result = match self.command {
            Command::Init(args) => serve::init(&ctx, args).await,
            Command::Serve(args) => serve::serve(&ctx, args).await,
            Command::Identity(cmd) => identity::run(&ctx, cmd).await,
            Command::Vault(cmd) => vault::run(&ctx, cmd).await,
            Command::Devices(cmd) => devices::run(&ctx, cmd).await,
            Command::Pairing(cmd) => pairing::run(&ctx, cmd).await,
            Command::Pair(args) => pair::run(&ctx, args).await,
            Command::Enrollment(cmd) => enrollment::run(&ctx, cmd).await,
            Command::Policy(cmd) => policy::run(&ctx, cmd).await,
            Command::Audit(cmd) => audit::run(&ctx, cmd).await,
            Command::Node(cmd) => node::run(&ctx, cmd).await,
            Command::Auth(cmd) => auth::run(&ctx, cmd).await,
            Command::Console(args) => console::run(&ctx, args).await,
            Command::Backup(args) => backup::backup(&ctx, args).await,
            Command::RecoveryKit(args) => backup::recovery_kit(&ctx, args).await,
            Command::Restore(args) => backup::restore(&ctx, args).await,
            Command::Key(cmd) => key::run(&ctx, cmd).await,
            #[cfg(unix)]
            Command::Run(args) => run::run(&ctx, args).await,
            Command::Inject(args) => inject::run(&ctx, args).await,
            Command::Config(cmd) => config_check::run(&ctx, cmd),
            Command::Completions(args) => {
                completions::completions(<Cli as clap::CommandFactory>::command(), args)
            }
            Command::Man(args) => completions::man(&ctx, <Cli as clap::CommandFactory>::command(), args),
        };
        // A denial says whose credentials were denied.
        result.map_err(|mut e| {
            if let Some(dir) = creds.filter(|_| e.exit_code() == Exit::Denied.code() && !e.is_silent()) {
                e.message = format!("{} (credentials in {})", e.message, dir.display());
            }
            e
        })
    }
}

/// A set, non-empty, UTF-8 environment variable.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }

    /// Every command a user runs (each leaf of the tree) shows an example in its `--help`.
    #[test]
    fn every_command_has_an_example() {
        fn leaves(command: &clap::Command, path: String, out: &mut Vec<String>) {
            let subs: Vec<&clap::Command> =
                command.get_subcommands().filter(|c| c.get_name() != "help").collect();
            if subs.is_empty() {
                let help =
                    [command.get_after_help(), command.get_after_long_help(), command.get_long_about()]
                        .iter()
                        .flatten()
                        .map(|h| h.to_string())
                        .collect::<String>();
                if !(help.contains("Example") && help.contains(&format!("{path} "))) {
                    out.push(path.clone());
                }
            }
            for sub in subs {
                leaves(sub, format!("{path} {}", sub.get_name()), out);
            }
        }
        let mut missing = Vec::new();
        leaves(&super::Cli::command(), "palyra".into(), &mut missing);
        assert!(missing.is_empty(), "no example in --help: {missing:#?}");
    }
}
