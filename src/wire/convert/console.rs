//! `palyra.console.v1`: the one-time login link handed to an operator.

use std::time::SystemTime;

use super::timestamp;
use crate::login::Secret;
use crate::wire::pb::console::v1 as pb;

/// CreateLoginToken's reply: the console's login URL carrying `token`, and until when it works.
pub(crate) fn login_link(
    token: &Secret,
    expires_at: SystemTime,
    console_url: String,
) -> pb::CreateLoginTokenResponse {
    pb::CreateLoginTokenResponse {
        login_url: format!("{console_url}/login?token={}", token.expose()),
        expires_at: Some(timestamp(expires_at)),
        console_url,
    }
}
