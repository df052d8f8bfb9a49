//! Which node the CLI talks to, with which credentials, and why a connection failed.
//!
//! The server, first found wins: `--server` / `PALYRA_SERVER`; the addresses the node serving
//! on this data dir recorded (`serve.json`, see `datadir_lock`); `grpc_addr` of the data
//! dir's `palyra.toml`; on a paired device, the server it paired with (`client/server`); else
//! `https://127.0.0.1:7443`. (With `client/` credentials from another node than this data
//! dir's own, the pairing's server comes first.) A URL without a scheme (`HOST:PORT`, as a
//! pairing URI names it) means `https://`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::output::{CliError, Exit};
use crate::config::{FileConfig, Layout};
use crate::error_chain::error_chain;
use crate::fsutil;

/// The default server.
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:7443";

/// The file in `client/` that holds the server a device paired with.
pub const PAIRED_SERVER_FILE: &str = "server";

/// Whose credentials: the node's operator (`operator/`) or this data dir as a paired device
/// (`client/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum As {
    /// `operator/`: the node's own admin credentials (made by `palyra init`).
    Operator,
    /// `client/`: the credentials `palyra pair` stored.
    Device,
}

/// The credentials directories to try, in order: the one `as_` names, else `first` then the
/// other (gRPC prefers the operator, the QUIC data plane the device); only those that exist.
pub fn credential_dirs(data_dir: &Path, as_: Option<As>, first: As) -> Vec<PathBuf> {
    let layout = Layout::new(data_dir);
    let dir = |a| if a == As::Operator { layout.operator_dir() } else { layout.client_dir() };
    let order = match as_ {
        Some(a) => vec![a],
        None if first == As::Operator => vec![As::Operator, As::Device],
        None => vec![As::Device, As::Operator],
    };
    order.into_iter().map(dir).filter(|d| d.join("cert.pem").exists()).collect()
}

/// The server to dial and where it came from (for errors).
#[derive(Debug, Clone)]
pub struct Server {
    /// `https://HOST:PORT`.
    pub url: String,
    /// Where it came from, e.g. "--server" or "the running serve's record".
    pub from: String,
}

/// `text` as an `https://` URL: `HOST:PORT` gets the scheme; `http://` and other schemes are
/// refused with what to use instead.
pub fn normalize(text: &str) -> Result<String, CliError> {
    let text = text.trim();
    match text.split_once("://") {
        None => Ok(format!("https://{text}")),
        Some(("https", _)) => Ok(text.to_owned()),
        Some(("http", rest)) => Err(CliError::of(
            Exit::Usage,
            format!("--server {text:?}: palyra speaks TLS only: use https://{}", rest.trim_end_matches('/')),
        )),
        Some((scheme, _)) => {
            Err(CliError::of(Exit::Usage, format!("--server {text:?}: unknown scheme {scheme:?}"))
                .hint("use https://HOST:PORT"))
        }
    }
}

/// The server for `data_dir`: `flag` (`--server` / `PALYRA_SERVER`) if given, else as the
/// module says. `creds` is the credentials directory the command will use, if known.
pub fn resolve(data_dir: &Path, flag: Option<&str>, creds: Option<&Path>) -> Result<Server, CliError> {
    if let Some(flag) = flag {
        return Ok(Server { url: normalize(flag)?, from: "--server".to_owned() });
    }
    let layout = Layout::new(data_dir);
    let client_dir = layout.client_dir();
    // A directory named with --credentials (a copy of a paired device's client/): its server.
    if let Some(named) = creds.filter(|d| *d != client_dir.as_path() && *d != layout.operator_dir().as_path())
        && let Some(url) = paired_server(named)
    {
        let from = format!(
            "the server these credentials paired with ({})",
            named.join(PAIRED_SERVER_FILE).display()
        );
        return Ok(Server { url, from });
    }
    let paired = paired_server(&client_dir).map(|url| Server {
        url,
        from: format!(
            "the server this device paired with ({})",
            client_dir.join(PAIRED_SERVER_FILE).display()
        ),
    });
    // client/ credentials from another node: this data dir's own node is not theirs.
    let elsewhere = creds == Some(client_dir.as_path()) && !same_ca(&client_dir, &layout.operator_dir());
    let paired = match (elsewhere, paired) {
        (true, Some(paired)) => return Ok(paired),
        (_, paired) => paired,
    };
    if let Some(record) = crate::datadir_lock::serving(data_dir) {
        return Ok(Server {
            url: format!("https://{}", record.grpc),
            from: format!(
                "the address the running `palyra serve` recorded in {}",
                data_dir.join(crate::datadir_lock::SERVE_FILE).display()
            ),
        });
    }
    let config = data_dir.join("palyra.toml");
    if let Some(addr) = FileConfig::load(&config, true).ok().and_then(|c| c.grpc_addr) {
        return Ok(Server {
            url: format!("https://{}", dialable(addr)),
            from: format!("grpc_addr in {}", config.display()),
        });
    }
    Ok(paired.unwrap_or_else(|| Server { url: DEFAULT_SERVER.to_owned(), from: "the default".to_owned() }))
}

/// The QUIC address of the node serving on `data_dir` (its record), else `quic_addr` of its
/// `palyra.toml`.
pub fn local_quic(data_dir: &Path) -> Option<SocketAddr> {
    if let Some(record) = crate::datadir_lock::serving(data_dir) {
        return Some(record.quic);
    }
    FileConfig::load(&data_dir.join("palyra.toml"), true).ok().and_then(|c| c.quic_addr).map(dialable)
}

/// The server `palyra pair` stored in `client/`.
fn paired_server(client_dir: &Path) -> Option<String> {
    let bytes = fsutil::read_private(&client_dir.join(PAIRED_SERVER_FILE)).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let text = text.trim();
    (!text.is_empty() && text.len() <= 512).then(|| text.to_owned())
}

/// Records the server a device paired with, for later commands.
pub fn store_paired_server(client_dir: &Path, url: &str) -> Result<(), CliError> {
    fsutil::write_private_atomic(&client_dir.join(PAIRED_SERVER_FILE), url.as_bytes(), true)
        .map_err(|e| CliError::new(e.to_string()))
}

fn same_ca(a: &Path, b: &Path) -> bool {
    match (std::fs::read(a.join("ca.pem")), std::fs::read(b.join("ca.pem"))) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `addr` as a client dials it: an unspecified address (all interfaces) as loopback.
pub(super) fn dialable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            (std::net::Ipv4Addr::LOCALHOST, addr.port()).into()
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            (std::net::Ipv6Addr::LOCALHOST, addr.port()).into()
        }
        _ => addr,
    }
}

/// Why connecting to `server` with the credentials in `creds` failed, in words: the server's
/// certificate is not signed by this node's CA, the port answers plain HTTP (the console),
/// nothing listens there, or the transport's own error. Exit 6 (unavailable).
pub async fn connect_error(
    server: &str,
    creds: &Path,
    error: &(dyn std::error::Error + Send + Sync + 'static),
) -> CliError {
    let chain = error_chain(error);
    let unavailable = |message: String| CliError::of(Exit::Unavailable, message);
    let ca = creds.join("ca.pem");
    let using = format!("credentials in {}", creds.display());
    if chain.contains("UnknownIssuer") || chain.contains("BadSignature") {
        return unavailable(format!(
            "{server} presents a certificate not signed by this node's CA ({})",
            ca.display()
        ))
        .hint(format!("it is another node, or these credentials are not for it ({using}); check --server"));
    }
    if chain.contains("NotValidForName") {
        return unavailable(format!("{server}'s certificate does not name the host in {server}")).hint(
            "dial it by a name it has, or add one on the node with `palyra init --server-name NAME` on a new node",
        );
    }
    let data_dir = creds.parent().map_or_else(|| creds.display().to_string(), |d| d.display().to_string());
    let running =
        format!("is `palyra serve` running? it records its address in {data_dir}; or pass --server");
    unreachable(server, &chain, &format!(" ({using})"), &running).await
}

/// Why nothing answered as a node at `server` (no credentials involved, e.g. before pairing):
/// nothing listening, a plain HTTP server (the console's port), or `chain` as it came.
pub async fn unreachable_error(
    server: &str,
    error: &(dyn std::error::Error + Send + Sync + 'static),
) -> CliError {
    let chain = error_chain(error);
    unreachable(server, &chain, "", "is the node running, and is the address right?").await
}

async fn unreachable(server: &str, chain: &str, using: &str, running: &str) -> CliError {
    let unavailable = |message: String| CliError::of(Exit::Unavailable, message);
    let authority = server.split_once("://").map_or(server, |(_, rest)| rest).trim_end_matches('/');
    match probe(authority).await {
        Probe::NothingListening => unavailable(format!("nothing is listening on {authority}")).hint(running),
        Probe::Http => unavailable(format!(
            "{authority} answers plain HTTP: that is the console port (or another web server), not the node's gRPC port"
        ))
        .hint("use the gRPC address (https://, default port 7443) the serve banner names"),
        Probe::Other => unavailable(format!("cannot connect to {server}{using}: {chain}"))
            .hint("is `palyra serve` running, and is --server right?"),
    }
}

enum Probe {
    NothingListening,
    Http,
    Other,
}

/// A plain TCP look at `authority`: refused, an HTTP/1 server (it answers a request line with
/// `HTTP/`), or something else (a TLS server drops it).
async fn probe(authority: &str) -> Probe {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let wait = Duration::from_secs(2);
    let mut stream = match tokio::time::timeout(wait, tokio::net::TcpStream::connect(authority)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Probe::NothingListening,
        _ => return Probe::Other,
    };
    if stream.write_all(b"HEAD / HTTP/1.0\r\n\r\n").await.is_err() {
        return Probe::Other;
    }
    let mut head = [0u8; 5];
    match tokio::time::timeout(wait, stream.read_exact(&mut head)).await {
        Ok(Ok(_)) if &head == b"HTTP/" => Probe::Http,
        _ => Probe::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_without_a_scheme_is_https_and_http_is_refused() {
        assert_eq!(normalize("127.0.0.1:7443").ok(), Some("https://127.0.0.1:7443".to_owned()));
        assert_eq!(normalize("https://node:1").ok(), Some("https://node:1".to_owned()));
        let http = normalize("http://127.0.0.1:7443").err().map(|e| (e.exit_code(), e.to_string()));
        let (code, text) = http.unwrap_or_default();
        assert_eq!(code, 2);
        assert!(text.contains("TLS only: use https://127.0.0.1:7443"), "{text}");
        assert!(normalize("ftp://x:1").is_err());
    }

    #[test]
    fn the_server_comes_from_the_flag_then_the_config_then_the_pairing_then_the_default() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let data = tmp.path().join("device");
        let url = |flag: Option<&str>| resolve(&data, flag, None).map(|s| s.url).unwrap_or_default();
        assert_eq!(url(None), DEFAULT_SERVER);
        let client = Layout::new(&data).client_dir();
        fsutil::ensure_private_dir(&data).unwrap_or_else(|e| panic!("{e}"));
        store_paired_server(&client, "https://node.example:7443").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(url(None), "https://node.example:7443");
        std::fs::write(data.join("palyra.toml"), "grpc_addr = \"0.0.0.0:9443\"\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            url(None),
            "https://127.0.0.1:9443",
            "the config's all-interfaces address, dialled on loopback"
        );
        // client/ credentials from another node than this data dir's: their pairing first.
        std::fs::write(client.join("cert.pem"), "x").unwrap_or_else(|e| panic!("{e}"));
        let pairing = resolve(&data, None, Some(&client)).map(|s| s.url).unwrap_or_default();
        assert_eq!(pairing, "https://node.example:7443");
        assert_eq!(url(Some("10.0.0.1:7443")), "https://10.0.0.1:7443");
    }
}
