//! `palyra devices ...`

use clap::Subcommand;
use serde::Serialize;

use super::client::connect;
use super::output::{CliError, Context, time};
use crate::wire::pb::identity::v1::{self as pb, identity_service_client::IdentityServiceClient};

#[derive(Debug, Subcommand)]
pub(super) enum DevicesCommand {
    /// List paired devices.
    #[command(after_help = "Example:\n  palyra devices list --json")]
    List,
    /// Show one device.
    #[command(after_help = "Example:\n  palyra devices show 01jf3k8m2q9x7v5t4r6w8y0z1a")]
    Show {
        /// Device id.
        id: String,
    },
    /// Revoke a device: its next request is refused.
    #[command(
        after_help = "Example:\n  palyra devices revoke 01jf3k8m2q9x7v5t4r6w8y0z1a --reason 'lost phone'"
    )]
    Revoke {
        /// Device id.
        id: String,
        /// Why (kept in the registry and the audit log).
        #[arg(long, default_value = "revoked by operator")]
        reason: String,
    },
}

#[derive(Debug, Serialize)]
struct DeviceOut {
    device_id: String,
    name: String,
    role: String,
    status: &'static str,
    fingerprint: String,
    paired_at: String,
    certificate_expires_at: String,
    revoked_at: String,
    revoke_reason: String,
    scopes: Vec<String>,
}

impl From<pb::Device> for DeviceOut {
    fn from(d: pb::Device) -> Self {
        DeviceOut {
            status: match d.status() {
                pb::DeviceStatus::Active => "active",
                pb::DeviceStatus::Revoked => "revoked",
                pb::DeviceStatus::Unspecified => "unknown",
            },
            paired_at: time(d.paired_at.as_ref()),
            certificate_expires_at: time(d.certificate_expires_at.as_ref()),
            revoked_at: time(d.revoked_at.as_ref()),
            device_id: d.device_id,
            name: d.name,
            role: d.role,
            fingerprint: d.fingerprint,
            revoke_reason: d.revoke_reason,
            scopes: d.scopes,
        }
    }
}

impl DeviceOut {
    fn line(&self) -> String {
        format!(
            "{}  {:<7} {:<8} {}  cert until {}",
            self.device_id, self.role, self.status, self.name, self.certificate_expires_at
        )
    }
}

/// The devices as a table: a header, and each column as wide as its widest cell (names differ
/// in length; counted in characters).
fn table(devices: &[DeviceOut]) -> String {
    let rows: Vec<[&str; 5]> = devices
        .iter()
        .map(|d| {
            [
                d.device_id.as_str(),
                d.role.as_str(),
                d.status,
                d.name.as_str(),
                d.certificate_expires_at.as_str(),
            ]
        })
        .collect();
    let header = ["DEVICE", "ROLE", "STATUS", "NAME", "CERT UNTIL"];
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    std::iter::once(header)
        .chain(rows)
        .map(|row| {
            let cells: Vec<String> =
                row.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub(super) async fn run(ctx: &Context, cmd: DevicesCommand) -> Result<(), CliError> {
    let mut client = IdentityServiceClient::new(connect(ctx).await?);
    match cmd {
        DevicesCommand::List => {
            let devices: Vec<DeviceOut> = client
                .list_devices(pb::ListDevicesRequest {})
                .await?
                .into_inner()
                .devices
                .into_iter()
                .map(Into::into)
                .collect();
            ctx.print(&devices, || table(&devices))
        }
        DevicesCommand::Show { id } => {
            let d: DeviceOut = client
                .get_device(pb::GetDeviceRequest { device_id: id })
                .await?
                .into_inner()
                .device
                .unwrap_or_default()
                .into();
            ctx.print(&d, || {
                format!(
                    "{}\nfingerprint {}\npaired {}\nscopes {}{}",
                    d.line(),
                    d.fingerprint,
                    d.paired_at,
                    if d.scopes.is_empty() { "(own only)".to_owned() } else { d.scopes.join(", ") },
                    if d.revoked_at.is_empty() {
                        String::new()
                    } else {
                        format!("\nrevoked {} ({})", d.revoked_at, d.revoke_reason)
                    }
                )
            })
        }
        DevicesCommand::Revoke { id, reason } => {
            let d: DeviceOut = client
                .revoke_device(pb::RevokeDeviceRequest { device_id: id, reason })
                .await?
                .into_inner()
                .device
                .unwrap_or_default()
                .into();
            ctx.print(&d, || format!("revoked {}", d.line()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_table_keeps_its_columns_aligned() {
        let device = |name: &str, role: &str| DeviceOut {
            device_id: "01j9zq8x7c6v5b4n3m2k1j0h9a".into(),
            name: name.into(),
            fingerprint: String::new(),
            role: role.into(),
            status: "active",
            paired_at: String::new(),
            certificate_expires_at: "2027-01-01T00:00:00Z".into(),
            revoked_at: String::new(),
            revoke_reason: String::new(),
            scopes: Vec::new(),
        };
        let text = table(&[
            device("operator", "admin"),
            device("a much longer näme", "device"),
            device("x", "node"),
        ]);
        let columns: Vec<usize> = text
            .lines()
            .map(|l| {
                let at = l.find("2027").or_else(|| l.find("CERT UNTIL")).unwrap_or(0);
                l[..at].chars().count()
            })
            .collect();
        assert_eq!(columns.len(), 4, "{text}");
        assert!(columns.iter().all(|&c| c == columns[0]), "{text}");
    }
}
