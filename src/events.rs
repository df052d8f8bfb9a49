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
//! This module knows no SQL and no transport; events never carry a secret value, PIN or key.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use crate::storage::{StorageError, Store};

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
/// Events read from the database per catch-up query.
const PAGE: usize = 1024;

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
    Storage(#[from] StorageError),
}

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
    store: Store,
    retention: Retention,
}

impl EventLog {
    /// The log of `store` with the default retention.
    pub fn new(store: Store) -> Self {
        EventLog { store, retention: Retention::default() }
    }

    /// The same log with another retention.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Appends one event in its own transaction (for callers that have no change of their own
    /// to commit with it, e.g. tools and benchmarks; changes append inside their write).
    pub async fn append(&self, event: NewEvent) -> Result<Event, StorageError> {
        self.store.append_event(event, SystemTime::now()).await
    }

    /// The highest sequence assigned so far (0 before the first event).
    pub async fn last_sequence(&self) -> Result<u64, StorageError> {
        Ok(self.store.event_bounds().await?.last)
    }

    /// Removes events beyond the retention; returns how many.
    pub async fn prune(&self) -> Result<u64, StorageError> {
        self.store.prune_events(self.retention.max_events, self.retention.max_age, SystemTime::now()).await
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

    /// Follows the log from after `since` (0 = everything retained), keeping only `kinds`
    /// (empty = all). [`EventsError::Truncated`] when `since` has already been pruned.
    pub async fn subscribe(&self, since: u64, kinds: Vec<String>) -> Result<Subscription, EventsError> {
        // Subscribe before reading the database: whatever commits meanwhile is in one or both.
        let live = self.store.event_hub().subscribe();
        let bounds = self.store.event_bounds().await?;
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
            store: self.store.clone(),
            live,
            last,
            kinds,
            backlog: VecDeque::new(),
            catching_up: true,
            from_oldest: since == 0,
        })
    }
}

/// A follower of the log: every event after its starting point, once, in order.
#[derive(Debug)]
pub struct Subscription {
    store: Store,
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
            let page = self.store.events_after(self.last, PAGE).await?;
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
