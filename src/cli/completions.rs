//! `palyra completions SHELL` and `palyra man --out DIR`: shell completion scripts and man
//! pages, both generated from the command tree itself (clap_complete, clap_mangen), so they
//! never drift from `--help`.

use std::path::PathBuf;

use clap::{Args, Command};
use clap_complete::Shell;
use serde::Serialize;

use super::output::{CliError, Context};

/// `palyra completions`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  palyra completions bash > ~/.local/share/bash-completion/completions/palyra
  palyra completions zsh > \"${fpath[1]}/_palyra\"
  palyra completions fish > ~/.config/fish/completions/palyra.fish
  palyra completions powershell >> $PROFILE")]
pub(super) struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    shell: Shell,
}

/// `palyra man`.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  palyra man --out ~/.local/share/man/man1 && man palyra-vault-get")]
pub(super) struct ManArgs {
    /// The directory the pages go to (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Writes the completion script for `args.shell` to stdout.
pub(super) fn completions(mut command: Command, args: CompletionsArgs) -> Result<(), CliError> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "palyra", &mut script);
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(&script).and_then(|()| out.flush()).map_err(|e| CliError::new(format!("cannot write: {e}")))
}

/// Every page: the command and each subcommand, depth first, as `(file name, roff text)`.
pub(super) fn pages(command: Command) -> Result<Vec<(String, Vec<u8>)>, CliError> {
    fn walk(command: Command, out: &mut Vec<(String, Vec<u8>)>) -> Result<(), CliError> {
        for sub in command.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            walk(sub, out)?;
        }
        let man = clap_mangen::Man::new(command).manual("Palyra");
        let mut page = Vec::new();
        man.render(&mut page).map_err(|e| CliError::new(format!("cannot render a man page: {e}")))?;
        out.push((man.get_filename(), page));
        Ok(())
    }
    let mut command = command.disable_help_subcommand(true);
    // Built: subcommands get their display names (`palyra-vault-get`).
    command.build();
    let mut out = Vec::new();
    walk(command, &mut out)?;
    Ok(out)
}

/// Writes every page into `args.out`.
pub(super) fn man(ctx: &Context, command: Command, args: ManArgs) -> Result<(), CliError> {
    let pages = pages(command)?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| CliError::new(format!("cannot create {}: {e}", args.out.display())))?;
    for (name, page) in &pages {
        let path = args.out.join(name);
        std::fs::write(&path, page)
            .map_err(|e| CliError::new(format!("cannot write {}: {e}", path.display())))?;
    }
    #[derive(Serialize)]
    struct Out<'a> {
        dir: String,
        pages: Vec<&'a str>,
    }
    let out =
        Out { dir: args.out.display().to_string(), pages: pages.iter().map(|(n, _)| n.as_str()).collect() };
    ctx.print(&out, || format!("{} man pages written to {}", out.pages.len(), out.dir))
}
