//! Vault envelopes (`src/vault/envelope.rs`) as read back from storage: `parse`, `open` with
//! the corpus's root key, `rewrap`. Checks: a parsed view re-assembles to the input byte for
//! byte; what opens re-opens after a rewrap and for no other binding; any value round-trips.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palyra::vault::envelope::{self, EnvelopeError, FORMAT_VERSION};
use palyra::vault::{Binding, KeyHierarchy, RootKey, Scope, SecretKey};
use palyra_fuzz::{ENVELOPE_KEY, ENVELOPE_ROOT_KEY, ENVELOPE_SCOPE, ENVELOPE_VERSION};

struct Fixture {
    keys: KeyHierarchy,
    scope: Scope,
    key: SecretKey,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        keys: KeyHierarchy::new(&RootKey::from_bytes(ENVELOPE_ROOT_KEY)),
        scope: Scope::parse(ENVELOPE_SCOPE).expect("a scope"),
        key: SecretKey::parse(ENVELOPE_KEY).expect("a key"),
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let binding = Binding { scope: &f.scope, key: &f.key, version: ENVELOPE_VERSION };
    match envelope::parse(data) {
        Ok(view) => {
            let mut again = b"PLVE".to_vec();
            again.push(FORMAT_VERSION);
            again.extend_from_slice(&view.generation.to_be_bytes());
            again.extend_from_slice(&(view.wrapped_dek.len() as u16).to_be_bytes());
            again.extend_from_slice(view.wrapped_dek);
            again.extend_from_slice(&(view.sealed_value.len() as u32).to_be_bytes());
            again.extend_from_slice(view.sealed_value);
            assert_eq!(again, data, "a parsed envelope is exactly its fields");
        }
        Err(EnvelopeError::Malformed(_) | EnvelopeError::UnsupportedFormat(_)) => {}
        Err(e) => panic!("parse can only find malformed input: {e:?}"),
    }
    // Keys are derived only for generations the input names, as the vault does.
    let opened = envelope::open(data, binding, |g| (g < 1 << 20).then(|| f.keys.vault_kek(g)));
    match opened {
        Ok(value) => {
            let generation = envelope::parse(data).expect("opened, so it parses").generation;
            let next = generation + 1;
            let old = f.keys.vault_kek(generation);
            let new = f.keys.vault_kek(next);
            let rewrapped = envelope::rewrap(data, binding, &old, &new, next).expect("rewrap what opens");
            let reopened =
                envelope::open(&rewrapped, binding, |g| Some(f.keys.vault_kek(g))).expect("reopen");
            assert_eq!(reopened.expose(), value.expose());
            assert!(envelope::open(&rewrapped, binding, |_| Some(f.keys.vault_kek(generation))).is_err());
            let moved = Binding { version: ENVELOPE_VERSION + 1, ..binding };
            assert!(envelope::open(data, moved, |g| Some(f.keys.vault_kek(g))).is_err());
        }
        Err(EnvelopeError::Random) => panic!("opening needs no randomness"),
        Err(_) => {}
    }
    // The input as a value: sealing then opening gives it back.
    let sealed = envelope::seal(&f.keys.vault_kek(2), 2, binding, data).expect("seal");
    assert_eq!(envelope::open(&sealed, binding, |g| Some(f.keys.vault_kek(g))).expect("open").expose(), data);
});
