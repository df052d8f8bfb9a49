//! Dotenv text (`.env` files) into `(NAME, value)` pairs, with the quoting rules of the common
//! dotenv tools.
//!
//! - `NAME=value` and `export NAME=value`; NAME is `[A-Za-z_][A-Za-z0-9_]*`; spaces around `=`
//!   are allowed.
//! - Blank lines and lines whose first non-blank character is `#` are skipped.
//! - Unquoted values end at the end of the line or at a `#` that starts the value or follows a
//!   blank (a comment); surrounding blanks are trimmed.
//! - `'single quoted'` values are taken literally and may span lines.
//! - `"double quoted"` values may span lines and know the escapes `\n`, `\r`, `\t`, `\"`, `\\`
//!   and `\$` (any other backslash is kept as is).
//! - After a closing quote only blanks and a comment may follow.
//! - Nothing is expanded (`$VAR` and `${VAR}` stay as written).
//!
//! Values may be secrets: they live in zeroizing buffers and errors name the line and the
//! variable, never a value. Bounded: at most [`MAX_DOTENV_LEN`] bytes.

use zeroize::Zeroizing;

/// Largest dotenv text read, in bytes.
pub const MAX_DOTENV_LEN: usize = 1024 * 1024;
/// Longest variable name, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// Why dotenv text was refused: the 1-based line and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct DotenvError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong (names the variable, never its value).
    pub reason: String,
}

/// One `NAME=value` line.
pub struct Entry {
    /// The variable's name.
    pub name: String,
    /// Its value, unquoted and unescaped.
    pub value: Zeroizing<String>,
    /// 1-based line it starts on.
    pub line: usize,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Entry({} at line {}, value redacted)", self.name, self.line)
    }
}

/// Valid shell-style variable name: `[A-Za-z_][A-Za-z0-9_]*`, bounded.
pub fn is_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= MAX_NAME_LEN
}

/// Parses dotenv text into its entries, in file order (a name given twice appears twice; the
/// caller decides, usually the last one wins).
pub fn parse(text: &str) -> Result<Vec<Entry>, DotenvError> {
    if text.len() > MAX_DOTENV_LEN {
        return Err(DotenvError { line: 1, reason: format!("more than {MAX_DOTENV_LEN} bytes") });
    }
    let mut entries = Vec::new();
    let mut rest = text;
    let mut line = 1;
    while !rest.is_empty() {
        let (current, after) = split_line(rest);
        let trimmed = current.trim_matches(is_blank);
        if trimmed.is_empty() || trimmed.starts_with('#') {
            rest = after;
            line += 1;
            continue;
        }
        let err = |reason: String| DotenvError { line, reason };
        let body = trimmed.strip_prefix("export").filter(|b| b.starts_with(is_blank)).unwrap_or(trimmed);
        let body = body.trim_start_matches(is_blank);
        let Some((name, value_start)) = body.split_once('=') else {
            return Err(err("expected NAME=value".to_owned()));
        };
        let name = name.trim_end_matches(is_blank);
        if !is_name(name) {
            // Not quoted: a line that is not NAME=value may be a value itself.
            return Err(err("the text before '=' is not a variable name ([A-Za-z_][A-Za-z0-9_]*)".to_owned()));
        }
        let value_start = value_start.trim_start_matches(is_blank);
        // The value from its first byte to the end of the text: a quoted value may run on.
        let value_text = &rest[offset_in(rest, value_start)..];
        let (value, consumed) = match value_start.chars().next() {
            Some(q @ ('"' | '\'')) => quoted(&value_text[1..], q)
                .map(|(v, used)| (v, used + 1))
                .ok_or_else(|| err(format!("the value of {name} has no closing {q}")))?,
            _ => {
                let end = comment_start(value_start).unwrap_or(value_start.len());
                let value = Zeroizing::new(value_start[..end].trim_end_matches(is_blank).to_owned());
                (value, value_start.len())
            }
        };
        // What follows a quoted value on its (last) line: blanks, then an optional comment.
        let after_value = &value_text[consumed..];
        let (tail, next) = split_line(after_value);
        let tail = tail.trim_matches(is_blank);
        if !tail.is_empty() && !tail.starts_with('#') {
            return Err(err(format!("unexpected text after the quoted value of {name}")));
        }
        entries.push(Entry { name: name.to_owned(), value, line });
        line += value_text[..consumed].bytes().filter(|&b| b == b'\n').count() + 1;
        rest = next;
    }
    Ok(entries)
}

/// Where `inner`, a slice of `outer`, starts in it.
fn offset_in(outer: &str, inner: &str) -> usize {
    (inner.as_ptr() as usize).saturating_sub(outer.as_ptr() as usize)
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// The first line of `text` (without `\n` or `\r\n`) and everything after its newline.
fn split_line(text: &str) -> (&str, &str) {
    let (line, rest) = match text.find('\n') {
        Some(at) => (&text[..at], &text[at + 1..]),
        None => (text, ""),
    };
    (line.strip_suffix('\r').unwrap_or(line), rest)
}

/// Where an unquoted value's comment starts: a `#` after a blank.
fn comment_start(value: &str) -> Option<usize> {
    if value.starts_with('#') {
        return Some(0);
    }
    value.char_indices().find(|&(i, c)| c == '#' && value[..i].ends_with(is_blank)).map(|(i, _)| i)
}

/// A quoted value starting just after its opening quote `q`: the value and how many bytes it
/// used, closing quote included; `None` when it never closes.
fn quoted(text: &str, q: char) -> Option<(Zeroizing<String>, usize)> {
    let mut value = Zeroizing::new(String::new());
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c == q => return Some((value, i + 1)),
            '\\' if q == '"' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, 'r')) => value.push('\r'),
                Some((_, 't')) => value.push('\t'),
                Some((_, e @ ('"' | '\\' | '$'))) => value.push(e),
                Some((_, other)) => {
                    value.push('\\');
                    value.push(other);
                }
                None => return None,
            },
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(String, String, usize)> {
        parse(text)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|e| (e.name, e.value.to_string(), e.line))
            .collect()
    }

    fn p(name: &str, value: &str, line: usize) -> (String, String, usize) {
        (name.to_owned(), value.to_owned(), line)
    }

    #[test]
    fn reads_the_common_forms() {
        let text = "# a comment\n\nA=plain\nexport B = spaced value  # comment\n  C=\"double \\\"q\\\" \\n\\$X \\w\"\r\nD='single \\n $X'  # c\nE=\nF=a#b\nG=\"multi\nline\"\nH=last";
        assert_eq!(
            pairs(text),
            [
                p("A", "plain", 3),
                p("B", "spaced value", 4),
                p("C", "double \"q\" \n$X \\w", 5),
                p("D", "single \\n $X", 6),
                p("E", "", 7),
                p("F", "a#b", 8),
                p("G", "multi\nline", 9),
                p("H", "last", 11),
            ]
        );
        assert_eq!(pairs("exportX=1\nexport=2"), [p("exportX", "1", 1), p("export", "2", 2)]);
        assert_eq!(pairs("R=palyra://a/k?version=2 # ref"), [p("R", "palyra://a/k?version=2", 1)]);
    }

    #[test]
    fn values_written_back_double_quoted_read_the_same() {
        let text = "A=plain\nB='it is \\ \"$X\"'\nC=\"tab\there\\r\nnext\"\nD=\"\\\\\"\nE=#c\n";
        let first = parse(text).unwrap();
        let escaped: String = first
            .iter()
            .map(|e| {
                let mut v = String::new();
                for c in e.value.chars() {
                    match c {
                        '"' => v.push_str("\\\""),
                        '\\' => v.push_str("\\\\"),
                        '$' => v.push_str("\\$"),
                        '\n' => v.push_str("\\n"),
                        '\r' => v.push_str("\\r"),
                        c => v.push(c),
                    }
                }
                format!("{}=\"{v}\"\n", e.name)
            })
            .collect();
        let again = parse(&escaped).unwrap();
        let pairs = |entries: &[Entry]| entries.iter().map(|e| (e.name.clone(), e.value.to_string())).collect::<Vec<_>>();
        assert_eq!(pairs(&first), pairs(&again));
        assert_eq!(pairs(&first)[4].1, "");
    }

    #[test]
    fn refuses_broken_lines_without_quoting_values() {
        for (text, line, want) in [
            ("A=1\nnot a pair\n", 2, "expected NAME=value"),
            ("1A=x", 1, "is not a variable name"),
            ("A-B=x", 1, "is not a variable name"),
            ("A=ok\nB=\"sekrit", 2, "the value of B has no closing \""),
            ("B='sekrit", 1, "the value of B has no closing '"),
            ("B=\"sekrit\" trailing", 1, "unexpected text after the quoted value of B"),
            ("B=\"sekrit\\", 1, "no closing"),
        ] {
            let e = parse(text).map(|_| ()).expect_err(text);
            assert_eq!(e.line, line, "{text}: {e}");
            assert!(e.to_string().contains(want), "{text}: {e}");
            assert!(!e.to_string().contains("sekrit"), "{e}");
        }
        assert!(parse(&"A=1\n".repeat(MAX_DOTENV_LEN / 4 + 1)).is_err());
        assert!(format!("{:?}", parse("A=sekrit").unwrap()).contains("redacted"));
    }
}
