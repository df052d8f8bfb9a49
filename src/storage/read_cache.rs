//! [`ReadCache`]: the sealed rows of recent point reads of secrets, kept briefly so that a hot
//! GetSecret skips SQLite and the row MAC.
//!
//! What it holds is what a read returned after every check passed (the row's MAC, no rollback,
//! the version's envelope): metadata and the *sealed* envelope, never a value; every hit is
//! still opened (AEAD, AAD bound to scope, key and version) by the vault. An entry serves only
//!
//! - in the [`Store::data_epoch`](super::Store::data_epoch) it was read in: any write batch
//!   that could change a table (a put, a delete, a rotation's rewrap, anything through
//!   `Store::write`) ends the epoch before the write is acknowledged, so a reader never gets
//!   a row older than a write it could know of;
//! - for at most its lifetime ([`VaultConfig::read_cache`](crate::vault::VaultConfig::read_cache), `read_cache_ms` in
//!   `palyra.toml`, default 1 s): a row
//!   edited behind the node's back (someone with the database file but not the root key) is
//!   found at the first read after that, as without a cache; until then the node answers with
//!   the row it last verified, never with the edited one. 0 turns the cache off.
//!
//! Bounded in entries and bytes; past a bound it drops what no longer serves, then everything.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::vault::{Scope, SecretKey, StoredVersion};

/// Entries kept at most.
const MAX_ENTRIES: usize = 4096;
/// Envelope bytes kept at most (about 8 MiB).
const MAX_BYTES: usize = 8 << 20;
/// Envelopes larger than this are not kept (one large secret must not push out the rest).
const MAX_ENTRY_BYTES: usize = 64 << 10;

/// What a read asked for: the scope, the key and the version (`None`: the latest).
pub(crate) type ReadKey = (Scope, SecretKey, Option<u64>);

struct Entry {
    epoch: u64,
    read_at: Instant,
    stored: StoredVersion,
}

#[derive(Default)]
struct Entries {
    map: HashMap<ReadKey, Entry>,
    bytes: usize,
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
    pub(crate) fn enabled(&self) -> bool {
        !self.lifetime.is_zero()
    }

    /// The row `key` read in `epoch`, if it was read in that epoch less than a lifetime ago.
    pub(crate) fn get(&self, key: &ReadKey, epoch: u64) -> Option<StoredVersion> {
        if !self.enabled() {
            return None;
        }
        let entries = self.entries.read().ok()?;
        let entry = entries.map.get(key)?;
        (entry.epoch == epoch && entry.read_at.elapsed() < self.lifetime).then(|| entry.stored.clone())
    }

    /// Keeps `stored`, read (and checked) by a read transaction that began in `epoch`; `now`
    /// is the current epoch (an older read is not kept: it may predate a write).
    pub(crate) fn put(&self, key: ReadKey, stored: &StoredVersion, epoch: u64, now: u64) {
        let size = stored.envelope.len();
        if !self.enabled() || epoch != now || size > MAX_ENTRY_BYTES {
            return;
        }
        let Ok(mut entries) = self.entries.write() else { return };
        if let Some(old) = entries.map.remove(&key) {
            entries.bytes -= old.stored.envelope.len();
        }
        if entries.map.len() >= MAX_ENTRIES || entries.bytes + size > MAX_BYTES {
            let lifetime = self.lifetime;
            entries.map.retain(|_, e| e.epoch == now && e.read_at.elapsed() < lifetime);
            entries.bytes = entries.map.values().map(|e| e.stored.envelope.len()).sum();
            if entries.map.len() >= MAX_ENTRIES || entries.bytes + size > MAX_BYTES {
                entries.map.clear();
                entries.bytes = 0;
            }
        }
        entries.bytes += size;
        entries.map.insert(key, Entry { epoch, read_at: Instant::now(), stored: stored.clone() });
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

    fn stored(k: &str, envelope_len: usize) -> StoredVersion {
        let (scope, key, _) = key(k);
        StoredVersion {
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
        }
    }

    #[test]
    fn an_entry_serves_only_in_its_epoch_and_for_its_lifetime() {
        let cache = ReadCache::new(Duration::from_millis(200));
        cache.put(key("a"), &stored("a", 10), 3, 3);
        assert_eq!(cache.get(&key("a"), 3).unwrap().envelope, vec![7; 10]);
        assert!(cache.get(&key("b"), 3).is_none());
        // A write ended the epoch.
        assert!(cache.get(&key("a"), 4).is_none());
        // A read that began before a write is not kept.
        cache.put(key("b"), &stored("b", 10), 3, 4);
        assert!(cache.get(&key("b"), 4).is_none() && cache.get(&key("b"), 3).is_none());
        // Past its lifetime.
        cache.put(key("c"), &stored("c", 10), 4, 4);
        assert!(cache.get(&key("c"), 4).is_some());
        std::thread::sleep(Duration::from_millis(250));
        assert!(cache.get(&key("c"), 4).is_none());
    }

    #[test]
    fn a_zero_lifetime_keeps_nothing() {
        let cache = ReadCache::new(Duration::ZERO);
        cache.put(key("a"), &stored("a", 10), 0, 0);
        assert!(cache.get(&key("a"), 0).is_none());
        assert_eq!(cache.entries.read().unwrap().map.len(), 0);
    }

    #[test]
    fn it_is_bounded_in_entries_and_bytes() {
        let cache = ReadCache::new(Duration::from_secs(30));
        for i in 0..MAX_ENTRIES + 10 {
            cache.put(key(&format!("k{i}")), &stored("a", 10), 1, 1);
            assert!(cache.entries.read().unwrap().map.len() <= MAX_ENTRIES);
        }
        // Too large to keep at all.
        cache.put(key("big"), &stored("big", MAX_ENTRY_BYTES + 1), 1, 1);
        assert!(cache.get(&key("big"), 1).is_none());
        for i in 0..(MAX_BYTES / MAX_ENTRY_BYTES) + 4 {
            cache.put(key(&format!("b{i}")), &stored("b", MAX_ENTRY_BYTES), 1, 1);
            let entries = cache.entries.read().unwrap();
            assert!(entries.bytes <= MAX_BYTES);
            assert_eq!(entries.bytes, entries.map.values().map(|e| e.stored.envelope.len()).sum::<usize>());
        }
        // Entries of an ended epoch go first.
        cache.put(key("new"), &stored("new", 10), 2, 2);
        assert!(cache.get(&key("new"), 2).is_some());
    }
}
