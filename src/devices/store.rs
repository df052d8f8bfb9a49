//! What the device registry needs from a database: the rows of paired devices, read and
//! changed one device at a time. the storage layer implements it on SQLite (the `devices`
//! table, MAC-checked rows, the events each change appends); `super::Registry` holds it as
//! `Arc<dyn DeviceStore>`.
//!
//! The trait decides nothing (who may revoke, when to renew): the registry does. It knows no
//! SQL. It holds what a flow uses: the lookup by fingerprint and the change of granted scopes
//! have no flow yet and stay inherent methods of `storage::Store`.

use std::fmt;
use std::time::SystemTime;

use crate::identity::{Device, DeviceId, IdentityError};
use crate::store_error::BoxFuture;

/// The registry's rows. Errors are [`IdentityError`]: `NotFound` for an unknown id,
/// `AlreadyExists` for a taken id or fingerprint, `Storage` for the database (an integrity
/// failure of a row included).
pub(crate) trait DeviceStore: Send + Sync + fmt::Debug {
    /// Registers `device`. [`IdentityError::AlreadyExists`] if its id or fingerprint is taken
    /// (a revoked device's key cannot come back under a new id).
    fn insert(&self, device: Device) -> BoxFuture<'_, Result<(), IdentityError>>;

    /// The device `id`, if registered.
    fn get(&self, id: DeviceId) -> BoxFuture<'_, Result<Option<Device>, IdentityError>>;

    /// Every registered device, revoked ones included, oldest pairing first.
    fn list(&self) -> BoxFuture<'_, Result<Vec<Device>, IdentityError>>;

    /// Revokes device `id` at `now` for `reason` and returns it (appending the
    /// `device.revoked` event in the same transaction). Revoking a revoked device changes
    /// nothing.
    fn revoke(
        &self,
        id: DeviceId,
        reason: String,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Device, IdentityError>>;

    /// Records the expiry of the certificate just issued to device `id` (appending the
    /// `device.renewed` event).
    fn set_certificate_expiry(
        &self,
        id: DeviceId,
        expires_at: SystemTime,
    ) -> BoxFuture<'_, Result<(), IdentityError>>;
}
