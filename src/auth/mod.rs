//! Auth profiles: the credentials the node uses to call external providers, as plain API keys
//! or OAuth 2.0 authorization-code grants with PKCE (S256) and automatic refresh.
//!
//! - `profile`: the types (name, kind, status, OAuth 2.0 settings) and their validation;
//! - `service`: [`Profiles`], the service that owns the flows;
//! - `store`: `ProfileStore`, the registry (name, provider, kind, endpoints, status) and the
//!   pending authorizations, implemented on SQLite by `crate::storage`;
//! - [`oauth`]: the token endpoint client, the only code that speaks HTTP (and knows reqwest);
//! - [`pkce`]: verifiers, challenges and states.
//!
//! Keys, tokens and PKCE verifiers are sealed in the vault under the reserved scope
//! `palyra/auth/<name>` ([`RESERVED_SCOPE`]), which the default policies keep every vault call
//! away from. [`Profiles::access_token`] refreshes a token that expires within
//! [`REFRESH_MARGIN`], one refresh per profile however many callers wait (single flight).
//!
//! This module does not authorize (the edges ask the policy engine first), knows no gRPC and
//! does not name `storage`.

mod error;
pub mod oauth;
pub mod pkce;
mod profile;
mod service;
pub(crate) mod store;

pub use error::AuthError;
pub use oauth::TokenClient;
pub use pkce::CodeVerifier;
#[cfg_attr(not(feature = "testkit"), allow(unused_imports))]
pub use profile::{
    AccessToken, NewCredential, NewProfile, OAuth2Config, PendingAuthorization, Profile, ProfileKind,
    ProfileName, ProfileStatus, RESERVED_SCOPE, StartedAuthorization,
};
#[cfg_attr(not(feature = "testkit"), allow(unused_imports))]
pub use service::{Profiles, REFRESH_MARGIN, STATE_LIFETIME};
