//! Output and errors of the CLI: human text or `--json`, one-line errors with a hint.

use std::path::PathBuf;

use serde::Serialize;
use tonic_types::StatusExt;

pub use super::exit::Exit;

/// What every command knows.
#[derive(Debug, Clone)]
pub struct Context {
    /// The data dir.
    pub data_dir: PathBuf,
    /// The server URL (`--server`, else found from the data dir: `address::resolve`).
    pub server: String,
    /// Where `server` came from, for errors.
    pub server_from: String,
    /// `--as`: whose credentials (`None`: `operator/`, else `client/`).
    pub as_: Option<super::address::As>,
    /// `--credentials` (or `$PALYRA_CREDENTIALS`): a directory of client credentials named
    /// outright, instead of the data dir's `operator/` or `client/`.
    pub credentials: Option<PathBuf>,
    /// `--json`.
    pub json: bool,
}

impl Context {
    /// Prints `value` as JSON with `--json`, else the `human` text.
    pub fn print<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) -> Result<(), CliError> {
        let text = if self.json {
            serde_json::to_string_pretty(value).map_err(|e| CliError::new(e.to_string()))?
        } else {
            human()
        };
        if text.is_empty() {
            return Ok(());
        }
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        match writeln!(out, "{text}").and_then(|()| out.flush()) {
            // A reader that stopped early (`| head`) wanted no more: not a failure, not a panic.
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                Err(CliError::new(format!("cannot write: {e}")))
            }
            _ => Ok(()),
        }
    }
}

/// A failure, printed as one line (plus an optional hint), with its exit code ([`Exit`]: 1
/// unless the error says otherwise; a gRPC status's from its reason and code).
#[derive(Debug)]
pub struct CliError {
    /// What went wrong.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
    /// The process's exit code.
    exit: u8,
}

impl CliError {
    /// An error without a hint, exit code 1.
    pub fn new(message: impl Into<String>) -> Self {
        CliError { message: message.into(), hint: None, exit: Exit::Failure.code() }
    }

    /// An error of the kind `exit`.
    pub fn of(exit: Exit, message: impl Into<String>) -> Self {
        CliError::new(message).kind(exit)
    }

    /// Nothing to print, only an exit code to pass on (`palyra run`: its command's status).
    pub fn status(code: u8) -> Self {
        CliError { message: String::new(), hint: None, exit: code }
    }

    /// Sets the kind, and with it the exit code.
    pub fn kind(mut self, exit: Exit) -> Self {
        self.exit = exit.code();
        self
    }

    /// Adds what to do.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Puts `context` (e.g. which variable and reference) before the message; kind and hint stay.
    pub fn context(mut self, context: impl std::fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The process's exit code.
    pub fn exit_code(&self) -> u8 {
        self.exit
    }

    /// Whether there is anything to print (see [`CliError::status`]).
    pub fn is_silent(&self) -> bool {
        self.message.is_empty()
    }
}

impl CliError {
    /// The error as one JSON line for `--json` (on stderr): `{"error", "hint", "exit"}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({ "error": self.message, "hint": self.hint, "exit": self.exit }).to_string()
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error: {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        let reason = s.get_error_details().error_info().map(|i| i.reason.clone());
        let exit = Exit::of(&s);
        let hint = match reason.as_deref() {
            Some("ERROR_REASON_POLICY_DENIED") => {
                Some("the node's Cedar policy does not allow this; see `palyra policy get`")
            }
            Some("ERROR_REASON_DEVICE_REVOKED") => Some("this device was revoked; pair it again"),
            Some("ERROR_REASON_VERSION_CONFLICT") => {
                Some("someone else wrote it first; read it again and retry")
            }
            _ if s.code() == tonic::Code::Unavailable => {
                Some("is `palyra serve` running, and is --server right?")
            }
            _ => None,
        };
        let reason = reason.map(|r| format!(" [{r}]")).unwrap_or_default();
        let mut err = CliError::of(exit, format!("{}: {}{reason}", code_name(s.code()), s.message()));
        err.hint = hint.map(str::to_owned);
        err
    }
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}").chars().fold(String::new(), |mut out, c| {
        if c.is_uppercase() && !out.is_empty() {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
        out
    })
}

/// A timestamp for humans and JSON (RFC 3339, UTC, seconds).
pub fn time(ts: Option<&prost_types::Timestamp>) -> String {
    let Some(ts) = ts else { return String::new() };
    let secs = ts.seconds;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's method).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times() {
        let ts = prost_types::Timestamp { seconds: 1_795_346_603, nanos: 0 };
        assert_eq!(time(Some(&ts)), "2026-11-22T11:23:23Z");
        assert_eq!(time(Some(&prost_types::Timestamp { seconds: 0, nanos: 0 })), "1970-01-01T00:00:00Z");
        assert_eq!(code_name(tonic::Code::PermissionDenied), "permission denied");
    }
}
