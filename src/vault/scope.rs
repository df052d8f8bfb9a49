//! Vault scopes, secret keys and object ids, parsed from untrusted text.
//!
//! Parse, don't validate: a [`Scope`] or [`SecretKey`] can only be built from text that follows
//! the grammar in docs/storage-format.md ("Names"), so everything downstream can rely on it. Errors say what is wrong
//! and quote at most a bounded prefix of the input.

use std::fmt;

/// Most segments a scope may have.
pub const MAX_SCOPE_SEGMENTS: usize = 8;
/// Longest scope segment, in bytes.
pub const MAX_SEGMENT_LEN: usize = 64;
/// Longest secret key, in bytes.
pub const MAX_KEY_LEN: usize = 128;
/// Longest scope text: eight full segments and their separators.
pub const MAX_SCOPE_LEN: usize = MAX_SCOPE_SEGMENTS * MAX_SEGMENT_LEN + MAX_SCOPE_SEGMENTS - 1;

/// Why a scope or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The scope text breaks the scope grammar.
    #[error("invalid scope {input}: {reason}")]
    Scope {
        /// A bounded, escaped quote of the input.
        input: String,
        /// What is wrong.
        reason: String,
    },
    /// The key text breaks the key grammar.
    #[error("invalid key {input}: {reason}")]
    Key {
        /// A bounded, escaped quote of the input.
        input: String,
        /// What is wrong.
        reason: String,
    },
}

/// Quotes untrusted input for an error message: escaped, and cut after 40 characters.
fn quote(input: &str) -> String {
    const SHOWN: usize = 40;
    let mut shown: String = input.chars().take(SHOWN).collect();
    if input.chars().count() > SHOWN {
        shown.push('…');
    }
    format!("{shown:?}")
}

/// A vault scope such as `agents/alpha` or `devices/01j9…`: 1–8 `/`-separated segments, each
/// `[a-z0-9][a-z0-9._-]{0,63}`, none containing `..`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope(String);

impl Scope {
    /// Parses scope text.
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let err = |reason: String| NameError::Scope { input: quote(input), reason };
        if input.is_empty() {
            return Err(err("a scope must not be empty".into()));
        }
        if input.len() > MAX_SCOPE_LEN {
            return Err(err(format!("a scope is at most {MAX_SCOPE_LEN} bytes")));
        }
        if input.starts_with('/') || input.ends_with('/') {
            return Err(err("a scope must not start or end with '/'".into()));
        }
        let mut count = 0;
        for (index, segment) in input.split('/').enumerate() {
            count += 1;
            if count > MAX_SCOPE_SEGMENTS {
                return Err(err(format!("a scope has at most {MAX_SCOPE_SEGMENTS} segments")));
            }
            check_segment(segment).map_err(|reason| err(format!("segment {}: {reason}", index + 1)))?;
        }
        Ok(Scope(input.to_owned()))
    }

    /// The scope text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The segments, outermost first.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The enclosing scope, or `None` for a one-segment scope.
    pub fn parent(&self) -> Option<Scope> {
        self.0.rfind('/').map(|at| Scope(self.0[..at].to_owned()))
    }

    /// Whether `self` is `other` or lies inside it (`a/b` is within `a`; `ab` is not).
    pub fn is_within(&self, other: &Scope) -> bool {
        self.0 == other.0
            || (self.0.len() > other.0.len()
                && self.0.starts_with(&other.0)
                && self.0.as_bytes()[other.0.len()] == b'/')
    }
}

fn check_segment(segment: &str) -> Result<(), String> {
    let bytes = segment.as_bytes();
    let Some(&first) = bytes.first() else {
        return Err("empty segment (two '/' in a row)".into());
    };
    if segment == "." || segment == ".." {
        return Err(format!("{segment:?} is not a segment: scopes have no relative paths"));
    }
    if bytes.len() > MAX_SEGMENT_LEN {
        return Err(format!("longer than {MAX_SEGMENT_LEN} bytes"));
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err("must start with a lower-case letter or a digit".into());
    }
    if let Some(bad) = segment.chars().find(|&c| !is_scope_char(c)) {
        return Err(format!("character {bad:?} is not allowed (use a-z, 0-9, '.', '_' or '-')"));
    }
    if segment.contains("..") {
        return Err("must not contain '..'".into());
    }
    Ok(())
}

fn is_scope_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The text, moved out (no copy).
impl From<Scope> for String {
    fn from(v: Scope) -> String {
        v.0
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({:?})", self.0)
    }
}

impl std::str::FromStr for Scope {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::parse(s)
    }
}

/// The name of a secret within its scope: `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretKey(String);

impl SecretKey {
    /// Parses key text.
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let err = |reason: String| NameError::Key { input: quote(input), reason };
        let Some(first) = input.chars().next() else {
            return Err(err("a key must not be empty".into()));
        };
        if input.len() > MAX_KEY_LEN {
            return Err(err(format!("a key is at most {MAX_KEY_LEN} bytes")));
        }
        if !first.is_ascii_alphanumeric() {
            return Err(err("must start with a letter or a digit".into()));
        }
        if let Some(bad) =
            input.chars().find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(err(format!(
                "character {bad:?} is not allowed (use A-Z, a-z, 0-9, '.', '_' or '-')"
            )));
        }
        Ok(SecretKey(input.to_owned()))
    }

    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The text, moved out (no copy).
impl From<SecretKey> for String {
    fn from(v: SecretKey) -> String {
        v.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({:?})", self.0)
    }
}

impl std::str::FromStr for SecretKey {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SecretKey::parse(s)
    }
}

/// Domain tag of object ids, so they can never collide with another SHA-256 use.
const OBJECT_ID_TAG: &[u8] = b"palyra.vault.object-id.v1";

/// The storage locator of a secret: lowercase hex SHA-256 over a domain tag and the
/// length-prefixed scope and key (so `a` + `bc` and `ab` + `c` differ).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ObjectId(String);

impl ObjectId {
    /// The object id of `key` in `scope`.
    pub fn new(scope: &Scope, key: &SecretKey) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [OBJECT_ID_TAG, scope.as_str().as_bytes(), key.as_str().as_bytes()] {
            ctx.update(&(part.len() as u32).to_be_bytes());
            ctx.update(part);
        }
        ObjectId(hex::encode(ctx.finish()))
    }

    /// The 64 lowercase hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The text, moved out (no copy).
impl From<ObjectId> for String {
    fn from(v: ObjectId) -> String {
        v.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_documented_examples() {
        for s in ["agents/alpha", "connectors/slack", "devices/01j9zq8x7c6v5b4n3m2k1j0h9g", "a", "0.x_y-z"] {
            assert!(Scope::parse(s).is_ok(), "{s}");
        }
        let eight = ["s"; 8].join("/");
        assert!(Scope::parse(&eight).is_ok());
        assert!(Scope::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn rejects_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("/a", "start or end"),
            ("a/", "start or end"),
            ("a//b", "empty segment"),
            ("A/b", "lower-case"),
            ("a/B", "lower-case"),
            ("a/.hidden", "start with"),
            ("a/b..c", "'..'"),
            ("a/../b", "no relative paths"),
            ("a/.", "no relative paths"),
            ("a/b c", "not allowed"),
            ("a/\0", "start with"),
            ("a/é", "start with"),
        ];
        for (input, want) in cases {
            let err = Scope::parse(input).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(want), "{input:?}: {err}");
        }
        assert!(Scope::parse(&["s"; 9].join("/")).is_err());
        assert!(Scope::parse(&"a".repeat(65)).is_err());
        assert!(Scope::parse(&"a".repeat(10_000)).is_err());
    }

    #[test]
    fn errors_quote_a_bounded_prefix() {
        let long = "Z".repeat(10_000);
        let err = Scope::parse(&long).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.len() < 200, "{err}");
        let err = SecretKey::parse(&long).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.len() < 200, "{err}");
    }

    #[test]
    fn keys() {
        for k in ["OPENAI_API_KEY", "a", "x.y-z_1", &"k".repeat(128)] {
            assert!(SecretKey::parse(k).is_ok(), "{k}");
        }
        for k in ["", "_a", ".a", "a/b", "a b", "ключ", &"k".repeat(129)] {
            assert!(SecretKey::parse(k).is_err(), "{k}");
        }
    }

    #[test]
    fn parents_and_containment() -> Result<(), NameError> {
        let s = Scope::parse("a/b/c")?;
        assert_eq!(s.parent(), Some(Scope::parse("a/b")?));
        assert_eq!(Scope::parse("a")?.parent(), None);
        assert!(s.is_within(&Scope::parse("a")?));
        assert!(s.is_within(&s));
        assert!(!Scope::parse("ab")?.is_within(&Scope::parse("a")?));
        assert!(!Scope::parse("a")?.is_within(&s));
        Ok(())
    }

    #[test]
    fn object_ids_are_length_prefixed() -> Result<(), NameError> {
        let a = ObjectId::new(&Scope::parse("a")?, &SecretKey::parse("bc")?);
        let b = ObjectId::new(&Scope::parse("ab")?, &SecretKey::parse("c")?);
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 64);
        assert!(a.as_str().chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(a, ObjectId::new(&Scope::parse("a")?, &SecretKey::parse("bc")?));
        Ok(())
    }

    fn segment() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9_-]{0,20}"
    }

    proptest! {
        #[test]
        fn valid_scopes_round_trip(segs in prop::collection::vec(segment(), 1..=8)) {
            let text = segs.join("/");
            let scope = Scope::parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(scope.as_str(), text.as_str());
            prop_assert_eq!(scope.segments().count(), segs.len());
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,600}") {
            if let Ok(scope) = Scope::parse(&text) {
                // Whatever was accepted must satisfy the grammar.
                prop_assert!(scope.segments().count() <= MAX_SCOPE_SEGMENTS);
                prop_assert!(scope.segments().all(|s| check_segment(s).is_ok()));
            }
            if let Ok(key) = SecretKey::parse(&text) {
                prop_assert!(key.as_str().len() <= MAX_KEY_LEN);
            }
        }

        #[test]
        fn distinct_names_have_distinct_ids(a in segment(), b in segment(), k1 in "[A-Za-z0-9]{1,10}", k2 in "[A-Za-z0-9]{1,10}") {
            let id1 = ObjectId::new(&Scope::parse(&a).map_err(|e| TestCaseError::fail(e.to_string()))?, &SecretKey::parse(&k1).map_err(|e| TestCaseError::fail(e.to_string()))?);
            let id2 = ObjectId::new(&Scope::parse(&b).map_err(|e| TestCaseError::fail(e.to_string()))?, &SecretKey::parse(&k2).map_err(|e| TestCaseError::fail(e.to_string()))?);
            prop_assert_eq!(id1 == id2, a == b && k1 == k2);
        }
    }
}
