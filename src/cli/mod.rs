//! The `palyra` command line. One file per command group; every group except `init`, `serve`
//! and the offline break-glass commands talks to the server over gRPC with the operator's
//! credentials from the data dir.
//!
//! Exit codes: one table (`exit.rs`, shown by `palyra --help`): 0 ok, 1 failure, 2 usage,
//! 3 denied, 4 not found, 5 integrity, 6 unavailable, 7 conflict. Errors print one line saying
//! what went wrong and what to do.

mod audit;
mod auth;
mod backup;
mod client;
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
mod resolve;
#[cfg(unix)]
mod run;
mod serve;
mod vault;
mod witness;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use output::{CliError, Exit};

/// Palyra: the security control plane of a personal node.
#[derive(Debug, Parser)]
#[command(name = "palyra", version, about, long_about = None, after_help = exit::TABLE)]
pub struct Cli {
    /// Data directory [default: $PALYRA_HOME, else $XDG_DATA_HOME/palyra, else ~/.local/share/palyra]
    #[arg(long, global = true, env = "PALYRA_HOME", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The node to talk to.
    #[arg(
        long,
        global = true,
        env = "PALYRA_SERVER",
        default_value = "https://127.0.0.1:7443",
        value_name = "URL"
    )]
    pub server: String,
    /// Machine-readable output (JSON).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the data dir, root key, identity, CA, server certificate and operator credentials
    /// (idempotent: never overwrites).
    Init(serve::InitArgs),
    /// Run the node (initialises the data dir on first run).
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
}

impl Cli {
    /// The data directory in force.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(crate::config::default_data_dir)
    }

    /// Runs the command.
    pub async fn run(self) -> Result<(), CliError> {
        let ctx = output::Context { data_dir: self.data_dir(), server: self.server.clone(), json: self.json };
        match self.command {
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
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
