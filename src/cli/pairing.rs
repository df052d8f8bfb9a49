//! `palyra pairing ...`: the operator's side of pairing (codes, requests, decisions).

use std::path::PathBuf;

use clap::Subcommand;
use serde::Serialize;

use super::client::connect;
use super::output::{CliError, Context, time};
use crate::wire::pb::pairing::v1::{self as pb, pairing_service_client::PairingServiceClient};

#[derive(Debug, Subcommand)]
pub(super) enum PairingCommand {
    /// Make a single-use pairing code: prints the PIN, the pairing URI and its QR code.
    #[command(after_help = "Example:\n  palyra pairing code --ttl 5m --qr-png pair.png")]
    Code {
        /// How long the code is accepted: e.g. 90s, 10m, 2h, 1d (30s to 24h).
        #[arg(long, default_value = "10m", value_parser = parse_ttl)]
        ttl: u32,
        /// The role the paired device gets: device or node.
        #[arg(long, default_value = "device")]
        role: String,
        /// PIN attempts before the code burns (1 to 10).
        #[arg(long, default_value_t = 5)]
        attempts: u32,
        /// Also write the QR code as a PNG (0600: it carries the PIN).
        #[arg(long, value_name = "FILE")]
        qr_png: Option<PathBuf>,
        /// Do not draw the QR code in the terminal.
        #[arg(long)]
        no_qr: bool,
    },
    /// List pairing requests, newest first.
    #[command(after_help = "Example:\n  palyra pairing list --pending")]
    List {
        /// Only pending requests.
        #[arg(long)]
        pending: bool,
    },
    /// Approve a pending request: registers the device and issues its certificate.
    #[command(
        after_help = "Example:\n  palyra pairing approve REQUEST_ID --role device --scope agents/alpha"
    )]
    Approve {
        /// Request id.
        id: String,
        /// Override the code's role: device or node.
        #[arg(long)]
        role: Option<String>,
        /// A vault scope to grant beyond the device's own (repeatable).
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
    },
    /// Reject a pending request.
    #[command(after_help = "Example:\n  palyra pairing reject REQUEST_ID --reason 'not mine'")]
    Reject {
        /// Request id.
        id: String,
        /// Why (kept in the audit log; not shown to the device).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// A code's lifetime: [`duration_secs`], 30s to 24h.
fn parse_ttl(text: &str) -> Result<u32, String> {
    let secs = duration_secs(text)?;
    if !(30..=86_400).contains(&secs) {
        return Err("a code lives 30s to 24h".to_owned());
    }
    Ok(secs)
}

/// `30s`, `10m`, `2h`, `1d` or plain seconds.
pub(super) fn duration_secs(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u32 = digits.parse().map_err(|_| format!("{text:?} is not a duration like 10m"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit {unit:?}: use s, m, h or d")),
    };
    n.checked_mul(scale).ok_or_else(|| "too long".to_owned())
}

#[derive(Debug, Serialize)]
struct RequestOut {
    request_id: String,
    device_name: String,
    fingerprint: String,
    role: String,
    state: &'static str,
    peer_address: String,
    created_at: String,
    decided_at: String,
    expires_at: String,
    device_id: String,
    scopes: Vec<String>,
}

impl From<pb::PairingRequest> for RequestOut {
    fn from(r: pb::PairingRequest) -> Self {
        RequestOut {
            state: match r.state() {
                pb::PairingState::Pending => "pending",
                pb::PairingState::Approved => "approved",
                pb::PairingState::Rejected => "rejected",
                pb::PairingState::Expired => "expired",
                pb::PairingState::Unspecified => "unknown",
            },
            created_at: time(r.created_at.as_ref()),
            decided_at: time(r.decided_at.as_ref()),
            expires_at: time(r.expires_at.as_ref()),
            request_id: r.request_id,
            device_name: r.device_name,
            fingerprint: r.fingerprint,
            role: r.role,
            peer_address: r.peer_address,
            device_id: r.device_id,
            scopes: r.scopes,
        }
    }
}

impl RequestOut {
    fn line(&self) -> String {
        format!(
            "{}  {:<8} {:<6} {:<20} {}  from {}  {}",
            self.request_id,
            self.state,
            self.role,
            self.device_name,
            self.fingerprint,
            self.peer_address,
            self.created_at
        )
    }
}

/// The QR code of `text` for a terminal (two rows per character).
fn terminal_qr(text: &str) -> Result<String, CliError> {
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(|e| CliError::new(format!("qr code: {e}")))?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .build())
}

/// The QR code of `text` as a grayscale PNG: 8 pixels per module, a 4-module quiet zone.
pub(crate) fn qr_png(text: &str) -> Result<Vec<u8>, CliError> {
    const SCALE: usize = 8;
    const QUIET: usize = 4;
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(|e| CliError::new(format!("qr code: {e}")))?;
    let width = code.width();
    let colors = code.to_colors();
    let side = (width + 2 * QUIET) * SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, color) in colors.iter().enumerate() {
        if *color == qrcode::Color::Dark {
            let (mx, my) = (i % width + QUIET, i / width + QUIET);
            for y in my * SCALE..(my + 1) * SCALE {
                pixels[y * side + mx * SCALE..y * side + (mx + 1) * SCALE].fill(0);
            }
        }
    }
    let mut out = Vec::new();
    let side32 = u32::try_from(side).map_err(|_| CliError::new("qr code too large"))?;
    let mut encoder = png::Encoder::new(&mut out, side32, side32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| CliError::new(format!("png: {e}")))?;
    writer.write_image_data(&pixels).map_err(|e| CliError::new(format!("png: {e}")))?;
    writer.finish().map_err(|e| CliError::new(format!("png: {e}")))?;
    Ok(out)
}

pub(super) async fn run(ctx: &Context, cmd: PairingCommand) -> Result<(), CliError> {
    let mut client = PairingServiceClient::new(connect(ctx).await?);
    match cmd {
        PairingCommand::Code { ttl, role, attempts, qr_png: png_path, no_qr } => {
            let code = client
                .create_pairing_code(pb::CreatePairingCodeRequest {
                    ttl_seconds: Some(ttl),
                    role,
                    max_attempts: Some(attempts),
                })
                .await?
                .into_inner();
            if let Some(path) = &png_path {
                crate::fsutil::write_private_atomic(path, &qr_png(&code.uri)?, true)
                    .map_err(|e| CliError::new(e.to_string()))?;
            }
            let qr = if no_qr || ctx.json { String::new() } else { terminal_qr(&code.uri)? };
            let expires_at = time(code.expires_at.as_ref());
            let json = serde_json::json!({
                "code_id": code.code_id, "pin": code.pin, "uri": code.uri, "role": code.role,
                "expires_at": expires_at, "max_attempts": code.max_attempts,
            });
            ctx.print(&json, || {
                let png = png_path.map(|p| format!("\nQR code PNG: {}", p.display())).unwrap_or_default();
                format!(
                    "{qr}\ncode:    {}\nPIN:     {}\nrole:    {}\nexpires: {expires_at} ({} attempts)\nURI:     {}{png}\n\n\
                     On the device: palyra pair --server https://<this node> --code {} --pin {}\n\
                     or scan the QR code / palyra pair --uri '<URI>'",
                    code.code_id, code.pin, code.role, code.max_attempts, code.uri, code.code_id, code.pin
                )
            })
        }
        PairingCommand::List { pending } => {
            let state = pending.then_some(pb::PairingState::Pending as i32);
            let requests: Vec<RequestOut> = client
                .list_pairing_requests(pb::ListPairingRequestsRequest { state })
                .await?
                .into_inner()
                .requests
                .into_iter()
                .map(RequestOut::from)
                .collect();
            ctx.print(&requests, || {
                if requests.is_empty() {
                    "no pairing requests".to_owned()
                } else {
                    requests.iter().map(RequestOut::line).collect::<Vec<_>>().join("\n")
                }
            })
        }
        PairingCommand::Approve { id, role, scopes } => {
            let request = client
                .approve_pairing(pb::ApprovePairingRequest {
                    request_id: id,
                    role: role.unwrap_or_default(),
                    scopes,
                })
                .await?
                .into_inner()
                .request
                .map(RequestOut::from);
            ctx.print(&request, || match &request {
                Some(r) => format!("approved: {} is device {} ({})", r.device_name, r.device_id, r.role),
                None => "approved".to_owned(),
            })
        }
        PairingCommand::Reject { id, reason } => {
            let request = client
                .reject_pairing(pb::RejectPairingRequest { request_id: id, reason })
                .await?
                .into_inner()
                .request
                .map(RequestOut::from);
            ctx.print(&request, || "rejected".to_owned())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse_with_units_and_bounds() {
        assert_eq!(parse_ttl("10m"), Ok(600));
        assert_eq!(parse_ttl("90"), Ok(90));
        assert_eq!(parse_ttl("1d"), Ok(86_400));
        assert!(parse_ttl("10s").is_err() && parse_ttl("2d").is_err() && parse_ttl("5x").is_err());
        assert!(parse_ttl("").is_err() && parse_ttl("99999999999h").is_err());
    }

    #[test]
    fn qr_codes_render_for_terminals_and_as_png() {
        let uri =
            format!("palyra://pair?server=127.0.0.1:7443&code=ABCDEFGH12&pin=482913&ca={}", "ab".repeat(32));
        assert!(terminal_qr(&uri).unwrap().lines().count() > 10);
        let png = qr_png(&uri).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
}
