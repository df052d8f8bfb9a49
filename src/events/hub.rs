//! [`EventHub`], the live fan-out of committed events: a tokio broadcast channel the store's
//! writer publishes to after each durable commit, in sequence order. It holds no history (the
//! store does) and a receiver that lags is told so, never silently skipped.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::{DEFAULT_LIVE_BUFFER, Event};

/// The live fan-out: committed events, published by the storage writer after each commit.
#[derive(Debug, Clone)]
pub struct EventHub {
    tx: broadcast::Sender<Arc<Event>>,
}

impl EventHub {
    /// A hub buffering up to `capacity` live events per subscriber.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        EventHub { tx }
    }

    /// Publishes a committed event (call only after its transaction is durable, in sequence
    /// order).
    pub(crate) fn publish(&self, event: Event) {
        // No receiver is not an error: nobody is following right now.
        let _ = self.tx.send(Arc::new(event));
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
