//! Validation diagnostics: what is wrong with a policy text, and where (1-based line and
//! column), plus the bounds checked before Cedar sees any text.
//!
//! Cedar reports positions as byte spans (miette labels) into the text it parsed; this module
//! turns them into lines and columns (in characters). It does not parse Cedar itself: the
//! pre-checks only scan brackets, strings and comments.

use std::fmt;

/// Largest policy text accepted (1 MiB).
pub const MAX_POLICY_TEXT_BYTES: usize = 1024 * 1024;
/// Deepest nesting of brackets (`(`, `[`, `{`) accepted. Cedar's parser recurses about ten
/// frames per level; legitimate policies stay far below this.
pub const MAX_NESTING: usize = 64;
/// Most operators (`&&`, `+`, `.`, `if`, `in`, …) in one policy. Each can add a level to the
/// expression tree, which Cedar walks recursively; this keeps every walk shallow.
pub const MAX_OPERATORS: usize = 2000;

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    /// The policy set is rejected.
    Error,
    /// Accepted, but likely not what was meant.
    Warning,
}

/// One problem found in a policy text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong, in one line.
    pub message: String,
    /// The policy it concerns (its `@id`, or `policy<N>`); `None` for the whole text.
    pub policy_id: Option<String>,
    /// 1-based line; 0 when unknown.
    pub line: u32,
    /// 1-based column in characters; 0 when unknown.
    pub column: u32,
}

impl Diagnostic {
    pub(crate) fn error(message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Error, message: message.into(), policy_id: None, line: 0, column: 0 }
    }

    pub(crate) fn warning(message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(message) }
    }

    pub(crate) fn at(mut self, text: &str, offset: Option<usize>) -> Self {
        if let Some(offset) = offset {
            (self.line, self.column) = line_column(text, offset);
        }
        self
    }

    pub(crate) fn in_policy(mut self, id: impl Into<String>) -> Self {
        self.policy_id = Some(id.into());
        self
    }

    /// From a Cedar error or warning: its message (and help), the start of its first label.
    pub(crate) fn from_cedar(severity: Severity, d: &dyn miette::Diagnostic, text: &str) -> Self {
        let mut message = one_line(&d.to_string());
        if let Some(help) = d.help() {
            message.push_str("; help: ");
            message.push_str(&one_line(&help.to_string()));
        }
        let offset = d.labels().and_then(|mut labels| labels.next()).map(|l| l.offset());
        Diagnostic { severity, message, policy_id: None, line: 0, column: 0 }.at(text, offset)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{severity}")?;
        if self.line > 0 {
            write!(f, " at {}:{}", self.line, self.column)?;
        }
        if let Some(id) = &self.policy_id {
            write!(f, " in policy {id:?}")?;
        }
        write!(f, ": {}", self.message)
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The 1-based line and character column of a byte offset (clamped into the text).
pub(crate) fn line_column(text: &str, offset: usize) -> (u32, u32) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    let column = before[line_start..].chars().count() + 1;
    (u32::try_from(line).unwrap_or(u32::MAX), u32::try_from(column).unwrap_or(u32::MAX))
}

/// The checks made before Cedar parses anything: size, bracket nesting, operators per policy.
pub(crate) fn precheck(text: &str) -> Option<Diagnostic> {
    if text.len() > MAX_POLICY_TEXT_BYTES {
        return Some(Diagnostic::error(format!(
            "the policy text is {} bytes; the limit is {MAX_POLICY_TEXT_BYTES} bytes (1 MiB)",
            text.len()
        )));
    }
    let (offset, message) = match scan(text)? {
        Excess::Nesting(offset) => {
            (offset, format!("brackets nest deeper than {MAX_NESTING} levels; simplify the expression"))
        }
        Excess::Operators(offset) => (
            offset,
            format!("a policy has more than {MAX_OPERATORS} operators; split it or use a set with `in`"),
        ),
    };
    Some(Diagnostic::error(message).at(text, Some(offset)))
}

/// What [`scan`] found too much of, and where.
#[derive(Debug, PartialEq, Eq)]
enum Excess {
    Nesting(usize),
    Operators(usize),
}

/// Finds the first bracket that opens level `MAX_NESTING + 1`, or the operator that makes a
/// policy (text up to a `;` outside brackets) exceed `MAX_OPERATORS`. Skips string literals
/// and `//` comments; counts words only when whole (`is_admin` is not `is`).
fn scan(text: &str) -> Option<Excess> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut operators = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let at = i;
        let mut operator = false;
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(Excess::Nesting(at));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b';' if depth == 0 => operators = 0,
            b'&' | b'|' | b'=' | b'!' | b'<' | b'>' => {
                // Two-character operators count once.
                if matches!(bytes.get(i + 1), Some(b'&' | b'|' | b'=')) {
                    i += 1;
                }
                operator = true;
            }
            b'+' | b'-' | b'*' | b'.' => operator = true,
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i + 1 < bytes.len() && (bytes[i + 1].is_ascii_alphanumeric() || bytes[i + 1] == b'_') {
                    i += 1;
                }
                operator = matches!(&bytes[at..=i], b"if" | b"in" | b"has" | b"like" | b"is");
            }
            _ => {}
        }
        if operator {
            operators += 1;
            if operators > MAX_OPERATORS {
                return Some(Excess::Operators(at));
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_are_one_based_in_characters() {
        let text = "ab\ncdé\nf";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 1), (1, 2));
        assert_eq!(line_column(text, 3), (2, 1));
        // 'é' is two bytes; the character after it is column 4.
        assert_eq!(line_column(text, 7), (2, 4));
        // Inside 'é': rounded down to its start.
        assert_eq!(line_column(text, 6), (2, 3));
        assert_eq!(line_column(text, 8), (3, 1));
        assert_eq!(line_column(text, 999), (3, 2));
    }

    #[test]
    fn nesting_ignores_strings_and_comments() {
        let deep = "(".repeat(MAX_NESTING + 1);
        assert_eq!(scan(&deep), Some(Excess::Nesting(MAX_NESTING)));
        assert_eq!(scan(&"(".repeat(MAX_NESTING)), None);
        assert_eq!(scan(&format!("\"{deep}\"")), None);
        assert_eq!(scan(&format!("\"\\\"{deep}\"")), None);
        assert_eq!(scan(&format!("// {deep}\n")), None);
        assert_eq!(scan(&format!("// x\n{deep}")), Some(Excess::Nesting(5 + MAX_NESTING)));
        assert_eq!(scan(&"()".repeat(10_000)), None);
    }

    #[test]
    fn operators_are_counted_per_policy() {
        let chain = |n: usize| vec!["principal.name"; n].join(" && ");
        // n terms: n dots and n - 1 `&&`.
        let at_limit = chain(MAX_OPERATORS / 2);
        assert_eq!(scan(&format!("{at_limit};")), None);
        assert_eq!(scan(&format!("{at_limit}; {at_limit};")), None, "the count restarts after `;`");
        assert!(matches!(scan(&format!("{at_limit} + 1 + 1")), Some(Excess::Operators(_))));
        let words = vec!["x is y"; MAX_OPERATORS + 1].join(",");
        assert!(matches!(scan(&words), Some(Excess::Operators(_))));
        let not_words = vec!["is_x island iff"; MAX_OPERATORS + 1].join(",");
        assert_eq!(scan(&not_words), None);
        let in_strings = format!("\"{}\"", "&&".repeat(MAX_OPERATORS + 1));
        assert_eq!(scan(&in_strings), None);
        // `;` inside brackets does not end a policy.
        let inside = format!("({at_limit};{at_limit})");
        assert!(matches!(scan(&inside), Some(Excess::Operators(_))));
    }

    #[test]
    fn oversized_text_is_refused() {
        let text = " ".repeat(MAX_POLICY_TEXT_BYTES + 1);
        let d = precheck(&text);
        assert!(d.is_some_and(|d| d.severity == Severity::Error && d.message.contains("1 MiB")));
        assert!(precheck(&" ".repeat(MAX_POLICY_TEXT_BYTES)).is_none());
    }
}
