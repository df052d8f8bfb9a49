//! What the benches read off the machine and where they write: the cargo target dir, a free
//! loopback port, a process's /proc figures, and one way to print a figure.

use std::fmt::Display;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

/// The cargo target dir (`CARGO_TARGET_DIR` honoured): a bench binary is
/// `<target>/<profile>/deps/<bench>-<hash>`.
pub fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// A loopback port free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

/// A field of `/proc/<pid>/status`: KiB for VmRSS and VmHWM, a count for Threads.
pub fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user + system) a process (`pid`, or `self`) used so far, in seconds (USER_HZ =
/// 100, as on Linux); NaN when it cannot be read.
pub fn cpu_seconds(pid: impl Display) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12)) / 100.0
}

/// A figure with three significant digits or so, and its unit (`—` when not finite).
pub fn fmt_value(v: f64, unit: &str) -> String {
    let n = if !v.is_finite() {
        "—".to_owned()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    format!("{n} {unit}")
}
