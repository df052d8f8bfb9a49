//! `palyra key migrate --to keychain|file`: moves the root key between backends, offline.

use clap::Subcommand;
use serde::Serialize;

use super::output::{CliError, Context};
use crate::node_backup;
use crate::vault::KeyBackend;

#[derive(Debug, Subcommand)]
pub(super) enum KeyCommand {
    /// Move the root key to another backend (node stopped; a kill at any point leaves a node
    /// that starts, from one backend or the other).
    #[command(after_help = "Example:\n  palyra key migrate --to keychain")]
    Migrate {
        /// The backend to move to: keychain or file.
        #[arg(long, value_parser = parse_backend)]
        to: KeyBackend,
    },
}

fn parse_backend(text: &str) -> Result<KeyBackend, String> {
    KeyBackend::parse(text).ok_or_else(|| format!("unknown key backend {text:?}: use keychain or file"))
}

pub(super) async fn run(ctx: &Context, cmd: KeyCommand) -> Result<(), CliError> {
    let KeyCommand::Migrate { to } = cmd;
    let db = ctx.data_dir.join("palyra.db");
    if !db.exists() {
        return Err(CliError::new(format!("no node database at {}", db.display())).hint("check --data-dir"));
    }
    let _lock =
        crate::datadir_lock::DataDirLock::acquire(&ctx.data_dir, "palyra key migrate").map_err(|e| {
            CliError::new(e.to_string()).hint("stop `palyra serve` first: the key is moved offline")
        })?;
    let done = node_backup::migrate_key(&ctx.data_dir, to).await.map_err(|e| CliError::new(e.to_string()))?;
    #[derive(Serialize)]
    struct Out {
        from: String,
        to: String,
        removed_leftover: bool,
    }
    let out =
        Out { from: done.from.to_string(), to: done.to.to_string(), removed_leftover: done.removed_leftover };
    ctx.print(&out, || {
        if done.from == done.to {
            let extra =
                if done.removed_leftover { " (a copy left in the other backend was removed)" } else { "" };
            format!("the root key is already in the {} backend{extra}", done.to)
        } else {
            format!("the root key moved from the {} backend to the {} backend", done.from, done.to)
        }
    })
}
