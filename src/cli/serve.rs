//! `palyra init` and `palyra serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::output::{CliError, Context};
use crate::config::{
    DEFAULT_CONSOLE_ADDR, DEFAULT_GRPC_ADDR, DEFAULT_QUIC_ADDR, FileConfig, GrpcConfig, KeyBackendChoice,
    Layout, LogFormat,
};
use crate::datadir_lock::DataDirLock;
use crate::node::{Node, NodeOptions};
use crate::vault::VaultConfig;

#[derive(Debug, Args)]
pub(super) struct InitArgs {
    /// Root key backend for a new node: auto (OS keychain if it answers, else a key file),
    /// file, or keychain.
    #[arg(long, env = "PALYRA_KEY_BACKEND", value_name = "BACKEND")]
    key_backend: Option<KeyBackendChoice>,
    /// Extra DNS name or IP address for the server certificate (repeatable).
    #[arg(long = "server-name", value_name = "NAME")]
    server_names: Vec<String>,
    /// Config file [default: <data dir>/palyra.toml if present].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Refused: init and serve act on the data dir and talk to no node (hidden; this shadows the
    /// global --server, which clap would otherwise offer here).
    #[arg(long = "server", id = "server", hide = true, value_name = "URL", value_parser = no_server)]
    _server: Option<String>,
}

fn no_server(_: &str) -> Result<String, String> {
    Err("init and serve talk to no node: serve listens on --grpc-addr (the console on --console-addr)".into())
}

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    #[command(flatten)]
    init: InitArgs,
    /// gRPC listen address [default: 127.0.0.1:7443].
    #[arg(long, env = "PALYRA_GRPC_ADDR", value_name = "ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// QUIC data-plane listen address, UDP [default: 127.0.0.1:7444].
    #[arg(long, env = "PALYRA_QUIC_ADDR", value_name = "ADDR")]
    quic_addr: Option<SocketAddr>,
    /// Concurrent QUIC connections at most; the next is closed with code 0x1.
    #[arg(long, value_name = "N", default_value_t = crate::quic::DEFAULT_MAX_CONNECTIONS)]
    quic_max_connections: usize,
    /// Concurrent QUIC connections of one address (IPv6: its /64) at most.
    #[arg(long, value_name = "N", default_value_t = crate::quic::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS)]
    quic_max_connections_per_address: usize,
    /// QUIC handshakes in progress at most (each has 5 s to finish); the next is refused.
    #[arg(long, value_name = "N", default_value_t = crate::quic::DEFAULT_MAX_HANDSHAKES)]
    quic_max_handshakes: usize,
    /// QUIC handshakes in progress from one address (IPv6: its /64) at most.
    #[arg(long, value_name = "N", default_value_t = crate::quic::DEFAULT_MAX_HANDSHAKES_PER_ADDRESS)]
    quic_max_handshakes_per_address: usize,
    /// gRPC connections at most, TLS handshakes included [default: 1024, or `grpc.max_connections`].
    #[arg(long, value_name = "N")]
    grpc_max_connections: Option<usize>,
    /// gRPC connections of one address (IPv6: its /64) at most [default: 128, or
    /// `grpc.max_connections_per_address`].
    #[arg(long, value_name = "N")]
    grpc_max_connections_per_address: Option<usize>,
    /// Web console listen address, plain HTTP [default: 127.0.0.1:7445]; loopback only unless
    /// --console-allow-remote (or `console.allow_remote = true`).
    #[arg(long, env = "PALYRA_CONSOLE_ADDR", value_name = "ADDR")]
    console_addr: Option<SocketAddr>,
    /// Allow a non-loopback console address (plain HTTP: the session cookie crosses the network).
    #[arg(long)]
    console_allow_remote: bool,
    /// Do not run the web console.
    #[arg(long)]
    no_console: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP, no authentication: it
    /// shows activity counts, never names or values) [default: off, or `metrics_addr`].
    #[arg(long, env = "PALYRA_METRICS_ADDR", value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Log format on stderr: text, or json (one object a line) [default: text, or `log_format`].
    #[arg(long, env = "PALYRA_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<LogFormat>,
}

impl ServeArgs {
    /// The log format in force: the flag (or its variable), else the config file's, else text.
    /// Read before logging starts, so a config file that does not load means text here (serve
    /// reports the file's error itself).
    pub(super) fn log_format(&self, data_dir: &std::path::Path) -> LogFormat {
        if let Some(format) = self.log_format {
            return format;
        }
        let file = match &self.init.config {
            Some(path) => FileConfig::load(path, false),
            None => FileConfig::load(&Layout::new(data_dir).config_file(), true),
        };
        file.ok().and_then(|f| f.log_format).unwrap_or_default()
    }
}

/// Settings after flags, environment and file are combined.
struct Settings {
    options: NodeOptions,
    grpc_addr: SocketAddr,
    quic_addr: SocketAddr,
    file: FileConfig,
}

/// The console's connection limits: the file's `[console]` values over the defaults.
fn console_limits(file: &FileConfig) -> crate::console::ConsoleLimits {
    let console = file.console.clone().unwrap_or_default();
    let defaults = crate::console::ConsoleLimits::default();
    crate::console::ConsoleLimits {
        header_read_timeout: console
            .header_read_timeout_secs
            .map_or(defaults.header_read_timeout, std::time::Duration::from_secs),
        max_connections: console.max_connections.unwrap_or(defaults.max_connections),
        max_connections_per_address: console
            .max_connections_per_address
            .unwrap_or(defaults.max_connections_per_address),
        // Signed-in event streams are long-lived; idle and half-open ones end by the timeout.
        max_connection_age: defaults.max_connection_age,
    }
}

/// The gRPC listener's limits: the file's `[grpc]` values over the defaults.
fn grpc_limits(grpc: &GrpcConfig) -> crate::rpc::server::GrpcLimits {
    let mut limits = crate::rpc::server::GrpcLimits::default();
    if let Some(n) = grpc.max_connections {
        limits.max_connections = n;
    }
    if let Some(n) = grpc.max_connections_per_address {
        limits.max_connections_per_address = n;
    }
    if let Some(s) = grpc.handshake_timeout_secs {
        limits.handshake_timeout = std::time::Duration::from_secs(s);
    }
    if let Some(s) = grpc.anonymous_idle_timeout_secs {
        limits.anonymous_idle_timeout = std::time::Duration::from_secs(s);
    }
    limits
}

/// Where the console listens (`None`: disabled), after flags and file; a non-loopback
/// address is refused unless remote access is allowed explicitly.
fn console_addr(file: &FileConfig, args: &ServeArgs) -> Result<Option<(SocketAddr, bool)>, CliError> {
    let console = file.console.clone().unwrap_or_default();
    if args.no_console || console.enabled == Some(false) {
        return Ok(None);
    }
    let addr = match args.console_addr.or(console.addr) {
        Some(addr) => addr,
        None => DEFAULT_CONSOLE_ADDR.parse::<SocketAddr>().map_err(|e| CliError::new(e.to_string()))?,
    };
    let allow_remote = args.console_allow_remote || console.allow_remote == Some(true);
    crate::config::check_console_addr(addr, allow_remote).map_err(CliError::new)?;
    Ok(Some((addr, allow_remote)))
}

fn settings(
    ctx: &Context,
    init: &InitArgs,
    grpc: Option<SocketAddr>,
    quic: Option<SocketAddr>,
) -> Result<Settings, CliError> {
    let layout = Layout::new(&ctx.data_dir);
    let file = match &init.config {
        Some(path) => FileConfig::load(path, false),
        None => FileConfig::load(&layout.config_file(), true),
    }
    .map_err(|e| CliError::new(e.to_string()))?;
    let key_backend = match (init.key_backend, &file.key_backend) {
        (Some(choice), _) => choice,
        // Validated when the file was parsed.
        (None, Some(text)) => text.parse().map_err(CliError::new)?,
        (None, None) => KeyBackendChoice::Auto,
    };
    let mut server_names = file.server_names.clone().unwrap_or_default();
    server_names.extend(init.server_names.iter().cloned());
    let default_addr = |text: &str| text.parse::<SocketAddr>().map_err(|e| CliError::new(e.to_string()));
    Ok(Settings {
        options: NodeOptions {
            key_backend,
            vault: VaultConfig {
                max_value_len: file.max_value_bytes.unwrap_or(crate::vault::DEFAULT_MAX_VALUE_LEN),
                read_cache: file
                    .read_cache_ms
                    .map_or(crate::vault::DEFAULT_READ_CACHE, std::time::Duration::from_millis),
            },
            server_names,
            device_certificate_lifetime: std::time::Duration::from_secs(
                file.device_certificate_lifetime_seconds
                    .unwrap_or(crate::config::DEFAULT_DEVICE_CERTIFICATE_LIFETIME_SECS),
            ),
            metrics: false,
        },
        grpc_addr: match grpc.or(file.grpc_addr) {
            Some(addr) => addr,
            None => default_addr(DEFAULT_GRPC_ADDR)?,
        },
        quic_addr: match quic.or(file.quic_addr) {
            Some(addr) => addr,
            None => default_addr(DEFAULT_QUIC_ADDR)?,
        },
        file,
    })
}

/// How often `serve` prunes the audit log (and once at start) when `[audit]` sets a retention.
const AUDIT_PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// How often `serve` witnesses the peers of `[audit] witness` (and once at start).
const AUDIT_WITNESS_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// `[audit]`'s retention; `None` keeps everything (no pruning task).
fn audit_retention(file: &FileConfig) -> Option<crate::audit::Retention> {
    let audit = file.audit.as_ref()?;
    let retention = crate::audit::Retention { records: audit.retain_records, max_age: audit.max_age() };
    (!retention.keeps_everything()).then_some(retention)
}

fn open_error(e: impl std::fmt::Display) -> CliError {
    CliError::new(e.to_string())
}

#[derive(Serialize)]
struct InitOut {
    data_dir: String,
    node_id: String,
    ca_fingerprint: String,
    key_backend: String,
    operator_device_id: String,
    operator_credentials: String,
}

/// Takes the data dir's exclusive lock for `command` (creating the data dir if needed).
fn lock(ctx: &Context, command: &str) -> Result<DataDirLock, CliError> {
    crate::fsutil::ensure_private_dir(&ctx.data_dir).map_err(open_error)?;
    DataDirLock::acquire(&ctx.data_dir, command).map_err(|e| {
        CliError::new(e.to_string()).hint("one palyra serve per data dir; use another --data-dir")
    })
}

pub(super) async fn init(ctx: &Context, args: InitArgs) -> Result<(), CliError> {
    let s = settings(ctx, &args, None, None)?;
    let _lock = lock(ctx, "palyra init")?;
    let node = Node::open(&ctx.data_dir, s.options).await.map_err(open_error)?;
    let out = summary(ctx, &node);
    node.core.close();
    ctx.print(&out, || {
        format!(
            "node {} initialised in {}\nCA fingerprint   {}\nroot key         {}\noperator         {} (credentials in {})",
            out.node_id, out.data_dir, out.ca_fingerprint, out.key_backend, out.operator_device_id, out.operator_credentials
        )
    })
}

fn summary(ctx: &Context, node: &Node) -> InitOut {
    InitOut {
        data_dir: ctx.data_dir.display().to_string(),
        node_id: node.identity.id().to_string(),
        ca_fingerprint: node.identity.ca().fingerprint().to_owned(),
        key_backend: node.core.key_backend.to_string(),
        operator_device_id: node.operator.to_string(),
        operator_credentials: Layout::new(&ctx.data_dir).operator_dir().display().to_string(),
    }
}

pub(super) async fn serve(ctx: &Context, args: ServeArgs) -> Result<(), CliError> {
    let mut s = settings(ctx, &args.init, args.grpc_addr, args.quic_addr)?;
    let console = console_addr(&s.file, &args)?;
    let metrics_addr = args.metrics_addr.or(s.file.metrics_addr);
    s.options.metrics = metrics_addr.is_some();
    // Before the root key is read: no core file, no same-user ptrace, root-only /proc files.
    let hardening = crate::limits::harden_process();
    tracing::info!(
        core_dumps_off = hardening.core_dumps_off,
        not_dumpable = hardening.not_dumpable,
        "key material kept out of core dumps"
    );
    // A descriptor per connection: a soft limit of 1,024 would refuse clients well before
    // the thousand the node is built to hold.
    match crate::limits::raise_open_files_limit() {
        Ok(limit) if limit.before != limit.after => {
            tracing::info!(before = ?limit.before, after = ?limit.after, "open files limit raised");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
    // Before anything in the data dir is opened: a second node would fight the first over the
    // database (its audit appends fail). Held until the process exits.
    let lock = lock(ctx, "palyra serve")?;
    let node = Node::open(&ctx.data_dir, s.options).await.map_err(open_error)?;
    // A node must not keep appending to a chain whose end does not match its seal: records
    // were removed (or the head was deleted or edited) while it was down.
    if let Some(problem) = node.audit.integrity() {
        return Err(CliError::new(format!("the audit log failed its integrity check: {problem}; refusing to serve"))
            .hint("someone with write access to palyra.db changed the audit log; keep this data dir for investigation and restore palyra.db from a backup"));
    }
    match crate::vault::locked_pages() {
        (locked, 0) => tracing::info!(locked, "key pages locked in RAM (mlock)"),
        (locked, refused) => tracing::warn!(
            locked,
            refused,
            "some key pages are not locked in RAM: the memory-lock limit (ulimit -l) is spent, so they may be swapped"
        ),
    }
    let listener = tokio::net::TcpListener::bind(s.grpc_addr).await.map_err(|e| {
        CliError::new(format!("cannot listen on {}: {e}", s.grpc_addr))
            .hint("is another palyra already running? use --grpc-addr")
    })?;
    let bound = listener.local_addr().map_err(|e| CliError::new(e.to_string()))?;
    let quic_config = crate::quic::QuicConfig {
        addr: s.quic_addr,
        max_connections: args.quic_max_connections.max(1),
        max_connections_per_address: args.quic_max_connections_per_address.max(1),
        max_handshakes: args.quic_max_handshakes.max(1),
        max_handshakes_per_address: args.quic_max_handshakes_per_address.max(1),
        ..Default::default()
    };
    let quic = crate::quic::QuicServer::bind(&node, quic_config).map_err(|e| {
        CliError::new(e.to_string()).hint("is another palyra already running? use --quic-addr")
    })?;
    let quic_bound = quic.local_addr().map_err(|e| CliError::new(e.to_string()))?;
    let console_listener = match console {
        Some((addr, allow_remote)) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                CliError::new(format!("cannot listen on {addr} for the console: {e}"))
                    .hint("is another palyra already running? use --console-addr or --no-console")
            })?;
            Some((listener, allow_remote))
        }
        None => None,
    };
    let console_bound = match &console_listener {
        Some((l, _)) => Some(l.local_addr().map_err(|e| CliError::new(e.to_string()))?),
        None => None,
    };
    // The CLI's default server: the addresses actually bound (port 0 included), removed on a
    // clean stop (the guard drops), ignored once this process no longer holds the lock.
    let record = crate::datadir_lock::ServeRecord {
        pid: std::process::id(),
        grpc: super::address::dialable(bound),
        quic: super::address::dialable(quic_bound),
        console: console_bound.map(super::address::dialable),
    };
    let _record = lock.record_serving(&ctx.data_dir, &record).map_err(|e| CliError::new(e.to_string()))?;
    let metrics_listener = match metrics_addr {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            CliError::new(format!("cannot listen on {addr} for metrics: {e}"))
                .hint("is another palyra already running? use --metrics-addr")
        })?),
        None => None,
    };
    let metrics_bound = match &metrics_listener {
        Some(l) => Some(l.local_addr().map_err(|e| CliError::new(e.to_string()))?),
        None => None,
    };
    if let Some(addr) = metrics_bound {
        tracing::info!(metrics = %addr, "serving Prometheus metrics at http://{addr}/metrics");
        if !addr.ip().is_loopback() {
            tracing::warn!(
                metrics = %addr,
                "the metrics endpoint is on a non-loopback address: anyone who can reach it sees the node's activity counts (no names or values); firewall it to your Prometheus"
            );
        }
    }
    let retention = node.events.spawn_retention(std::time::Duration::from_secs(60));
    let audit_sink = start_audit_sink(&node, &s.file)?;
    let audit_pruning = audit_retention(&s.file).map(|retention| {
        node.audit.set_retention(retention);
        node.audit.spawn_pruning(AUDIT_PRUNE_EVERY)
    });
    let witnesses = s.file.audit.as_ref().and_then(|a| a.witness.clone()).filter(|peers| !peers.is_empty());
    let witnessing = witnesses.map(|peers| super::witness::spawn_witnesses(ctx, peers, AUDIT_WITNESS_EVERY));
    let backups = s
        .file
        .backup
        .clone()
        .map(|b| crate::node_backup::spawn_schedule(ctx.data_dir.clone(), b, node.audit.clone()));
    let out = summary(ctx, &node);
    tracing::info!(grpc = %bound, quic = %quic_bound, node_id = %out.node_id, "palyra is serving");
    if !ctx.json {
        let mut console_line = match console_bound {
            Some(addr) => format!("\n  web console: http://{addr} (sign in with: palyra console)"),
            None => String::new(),
        };
        if let Some(addr) = metrics_bound {
            console_line.push_str(&format!("\n  metrics: http://{addr}/metrics"));
        }
        // The root key lives only in the keychain or key file: without a kit, a lost disk or
        // keychain loses every secret, and no backup can be made.
        let kit_line = if ctx.data_dir.join(crate::node_backup::KIT_FILE).exists() {
            String::new()
        } else {
            format!(
                "\n  no recovery kit yet: stop the node and run `palyra --data-dir {} recovery-kit` (a lost key loses every secret; backups need a kit)",
                ctx.data_dir.display()
            )
        };
        let banner = format!(
            "palyra node {} serving gRPC on https://{bound} and QUIC on {quic_bound}/udp{console_line}\n  operator credentials: {}\n  try: palyra --data-dir {} identity show{kit_line}",
            out.node_id,
            out.operator_credentials,
            ctx.data_dir.display()
        );
        // A log collector reads every line of stderr as JSON: the banner is a log event there.
        if args.log_format(&ctx.data_dir) == LogFormat::Json {
            tracing::info!("{banner}");
        } else {
            eprintln!("{banner}");
        }
    }
    // One signal stops both: gRPC drains in-flight calls, QUIC closes its connections.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let quic_task = tokio::spawn(quic.run(stopped()));
    let console_task = console_listener.map(|(listener, allow_remote)| {
        let limits = console_limits(&s.file);
        let options = crate::console::ConsoleOptions { allow_remote, grpc_server: bound.to_string(), limits };
        let (node, stop) = (node.clone(), stopped());
        tokio::spawn(async move { crate::console::serve(&node, listener, options, stop).await })
    });
    let metrics_task = metrics_listener.map(|listener| {
        let (node, stop) = (node.clone(), stopped());
        tokio::spawn(async move { crate::console::metrics::serve(node, listener, stop).await })
    });
    let mut grpc_limits = grpc_limits(&s.file.grpc.clone().unwrap_or_default());
    if let Some(n) = args.grpc_max_connections {
        grpc_limits.max_connections = n.max(1);
    }
    if let Some(n) = args.grpc_max_connections_per_address {
        grpc_limits.max_connections_per_address = n.max(1);
    }
    let grpc_load = crate::rpc::server::GrpcLoad::new(&grpc_limits);
    let grpc = crate::rpc::serve_with(&node, listener, &grpc_limits, grpc_load, async {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let grpc_result = grpc.await;
    let _ = quic_task.await;
    if let Some(task) = console_task {
        match task.await {
            Ok(Err(e)) => tracing::error!(error = %e, "the console stopped with an error"),
            Err(e) => tracing::error!(error = %e, "the console task failed"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    retention.abort();
    for task in [audit_pruning, witnessing].into_iter().flatten() {
        task.abort();
    }
    if let Some(task) = backups {
        task.abort();
    }
    grpc_result.map_err(|e| CliError::new(e.to_string()))?;
    if let Err(e) = node.audit.flush().await {
        tracing::error!(error = %e, "audit records queued at shutdown could not be appended");
    }
    if let Some(sink) = audit_sink {
        sink.stop().await;
    }
    node.core.close();
    tracing::info!("palyra stopped");
    Ok(())
}

/// Starts the `[audit] sink`, if one is set (its directory is checked, or created 0700).
fn start_audit_sink(node: &Node, file: &FileConfig) -> Result<Option<crate::audit::SinkHandle>, CliError> {
    let audit = file.audit.clone().unwrap_or_default();
    let config = match audit.sink_target().map_err(CliError::new)? {
        None => return Ok(None),
        Some(crate::config::AuditSinkTarget::Syslog) => {
            crate::audit::SinkConfig::Syslog(crate::audit::SyslogSinkConfig::default())
        }
        Some(crate::config::AuditSinkTarget::File(path)) => {
            let mut config = crate::audit::FileSinkConfig::new(path);
            config.max_bytes = audit.sink_max_bytes.unwrap_or(config.max_bytes);
            config.keep = audit.sink_keep.unwrap_or(config.keep);
            crate::audit::SinkConfig::File(config)
        }
    };
    let sink = node.start_audit_sink(config).map_err(|e| CliError::new(e.to_string()))?;
    let monitor = sink.monitor();
    node.metrics()
        .gauge_fn(
            crate::metrics::AUDIT_SINK_LAG,
            "Audit records committed but not yet delivered to the [audit] sink.",
            std::sync::Arc::new(move || i64::try_from(monitor.status().lag).unwrap_or(i64::MAX)),
        )
        .map_err(|e| CliError::new(format!("the audit sink's metric: {e:?}")))?;
    tracing::info!(sink = ?audit.sink, "delivering the audit log to its sink");
    Ok(Some(sink))
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    /// The config checks `max_connections_per_address` against these defaults without naming
    /// the edges (it is a leaf): they must stay the edges' own.
    #[test]
    fn the_configs_defaults_are_the_edges_defaults() {
        assert_eq!(crate::config::DEFAULT_GRPC_MAX_CONNECTIONS, crate::rpc::server::DEFAULT_MAX_CONNECTIONS);
        assert_eq!(crate::config::DEFAULT_CONSOLE_MAX_CONNECTIONS, crate::console::DEFAULT_MAX_CONNECTIONS);
        assert_eq!(grpc_limits(&GrpcConfig::default()), crate::rpc::server::GrpcLimits::default());
    }

    /// The config leaf states the default lifetime in seconds without naming the CA.
    #[test]
    fn the_device_certificate_lifetime_defaults_to_the_cas_and_follows_the_file() -> Result<(), CliError> {
        assert_eq!(
            Duration::from_secs(crate::config::DEFAULT_DEVICE_CERTIFICATE_LIFETIME_SECS),
            crate::identity::ca::DEFAULT_CLIENT_CERT_VALIDITY
        );
        assert_eq!(
            crate::node::NodeOptions::default().device_certificate_lifetime,
            crate::identity::ca::DEFAULT_CLIENT_CERT_VALIDITY
        );
        let dir = tempfile::tempdir().map_err(|e| CliError::new(e.to_string()))?;
        let ctx = Context {
            data_dir: dir.path().to_path_buf(),
            server: String::new(),
            server_from: String::new(),
            as_: None,
            credentials: None,
            json: false,
        };
        let init = InitArgs { key_backend: None, server_names: Vec::new(), config: None, _server: None };
        let options = settings(&ctx, &init, None, None)?.options;
        assert_eq!(options.device_certificate_lifetime, crate::identity::ca::DEFAULT_CLIENT_CERT_VALIDITY);
        std::fs::write(dir.path().join("palyra.toml"), "device_certificate_lifetime_seconds = 12\n")
            .map_err(|e| CliError::new(e.to_string()))?;
        let options = settings(&ctx, &init, None, None)?.options;
        assert_eq!(options.device_certificate_lifetime, Duration::from_secs(12));
        Ok(())
    }

    #[test]
    fn the_grpc_section_sets_its_limits_over_the_defaults() -> Result<(), crate::config::ConfigError> {
        let text = "[grpc]\nmax_connections = 100\nmax_connections_per_address = 10\nanonymous_idle_timeout_secs = 5";
        let file = FileConfig::parse(text, Path::new("palyra.toml"))?;
        let limits = grpc_limits(&file.grpc.unwrap_or_default());
        assert_eq!((limits.max_connections, limits.max_connections_per_address), (100, 10));
        assert_eq!(limits.anonymous_idle_timeout, Duration::from_secs(5));
        Ok(())
    }
}
