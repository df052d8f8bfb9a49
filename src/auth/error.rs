//! The one error of auth profiles.

use super::ProfileName;
use crate::store_error::StoreError;
use crate::vault::VaultError;

/// Why an auth profile operation failed. Messages carry names and provider statuses, never a
/// key, token, code or verifier.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A field is malformed.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The field at fault.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// No such profile.
    #[error("auth profile {0} not found")]
    NotFound(ProfileName),
    /// The name is taken.
    #[error("auth profile {0} already exists")]
    AlreadyExists(ProfileName),
    /// The call does not apply to this kind of profile.
    #[error("auth profile {name} is {kind}: {message}")]
    WrongKind {
        /// The profile.
        name: ProfileName,
        /// Its kind.
        kind: &'static str,
        /// What does not apply.
        message: &'static str,
    },
    /// The state is unknown, used or expired.
    #[error("the authorization state is unknown, already used or expired: start the authorization again")]
    StateInvalid,
    /// The profile has no usable grant; a new authorization is needed.
    #[error("auth profile {name} needs {}authorization: {reason}; run `palyra auth login {name}`", if *.again { "re-" } else { "" })]
    NeedsAuthorization {
        /// The profile.
        name: ProfileName,
        /// Whether it had a grant the provider refused (`invalid_grant`).
        again: bool,
        /// Why.
        reason: String,
    },
    /// The provider refused the grant (`invalid_grant`); mapped to [`AuthError::NeedsAuthorization`]
    /// by [`super::Profiles`].
    #[error("the provider refused the grant (invalid_grant){}", if .description.is_empty() { String::new() } else { format!(": {}", .description) })]
    InvalidGrant {
        /// The provider's error_description, bounded.
        description: String,
    },
    /// The provider failed or could not be reached.
    #[error("{message}")]
    Provider {
        /// Its HTTP status, when it answered.
        status: Option<u16>,
        /// Its OAuth error code, when it sent one.
        error: Option<String>,
        /// What happened.
        message: String,
    },
    /// The vault failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// Something that cannot happen did (detail for the log).
    #[error("internal error: {0}")]
    Internal(String),
}

impl AuthError {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        AuthError::InvalidArgument { field, message: message.into() }
    }
}
