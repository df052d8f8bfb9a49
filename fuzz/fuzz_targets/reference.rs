//! Secret references, templates and dotenv text (`src/vault/reference.rs`, `src/vault/dotenv.rs`):
//! what `palyra run` and `palyra inject` read from flags, the environment, `.env` files and
//! templates. Checks: a parsed reference displays as text that parses to itself, within the
//! length bound, and its scope and key are vault names; placeholders lie in order on character
//! boundaries, each `{{ … }}` holding its reference; dotenv names are shell names, and values
//! written back double-quoted parse to the same entries; errors are one bounded line.

#![no_main]

use libfuzzer_sys::fuzz_target;
use palyra::vault::dotenv;
use palyra::vault::reference::{MAX_REFERENCE_LEN, Reference, placeholders};
use palyra::vault::{Scope, SecretKey};

fn one_line(error: &dyn std::fmt::Display) {
    let text = error.to_string();
    assert!(!text.contains('\n') && text.len() < 1024, "{text:?}");
}

fn check_reference(text: &str) -> Option<Reference> {
    let reference = match Reference::parse(text) {
        Ok(r) => r,
        Err(e) => {
            one_line(&e);
            return None;
        }
    };
    let shown = reference.to_string();
    assert!(shown.len() <= MAX_REFERENCE_LEN && Reference::is_meant(&shown));
    assert_eq!(Reference::parse(&shown).as_ref(), Ok(&reference));
    assert_eq!(Scope::parse(reference.scope().as_str()).as_ref(), Ok(reference.scope()));
    assert_eq!(SecretKey::parse(reference.key().as_str()).as_ref(), Ok(reference.key()));
    assert_ne!(reference.version(), Some(0));
    Some(reference)
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '$' => out.push_str("\\$"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    check_reference(text);

    match placeholders(text) {
        Ok(found) => {
            let mut end = 0;
            for p in &found {
                assert!(p.span.start >= end && p.span.end <= text.len());
                let inner = &text[p.span.clone()];
                assert!(inner.starts_with("{{") && inner.ends_with("}}") && !inner.contains('\n'));
                assert_eq!(
                    check_reference(inner[2..inner.len() - 2].trim_matches([' ', '\t'])).as_ref(),
                    Some(&p.reference)
                );
                assert_eq!(p.line, 1 + text[..p.span.start].matches('\n').count());
                end = p.span.end;
            }
        }
        Err(e) => one_line(&e),
    }

    match dotenv::parse(text) {
        Ok(entries) => {
            let rewritten: String =
                entries.iter().map(|e| format!("{}=\"{}\"\n", e.name, escape(&e.value))).collect();
            let again = dotenv::parse(&rewritten).expect("re-written dotenv parses");
            assert_eq!(again.len(), entries.len());
            for (a, b) in entries.iter().zip(&again) {
                assert!(dotenv::is_name(&a.name));
                assert_eq!((&a.name, &*a.value), (&b.name, &*b.value));
            }
        }
        Err(e) => one_line(&e),
    }
});
