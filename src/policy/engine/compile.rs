//! Compilation: policy text parsed (on a thread with a large stack), given the ids of its
//! `@id` annotations, validated against the schema in strict mode and linted for entity
//! literals that can never match, then handed to [`super::slice`]. No IO, no clock.

use std::collections::HashMap;
use std::str::FromStr;

use cedar_policy::{EntityUid, Policy, PolicyId, PolicySet, ValidationMode};
use cedar_policy_core::ast;

use super::PolicyEngine;
use super::slice::Compiled;
use crate::identity::DeviceId;
use crate::policy::diagnostics::{Diagnostic, Severity, precheck};
use crate::policy::entities::{ANONYMOUS_ID, NODE_ID};
use crate::policy::quote;
use crate::vault::Scope;

/// Stack of the thread that parses and validates policy text (reserved, not committed).
const COMPILE_STACK_BYTES: usize = 64 << 20;

impl PolicyEngine {
    /// Parses, re-ids, validates and slices a policy text. `Ok` carries the warnings.
    ///
    /// Runs on a thread of its own with a large stack: Cedar's parser and validator recurse
    /// along the nesting of the text, which [`precheck`] bounds but a 2 MiB async worker
    /// (or a debug build) might still not hold.
    pub(super) fn compile(&self, text: &str) -> Result<(Compiled, Vec<Diagnostic>), Vec<Diagnostic>> {
        if let Some(refused) = precheck(text) {
            return Err(vec![refused]);
        }
        std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name("palyra-policy-compile".into())
                .stack_size(COMPILE_STACK_BYTES)
                .spawn_scoped(scope, || self.compile_bounded(text))
                .map_err(|e| vec![Diagnostic::error(format!("cannot start the policy compiler: {e}"))])?;
            worker.join().map_err(|_| vec![Diagnostic::error("the policy compiler failed")])?
        })
    }

    fn compile_bounded(&self, text: &str) -> Result<(Compiled, Vec<Diagnostic>), Vec<Diagnostic>> {
        let parsed = PolicySet::from_str(text).map_err(|errors| {
            errors.iter().map(|e| Diagnostic::from_cedar(Severity::Error, e, text)).collect::<Vec<_>>()
        })?;
        let mut diagnostics = Vec::new();
        let set = assign_ids(&parsed, text, &mut diagnostics);
        let result = self.validator.validate(&set, ValidationMode::Strict);
        for e in result.validation_errors() {
            diagnostics
                .push(Diagnostic::from_cedar(Severity::Error, e, text).in_policy(e.policy_id().to_string()));
        }
        for w in result.validation_warnings() {
            diagnostics.push(
                Diagnostic::from_cedar(Severity::Warning, w, text).in_policy(w.policy_id().to_string()),
            );
        }
        lint(&set, text, &mut diagnostics);
        diagnostics.sort_by_key(|d| (d.line == 0, d.line, d.column));
        if diagnostics.iter().any(|d| d.severity == Severity::Error) {
            return Err(diagnostics);
        }
        Ok((self.slice(&set), diagnostics))
    }
}

/// Gives every policy the id of its `@id("...")` annotation (or keeps `policy<N>`), in text
/// order; a duplicate id is an error diagnostic.
pub(super) fn assign_ids(parsed: &PolicySet, text: &str, diagnostics: &mut Vec<Diagnostic>) -> PolicySet {
    let position =
        |id: &PolicyId| id.to_string().strip_prefix("policy").and_then(|n| n.parse::<usize>().ok());
    let mut policies: Vec<&Policy> = parsed.policies().collect();
    policies.sort_by_key(|p| position(p.id()));
    let mut templates: Vec<_> = parsed.templates().collect();
    templates.sort_by_key(|t| position(t.id()));

    let mut set = PolicySet::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut duplicate = |id: &str, diagnostics: &mut Vec<Diagnostic>| {
        let count = seen.entry(id.to_owned()).or_insert(0);
        *count += 1;
        if *count > 1 {
            let offset = nth_annotation(text, id, *count);
            diagnostics.push(
                Diagnostic::error(format!("duplicate policy id {}: every @id must be unique", quote(id)))
                    .in_policy(id)
                    .at(text, offset),
            );
            return true;
        }
        false
    };
    for policy in policies {
        let id = policy.annotation("id").map_or_else(|| policy.id().to_string(), str::to_owned);
        if duplicate(&id, diagnostics) {
            continue;
        }
        if let Err(e) = set.add(policy.new_id(PolicyId::new(&id))) {
            diagnostics.push(Diagnostic::error(e.to_string()).in_policy(id));
        }
    }
    for template in templates {
        let id = template.annotation("id").map_or_else(|| template.id().to_string(), str::to_owned);
        if duplicate(&id, diagnostics) {
            continue;
        }
        diagnostics.push(
            Diagnostic::warning("templates are never linked on this node: this template never applies")
                .in_policy(&id),
        );
        if let Err(e) = set.add_template(template.new_id(PolicyId::new(&id))) {
            diagnostics.push(Diagnostic::error(e.to_string()).in_policy(id));
        }
    }
    set
}

/// The offset of the `n`-th `@id` annotation (1-based) whose value is `id`.
fn nth_annotation(text: &str, id: &str, n: usize) -> Option<usize> {
    let needle = cedar_string(id);
    let mut found = 0;
    let mut from = 0;
    while let Some(at) = text[from..].find("@id") {
        let start = from + at;
        let rest = text[start + 3..].trim_start();
        let rest = rest.strip_prefix('(').map(str::trim_start).unwrap_or_default();
        if rest.starts_with(&needle) {
            found += 1;
            if found == n {
                return Some(start);
            }
        }
        from = start + 3;
    }
    None
}

/// Errors for entity literals, anywhere in a policy (scope, `when`, `unless`), that can never
/// equal an entity the engine builds: a device id not in its canonical spelling, a scope or a
/// profile name outside its grammar, another Node or Anonymous id, an unknown role. Cedar
/// compares uids as text, so such a literal silently never matches: a forbid written with
/// the upper-case spelling of a device id would be accepted and never apply.
fn lint(set: &PolicySet, text: &str, diagnostics: &mut Vec<Diagnostic>) {
    let mut policies: Vec<&Policy> = set.policies().collect();
    policies.sort_by_key(|p| p.id().to_string());
    for policy in policies {
        let ast: &ast::Policy = policy.as_ref();
        let condition = ast.condition();
        let mut reported = std::collections::HashSet::new();
        for expr in condition.subexpressions() {
            let ast::ExprKind::Lit(ast::Literal::EntityUID(uid)) = expr.expr_kind() else { continue };
            let uid = EntityUid::from(uid.as_ref().clone());
            let Some(problem) = literal_problem(&uid) else { continue };
            // Scope constraints carry the location of the whole constraint, conditions that
            // of the literal; either way the first character of the literal is found from
            // there (or, without a location, its first occurrence in the text).
            let quoted = cedar_string(uid.id().unescaped());
            let from = expr.source_loc().map(|loc| loc.span.offset()).filter(|&at| at <= text.len());
            let offset = from
                .and_then(|at| text.get(at..).and_then(|rest| rest.find(&quoted)).map(|found| at + found))
                .or(from)
                .or_else(|| text.find(&quoted));
            if !reported.insert((uid.to_string(), offset)) {
                continue;
            }
            diagnostics.push(
                Diagnostic::error(format!("{uid} never matches: {problem}"))
                    .in_policy(policy.id().to_string())
                    .at(text, offset),
            );
        }
    }
}

/// Why an entity literal can never equal an entity the engine builds, if it cannot.
fn literal_problem(uid: &EntityUid) -> Option<String> {
    let id = uid.id().unescaped();
    match uid.type_name().to_string().as_str() {
        "Palyra::Device" => match DeviceId::parse(id) {
            Ok(device) if device.to_string() == id => None,
            Ok(device) => Some(format!("device ids are lower case: write Palyra::Device::\"{device}\"")),
            Err(e) => Some(e.to_string()),
        },
        "Palyra::Scope" => match Scope::parse(id) {
            Ok(scope) if scope.as_str() == id => None,
            Ok(scope) => Some(format!("scopes are written Palyra::Scope::{}", cedar_string(scope.as_str()))),
            Err(e) => Some(e.to_string()),
        },
        "Palyra::Profile" => crate::auth::ProfileName::parse(id).err().map(|e| e.to_string()),
        "Palyra::Node" => (id != NODE_ID).then(|| format!("this node is Palyra::Node::\"{NODE_ID}\"")),
        "Palyra::Anonymous" => (id != ANONYMOUS_ID)
            .then(|| format!("the anonymous principal is Palyra::Anonymous::\"{ANONYMOUS_ID}\"")),
        "Palyra::Role" => (!matches!(id, "admin" | "device" | "node"))
            .then(|| "roles are Palyra::Role::\"admin\", \"device\" and \"node\"".to_owned()),
        _ => None,
    }
}

/// A Cedar string literal of `s`.
pub(super) fn cedar_string(s: &str) -> String {
    format!("\"{}\"", s.escape_default())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{device, engine};
    use super::*;
    use crate::identity::{Principal, Role};
    use crate::policy::actions::*;
    use crate::policy::entities::Resource;
    use crate::policy::{DEFAULT_POLICIES, MAX_POLICY_TEXT_BYTES, PolicyError};

    #[test]
    fn diagnostics_locate_a_syntax_error() {
        let engine = engine();
        let text =
            "@id(\"ok\")\npermit (principal, action, resource);\n\npermit (principal, action resource);\n";
        let diagnostics = engine.validate(text);
        let first = diagnostics.first().cloned().unwrap_or_else(|| panic!("an error"));
        assert_eq!(first.severity, Severity::Error);
        assert_eq!((first.line, first.column), (4, 27), "{first}");
        assert_eq!(first.policy_id, None);
        assert!(!first.message.contains('\n'));
        assert!(matches!(engine.install(text, 2), Err(PolicyError::Invalid { .. })));
        assert_eq!(engine.active().0, 1, "an invalid set is not installed");
    }

    #[test]
    fn diagnostics_locate_a_schema_error() {
        let engine = engine();
        let text = "@id(\"fine\")\npermit (principal, action, resource);\n@id(\"typo\")\npermit (principal is Palyra::Device, action, resource)\nwhen { principal.nmae == \"x\" };\n";
        let diagnostics = engine.validate(text);
        let errors: Vec<&Diagnostic> = diagnostics.iter().filter(|d| d.severity == Severity::Error).collect();
        assert!(!errors.is_empty(), "{diagnostics:?}");
        let first = errors[0];
        assert_eq!(first.policy_id.as_deref(), Some("typo"));
        assert_eq!(first.line, 5, "{first}");
        assert!(first.column >= 8 && first.column <= 18, "{first}");
        assert!(first.message.contains("nmae"), "{first}");

        let unknown_action = "permit (principal, action == Palyra::Action::\"nope\", resource);";
        let d = engine.validate(unknown_action);
        assert!(d.iter().any(|d| d.severity == Severity::Error && d.line == 1 && d.column > 1), "{d:?}");
        let unknown_type = "\n  forbid (principal is Palyra::User, action, resource);";
        let d = engine.validate(unknown_type);
        assert!(d.iter().any(|d| d.severity == Severity::Error && d.line == 2 && d.column >= 24), "{d:?}");
    }

    #[test]
    fn policy_ids_come_from_annotations_and_must_be_unique() {
        let engine = engine();
        let text = "@id(\"a\") permit (principal, action, resource);\npermit (principal, action, resource);\n@id(\"a\") forbid (principal, action, resource);";
        let d = engine.validate(text);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].policy_id.as_deref(), Some("a"));
        assert_eq!((d[0].line, d[0].column), (3, 1));
        assert!(d[0].message.contains("duplicate policy id"));

        let ok = "permit (principal, action == Palyra::Action::\"node.health\", resource);\n@id(\"named\") permit (principal, action in Palyra::Action::\"public\", resource);";
        assert!(engine.install(ok, 2).is_ok());
        let d = engine.authorize(&Principal::Anonymous, &[], NODE_HEALTH, &Resource::Node, None);
        assert_eq!(d.determining_policies, vec!["policy0".to_owned()]);
        let d = engine.authorize(&Principal::Anonymous, &[], WHO_AM_I, &Resource::Node, None);
        assert_eq!(d.determining_policies, vec!["named".to_owned()]);
        assert_eq!(d.explanation, "permitted by named");
    }

    /// The position of the first occurrence of `needle` on its line, 1-based.
    fn position_of(text: &str, needle: &str, nth: usize) -> (u32, u32) {
        let offset =
            text.match_indices(needle).nth(nth).map(|(at, _)| at).unwrap_or_else(|| panic!("{needle}"));
        crate::policy::diagnostics::line_column(text, offset)
    }

    #[test]
    fn literals_that_can_never_match_are_errors_with_their_position() {
        let engine = engine();
        let id = DeviceId::generate();
        let (lower, upper) = (id.to_string(), id.to_string().to_uppercase());
        let overflow = format!("{}{}", char::from(lower.as_bytes()[0] + 8), &lower[1..]);
        // Every literal that compares as text and never equals what the engine builds: in a
        // principal or resource scope, an action list's neighbour, and `when`/`unless`.
        let cases = [
            (format!("forbid (principal == Palyra::Device::\"{upper}\", action, resource);"), upper.clone(), "lower case"),
            (format!("forbid (principal in Palyra::Device::\"{overflow}\", action, resource);"), overflow.clone(), "overflows"),
            (
                format!("forbid (principal, action, resource) when {{ principal == Palyra::Device::\"{upper}\" }};"),
                upper.clone(),
                "lower case",
            ),
            (
                format!("forbid (principal, action, resource is Palyra::Scope)\n  unless {{ resource has owner && resource.owner == Palyra::Device::\"{upper}\" }};"),
                upper.clone(),
                "lower case",
            ),
            (
                format!("forbid (principal, action, resource is Palyra::Scope) when {{ resource has owner && resource.owner == Palyra::Device::\"{upper}\" }};"),
                upper.clone(),
                "lower case",
            ),
            ("forbid (principal, action, resource == Palyra::Scope::\"Agents\");".to_owned(), "Agents".to_owned(), "invalid scope"),
            ("forbid (principal, action, resource in Palyra::Scope::\"palyra/\");".to_owned(), "palyra/".to_owned(), "invalid scope"),
            (
                "forbid (principal, action, resource) when { resource in [Palyra::Scope::\"a\", Palyra::Scope::\"a//b\"] };".to_owned(),
                "a//b".to_owned(),
                "invalid scope",
            ),
            ("forbid (principal, action, resource == Palyra::Node::\"remote\");".to_owned(), "remote".to_owned(), "Palyra::Node::\"local\""),
            ("forbid (principal == Palyra::Anonymous::\"bob\", action, resource);".to_owned(), "bob".to_owned(), "anonymous"),
            ("forbid (principal in Palyra::Role::\"Admin\", action, resource);".to_owned(), "Admin".to_owned(), "roles are"),
            ("forbid (principal, action, resource == Palyra::Profile::\"GitHub\");".to_owned(), "GitHub".to_owned(), "profile name"),
        ];
        for (policy, literal, want) in &cases {
            // A line of padding before, so that positions are checked past the first line.
            let text = format!("{DEFAULT_POLICIES}\n{policy}\n");
            let d = engine.validate(&text);
            let errors: Vec<&Diagnostic> = d.iter().filter(|d| d.severity == Severity::Error).collect();
            assert_eq!(errors.len(), 1, "{policy}: {d:?}");
            let e = errors[0];
            assert!(e.message.contains("never matches") && e.message.contains(want), "{policy}: {e}");
            let quoted = format!("\"{literal}\"");
            assert_eq!((e.line, e.column), position_of(&text, &quoted, 0), "{policy}: {e}");
            assert!(matches!(engine.install(&text, 2), Err(PolicyError::Invalid { .. })), "{policy}");
        }
        // The canonical spellings are fine, and the suggestion names it.
        let d =
            engine.validate(&format!("permit (principal == Palyra::Device::\"{upper}\", action, resource);"));
        assert!(d[0].message.contains(&format!("Palyra::Device::\"{lower}\"")), "{d:?}");
        let ok = format!(
            "permit (principal == Palyra::Device::\"{lower}\", action, resource in Palyra::Scope::\"devices/{lower}/x\") when {{ resource in Palyra::Scope::\"palyra\" || resource == Palyra::Profile::\"github\" }};"
        );
        assert!(engine.validate(&ok).is_empty(), "{:?}", engine.validate(&ok));
        assert_eq!(engine.active().0, 1);
    }

    #[test]
    fn oversized_policy_text_is_refused() {
        let engine = engine();
        let mut text = DEFAULT_POLICIES.to_owned();
        while text.len() <= MAX_POLICY_TEXT_BYTES {
            text.push_str("// padding padding padding padding padding padding padding padding\n");
        }
        let d = engine.validate(&text);
        assert_eq!(d.len(), 1);
        assert!(d[0].message.contains("limit is 1048576 bytes"), "{d:?}");
        assert!(matches!(engine.install(&text, 2), Err(PolicyError::Invalid { .. })));
        assert!(matches!(
            engine.would_lock_out(&text, &device(Role::Admin)),
            Err(PolicyError::Invalid { .. })
        ));
    }

    #[test]
    fn deeply_nested_text_gets_an_error_not_a_stack_overflow() {
        let engine = engine();
        // Run on a 2 MiB stack, like an async worker.
        let outcome = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let parens = format!(
                    "permit (principal, action, resource) when {{ {}true{} }};",
                    "(".repeat(10_000),
                    ")".repeat(10_000)
                );
                let ifs = format!(
                    "permit (principal, action, resource) when {{ {}true }};",
                    "if false then false else ".repeat(10_000)
                );
                let sums = format!(
                    "permit (principal, action, resource) when {{ {} == 0 }};",
                    vec!["1"; 100_000].join(" + ")
                );
                let mut found = Vec::new();
                for text in [parens, ifs, sums] {
                    let d = engine.validate(&text);
                    found.push(d.first().map(|d| (d.severity, d.line, d.message.clone())));
                    assert!(engine.install(&text, 2).is_err());
                }
                // Just inside the bounds: accepted, and deciding does not overflow either.
                let inside = format!(
                    "permit (principal, action, resource) when {{ {}true }};",
                    "if false then false else ".repeat(500)
                );
                let accepted = engine.install(&inside, 3).is_ok();
                let decision = engine.authorize(&Principal::Anonymous, &[], WHO_AM_I, &Resource::Node, None);
                (found, accepted, decision)
            })
            .map_err(|e| e.to_string())
            .and_then(|h| h.join().map_err(|_| "panicked".to_owned()));
        let (found, accepted, decision) = outcome.unwrap_or_else(|e| panic!("{e}"));
        for (d, want) in found.iter().zip(["brackets nest deeper", "operators", "operators"]) {
            let (severity, line, message) = d.clone().unwrap_or_else(|| panic!("an error for {want}"));
            assert_eq!((severity, line), (Severity::Error, 1));
            assert!(message.contains(want), "{message}");
        }
        assert!(accepted);
        // Whether Cedar evaluates 500 nested ifs or reports its recursion limit, it denies
        // nothing it should allow: WhoAmI has no other policy now.
        assert!(decision.allow || !decision.errors.is_empty(), "{decision:?}");
    }
}
