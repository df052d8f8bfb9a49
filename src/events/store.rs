//! [`EventStore`]: the persisted log as [`super::EventLog`] needs it, implemented on SQLite by
//! `crate::storage` (whose writer also appends each change's event inside the change's own
//! transaction and publishes it to the [`EventHub`] once durable).

use std::fmt;
use std::time::{Duration, SystemTime};

use super::{Event, EventHub, NewEvent};
use crate::store_error::{BoxFuture, StoreError};

/// The first and last sequences of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventBounds {
    /// The oldest sequence still stored, or the next one to be assigned when none is.
    pub oldest: u64,
    /// The highest sequence ever assigned (0 before the first).
    pub last: u64,
}

/// The persisted events and their live fan-out.
pub(crate) trait EventStore: Send + Sync + fmt::Debug {
    /// Appends `event` at `now` in its own transaction.
    fn append(&self, event: NewEvent, now: SystemTime) -> BoxFuture<'_, Result<Event, StoreError>>;
    /// Events after `after`, oldest first, at most `limit`.
    fn read_after(&self, after: u64, limit: usize) -> BoxFuture<'_, Result<Vec<Event>, StoreError>>;
    /// The oldest stored and the last assigned sequence, read in one snapshot.
    fn bounds(&self) -> BoxFuture<'_, Result<EventBounds, StoreError>>;
    /// Deletes events beyond the newest `max_events` or older than `max_age` at `now` (only
    /// ever a prefix); returns how many.
    fn prune(
        &self,
        max_events: u64,
        max_age: Duration,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// The live fan-out of committed events.
    fn hub(&self) -> &EventHub;
}
