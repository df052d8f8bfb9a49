//! `palyra console`: a one-time login link for the web console, asked of the node over mTLS
//! with the operator's credentials, printed and (where a browser exists) opened.

use std::path::Path;
use std::process::{Command, Stdio};

use clap::Args;
use serde::Serialize;

use super::client::connect;
use super::output::{CliError, Context, time};
use crate::wire::pb::console::v1::{self as pb, console_service_client::ConsoleServiceClient};

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  palyra console --no-open")]
pub(super) struct ConsoleArgs {
    /// Only print the link; do not open a browser.
    #[arg(long)]
    no_open: bool,
}

#[derive(Serialize)]
struct Out {
    login_url: String,
    console_url: String,
    expires_at: String,
    opened: bool,
}

pub(super) async fn run(ctx: &Context, args: ConsoleArgs) -> Result<(), CliError> {
    let mut client = ConsoleServiceClient::new(connect(ctx).await?);
    let response = client.create_login_token(pb::CreateLoginTokenRequest {}).await?.into_inner();
    let opened = !args.no_open && open_browser(&response.login_url);
    let out = Out {
        login_url: response.login_url,
        console_url: response.console_url,
        expires_at: time(response.expires_at.as_ref()),
        opened,
    };
    if !ctx.json {
        eprintln!(
            "one-time login link for the console at {} (single use, valid until {}){}",
            out.console_url,
            out.expires_at,
            if opened { "; opening it in your browser" } else { "" }
        );
    }
    ctx.print(&out, || out.login_url.clone())
}

/// Opens `url` with the desktop's opener, when there is one: `$BROWSER`, else `open` on
/// macOS, else `xdg-open` under a graphical session. Never waits for it.
fn open_browser(url: &str) -> bool {
    let opener = if let Some(browser) = std::env::var_os("BROWSER").filter(|b| !b.is_empty()) {
        Some(browser.to_string_lossy().into_owned())
    } else if cfg!(target_os = "macos") {
        Some("open".to_owned())
    } else if cfg!(unix)
        && (std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some())
        && in_path("xdg-open")
    {
        Some("xdg-open".to_owned())
    } else {
        None
    };
    let Some(opener) = opener else { return false };
    Command::new(opener)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .is_ok()
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| Path::new(&dir).join(program).is_file()))
}
