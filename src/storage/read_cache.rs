//! [`ReadCache`]: the sealed rows of recent point reads of secrets, kept briefly so that a hot
//! GetSecret skips SQLite and the row MAC; and [`DataEpoch`], which tells it when a write may
//! have changed what it holds.
//!
//! What it holds is what a read returned after every check passed (the row's MAC, no rollback,
//! the version's envelope): metadata and the *sealed* envelope, never a value; every hit is
//! still opened (AEAD, AAD bound to scope, key and version) by the vault. An entry serves only
//!
//! - in the [`DataEpoch`] it was read in: the store's writer makes the epoch odd before the
//!   `COMMIT` of any batch that could change a table (a put, a delete, a rotation's rewrap,
//!   anything through `Store::write`) and even again after it, then empties every cache it can
//!   without waiting (a cache whose lock is busy is emptied by its next insert), all before the
//!   write is acknowledged or its events published. While the epoch is odd nothing is served
//!   from or kept in a cache, and an entry serves only in its own epoch, so no reader gets a row
//!   older than a write it could know of (by its acknowledgement, an event, or another read);
//! - for at most its lifetime ([`VaultConfig::read_cache`](crate::vault::VaultConfig::read_cache),
//!   `read_cache_ms` in `palyra.toml`, default 1 s): a row edited behind the node's back (someone
//!   with the database file but not the root key) is found at the first read after that, as
//!   without a cache; until then the node answers with the row it last verified, never with the
//!   edited one. 0 turns the cache off.
//!
//! Bounded in entries and bytes; when full it starts over. It never waits for its lock (a
//! contended lookup misses, a contended insert is skipped): under a mixed load, runtime threads
//! queued behind the writer's clear cost a quarter of the events delivered to QUIC peers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use crate::vault::{Scope, SecretKey, StoredVersion};

/// Entries kept at most.
const MAX_ENTRIES: usize = 4096;
/// Envelope bytes kept at most (about 8 MiB).
const MAX_BYTES: usize = 8 << 20;
/// Envelopes larger than this are not kept (one large secret must not push out the rest).
const MAX_ENTRY_BYTES: usize = 64 << 10;

/// How many write batches that could change a table have ended, times two; odd while one is
/// committing. Shared by the store and its writer thread; see the module docs.
#[derive(Default)]
pub(crate) struct DataEpoch {
    epoch: AtomicU64,
    /// The caches to empty after each change (their backends may come and go).
    caches: Mutex<Vec<Weak<ReadCache>>>,
}

impl DataEpoch {
    /// The current epoch, or `None` while a change is committing (then nothing is cached).
    pub(crate) fn current(&self) -> Option<u64> {
        let epoch = self.epoch.load(Ordering::Acquire);
        epoch.is_multiple_of(2).then_some(epoch)
    }

    /// Called by the writer before the `COMMIT` of a batch that may change a table.
    pub(crate) fn begin_change(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Called by the writer once that batch's `COMMIT` (or rollback) is over, before any of its
    /// writes is acknowledged: a new even epoch, and every cache emptied (if it can be without
    /// waiting; otherwise its next insert empties it).
    pub(crate) fn end_change(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let mut caches = self.caches.lock().unwrap_or_else(PoisonError::into_inner);
        caches.retain(|cache| match cache.upgrade() {
            Some(cache) => {
                cache.clear();
                true
            }
            None => false,
        });
    }

    /// Has `cache` emptied after every change from now on.
    pub(crate) fn register(&self, cache: &Arc<ReadCache>) {
        self.caches.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::downgrade(cache));
    }
}

/// What a read asked for: the scope, the key and the version (`None`: the latest).
pub(crate) type ReadKey = (Scope, SecretKey, Option<u64>);

struct Entry {
    read_at: Instant,
    stored: Arc<StoredVersion>,
}

#[derive(Default)]
struct Entries {
    map: HashMap<ReadKey, Entry>,
    bytes: usize,
    /// The epoch every entry was read in: a put in a later one starts over.
    epoch: u64,
}

/// Verified sealed rows of recent reads (see the module docs).
pub(crate) struct ReadCache {
    lifetime: Duration,
    entries: RwLock<Entries>,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache").field("lifetime", &self.lifetime).finish_non_exhaustive()
    }
}

impl ReadCache {
    /// A cache whose entries serve for `lifetime` (zero: never kept).
    pub(crate) fn new(lifetime: Duration) -> Self {
        ReadCache { lifetime, entries: RwLock::default() }
    }

    /// Whether it keeps anything.
    fn enabled(&self) -> bool {
        !self.lifetime.is_zero()
    }

    /// The row `key`, if it was read in the current epoch (`epoch`, from
    /// [`DataEpoch::current`]) less than a lifetime ago.
    pub(crate) fn get(&self, key: &ReadKey, epoch: u64) -> Option<Arc<StoredVersion>> {
        if !self.enabled() {
            return None;
        }
        // Never waits: a cache that blocks a runtime thread behind the writer's clear (or a
        // preempted holder) costs more than the read it saves.
        let entries = self.entries.try_read().ok()?;
        if entries.epoch != epoch {
            return None;
        }
        let entry = entries.map.get(key)?;
        (entry.read_at.elapsed() < self.lifetime).then(|| Arc::clone(&entry.stored))
    }

    /// Keeps `stored`, read (and checked) by a read transaction that began in `epoch`, if that
    /// is still the current epoch (`epochs`): an older read may predate a write.
    pub(crate) fn put(&self, key: ReadKey, stored: &Arc<StoredVersion>, epoch: u64, epochs: &DataEpoch) {
        let size = stored.envelope.len();
        if !self.enabled() || size > MAX_ENTRY_BYTES {
            return;
        }
        // Never waits (see `get`): a contended insert is skipped.
        let Ok(mut entries) = self.entries.try_write() else { return };
        // Under the lock: a change that ends after this check finds the entry of an older
        // epoch, which nothing serves.
        if epochs.current() != Some(epoch) {
            return;
        }
        if entries.epoch != epoch {
            entries.map.clear();
            entries.bytes = 0;
            entries.epoch = epoch;
        }
        if let Some(old) = entries.map.remove(&key) {
            entries.bytes -= old.stored.envelope.len();
        }
        if entries.map.len() >= MAX_ENTRIES || entries.bytes + size > MAX_BYTES {
            // Full: start over (a constant cost per fill, whatever is read).
            entries.map.clear();
            entries.bytes = 0;
        }
        entries.bytes += size;
        entries.map.insert(key, Entry { read_at: Instant::now(), stored: Arc::clone(stored) });
    }

    /// Forgets everything (after a change: see [`DataEpoch::end_change`]), unless a reader
    /// holds the lock right now: then the next insert does (the entries of an older epoch
    /// serve nothing meanwhile).
    fn clear(&self) {
        if let Ok(mut entries) = self.entries.try_write() {
            entries.map.clear();
            entries.bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::{ObjectId, SecretMetadata};
    use std::time::SystemTime;

    fn key(k: &str) -> ReadKey {
        (Scope::parse("team").unwrap(), SecretKey::parse(k).unwrap(), None)
    }

    fn stored(k: &str, envelope_len: usize) -> Arc<StoredVersion> {
        let (scope, key, _) = key(k);
        Arc::new(StoredVersion {
            metadata: SecretMetadata {
                object_id: ObjectId::new(&scope, &key),
                scope,
                key,
                version: 1,
                created_at: SystemTime::UNIX_EPOCH,
                updated_at: SystemTime::UNIX_EPOCH,
                deleted: false,
                size: 1,
            },
            version: 1,
            envelope: vec![7; envelope_len],
        })
    }

    /// An epoch at `n` changes (even).
    fn epochs_at(n: u64) -> DataEpoch {
        let epochs = DataEpoch::default();
        for _ in 0..n {
            epochs.begin_change();
            epochs.end_change();
        }
        epochs
    }

    #[test]
    fn an_entry_serves_only_in_its_epoch_and_for_its_lifetime() {
        let cache = Arc::new(ReadCache::new(Duration::from_millis(200)));
        let epochs = epochs_at(1);
        epochs.register(&cache);
        let e = epochs.current().unwrap();
        cache.put(key("a"), &stored("a", 10), e, &epochs);
        assert_eq!(cache.get(&key("a"), e).unwrap().envelope, vec![7; 10]);
        assert!(cache.get(&key("b"), e).is_none());
        // A change is committing: no epoch to serve or keep in.
        epochs.begin_change();
        assert_eq!(epochs.current(), None);
        // It ended: a new epoch, and the cache emptied.
        epochs.end_change();
        let next = epochs.current().unwrap();
        assert_ne!(next, e);
        assert!(cache.get(&key("a"), next).is_none() && cache.entries.read().unwrap().map.is_empty());
        // A read that began before the change is not kept.
        cache.put(key("b"), &stored("b", 10), e, &epochs);
        assert!(cache.entries.read().unwrap().map.is_empty());
        // Past its lifetime.
        cache.put(key("c"), &stored("c", 10), next, &epochs);
        assert!(cache.get(&key("c"), next).is_some());
        std::thread::sleep(Duration::from_millis(250));
        assert!(cache.get(&key("c"), next).is_none());
        // A dropped cache is forgotten by the epoch.
        drop(cache);
        epochs.begin_change();
        epochs.end_change();
        assert!(epochs.caches.lock().unwrap().is_empty());
    }

    #[test]
    fn a_zero_lifetime_keeps_nothing() {
        let cache = ReadCache::new(Duration::ZERO);
        let epochs = epochs_at(0);
        cache.put(key("a"), &stored("a", 10), 0, &epochs);
        assert!(cache.get(&key("a"), 0).is_none());
        assert_eq!(cache.entries.read().unwrap().map.len(), 0);
    }

    #[test]
    fn it_is_bounded_in_entries_and_bytes() {
        let cache = ReadCache::new(Duration::from_secs(30));
        let epochs = epochs_at(0);
        for i in 0..MAX_ENTRIES + 10 {
            cache.put(key(&format!("k{i}")), &stored("a", 10), 0, &epochs);
            assert!(cache.entries.read().unwrap().map.len() <= MAX_ENTRIES);
        }
        // Too large to keep at all.
        cache.put(key("big"), &stored("big", MAX_ENTRY_BYTES + 1), 0, &epochs);
        assert!(cache.get(&key("big"), 0).is_none());
        for i in 0..(MAX_BYTES / MAX_ENTRY_BYTES) + 4 {
            cache.put(key(&format!("b{i}")), &stored("b", MAX_ENTRY_BYTES), 0, &epochs);
            let entries = cache.entries.read().unwrap();
            assert!(entries.bytes <= MAX_BYTES);
            assert_eq!(entries.bytes, entries.map.values().map(|e| e.stored.envelope.len()).sum::<usize>());
        }
    }
}
