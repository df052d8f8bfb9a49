//! Exit codes (API.md, "Exit codes"): what went wrong, as the process's exit status.
//!
//! A subset of the table the `run` branch builds in this same file (`Exit`, `CliError::of`,
//! `CliError::exit_code`): on merge, that branch's version replaces this one.

/// What kind of failure ended the command; the discriminant is the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Anything not below.
    Failure = 1,
    /// The command line or an input the user gave is malformed (clap's usage errors are 2 too).
    Usage = 2,
    /// Stored data failed its integrity check (a tampered, truncated or foreign backup).
    Integrity = 5,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }
}
