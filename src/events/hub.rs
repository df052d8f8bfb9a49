//! [`EventHub`], the live fan-out of committed events: a tokio broadcast channel the store's
//! writer publishes to after each durable commit, in sequence order. It holds no history (the
//! store does) and a receiver that lags is told so, never silently skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::broadcast;

use super::{DEFAULT_LIVE_BUFFER, Event};

/// The live fan-out: committed events, published by the storage writer after each commit.
#[derive(Debug, Clone)]
pub struct EventHub {
    tx: broadcast::Sender<Arc<Event>>,
    /// Times a subscriber fell behind the live buffer (the `palyra_event_subscriber_lagged`
    /// metric).
    lagged: Arc<AtomicU64>,
}

impl EventHub {
    /// A hub buffering up to `capacity` live events per subscriber.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        EventHub { tx, lagged: Arc::default() }
    }

    /// Publishes a committed event (call only after its transaction is durable, in sequence
    /// order).
    pub(crate) fn publish(&self, event: Event) {
        // No receiver is not an error: nobody is following right now.
        let _ = self.tx.send(Arc::new(event));
    }

    /// A subscriber fell behind the live buffer (it catches up from the database).
    pub(crate) fn note_lagged(&self) {
        self.lagged.fetch_add(1, Ordering::Relaxed);
    }

    /// Times a subscriber fell behind the live buffer since start.
    pub fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }

    /// Live receivers (subscriptions following the log).
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// A receiver of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub::new(DEFAULT_LIVE_BUFFER)
    }
}
