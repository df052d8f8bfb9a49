//! [`Watch`]: the changes of a scope's secrets, read from the event log. A [`Subscription`] of
//! the vault's event kinds (replay after a sequence, then live, no gap and no repeat) is turned
//! into [`SecretChange`]s of one scope (and its sub-scopes when recursive); every change also
//! passes the caller's `visible` check, so a caller can leave out scopes it may not see. Values
//! never enter: the events carry scope, key and version only.
//!
//! Optionally the watch reports [`Watched::Progress`]: the position the log has reached when
//! events the caller does not get have passed, so that a client's resume point keeps up with
//! the log (and stays within retention) while its own scopes are quiet.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{Scope, SecretKey};
use crate::events::{
    Event, EventLog, EventsError, Subscription, VAULT_SECRET_DELETED, VAULT_SECRET_DESTROYED,
    VAULT_SECRET_WRITTEN,
};

/// The least time between two progress reports of one watch.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// What happened to a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A new version was written.
    Put,
    /// The secret was soft-deleted.
    Delete,
    /// Every version was destroyed.
    Destroy,
}

/// One change of a secret: metadata only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretChange {
    /// The secret's scope.
    pub scope: Scope,
    /// The secret's key.
    pub key: SecretKey,
    /// The version written (put), or the latest version (delete, destroy).
    pub version: u64,
    /// What happened.
    pub kind: ChangeKind,
    /// The event's sequence in the node's log.
    pub sequence: u64,
    /// When the change was committed.
    pub at: SystemTime,
}

impl SecretChange {
    /// The change an event records, if it is a vault secret event with well-formed attributes.
    pub fn from_event(event: &Event) -> Option<SecretChange> {
        let kind = match event.kind.as_str() {
            VAULT_SECRET_WRITTEN => ChangeKind::Put,
            VAULT_SECRET_DELETED => ChangeKind::Delete,
            VAULT_SECRET_DESTROYED => ChangeKind::Destroy,
            _ => return None,
        };
        let attribute = |name: &str| event.attributes.get(name).map(String::as_str);
        Some(SecretChange {
            scope: Scope::parse(attribute("scope")?).ok()?,
            key: SecretKey::parse(attribute("key")?).ok()?,
            version: attribute("version")?.parse().ok()?,
            kind,
            sequence: event.sequence,
            at: event.at,
        })
    }
}

/// What a watch yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    /// A change the caller may see.
    Change(SecretChange),
    /// Nothing the caller may see changed up to and including this sequence.
    Progress(u64),
}

/// A follower of one scope's secret changes.
#[derive(Debug)]
pub struct Watch {
    subscription: Subscription,
    scope: Scope,
    recursive: bool,
    /// Progress reports: their interval, the sequence last reported (by a change or a report)
    /// and when, and whether the first report (where the watch starts) is still to be made.
    progress: Option<Progress>,
}

#[derive(Debug)]
struct Progress {
    reported: u64,
    at: Instant,
    initial: bool,
}

impl Watch {
    /// Watches `scope` (with its sub-scopes when `recursive`) from after event `since`; `since`
    /// 0 means from now on. [`EventsError::Truncated`] when `since` has been pruned,
    /// [`EventsError::AheadOfLog`] when it was never assigned. With `progress`, the first item
    /// is [`Watched::Progress`] with the position the watch starts after, and later reports
    /// follow events that pass unseen, at most one per [`PROGRESS_INTERVAL`].
    pub async fn start(
        events: &EventLog,
        scope: Scope,
        recursive: bool,
        since: u64,
        progress: bool,
    ) -> Result<Watch, EventsError> {
        let kinds = [VAULT_SECRET_WRITTEN, VAULT_SECRET_DELETED, VAULT_SECRET_DESTROYED]
            .map(str::to_owned)
            .to_vec();
        let subscription = if since == 0 {
            events.subscribe_from_now(kinds).await?
        } else {
            events.subscribe(since, kinds).await?
        };
        let progress = progress.then(|| Progress {
            reported: subscription.position(),
            at: Instant::now(),
            initial: true,
        });
        Ok(Watch { subscription, scope, recursive, progress })
    }

    /// Whether a change in `scope` belongs to this watch.
    pub fn covers(&self, scope: &Scope) -> bool {
        if self.recursive { scope.is_within(&self.scope) } else { *scope == self.scope }
    }

    /// The next change in the watched scopes that `visible` lets through (asked for each one;
    /// an error from it ends the call), or a progress report; waits for one. Cancel-safe: a
    /// call dropped while waiting loses nothing.
    pub async fn next<E: From<EventsError>>(
        &mut self,
        mut visible: impl FnMut(&Scope) -> Result<bool, E>,
    ) -> Result<Watched, E> {
        if let Some(progress) = self.progress.as_mut()
            && std::mem::take(&mut progress.initial)
        {
            progress.at = Instant::now();
            return Ok(Watched::Progress(progress.reported));
        }
        loop {
            let event = match self.progress_due() {
                Some(due) => {
                    tokio::select! {
                        biased;
                        () = tokio::time::sleep_until(due) => {
                            let position = self.subscription.position();
                            if let Some(progress) = self.progress.as_mut() {
                                progress.reported = position;
                                progress.at = Instant::now();
                            }
                            return Ok(Watched::Progress(position));
                        }
                        event = self.subscription.next() => event?,
                    }
                }
                None => self.subscription.next().await?,
            };
            let Some(change) = SecretChange::from_event(&event) else {
                tracing::debug!(sequence = event.sequence, kind = %event.kind, "vault event without its attributes");
                continue;
            };
            if !self.covers(&change.scope) || !visible(&change.scope)? {
                continue;
            }
            if let Some(progress) = self.progress.as_mut() {
                progress.reported = change.sequence;
                progress.at = Instant::now();
            }
            return Ok(Watched::Change(change));
        }
    }

    /// When a progress report is due: reports are on, the log has moved past the last one,
    /// and the interval has passed since.
    fn progress_due(&self) -> Option<Instant> {
        let progress = self.progress.as_ref()?;
        (self.subscription.position() > progress.reported).then(|| progress.at + PROGRESS_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn event(kind: &str, attributes: &[(&str, &str)]) -> Event {
        Event {
            sequence: 7,
            at: SystemTime::UNIX_EPOCH,
            kind: kind.to_owned(),
            subject: "a/k".to_owned(),
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn vault_events_become_changes_and_others_do_not() {
        let attributes = [("scope", "a/b"), ("key", "k"), ("version", "3")];
        let change = SecretChange::from_event(&event(VAULT_SECRET_DESTROYED, &attributes)).expect("a change");
        assert_eq!(change.kind, ChangeKind::Destroy);
        assert_eq!((change.scope.as_str(), change.key.as_str(), change.version, change.sequence), ("a/b", "k", 3, 7));
        assert!(SecretChange::from_event(&event("vault.key.rotated", &attributes)).is_none());
        assert!(SecretChange::from_event(&event(VAULT_SECRET_WRITTEN, &[("scope", "a"), ("key", "k")])).is_none());
        assert!(
            SecretChange::from_event(&event(VAULT_SECRET_WRITTEN, &[("scope", "A//"), ("key", "k"), ("version", "1")]))
                .is_none()
        );
    }
}
