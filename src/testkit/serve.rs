//! The `palyra` binary as a child process: one-shot CLI runs and `palyra serve` with its
//! addresses read from its log.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The `palyra` binary of the crate under test (`CARGO_BIN_EXE_palyra`, which cargo sets only
/// for tests and benches: get one with [`palyra_bin!`](crate::palyra_bin)).
#[derive(Debug, Clone, Copy)]
pub struct Palyra {
    bin: &'static str,
}

/// The [`Palyra`] binary of the test or bench being built.
#[macro_export]
macro_rules! palyra_bin {
    () => {
        $crate::testkit::Palyra::at(env!("CARGO_BIN_EXE_palyra"))
    };
}

impl Palyra {
    /// The binary at `bin`.
    pub const fn at(bin: &'static str) -> Palyra {
        Palyra { bin }
    }

    /// Its path.
    pub fn path(&self) -> &'static Path {
        Path::new(self.bin)
    }

    /// The binary with no argument and the caller's environment.
    pub fn command(&self) -> Command {
        Command::new(self.bin)
    }

    /// The binary on `data` with the file key backend and no log (`PALYRA_LOG=off`); add the
    /// arguments (and `.env("PALYRA_LOG", …)` to see a log).
    pub fn cli(&self, data: &Path) -> Command {
        let mut command = self.command();
        command.arg("--data-dir").arg(data).env("PALYRA_KEY_BACKEND", "file").env("PALYRA_LOG", "off");
        command
    }

    /// Runs [`cli`](Self::cli) with `args` to completion.
    pub fn run(&self, data: &Path, args: &[&str]) -> Output {
        self.cli(data).args(args).output().unwrap()
    }

    /// `palyra serve` on `data`: every listener on a free loopback port, the file key backend,
    /// log level `log`, stdin and stdout closed, stderr piped (the caller must keep reading it,
    /// e.g. with [`parse_serving`] on each line, or the child blocks). More `serve` options may
    /// be appended.
    pub fn serve_command(&self, data: &Path, log: &str) -> Command {
        let mut command = self.cli(data);
        command
            .args(["serve", "--grpc-addr", "127.0.0.1:0", "--quic-addr", "127.0.0.1:0"])
            .args(["--console-addr", "127.0.0.1:0"])
            .env("PALYRA_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    /// Starts [`serve_command`](Self::serve_command) and waits (up to two minutes) until it
    /// serves; its stderr keeps being drained.
    pub fn serve(&self, data: &Path, log: &str) -> Serving {
        spawn_serving(self.serve_command(data, log), Duration::from_secs(120), |_| {})
    }
}

/// The gRPC and QUIC addresses from serve's `… serving gRPC on https://ADDR and QUIC on
/// ADDR/udp` line, or `None` for any other line.
pub fn parse_serving(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.split("serving gRPC on https://").nth(1)?;
    let (grpc, rest) = rest.split_once(" and QUIC on ")?;
    // Text: the token ends at a space; a JSON log line (`--log-format json`): at a quote or an
    // escaped newline.
    let quic =
        rest.split(|c: char| c.is_whitespace() || c == '"' || c == '\\').next()?.strip_suffix("/udp")?;
    Some((grpc.parse().ok()?, quic.parse().ok()?))
}

/// `palyra serve` as a child, serving on the addresses it announced.
#[derive(Debug)]
pub struct Serving {
    /// The process.
    pub child: Child,
    /// Its gRPC address.
    pub grpc: SocketAddr,
    /// Its QUIC address.
    pub quic: SocketAddr,
}

impl Serving {
    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// Spawns `command` (a [`Palyra::serve_command`], maybe with more options) and returns once it
/// announces its addresses. Its stderr is read to the end on a thread (so the child never blocks
/// on a full pipe); every other line goes to `line`. Panics with the log if it exits first or
/// does not serve within `timeout`.
pub fn spawn_serving(
    mut command: Command,
    timeout: Duration,
    mut line: impl FnMut(String) + Send + 'static,
) -> Serving {
    let mut child = command.spawn().unwrap();
    let stderr = child.stderr.take().expect("serve's stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for text in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addrs) = parse_serving(&text) {
                let _ = tx.send(Ok(addrs));
                seen.clear();
            } else {
                if seen.len() < 100 {
                    seen.push(text.clone());
                }
                line(text);
            }
        }
        let _ = tx.send(Err(seen.join("\n")));
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok((grpc, quic))) => Serving { child, grpc, quic },
        Ok(Err(log)) => panic!("palyra serve exited before serving: {:?}\n{log}", child.wait()),
        Err(_) => {
            let _ = child.kill();
            panic!("palyra serve did not serve within {timeout:?}")
        }
    }
}
