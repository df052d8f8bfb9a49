//! `palyra.console.v1.ConsoleService`: one-time login links for the web console, for the
//! calling device (admin only at the method gate). The tokens are [`crate::login`]'s.

use std::time::SystemTime;

use tonic::{Request, Response, Status};

use super::authz::peer_of;
use crate::login::Logins;
use crate::wire::convert::login_link;
use crate::wire::pb::console::v1::{self as pb, console_service_server::ConsoleService};
use crate::wire::status::internal;

/// The console service.
#[derive(Debug, Clone)]
pub struct ConsoleApi {
    logins: Logins,
}

impl ConsoleApi {
    /// The service issuing tokens into `logins`.
    pub fn new(logins: Logins) -> Self {
        ConsoleApi { logins }
    }
}

#[tonic::async_trait]
impl ConsoleService for ConsoleApi {
    async fn create_login_token(
        &self,
        request: Request<pb::CreateLoginTokenRequest>,
    ) -> Result<Response<pb::CreateLoginTokenResponse>, Status> {
        let peer = peer_of(&request)?;
        let Some(device) = peer.principal.device_id() else {
            return Err(internal("an anonymous caller passed the console login gate"));
        };
        let (token, expires_at) = self.logins.issue_token(device, SystemTime::now())?;
        let console_url = self.logins.console_url().unwrap_or_default();
        tracing::info!(device_id = %device, "console login link issued");
        Ok(Response::new(login_link(&token, expires_at, console_url)))
    }
}
