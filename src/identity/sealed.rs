//! Where identity secrets live: a small named store of sealed byte strings.
//!
//! [`FilesystemSecretStore`] keeps one file per entry in a private (0700) directory, each
//! file 0600, written atomically, and sealed with ChaCha20-Poly1305 under the identity-store
//! key ([`crate::vault::KeyHierarchy::identity_store_key`]). The entry's name is in the AAD, so
//! a file copied or renamed to another name fails to open, as does any flipped byte: the
//! caller gets [`IdentityError::Integrity`], never wrong plaintext. [`InMemorySecretStore`] is
//! for tests and for tools that hold nothing on disk.
//!
//! This module does not know what the entries mean (the node identity, the CA, the server
//! key: see [`super::node`]) and does not derive or hold the root key.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ring::aead::{Aad, LessSafeKey, NONCE_LEN, Nonce};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::IdentityError;
use crate::fsutil::{self, FsError};

/// A named store of secret byte strings.
///
/// Names follow `[a-z0-9][a-z0-9._-]{0,63}` (see [`validate_name`]).
pub trait SecretStore: Send + Sync + fmt::Debug {
    /// The bytes stored under `name`, or `None` if there are none.
    fn get(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>, IdentityError>;
    /// Stores `bytes` under `name`, replacing what was there (atomically).
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), IdentityError>;
    /// Stores `bytes` under a new `name`; [`IdentityError::AlreadyExists`] if it exists (also
    /// when another process created it concurrently).
    fn create(&self, name: &str, bytes: &[u8]) -> Result<(), IdentityError>;
    /// Removes `name`; `false` if it was not there.
    fn delete(&self, name: &str) -> Result<bool, IdentityError>;
}

/// Longest entry name.
const MAX_NAME_LEN: usize = 64;

/// Checks an entry name against `[a-z0-9][a-z0-9._-]{0,63}`. Names never start with a dot,
/// so they cannot collide with the store's temporary files.
pub fn validate_name(name: &str) -> Result<(), IdentityError> {
    let bytes = name.as_bytes();
    let valid = matches!(bytes.first(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && bytes.len() <= MAX_NAME_LEN
        && bytes.iter().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        let shown: String = name.chars().take(MAX_NAME_LEN + 1).collect();
        Err(IdentityError::InvalidArgument(format!(
            "invalid identity store name {shown:?}: use 1 to 64 of a-z 0-9 . _ - starting with a letter or digit"
        )))
    }
}

/// Entries in memory. Values are zeroized when replaced, deleted or dropped.
#[derive(Default)]
#[cfg_attr(not(feature = "testkit"), allow(dead_code))]
pub struct InMemorySecretStore {
    entries: Mutex<BTreeMap<String, Zeroizing<Vec<u8>>>>,
}

impl InMemorySecretStore {
    /// An empty store.
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
    pub fn new() -> Self {
        Self::default()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Zeroizing<Vec<u8>>>> {
        // A panic while holding the lock cannot leave a half-written entry (each operation is
        // one map call), so a poisoned map is still consistent.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl fmt::Debug for InMemorySecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.entries().keys().cloned().collect();
        f.debug_struct("InMemorySecretStore").field("names", &names).finish()
    }
}

impl SecretStore for InMemorySecretStore {
    fn get(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>, IdentityError> {
        validate_name(name)?;
        Ok(self.entries().get(name).cloned())
    }

    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), IdentityError> {
        validate_name(name)?;
        self.entries().insert(name.to_owned(), Zeroizing::new(bytes.to_vec()));
        Ok(())
    }

    fn create(&self, name: &str, bytes: &[u8]) -> Result<(), IdentityError> {
        validate_name(name)?;
        let mut entries = self.entries();
        if entries.contains_key(name) {
            return Err(IdentityError::AlreadyExists(format!("identity store entry {name}")));
        }
        entries.insert(name.to_owned(), Zeroizing::new(bytes.to_vec()));
        Ok(())
    }

    fn delete(&self, name: &str) -> Result<bool, IdentityError> {
        validate_name(name)?;
        Ok(self.entries().remove(name).is_some())
    }
}

/// First byte of every sealed file.
const FORMAT_V1: u8 = 1;
/// Start of every file's AAD; the entry name follows.
const AAD_PREFIX: &[u8] = b"palyra.identity-store.v1";
/// Format byte, nonce, Poly1305 tag.
const OVERHEAD: usize = 1 + NONCE_LEN + 16;

/// Sealed entries as files in a private directory (the data dir's `identity/`).
pub struct FilesystemSecretStore {
    dir: PathBuf,
    key: LessSafeKey,
    rng: SystemRandom,
}

impl fmt::Debug for FilesystemSecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilesystemSecretStore").field("dir", &self.dir).field("key", &"[redacted]").finish()
    }
}

impl FilesystemSecretStore {
    /// Opens the store in `dir`, creating it (0700) if missing.
    ///
    /// Refuses a directory, or any entry in it, that other users can access: the error names
    /// the path and the `chmod` that fixes it. `key` is the identity-store key.
    pub fn open(dir: &Path, key: LessSafeKey) -> Result<Self, IdentityError> {
        fsutil::ensure_private_dir(dir)?;
        let entries = fs::read_dir(dir).map_err(|e| io_error("read directory", dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| io_error("read directory", dir, e))?.path();
            let is_dir = fs::symlink_metadata(&path).map_err(|e| io_error("stat", &path, e))?.is_dir();
            fsutil::check_private(&path, if is_dir { fsutil::DIR_MODE } else { fsutil::FILE_MODE })?;
        }
        Ok(FilesystemSecretStore { dir: dir.to_path_buf(), key, rng: SystemRandom::new() })
    }

    /// The store's directory.
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> Result<PathBuf, IdentityError> {
        validate_name(name)?;
        Ok(self.dir.join(name))
    }

    fn seal(&self, name: &str, plaintext: &[u8]) -> Result<Vec<u8>, IdentityError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| IdentityError::Random)?;
        // Sealed in place: the buffer holds plaintext until then, so zeroize it on every path.
        let mut body = Zeroizing::new(plaintext.to_vec());
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad(name)), &mut *body)
            .map_err(|_| {
                IdentityError::InvalidArgument(format!("identity store entry {name} is too large"))
            })?;
        Ok([&[FORMAT_V1][..], &nonce, &body].concat())
    }

    fn open_sealed(&self, name: &str, file: &[u8]) -> Result<Zeroizing<Vec<u8>>, IdentityError> {
        let integrity = || IdentityError::Integrity { name: self.dir.join(name).display().to_string() };
        if file.len() < OVERHEAD || file[0] != FORMAT_V1 {
            return Err(integrity());
        }
        let nonce = Nonce::try_assume_unique_for_key(&file[1..1 + NONCE_LEN]).map_err(|_| integrity())?;
        let mut buffer = Zeroizing::new(file[1 + NONCE_LEN..].to_vec());
        let plaintext_len =
            self.key.open_in_place(nonce, Aad::from(aad(name)), &mut buffer).map_err(|_| integrity())?.len();
        buffer.truncate(plaintext_len);
        Ok(buffer)
    }

    fn write(&self, name: &str, bytes: &[u8], overwrite: bool) -> Result<(), IdentityError> {
        let path = self.path(name)?;
        let sealed = self.seal(name, bytes)?;
        match fsutil::write_private_atomic(&path, &sealed, overwrite) {
            Err(FsError::Io { source, .. })
                if !overwrite && source.kind() == io::ErrorKind::AlreadyExists =>
            {
                Err(IdentityError::AlreadyExists(path.display().to_string()))
            }
            other => Ok(other?),
        }
    }
}

fn aad(name: &str) -> Vec<u8> {
    [AAD_PREFIX, name.as_bytes()].concat()
}

fn io_error(op: &'static str, path: &Path, source: io::Error) -> IdentityError {
    IdentityError::Fs(FsError::Io { op, path: path.to_path_buf(), source })
}

impl SecretStore for FilesystemSecretStore {
    fn get(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>, IdentityError> {
        let path = self.path(name)?;
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("stat", &path, e)),
            Ok(_) => {}
        }
        let file = fsutil::read_private(&path)?;
        self.open_sealed(name, &file).map(Some)
    }

    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), IdentityError> {
        self.write(name, bytes, true)
    }

    fn create(&self, name: &str, bytes: &[u8]) -> Result<(), IdentityError> {
        self.write(name, bytes, false)
    }

    fn delete(&self, name: &str) -> Result<bool, IdentityError> {
        let path = self.path(name)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error("remove", &path, e)),
            Ok(()) => {
                fsutil::sync_dir(&self.dir)?;
                Ok(true)
            }
        }
    }
}

#[cfg(all(test, unix))]
#[allow(clippy::expect_used, reason = "test setup fails loudly")]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::vault::{KeyHierarchy, RootKey};

    fn key(byte: u8) -> LessSafeKey {
        KeyHierarchy::new(&RootKey::from_bytes([byte; 32])).identity_store_key()
    }

    /// A private temporary directory (tempfile may create 0755 ones here) and the store's
    /// directory inside it.
    fn private_tempdir() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
        let dir = tmp.path().join("identity");
        (tmp, dir)
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn names_follow_the_grammar() {
        for good in ["a", "ca.key", "server.pem", "0-x_y", &"a".repeat(64)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "A", "a/b", "../x", "a b", "-x", &"a".repeat(65), "é"] {
            assert!(matches!(validate_name(bad), Err(IdentityError::InvalidArgument(_))), "{bad}");
        }
    }

    #[test]
    fn in_memory_store_semantics() -> Result<(), IdentityError> {
        let store = InMemorySecretStore::new();
        assert!(store.get("x")?.is_none());
        store.create("x", b"1")?;
        assert!(matches!(store.create("x", b"2"), Err(IdentityError::AlreadyExists(_))));
        store.put("x", b"3")?;
        assert_eq!(store.get("x")?.as_deref().map(Vec::as_slice), Some(&b"3"[..]));
        assert!(store.delete("x")?);
        assert!(!store.delete("x")?);
        assert!(store.put("../x", b"").is_err());
        assert!(!format!("{store:?}").contains('3'));
        Ok(())
    }

    #[test]
    fn filesystem_round_trip_modes_and_no_plaintext_on_disk() -> Result<(), IdentityError> {
        let (_tmp, dir) = private_tempdir();
        let store = FilesystemSecretStore::open(&dir, key(1))?;
        assert_eq!(fs::metadata(&dir).map(|m| m.permissions().mode() & 0o777).ok(), Some(0o700));
        assert!(store.get("device.identity")?.is_none());
        let secret = b"very secret identity bytes";
        store.create("device.identity", secret)?;
        let path = dir.join("device.identity");
        assert_eq!(fs::metadata(&path).map(|m| m.permissions().mode() & 0o777).ok(), Some(0o600));
        let raw = fs::read(&path).expect("read");
        assert_eq!(raw.len(), secret.len() + OVERHEAD);
        assert!(!raw.windows(6).any(|w| w == b"secret"));
        assert_eq!(store.get("device.identity")?.as_deref().map(Vec::as_slice), Some(&secret[..]));

        assert!(matches!(store.create("device.identity", b"other"), Err(IdentityError::AlreadyExists(_))));
        store.put("device.identity", b"replaced")?;
        // A reopened store (a restart) reads what was written.
        let again = FilesystemSecretStore::open(&dir, key(1))?;
        assert_eq!(again.get("device.identity")?.as_deref().map(Vec::as_slice), Some(&b"replaced"[..]));
        assert!(again.delete("device.identity")?);
        assert!(!again.delete("device.identity")?);
        assert!(again.get("device.identity")?.is_none());
        let leftovers: Vec<_> = fs::read_dir(&dir).expect("read dir").filter_map(Result::ok).collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        Ok(())
    }

    #[test]
    fn every_flipped_byte_is_an_integrity_error() -> Result<(), IdentityError> {
        let (_tmp, dir) = private_tempdir();
        let store = FilesystemSecretStore::open(&dir, key(1))?;
        let identity = super::super::DeviceIdentity::generate()?;
        store.create("device.identity", &identity.to_bytes())?;
        let path = dir.join("device.identity");
        let original = fs::read(&path).expect("read");
        for i in 0..original.len() {
            for flip in [0x01u8, 0x80] {
                let mut tampered = original.clone();
                tampered[i] ^= flip;
                fs::write(&path, &tampered).expect("write");
                match store.get("device.identity") {
                    Err(IdentityError::Integrity { name }) => assert!(name.ends_with("device.identity")),
                    other => panic!("byte {i} flipped with {flip:#x}: {other:?}"),
                }
            }
        }
        // Truncated and extended files too.
        for tampered in [&original[..original.len() - 1], &original[..OVERHEAD - 1], &[][..]] {
            fs::write(&path, tampered).expect("write");
            assert!(matches!(store.get("device.identity"), Err(IdentityError::Integrity { .. })));
        }
        fs::write(&path, [&original[..], b"x"].concat()).expect("write");
        assert!(matches!(store.get("device.identity"), Err(IdentityError::Integrity { .. })));
        fs::write(&path, &original).expect("write");
        assert_eq!(
            store.get("device.identity")?.as_deref().map(Vec::as_slice),
            Some(&identity.to_bytes()[..])
        );
        Ok(())
    }

    #[test]
    fn a_renamed_file_or_another_key_is_an_integrity_error() -> Result<(), IdentityError> {
        let (_tmp, dir) = private_tempdir();
        let store = FilesystemSecretStore::open(&dir, key(1))?;
        store.create("ca.key", b"the ca key")?;
        store.create("server.pem", b"the server key")?;
        // The server key's file replaced by the CA key's: both are valid ciphertexts under the
        // same key, only the name in the AAD tells them apart.
        fs::rename(dir.join("ca.key"), dir.join("server.pem")).expect("rename");
        let err = store.get("server.pem").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("server.pem failed its integrity check"), "{err}");

        store.put("ca.key", b"the ca key")?;
        let other = FilesystemSecretStore::open(&dir, key(2))?;
        assert!(matches!(other.get("ca.key"), Err(IdentityError::Integrity { .. })));
        Ok(())
    }

    #[test]
    fn loose_permissions_are_refused_with_the_chmod_fix() -> Result<(), IdentityError> {
        let (_tmp, dir) = private_tempdir();
        let store = FilesystemSecretStore::open(&dir, key(1))?;
        store.create("ca.key", b"k")?;
        let file = dir.join("ca.key");

        chmod(&file, 0o644);
        let err = FilesystemSecretStore::open(&dir, key(1)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(&format!("chmod 600 {}", file.display())), "{err}");
        let err = store.get("ca.key").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("chmod 600"), "{err}");
        chmod(&file, 0o600);

        chmod(&dir, 0o750);
        let err = FilesystemSecretStore::open(&dir, key(1)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(&format!("chmod 700 {}", dir.display())), "{err}");
        assert!(matches!(store.get("ca.key"), Err(IdentityError::Fs(FsError::LoosePermissions { .. }))));
        chmod(&dir, 0o700);

        // A stray sub-directory that others can enter is refused too.
        let sub = dir.join("stray");
        fs::create_dir(&sub).expect("mkdir");
        chmod(&sub, 0o755);
        let err = FilesystemSecretStore::open(&dir, key(1)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("chmod 700"), "{err}");
        chmod(&sub, 0o700);
        FilesystemSecretStore::open(&dir, key(1))?;
        Ok(())
    }
}
