//! Authorization: the Cedar schema, the default policies, and the one engine that decides every
//! gRPC and QUIC call (docs/security-model.md).
//!
//! - [`PolicyEngine`] holds the schema (parsed once) and the active policy set, parsed once per
//!   install and swapped atomically; [`PolicyEngine::authorize`] decides one request in a few
//!   microseconds, building only the handful of entities that request needs.
//! - [`PolicyEngine::validate`] turns Cedar's parse and strict-validation errors into
//!   [`Diagnostic`]s with 1-based line and column, after bounding the input (size, nesting,
//!   operators per policy).
//! - [`Policies`] is the application service over the engine and a [`PolicyStore`]: versioned
//!   updates with compare-and-set, the lockout guard, rollback, the offline reset.
//! - [`parse_entity_ref`] reads the entity uids the PolicyService's `Authorize` receives as text.
//!
//! What it does not do: transport (the gRPC layer and the QUIC runtime call it and map
//! [`AuthzDecision`] and [`PolicyError`] to the wire), SQL (behind [`PolicyStore`]), looking
//! devices up in the registry (the caller passes what it resolved), events.
//!
//! The schema and the defaults are the files `schema.cedarschema` and `default.cedar` beside
//! this module, embedded in the binary; tests check that they validate in strict mode and that
//! the defaults implement the authorization matrix cell by cell.
//!
//! For the edges that call it:
//! - The method gate asks `(principal, "<package>.<Service>/<Method>", Resource::Node)`; the
//!   action id is the request path without its leading slash ([`actions`] has them all).
//!   Unknown methods are denied with an explanation, never a panic.
//! - Resource checks ask again: vault calls with `Resource::Scope(scope)`, GetDevice and
//!   RenewCertificate with `Resource::Device(id)`.
//! - RenewCertificate's anonymous path passes the gate; once the handler has verified the
//!   proof it asks `(Anonymous, RenewCertificate, Resource::Device(id))` with context
//!   `{"renewal_proof": true}` ([`actions::RENEWAL_PROOF`]).
//! - `authorize` takes a resolved [`crate::identity::Principal`] (active by construction) and
//!   its granted scopes; [`PolicyEngine::authorize_subject`] with [`Subject::device`] takes a
//!   registry record, revoked ones included (the engine refuses any device that is not active,
//!   whatever the policies say).
//! - `validate`, `install` and `would_lock_out` parse on a thread of their own and take
//!   milliseconds: call them from `spawn_blocking`. `authorize` does not block.

pub mod actions;
mod diagnostics;
mod engine;
mod entities;
mod service;
mod store;

#[cfg_attr(not(feature = "testkit"), allow(unused_imports))]
pub use diagnostics::{Diagnostic, MAX_NESTING, MAX_OPERATORS, MAX_POLICY_TEXT_BYTES, Severity};
pub(crate) use engine::Unsliced;
pub use engine::{AuthzDecision, PolicyEngine};
pub use entities::{EntityRef, Resource, Subject, parse_action_ref, parse_entity_ref, parse_principal_ref, principal_uid};
pub(crate) use service::ResetError;
#[cfg_attr(not(feature = "testkit"), allow(unused_imports))]
pub use service::{Policies, UPDATED_BY_INIT, UPDATED_BY_RESET};
pub(crate) use store::PolicyStore;

use std::time::SystemTime;

use crate::audit::AuditUnavailable;
use crate::store_error::StoreError;

/// The Cedar schema, in the human-readable schema syntax.
pub const SCHEMA_TEXT: &str = include_str!("schema.cedarschema");
/// The default policies: the authorization matrix of docs/security-model.md.
pub const DEFAULT_POLICIES: &str = include_str!("default.cedar");

/// One stored version of the policy set, without its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVersion {
    /// From 1; every update, rollback or reset adds one.
    pub version: u64,
    /// When it was stored.
    pub updated_at: SystemTime,
    /// Who stored it: a Cedar entity uid such as `Palyra::Device::"01j…"`, or
    /// [`UPDATED_BY_INIT`] / [`UPDATED_BY_RESET`].
    pub updated_by: String,
}

/// One stored version of the policy set with its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicySet {
    /// Its version, time and author.
    pub info: PolicyVersion,
    /// The Cedar policies.
    pub text: String,
}

/// Why a policy operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The policy text does not parse or does not validate against the schema.
    #[error("invalid policy set: {}", summary(diagnostics))]
    Invalid {
        /// Every problem found, in text order (warnings included).
        diagnostics: Vec<Diagnostic>,
    },
    /// The stored policy set the node would start with does not validate.
    #[error(
        "stored policy version {version} is invalid ({}); run `palyra policy reset` to restore the defaults",
        summary(diagnostics)
    )]
    StoredInvalid {
        /// The stored version.
        version: u64,
        /// What is wrong with it.
        diagnostics: Vec<Diagnostic>,
    },
    /// A compare-and-set update found another current version.
    #[error("policy version conflict: expected current version {expected}, found {actual}")]
    VersionConflict {
        /// The version the caller expected to replace.
        expected: u64,
        /// The current version.
        actual: u64,
    },
    /// The new policy set would take `UpdatePolicySet` away from the admin making the change.
    #[error("refused: under the new policy set the calling admin could no longer update policies")]
    Lockout,
    /// No such stored version.
    #[error("policy version {0} not found")]
    NotFound(u64),
    /// An entity or action uid given as text does not parse or is not one Palyra knows.
    #[error("invalid entity uid {input}: {reason}")]
    InvalidEntityRef {
        /// A bounded, escaped quote of the input.
        input: String,
        /// What is wrong.
        reason: String,
    },
    /// A background task of the policy service failed (panicked or was cancelled).
    #[error("policy task failed: {0}")]
    Task(String),
    /// The embedded schema does not load (a build defect; tests prevent it).
    #[error("the policy schema does not load: {0}")]
    Schema(String),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// The audit log cannot record: a change whose authorization is not durably recorded
    /// does not happen.
    #[error(transparent)]
    AuditUnavailable(#[from] AuditUnavailable),
}

/// The first error of a diagnostic list, and how many there are.
fn summary(diagnostics: &[Diagnostic]) -> String {
    let errors: Vec<&Diagnostic> = diagnostics.iter().filter(|d| d.severity == Severity::Error).collect();
    match errors.first() {
        None => "no errors".to_owned(),
        Some(first) if errors.len() == 1 => first.to_string(),
        Some(first) => format!("{first} (and {} more errors)", errors.len() - 1),
    }
}

/// Quotes untrusted input for a message: escaped, and cut after 60 characters.
pub(crate) fn quote(input: &str) -> String {
    const SHOWN: usize = 60;
    let mut shown: String = input.chars().take(SHOWN).collect();
    if input.chars().count() > SHOWN {
        shown.push('…');
    }
    format!("{shown:?}")
}
