//! `palyra node health|events [--peer HOST:PORT]`: the QUIC data plane of another node (or this
//! one: the default peer is the QUIC address the node serving on this data dir recorded, else
//! `quic_addr` of its palyra.toml), with the data dir's device credentials: `client/` (this data
//! dir paired with that node) or `operator/` (the node itself), whichever that node's CA
//! accepts; `--as` or `--credentials` picks one.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde::Serialize;

use super::output::{CliError, Context, Exit, time};
use crate::events::Event;
use crate::quic::client::{ClientTls, QuicClient};

#[derive(Debug, Subcommand)]
pub(super) enum NodeCommand {
    /// Ask a node's data plane whether it is serving.
    #[command(after_help = "Example:\n  palyra node health --peer 10.0.0.2:7444")]
    Health {
        /// The node's QUIC address [default: the node serving on this data dir].
        #[arg(long, value_name = "HOST:PORT")]
        peer: Option<String>,
    },
    /// Follow a node's event log until Ctrl-C (one line per event, JSON lines with --json).
    #[command(after_help = "Example:\n  palyra node events --peer 10.0.0.2:7444 --since 0 --json")]
    Events {
        /// The node's QUIC address [default: the node serving on this data dir].
        #[arg(long, value_name = "HOST:PORT")]
        peer: Option<String>,
        /// Only events after this sequence (0 = everything retained) [default: from now on,
        /// nothing replayed].
        #[arg(long)]
        since: Option<u64>,
        /// Only this kind, e.g. vault.secret.written (repeatable).
        #[arg(long = "kind", value_name = "KIND")]
        kinds: Vec<String>,
    },
}

pub(super) async fn run(ctx: &Context, cmd: NodeCommand) -> Result<(), CliError> {
    match cmd {
        NodeCommand::Health { peer } => {
            let client = connect(ctx, peer, ctx.credentials.as_deref()).await?;
            let health = client.health().await.map_err(quic_error)?;
            client.close().await;
            #[derive(Serialize)]
            struct Out {
                status: String,
                device_id: String,
                version: String,
                uptime_seconds: u64,
            }
            let out = Out {
                status: health.status,
                device_id: health.device_id,
                version: health.version,
                uptime_seconds: health.uptime_seconds,
            };
            ctx.print(&out, || {
                format!(
                    "{} node {} version {} up {}s",
                    out.status, out.device_id, out.version, out.uptime_seconds
                )
            })
        }
        NodeCommand::Events { peer, since, kinds } => {
            let client = connect(ctx, peer, ctx.credentials.as_deref()).await?;
            let mut events = client
                .stream_events(since.unwrap_or(crate::quic::EVENTS_FROM_NOW), kinds)
                .await
                .map_err(quic_error)?;
            loop {
                let next = tokio::select! {
                    next = events.next() => next,
                    _ = tokio::signal::ctrl_c() => break,
                };
                match next {
                    Ok(Some(event)) => print_event(ctx, &event)?,
                    Ok(None) => break,
                    Err(e) => {
                        return Err(quic_error(e)
                            .hint("with events_truncated, resume with --since <oldest available - 1>"));
                    }
                }
            }
            client.close().await;
            Ok(())
        }
    }
}

fn quic_error(e: crate::quic::ClientError) -> CliError {
    CliError::of(Exit::of_quic(&e), e.to_string())
}

fn print_event(ctx: &Context, event: &Event) -> Result<(), CliError> {
    let pb = crate::quic::event_to_pb(event);
    let at = time(pb.at.as_ref());
    if ctx.json {
        #[derive(Serialize)]
        struct Out<'a> {
            sequence: u64,
            at: String,
            kind: &'a str,
            subject: &'a str,
            attributes: &'a std::collections::BTreeMap<String, String>,
        }
        let line = serde_json::to_string(&Out {
            sequence: event.sequence,
            at,
            kind: &event.kind,
            subject: &event.subject,
            attributes: &event.attributes,
        })
        .map_err(|e| CliError::new(e.to_string()))?;
        println!("{line}");
    } else {
        let attributes: Vec<String> = event.attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("{:>8} {at} {:<24} {} {}", event.sequence, event.kind, event.subject, attributes.join(" "));
    }
    Ok(())
}

fn resolve(peer: &str) -> Result<(SocketAddr, String), CliError> {
    let addr = peer
        .to_socket_addrs()
        .map_err(|e| {
            CliError::new(format!("bad --peer {peer:?}: {e}")).hint("use HOST:PORT, e.g. 127.0.0.1:7444")
        })?
        .next()
        .ok_or_else(|| CliError::new(format!("--peer {peer:?} resolves to no address")))?;
    let host = peer.rsplit_once(':').map_or(peer, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    Ok((addr, host))
}

fn credentials(dir: &Path) -> Result<ClientTls, CliError> {
    let read = |name: &str| super::client::read_credential(dir, name);
    ClientTls::from_pem(&read("ca.pem")?, &read("cert.pem")?, &read("key.pem")?)
        .map_err(|e| CliError::new(format!("credentials in {}: {e}", dir.display())))
}

/// Connects with the given credentials, else with the first of `client/` and `operator/` that
/// the peer accepts (a node paired with another keeps that node's credentials in `client/`).
async fn connect(
    ctx: &Context,
    peer: Option<String>,
    explicit: Option<&Path>,
) -> Result<QuicClient, CliError> {
    let peer = match peer {
        Some(peer) => peer,
        None => super::address::local_quic(&ctx.data_dir).map(|a| a.to_string()).ok_or_else(|| {
            CliError::of(Exit::Usage, format!("no node serves on {} to default to", ctx.data_dir.display()))
                .hint("pass --peer HOST:PORT (the node's QUIC address)")
        })?,
    };
    Ok(connect_with_dir(ctx, &peer, explicit).await?.0)
}

/// [`connect`], also returning the credentials directory the peer accepted.
pub(super) async fn connect_with_dir(
    ctx: &Context,
    peer: &str,
    explicit: Option<&Path>,
) -> Result<(QuicClient, PathBuf), CliError> {
    let (addr, host) = resolve(peer)?;
    let dirs: Vec<PathBuf> = match explicit {
        Some(dir) => vec![dir.to_path_buf()],
        None => super::address::credential_dirs(&ctx.data_dir, ctx.as_, super::address::As::Device),
    };
    if dirs.is_empty() {
        return Err(CliError::new(format!("no device credentials in {}", ctx.data_dir.display())).hint(
            "pair this data dir with the node (`palyra pair ... ` with role node), or pass --credentials",
        ));
    }
    let mut last = None;
    for dir in dirs {
        match QuicClient::connect(addr, &host, credentials(&dir)?).await {
            Ok(client) => return Ok((client, dir)),
            Err(e) => last = Some((Exit::of_quic(&e), format!("{e} (with {})", dir.display()))),
        }
    }
    let (exit, why) = last.unwrap_or((Exit::Unavailable, String::new()));
    Err(CliError::of(exit, format!("cannot connect to {peer}: {why}"))
        .hint("is `palyra serve` running there (QUIC on --quic-addr), and is this data dir paired with it?"))
}
