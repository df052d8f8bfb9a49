//! The OS keychain backend of the node's root key.
//!
//! [`KeychainKeyProvider`] keeps the 32-byte root key as one item in the platform keychain,
//! through the `keyring-core` crate family: the Secret Service on Linux
//! (`zbus-secret-service-keyring-store`: D-Bus to gnome-keyring, KeePassXC, …), the login
//! keychain on macOS (`apple-native-keyring-store`), the Credential Manager on Windows
//! (`windows-native-keyring-store`). Any other platform reports
//! [`KeyError::KeychainUnavailable`].
//!
//! The item is service `palyra`, user `root-key/<key_id>`. The key id is per data directory, so
//! several nodes on one machine keep separate keys. The value is the raw 32 bytes, written and
//! read through the binary secret API.
//!
//! What it does:
//! - [`KeychainKeyProvider::open`] builds its own store instance (never keyring-core's
//!   process-wide default store, so providers cannot interfere) and probes it: it reads the
//!   root-key item and, when there is none yet, writes and deletes a probe item
//!   (`probe/<key_id>`). A keychain that cannot be reached, has no usable default collection or is
//!   locked (unlocking needs a prompt that nobody answers on a headless machine) is therefore
//!   reported as [`KeyError::KeychainUnavailable`] at open time, not at the first store.
//! - Every keychain call runs on a short-lived worker thread with a time limit
//!   ([`DEFAULT_TIMEOUT`], or [`KeychainKeyProvider::open_with_timeout`]): the Secret Service
//!   waits without limit for an unlock prompt to be answered. A call that does not answer in time
//!   is reported as [`KeyError::KeychainUnavailable`] and its thread is left behind.
//! - [`KeyProvider::store`] never overwrites: it refuses when the item exists, and reads back what
//!   it wrote (a keychain that only keeps UTF-8 text would otherwise hand back a different key).
//!
//! What it does not do:
//! - It does not choose between keychain and key file, nor record the choice: the caller does.
//! - The existence check and the write are not atomic against another process writing the same
//!   item in between (the Secret Service store then replaces it); one node owns one key id.
//! - It never unlocks a keychain or asks for a password, and does not derive or rotate keys.
//! - It cannot wipe the copies that the platform libraries and the keychain daemon make (D-Bus
//!   message buffers, for example); the copies it holds itself are in [`Zeroizing`] buffers, and
//!   key material never appears in an error message or in `Debug` output.
//! - It is blocking: call it off the async runtime (`spawn_blocking`). It needs no tokio context:
//!   the Secret Service store runs its D-Bus connection on async-io, on the worker thread.

use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use keyring_core::api::CredentialStore;
use keyring_core::{Entry, Error as StoreError};
use zeroize::{Zeroize, Zeroizing};

use super::keys::{KeyBackend, KeyError, KeyProvider, RootKey};

/// Keychain service name of every palyra item.
pub const SERVICE: &str = "palyra";

/// Time limit of one keychain call (opening and probing included).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// The backend name used in [`KeyError::Malformed`].
const BACKEND: &str = "the os keychain";

/// Value written (and deleted again) by the probe of [`KeychainKeyProvider::open`].
const PROBE_VALUE: &[u8] = b"palyra keychain probe";

/// The root key in the OS keychain: service `palyra`, user `root-key/<key_id>`.
pub struct KeychainKeyProvider {
    key_id: String,
    user: String,
    store: Arc<CredentialStore>,
    timeout: Duration,
}

impl std::fmt::Debug for KeychainKeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeychainKeyProvider").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl KeychainKeyProvider {
    /// Opens the platform keychain for the root key of `key_id` and probes that it answers,
    /// with [`DEFAULT_TIMEOUT`] per call.
    ///
    /// # Errors
    /// [`KeyError::KeychainUnavailable`] with the reason when there is no usable keychain;
    /// [`KeyError::Keychain`] for an invalid key id.
    pub fn open(key_id: &str) -> Result<Self, KeyError> {
        Self::open_with_timeout(key_id, DEFAULT_TIMEOUT)
    }

    /// As [`KeychainKeyProvider::open`], with `timeout` as the time limit of every keychain call.
    ///
    /// # Errors
    /// As [`KeychainKeyProvider::open`].
    pub fn open_with_timeout(key_id: &str, timeout: Duration) -> Result<Self, KeyError> {
        validate_key_id(key_id)?;
        let user = format!("root-key/{key_id}");
        let probe_user = format!("probe/{key_id}");
        let root_user = user.clone();
        let store = on_worker(timeout, "opening the os keychain", move || {
            let store = platform_store()?;
            probe(&*store, &root_user, &probe_user)?;
            Ok(store)
        })?;
        Ok(Self { key_id: key_id.to_owned(), user, store, timeout })
    }

    /// The key id this provider was opened with.
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Deletes the root-key item (all of them, should there be several). No item is not an error.
    ///
    /// For tests, tearing a node down, and `palyra key migrate` once the key is recorded
    /// elsewhere; it destroys this copy of the key.
    ///
    /// # Errors
    /// [`KeyError::Keychain`] or [`KeyError::KeychainUnavailable`] when the keychain fails.
    pub fn delete(&self) -> Result<(), KeyError> {
        let store = Arc::clone(&self.store);
        let user = self.user.clone();
        on_worker(self.timeout, "deleting the root key", move || {
            let entry = build_entry(&*store, &user)?;
            match entry.delete_credential() {
                Ok(()) | Err(StoreError::NoEntry) => Ok(()),
                Err(StoreError::Ambiguous(entries)) => {
                    for entry in entries {
                        match entry.delete_credential() {
                            Ok(()) | Err(StoreError::NoEntry) => {}
                            Err(err) => return Err(translate(err, &user)),
                        }
                    }
                    Ok(())
                }
                Err(err) => Err(translate(err, &user)),
            }
        })
    }

    /// Where the key lives, for messages.
    fn location(&self) -> String {
        format!("{BACKEND} (service {SERVICE:?}, user {:?})", self.user)
    }
}

impl KeyProvider for KeychainKeyProvider {
    fn backend(&self) -> KeyBackend {
        KeyBackend::Keychain
    }

    fn load(&self) -> Result<Option<RootKey>, KeyError> {
        let store = Arc::clone(&self.store);
        let user = self.user.clone();
        let raw = on_worker(self.timeout, "reading the root key", move || {
            let entry = build_entry(&*store, &user)?;
            match entry.get_secret() {
                Ok(secret) => Ok(Some(Zeroizing::new(secret))),
                Err(StoreError::NoEntry) => Ok(None),
                Err(err) => Err(translate(err, &user)),
            }
        })?;
        match raw {
            Some(raw) => decode(&raw).map(Some),
            None => Ok(None),
        }
    }

    fn store(&self, key: &RootKey) -> Result<(), KeyError> {
        let secret = Zeroizing::new(*key.as_bytes());
        let store = Arc::clone(&self.store);
        let user = self.user.clone();
        let location = self.location();
        on_worker(self.timeout, "storing the root key", move || {
            let entry = build_entry(&*store, &user)?;
            match entry.get_secret() {
                Ok(existing) => {
                    drop(Zeroizing::new(existing));
                    return Err(KeyError::AlreadyExists(location));
                }
                Err(StoreError::NoEntry) => {}
                Err(
                    err @ (StoreError::Ambiguous(_)
                    | StoreError::BadEncoding(_)
                    | StoreError::BadDataFormat(..)),
                ) => {
                    drop(summary(err));
                    return Err(KeyError::AlreadyExists(location));
                }
                Err(err) => return Err(translate(err, &user)),
            }
            entry.set_secret(secret.as_slice()).map_err(|err| translate(err, &user))?;
            let stored = entry.get_secret().map(Zeroizing::new).map_err(|err| translate(err, &user))?;
            if stored.as_slice() == secret.as_slice() {
                return Ok(());
            }
            let cleanup = match entry.delete_credential() {
                Ok(()) => "the item was removed again".to_owned(),
                Err(err) => format!("removing the item failed too: {}", summary(err)),
            };
            Err(KeyError::Keychain(format!(
                "{location} returned a different value than was stored (a keychain that keeps only \
                 utf-8 text cannot hold the root key); {cleanup}"
            )))
        })
    }
}

/// The platform's store, a fresh instance (not keyring-core's default store).
#[cfg(target_os = "linux")]
fn platform_store() -> Result<Arc<CredentialStore>, KeyError> {
    let store: Arc<CredentialStore> = zbus_secret_service_keyring_store::Store::new()
        .map_err(|err| unavailable("cannot connect to the secret service", err))?;
    Ok(store)
}

#[cfg(target_os = "macos")]
fn platform_store() -> Result<Arc<CredentialStore>, KeyError> {
    let store: Arc<CredentialStore> = apple_native_keyring_store::keychain::Store::new()
        .map_err(|err| unavailable("cannot open the macos keychain", err))?;
    Ok(store)
}

#[cfg(windows)]
fn platform_store() -> Result<Arc<CredentialStore>, KeyError> {
    let store: Arc<CredentialStore> = windows_native_keyring_store::Store::new()
        .map_err(|err| unavailable("cannot open the windows credential manager", err))?;
    Ok(store)
}

#[cfg(not(any(target_os = "linux", target_os = "macos", windows)))]
fn platform_store() -> Result<Arc<CredentialStore>, KeyError> {
    Err(KeyError::KeychainUnavailable("no supported os keychain on this platform".to_owned()))
}

/// Checks that the keychain answers: the root-key item can be read, or, when there is none
/// yet, an item can be written and deleted.
fn probe(store: &CredentialStore, user: &str, probe_user: &str) -> Result<(), KeyError> {
    let entry = build_entry(store, user)?;
    match entry.get_secret() {
        Ok(secret) => {
            drop(Zeroizing::new(secret));
            return Ok(());
        }
        Err(StoreError::NoEntry) => {}
        // The keychain answered; `load` reports what is wrong with the item.
        Err(
            err @ (StoreError::Ambiguous(_) | StoreError::BadEncoding(_) | StoreError::BadDataFormat(..)),
        ) => {
            drop(summary(err));
            return Ok(());
        }
        Err(err) => return Err(unavailable("cannot read from the keychain", err)),
    }
    let probe = build_entry(store, probe_user)?;
    probe.set_secret(PROBE_VALUE).map_err(|err| unavailable("cannot write to the keychain", err))?;
    probe.delete_credential().map_err(|err| unavailable("cannot delete from the keychain", err))
}

/// Runs `f` on a fresh thread and waits at most `timeout` for its answer.
fn on_worker<T, F>(timeout: Duration, what: &'static str, f: F) -> Result<T, KeyError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, KeyError> + Send + 'static,
{
    // Capacity 1: a worker that answers after the timeout does not block, and its answer is
    // dropped (and wiped, for secrets) with the channel.
    let (tx, rx) = mpsc::sync_channel(1);
    thread::Builder::new()
        .name("palyra-keychain".to_owned())
        .spawn(move || {
            // The receiver is gone after a timeout; nothing to do then.
            let _ = tx.send(f());
        })
        .map_err(|err| KeyError::Keychain(format!("{what}: cannot start a thread: {err}")))?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(KeyError::KeychainUnavailable(format!(
            "{what}: no answer within {timeout:?} (the keychain hangs, or waits for an unlock \
             prompt that nobody answers)"
        ))),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(KeyError::Keychain(format!("{what}: the keychain call ended without an answer")))
        }
    }
}

fn build_entry(store: &CredentialStore, user: &str) -> Result<Entry, KeyError> {
    store
        .build(SERVICE, user, None)
        .map_err(|err| KeyError::Keychain(format!("cannot address keychain item {user:?}: {}", summary(err))))
}

fn validate_key_id(key_id: &str) -> Result<(), KeyError> {
    let valid = !key_id.is_empty()
        && key_id.len() <= 128
        && key_id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(KeyError::Keychain(format!(
            "invalid key id {key_id:?}: use 1 to 128 ascii letters, digits, '-', '_' or '.'"
        )))
    }
}

/// The stored value as a root key.
fn decode(raw: &[u8]) -> Result<RootKey, KeyError> {
    if raw.len() != RootKey::LEN {
        return Err(KeyError::Malformed {
            backend: BACKEND,
            detail: format!("expected {} bytes, found {}", RootKey::LEN, raw.len()),
        });
    }
    let mut bytes = Zeroizing::new([0u8; RootKey::LEN]);
    bytes.copy_from_slice(raw);
    Ok(RootKey::from_bytes(*bytes))
}

fn unavailable(what: &str, err: StoreError) -> KeyError {
    KeyError::KeychainUnavailable(format!("{what}: {}", summary(err)))
}

/// A store error of a load/store/delete call of item `user` as a [`KeyError`].
fn translate(err: StoreError, user: &str) -> KeyError {
    match err {
        StoreError::NoStorageAccess(_) => KeyError::KeychainUnavailable(summary(err)),
        StoreError::Ambiguous(ref entries) => KeyError::Malformed {
            backend: BACKEND,
            detail: format!(
                "{} items match service {SERVICE:?}, user {user:?}; remove the extra ones",
                entries.len()
            ),
        },
        StoreError::BadEncoding(_) | StoreError::BadDataFormat(..) => {
            KeyError::Malformed { backend: BACKEND, detail: summary(err) }
        }
        other => KeyError::Keychain(summary(other)),
    }
}

/// A lower-case description of a store error. Consumes the error and wipes any secret bytes it
/// carries; never includes them.
fn summary(err: StoreError) -> String {
    match err {
        StoreError::PlatformFailure(inner) => format!("platform failure: {inner}"),
        StoreError::NoStorageAccess(inner) => {
            format!("no access (locked, or an unlock prompt was dismissed): {inner}")
        }
        StoreError::NoEntry => "no such item".to_owned(),
        StoreError::BadEncoding(mut bytes) => {
            bytes.zeroize();
            "the stored value is not valid utf-8".to_owned()
        }
        StoreError::BadDataFormat(mut bytes, _) => {
            bytes.zeroize();
            "the keychain could not decode the stored value".to_owned()
        }
        StoreError::BadStoreFormat(detail) => format!("the keychain store is malformed: {detail}"),
        StoreError::TooLong(name, limit) => {
            format!("{name:?} is longer than the platform limit of {limit}")
        }
        StoreError::Invalid(name, reason) => format!("invalid {name:?}: {reason}"),
        StoreError::Ambiguous(entries) => format!("{} items match", entries.len()),
        StoreError::NoDefaultStore => "no default keychain store".to_owned(),
        StoreError::NotSupportedByStore(detail) => {
            format!("not supported by the keychain: {detail}")
        }
        other => format!("{other}"),
    }
}
