//! The OS keychain root-key provider against a real Secret Service (Linux).
//!
//! Needs a D-Bus session bus with an unlocked Secret Service (gnome-keyring in CI, see
//! `.ci/run`). Without one the tests print `SKIPPED: no Secret Service reachable: <reason>` to
//! stderr and pass, unless `PALYRA_REQUIRE_SECRET_SERVICE=1` is set: then they fail.
#![cfg(target_os = "linux")]

use std::io::Write as _;

use palyra::vault::keychain::{KeychainKeyProvider, SERVICE};
use palyra::vault::keys::{KeyBackend, KeyError, KeyProvider, RootKey};
use ring::error::Unspecified;
use ring::rand::{SecureRandom, SystemRandom};

const REQUIRE_VAR: &str = "PALYRA_REQUIRE_SECRET_SERVICE";

/// Opens the keychain for `key_id`, or reports why it cannot: `None` means skip.
fn open_or_skip(key_id: &str) -> Option<KeychainKeyProvider> {
    match KeychainKeyProvider::open(key_id) {
        Ok(provider) => Some(provider),
        Err(KeyError::KeychainUnavailable(reason)) => {
            assert!(
                std::env::var(REQUIRE_VAR).as_deref() != Ok("1"),
                "no Secret Service reachable ({REQUIRE_VAR}=1): {reason}"
            );
            // Straight to the stderr handle: libtest captures `eprintln!`, and a skip must show.
            let line = format!("SKIPPED: no Secret Service reachable: {reason}\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            None
        }
        Err(other) => panic!("opening the os keychain failed: {other}"),
    }
}

fn random_key_id() -> Result<String, Unspecified> {
    let mut bytes = [0u8; 8];
    SystemRandom::new().fill(&mut bytes)?;
    Ok(format!("test-{}", hex::encode(bytes)))
}

fn random_key() -> Result<RootKey, Unspecified> {
    let mut bytes = [0u8; RootKey::LEN];
    SystemRandom::new().fill(&mut bytes)?;
    Ok(RootKey::from_bytes(bytes))
}

/// Deletes the item when the test ends, also when it fails.
struct Cleanup<'a>(&'a KeychainKeyProvider);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.0.delete();
    }
}

#[test]
fn root_key_round_trips_through_the_secret_service() {
    let key_id = random_key_id().expect("rng");
    let Some(provider) = open_or_skip(&key_id) else {
        return;
    };
    let _cleanup = Cleanup(&provider);
    assert_eq!(provider.backend(), KeyBackend::Keychain);
    assert_eq!(provider.key_id(), key_id);

    assert!(provider.load().expect("load before store").is_none(), "a fresh key id has no root key");

    let key = random_key().expect("rng");
    provider.store(&key).expect("first store");
    let loaded = provider.load().expect("load after store").expect("a root key");
    assert_eq!(loaded.as_bytes(), key.as_bytes());

    // A second provider (own connection) for the same id sees the same key.
    let again = KeychainKeyProvider::open(&key_id).expect("reopen");
    let reloaded = again.load().expect("load via second provider").expect("a root key");
    assert_eq!(reloaded.as_bytes(), key.as_bytes());

    let err = provider.store(&random_key().expect("rng")).expect_err("a second store must refuse");
    assert!(matches!(err, KeyError::AlreadyExists(_)), "got {err}");
    let still = provider.load().expect("load after refused store").expect("a root key");
    assert_eq!(still.as_bytes(), key.as_bytes(), "the refused store overwrote the key");

    let debug = format!("{provider:?}");
    assert!(debug.contains(&key_id), "{debug}");
    assert!(!debug.contains(&hex::encode(key.as_bytes())), "{debug}");

    provider.delete().expect("delete");
    assert!(provider.load().expect("load after delete").is_none());
    provider.delete().expect("deleting a missing key is fine");
}

#[test]
fn wrong_length_value_is_malformed() {
    let key_id = random_key_id().expect("rng");
    let Some(provider) = open_or_skip(&key_id) else {
        return;
    };
    let _cleanup = Cleanup(&provider);

    // Plant a 5-byte value in the provider's item, through the store crate directly.
    let store = zbus_secret_service_keyring_store::Store::new().expect("secret service store");
    let entry =
        keyring_core::api::CredentialStoreApi::build(&*store, SERVICE, &format!("root-key/{key_id}"), None)
            .expect("entry");
    entry.set_secret(b"short").expect("plant value");

    let err = provider.load().expect_err("a 5-byte value is not a root key");
    match &err {
        KeyError::Malformed { detail, .. } => assert!(detail.contains("found 5"), "{err}"),
        other => panic!("expected Malformed, got {other}"),
    }
    let err = provider.store(&random_key().expect("rng")).expect_err("an item is there");
    assert!(matches!(err, KeyError::AlreadyExists(_)), "got {err}");
}

#[test]
fn works_from_spawn_blocking_inside_a_tokio_runtime() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let key_id = random_key_id().expect("rng");
        let result = tokio::task::spawn_blocking(move || {
            let Some(provider) = open_or_skip(&key_id) else {
                return;
            };
            let _cleanup = Cleanup(&provider);
            let key = random_key().expect("rng");
            assert!(provider.load().expect("load").is_none());
            provider.store(&key).expect("store");
            let loaded = provider.load().expect("load").expect("a root key");
            assert_eq!(loaded.as_bytes(), key.as_bytes());
        })
        .await;
        if let Err(err) = result {
            std::panic::resume_unwind(err.into_panic());
        }

        // Called straight from a runtime thread (wrong, it blocks that thread) it still works:
        // the keychain calls run on their own thread and need no tokio context.
        let key_id = random_key_id().expect("rng");
        if let Some(provider) = open_or_skip(&key_id) {
            assert!(provider.load().expect("load on a runtime thread").is_none());
        }
    });
}

#[test]
fn invalid_key_ids_are_refused_before_any_keychain_call() {
    for key_id in ["", "a/b", "a b", "ключ", &"x".repeat(129)] {
        let err = KeychainKeyProvider::open(key_id).expect_err("invalid key id");
        assert!(matches!(err, KeyError::Keychain(_)), "{key_id:?}: {err}");
    }
}
