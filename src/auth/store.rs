//! [`ProfileStore`]: the registry of auth profiles and their pending authorizations, as the
//! [`super::Profiles`] service needs it. Implemented on SQLite by `crate::storage`; never sees
//! a key, token, verifier or state in the clear (secrets are in the vault, states hashed).

use std::fmt;
use std::time::SystemTime;

use super::{PendingAuthorization, Profile, ProfileName, ProfileStatus};
use crate::store_error::{BoxFuture, StoreError};

/// The profile registry. Changes append their `auth.profile.*` event in the same transaction.
pub(crate) trait ProfileStore: Send + Sync + fmt::Debug {
    /// Inserts a new profile (with its `auth.profile.created` event); `false` when the name
    /// is taken.
    fn insert_profile(&self, profile: &Profile) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// The profile `name`, if any.
    fn profile(&self, name: &ProfileName) -> BoxFuture<'_, Result<Option<Profile>, StoreError>>;
    /// Every profile, by name.
    fn profiles(&self) -> BoxFuture<'_, Result<Vec<Profile>, StoreError>>;
    /// Deletes a profile and its pending authorizations (with its `auth.profile.deleted`
    /// event); `false` when there was none.
    fn delete_profile(&self, name: &ProfileName) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Records a profile's status, access-token expiry and last error, and with `event` (one
    /// of the `auth.profile.*` kinds) the event of that change, in the same transaction.
    fn set_status(
        &self,
        name: &ProfileName,
        status: ProfileStatus,
        access_expires_at: Option<SystemTime>,
        last_error: &str,
        event: Option<&'static str>,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Stores a pending authorization, pruning expired ones.
    fn insert_pending(
        &self,
        pending: &PendingAuthorization,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Takes the pending authorization of `state_hash` out (single use: two completions
    /// cannot both get it); `None` when there is none or it expired at `now`.
    fn take_pending(
        &self,
        state_hash: &str,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Option<PendingAuthorization>, StoreError>>;
}
