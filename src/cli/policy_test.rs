//! `palyra policy test CASES.toml [--policies FILE]`: a policy set checked against expected
//! decisions, offline (no node): the same engine, schema and entities the node uses.
//!
//! A cases file holds `[[device]]` tables (the devices the cases name: `id`, `role`, optional
//! `name`, `granted` scopes and `status`) and `[[case]]` tables: `name`, `principal`,
//! `action`, `resource`, optional `context` (a JSON object, as a string or an inline table),
//! `expect = "allow"|"deny"`, optional `policies = [ids]`: then the determining policies must
//! be exactly those (the permits of an allow, the forbids of an explicit deny; `[]` is a
//! default deny, no policy permitted). Everything is parsed and checked before any case runs;
//! a malformed file is exit 2 with its file and line, a failing case exit 1.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::output::{CliError, Context, Exit};
use crate::identity::{DeviceId, DeviceStatus, Role};
use crate::policy::{
    EntityRef, MAX_POLICY_TEXT_BYTES, PolicyEngine, PolicyError, Resource, Subject, parse_action_ref,
    parse_entity_ref,
};
use crate::vault::Scope;

/// Largest cases file read.
pub(super) const MAX_CASES_BYTES: u64 = 1024 * 1024;
/// Most cases (and most devices) in one file.
const MAX_CASES: usize = 10_000;
/// Largest `context` of one case.
const MAX_CONTEXT_BYTES: usize = 64 * 1024;

/// `palyra policy test`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  palyra policy test src/policy/default.cases.toml --policies my.cedar")]
pub(super) struct TestArgs {
    /// The cases file (TOML: [[device]] and [[case]] tables).
    cases: PathBuf,
    /// The Cedar policy file to test [default: the default policies as shipped].
    #[arg(long, value_name = "FILE")]
    policies: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    #[serde(default)]
    device: Vec<Spanned<DeviceDecl>>,
    #[serde(default)]
    case: Vec<Spanned<CaseDecl>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceDecl {
    id: Spanned<String>,
    role: Spanned<String>,
    name: Option<Spanned<String>>,
    #[serde(default)]
    granted: Vec<Spanned<String>>,
    status: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseDecl {
    name: Spanned<String>,
    principal: Spanned<String>,
    action: Spanned<String>,
    resource: Spanned<String>,
    context: Option<Spanned<toml::Value>>,
    expect: Spanned<String>,
    policies: Option<Vec<String>>,
}

/// A declared device, checked.
#[derive(Debug)]
struct TestDevice {
    id: DeviceId,
    role: Role,
    name: String,
    status: DeviceStatus,
    granted: Vec<Scope>,
}

#[derive(Debug)]
enum Who {
    Anonymous,
    Device(usize),
}

/// A case, checked.
#[derive(Debug)]
struct Case {
    name: String,
    line: usize,
    principal: Who,
    action: &'static str,
    resource: Resource,
    context: Option<serde_json::Value>,
    allow: bool,
    policies: Option<BTreeSet<String>>,
}

/// A cases file, checked.
#[derive(Debug)]
pub(super) struct Cases {
    path: PathBuf,
    devices: Vec<TestDevice>,
    cases: Vec<Case>,
}

/// What one case gave.
#[derive(Debug, Serialize)]
pub(super) struct Outcome {
    name: String,
    pub(super) ok: bool,
    expect: &'static str,
    decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected_policies: Option<Vec<String>>,
    determining_policies: Vec<String>,
    errors: Vec<String>,
    explanation: String,
}

fn word(allow: bool) -> &'static str {
    if allow { "allow" } else { "deny" }
}

/// The line of each offset of one text, from its newlines found once (a line per case of a
/// large file would otherwise re-count from the start every time).
pub(super) struct LineIndex(Vec<usize>);

impl LineIndex {
    pub(super) fn new(text: &str) -> Self {
        LineIndex(text.bytes().enumerate().filter(|(_, b)| *b == b'\n').map(|(i, _)| i).collect())
    }

    pub(super) fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&newline| newline < offset) + 1
    }
}

/// Reads a file of at most `max` bytes as UTF-8; errors name it (exit 2: an input the user gave).
pub(super) fn read_bounded(path: &Path, max: u64, what: &str) -> Result<String, CliError> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| CliError::of(Exit::Usage, format!("cannot read {what} {}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CliError::of(Exit::Usage, format!("cannot read {what} {}: {e}", path.display())))?;
    if bytes.len() as u64 > max {
        return Err(CliError::of(
            Exit::Usage,
            format!("{what} {} is larger than {max} bytes", path.display()),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| CliError::of(Exit::Usage, format!("{what} {} is not UTF-8", path.display())))
}

impl Cases {
    /// Reads and checks `path`: every device and case, before any runs.
    pub(super) fn load(path: &Path) -> Result<Cases, CliError> {
        let text = read_bounded(path, MAX_CASES_BYTES, "cases file")?;
        Cases::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<Cases, CliError> {
        let lines = LineIndex::new(text);
        let at = |offset: usize, message: String| {
            CliError::of(Exit::Usage, format!("{}:{}: {message}", path.display(), lines.line(offset)))
        };
        let file: CasesFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| lines.line(s.start)).unwrap_or(0);
            let message = e.message().trim().to_owned();
            CliError::of(Exit::Usage, format!("{}:{line}: {message}", path.display()))
        })?;
        if file.device.len() > MAX_CASES || file.case.len() > MAX_CASES {
            return Err(at(0, format!("more than {MAX_CASES} cases or devices")));
        }
        let mut devices = Vec::with_capacity(file.device.len());
        let mut by_key: HashMap<String, usize> = HashMap::new();
        for decl in &file.device {
            let start = decl.span().start;
            let decl = decl.get_ref();
            let id = DeviceId::parse(decl.id.get_ref())
                .map_err(|e| at(decl.id.span().start, format!("device id {:?}: {e}", decl.id.get_ref())))?;
            let role =
                decl.role.get_ref().parse::<Role>().map_err(|e| at(decl.role.span().start, e.to_string()))?;
            let status = match decl.status.as_ref().map(|s| (s.get_ref().as_str(), s.span().start)) {
                None | Some(("active", _)) => DeviceStatus::Active,
                Some(("revoked", _)) => DeviceStatus::Revoked,
                Some((other, offset)) => {
                    return Err(at(offset, format!("unknown status {other:?}: use active or revoked")));
                }
            };
            let mut granted = Vec::with_capacity(decl.granted.len());
            for scope in &decl.granted {
                granted.push(
                    Scope::parse(scope.get_ref())
                        .map_err(|e| at(scope.span().start, format!("granted scope: {e}")))?,
                );
            }
            let name = decl.name.as_ref().map(|n| n.get_ref().clone()).unwrap_or_default();
            let index = devices.len();
            for key in [id.to_string(), name.clone()] {
                if key.is_empty() {
                    continue;
                }
                if by_key.insert(key.clone(), index).is_some() {
                    return Err(at(start, format!("device {key:?} is declared twice")));
                }
            }
            devices.push(TestDevice { id, role, name, status, granted });
        }
        let device_named = |text: &str| -> Option<usize> {
            let text = text.trim();
            by_key
                .get(text)
                .copied()
                .or_else(|| DeviceId::parse(text).ok().and_then(|id| by_key.get(&id.to_string()).copied()))
        };
        let mut cases = Vec::with_capacity(file.case.len());
        let mut names = BTreeSet::new();
        for decl in &file.case {
            let line = lines.line(decl.span().start);
            let decl = decl.get_ref();
            let name = decl.name.get_ref().clone();
            if name.is_empty() || !names.insert(name.clone()) {
                return Err(at(decl.name.span().start, format!("case name {name:?} is empty or used twice")));
            }
            let field =
                |s: &Spanned<String>, e: PolicyError| at(s.span().start, format!("case {name:?}: {e}"));
            let principal_text = decl.principal.get_ref().trim();
            let principal = if principal_text == "anonymous" {
                Who::Anonymous
            } else if let Some(index) = device_named(principal_text) {
                Who::Device(index)
            } else if !principal_text.contains("::") {
                return Err(at(
                    decl.principal.span().start,
                    format!(
                        "case {name:?}: unknown principal {principal_text:?}: use \"anonymous\", the name or id of a [[device]], or an entity uid"
                    ),
                ));
            } else {
                match parse_entity_ref(principal_text).map_err(|e| field(&decl.principal, e))? {
                    EntityRef::Anonymous => Who::Anonymous,
                    EntityRef::Device(id) => {
                        let Some(index) = by_key.get(&id.to_string()) else {
                            return Err(at(
                                decl.principal.span().start,
                                format!(
                                    "case {name:?}: device {id} is not declared: add a [[device]] with its id and role"
                                ),
                            ));
                        };
                        Who::Device(*index)
                    }
                    _ => {
                        return Err(at(
                            decl.principal.span().start,
                            format!(
                                "case {name:?}: a principal is \"anonymous\", a declared device's name or id, or Palyra::Device::\"<id>\""
                            ),
                        ));
                    }
                }
            };
            let action_text = decl.action.get_ref().trim();
            let action_uid = if action_text.starts_with("Palyra::Action::") {
                action_text.to_owned()
            } else {
                format!("Palyra::Action::{action_text:?}")
            };
            let action = parse_action_ref(&action_uid).map_err(|e| field(&decl.action, e))?;
            let resource_text = decl.resource.get_ref().trim();
            let resource = match device_named(resource_text) {
                Some(index) => Resource::Device(devices[index].id),
                None if !resource_text.contains("::") => {
                    return Err(at(
                        decl.resource.span().start,
                        format!(
                            "case {name:?}: unknown resource {resource_text:?}: use an entity uid such as Palyra::Scope::\"a/b\", or a [[device]]'s name"
                        ),
                    ));
                }
                None => match parse_entity_ref(resource_text).map_err(|e| field(&decl.resource, e))? {
                    EntityRef::Node => Resource::Node,
                    EntityRef::Scope(scope) => Resource::Scope(scope),
                    EntityRef::Device(id) => Resource::Device(id),
                    EntityRef::Profile(profile) => Resource::Profile(profile),
                    EntityRef::Anonymous => {
                        return Err(at(
                            decl.resource.span().start,
                            format!("case {name:?}: the anonymous principal is not a resource"),
                        ));
                    }
                },
            };
            let context = match &decl.context {
                None => None,
                Some(value) => {
                    let offset = value.span().start;
                    let json = match value.get_ref() {
                        toml::Value::String(s) if s.len() > MAX_CONTEXT_BYTES => {
                            return Err(at(
                                offset,
                                format!("case {name:?}: context larger than {MAX_CONTEXT_BYTES} bytes"),
                            ));
                        }
                        toml::Value::String(s) => serde_json::from_str::<serde_json::Value>(s)
                            .map_err(|e| at(offset, format!("case {name:?}: context is not JSON: {e}")))?,
                        other => serde_json::to_value(other)
                            .map_err(|e| at(offset, format!("case {name:?}: context: {e}")))?,
                    };
                    if !json.is_object() {
                        return Err(at(offset, format!("case {name:?}: context must be a JSON object")));
                    }
                    Some(json)
                }
            };
            let allow = match decl.expect.get_ref().as_str() {
                "allow" => true,
                "deny" => false,
                other => {
                    return Err(at(
                        decl.expect.span().start,
                        format!("case {name:?}: expect = {other:?}: use \"allow\" or \"deny\""),
                    ));
                }
            };
            let policies = decl.policies.as_ref().map(|ids| ids.iter().cloned().collect());
            cases.push(Case { name, line, principal, action, resource, context, allow, policies });
        }
        if cases.is_empty() {
            return Err(at(0, "no [[case]] tables".to_owned()));
        }
        Ok(Cases { path: path.to_path_buf(), devices, cases })
    }

    /// Runs every case against `engine`. A case the engine finds invalid (an action that does
    /// not apply to the resource's kind, a context the schema refuses) is a malformed file.
    pub(super) fn run(&self, engine: &PolicyEngine) -> Result<Vec<Outcome>, CliError> {
        let mut outcomes = Vec::with_capacity(self.cases.len());
        for case in &self.cases {
            let subject = match case.principal {
                Who::Anonymous => Subject::Anonymous,
                Who::Device(index) => {
                    let d = &self.devices[index];
                    Subject::Device {
                        id: d.id,
                        role: d.role,
                        name: &d.name,
                        fingerprint: "",
                        status: d.status,
                        granted: &d.granted,
                    }
                }
            };
            let decision = engine.evaluate(&subject, case.action, &case.resource, case.context.as_ref());
            let invalid = !decision.allow
                && decision.determining_policies.is_empty()
                && decision.errors.len() == 1
                && decision.errors[0] == decision.explanation;
            if invalid {
                return Err(CliError::of(
                    Exit::Usage,
                    format!(
                        "{}:{}: case {:?}: {}",
                        self.path.display(),
                        case.line,
                        case.name,
                        decision.explanation
                    ),
                ));
            }
            let determining: BTreeSet<String> = decision.determining_policies.iter().cloned().collect();
            let ok = decision.allow == case.allow
                && case.policies.as_ref().is_none_or(|want| *want == determining);
            outcomes.push(Outcome {
                name: case.name.clone(),
                ok,
                expect: word(case.allow),
                decision: word(decision.allow),
                expected_policies: case.policies.as_ref().map(|p| p.iter().cloned().collect()),
                determining_policies: decision.determining_policies,
                errors: decision.errors,
                explanation: decision.explanation,
            });
        }
        Ok(outcomes)
    }
}

/// The engine for `--policies FILE` (or the defaults); an invalid file is exit 2 with its
/// diagnostics as `FILE:line:column: message`.
pub(super) fn engine_for(path: Option<&Path>) -> Result<PolicyEngine, CliError> {
    let Some(path) = path else {
        return PolicyEngine::with_defaults().map_err(|e| CliError::new(e.to_string()));
    };
    let text = read_bounded(path, MAX_POLICY_TEXT_BYTES as u64, "policy file")?;
    PolicyEngine::with_policies(&text, 1).map_err(|e| match e {
        PolicyError::Invalid { diagnostics } => {
            let lines: Vec<String> = diagnostics
                .iter()
                .filter(|d| d.severity == crate::policy::Severity::Error)
                .map(|d| format!("{}:{}:{}: {}", path.display(), d.line, d.column, d.message))
                .collect();
            CliError::of(Exit::Usage, format!("{} is not valid:\n{}", path.display(), lines.join("\n")))
        }
        other => CliError::new(other.to_string()),
    })
}

/// The human report of one case: `ok   name`, or `FAIL name: ...` and what decided, diff-like.
fn report(o: &Outcome) -> String {
    if o.ok {
        return format!("ok   {}", o.name);
    }
    let decided = |ids: &[String]| {
        if ids.is_empty() && o.explanation.starts_with("no policy permits") {
            "no policy permitted".to_owned()
        } else if ids.is_empty() {
            // Decided before any policy: a revoked device.
            o.explanation.clone()
        } else if o.decision == "allow" {
            format!("permitted by {}", ids.join(", "))
        } else {
            format!("forbidden by {}", ids.join(", "))
        }
    };
    let mut text = if o.expect != o.decision {
        format!("FAIL {}: expected {}, got {}", o.name, o.expect, o.decision)
    } else {
        format!("FAIL {}: {} as expected, but not by the expected policies", o.name, o.decision)
    };
    text.push_str(&format!("\n       {}", decided(&o.determining_policies)));
    if let Some(want) = &o.expected_policies {
        let got: BTreeSet<&String> = o.determining_policies.iter().collect();
        let want_set: BTreeSet<&String> = want.iter().collect();
        for id in want_set.difference(&got) {
            text.push_str(&format!("\n     - {id} (expected to decide, did not)"));
        }
        for id in got.difference(&want_set) {
            text.push_str(&format!("\n     + {id} (decided, not expected)"));
        }
    }
    for error in &o.errors {
        text.push_str(&format!("\n       evaluation error: {error}"));
    }
    text
}

/// Prints the outcomes (one line a case, or JSON); an error (exit 1) when any failed.
pub(super) fn print(ctx: &Context, cases: &Path, outcomes: &[Outcome]) -> Result<(), CliError> {
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    #[derive(Serialize)]
    struct Out<'a> {
        passed: usize,
        failed: usize,
        cases: &'a [Outcome],
    }
    ctx.print(&Out { passed: outcomes.len() - failed, failed, cases: outcomes }, || {
        let mut lines: Vec<String> = outcomes.iter().map(report).collect();
        lines.push(format!(
            "{}: {} cases, {} passed, {failed} failed",
            cases.display(),
            outcomes.len(),
            outcomes.len() - failed
        ));
        lines.join("\n")
    })?;
    if failed == 0 { Ok(()) } else { Err(CliError::status(Exit::Failure.code())) }
}

/// `palyra policy test`.
pub(super) fn run(ctx: &Context, args: TestArgs) -> Result<(), CliError> {
    let cases = Cases::load(&args.cases)?;
    let engine = engine_for(args.policies.as_deref())?;
    let outcomes = cases.run(&engine)?;
    print(ctx, &args.cases, &outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_index_counts_like_the_text() {
        let text = "a\n\nbc\nd";
        let index = LineIndex::new(text);
        for offset in 0..=text.len() {
            let naive = text.as_bytes()[..offset].iter().filter(|b| **b == b'\n').count() + 1;
            assert_eq!(index.line(offset), naive, "{offset}");
        }
    }

    fn parse(text: &str) -> Result<Cases, CliError> {
        Cases::parse(text, Path::new("cases.toml"))
    }

    #[test]
    fn the_shipped_cases_pass_against_the_defaults() {
        let cases = parse(include_str!("../policy/default.cases.toml")).unwrap_or_else(|e| panic!("{e}"));
        let engine = engine_for(None).unwrap_or_else(|e| panic!("{e}"));
        let outcomes = cases.run(&engine).unwrap_or_else(|e| panic!("{e}"));
        assert!(outcomes.len() >= 10);
        for o in &outcomes {
            assert!(o.ok, "{}", report(o));
        }
    }

    #[test]
    fn malformed_files_name_the_line() {
        let dev = "[[device]]\nid = \"01J00000000000000000000000\"\nrole = \"device\"\n";
        let good = "[[case]]\nname = \"a\"\nprincipal = \"anonymous\"\naction = \"grpc.health.v1.Health/Check\"\nresource = 'Palyra::Node::\"local\"'\nexpect = \"allow\"\n";
        assert!(parse(good).is_ok());
        for (text, line, want) in [
            (good.replace("expect = \"allow\"", "expect = \"yes\""), 6, "use \"allow\" or \"deny\""),
            (good.replace("name = \"a\"", "nam = \"a\""), 2, "unknown field"),
            (good.replace("Health/Check", "Health/Nope"), 4, "unknown action"),
            (good.replace("\"anonymous\"", "\"laptop\""), 3, "principal"),
            (
                format!(
                    "{dev}{}",
                    good.replace("\"anonymous\"", "'Palyra::Device::\"01J00000000000000000000001\"'")
                ),
                6,
                "not declared",
            ),
            (format!("{dev}{}", good.replace("expect", "context = \"[1]\"\nexpect")), 9, "JSON object"),
            (dev.replace("device\"", "root\""), 3, "unknown role"),
            ("[[case]\n".to_owned(), 1, "cases.toml:1"),
            (String::new(), 1, "no [[case]]"),
        ] {
            let e = parse(&text).map(|_| ()).err().unwrap_or_else(|| panic!("accepted: {text}"));
            assert_eq!(e.exit_code(), 2, "{e}");
            assert!(e.message.contains(&format!("cases.toml:{line}:")), "{line}: {e}");
            assert!(e.message.contains(want), "{want}: {e}");
        }
        // Valid TOML, but the action does not apply to that kind of resource: found when run.
        let wrong_kind = good.replace("Palyra::Node::\"local\"", "Palyra::Scope::\"a\"");
        let e = parse(&wrong_kind).and_then(|c| c.run(&engine_for(None)?)).map(|_| ()).err();
        assert!(e.is_some_and(|e| e.exit_code() == 2 && e.message.contains("cases.toml:1:")));
    }

    #[test]
    fn a_failure_says_which_policy_decided() {
        let text = r#"
[[device]]
id = "01J00000000000000000000000"
role = "admin"
name = "op"

[[case]]
name = "admin may not read palyra/"
principal = "op"
action = "palyra.vault.v1.VaultService/GetSecret"
resource = 'Palyra::Scope::"palyra/auth/x"'
expect = "allow"

[[case]]
name = "anonymous lists devices"
principal = "anonymous"
action = "palyra.identity.v1.IdentityService/ListDevices"
resource = 'Palyra::Node::"local"'
expect = "allow"

[[case]]
name = "admin reads by the wrong policy"
principal = "op"
action = "palyra.vault.v1.VaultService/GetSecret"
resource = 'Palyra::Scope::"a"'
expect = "allow"
policies = ["public"]
"#;
        let outcomes = parse(text).and_then(|c| c.run(&engine_for(None)?)).unwrap_or_else(|e| panic!("{e}"));
        let reports: Vec<String> = outcomes.iter().map(report).collect();
        assert!(outcomes.iter().all(|o| !o.ok));
        assert!(
            reports[0].contains("expected allow, got deny")
                && reports[0].contains("forbidden by auth-reserved-scope"),
            "{}",
            reports[0]
        );
        assert!(reports[1].contains("no policy permitted"), "{}", reports[1]);
        assert!(reports[2].contains("- public") && reports[2].contains("+ admin-all"), "{}", reports[2]);
    }
}
