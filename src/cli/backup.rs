//! `palyra backup`, `palyra recovery-kit` and `palyra restore` (node_backup does the work).

use std::io::BufRead;
use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::output::{CliError, Context, Exit};
use crate::backup::{RecoveryCode, Share};
use crate::config::KeyBackendChoice;
use crate::node_backup::{self, RecoveryError, RecoveryKit};

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  palyra backup --out ~/backups/node-$(date +%F).palyra-backup")]
pub(super) struct BackupArgs {
    /// The backup file to create (never overwritten).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  palyra recovery-kit --shares 5 --threshold 3")]
pub(super) struct RecoveryKitArgs {
    /// Split the code into this many shares (printed; the code itself is not).
    #[arg(long, requires = "threshold", value_name = "N")]
    shares: Option<u8>,
    /// How many shares give the code back.
    #[arg(long, requires = "shares", value_name = "K")]
    threshold: Option<u8>,
    /// Also write the code as a QR image (PNG, mode 0600, never overwritten; with shares one
    /// image per share, `FILE` with `-1`, `-2`, … before its extension). Print it, then delete it.
    #[arg(long, value_name = "FILE")]
    qr: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  palyra restore node.palyra-backup --data-dir ./restored < recovery-code.txt"
)]
pub(super) struct RestoreArgs {
    /// The backup file.
    file: PathBuf,
    /// The recovery code of the kit the backup was made with (read from stdin when neither
    /// it nor --share is given).
    #[arg(long, value_name = "CODE", conflicts_with = "share")]
    recovery_code: Option<String>,
    /// A share of a K-of-N kit; give K of them.
    #[arg(long, value_name = "SHARE")]
    share: Vec<String>,
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
pub(super) async fn recovery_kit(ctx: &Context, args: RecoveryKitArgs) -> Result<(), CliError> {
    no_node(ctx)?;
    let _lock =
        crate::datadir_lock::DataDirLock::acquire(&ctx.data_dir, "palyra recovery-kit").map_err(|e| {
            CliError::new(e.to_string()).hint("stop `palyra serve` first: a kit is made offline, and audited")
        })?;
    let split = args.threshold.zip(args.shares);
    let kit = node_backup::create_recovery_kit(&ctx.data_dir, split).await.map_err(cli_error)?;
    // Printed first: the kit exists now, and an image that cannot be written must not lose it.
    let texts: Vec<zeroize::Zeroizing<String>> = match &kit {
        RecoveryKit::Code(code) => vec![code.display()],
        RecoveryKit::Shares(shares) => shares.iter().map(|s| s.display()).collect(),
    };
    print_kit(ctx, &kit, split)?;
    if let Some(qr) = args.qr {
        let many = texts.len() > 1;
        for (i, text) in texts.iter().enumerate() {
            let path = if many { numbered(&qr, i + 1) } else { qr.clone() };
            let png = zeroize::Zeroizing::new(super::pairing::qr_png(text)?);
            crate::fsutil::write_private_atomic(&path, &png, false).map_err(|e| {
                CliError::new(format!("the kit is printed above, but its QR image was not written: {e}"))
            })?;
            eprintln!("QR image written to {} (mode 0600): print it, then delete it", path.display());
        }
    }
    Ok(())
}

/// `kit.png` → `kit-3.png`.
fn numbered(path: &std::path::Path, n: usize) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{n}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{n}"),
    };
    path.with_file_name(name)
}

fn print_kit(ctx: &Context, kit: &RecoveryKit, split: Option<(u8, u8)>) -> Result<(), CliError> {
    match kit {
        RecoveryKit::Code(code) => {
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
        RecoveryKit::Shares(shares) => {
            let shown: Vec<zeroize::Zeroizing<String>> = shares.iter().map(|s| s.display()).collect();
            #[derive(Serialize)]
            struct Out<'a> {
                shares: Vec<&'a str>,
            }
            let (k, n) = split.unwrap_or_default();
            ctx.print(&Out { shares: shown.iter().map(|s| s.as_str()).collect() }, || {
                let mut text = format!(
                    "Recovery shares, {k} of {n} needed (shown once; give each to a different keeper):\n\n"
                );
                for (i, share) in shown.iter().enumerate() {
                    text.push_str(&format!("    share {}: {}\n", i + 1, share.as_str()));
                }
                text.push_str(&format!(
                    "\nRestore any backup made from now on with {k} of them:\n    \
                     palyra --data-dir NEW restore FILE --share S1 --share S2 ..."
                ));
                text
            })
        }
    }
}

/// `palyra --data-dir NEW restore FILE --recovery-code CODE`.
pub(super) async fn restore(ctx: &Context, args: RestoreArgs) -> Result<(), CliError> {
    let code =
        if args.share.is_empty() { typed_code(args.recovery_code)? } else { from_shares(&args.share)? };
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

/// The recovery code from `--recovery-code`, else a line of stdin; a typo is a usage error.
fn typed_code(given: Option<String>) -> Result<RecoveryCode, CliError> {
    let typed = match given {
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
    RecoveryCode::parse(typed.trim()).map_err(|e| CliError::of(Exit::Usage, e.to_string()))
}

/// The recovery code put together from K shares (`--share`, in any order).
fn from_shares(texts: &[String]) -> Result<RecoveryCode, CliError> {
    let mut shares = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let share =
            Share::parse(text).map_err(|e| CliError::of(Exit::Usage, format!("--share #{}: {e}", i + 1)))?;
        shares.push(share);
    }
    crate::backup::shares::combine(&shares).map_err(|e| CliError::of(Exit::Usage, e.to_string()))
}
