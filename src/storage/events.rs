//! The `events` table: appends inside the caller's write transaction, reads after a sequence,
//! retention; [`EventStore`] on `Store`. Speaks [`crate::events`] types.
//!
//! Code that commits a change appends its event with [`append`] **inside the same write
//! closure**, so the change and its event commit or roll back together. The sequence is the
//! table's `AUTOINCREMENT` key, assigned in that transaction: dense (a rolled-back append gives
//! its number back) and never reused (not even after pruning).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, Row};

use super::{Store, StoreError, from_millis, to_millis};
pub use crate::events::EventBounds;
use crate::events::store::EventStore;
use crate::events::{Event, EventHub, NewEvent};
use crate::store_error::BoxFuture;

/// Appends `event` at `now` within the current write transaction and returns it with its
/// sequence. Call it from inside a [`Store::write`] closure, next to the change it describes.
pub(crate) fn append(conn: &Connection, event: &NewEvent, now: SystemTime) -> Result<Event, StoreError> {
    let attributes = serde_json::to_string(&event.attributes)
        .map_err(|e| StoreError::new(format_args!("event attributes: {e}")))?;
    let at = to_millis(now);
    let sequence: i64 = conn
        .prepare_cached(
            "INSERT INTO events (at, kind, subject, attributes) VALUES (?1, ?2, ?3, ?4) RETURNING sequence",
        )?
        .query_row((at, event.kind, &event.subject, attributes), |r| r.get(0))?;
    Ok(Event {
        sequence: u64::try_from(sequence).map_err(StoreError::corrupt)?,
        at: from_millis(at),
        kind: event.kind.to_owned(),
        subject: event.subject.clone(),
        attributes: event.attributes.clone(),
    })
}

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Event, StoreError>> {
    let sequence: i64 = row.get(0)?;
    let at: i64 = row.get(1)?;
    let kind: String = row.get(2)?;
    let subject: String = row.get(3)?;
    let attributes: String = row.get(4)?;
    Ok((|| {
        Ok(Event {
            sequence: u64::try_from(sequence).map_err(StoreError::corrupt)?,
            at: from_millis(at),
            kind,
            subject,
            attributes: serde_json::from_str::<BTreeMap<String, String>>(&attributes)
                .map_err(|_| StoreError::corrupt(format_args!("attributes of event {sequence}")))?,
        })
    })())
}

/// Events with a sequence above `after`, oldest first, at most `limit`.
pub(crate) fn read_after(conn: &Connection, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(
        "SELECT sequence, at, kind, subject, attributes FROM events WHERE sequence > ?1 ORDER BY sequence LIMIT ?2",
    )?;
    let rows = stmt.query_map((after, i64::try_from(limit).unwrap_or(i64::MAX)), event_from_row)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row??);
    }
    Ok(out)
}

/// The highest sequence ever assigned (from SQLite's AUTOINCREMENT counter).
pub(crate) fn last_sequence(conn: &Connection) -> Result<u64, StoreError> {
    let last: Option<i64> = conn
        .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'events'")?
        .query_row([], |r| r.get(0))
        .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })?;
    Ok(last.and_then(|l| u64::try_from(l).ok()).unwrap_or(0))
}

fn bounds(conn: &Connection) -> Result<EventBounds, StoreError> {
    let last = last_sequence(conn)?;
    let oldest: Option<i64> =
        conn.prepare_cached("SELECT min(sequence) FROM events")?.query_row([], |r| r.get(0))?;
    let oldest = oldest.and_then(|o| u64::try_from(o).ok()).unwrap_or(last + 1);
    Ok(EventBounds { oldest, last })
}

/// Publishes to `hub` the events committed after `published`; returns the new high mark.
/// Runs on the writer connection right after a successful commit.
pub(super) fn publish_committed(conn: &Connection, hub: &EventHub, published: u64) -> u64 {
    let mut mark = published;
    loop {
        match read_after(conn, mark, 1024) {
            Ok(events) if events.is_empty() => return mark,
            Ok(events) => {
                for event in events {
                    mark = event.sequence;
                    hub.publish(event);
                }
            }
            Err(e) => {
                // Live subscribers notice the hole at the next event and read the database.
                tracing::error!(error = %e, "cannot read committed events to publish them");
                return last_sequence(conn).unwrap_or(mark);
            }
        }
    }
}

impl Store {
    /// The live fan-out of committed events.
    pub fn event_hub(&self) -> &EventHub {
        &self.inner.events
    }

    /// Appends `event` in its own (group-committed) transaction.
    pub async fn append_event(&self, event: NewEvent, now: SystemTime) -> Result<Event, StoreError> {
        self.write(move |c| append(c, &event, now)).await
    }

    /// Events after `after`, oldest first, at most `limit`.
    pub async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.read(move |c| read_after(c, after, limit)).await
    }

    /// The oldest stored and the last assigned sequence.
    pub async fn event_bounds(&self) -> Result<EventBounds, StoreError> {
        self.read(|c| {
            // One snapshot for both numbers.
            c.execute_batch("BEGIN")?;
            let result = bounds(c);
            c.execute_batch("COMMIT")?;
            result
        })
        .await
    }

    /// Deletes events beyond the newest `max_events` or older than `max_age` at `now`;
    /// returns how many.
    pub async fn prune_events(
        &self,
        max_events: u64,
        max_age: Duration,
        now: SystemTime,
    ) -> Result<u64, StoreError> {
        let cutoff = to_millis(now.checked_sub(max_age).unwrap_or(std::time::UNIX_EPOCH));
        self.write(move |c| {
            let last = last_sequence(c)?;
            let keep_from = i64::try_from(last.saturating_sub(max_events)).unwrap_or(i64::MAX);
            // Only ever a prefix: `at` is taken by the handler before its write is queued, so it
            // is not monotonic in sequence, and deleting by age alone could cut a hole in the
            // middle of the log. Everything up to the newest event older than the cutoff goes.
            let removed = c
                .prepare_cached(
                    "DELETE FROM events WHERE sequence <= max(?1, \
                     coalesce((SELECT max(sequence) FROM events WHERE at < ?2), 0))",
                )?
                .execute((keep_from, cutoff))?;
            Ok(removed as u64)
        })
        .await
    }
}

impl EventStore for Store {
    fn append(&self, event: NewEvent, now: SystemTime) -> BoxFuture<'_, Result<Event, StoreError>> {
        Box::pin(self.append_event(event, now))
    }

    fn read_after(&self, after: u64, limit: usize) -> BoxFuture<'_, Result<Vec<Event>, StoreError>> {
        Box::pin(self.events_after(after, limit))
    }

    fn bounds(&self) -> BoxFuture<'_, Result<EventBounds, StoreError>> {
        Box::pin(self.event_bounds())
    }

    fn prune(
        &self,
        max_events: u64,
        max_age: Duration,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.prune_events(max_events, max_age, now))
    }

    fn hub(&self) -> &EventHub {
        self.event_hub()
    }
}
