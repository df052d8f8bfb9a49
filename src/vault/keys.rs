//! The node's root key, where it is kept, and the purpose keys derived from it.
//!
//! One random 32-byte root key per node, held by a [`KeyProvider`]: the OS keychain where one
//! answers ([`super::keychain`]), else a 0600 key file in a 0700 directory ([`FileKeyProvider`]).
//! [`KeyHierarchy`] derives every purpose key with HKDF-SHA256, so the root key itself never
//! encrypts anything. This module does not decide which provider a node uses; `node` (`NodeCore::open`)
//! does, and records the choice so it sticks.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ring::rand::SecureRandom;
use ring::{aead, hkdf, hmac};
use zeroize::Zeroizing;

use crate::fsutil::{self, FsError};

/// The node's 32-byte root key. Zeroized on drop, on a page of its own locked in RAM where
/// the memory-lock limit allows ([`Locked`]); `Debug` never shows it.
pub struct RootKey(Locked<Zeroizing<[u8; 32]>>);

impl RootKey {
    /// Length of the root key in bytes.
    pub const LEN: usize = 32;

    /// A fresh key from the system's CSPRNG.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = Locked::new(Zeroizing::new([0u8; 32]));
        ring::rand::SystemRandom::new().fill(bytes.get_mut().as_mut()).map_err(|_| KeyError::Random)?;
        Ok(RootKey(bytes))
    }

    /// Wraps key bytes read from a provider.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let mut key = Locked::new(Zeroizing::new([0u8; 32]));
        **key.get_mut() = bytes;
        let mut bytes = bytes;
        zeroize::Zeroize::zeroize(&mut bytes);
        RootKey(key)
    }

    /// The key bytes, for providers that store them.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.get()
    }
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RootKey([redacted])")
    }
}

/// A value on a heap page of its own, locked in RAM (`mlock`) where `RLIMIT_MEMLOCK` allows,
/// so key material is not written to swap. The page alignment keeps one value per page: an
/// unlock when one value is dropped never unlocks another's page. A refused lock (the limit
/// is spent) is counted, not an error: [`locked_pages`] reports both for the serve log.
pub struct Locked<T> {
    // Dropped before the guard: the value (zeroizing itself) goes while its page is locked.
    value: Box<PageAligned<T>>,
    _lock: Option<region::LockGuard>,
}

#[repr(align(4096))]
struct PageAligned<T>(T);

static PAGES_LOCKED: AtomicU64 = AtomicU64::new(0);
static PAGES_NOT_LOCKED: AtomicU64 = AtomicU64::new(0);

impl<T> Locked<T> {
    /// Moves `value` onto its own page and locks the page.
    pub fn new(value: T) -> Self {
        let value = Box::new(PageAligned(value));
        let lock = region::lock(&value.0 as *const T, std::mem::size_of::<T>().max(1)).ok();
        let counter = if lock.is_some() { &PAGES_LOCKED } else { &PAGES_NOT_LOCKED };
        counter.fetch_add(1, Ordering::Relaxed);
        Locked { value, _lock: lock }
    }

    /// The value.
    pub fn get(&self) -> &T {
        &self.value.0
    }

    /// The value, to fill in place.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.value.0
    }
}

impl<T> fmt::Debug for Locked<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Locked([redacted])")
    }
}

/// Key pages locked in RAM since start, and those whose lock the memory-lock limit refused.
pub fn locked_pages() -> (u64, u64) {
    (PAGES_LOCKED.load(Ordering::Relaxed), PAGES_NOT_LOCKED.load(Ordering::Relaxed))
}

/// Where a node's root key lives. Recorded in the database on first start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyBackend {
    /// `keys/root.key` in the data dir.
    File,
    /// The OS keychain (Secret Service, macOS Keychain, Windows Credential Manager).
    Keychain,
}

impl KeyBackend {
    /// The name stored in the database and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyBackend::File => "file",
            KeyBackend::Keychain => "keychain",
        }
    }

    /// Parses a stored or configured backend name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "file" => Some(KeyBackend::File),
            "keychain" => Some(KeyBackend::Keychain),
            _ => None,
        }
    }
}

impl fmt::Display for KeyBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the root key could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// No OS keychain answered.
    #[error("os keychain unavailable: {0}")]
    KeychainUnavailable(String),
    /// The stored key has the wrong shape.
    #[error("root key in {backend} is malformed: {detail}")]
    Malformed {
        /// Where it was read from.
        backend: &'static str,
        /// What is wrong with it (never the key itself).
        detail: String,
    },
    /// A key exists already where a new one was to be stored.
    #[error("a root key already exists in {0}; refusing to overwrite it")]
    AlreadyExists(String),
    /// The keychain refused an operation.
    #[error("os keychain error: {0}")]
    Keychain(String),
    /// The key file or its directory could not be used.
    #[error(transparent)]
    File(#[from] FsError),
    /// The system's random generator failed.
    #[error("the system random generator failed")]
    Random,
}

/// A place that holds the root key.
pub trait KeyProvider: Send + Sync + fmt::Debug {
    /// Which kind of place this is.
    fn backend(&self) -> KeyBackend;
    /// The stored root key, or `None` when none has been stored yet.
    fn load(&self) -> Result<Option<RootKey>, KeyError>;
    /// Stores a new root key. Never overwrites: [`KeyError::AlreadyExists`] if one is there.
    fn store(&self, key: &RootKey) -> Result<(), KeyError>;
}

/// The root key in a file (`keys/root.key`): 0600 in a 0700 directory, written atomically.
/// Refuses to read a key whose file or directory other users can access.
#[derive(Debug, Clone)]
pub struct FileKeyProvider {
    path: PathBuf,
}

impl FileKeyProvider {
    /// The provider for the key file of `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        FileKeyProvider { path: data_dir.join("keys").join("root.key") }
    }

    /// The key file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl KeyProvider for FileKeyProvider {
    fn backend(&self) -> KeyBackend {
        KeyBackend::File
    }

    fn load(&self) -> Result<Option<RootKey>, KeyError> {
        if !self.path.exists() {
            return Ok(None);
        }
        let bytes = Zeroizing::new(fsutil::read_private(&self.path)?);
        let array: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::Malformed {
            backend: "key file",
            detail: format!("{} holds {} bytes, expected {}", self.path.display(), bytes.len(), RootKey::LEN),
        })?;
        Ok(Some(RootKey::from_bytes(array)))
    }

    fn store(&self, key: &RootKey) -> Result<(), KeyError> {
        if self.path.exists() {
            return Err(KeyError::AlreadyExists(self.path.display().to_string()));
        }
        fsutil::write_private_atomic(&self.path, key.as_bytes(), false)?;
        Ok(())
    }
}

/// Salt of the root extraction; fixed so the same root key always yields the same keys.
const HKDF_SALT: &[u8] = b"palyra.root-key.v1";

/// Purpose keys derived from the root key with HKDF-SHA256.
///
/// Each purpose has its own `info` label, so no two purposes ever share a key.
pub struct KeyHierarchy {
    /// The extracted key every purpose key is expanded from, on a locked page like the root key.
    prk: Locked<hkdf::Prk>,
}

impl fmt::Debug for KeyHierarchy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHierarchy([redacted])")
    }
}

impl KeyHierarchy {
    /// Extracts the pseudo-random key from the root key.
    pub fn new(root: &RootKey) -> Self {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT);
        KeyHierarchy { prk: Locked::new(salt.extract(root.as_bytes())) }
    }

    /// The vault key-encryption key of `generation`.
    pub fn vault_kek(&self, generation: u32) -> aead::LessSafeKey {
        let generation = generation.to_be_bytes();
        self.aead_key(&[b"palyra vault kek", &generation])
    }

    /// The key that seals identity files.
    pub fn identity_store_key(&self) -> aead::LessSafeKey {
        self.aead_key(&[b"palyra identity store"])
    }

    /// The key that seals values the node keeps for itself (pairing PINs and the like).
    pub fn internal_seal_key(&self) -> aead::LessSafeKey {
        self.aead_key(&[b"palyra internal seal"])
    }

    /// The HMAC key of the audit hash chain.
    pub fn audit_chain_key(&self) -> hmac::Key {
        self.hmac_key(b"palyra audit chain")
    }

    /// The HMAC key of the row MACs (`crate::integrity`): secrets, devices, policy versions.
    pub fn row_mac_key(&self) -> hmac::Key {
        self.hmac_key(b"palyra row mac")
    }

    /// The HMAC key that seals the audit chain head kept outside the audit table.
    pub fn audit_head_key(&self) -> hmac::Key {
        self.hmac_key(b"palyra audit head")
    }

    /// The key of one backup's body: its own per backup, from the backup's random id, so
    /// chunk nonces (the chunk index) never repeat under a key.
    pub fn backup_key(&self, backup_id: &[u8; 16]) -> aead::LessSafeKey {
        self.aead_key(&[b"palyra backup", backup_id])
    }

    /// The HMAC key that ties a recovery kit's seal (`keys/recovery.sealed`) to this root key,
    /// so a backup never carries a kit that opens another node's key.
    pub fn recovery_kit_key(&self) -> hmac::Key {
        self.hmac_key(b"palyra recovery kit")
    }

    #[allow(clippy::expect_used, reason = "the output length is fixed and valid for HKDF")]
    fn hmac_key(&self, info: &[u8]) -> hmac::Key {
        let info = [info];
        let okm = self
            .prk
            .get()
            .expand(&info, hmac::HMAC_SHA256)
            // Invariant: expand only fails when the output is longer than 255 hash blocks;
            // an HMAC-SHA256 key is one block.
            .expect("hkdf output length is fixed and valid");
        hmac::Key::from(okm)
    }

    #[allow(clippy::expect_used, reason = "the output length is fixed and valid for HKDF")]
    fn aead_key(&self, info: &[&[u8]]) -> aead::LessSafeKey {
        let okm = self
            .prk
            .get()
            .expand(info, &aead::CHACHA20_POLY1305)
            // Invariant: 32 bytes is far below HKDF-SHA256's 8160-byte limit.
            .expect("hkdf output length is fixed and valid");
        aead::LessSafeKey::new(aead::UnboundKey::from(okm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The root key and the hierarchy's PRK sit on locked pages of their own, when the
    /// memory-lock limit has room for two pages (as root, or the usual 8 MiB default).
    #[cfg(target_os = "linux")]
    #[test]
    fn key_pages_are_locked_in_ram_when_the_limit_allows() {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Memlock).current;
        if limit.is_some_and(|bytes| bytes < 64 * 1024) {
            eprintln!("RLIMIT_MEMLOCK is {limit:?}: too small to check");
            return;
        }
        let (locked_before, _) = locked_pages();
        let key = RootKey::from_bytes([7; 32]);
        let hierarchy = KeyHierarchy::new(&key);
        let (locked_after, _) = locked_pages();
        assert!(locked_after >= locked_before + 2, "{locked_before} -> {locked_after}");
        // Other tests only add locked pages while this one holds its two.
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let vm_lck_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmLck:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        eprintln!("VmLck with a root key and a hierarchy alive: {vm_lck_kb} kB");
        assert!(vm_lck_kb >= 8, "VmLck {vm_lck_kb} kB");
        // The pinned copies derive what unpinned bytes would.
        let expected = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(&[7; 32]);
        let tag = |prk: &hkdf::Prk| {
            let okm = prk.expand(&[b"probe"], hmac::HMAC_SHA256).map(hmac::Key::from);
            okm.map(|k| hmac::sign(&k, b"x").as_ref().to_vec()).unwrap_or_default()
        };
        assert_eq!(tag(hierarchy.prk.get()), tag(&expected));
        assert_eq!(key.as_bytes(), &[7; 32]);
    }

    #[test]
    fn debug_never_shows_key_material() -> Result<(), KeyError> {
        let key = RootKey::from_bytes([0xAB; 32]);
        let shown = format!("{key:?} {:?}", KeyHierarchy::new(&key));
        assert!(!shown.to_lowercase().contains("ab, ab") && !shown.contains("171"), "{shown}");
        assert!(shown.contains("redacted"));
        Ok(())
    }

    #[test]
    fn file_provider_round_trip_and_never_overwrites() -> Result<(), KeyError> {
        let dir = tempfile::tempdir().map_err(|e| KeyError::Keychain(e.to_string()))?;
        let provider = FileKeyProvider::new(dir.path());
        assert!(provider.load()?.is_none());
        let key = RootKey::generate()?;
        provider.store(&key)?;
        let loaded = provider.load()?.ok_or(KeyError::Random)?;
        assert_eq!(loaded.as_bytes(), key.as_bytes());
        assert!(matches!(provider.store(&RootKey::generate()?), Err(KeyError::AlreadyExists(_))));
        assert_eq!(provider.load()?.ok_or(KeyError::Random)?.as_bytes(), key.as_bytes());
        Ok(())
    }

    #[test]
    fn file_provider_rejects_truncated_key() -> Result<(), KeyError> {
        let dir = tempfile::tempdir().map_err(|e| KeyError::Keychain(e.to_string()))?;
        let provider = FileKeyProvider::new(dir.path());
        fsutil::write_private_atomic(provider.path(), &[1, 2, 3], false)?;
        let err = provider.load().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("holds 3 bytes"), "{err}");
        Ok(())
    }

    #[test]
    fn purpose_keys_differ_per_generation_and_purpose() {
        let h = KeyHierarchy::new(&RootKey::from_bytes([7; 32]));
        let nonce = [0u8; 12];
        let seal = |key: &aead::LessSafeKey| {
            let mut buf = b"probe".to_vec();
            let _ = key.seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::empty(),
                &mut buf,
            );
            buf
        };
        let outputs = [
            seal(&h.vault_kek(1)),
            seal(&h.vault_kek(2)),
            seal(&h.identity_store_key()),
            seal(&h.internal_seal_key()),
            seal(&h.backup_key(&[0; 16])),
            seal(&h.backup_key(&[1; 16])),
        ];
        for i in 0..outputs.len() {
            for j in i + 1..outputs.len() {
                assert_ne!(outputs[i], outputs[j]);
            }
        }
        // Deterministic: the same root gives the same keys after a restart.
        let again = KeyHierarchy::new(&RootKey::from_bytes([7; 32]));
        assert_eq!(seal(&again.vault_kek(1)), outputs[0]);
    }
}
