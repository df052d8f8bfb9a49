//! The `palyra` binary: parse the command line, set up logging (text, or JSON lines with
//! `palyra serve --log-format json`), run the command.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use palyra::cli::{Cli, LogFormat};

fn main() -> ExitCode {
    // ring is the only TLS crypto provider; installing it first makes that explicit. An error
    // means one is installed already, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PALYRA_LOG")
                .unwrap_or_else(|_| "palyra=info,warn".into()),
        )
        .with_writer(std::io::stderr);
    match cli.log_format() {
        // One JSON object a line, the event's fields beside `timestamp`, `level`, `target`
        // and `message`, for a log collector.
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(false).init(),
        // Colour only for a person at a terminal: logs piped to a file or a collector stay
        // plain text, and NO_COLOR (no-color.org) turns it off everywhere.
        LogFormat::Text => logs
            .with_ansi(
                std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            )
            .init(),
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json_logs = cli.log_format() == LogFormat::Json;
    let json = cli.json;
    match runtime.block_on(cli.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.is_silent() {
                if json_logs {
                    tracing::error!("{e}");
                } else if json {
                    eprintln!("{}", e.to_json());
                } else {
                    eprintln!("{e}");
                }
            }
            ExitCode::from(e.exit_code())
        }
    }
}
