//! Process resource limits: the open-files soft limit, raised to the hard limit at start.
//!
//! A server holds a descriptor per client connection (plus its database, WAL and sockets).
//! Many systems start processes with a soft limit of 1,024 open files and a far higher hard
//! limit; left at 1,024, `accept` fails with EMFILE somewhere below a thousand clients. As
//! servers do, `palyra serve` raises its soft limit to the hard limit when it starts. This
//! never touches the hard limit (that takes privileges) nor any other limit.

/// The open-files soft limit before and after [`raise_open_files_limit`]; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFilesLimit {
    /// The soft limit found.
    pub before: Option<u64>,
    /// The soft limit in force now.
    pub after: Option<u64>,
}

/// macOS refuses a soft limit above `OPEN_MAX` (10,240) even when the hard limit is unlimited.
#[cfg(unix)]
const MACOS_OPEN_MAX: u64 = 10_240;

/// Raises the soft limit on open files to the hard limit (to `OPEN_MAX` where the system caps
/// it there). Does nothing where there are no such limits.
#[cfg(unix)]
pub fn raise_open_files_limit() -> std::io::Result<OpenFilesLimit> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let found = getrlimit(Resource::Nofile);
    let before = found.current;
    let raised = |current: Option<u64>| Rlimit { current, maximum: found.maximum };
    let below = |limit: Option<u64>| match (before, limit) {
        (Some(soft), Some(hard)) => soft < hard,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if !below(found.maximum) {
        return Ok(OpenFilesLimit { before, after: before });
    }
    match setrlimit(Resource::Nofile, raised(found.maximum)) {
        Ok(()) => {}
        Err(_) if below(Some(MACOS_OPEN_MAX)) => {
            setrlimit(Resource::Nofile, raised(Some(MACOS_OPEN_MAX))).map_err(std::io::Error::from)?
        }
        Err(e) => return Err(e.into()),
    }
    Ok(OpenFilesLimit { before, after: getrlimit(Resource::Nofile).current })
}

/// Raises the soft limit on open files to the hard limit (to `OPEN_MAX` where the system caps
/// it there). Does nothing where there are no such limits.
#[cfg(not(unix))]
pub fn raise_open_files_limit() -> std::io::Result<OpenFilesLimit> {
    Ok(OpenFilesLimit { before: None, after: None })
}
