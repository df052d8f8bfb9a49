//! The audit sinks' cursors (`audit_sink_cursor`) behind [`crate::audit::SinkCursorStore`].

use rusqlite::OptionalExtension;

use super::{Store, StoreError};
use crate::audit::SinkCursorStore;
use crate::store_error::BoxFuture;

impl SinkCursorStore for Store {
    fn delivered(&self, sink: &str) -> BoxFuture<'_, Result<u64, StoreError>> {
        let sink = sink.to_owned();
        Box::pin(self.read(move |c| {
            let delivered: Option<i64> = c
                .prepare_cached("SELECT delivered FROM audit_sink_cursor WHERE sink = ?1")?
                .query_row([&sink], |r| r.get(0))
                .optional()?;
            delivered.map_or(Ok(0), |d| u64::try_from(d).map_err(StoreError::corrupt))
        }))
    }

    fn set_delivered(&self, sink: &str, sequence: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        let sink = sink.to_owned();
        Box::pin(self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO audit_sink_cursor (sink, delivered) VALUES (?1, ?2)
                 ON CONFLICT (sink) DO UPDATE SET delivered = excluded.delivered",
            )?
            .execute((&sink, i64::try_from(sequence).map_err(StoreError::corrupt)?))?;
            Ok(())
        }))
    }
}
