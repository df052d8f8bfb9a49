//! `palyra config check [FILE]`: the file `palyra serve` would read, checked as `serve` checks
//! it (the same loader: size bound, unknown keys, types, ranges) plus what `serve` checks only
//! when it starts (the console on loopback unless allowed, gRPC and console not on one
//! address, server names). Prints `ok` or the bad key and its line; exit 2 on a bad file (an
//! input the user gave, as the exit table says), 1 when it cannot be read.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde::Serialize;

use super::output::{CliError, Context, Exit};
use super::policy_test::LineIndex;
use crate::config::{ConfigError, DEFAULT_CONSOLE_ADDR, DEFAULT_GRPC_ADDR, FileConfig};

/// `palyra config ...`.
#[derive(Debug, Subcommand)]
pub(super) enum ConfigCommand {
    /// Check a config file as `palyra serve` reads it: ok, or the bad key and its line (exit 2).
    #[command(after_help = "\
Examples:
  palyra config check                      # <data dir>/palyra.toml
  palyra config check /etc/palyra/palyra.toml")]
    Check {
        /// The file [default: <data dir>/palyra.toml].
        file: Option<PathBuf>,
    },
}

/// Every key of the file (dotted, `console.addr`) with the line it is on.
fn key_lines(text: &str) -> BTreeMap<String, usize> {
    fn walk(
        table: &toml::de::DeTable<'_>,
        prefix: &str,
        lines: &LineIndex,
        out: &mut BTreeMap<String, usize>,
    ) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.get_ref().to_string()
            } else {
                format!("{prefix}.{}", key.get_ref())
            };
            out.insert(path.clone(), lines.line(key.span().start));
            if let toml::de::DeValue::Table(inner) = value.get_ref() {
                walk(inner, &path, lines, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(table) = toml::de::DeTable::parse(text) {
        walk(table.get_ref(), "", &LineIndex::new(text), &mut out);
    }
    out
}

/// The key a semantic message is about (the longest one it names, as `grpc.max_connections`,
/// `[backup] every` or `key backend`), with its line.
fn key_in(message: &str, keys: &BTreeMap<String, usize>) -> Option<(String, usize)> {
    keys.iter()
        .filter(|(path, _)| {
            let spaced = path.replace('_', " ");
            let sectioned = path.split_once('.').map(|(s, k)| format!("[{s}] {k}"));
            message.contains(path.as_str())
                || (!path.contains('.') && message.contains(&spaced))
                || sectioned.is_some_and(|s| message.contains(&s))
        })
        .max_by_key(|(path, _)| path.len())
        .map(|(path, line)| (path.clone(), *line))
}

/// What `serve` refuses only when it starts.
fn semantic(config: &FileConfig) -> Result<(), (String, String)> {
    let console = config.console.clone().unwrap_or_default();
    let default = |text: &str| text.parse::<SocketAddr>().ok();
    let grpc = config.grpc_addr.or_else(|| default(DEFAULT_GRPC_ADDR));
    if console.enabled != Some(false) {
        let addr = console.addr.or_else(|| default(DEFAULT_CONSOLE_ADDR));
        if let Some(addr) = addr {
            crate::config::check_console_addr(addr, console.allow_remote == Some(true))
                .map_err(|message| ("console.addr".to_owned(), message))?;
            if grpc.is_some_and(|g| {
                g.port() == addr.port()
                    && (g.ip() == addr.ip() || g.ip().is_unspecified() || addr.ip().is_unspecified())
            }) {
                return Err((
                    "console.addr".into(),
                    format!("the console and gRPC would both listen on port {}", addr.port()),
                ));
            }
        }
    }
    // The parser `init` and `serve` give the names to.
    for name in config.server_names.iter().flatten() {
        crate::identity::ca::ServerName::parse(name)
            .map_err(|e| ("server_names".to_owned(), format!("{name:?}: {e}")))?;
    }
    if let Some(backup) = config.backup.as_ref().filter(|b| !b.dir.is_absolute()) {
        return Err((
            "backup.dir".into(),
            format!(
                "{} is relative: give an absolute path (serve may run from any directory)",
                backup.dir.display()
            ),
        ));
    }
    Ok(())
}

/// Checks `path`: `Ok(())`, or the exit-2 error naming the file, line and key.
pub(super) fn check(path: &Path) -> Result<(), CliError> {
    let config = match FileConfig::load(path, false) {
        Ok(config) => config,
        Err(ConfigError::Invalid { path, message }) => {
            // The parser's own messages carry the line; a range check's name the key.
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let message = message.trim().to_owned();
            let located = if message.contains("line ") {
                message
            } else {
                match key_in(&message, &key_lines(&text)) {
                    Some((key, line)) => format!("line {line}, key {key}: {message}"),
                    None => message,
                }
            };
            return Err(CliError::of(Exit::Usage, format!("{}: {located}", path.display())));
        }
        Err(e @ ConfigError::TooLarge { .. }) => return Err(CliError::of(Exit::Usage, e.to_string())),
        Err(e) => return Err(CliError::new(e.to_string())),
    };
    if let Err((key, message)) = semantic(&config) {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let line = key_lines(&text).get(&key).copied().unwrap_or(0);
        return Err(CliError::of(
            Exit::Usage,
            format!("{}: line {line}, key {key}: {message}", path.display()),
        ));
    }
    Ok(())
}

/// `palyra config ...`.
pub(super) fn run(ctx: &Context, cmd: ConfigCommand) -> Result<(), CliError> {
    let ConfigCommand::Check { file } = cmd;
    let path = file.unwrap_or_else(|| crate::config::Layout::new(&ctx.data_dir).config_file());
    check(&path)?;
    #[derive(Serialize)]
    struct Out {
        file: String,
        ok: bool,
    }
    let out = Out { file: path.display().to_string(), ok: true };
    ctx.print(&out, || format!("ok   {}", out.file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(text: &str) -> Result<(), CliError> {
        let dir = tempfile::tempdir().map_err(|e| CliError::new(e.to_string()))?;
        let path = dir.path().join("palyra.toml");
        std::fs::write(&path, text).map_err(|e| CliError::new(e.to_string()))?;
        check(&path)
    }

    #[test]
    fn a_good_file_passes() {
        let good = "grpc_addr = \"127.0.0.1:9000\"\nserver_names = [\"node.lan\", \"10.0.0.2\"]\n[console]\naddr = \"127.0.0.1:9001\"\n[grpc]\nmax_connections = 10\n[backup]\ndir = \"/var/backups/palyra\"\nevery = \"6h\"\n";
        assert!(checked(good).is_ok());
        assert!(checked("").is_ok());
    }

    #[test]
    fn a_bad_file_names_the_line_and_the_key() {
        for (text, line, key) in [
            ("grpc_addr = \"127.0.0.1:1\"\ngrpc_adr = \"x\"\n", 2, "grpc_adr"),
            ("\n\ngrpc_addr = 5\n", 3, "grpc_addr"),
            (
                "max_value_bytes = 1024\n[grpc]\nhandshake_timeout_secs = 61\n",
                3,
                "grpc.handshake_timeout_secs",
            ),
            (
                "[grpc]\nmax_connections = 8\n\nmax_connections_per_address = 9\n",
                4,
                "grpc.max_connections_per_address",
            ),
            ("\nmax_value_bytes = 0\n", 2, "max_value_bytes"),
            ("\nkey_backend = \"tpm\"\n", 2, "key_backend"),
            ("[backup]\ndir = \"/b\"\n\nevery = \"soon\"\n", 4, "every"),
            ("[console]\n\naddr = \"0.0.0.0:7445\"\n", 3, "console.addr"),
            ("grpc_addr = \"127.0.0.1:7445\"\n", 0, "both listen"),
            ("\nserver_names = [\"bad name\"]\n", 2, "server_names"),
            ("[backup]\ndir = \"rel\"\nevery = \"1d\"\n", 2, "backup.dir"),
        ] {
            let e = checked(text).err().unwrap_or_else(|| panic!("accepted {text}"));
            assert_eq!(e.exit_code(), 2, "{e}");
            assert!(e.message.contains("palyra.toml"), "{e}");
            if line > 0 {
                assert!(e.message.contains(&format!("line {line}")), "line {line}: {e}");
            }
            assert!(e.message.contains(key), "{key}: {e}");
        }
    }
}
