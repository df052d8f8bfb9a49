//! [`EventLog`], the event service: appends outside a change, retention, and
//! [`Subscription`]s that replay the persisted events after a starting sequence and then follow
//! the live ones through the store's [`super::EventHub`]. The events themselves are behind an
//! [`EventStore`]; this file knows no SQL.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use super::store::EventStore;
use super::{DEFAULT_MAX_AGE, DEFAULT_MAX_EVENTS, Event, EventsError, NewEvent};
use crate::store_error::StoreError;

/// Events read from the database per catch-up query.
const PAGE: usize = 1024;

/// How long events are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// At most this many events.
    pub max_events: u64,
    /// None older than this.
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { max_events: DEFAULT_MAX_EVENTS, max_age: DEFAULT_MAX_AGE }
    }
}

/// The event log of a node: the persisted events in `store` and their live fan-out.
#[derive(Debug, Clone)]
pub struct EventLog {
    store: Arc<dyn EventStore>,
    retention: Retention,
}

impl EventLog {
    /// The log of `store` with the default retention.
    pub(crate) fn new(store: Arc<dyn EventStore>) -> Self {
        EventLog { store, retention: Retention::default() }
    }

    /// The same log with another retention.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Appends one event in its own transaction (for callers that have no change of their own
    /// to commit with it, e.g. tools and benchmarks; changes append inside their write).
    pub async fn append(&self, event: NewEvent) -> Result<Event, StoreError> {
        self.store.append(event, SystemTime::now()).await
    }

    /// The highest sequence assigned so far (0 before the first event).
    pub async fn last_sequence(&self) -> Result<u64, StoreError> {
        Ok(self.store.bounds().await?.last)
    }

    /// Removes events beyond the retention; returns how many.
    pub async fn prune(&self) -> Result<u64, StoreError> {
        self.store.prune(self.retention.max_events, self.retention.max_age, SystemTime::now()).await
    }

    /// Prunes now and then every `every` until the store closes.
    pub fn spawn_retention(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let log = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match log.prune().await {
                    Ok(0) => {}
                    Ok(removed) => tracing::debug!(removed, "pruned old events"),
                    Err(e) => {
                        tracing::debug!(error = %e, "event retention stopped");
                        return;
                    }
                }
            }
        })
    }

    /// Live subscriptions and watchers following the log now.
    pub fn subscribers(&self) -> usize {
        self.store.hub().subscribers()
    }

    /// Times a subscriber fell behind the live buffer since start.
    pub fn lagged(&self) -> u64 {
        self.store.hub().lagged()
    }

    /// The events committed from now on, live (no replay, no catch-up: a receiver that lags
    /// is told how many it missed), for watchers that react to changes as they commit.
    pub(crate) fn live(&self) -> broadcast::Receiver<Arc<Event>> {
        self.store.hub().subscribe()
    }

    /// Follows the log from after `since` (0 = everything retained), keeping only `kinds`
    /// (empty = all). [`EventsError::Truncated`] when `since` has already been pruned.
    pub async fn subscribe(&self, since: u64, kinds: Vec<String>) -> Result<Subscription, EventsError> {
        // Subscribe before reading the database: whatever commits meanwhile is in one or both.
        let live = self.store.hub().subscribe();
        let bounds = self.store.bounds().await?;
        let last = if since == 0 {
            bounds.oldest.saturating_sub(1)
        } else if since.saturating_add(1) < bounds.oldest {
            return Err(EventsError::Truncated { since, oldest_available: bounds.oldest });
        } else if since > bounds.last {
            // A subscriber "ahead" of the log would silently drop live events up to `since`.
            return Err(EventsError::AheadOfLog { since, last: bounds.last });
        } else {
            since
        };
        let kinds = kinds.into_iter().collect::<BTreeSet<_>>();
        Ok(Subscription {
            store: Arc::clone(&self.store),
            live,
            last,
            kinds,
            backlog: VecDeque::new(),
            catching_up: true,
            from_oldest: since == 0,
        })
    }

    /// Follows the log from now on: the events committed after the newest one at the time of
    /// the call (nothing is replayed), keeping only `kinds` (empty = all).
    pub async fn subscribe_from_now(&self, kinds: Vec<String>) -> Result<Subscription, EventsError> {
        // Subscribe before reading the bounds: what commits meanwhile is read from the database.
        let live = self.store.hub().subscribe();
        let last = self.store.bounds().await?.last;
        Ok(Subscription {
            store: Arc::clone(&self.store),
            live,
            last,
            kinds: kinds.into_iter().collect(),
            backlog: VecDeque::new(),
            catching_up: true,
            from_oldest: false,
        })
    }
}

/// A follower of the log: every event after its starting point, once, in order.
#[derive(Debug)]
pub struct Subscription {
    store: Arc<dyn EventStore>,
    live: broadcast::Receiver<Arc<Event>>,
    /// The highest sequence seen (delivered or filtered out).
    last: u64,
    kinds: BTreeSet<String>,
    backlog: VecDeque<Arc<Event>>,
    /// Reading from the database until it has nothing newer.
    catching_up: bool,
    /// Asked for "everything retained" and nothing read yet: pruning meanwhile only moves the
    /// start.
    from_oldest: bool,
}

impl Subscription {
    /// The next event, waiting for one if needed.
    pub async fn next(&mut self) -> Result<Arc<Event>, EventsError> {
        loop {
            if let Some(event) = self.step(true).await? {
                return Ok(event);
            }
        }
    }

    /// The next event if one is available without waiting for a new commit (it may read the
    /// database), else `None`.
    pub async fn next_ready(&mut self) -> Result<Option<Arc<Event>>, EventsError> {
        loop {
            if !self.backlog.is_empty() || self.catching_up {
                if let Some(event) = self.step(false).await? {
                    return Ok(Some(event));
                }
                continue;
            }
            match self.live.try_recv() {
                Ok(event) => {
                    if let Some(event) = self.accept_live(event) {
                        return Ok(Some(event));
                    }
                }
                Err(broadcast::error::TryRecvError::Empty) => return Ok(None),
                Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                    tracing::debug!(
                        missed,
                        after = self.last,
                        "subscriber fell behind the live buffer; catching up from the database"
                    );
                    self.store.hub().note_lagged();
                    self.catching_up = true;
                }
                Err(broadcast::error::TryRecvError::Closed) => return Err(EventsError::Closed),
            }
        }
    }

    /// The highest sequence this subscription has passed (delivered or filtered out).
    pub fn position(&self) -> u64 {
        self.last
    }

    fn wanted(&self, event: &Event) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&event.kind)
    }

    /// One step: an event to deliver, or `None` when the step only moved state.
    async fn step(&mut self, wait: bool) -> Result<Option<Arc<Event>>, EventsError> {
        if let Some(event) = self.backlog.pop_front() {
            self.last = event.sequence;
            return Ok(self.wanted(&event).then_some(event));
        }
        if self.catching_up {
            let page = self.store.read_after(self.last, PAGE).await?;
            let from_oldest = std::mem::take(&mut self.from_oldest);
            match page.first() {
                None => self.catching_up = false,
                Some(first) if first.sequence != self.last + 1 && !from_oldest => {
                    // Pruned while this subscriber was behind.
                    return Err(EventsError::Truncated {
                        since: self.last,
                        oldest_available: first.sequence,
                    });
                }
                Some(_) => self.backlog.extend(page.into_iter().map(Arc::new)),
            }
            return Ok(None);
        }
        if !wait {
            return Ok(None);
        }
        match self.live.recv().await {
            Ok(event) => Ok(self.accept_live(event)),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::debug!(
                    missed,
                    after = self.last,
                    "subscriber fell behind the live buffer; catching up from the database"
                );
                self.store.hub().note_lagged();
                self.catching_up = true;
                Ok(None)
            }
            Err(broadcast::error::RecvError::Closed) => Err(EventsError::Closed),
        }
    }

    fn accept_live(&mut self, event: Arc<Event>) -> Option<Arc<Event>> {
        if event.sequence <= self.last {
            return None; // already delivered from the database
        }
        if event.sequence != self.last + 1 {
            // A hole: fill it (and this event) from the database.
            self.catching_up = true;
            return None;
        }
        self.last = event.sequence;
        self.wanted(&event).then_some(event)
    }
}
