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

/// What [`harden_process`] managed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hardening {
    /// RLIMIT_CORE is 0 (soft and hard): no core file can be written.
    pub core_dumps_off: bool,
    /// PR_SET_DUMPABLE is 0: no core, no ptrace attach by the same user, `/proc/<pid>/*`
    /// (mem, environ, maps) owned by root (Linux only).
    pub not_dumpable: bool,
}

/// Keeps key material out of core files and away from same-user debuggers: sets RLIMIT_CORE
/// to 0 (soft and hard, so nothing in the process can raise it again) and, on Linux, marks the
/// process not dumpable. `palyra serve` calls it first thing; a failure is logged, not fatal.
#[cfg(unix)]
pub fn harden_process() -> Hardening {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let core_dumps_off = match setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) }) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot turn core dumps off (RLIMIT_CORE)");
            false
        }
    };
    #[cfg(target_os = "linux")]
    let not_dumpable =
        match rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot mark the process not dumpable (PR_SET_DUMPABLE)");
                false
            }
        };
    #[cfg(not(target_os = "linux"))]
    let not_dumpable = false;
    Hardening { core_dumps_off, not_dumpable }
}

/// Keeps key material out of core files (nothing to do where there are no rlimits).
#[cfg(not(unix))]
pub fn harden_process() -> Hardening {
    Hardening { core_dumps_off: false, not_dumpable: false }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn harden_process_turns_core_dumps_off_and_clears_dumpable() {
        // Runs in the test process (nextest: one process per test), which it leaves hardened.
        let done = super::harden_process();
        assert_eq!(done, super::Hardening { core_dumps_off: true, not_dumpable: true });
        let core = rustix::process::getrlimit(rustix::process::Resource::Core);
        assert_eq!((core.current, core.maximum), (Some(0), Some(0)));
        assert_eq!(
            rustix::process::dumpable_behavior().ok(),
            Some(rustix::process::DumpableBehavior::NotDumpable)
        );
    }
}
