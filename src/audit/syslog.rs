//! The syslog sink of `[audit] sink = "syslog"`: each committed record as one RFC 5424 message
//! over the local syslog socket (`/dev/log`, a Unix datagram socket), driven by the same
//! cursor and task as the file sink ([`super::sink`]).
//!
//! The message: `<PRI>1 TIMESTAMP - palyra PID audit - JSON`, facility `authpriv` (10),
//! severity `info` for an allowed call and `notice` for a denied one, TIMESTAMP the record's
//! time (RFC 3339 UTC, ms), no hostname (the local daemon adds its own), MSG the export's JSON
//! line. Delivery is at least once and in order: a socket cannot be read back, so the cursor
//! advances past each record the socket accepted; a send that fails (the daemon is down) is
//! retried with backoff from that record. A datagram the daemon accepted and then dropped is
//! beyond the node's sight.

use std::path::PathBuf;

use super::chain::{AuditDecision, AuditRecord};
use super::export::{json_line, rfc3339_millis};
use super::sink::{RunError, SinkOut};

/// The local syslog socket.
pub const DEV_LOG: &str = "/dev/log";
/// How long one send may wait for a daemon that does not read.
#[cfg(unix)]
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A syslog sink's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogSinkConfig {
    /// The daemon's Unix datagram socket ([`DEV_LOG`]).
    pub socket: PathBuf,
}

impl Default for SyslogSinkConfig {
    fn default() -> Self {
        SyslogSinkConfig { socket: PathBuf::from(DEV_LOG) }
    }
}

impl SyslogSinkConfig {
    /// The sink's name, the key of its cursor: `syslog:SOCKET`.
    pub fn name(&self) -> String {
        format!("syslog:{}", self.socket.display())
    }
}

/// `record` as an RFC 5424 message from process `pid`.
pub fn message(record: &AuditRecord, pid: u32) -> String {
    // authpriv (10) × 8 + info (6) or notice (5).
    let pri = match record.entry.decision {
        AuditDecision::Allow => 86,
        AuditDecision::Deny => 85,
    };
    format!("<{pri}>1 {} - palyra {pid} audit - {}", rfc3339_millis(record.entry.at), json_line(record))
}

/// The socket, connected at open.
#[derive(Debug)]
pub(super) struct SyslogOut {
    config: SyslogSinkConfig,
    #[cfg(unix)]
    socket: Option<std::os::unix::net::UnixDatagram>,
}

impl SyslogOut {
    pub(super) fn new(config: SyslogSinkConfig) -> Self {
        SyslogOut {
            config,
            #[cfg(unix)]
            socket: None,
        }
    }
}

#[cfg(unix)]
impl SinkOut for SyslogOut {
    fn open(&mut self) -> Result<Option<(u64, String)>, RunError> {
        self.socket = None;
        let path = &self.config.socket;
        let socket = std::os::unix::net::UnixDatagram::unbound()
            .and_then(|s| s.connect(path).map(|()| s))
            .and_then(|s| s.set_write_timeout(Some(SEND_TIMEOUT)).map(|()| s))
            .map_err(|e| RunError::Io(format!("connect to syslog at {}: {e}", path.display())))?;
        self.socket = Some(socket);
        Ok(None)
    }

    fn still_open(&self) -> bool {
        self.socket.is_some()
    }

    fn write(&mut self, records: &[AuditRecord]) -> Result<(), (usize, RunError)> {
        let pid = std::process::id();
        for (sent, record) in records.iter().enumerate() {
            let Some(socket) = &self.socket else {
                return Err((sent, RunError::Io("the syslog socket is not connected".to_owned())));
            };
            if let Err(e) = socket.send(message(record, pid).as_bytes()) {
                self.socket = None;
                let error = RunError::Io(format!("send to syslog at {}: {e}", self.config.socket.display()));
                return Err((sent, error));
            }
        }
        Ok(())
    }
}

#[cfg(not(unix))]
impl SinkOut for SyslogOut {
    fn open(&mut self) -> Result<Option<(u64, String)>, RunError> {
        Err(RunError::Io("the syslog sink needs a Unix syslog socket".to_owned()))
    }

    fn still_open(&self) -> bool {
        false
    }

    fn write(&mut self, _records: &[AuditRecord]) -> Result<(), (usize, RunError)> {
        Err((0, RunError::Io("the syslog sink needs a Unix syslog socket".to_owned())))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::audit::AuditEntry;

    #[test]
    fn a_record_is_an_rfc5424_authpriv_message_carrying_its_json_line() {
        let mut record = AuditRecord {
            sequence: 3,
            entry: AuditEntry {
                at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_500),
                principal: "p".into(),
                action: "a".into(),
                resource: "r".into(),
                decision: AuditDecision::Allow,
                reason: "why".into(),
            },
            hash: "00".repeat(32),
        };
        let allowed = message(&record, 42);
        assert_eq!(allowed, format!("<86>1 1970-01-01T00:00:01.500Z - palyra 42 audit - {}", json_line(&record)));
        record.entry.decision = AuditDecision::Deny;
        assert!(message(&record, 42).starts_with("<85>1 "));
    }
}
