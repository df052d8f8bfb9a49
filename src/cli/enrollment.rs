//! `palyra enrollment ...`: enrollment keys, so headless machines (agents, servers, CI) pair
//! with no human step (`palyra pair --enrollment-key TOKEN` on the machine).

use clap::Subcommand;
use serde::Serialize;

use super::client::connect;
use super::output::{CliError, Context, time};
use crate::wire::pb::pairing::v1::{self as pb, pairing_service_client::PairingServiceClient};

#[derive(Debug, Subcommand)]
pub(super) enum EnrollmentCommand {
    /// Make an enrollment key and print its token (shown once: treat it as a password).
    #[command(after_help = "\
Example:
  palyra enrollment create --scope agents/ci --uses 5 --ttl 7d
  # on the agent's machine, the token in a 0600 file (or in PALYRA_ENROLLMENT_KEY):
  palyra pair --enrollment-key-file token.txt --name ci-runner-1")]
    Create {
        /// The role of the devices it pairs: device or node.
        #[arg(long, default_value = "device")]
        role: String,
        /// A vault scope every device it pairs may use beyond its own (repeatable).
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// How many devices it may pair (1 to 10000).
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it is accepted: e.g. 90m, 24h, 7d (1m to 365d).
        #[arg(long, default_value = "24h", value_parser = parse_key_ttl)]
        ttl: u32,
    },
    /// List enrollment keys, newest first (never their secrets).
    #[command(after_help = "Example:\n  palyra enrollment list --all")]
    List {
        /// Also list revoked, expired and used-up keys.
        #[arg(long)]
        all: bool,
    },
    /// Revoke an enrollment key: no further device pairs with it (paired ones stay).
    #[command(after_help = "Example:\n  palyra enrollment revoke 7KQ2M0D4XB")]
    Revoke {
        /// The key's id (from `enrollment list`).
        id: String,
    },
}

/// A key's lifetime: 1 minute to a year.
fn parse_key_ttl(text: &str) -> Result<u32, String> {
    let secs = super::pairing::duration_secs(text)?;
    if !(60..=365 * 86_400).contains(&secs) {
        return Err("a key lives 1m to 365d".to_owned());
    }
    Ok(secs)
}

#[derive(Debug, Serialize)]
struct KeyOut {
    id: String,
    role: String,
    scopes: Vec<String>,
    uses: u32,
    max_uses: u32,
    state: &'static str,
    created_at: String,
    expires_at: String,
    revoked_at: String,
}

impl From<pb::EnrollmentKey> for KeyOut {
    fn from(k: pb::EnrollmentKey) -> Self {
        KeyOut {
            state: match k.state() {
                pb::EnrollmentKeyState::Active => "active",
                pb::EnrollmentKeyState::UsedUp => "used-up",
                pb::EnrollmentKeyState::Expired => "expired",
                pb::EnrollmentKeyState::Revoked => "revoked",
                pb::EnrollmentKeyState::Unspecified => "unknown",
            },
            created_at: time(k.created_at.as_ref()),
            expires_at: time(k.expires_at.as_ref()),
            revoked_at: time(k.revoked_at.as_ref()),
            id: k.key_id,
            role: k.role,
            scopes: k.scopes,
            uses: k.uses,
            max_uses: k.max_uses,
        }
    }
}

impl KeyOut {
    fn line(&self) -> String {
        let scopes = if self.scopes.is_empty() { "-".to_owned() } else { self.scopes.join(",") };
        format!(
            "{}  {:<8} {:<6} uses {}/{}  scopes {}  expires {}",
            self.id, self.state, self.role, self.uses, self.max_uses, scopes, self.expires_at
        )
    }
}

pub(super) async fn run(ctx: &Context, cmd: EnrollmentCommand) -> Result<(), CliError> {
    let mut client = PairingServiceClient::new(connect(ctx).await?);
    match cmd {
        EnrollmentCommand::Create { role, scopes, uses, ttl } => {
            let created = client
                .create_enrollment_key(pb::CreateEnrollmentKeyRequest {
                    role,
                    scopes,
                    max_uses: Some(uses),
                    ttl_seconds: Some(ttl),
                })
                .await?
                .into_inner();
            let expires_at = time(created.expires_at.as_ref());
            let json = serde_json::json!({
                "id": created.key_id, "token": created.token, "expires_at": expires_at,
            });
            ctx.print(&json, || {
                let key = created.key.clone().map(KeyOut::from);
                let grants = key.as_ref().map(KeyOut::line).unwrap_or_default();
                format!(
                    "{}\n\n{grants}\n\nShown once; treat it as a password. On the machine to enroll, with the \
                     token in PALYRA_ENROLLMENT_KEY or a 0600 file:\n  \
                     palyra pair --enrollment-key-file <file> --name <name>\n\
                     Revoke with: palyra enrollment revoke {}",
                    created.token, created.key_id
                )
            })
        }
        EnrollmentCommand::List { all } => {
            let keys: Vec<KeyOut> = client
                .list_enrollment_keys(pb::ListEnrollmentKeysRequest { include_inactive: all })
                .await?
                .into_inner()
                .keys
                .into_iter()
                .map(KeyOut::from)
                .collect();
            ctx.print(&keys, || {
                if keys.is_empty() {
                    "no enrollment keys".to_owned()
                } else {
                    keys.iter().map(KeyOut::line).collect::<Vec<_>>().join("\n")
                }
            })
        }
        EnrollmentCommand::Revoke { id } => {
            let key = client
                .revoke_enrollment_key(pb::RevokeEnrollmentKeyRequest { key_id: id })
                .await?
                .into_inner()
                .key
                .map(KeyOut::from);
            ctx.print(&key, || match &key {
                Some(k) => format!("revoked: {} ({} of {} uses taken)", k.id, k.uses, k.max_uses),
                None => "revoked".to_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lifetimes_parse_with_units_and_bounds() {
        assert_eq!(parse_key_ttl("24h"), Ok(86_400));
        assert_eq!(parse_key_ttl("7d"), Ok(7 * 86_400));
        assert!(
            parse_key_ttl("30s").is_err() && parse_key_ttl("366d").is_err() && parse_key_ttl("x").is_err()
        );
    }
}
