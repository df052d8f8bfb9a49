//! `palyra vault import` and `palyra vault export`: a scope's secrets from and to `.env` text
//! or a flat JSON object of strings.
//!
//! Import parses and checks everything (names, scope, sizes, empty values) before the first
//! write, and never echoes a value in an error. Export writes `.env` text that `import` (and
//! [`crate::vault::dotenv`]) reads back byte for byte: every value double-quoted, with `\n`,
//! `\r`, `\t`, `"`, `\` and `$` escaped. Values live in zeroizing buffers.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::Serialize;
use zeroize::Zeroizing;

use super::output::{CliError, Context, Exit};
use super::policy_test::read_bounded;
use crate::vault::dotenv;
use crate::vault::{Scope, SecretKey};
use crate::wire::pb::vault::v1::{self as pb, vault_service_client::VaultServiceClient};

/// Largest import file.
const MAX_IMPORT_BYTES: u64 = dotenv::MAX_DOTENV_LEN as u64;
/// Most secrets one import writes.
const MAX_IMPORT_ENTRIES: usize = 10_000;

/// The text formats of import and export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Format {
    /// `.env`: NAME="value" lines.
    Env,
    /// A JSON object of string values.
    Json,
}

/// `palyra vault import`.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  palyra vault import .env --scope agents/alpha")]
pub(super) struct ImportArgs {
    /// A `.env` file or a JSON object of string values.
    file: PathBuf,
    /// The scope the secrets go to.
    #[arg(long)]
    scope: String,
    /// The file's format [default: json when FILE ends in .json or starts with `{`, else env].
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Store empty values too (refused by default: often an unset variable).
    #[arg(long)]
    allow_empty: bool,
}

/// `palyra vault export`.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  palyra vault export agents/alpha --format env --reveal > alpha.env")]
pub(super) struct ExportArgs {
    /// The scope whose secrets (not sub-scopes) are exported.
    scope: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "env")]
    format: Format,
    /// Print values to a terminal too (without it, export only writes to a pipe or file).
    #[arg(long)]
    reveal: bool,
}

/// One `(key, value)` from an import file, checked.
struct Entry {
    key: SecretKey,
    value: Zeroizing<String>,
}

/// Reads and checks an import file: every entry, before anything is written.
fn parse_import(text: &str, path: &Path, format: Format, allow_empty: bool) -> Result<Vec<Entry>, CliError> {
    let usage = |message: String| CliError::of(Exit::Usage, format!("{}: {message}", path.display()));
    let raw: Vec<(String, Zeroizing<String>, String)> = match format {
        Format::Env => dotenv::parse(text)
            .map_err(|e| usage(e.to_string()))?
            .into_iter()
            .map(|e| (e.name, e.value, format!("line {}", e.line)))
            .collect(),
        Format::Json => {
            // Only the kind of error and its position: serde_json's message can quote the input
            // (`invalid type: string "…"` for a top-level string), which may be a value.
            let object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(text).map_err(|e| {
                    let what = match e.classify() {
                        serde_json::error::Category::Data => "not an object of strings",
                        serde_json::error::Category::Eof => "cut short",
                        serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
                            "not valid JSON"
                        }
                    };
                    usage(format!(
                        "{what} at line {}, column {}: expected a JSON object of strings",
                        e.line(),
                        e.column()
                    ))
                })?;
            let mut raw = Vec::with_capacity(object.len());
            for (name, value) in object {
                let serde_json::Value::String(value) = value else {
                    return Err(usage(format!("the value of {name:?} is not a string")));
                };
                raw.push((name.clone(), Zeroizing::new(value), format!("key {name:?}")));
            }
            raw
        }
    };
    if raw.len() > MAX_IMPORT_ENTRIES {
        return Err(usage(format!("more than {MAX_IMPORT_ENTRIES} entries")));
    }
    let mut entries: Vec<Entry> = Vec::with_capacity(raw.len());
    for (name, value, at) in raw {
        let key = SecretKey::parse(&name).map_err(|e| usage(format!("{at}: {e}")))?;
        if value.is_empty() && !allow_empty {
            return Err(usage(format!(
                "{at}: the value of {name} is empty (pass --allow-empty to store it)"
            )));
        }
        // A name given twice: the last one wins, as in a shell.
        entries.retain(|e| e.key != key);
        entries.push(Entry { key, value });
    }
    Ok(entries)
}

/// `.env` text of `(name, value)` pairs that [`dotenv::parse`] reads back identically.
fn env_line(name: &str, value: &str) -> Zeroizing<String> {
    let mut line = Zeroizing::new(String::with_capacity(name.len() + value.len() + 4));
    line.push_str(name);
    line.push_str("=\"");
    for c in value.chars() {
        match c {
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            '"' | '\\' | '$' => {
                line.push('\\');
                line.push(c);
            }
            c => line.push(c),
        }
    }
    line.push_str("\"\n");
    line
}

/// `palyra vault import`.
pub(super) async fn import(ctx: &Context, args: ImportArgs) -> Result<(), CliError> {
    let scope = Scope::parse(&args.scope).map_err(|e| CliError::of(Exit::Usage, e.to_string()))?;
    let text = Zeroizing::new(read_bounded(&args.file, MAX_IMPORT_BYTES, "import file")?);
    let format = args.format.unwrap_or_else(|| {
        let json_name = args.file.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
        if json_name || text.trim_start().starts_with('{') { Format::Json } else { Format::Env }
    });
    let entries = parse_import(&text, &args.file, format, args.allow_empty)?;
    let mut client = VaultServiceClient::new(super::client::connect(ctx).await?);
    let mut written = 0usize;
    for entry in &entries {
        let request = pb::PutSecretRequest {
            scope: scope.as_str().to_owned(),
            key: entry.key.as_str().to_owned(),
            value: entry.value.as_bytes().to_vec(),
            expected_version: None,
        };
        // The request's copy of the value is dropped inside tonic; ours is zeroized.
        if let Err(status) = client.put_secret(request).await {
            return Err(CliError::from(status).context(format!(
                "{}/{} (written {written} of {} before it)",
                scope.as_str(),
                entry.key.as_str(),
                entries.len()
            )));
        }
        written += 1;
    }
    #[derive(Serialize)]
    struct Out<'a> {
        scope: &'a str,
        imported: usize,
        keys: Vec<&'a str>,
    }
    let out = Out {
        scope: scope.as_str(),
        imported: written,
        keys: entries.iter().map(|e| e.key.as_str()).collect(),
    };
    ctx.print(&out, || format!("imported {written} secrets into {}", scope.as_str()))
}

/// `palyra vault export`.
pub(super) async fn export(ctx: &Context, args: ExportArgs) -> Result<(), CliError> {
    let mut stdout = std::io::stdout();
    if stdout.is_terminal() && !args.reveal {
        return Err(CliError::of(Exit::Usage, "refusing to print secret values to a terminal")
            .hint("pass --reveal, or redirect to a file or a pipe"));
    }
    let mut client = VaultServiceClient::new(super::client::connect(ctx).await?);
    let mut keys = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_secrets(pb::ListSecretsRequest {
                scope: args.scope.clone(),
                recursive: false,
                page_size: 500,
                page_token,
                include_deleted: false,
            })
            .await?
            .into_inner();
        keys.extend(page.secrets.into_iter().map(|m| m.key));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    keys.sort();
    let mut out = Zeroizing::new(String::new());
    let mut json = serde_json::Map::new();
    for key in &keys {
        if args.format == Format::Env && !dotenv::is_name(key) {
            return Err(CliError::of(
                Exit::Usage,
                format!("{}/{key}: not a variable name, cannot be a .env line", args.scope),
            )
            .hint("use --format json"));
        }
        let response = client
            .get_secret(pb::GetSecretRequest { scope: args.scope.clone(), key: key.clone(), version: 0 })
            .await?
            .into_inner();
        let value = Zeroizing::new(response.value);
        let Ok(text) = std::str::from_utf8(&value) else {
            return Err(CliError::new(format!("{}/{key}: the value is not UTF-8 text", args.scope))
                .hint("read it with `palyra vault get --reveal --raw`"));
        };
        match args.format {
            Format::Env => out.push_str(&env_line(key, text)),
            Format::Json => {
                json.insert(key.clone(), serde_json::Value::String(text.to_owned()));
            }
        }
    }
    if args.format == Format::Json {
        let text =
            Zeroizing::new(serde_json::to_string_pretty(&json).map_err(|e| CliError::new(e.to_string()))?);
        // The map's strings are not zeroizing; clear them as we go.
        for (_, value) in json.iter_mut() {
            if let serde_json::Value::String(s) = value {
                zeroize::Zeroize::zeroize(s);
            }
        }
        out.push_str(&text);
        out.push('\n');
    }
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| CliError::new(format!("cannot write: {e}")))
}

/// Writes a revealed value: exactly its bytes with `raw`, else with a newline added when
/// stdout is a terminal (so the prompt starts on a line of its own).
pub(super) fn write_value(value: &[u8], raw: bool) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    let newline = !raw && out.is_terminal() && !value.ends_with(b"\n");
    out.write_all(value)
        .and_then(|()| if newline { out.write_all(b"\n") } else { Ok(()) })
        .and_then(|()| out.flush())
        .map_err(|e| CliError::new(format!("cannot write: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lines_read_back_identically() {
        let values = [
            "plain",
            "with spaces  ",
            "  leading",
            "\"double\" and 'single'",
            "$HOME ${PATH} $",
            "# not a comment",
            "a # b",
            "back\\slash\\n literal",
            "line\nbreak\r\nand\ttab",
            "a=b=c",
            "unicodé ✓ 🔑",
            "",
            "\\",
            "ends with backslash \\",
        ];
        let mut text = String::new();
        for (n, value) in values.iter().enumerate() {
            text.push_str(&env_line(&format!("K{n}"), value));
        }
        let entries =
            parse_import(&text, Path::new("x.env"), Format::Env, true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(entries.len(), values.len());
        for (entry, value) in entries.iter().zip(values) {
            assert_eq!(entry.value.as_str(), value, "{}", entry.key.as_str());
        }
    }

    #[test]
    fn import_checks_everything_and_never_echoes_a_value() {
        let path = Path::new("in.env");
        let refused = |text: &str, format: Format| {
            parse_import(text, path, format, false)
                .map(|_| ())
                .err()
                .unwrap_or_else(|| panic!("accepted {text}"))
        };
        let e = refused("A=secret-one\nB=\n", Format::Env);
        assert!(e.message.contains("--allow-empty") && e.message.contains("line 2"), "{e}");
        assert_eq!(e.exit_code(), 2);
        let e = refused("_A=secret-one\n", Format::Env);
        assert!(e.message.contains("line 1") && !e.message.contains("secret-one"), "{e}");
        let e = refused("A=\"secret-one\n", Format::Env);
        assert!(!e.message.contains("secret-one"), "{e}");
        let e = refused(r#"{"A": "secret-one", "B": 1}"#, Format::Json);
        assert!(e.message.contains("\"B\"") && !e.message.contains("secret-one"), "{e}");
        let e = refused(r#"["secret-one"]"#, Format::Json);
        assert!(!e.message.contains("secret-one"), "{e}");
        let e = refused(r#"{"A": {"x": "secret-one"}}"#, Format::Json);
        assert!(!e.message.contains("secret-one"), "{e}");
        // serde_json quotes a top-level string or number in its own message.
        for top in [r#""secret-one""#, "31415926535", r#"{"A": "x" "secret-one"}"#] {
            let e = refused(top, Format::Json);
            assert!(!e.message.contains("secret-one") && !e.message.contains("31415926535"), "{e}");
            assert!(e.message.contains("line 1"), "{e}");
        }
        let ok = parse_import(r#"{"A": "1", "B": ""}"#, path, Format::Json, true)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok.len(), 2);
        let last_wins =
            parse_import("A=1\nA=2\n", path, Format::Env, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((last_wins.len(), last_wins[0].value.as_str()), (1, "2"));
    }
}
