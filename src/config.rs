//! Configuration: defaults, then `palyra.toml` (or `--config FILE`), then `PALYRA_*`
//! environment variables, then flags — later wins. Also the data-dir layout.
//!
//! The file is untrusted input: bounded in size, unknown keys refused, every error names the
//! file and the line.
//!
//! A leaf: it parses into its own settings types and names no other module of the crate. The
//! CLI turns them into the types of the node, the gRPC edge and the console.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::str::FromStr;

use serde::Deserialize;

/// Default gRPC listen address.
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:7443";
/// Default QUIC listen address.
pub const DEFAULT_QUIC_ADDR: &str = "127.0.0.1:7444";
/// Default web console listen address (plain HTTP, loopback).
pub const DEFAULT_CONSOLE_ADDR: &str = "127.0.0.1:7445";
/// Largest config file accepted.
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024;
/// gRPC connections at most when `[grpc]` says nothing (the gRPC edge's own default; a test in
/// `cli::serve` keeps the two equal).
pub const DEFAULT_GRPC_MAX_CONNECTIONS: usize = 1024;
/// Console connections at most when `[console]` says nothing (the console's own default; a
/// test in `cli::serve` keeps the two equal).
pub const DEFAULT_CONSOLE_MAX_CONNECTIONS: usize = 128;

/// How long device client certificates are valid when `palyra.toml` says nothing: 30 days
/// (the CA's own default; a test in `cli::serve` keeps the two equal).
pub const DEFAULT_DEVICE_CERTIFICATE_LIFETIME_SECS: u64 = 30 * 24 * 60 * 60;
/// The shortest `device_certificate_lifetime_seconds`: 10 s, low enough for a test to cross an
/// expiry, never for production (a device then renews every 7 s).
pub const MIN_DEVICE_CERTIFICATE_LIFETIME_SECS: u64 = 10;
/// The longest `device_certificate_lifetime_seconds`: 365 days.
pub const MAX_DEVICE_CERTIFICATE_LIFETIME_SECS: u64 = 365 * 24 * 60 * 60;

/// Which root-key backend to use on first start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyBackendChoice {
    /// The OS keychain if it answers, else the key file.
    #[default]
    Auto,
    /// Always the key file.
    File,
    /// Always the OS keychain; fail if it does not answer.
    Keychain,
}

impl FromStr for KeyBackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(KeyBackendChoice::Auto),
            "file" => Ok(KeyBackendChoice::File),
            "keychain" => Ok(KeyBackendChoice::Keychain),
            other => Err(format!("unknown key backend {other:?}: use auto, file or keychain")),
        }
    }
}

/// How `palyra serve` writes its log on stderr (`--log-format`, `PALYRA_LOG_FORMAT`,
/// `log_format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for a person (coloured at a terminal).
    #[default]
    Text,
    /// One JSON object a line, the event's fields at the top level.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?}: use text or json")),
        }
    }
}

/// The config file's contents; every field optional.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// gRPC listen address.
    pub grpc_addr: Option<SocketAddr>,
    /// QUIC listen address.
    pub quic_addr: Option<SocketAddr>,
    /// Root key backend for a new node: "auto", "file" or "keychain".
    pub key_backend: Option<String>,
    /// Extra DNS names or IP addresses for the server certificate.
    pub server_names: Option<Vec<String>>,
    /// Largest secret value in bytes.
    pub max_value_bytes: Option<usize>,
    /// Milliseconds a GetSecret's checked, still sealed row may answer the same read again
    /// (until the next write at the latest; 0..=[`MAX_READ_CACHE_MS`], default 1000, 0 = off).
    /// A row edited on disk behind the node's back is found at the first read after that.
    pub read_cache_ms: Option<u64>,
    /// Seconds the client certificates issued to devices (at pairing approval and at renewal)
    /// are valid ([`MIN_DEVICE_CERTIFICATE_LIFETIME_SECS`]..=[`MAX_DEVICE_CERTIFICATE_LIFETIME_SECS`],
    /// default [`DEFAULT_DEVICE_CERTIFICATE_LIFETIME_SECS`]). Devices renew past two thirds of it.
    pub device_certificate_lifetime_seconds: Option<u64>,
    /// The operator web console (`[console]`).
    pub console: Option<ConsoleConfig>,
    /// The gRPC listener's connection budgets and timeouts (`[grpc]`).
    pub grpc: Option<GrpcConfig>,
    /// Scheduled backups made by `palyra serve` (`[backup]`).
    pub backup: Option<BackupConfig>,
    /// Where `palyra serve` serves Prometheus metrics (`/metrics`, plain HTTP); off when unset.
    pub metrics_addr: Option<SocketAddr>,
    /// `palyra serve`'s log format: "text" (default) or "json".
    pub log_format: Option<LogFormat>,
    /// The audit log's retention, witnesses and sink (`[audit]`).
    pub audit: Option<AuditConfig>,
}

/// The longest `read_cache_ms`: a minute.
pub const MAX_READ_CACHE_MS: u64 = 60_000;

/// The longest `[audit] retain_days`: 100 years.
pub const MAX_AUDIT_RETAIN_DAYS: u64 = 36_500;

/// `[audit]` of `palyra.toml`. Retention: unset keeps every record (the default); when set,
/// `palyra serve` prunes at start and hourly (and `palyra audit prune` on demand) the records
/// beyond the newest `retain_records` and those older than `retain_days`, each prune writing a
/// checkpoint signed with the node's key so the kept records still verify (and never a record
/// the sink has not delivered). Witnesses: peers whose logs `serve` checks. Sink: where
/// `palyra serve` also delivers every audit record.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Keep the newest this many records (at least 1).
    pub retain_records: Option<u64>,
    /// Keep the records of the last this many days (1..=[`MAX_AUDIT_RETAIN_DAYS`]).
    pub retain_days: Option<u64>,
    /// Peers (`HOST:PORT` of their QUIC data plane) whose audit log `serve` witnesses every
    /// 10 minutes, as `palyra audit verify --peer` does (at most [`MAX_AUDIT_WITNESSES`]).
    pub witness: Option<Vec<String>>,
    /// `"file:/ABSOLUTE/PATH"`: append each record as a JSON line to that file (0600, in a
    /// 0700 directory, created if missing); `"syslog"`: send each as an RFC 5424 message to
    /// the local syslog socket (`/dev/log`).
    pub sink: Option<String>,
    /// Rotate the sink file before it grows past this many bytes (4096..=2^40, default 64 MiB).
    pub sink_max_bytes: Option<u64>,
    /// Rotated sink files kept, `PATH.1` newest (1..=1000, default 8).
    pub sink_keep: Option<usize>,
}

/// Most peers `[audit] witness` names.
pub const MAX_AUDIT_WITNESSES: usize = 16;

/// Where `[audit] sink` delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSinkTarget {
    /// `file:PATH`.
    File(PathBuf),
    /// `syslog`: the local syslog socket.
    Syslog,
}

impl AuditConfig {
    /// The sink, if one is set.
    pub fn sink_target(&self) -> Result<Option<AuditSinkTarget>, String> {
        let Some(sink) = &self.sink else { return Ok(None) };
        if sink == "syslog" {
            return Ok(Some(AuditSinkTarget::Syslog));
        }
        match sink.strip_prefix("file:").map(PathBuf::from) {
            Some(path) if path.is_absolute() && path.file_name().is_some() => Ok(Some(AuditSinkTarget::File(path))),
            _ => Err(format!(
                "audit.sink = {sink:?}: use \"file:/ABSOLUTE/PATH\" (e.g. \"file:/var/log/palyra/audit.jsonl\") or \"syslog\""
            )),
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.retain_records == Some(0) {
            return Err("audit.retain_records must be at least 1 (leave it out to keep every record)".to_owned());
        }
        if self.retain_days.is_some_and(|d| d == 0 || d > MAX_AUDIT_RETAIN_DAYS) {
            return Err(format!(
                "audit.retain_days must be between 1 and {MAX_AUDIT_RETAIN_DAYS} (leave it out to keep every record)"
            ));
        }
        let peers = self.witness.as_deref().unwrap_or_default();
        if peers.len() > MAX_AUDIT_WITNESSES {
            return Err(format!("audit.witness names more than {MAX_AUDIT_WITNESSES} peers"));
        }
        for peer in peers {
            let port = peer.rsplit_once(':').map(|(host, port)| (host, port.parse::<u16>()));
            if peer.len() > 255 || !matches!(port, Some((host, Ok(_))) if !host.is_empty()) {
                let shown: String = peer.chars().take(64).collect();
                return Err(format!("audit.witness: {shown:?} is not HOST:PORT (a peer's QUIC address)"));
            }
        }
        self.sink_target()?;
        if self.sink_max_bytes.is_some_and(|n| !(4096..=1 << 40).contains(&n)) {
            return Err("audit.sink_max_bytes must be between 4096 and 1099511627776".to_owned());
        }
        if self.sink_keep.is_some_and(|n| !(1..=1000).contains(&n)) {
            return Err("audit.sink_keep must be between 1 and 1000".to_owned());
        }
        Ok(())
    }

    /// `retain_days` as a duration.
    pub fn max_age(&self) -> Option<std::time::Duration> {
        self.retain_days.map(|d| std::time::Duration::from_secs(d * 86_400))
    }
}

/// `[backup]` of `palyra.toml`: `palyra serve` writes a backup into `dir` every `every`
/// ("90s", "30m", "6h", "1d") and keeps the newest `keep` (default 7).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// Where the backups go (created 0700 if missing).
    pub dir: PathBuf,
    /// How often.
    pub every: String,
    /// How many to keep, newest first.
    pub keep: Option<usize>,
}

/// Backups kept when `[backup] keep` is not set.
pub const DEFAULT_BACKUP_KEEP: usize = 7;

impl BackupConfig {
    /// `every` as a duration: a whole number and a unit (`s`, `m`, `h`, `d`), at least 1 s.
    pub fn interval(&self) -> Result<std::time::Duration, String> {
        let text = self.every.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let unit = match unit.trim() {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => 0,
        };
        match number.parse::<u64>() {
            Ok(n) if n > 0 && unit > 0 && n <= 366 * 86_400 / unit => Ok(std::time::Duration::from_secs(n * unit)),
            _ => Err(format!("[backup] every = {:?}: use a whole number and s, m, h or d, e.g. \"6h\"", self.every)),
        }
    }

    fn check(&self) -> Result<(), String> {
        self.interval()?;
        if self.keep == Some(0) {
            return Err("[backup] keep must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// `[grpc]` of `palyra.toml`: connection budgets and timeouts (unset: the gRPC edge's
/// defaults).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// Connections at most, TLS handshakes in progress included (1..=65536, default 1024).
    pub max_connections: Option<usize>,
    /// Connections of one address (IPv6: its /64) at most (1..=max_connections, default 128).
    pub max_connections_per_address: Option<usize>,
    /// Seconds a client has to finish its TLS handshake (1..=60, default 10).
    pub handshake_timeout_secs: Option<u64>,
    /// Seconds an anonymous connection (no client certificate) may stay with no request in
    /// flight (1..=3600, default 30).
    pub anonymous_idle_timeout_secs: Option<u64>,
}

impl GrpcConfig {
    fn check(&self) -> Result<(), String> {
        let within = |name: &str, v: Option<u64>, lo: u64, hi: u64| match v {
            Some(v) if v < lo || v > hi => Err(format!("grpc.{name} must be between {lo} and {hi}")),
            _ => Ok(()),
        };
        let as_u64 = |v: Option<usize>| v.map(|v| u64::try_from(v).unwrap_or(u64::MAX));
        within("max_connections", as_u64(self.max_connections), 1, 65_536)?;
        let total = self.max_connections.unwrap_or(DEFAULT_GRPC_MAX_CONNECTIONS);
        let total = u64::try_from(total).unwrap_or(u64::MAX);
        within("max_connections_per_address", as_u64(self.max_connections_per_address), 1, total)?;
        within("handshake_timeout_secs", self.handshake_timeout_secs, 1, 60)?;
        within("anonymous_idle_timeout_secs", self.anonymous_idle_timeout_secs, 1, 3600)
    }
}

/// `[console]` of `palyra.toml`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Whether `serve` runs the console (default true).
    pub enabled: Option<bool>,
    /// Its listen address (default 127.0.0.1:7445).
    pub addr: Option<SocketAddr>,
    /// Allow a non-loopback address (plain HTTP: anyone on the path sees the session cookie).
    pub allow_remote: Option<bool>,
    /// Seconds a client has to send a request's head (and a form its body); an idle
    /// keep-alive connection is closed after it too (default 10, 1..=600).
    pub header_read_timeout_secs: Option<u64>,
    /// Connections held at once, all addresses together (default 128, 1..=65536).
    pub max_connections: Option<usize>,
    /// Connections held at once from one IPv4 address or IPv6 /64 (default 32, at most
    /// `max_connections`).
    pub max_connections_per_address: Option<usize>,
}

/// The console's one address rule, for `serve` and `config check` alike: a non-loopback
/// address only when remote access is allowed knowingly (the console speaks plain HTTP).
pub fn check_console_addr(addr: SocketAddr, allow_remote: bool) -> Result<(), String> {
    if addr.ip().is_loopback() || allow_remote {
        return Ok(());
    }
    Err(format!(
        "the console address {addr} is not a loopback address and the console speaks plain HTTP: use 127.0.0.1 or ::1, or allow remote access knowingly (--console-allow-remote, console.allow_remote = true)"
    ))
}

impl ConsoleConfig {
    /// Refuses out-of-range limits, saying which.
    fn check(&self) -> Result<(), String> {
        if self.header_read_timeout_secs.is_some_and(|s| s == 0 || s > 600) {
            return Err("console.header_read_timeout_secs must be between 1 and 600".into());
        }
        if self.max_connections.is_some_and(|n| n == 0 || n > 65_536) {
            return Err("console.max_connections must be between 1 and 65536".into());
        }
        let total = self.max_connections.unwrap_or(DEFAULT_CONSOLE_MAX_CONNECTIONS);
        if self.max_connections_per_address.is_some_and(|n| n == 0 || n > total) {
            return Err(format!("console.max_connections_per_address must be between 1 and {total}"));
        }
        Ok(())
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is too large.
    #[error("config file {path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file does not parse or has unknown or mistyped keys.
    #[error("config file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("{0}")]
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
    Value(String),
}

impl FileConfig {
    /// Parses config text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: FileConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Invalid { path: path.to_path_buf(), message: e.to_string() })?;
        if let Some(backend) = &config.key_backend {
            backend
                .parse::<KeyBackendChoice>()
                .map_err(|m| ConfigError::Invalid { path: path.to_path_buf(), message: m })?;
        }
        if let Some(console) = &config.console {
            console.check().map_err(|message| ConfigError::Invalid { path: path.to_path_buf(), message })?;
        }
        if config.max_value_bytes.is_some_and(|n| n == 0 || n > 16 * 1024 * 1024) {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                message: "max_value_bytes must be between 1 and 16777216".into(),
            });
        }
        if config.read_cache_ms.is_some_and(|ms| ms > MAX_READ_CACHE_MS) {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                message: format!("read_cache_ms must be between 0 (off) and {MAX_READ_CACHE_MS}"),
            });
        }
        if config.device_certificate_lifetime_seconds.is_some_and(|s| {
            !(MIN_DEVICE_CERTIFICATE_LIFETIME_SECS..=MAX_DEVICE_CERTIFICATE_LIFETIME_SECS).contains(&s)
        }) {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                message: format!(
                    "device_certificate_lifetime_seconds must be between {MIN_DEVICE_CERTIFICATE_LIFETIME_SECS} \
                     and {MAX_DEVICE_CERTIFICATE_LIFETIME_SECS} (365 days)"
                ),
            });
        }
        if let Some(grpc) = &config.grpc {
            grpc.check().map_err(|message| ConfigError::Invalid { path: path.to_path_buf(), message })?;
        }
        if let Some(backup) = &config.backup {
            backup.check().map_err(|message| ConfigError::Invalid { path: path.to_path_buf(), message })?;
        }
        if let Some(audit) = &config.audit {
            audit.check().map_err(|message| ConfigError::Invalid { path: path.to_path_buf(), message })?;
        }
        Ok(config)
    }

    /// Loads `path`; a missing file is an empty config only when `optional`.
    pub fn load(path: &Path, optional: bool) -> Result<Self, ConfigError> {
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(FileConfig::default());
            }
            Err(source) => return Err(ConfigError::Read { path: path.to_path_buf(), source }),
        };
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge { path: path.to_path_buf() });
        }
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        FileConfig::parse(&text, path)
    }
}

/// The data directory: `--data-dir`, else `$PALYRA_HOME` (`Cli::data_dir` reads both), else
/// `$XDG_DATA_HOME/palyra`, else `~/.local/share/palyra`.
pub fn default_data_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("palyra");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/palyra")
}

/// Where things live inside a data dir (docs/storage-format.md, "Data directory").
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout of `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    /// The data dir.
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `palyra.toml`.
    pub fn config_file(&self) -> PathBuf {
        self.root.join("palyra.toml")
    }

    /// `identity/`: sealed node identity, CA and server key.
    pub fn identity_dir(&self) -> PathBuf {
        self.root.join("identity")
    }

    /// `operator/`: the operator's client credentials.
    pub fn operator_dir(&self) -> PathBuf {
        self.root.join("operator")
    }

    /// `client/`: a joining device's credentials.
    pub fn client_dir(&self) -> PathBuf {
        self.root.join("client")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file() -> Result<(), ConfigError> {
        let text = r#"
            grpc_addr = "127.0.0.1:9000"
            key_backend = "file"
            server_names = ["node.local"]
            max_value_bytes = 1024
            read_cache_ms = 250
            device_certificate_lifetime_seconds = 3600
            metrics_addr = "127.0.0.1:9464"
            log_format = "json"
            [console]
            addr = "127.0.0.1:7500"
            enabled = true
            header_read_timeout_secs = 5
            max_connections = 64
            max_connections_per_address = 16
            [grpc]
            max_connections = 100
            max_connections_per_address = 10
            anonymous_idle_timeout_secs = 5
        "#;
        let c = FileConfig::parse(text, Path::new("palyra.toml"))?;
        assert_eq!(
            c.grpc_addr,
            Some("127.0.0.1:9000".parse().map_err(|_| ConfigError::Value("addr".into()))?)
        );
        assert_eq!(c.max_value_bytes, Some(1024));
        assert_eq!(c.read_cache_ms, Some(250));
        assert_eq!(c.device_certificate_lifetime_seconds, Some(3600));
        assert_eq!(c.console.and_then(|c| c.addr).map(|a| a.port()), Some(7500));
        let grpc = c.grpc.unwrap_or_default();
        assert_eq!((grpc.max_connections, grpc.max_connections_per_address), (Some(100), Some(10)));
        assert_eq!(grpc.anonymous_idle_timeout_secs, Some(5));
        assert_eq!(c.metrics_addr.map(|a| a.port()), Some(9464));
        assert_eq!(c.log_format, Some(LogFormat::Json));
        assert!(FileConfig::parse("log_format = \"xml\"", Path::new("palyra.toml")).is_err());
        Ok(())
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let cases = [
            ("grpc_adr = \"x\"", "unknown field"),
            ("grpc_addr = \"not an address\"", "grpc_addr"),
            ("key_backend = \"tpm\"", "unknown key backend"),
            ("max_value_bytes = 0", "max_value_bytes"),
            ("read_cache_ms = 60001", "read_cache_ms"),
            ("device_certificate_lifetime_seconds = 9", "device_certificate_lifetime_seconds"),
            ("device_certificate_lifetime_seconds = 31536001", "device_certificate_lifetime_seconds"),
            ("device_certificate_lifetime_seconds = -1", "device_certificate_lifetime_seconds"),
            ("device_certificate_lifetime_seconds = \"30d\"", "device_certificate_lifetime_seconds"),
            ("[[[", "palyra.toml"),
            ("[console]\nremote = true", "unknown field"),
            ("[grpc]\nmax_connection = 5", "unknown field"),
            ("[grpc]\nmax_connections = 0", "grpc.max_connections"),
            (
                "[grpc]\nmax_connections = 8\nmax_connections_per_address = 9",
                "grpc.max_connections_per_address",
            ),
            ("[grpc]\nanonymous_idle_timeout_secs = 0", "grpc.anonymous_idle_timeout_secs"),
            ("[grpc]\nhandshake_timeout_secs = 61", "grpc.handshake_timeout_secs"),
            ("[console]\nheader_read_timeout_secs = 0", "header_read_timeout_secs"),
            ("[console]\nmax_connections = 0", "max_connections"),
            (
                "[console]\nmax_connections = 8\nmax_connections_per_address = 9",
                "max_connections_per_address",
            ),
        ];
        for (text, want) in cases {
            let err = FileConfig::parse(text, Path::new("palyra.toml"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(want) && err.contains("palyra.toml"), "{text}: {err}");
        }
    }

    #[test]
    fn the_device_certificate_lifetime_bounds_are_inclusive() -> Result<(), ConfigError> {
        for secs in [MIN_DEVICE_CERTIFICATE_LIFETIME_SECS, MAX_DEVICE_CERTIFICATE_LIFETIME_SECS] {
            let text = format!("device_certificate_lifetime_seconds = {secs}");
            let c = FileConfig::parse(&text, Path::new("palyra.toml"))?;
            assert_eq!(c.device_certificate_lifetime_seconds, Some(secs));
        }
        assert_eq!(FileConfig::parse("", Path::new("palyra.toml"))?.device_certificate_lifetime_seconds, None);
        Ok(())
    }

    #[test]
    fn the_audit_section_names_a_file_sink_and_its_rotation() -> Result<(), ConfigError> {
        let text = "[audit]\nsink = \"file:/var/log/palyra/audit.jsonl\"\nsink_max_bytes = 1048576\nsink_keep = 3";
        let audit = FileConfig::parse(text, Path::new("palyra.toml"))?.audit.unwrap_or_default();
        assert_eq!(
            audit.sink_target().map_err(ConfigError::Value)?,
            Some(AuditSinkTarget::File(PathBuf::from("/var/log/palyra/audit.jsonl")))
        );
        assert_eq!((audit.sink_max_bytes, audit.sink_keep), (Some(1_048_576), Some(3)));
        assert_eq!(AuditConfig::default().sink_target(), Ok(None));
        let syslog = AuditConfig { sink: Some("syslog".into()), ..Default::default() };
        assert_eq!(syslog.sink_target(), Ok(Some(AuditSinkTarget::Syslog)));
        for (bad, want) in [
            ("sink = \"file:audit.jsonl\"", "audit.sink"),
            ("sink = \"/var/log/audit.jsonl\"", "audit.sink"),
            ("sink = \"syslog:udp://h:514\"", "audit.sink"),
            ("sink = \"file:/\"", "audit.sink"),
            ("sink_max_bytes = 100", "audit.sink_max_bytes"),
            ("sink_keep = 0", "audit.sink_keep"),
            ("sinks = \"file:/a\"", "unknown field"),
        ] {
            let err = FileConfig::parse(&format!("[audit]\n{bad}"), Path::new("palyra.toml"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(want), "{bad}: {err}");
        }
        Ok(())
    }

    #[test]
    fn the_audit_section_is_checked() -> Result<(), ConfigError> {
        let text = "[audit]\nretain_records = 1000\nretain_days = 90\nwitness = [\"10.0.0.2:7444\", \"[::1]:7444\"]";
        let c = FileConfig::parse(text, Path::new("palyra.toml"))?;
        let audit = c.audit.ok_or(ConfigError::Value("no [audit]".into()))?;
        assert_eq!(audit.retain_records, Some(1000));
        assert_eq!(audit.witness.as_deref().map(<[String]>::len), Some(2));
        assert_eq!(audit.max_age(), Some(std::time::Duration::from_secs(90 * 86_400)));
        assert_eq!(FileConfig::parse("", Path::new("palyra.toml"))?.audit, None);
        for (bad, want) in [
            ("retain_records = 0", "audit.retain_records"),
            ("retain_days = 0", "audit.retain_days"),
            ("retain_days = 36501", "audit.retain_days"),
            ("retain_records = -1", "retain_records"),
            ("retain = 5", "unknown field"),
            ("witness = [\"no-port\"]", "audit.witness"),
            ("witness = [\":7444\"]", "audit.witness"),
            ("witness = [\"host:99999\"]", "audit.witness"),
        ] {
            let err = FileConfig::parse(&format!("[audit]\n{bad}"), Path::new("palyra.toml"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(want) && err.contains("palyra.toml"), "{bad}: {err}");
        }
        Ok(())
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let text = format!("a = {}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(FileConfig::parse(&text, Path::new("x")).is_err());
    }

    #[test]
    fn the_backup_section_reads_its_interval() -> Result<(), ConfigError> {
        let file = FileConfig::parse("[backup]\ndir = \"/b\"\nevery = \"6h\"\nkeep = 3", Path::new("palyra.toml"))?;
        let backup = file.backup.ok_or(ConfigError::Value("no [backup]".into()))?;
        assert_eq!(backup.interval().map_err(ConfigError::Value)?, std::time::Duration::from_secs(6 * 3600));
        assert_eq!(backup.keep, Some(3));
        for bad in ["every = \"0s\"", "every = \"6 weeks\"", "every = \"h\"", "every = \"1s\"\nkeep = 0"] {
            let text = format!("[backup]\ndir = \"/b\"\n{bad}");
            assert!(FileConfig::parse(&text, Path::new("palyra.toml")).is_err(), "{bad}");
        }
        Ok(())
    }
}
