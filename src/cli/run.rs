//! `palyra run`: a command with secrets in its environment.
//!
//! Every reference is resolved before anything starts: the `--env NAME=REF` flags, the lines of
//! each `--env-file` whose values are references, and every variable of the current environment
//! whose value is a reference (`PALYRA_*` variables excepted: they are palyra's own settings).
//! One failure and the command is not started: one line names the variable and the reference
//! (never a value), and the exit code follows the table (`exit.rs`). The values go into the
//! command's environment only, never into an argument or a log; palyra's own buffers are wiped
//! once the command started (the copy std's `Command` makes for the spawn is freed, not wiped,
//! when the spawn returns: wiping it would take `unsafe`). palyra forwards SIGINT, SIGTERM,
//! SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH to it (SIGINT and SIGQUIT not when the
//! terminal already sent them to both) and exits with its status (128+N when it died of
//! signal N).
//!
//! With `--watch`, palyra follows the referenced secrets with `VaultService/WatchSecrets` (one
//! stream per scope, resumed from the last sequence when it breaks); on a change it resolves
//! again and, when a version changed, stops the command (SIGTERM, SIGKILL after 10 s) and starts
//! it with the new values. A re-resolution that fails keeps the running command. When the node
//! refuses a watch for good (this device revoked or unknown, a scope no longer allowed), access
//! was withdrawn: palyra stops the command the same way and exits 3 instead of retrying. A
//! long-lived `run` renews this data dir's certificate past two thirds of its lifetime.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, SystemTime};

use clap::Args;
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use super::client::{channel, connect, credentials_dir, renew_now, renewal_due};
use super::output::{CliError, Context, Exit};
use super::resolve::{Resolved, resolve, versions};
use crate::vault::dotenv::{self, MAX_DOTENV_LEN};
use crate::vault::reference::{MAX_REFERENCES, Reference};
use crate::vault::{Scope, SecretKey};
use crate::wire::pb::vault::v1::{self as pb, vault_service_client::VaultServiceClient};
use tonic_types::StatusExt;

/// How long a command stopped for a restart gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Longest a re-resolution after a change may take (the command's signals wait meanwhile).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait between two attempts to re-open a broken watch or to renew the certificate.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Longest single sleep before re-reading the certificate's renewal time (a suspended machine
/// does not advance tokio's clock, so long sleeps are cut into these).
const RENEWAL_CHECK: Duration = Duration::from_secs(600);

#[derive(Debug, Args)]
#[command(
    after_help = "Example: palyra run --env OPENAI_API_KEY=palyra://agents/alpha/OPENAI_API_KEY -- python agent.py\n\
Also resolved: --env-file lines NAME=palyra://SCOPE/KEY, and variables of the current environment\n\
whose value is palyra://SCOPE/KEY[?version=N]."
)]
pub(super) struct RunArgs {
    /// Set NAME to the secret REF (palyra://SCOPE/KEY[?version=N]); repeatable.
    #[arg(long = "env", value_name = "NAME=REF")]
    env: Vec<String>,
    /// Read NAME=value lines (dotenv quoting); values that are references are resolved;
    /// repeatable, later files win, --env wins over files.
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Restart the command when a referenced secret changes. Should the node revoke this
    /// device or stop allowing a watched scope, stop the command (TERM, then KILL after 10 s)
    /// and exit 3.
    #[arg(long)]
    watch: bool,
    /// The command and its arguments, after `--`.
    #[arg(required = true, last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Where a variable's value comes from.
enum Source {
    Secret(Reference),
    Plain(Zeroizing<String>),
}

/// A variable to set in the command's environment.
struct Binding {
    /// Where it was given, for errors: `--env`, `FILE line N`, `the environment`.
    origin: String,
    source: Source,
}

/// The environment the command gets on top of palyra's: names and values.
type Env = Vec<(String, Zeroizing<Vec<u8>>)>;

pub(super) async fn run(ctx: &Context, args: RunArgs) -> Result<(), CliError> {
    let bindings = bindings(&args)?;
    let references: BTreeSet<&Reference> = bindings
        .values()
        .filter_map(|b| match &b.source {
            Source::Secret(r) => Some(r),
            Source::Plain(_) => None,
        })
        .collect();
    if references.len() > MAX_REFERENCES {
        return Err(CliError::of(Exit::Usage, format!("more than {MAX_REFERENCES} references")));
    }

    // Credentials only when there is something to read: `run` with plain values needs none.
    let dir = if references.is_empty() && !args.watch { None } else { Some(credentials_dir(ctx)?) };
    let channel_now = if references.is_empty() { None } else { Some(connect(ctx).await?) };
    // Watches first, so that no change between the first resolution and the watch is missed.
    let (change_tx, mut changes) = mpsc::channel::<()>(1);
    // A watch that the node refuses for good (this device revoked or unknown, the scope no
    // longer allowed) says so here: access to the secrets was withdrawn.
    let (withdrawn_tx, mut withdrawn) = mpsc::channel::<CliError>(1);
    if let Some(dir) = dir.as_ref().filter(|_| args.watch) {
        let mut by_scope: BTreeMap<&Scope, BTreeSet<&SecretKey>> = BTreeMap::new();
        for r in &references {
            by_scope.entry(r.scope()).or_default().insert(r.key());
        }
        if let Some(channel) = &channel_now {
            for (scope, keys) in by_scope {
                let keys = keys.into_iter().cloned().collect();
                let watch =
                    Watch { server: ctx.server.clone(), dir: dir.clone(), scope: scope.clone(), keys };
                let stream = watch
                    .open(channel.clone(), 0)
                    .await
                    .map_err(|e| CliError::from(e).context(format!("watch {scope}")))?;
                tokio::spawn(watch.follow(stream, change_tx.clone(), withdrawn_tx.clone()));
            }
        }
        tokio::spawn(renew_forever(ctx.server.clone(), dir.clone()));
    }

    let resolved = match channel_now {
        Some(channel) => resolve_bindings(channel, &bindings).await?,
        None => BTreeMap::new(),
    };
    let mut current = versions(&resolved);
    let env = environment(&bindings, resolved)?;

    let mut signals = forward_signals()?;
    let mut child = spawn(&args.command, env)?;
    // A stop signal (INT, TERM, HUP, QUIT) was forwarded: when the command exits, palyra exits
    // with it (also in a restart already under way), and no later change restarts it.
    let mut stopping = false;
    let mut restart: Option<Restart> = None;
    // Access withdrawn: the command was told to stop (and is killed after the grace period);
    // palyra then exits with this error, not the command's status.
    let mut lost: Option<(CliError, Option<Instant>)> = None;
    loop {
        let pid = child.id();
        let kill_at =
            restart.as_ref().filter(|r| !r.killed).map(|r| r.kill_at).or(lost.as_ref().and_then(|l| l.1));
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|e| CliError::new(format!("cannot wait for the command: {e}")))?;
                if let Some((error, _)) = lost.take() {
                    return Err(error);
                }
                match restart.take() {
                    Some(Restart { env, versions, .. }) if !stopping => {
                        child = spawn(&args.command, env)?;
                        current = versions;
                        eprintln!("palyra run: restarted the command with the changed secrets");
                    }
                    _ => return exit_with(status),
                }
            }
            Some(signal) = signals.recv() => {
                if let Some(pid) = pid
                    && !delivered_by_terminal(signal, pid)
                {
                    send(pid, signal);
                }
                stopping |= [rustix::process::Signal::INT, rustix::process::Signal::TERM,
                    rustix::process::Signal::HUP, rustix::process::Signal::QUIT].contains(&signal);
            }
            () = sleep_until_opt(kill_at) => {
                if let Some(pid) = pid {
                    send(pid, rustix::process::Signal::KILL);
                }
                if let Some(r) = restart.as_mut() {
                    r.killed = true;
                }
                if let Some(l) = lost.as_mut() {
                    l.1 = None;
                }
            }
            Some(error) = withdrawn.recv(), if lost.is_none() => {
                eprintln!("palyra run: {}; stopping the command", error.message);
                // A restart under way already sent TERM and keeps its own deadline.
                if restart.is_none()
                    && let Some(pid) = pid
                {
                    send(pid, rustix::process::Signal::TERM);
                }
                let kill_at = restart.as_ref().map_or_else(|| Instant::now() + STOP_GRACE, |r| r.kill_at);
                restart = None;
                stopping = true;
                lost = Some((error, Some(kill_at)));
            }
            Some(()) = changes.recv() => {
                // A stop was asked for (and forwarded): the command is on its way out, and palyra
                // with it; a change now must not start it again.
                if stopping {
                    continue;
                }
                let (Some(dir), against) = (&dir, restart.as_ref().map_or(&current, |r| &r.versions)) else {
                    continue;
                };
                let reresolved = tokio::time::timeout(RESOLVE_TIMEOUT, reresolve(ctx, dir, &bindings, against))
                    .await
                    .unwrap_or_else(|_| Err(CliError::of(Exit::Unavailable, "the node did not answer in time")));
                match reresolved {
                    Ok(None) => {}
                    Ok(Some((env, versions))) => match restart.as_mut() {
                        // Already stopping: start with the newest values.
                        Some(r) => {
                            r.env = env;
                            r.versions = versions;
                        }
                        None => {
                            if let Some(pid) = pid {
                                send(pid, rustix::process::Signal::TERM);
                            }
                            let kill_at = Instant::now() + STOP_GRACE;
                            restart = Some(Restart { env, versions, kill_at, killed: false });
                        }
                    },
                    Err(e) => eprintln!("palyra run: a secret changed but the command keeps its old values: {}", e.message),
                }
            }
        }
    }
}

/// A restart under way: the command got SIGTERM and is started again with `env` once it exits.
struct Restart {
    /// The environment to start it with.
    env: Env,
    /// The versions in `env`.
    versions: BTreeMap<Reference, u64>,
    /// When SIGKILL is due.
    kill_at: Instant,
    /// Whether it was sent.
    killed: bool,
}

/// Every variable to set, by name: the environment's references, then the files in order,
/// then `--env` (a later one wins).
fn bindings(args: &RunArgs) -> Result<BTreeMap<String, Binding>, CliError> {
    let mut out = BTreeMap::new();
    for (name, value) in std::env::vars_os() {
        let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else { continue };
        if name.starts_with("PALYRA_") || !Reference::is_meant(value) {
            continue;
        }
        let reference = Reference::parse(value)
            .map_err(|e| CliError::of(Exit::Usage, format!("{name} (from the environment): {e}")))?;
        out.insert(
            name.to_owned(),
            Binding { origin: "the environment".into(), source: Source::Secret(reference) },
        );
    }
    for file in &args.env_file {
        let text = read_env_file(file)?;
        let entries = dotenv::parse(&text)
            .map_err(|e| CliError::of(Exit::Usage, format!("{}: {e}", file.display())))?;
        for entry in entries {
            let origin = format!("{} line {}", file.display(), entry.line);
            let source = if Reference::is_meant(&entry.value) {
                Source::Secret(
                    Reference::parse(&entry.value)
                        .map_err(|e| CliError::of(Exit::Usage, format!("{origin}: {}: {e}", entry.name)))?,
                )
            } else {
                Source::Plain(entry.value)
            };
            out.insert(entry.name, Binding { origin, source });
        }
    }
    for flag in &args.env {
        let usage =
            |m: String| CliError::of(Exit::Usage, format!("--env {m}")).hint("--env NAME=palyra://SCOPE/KEY");
        // What is not a reference is not quoted: it may be a value given here by mistake.
        let Some((name, value)) = flag.split_once('=') else {
            return Err(usage("takes NAME=REF; this one has no '='".to_owned()));
        };
        if !dotenv::is_name(name) {
            return Err(usage(format!("{:?} is not a variable name", bounded(name))));
        }
        if !Reference::is_meant(value) {
            return Err(usage(format!(
                "{name}: the value is not a secret reference (palyra://SCOPE/KEY); plain values go in an --env-file"
            )));
        }
        let reference = Reference::parse(value).map_err(|e| usage(format!("{name}: {e}")))?;
        out.insert(name.to_owned(), Binding { origin: "--env".into(), source: Source::Secret(reference) });
    }
    Ok(out)
}

fn bounded(text: &str) -> String {
    text.chars().take(80).collect()
}

fn read_env_file(path: &Path) -> Result<Zeroizing<String>, CliError> {
    let mut bytes = Zeroizing::new(Vec::new());
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_DOTENV_LEN as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| CliError::new(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() > MAX_DOTENV_LEN {
        return Err(CliError::of(
            Exit::Usage,
            format!("{} is larger than {MAX_DOTENV_LEN} bytes", path.display()),
        ));
    }
    std::str::from_utf8(&bytes)
        .map(|text| Zeroizing::new(text.to_owned()))
        .map_err(|_| CliError::of(Exit::Usage, format!("{} is not UTF-8 text", path.display())))
}

/// Resolves every reference of `bindings`; a failure names the (first) variable and reference.
async fn resolve_bindings(
    channel: Channel,
    bindings: &BTreeMap<String, Binding>,
) -> Result<BTreeMap<Reference, Resolved>, CliError> {
    let refs = bindings.values().filter_map(|b| match &b.source {
        Source::Secret(r) => Some(r),
        Source::Plain(_) => None,
    });
    resolve(channel, refs).await.map_err(|(reference, e)| {
        let named = bindings
            .iter()
            .find(|(_, b)| matches!(&b.source, Source::Secret(r) if *r == reference))
            .map(|(name, b)| format!("{name}={reference} ({})", b.origin))
            .unwrap_or_else(|| reference.to_string());
        e.context(named)
    })
}

/// The command's extra environment: each binding's value (moved out of `resolved`, which is
/// wiped as it drops).
fn environment(
    bindings: &BTreeMap<String, Binding>,
    resolved: BTreeMap<Reference, Resolved>,
) -> Result<Env, CliError> {
    let mut env = Env::with_capacity(bindings.len());
    for (name, binding) in bindings {
        let value = match &binding.source {
            Source::Plain(text) => Zeroizing::new(text.as_bytes().to_vec()),
            Source::Secret(r) => match resolved.get(r) {
                Some(v) => Zeroizing::new(v.value.to_vec()),
                None => return Err(CliError::new(format!("{name}={r} was not resolved"))),
            },
        };
        if value.contains(&0) {
            let what = match &binding.source {
                Source::Secret(r) => format!("{name}={r}"),
                Source::Plain(_) => format!("{name} ({})", binding.origin),
            };
            return Err(CliError::new(format!(
                "{what}: the value holds a NUL byte, which no environment variable can carry"
            )));
        }
        env.push((name.clone(), value));
    }
    Ok(env)
}

/// Resolves again after a change; `None` when every version is still `against`.
async fn reresolve(
    ctx: &Context,
    dir: &Path,
    bindings: &BTreeMap<String, Binding>,
    against: &BTreeMap<Reference, u64>,
) -> Result<Option<(Env, BTreeMap<Reference, u64>)>, CliError> {
    let channel = channel(&ctx.server, dir).await?;
    let resolved = resolve_bindings(channel, bindings).await?;
    let next = versions(&resolved);
    if &next == against {
        return Ok(None);
    }
    Ok(Some((environment(bindings, resolved)?, next)))
}

/// Starts the command with `env` added to palyra's environment; `env` is wiped once the child
/// exists (std's `Command` keeps its own copy until the spawn returns, then frees it).
fn spawn(command: &[OsString], env: Env) -> Result<Child, CliError> {
    let Some((program, args)) = command.split_first() else {
        return Err(CliError::of(Exit::Usage, "no command given after --"));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args);
    // A reusable credential the command has no use for: an agent that leaks its environment
    // must not hand out the key that enrolled it.
    cmd.env_remove("PALYRA_ENROLLMENT_KEY");
    for (name, value) in &env {
        cmd.env(name, os_str(value));
    }
    let child = cmd.spawn().map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound { Exit::NotFound } else { Exit::Failure };
        CliError::of(kind, format!("cannot start {}: {e}", Path::new(program).display()))
    });
    drop(cmd);
    drop(env);
    child
}

#[cfg(unix)]
fn os_str(bytes: &[u8]) -> &OsStr {
    use std::os::unix::ffi::OsStrExt;
    OsStr::from_bytes(bytes)
}

/// palyra's exit for the command's status: its code, or 128+N for signal N.
fn exit_with(status: ExitStatus) -> Result<(), CliError> {
    use std::os::unix::process::ExitStatusExt;
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(signal)) => (128 + (signal & 0x7f)) as u8,
        (None, None) => Exit::Failure.code(),
    };
    if code == 0 { Ok(()) } else { Err(CliError::status(code)) }
}

/// Installs handlers for the forwarded signals; each arrives on the returned receiver.
fn forward_signals() -> Result<mpsc::UnboundedReceiver<rustix::process::Signal>, CliError> {
    use rustix::process::Signal;
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = mpsc::unbounded_channel();
    let kinds = [
        (SignalKind::interrupt(), Signal::INT),
        (SignalKind::terminate(), Signal::TERM),
        (SignalKind::hangup(), Signal::HUP),
        (SignalKind::quit(), Signal::QUIT),
        (SignalKind::user_defined1(), Signal::USR1),
        (SignalKind::user_defined2(), Signal::USR2),
        (SignalKind::window_change(), Signal::WINCH),
    ];
    for (kind, forwarded) in kinds {
        let mut stream = signal(kind)
            .map_err(|e| CliError::new(format!("cannot handle signal {}: {e}", forwarded.as_raw())))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(forwarded).is_err() {
                    break;
                }
            }
        });
    }
    Ok(rx)
}

/// Whether the terminal sent `signal` to the command itself: SIGINT (Ctrl-C) and SIGQUIT go to
/// the terminal's whole foreground process group, so when palyra and the command are both in
/// it, forwarding would deliver the signal twice. Read from `/proc` (Linux); where it
/// cannot be read, the signal is forwarded.
fn delivered_by_terminal(signal: rustix::process::Signal, pid: u32) -> bool {
    use rustix::process::Signal;
    if signal != Signal::INT && signal != Signal::QUIT {
        return false;
    }
    // /proc/PID/stat: "pid (comm) state ppid pgrp session tty_nr tpgid ..."; comm may hold
    // anything, so the fields are counted after its last ')'.
    let groups = |path: &str| -> Option<(i64, i64)> {
        let stat = std::fs::read_to_string(path).ok()?;
        let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
        Some((fields.get(2)?.parse().ok()?, fields.get(5)?.parse().ok()?))
    };
    match (groups("/proc/self/stat"), groups(&format!("/proc/{pid}/stat"))) {
        (Some((own_group, foreground)), Some((child_group, _))) => {
            foreground > 0 && own_group == foreground && child_group == own_group
        }
        _ => false,
    }
}

/// Sends `signal` to the command (not yet reaped, so its pid is still its own).
fn send(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One scope's WatchSecrets stream and the keys in it that matter.
struct Watch {
    server: String,
    dir: PathBuf,
    scope: Scope,
    keys: BTreeSet<SecretKey>,
}

impl Watch {
    async fn open(
        &self,
        channel: Channel,
        since_sequence: u64,
    ) -> Result<tonic::codec::Streaming<pb::WatchSecretsResponse>, tonic::Status> {
        // Progress markers keep the resume point current while the scope is quiet.
        let request = pb::WatchSecretsRequest {
            scope: self.scope.to_string(),
            recursive: false,
            since_sequence,
            progress: true,
        };
        Ok(VaultServiceClient::new(channel).watch_secrets(request).await?.into_inner())
    }

    fn retrying(&self, why: &str, backoff: Duration) {
        eprintln!("palyra run: watching {} failed: {why}; retrying in {}s", self.scope, backoff.as_secs());
    }

    /// Reads changes and reports those of watched keys on `changes`; re-opens a broken stream
    /// from the last sequence seen (with backoff), and asks for a check after a re-open that
    /// may have missed something.
    async fn follow(
        self,
        mut stream: tonic::codec::Streaming<pb::WatchSecretsResponse>,
        changes: mpsc::Sender<()>,
        withdrawn: mpsc::Sender<CliError>,
    ) {
        // Refused for good by the node itself (revoked, unknown, no longer allowed: its own
        // ErrorInfo reasons, not a bare status a proxy could send): retrying would never end.
        let withdrawn_for_good = |status: &tonic::Status| {
            matches!(
                reason(status).as_deref(),
                Some(
                    "ERROR_REASON_DEVICE_REVOKED"
                        | "ERROR_REASON_UNKNOWN_DEVICE"
                        | "ERROR_REASON_POLICY_DENIED"
                )
            )
        };
        let give_up = |status: tonic::Status| {
            let error = CliError::from(status).context(format!("watch {}", self.scope));
            let _ = withdrawn.try_send(error);
        };
        let mut last = 0;
        let mut backoff = Duration::from_secs(1);
        loop {
            match stream.message().await {
                Ok(Some(change)) => {
                    last = last.max(change.sequence);
                    backoff = Duration::from_secs(1);
                    if change.change == pb::SecretChange::Progress as i32 {
                        continue;
                    }
                    if change.scope == self.scope.as_str()
                        && self.keys.iter().any(|k| k.as_str() == change.key)
                    {
                        // Full means a check is pending already; closed means palyra is ending.
                        if let Err(mpsc::error::TrySendError::Closed(())) = changes.try_send(()) {
                            return;
                        }
                    }
                }
                Err(s) if withdrawn_for_good(&s) => return give_up(s),
                Ok(None) | Err(_) => loop {
                    if changes.is_closed() {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    let channel = match channel(&self.server, &self.dir).await {
                        Ok(channel) => channel,
                        Err(e) => {
                            self.retrying(&e.message, backoff);
                            continue;
                        }
                    };
                    match self.open(channel, last).await {
                        Ok(s) => {
                            stream = s;
                            if last == 0 {
                                let _ = changes.try_send(());
                            }
                            break;
                        }
                        // The log moved past `last`: start from now and check everything.
                        Err(s) if reason(&s).as_deref() == Some("ERROR_REASON_EVENTS_TRUNCATED") => last = 0,
                        Err(s) if withdrawn_for_good(&s) => return give_up(s),
                        Err(s) => self.retrying(&CliError::from(s).message, backoff),
                    }
                },
            }
        }
    }
}

fn reason(status: &tonic::Status) -> Option<String> {
    status.get_error_details().error_info().map(|i| i.reason.clone())
}

/// Keeps this data dir's certificate fresh while `run` lives: renewed past two thirds of its
/// lifetime, persisted atomically; a failure keeps the old one and retries with backoff.
async fn renew_forever(server: String, dir: PathBuf) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let wait = match renewal_due(&dir) {
            Ok((due, _)) => due.duration_since(SystemTime::now()).unwrap_or_default(),
            Err(e) => {
                eprintln!("palyra run: cannot read this device's certificate: {}", e.message);
                MAX_BACKOFF
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait.min(RENEWAL_CHECK)).await;
            continue;
        }
        match renew_now(&server, &dir).await {
            Ok(not_after) => {
                let until = super::output::time(Some(&prost_types::Timestamp::from(not_after)));
                eprintln!("palyra run: renewed this device's certificate (valid until {until})");
                backoff = Duration::from_secs(1);
            }
            Err(e) => {
                eprintln!(
                    "palyra run: could not renew this device's certificate: {}; retrying in {}s",
                    e.message,
                    backoff.as_secs()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_of_a_status() {
        use std::os::unix::process::ExitStatusExt;
        assert!(exit_with(ExitStatus::from_raw(0)).is_ok());
        assert_eq!(exit_with(ExitStatus::from_raw(3 << 8)).map_err(|e| e.exit_code()), Err(3));
        // Killed by SIGTERM (15): 143, as a shell reports it.
        assert_eq!(exit_with(ExitStatus::from_raw(15)).map_err(|e| e.exit_code()), Err(143));
        assert!(exit_with(ExitStatus::from_raw(9)).is_err_and(|e| e.is_silent()));
    }
}
