//! Vault names from the wire (`src/vault/scope.rs`), device ids, auth profile names and the
//! ListSecrets page token (`src/wire/convert.rs`). Checks: parse → display → parse is the
//! identity; what parses obeys the grammar; parents, containment and object ids agree.

#![no_main]

use libfuzzer_sys::fuzz_target;
use palyra::auth::ProfileName;
use palyra::identity::DeviceId;
use palyra::vault::scope::{MAX_KEY_LEN, MAX_SCOPE_SEGMENTS, MAX_SEGMENT_LEN, ObjectId};
use palyra::vault::{Scope, SecretKey};
use palyra::wire::convert::{Listing, PageTokens};

/// One sealer for the whole run, as one node has one.
static TOKENS: std::sync::LazyLock<PageTokens> =
    std::sync::LazyLock::new(|| PageTokens::new().expect("the system RNG"));

fn check_scope(text: &str) -> Option<Scope> {
    let scope = Scope::parse(text).ok()?;
    assert_eq!(scope.as_str(), text);
    assert_eq!(Scope::parse(&scope.to_string()).as_ref(), Ok(&scope));
    let segments: Vec<&str> = scope.segments().collect();
    assert!((1..=MAX_SCOPE_SEGMENTS).contains(&segments.len()));
    for s in &segments {
        assert!(!s.is_empty() && s.len() <= MAX_SEGMENT_LEN && !s.contains(".."), "{s:?}");
        assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)));
        assert!(!s.starts_with(['.', '_', '-']));
    }
    // Every ancestor is a scope, contains it, and is not contained by it.
    let mut ancestor = scope.parent();
    let mut depth = 1;
    while let Some(a) = ancestor {
        assert_eq!(Scope::parse(a.as_str()).as_ref(), Ok(&a));
        assert!(scope.is_within(&a) && !a.is_within(&scope));
        ancestor = a.parent();
        depth += 1;
    }
    assert_eq!(depth, segments.len());
    assert!(scope.is_within(&scope));
    Some(scope)
}

fn check_key(text: &str) -> Option<SecretKey> {
    let key = SecretKey::parse(text).ok()?;
    assert_eq!(key.as_str(), text);
    assert!(!text.is_empty() && text.len() <= MAX_KEY_LEN);
    assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
    assert_eq!(SecretKey::parse(&key.to_string()).as_ref(), Ok(&key));
    Some(key)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // One input, every name parser; and split at the first newline as a (scope, key) pair.
    let whole_scope = check_scope(text);
    check_key(text);
    if let Some(scope) = &whole_scope {
        let id = ObjectId::new(scope, &SecretKey::parse("k").expect("a key"));
        assert_eq!(id.as_str().len(), 64);
    }
    if let Some((s, k)) = text.split_once('\n')
        && let (Some(scope), Some(key)) = (check_scope(s), check_key(k))
    {
        let id = ObjectId::new(&scope, &key);
        assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(id, ObjectId::new(&scope, &key));
        // A page token round-trips for its own listing and caller, and no other.
        let base = Scope::parse("agents").expect("a scope");
        let listing = Listing { scope: Some(&base), recursive: true, include_deleted: false };
        let token = TOKENS.seal(&listing, "device:a", &(scope.clone(), key.clone())).expect("sealed");
        assert_eq!(TOKENS.open(&listing, "device:a", &token).ok().flatten(), Some((scope, key)));
        let other = Listing { recursive: false, ..listing.clone() };
        assert!(TOKENS.open(&other, "device:a", &token).is_err());
        assert!(TOKENS.open(&listing, "device:b", &token).is_err());
    }
    // Any text as a page token: refused (nobody but this sealer makes one), never a panic.
    let base = Scope::parse("a").expect("a scope");
    let listing = Listing { scope: Some(&base), recursive: false, include_deleted: true };
    assert!(text.is_empty() || TOKENS.open(&listing, "device:a", text).is_err());
    if let Ok(id) = DeviceId::parse(text) {
        let shown = id.to_string();
        assert_eq!(shown.len(), 26);
        assert_eq!(DeviceId::parse(&shown), Ok(id));
        assert_eq!(DeviceId::parse(&shown.to_ascii_uppercase()), Ok(id));
        assert!(id.own_scope().is_within(&Scope::parse("devices").expect("a scope")));
    }
    if let Ok(name) = ProfileName::parse(text) {
        assert_eq!(name.as_str(), text);
        let scope = name.scope();
        assert_eq!(scope.as_str(), format!("palyra/auth/{text}"));
        assert_eq!(check_scope(scope.as_str()), Some(scope));
    }
});
