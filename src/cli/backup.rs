//! `palyra backup`, `palyra recovery-kit` and `palyra restore` (node_backup does the work).

use std::io::BufRead;
use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::output::{CliError, Context, Exit};
use crate::backup::RecoveryCode;
use crate::config::KeyBackendChoice;
use crate::node_backup::{self, RecoveryError};

#[derive(Debug, Args)]
pub(super) struct BackupArgs {
    /// The backup file to create (never overwritten).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub(super) struct RecoveryKitArgs {}

#[derive(Debug, Args)]
pub(super) struct RestoreArgs {
    /// The backup file.
    file: PathBuf,
    /// The recovery code of the kit the backup was made with (read from stdin when absent).
    #[arg(long, value_name = "CODE")]
    recovery_code: Option<String>,
    /// Where to keep the restored root key [default: auto: the OS keychain where one answers,
    /// else a 0600 key file]
    #[arg(long, env = "PALYRA_KEY_BACKEND", value_name = "BACKEND")]
    key_backend: Option<KeyBackendChoice>,
}

fn cli_error(e: RecoveryError) -> CliError {
    let kind = if e.is_integrity() {
        Exit::Integrity
    } else if e.is_usage() {
        Exit::Usage
    } else {
        Exit::Failure
    };
    CliError::of(kind, e.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RecoveryError> + Send + 'static,
) -> Result<T, CliError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CliError::new(format!("internal error: {e}")))?
        .map_err(cli_error)
}

fn no_node(ctx: &Context) -> Result<(), CliError> {
    let db = ctx.data_dir.join("palyra.db");
    if db.exists() {
        return Ok(());
    }
    Err(CliError::new(format!("no node database at {}", db.display())).hint("check --data-dir"))
}

/// `palyra backup --out FILE`: works with the node serving or stopped (no lock taken).
pub(super) async fn backup(ctx: &Context, args: BackupArgs) -> Result<(), CliError> {
    no_node(ctx)?;
    let data_dir = ctx.data_dir.clone();
    let outcome = blocking(move || node_backup::backup(&data_dir, &args.out)).await?;
    #[derive(Serialize)]
    struct Out {
        file: String,
        bytes: u64,
        files: u64,
        seconds: f64,
    }
    let out = Out {
        file: outcome.path.display().to_string(),
        bytes: outcome.bytes,
        files: outcome.files,
        seconds: outcome.seconds,
    };
    ctx.print(&out, || {
        format!(
            "backup written to {} ({} bytes, {} files, {:.2} s); restore it with `palyra --data-dir NEW restore {} --recovery-code CODE`",
            out.file, out.bytes, out.files, out.seconds, out.file
        )
    })
}

/// `palyra recovery-kit`: offline (the data dir's lock), so its audit record goes through the
/// node's own chain.
pub(super) async fn recovery_kit(ctx: &Context, _args: RecoveryKitArgs) -> Result<(), CliError> {
    no_node(ctx)?;
    let _lock =
        crate::datadir_lock::DataDirLock::acquire(&ctx.data_dir, "palyra recovery-kit").map_err(|e| {
            CliError::new(e.to_string()).hint("stop `palyra serve` first: a kit is made offline, and audited")
        })?;
    let code = node_backup::create_recovery_kit(&ctx.data_dir).await.map_err(cli_error)?;
    let shown = code.display();
    #[derive(Serialize)]
    struct Out<'a> {
        recovery_code: &'a str,
    }
    ctx.print(&Out { recovery_code: &shown }, || {
        format!(
            "Recovery code (shown once; write it down and keep it apart from your backups):\n\n    {}\n\n\
             Every backup made from now on can be restored on any machine with this code:\n    \
             palyra --data-dir NEW restore FILE --recovery-code CODE\n\
             Backups made before keep opening with the code of their own kit.",
            &*shown
        )
    })
}

/// `palyra --data-dir NEW restore FILE --recovery-code CODE`.
pub(super) async fn restore(ctx: &Context, args: RestoreArgs) -> Result<(), CliError> {
    let typed = match args.recovery_code {
        Some(code) => zeroize::Zeroizing::new(code),
        None => {
            eprintln!("recovery code: ");
            let mut line = zeroize::Zeroizing::new(String::new());
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| CliError::new(format!("cannot read the recovery code from stdin: {e}")))?;
            line
        }
    };
    let code = RecoveryCode::parse(typed.trim()).map_err(|e| CliError::of(Exit::Usage, e.to_string()))?;
    drop(typed);
    let target = ctx.data_dir.clone();
    let file = args.file.clone();
    let choice = args.key_backend.unwrap_or_default();
    let outcome =
        blocking(move || node_backup::restore(&file, &target, &code, choice)).await.map_err(|mut e| {
            e.message = format!("cannot restore {}: {}", args.file.display(), e.message);
            e
        })?;
    #[derive(Serialize)]
    struct Out {
        data_dir: String,
        files: u64,
        key_backend: String,
        seconds: f64,
    }
    let out = Out {
        data_dir: ctx.data_dir.display().to_string(),
        files: outcome.files,
        key_backend: outcome.key_backend.to_string(),
        seconds: outcome.seconds,
    };
    ctx.print(&out, || {
        format!(
            "restored into {} ({} files, root key in the {} backend, {:.2} s); start it with `palyra --data-dir {} serve`",
            out.data_dir, out.files, out.key_backend, out.seconds, out.data_dir
        )
    })
}
