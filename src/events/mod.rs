//! The event log: what changed on the node, in order, for peers to follow.
//!
//! Every change the vault, pairing, identity and policy code commits appends an [`Event`] in
//! the **same transaction** (`crate::storage` does the appending, inside the change's write
//! closure), so there is no event without its change, no change without its event, and no gap
//! in the sequence. Once a transaction is durable, the storage writer publishes its events to
//! an [`EventHub`] (a tokio broadcast channel) for live subscribers.
//!
//! A [`Subscription`] replays persisted events after a starting sequence and then follows the
//! live ones; a subscriber that falls behind the live buffer (or sees a hole) catches up from
//! the database, so it receives every event exactly once, in order. Retention (default 100,000
//! events or 7 days) is applied by [`EventLog::prune`], run periodically by
//! [`EventLog::spawn_retention`].
//!
//! Files: `hub` (the live fan-out), `log` ([`EventLog`], [`Subscription`]), `store`
//! (`EventStore`, implemented by `crate::storage`).
//!
//! This module knows no SQL and no transport and does not name `storage`; events never carry a
//! secret value, PIN or key.

mod hub;
mod log;
pub(crate) mod store;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

pub use hub::EventHub;
#[cfg_attr(not(feature = "testkit"), allow(unused_imports))]
pub use log::{EventLog, Retention, Subscription};
pub use store::EventBounds;

use crate::store_error::StoreError;

/// A secret version was written (`subject` = `scope/key`; attributes scope, key, version).
pub const VAULT_SECRET_WRITTEN: &str = "vault.secret.written";
/// A secret was soft-deleted.
pub const VAULT_SECRET_DELETED: &str = "vault.secret.deleted";
/// A secret's versions were destroyed (ciphertext gone).
pub const VAULT_SECRET_DESTROYED: &str = "vault.secret.destroyed";
/// The vault KEK moved to a new generation (attribute generation).
pub const VAULT_KEY_ROTATED: &str = "vault.key.rotated";
/// A device finished the PAKE and waits for approval (`subject` = request id).
pub const PAIRING_REQUESTED: &str = "pairing.requested";
/// A pairing request was approved.
pub const PAIRING_APPROVED: &str = "pairing.approved";
/// A pairing request was rejected.
pub const PAIRING_REJECTED: &str = "pairing.rejected";
/// A device was revoked (`subject` = device id).
pub const DEVICE_REVOKED: &str = "device.revoked";
/// A device's certificate was renewed.
pub const DEVICE_RENEWED: &str = "device.renewed";
/// A new policy version was installed (attribute version).
pub const POLICY_UPDATED: &str = "policy.updated";
/// An auth profile was created (`subject` = profile name; attributes kind, provider).
pub const AUTH_PROFILE_CREATED: &str = "auth.profile.created";
/// An auth profile was deleted, its secrets destroyed.
pub const AUTH_PROFILE_DELETED: &str = "auth.profile.deleted";
/// An OAuth 2.0 profile completed an authorization and holds tokens.
pub const AUTH_PROFILE_AUTHORIZED: &str = "auth.profile.authorized";
/// The provider refused a profile's refresh token (`invalid_grant`): it needs a new login.
pub const AUTH_PROFILE_REAUTHORIZATION_REQUIRED: &str = "auth.profile.reauthorization_required";
/// A profile's key or tokens were revoked (destroyed); the profile stays.
pub const AUTH_PROFILE_REVOKED: &str = "auth.profile.revoked";

/// Every kind this build emits.
#[cfg_attr(not(feature = "testkit"), allow(dead_code))]
pub const KINDS: &[&str] = &[
    VAULT_SECRET_WRITTEN,
    VAULT_SECRET_DELETED,
    VAULT_SECRET_DESTROYED,
    VAULT_KEY_ROTATED,
    PAIRING_REQUESTED,
    PAIRING_APPROVED,
    PAIRING_REJECTED,
    DEVICE_REVOKED,
    DEVICE_RENEWED,
    POLICY_UPDATED,
    AUTH_PROFILE_CREATED,
    AUTH_PROFILE_DELETED,
    AUTH_PROFILE_AUTHORIZED,
    AUTH_PROFILE_REAUTHORIZATION_REQUIRED,
    AUTH_PROFILE_REVOKED,
];

/// Events kept at most, by default.
pub const DEFAULT_MAX_EVENTS: u64 = 100_000;
/// Oldest event kept, by default.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Live events buffered per subscriber before it has to catch up from the database.
pub const DEFAULT_LIVE_BUFFER: usize = 4096;

/// A committed change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the log: dense and increasing from 1, never reused.
    pub sequence: u64,
    /// When the change was committed.
    pub at: SystemTime,
    /// What happened (one of [`KINDS`]; consumers ignore kinds they do not know).
    pub kind: String,
    /// What it happened to (`scope/key`, a device id, a request id, …).
    pub subject: String,
    /// Details (scope, key, version, device id, generation); never a secret value.
    pub attributes: BTreeMap<String, String>,
}

/// An event to append: everything but the sequence and time, which the log assigns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// One of [`KINDS`].
    pub kind: &'static str,
    /// What it happened to.
    pub subject: String,
    /// Details; never a secret value.
    pub attributes: BTreeMap<String, String>,
}

impl NewEvent {
    /// An event of `kind` about `subject` with no attributes yet.
    pub fn new(kind: &'static str, subject: impl Into<String>) -> Self {
        NewEvent { kind, subject: subject.into(), attributes: BTreeMap::new() }
    }

    /// Adds an attribute.
    pub fn with(mut self, name: &str, value: impl fmt::Display) -> Self {
        self.attributes.insert(name.to_owned(), value.to_string());
        self
    }
}

/// Why events could not be delivered.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EventsError {
    /// The asked-for starting point has been pruned.
    #[error(
        "events after sequence {since} are no longer retained; the oldest available is {oldest_available}"
    )]
    Truncated {
        /// The requested starting point.
        since: u64,
        /// The oldest sequence still stored.
        oldest_available: u64,
    },
    /// The asked-for starting point is beyond the newest event.
    #[error("since_sequence {since} is ahead of the event log (its newest sequence is {last})")]
    AheadOfLog {
        /// The requested starting point.
        since: u64,
        /// The newest sequence assigned.
        last: u64,
    },
    /// The node is shutting down.
    #[error("the event log is closed")]
    Closed,
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
}
