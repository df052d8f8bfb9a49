//! `palyra.console.v1.ConsoleService`: one-time login links for the web console, for the
//! calling device (admin only at the method gate). The tokens are [`crate::login`]'s.

use std::time::SystemTime;

use tonic::{Code, Request, Response, Status};

use super::authz::peer_of;
use super::convert::timestamp;
use super::pb::common::v1::ErrorReason;
use super::pb::console::v1::{self as pb, console_service_server::ConsoleService};
use super::status::{internal, status};
use crate::login::{LoginError, Logins};

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
        let (token, expires_at) =
            self.logins.issue_token(device, SystemTime::now()).map_err(|e| match e {
                e @ LoginError::ConsoleDisabled => {
                    status(Code::FailedPrecondition, ErrorReason::ConsoleDisabled, e.to_string())
                }
                other => internal(other),
            })?;
        let console_url = self.logins.console_url().unwrap_or_default();
        tracing::info!(device_id = %device, "console login link issued");
        Ok(Response::new(pb::CreateLoginTokenResponse {
            login_url: format!("{console_url}/login?token={}", token.expose()),
            expires_at: Some(timestamp(expires_at)),
            console_url,
        }))
    }
}
