//! References to secrets, `palyra://SCOPE/KEY[?version=N]`, as `palyra run` and `palyra inject`
//! read them from flags, environment variables, dotenv files and templates.
//!
//! The last path segment is the key, everything before it the scope; both follow the vault's
//! grammar ([`Scope`], [`SecretKey`]). The only query is `version=N` (N ≥ 1); without it the
//! latest version is meant. Parsing is bounded and panic-free, and errors quote at most a
//! bounded, escaped prefix of the input. A reference names a secret, never holds one, so it may
//! appear in errors. This module does no IO: resolving a reference is the CLI's job.

use std::fmt;
use std::ops::Range;

use super::scope::{MAX_KEY_LEN, MAX_SCOPE_LEN, NameError, Scope, SecretKey};

/// What every reference starts with.
pub const PREFIX: &str = "palyra://";
const VERSION_QUERY: &str = "version=";
/// Longest reference text: prefix, the longest scope, `/`, the longest key and a version.
pub const MAX_REFERENCE_LEN: usize = PREFIX.len() + MAX_SCOPE_LEN + 1 + MAX_KEY_LEN + 1 + 8 + 20;
/// Largest template `palyra inject` reads, in bytes.
pub const MAX_TEMPLATE_LEN: usize = 1024 * 1024;
/// Most references one template (or one `palyra run`) may hold.
pub const MAX_REFERENCES: usize = 1024;

/// Why a reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceError {
    /// It does not start with `palyra://`.
    #[error("{0} is not a secret reference (palyra://SCOPE/KEY[?version=N])")]
    NotAReference(String),
    /// Longer than any reference can be.
    #[error("{input} is longer than {MAX_REFERENCE_LEN} bytes, more than any reference")]
    TooLong {
        /// A bounded quote of the input.
        input: String,
    },
    /// The path has no `/`, so no key.
    #[error("{0} names no key (palyra://SCOPE/KEY: the last segment is the key)")]
    NoKey(String),
    /// The scope or the key breaks the vault's grammar.
    #[error("{input}: {error}")]
    Name {
        /// A bounded quote of the input.
        input: String,
        /// What is wrong with the scope or key.
        error: NameError,
    },
    /// The query is not `version=N` with N ≥ 1.
    #[error("{input}: {reason}")]
    Query {
        /// A bounded quote of the input.
        input: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Quotes untrusted input for an error message: escaped, and cut after 80 characters.
fn quote(input: &str) -> String {
    const SHOWN: usize = 80;
    let mut shown: String = input.chars().take(SHOWN).collect();
    if input.chars().count() > SHOWN {
        shown.push('…');
    }
    format!("{shown:?}")
}

/// A parsed `palyra://SCOPE/KEY[?version=N]`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reference {
    scope: Scope,
    key: SecretKey,
    version: Option<u64>,
}

impl Reference {
    /// Parses reference text.
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        if input.len() > MAX_REFERENCE_LEN {
            return Err(ReferenceError::TooLong { input: quote(input) });
        }
        let Some(rest) = input.strip_prefix(PREFIX) else {
            return Err(ReferenceError::NotAReference(quote(input)));
        };
        let (path, query) = match rest.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (rest, None),
        };
        let Some((scope, key)) = path.rsplit_once('/') else {
            return Err(ReferenceError::NoKey(quote(input)));
        };
        let name = |error| ReferenceError::Name { input: quote(input), error };
        let scope = Scope::parse(scope).map_err(name)?;
        let key = SecretKey::parse(key).map_err(name)?;
        let version = match query {
            None => None,
            Some(query) => Some(parse_version(query).map_err(|reason| ReferenceError::Query {
                input: quote(input),
                reason,
            })?),
        };
        Ok(Reference { scope, key, version })
    }

    /// Whether `text` is meant as a reference (it starts with `palyra://`), well-formed or not.
    pub fn is_meant(text: &str) -> bool {
        text.starts_with(PREFIX)
    }

    /// The scope.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The key.
    pub fn key(&self) -> &SecretKey {
        &self.key
    }

    /// The version asked for; `None` for the latest.
    pub fn version(&self) -> Option<u64> {
        self.version
    }
}

fn parse_version(query: &str) -> Result<u64, &'static str> {
    let Some(digits) = query.strip_prefix(VERSION_QUERY) else {
        return Err("the only query a reference takes is ?version=N");
    };
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the version is a decimal number from 1");
    }
    match digits.parse::<u64>() {
        Ok(0) => Err("versions start at 1 (leave ?version out for the latest)"),
        Ok(n) => Ok(n),
        Err(_) => Err("the version is a decimal number from 1"),
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}/{}", self.scope, self.key)?;
        if let Some(v) = self.version {
            write!(f, "?{VERSION_QUERY}{v}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl std::str::FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// Larger than [`MAX_TEMPLATE_LEN`].
    #[error("the template is {0} bytes; at most {MAX_TEMPLATE_LEN} are read")]
    TooLarge(usize),
    /// More than [`MAX_REFERENCES`] placeholders.
    #[error("the template holds more than {MAX_REFERENCES} references")]
    TooMany,
    /// A `{{ palyra://` with no `}}` after it on its line.
    #[error("line {line}: a {{{{ palyra://… }}}} placeholder is not closed on its line")]
    Unclosed {
        /// 1-based line of the opening braces.
        line: usize,
    },
    /// A placeholder whose reference does not parse.
    #[error("line {line}: {error}")]
    Reference {
        /// 1-based line of the placeholder.
        line: usize,
        /// What is wrong with it.
        error: ReferenceError,
    },
}

/// One `{{ palyra://SCOPE/KEY }}` placeholder of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    /// The bytes of the template it covers, braces included.
    pub span: Range<usize>,
    /// 1-based line it starts on.
    pub line: usize,
    /// What it refers to.
    pub reference: Reference,
}

/// Every `{{ palyra://… }}` placeholder of `template`, in order. Whitespace (spaces and tabs)
/// around the reference is optional; `{{` not followed by `palyra://` is other text and left
/// alone. A placeholder must close on its own line.
pub fn placeholders(template: &str) -> Result<Vec<Placeholder>, TemplateError> {
    if template.len() > MAX_TEMPLATE_LEN {
        return Err(TemplateError::TooLarge(template.len()));
    }
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(offset) = template[at..].find("{{") {
        let start = at + offset;
        let inner_start = start + 2;
        let inner = template[inner_start..].trim_start_matches([' ', '\t']);
        if !inner.starts_with(PREFIX) {
            at = inner_start;
            continue;
        }
        let line = 1 + template[..start].bytes().filter(|&b| b == b'\n').count();
        let line_end = inner.find('\n').unwrap_or(inner.len());
        let Some(close) = inner[..line_end].find("}}") else {
            return Err(TemplateError::Unclosed { line });
        };
        let reference = Reference::parse(inner[..close].trim_end_matches([' ', '\t']))
            .map_err(|error| TemplateError::Reference { line, error })?;
        if found.len() == MAX_REFERENCES {
            return Err(TemplateError::TooMany);
        }
        let end = template.len() - inner.len() + close + 2;
        found.push(Placeholder { span: start..end, line, reference });
        at = end;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_references() {
        let r = parse("palyra://agents/alpha/OPENAI_API_KEY");
        assert_eq!(r.scope().as_str(), "agents/alpha");
        assert_eq!(r.key().as_str(), "OPENAI_API_KEY");
        assert_eq!(r.version(), None);
        assert_eq!(r.to_string(), "palyra://agents/alpha/OPENAI_API_KEY");

        let r = parse("palyra://a/k.v-1?version=12");
        assert_eq!((r.scope().as_str(), r.key().as_str(), r.version()), ("a", "k.v-1", Some(12)));
        assert_eq!(r.to_string(), "palyra://a/k.v-1?version=12");
        assert_eq!(parse(&r.to_string()), r);
        assert_eq!(parse(&format!("palyra://a/k?version={}", u64::MAX)).version(), Some(u64::MAX));
        assert!(Reference::is_meant("palyra://x"));
        assert!(!Reference::is_meant("sk-palyra://"));
    }

    #[test]
    fn refuses_malformed_references() {
        let cases: &[(&str, &str)] = &[
            ("https://a/k", "is not a secret reference"),
            ("palyra:/a/k", "is not a secret reference"),
            ("palyra://key-only", "names no key"),
            ("palyra://", "names no key"),
            ("palyra://a/", "invalid key"),
            ("palyra:///k", "invalid scope"),
            ("palyra://A/k", "invalid scope"),
            ("palyra://a/../k", "invalid scope"),
            ("palyra://a//k", "invalid scope"),
            ("palyra://a/k y", "invalid key"),
            ("palyra://a/k#frag", "invalid key"),
            ("palyra://a/k?", "only query"),
            ("palyra://a/k?v=1", "only query"),
            ("palyra://a/k?version=", "decimal number"),
            ("palyra://a/k?version=0", "start at 1"),
            ("palyra://a/k?version=-1", "decimal number"),
            ("palyra://a/k?version=+1", "decimal number"),
            ("palyra://a/k?version=1&x=2", "decimal number"),
            ("palyra://a/k?version=18446744073709551616", "decimal number"),
            ("palyra://a/k?version=1?version=2", "decimal number"),
        ];
        for (input, want) in cases {
            let err = Reference::parse(input).expect_err(input).to_string();
            assert!(err.contains(want), "{input}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        let long = format!("palyra://a/{}", "k".repeat(10_000));
        let err = Reference::parse(&long).expect_err("too long").to_string();
        assert!(err.contains("longer than") && err.len() < 300, "{err}");
    }

    #[test]
    fn finds_placeholders() {
        let text = "a={{palyra://s/A}}\nb = {{ \tpalyra://s/t/B?version=2 }} and {{ other }} {{palyra://s/A }}";
        let found = placeholders(text).unwrap();
        let refs: Vec<String> = found.iter().map(|p| p.reference.to_string()).collect();
        assert_eq!(refs, ["palyra://s/A", "palyra://s/t/B?version=2", "palyra://s/A"]);
        assert_eq!(&text[found[0].span.clone()], "{{palyra://s/A}}");
        assert_eq!(&text[found[1].span.clone()], "{{ \tpalyra://s/t/B?version=2 }}");
        assert_eq!(found.iter().map(|p| p.line).collect::<Vec<_>>(), [1, 2, 2]);
        assert!(placeholders("no placeholders {{ here }} {{").unwrap().is_empty());

        assert_eq!(placeholders("x\n{{ palyra://s/k \n}}"), Err(TemplateError::Unclosed { line: 2 }));
        assert!(matches!(
            placeholders("{{ palyra://s/k k }}"),
            Err(TemplateError::Reference { line: 1, .. })
        ));
        assert_eq!(
            placeholders(&"x".repeat(MAX_TEMPLATE_LEN + 1)),
            Err(TemplateError::TooLarge(MAX_TEMPLATE_LEN + 1))
        );
        assert_eq!(placeholders(&"{{palyra://s/k}}".repeat(MAX_REFERENCES + 1)), Err(TemplateError::TooMany));
        // Multi-byte text around and between braces never splits a character.
        assert!(placeholders("é{{é{{ palyra://s/k }}é").unwrap().len() == 1);
    }

    /// The fuzz target's properties (fuzz/fuzz_targets/reference.rs) on text built from the
    /// pieces that matter, so `cargo test` covers them without a fuzzing build.
    mod properties {
        use proptest::prelude::*;

        use super::super::*;
        use crate::vault::dotenv;

        fn pieces() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("palyra://"), Just("{{"), Just("}}"), Just(" "), Just("\t"), Just("\n"), Just("/"),
                Just("?version="), Just("1"), Just("0"), Just("a"), Just("K"), Just("."), Just("-"),
                Just("="), Just("#"), Just("\""), Just("'"), Just("\\"), Just("$"), Just("export "),
                Just("é"), Just("\r"),
            ];
            proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
        }

        proptest! {
            #[test]
            fn references_templates_and_dotenv(text in pieces()) {
                if let Ok(r) = Reference::parse(&text) {
                    let shown = r.to_string();
                    prop_assert!(shown.len() <= MAX_REFERENCE_LEN);
                    prop_assert_eq!(Reference::parse(&shown), Ok(r));
                }
                match placeholders(&text) {
                    Ok(found) => {
                        let mut end = 0;
                        for p in &found {
                            prop_assert!(p.span.start >= end && p.span.end <= text.len());
                            let inner = &text[p.span.clone()];
                            prop_assert!(inner.starts_with("{{") && inner.ends_with("}}") && !inner.contains('\n'));
                            let reference = inner[2..inner.len() - 2].trim_matches([' ', '\t']);
                            prop_assert_eq!(Reference::parse(reference), Ok(p.reference.clone()));
                            prop_assert_eq!(p.line, 1 + text[..p.span.start].matches('\n').count());
                            end = p.span.end;
                        }
                    }
                    Err(e) => prop_assert!(!e.to_string().contains('\n')),
                }
                match dotenv::parse(&text) {
                    Ok(entries) => {
                        let rewritten: String = entries
                            .iter()
                            .map(|e| {
                                let value = e.value.replace('\\', "\\\\").replace('"', "\\\"").replace('$', "\\$")
                                    .replace('\n', "\\n").replace('\r', "\\r");
                                format!("{}=\"{value}\"\n", e.name)
                            })
                            .collect();
                        let again = dotenv::parse(&rewritten).map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert_eq!(again.len(), entries.len());
                        for (a, b) in entries.iter().zip(&again) {
                            prop_assert!(dotenv::is_name(&a.name));
                            prop_assert_eq!((&a.name, &*a.value), (&b.name, &*b.value));
                        }
                    }
                    Err(e) => prop_assert!(!e.to_string().contains('\n')),
                }
            }
        }
    }
}
