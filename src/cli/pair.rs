//! `palyra pair`: the joining device's side of pairing, as a library function ([`pair`]) that
//! the CLI and the integration tests both call.
//!
//! Steps (docs/pairing-protocol.md): make the device's identity and TLS key/CSR; fetch the node's
//! identity anonymously; check the CA fingerprint (from the URI, `--ca-fingerprint`, or an
//! interactive confirmation) and pin that CA before sending anything; run the SPAKE2
//! handshake; wait for an admin's approval; store the credentials in `client/` of the data
//! dir, where `client::connect` finds them.

use std::future::Future;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Args;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Uri};
use tonic_types::StatusExt;

use super::output::{CliError, Context};
use crate::config::Layout;
use crate::fsutil;
use crate::identity::DeviceIdentity;
use crate::identity::ca::{certificate_fingerprint, generate_tls_key_and_csr};
use crate::pairing::code::is_fingerprint;
use crate::pairing::handshake::{DeviceName, StartReply, StatusPoll};
use crate::pairing::{CodeId, DevicePairing, EnrollmentToken, PairingError, PairingUri, PakePassword, Pin};
use crate::wire::pb::identity::v1::{self as pbi, identity_service_client::IdentityServiceClient};
use crate::wire::pb::pairing::v1::{self as pb, pairing_service_client::PairingServiceClient};

/// `palyra pair` arguments.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  palyra pair --uri 'palyra://pair?...'   # from `palyra pairing code` on the node
  palyra pair --enrollment-key-file token.txt

The node's CA is checked before anything is sent: with --uri against the URI's `ca`; with
--code/--pin against --ca-fingerprint, or, on a terminal, after you confirm the fingerprint the
node shows (compare it with `palyra identity show` on the node). Without a terminal and
without --ca-fingerprint, pairing by code refuses to start. The PIN handshake also binds the
CA fingerprint, so a node that does not know the PIN cannot pass as the real one.")]
pub(super) struct PairArgs {
    /// The pairing URI (`palyra://pair?...`) from `palyra pairing code` or its QR code; its
    /// server replaces --server.
    #[arg(
        long,
        conflicts_with_all = ["code", "pin", "ca_fingerprint", "enrollment_key"],
        required_unless_present_any = ["code", "enrollment_key", "enrollment_key_file"]
    )]
    uri: Option<String>,
    /// An enrollment key's token (`palyra enrollment create` on the node): pairs at once,
    /// with the key's role and scopes, no operator step. Its server replaces --server. Prefer
    /// the environment variable or --enrollment-key-file: a command line is visible to every
    /// local user (`ps`).
    #[arg(
        long,
        env = "PALYRA_ENROLLMENT_KEY",
        hide_env_values = true,
        value_name = "TOKEN",
        conflicts_with_all = ["code", "pin", "ca_fingerprint", "enrollment_key_file"]
    )]
    enrollment_key: Option<String>,
    /// Read the enrollment key's token from FILE (`-` for stdin).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["code", "pin", "ca_fingerprint", "uri"])]
    enrollment_key_file: Option<PathBuf>,
    /// The code id from `palyra pairing code`.
    #[arg(long, requires = "pin", conflicts_with = "enrollment_key")]
    code: Option<String>,
    /// The 6-digit PIN shown with the code.
    #[arg(long, requires = "code")]
    pin: Option<String>,
    /// The node's CA fingerprint (lowercase hex SHA-256), for pairing by code without a prompt.
    #[arg(long, value_name = "HEX")]
    ca_fingerprint: Option<String>,
    /// This device's name, as the operator will see it.
    #[arg(long)]
    name: Option<String>,
    /// How long to wait for the operator's approval, in seconds.
    #[arg(long, default_value_t = 600)]
    wait_seconds: u64,
}

/// How the device knows the code.
#[derive(Debug, Clone)]
pub enum PairWith {
    /// A URI (QR code): server, code, PIN and CA fingerprint.
    Uri(PairingUri),
    /// A code and PIN typed in; the CA fingerprint given or to be confirmed.
    Code {
        /// The code.
        code_id: CodeId,
        /// The PIN.
        pin: Pin,
        /// The expected CA fingerprint, if known.
        ca_fingerprint: Option<String>,
    },
    /// An enrollment key's token: server, key id, secret and CA fingerprint; approved at once.
    Enrollment(EnrollmentToken),
}

/// What [`pair`] needs.
#[derive(Debug, Clone)]
pub struct PairOptions {
    /// `https://HOST:PORT` (ignored with a URI, which names its server).
    pub server: String,
    /// The device's data dir; credentials go to its `client/`.
    pub data_dir: PathBuf,
    /// Code and PIN.
    pub with: PairWith,
    /// The device's name.
    pub name: String,
    /// Time between status polls.
    pub poll_interval: Duration,
    /// How long to wait for approval.
    pub wait: Duration,
}

/// What [`pair`] reports while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairEvent {
    /// The CA fingerprint the node presented and that was pinned.
    CaPinned(String),
    /// The handshake succeeded; the request waits for the operator.
    Pending {
        /// The request to approve.
        request_id: String,
        /// This device's fingerprint, for the operator to compare.
        fingerprint: String,
    },
    /// Still waiting (once per poll).
    Waiting,
}

/// The result of a successful pairing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paired {
    /// The device id the node assigned.
    pub device_id: String,
    /// This device's fingerprint.
    pub fingerprint: String,
    /// Where the credentials are.
    pub dir: PathBuf,
}

/// Pairs the device in `opts.data_dir` with the node. `confirm_ca` is asked only when pairing
/// by code without a fingerprint; `progress` hears what happens.
pub async fn pair(
    opts: &PairOptions,
    confirm_ca: &(dyn Fn(&str) -> bool + Send + Sync),
    progress: &mut (dyn FnMut(PairEvent) + Send),
) -> Result<Paired, CliError> {
    let dir = Layout::new(&opts.data_dir).client_dir();
    if dir.join("cert.pem").exists() {
        return Err(CliError::new(format!("this data dir is already paired ({})", dir.display()))
            .hint("use another --data-dir, or remove client/ to pair again"));
    }
    let enrolling = matches!(opts.with, PairWith::Enrollment(_));
    let (server, code_id, password, expected_ca): (_, _, Box<dyn PakePassword + Send + Sync>, _) =
        match &opts.with {
            PairWith::Uri(uri) => (
                format!("https://{}", uri.server),
                uri.code_id.clone(),
                Box::new(uri.pin.clone()),
                Some(uri.ca_fingerprint.clone()),
            ),
            PairWith::Code { code_id, pin, ca_fingerprint } => {
                (opts.server.clone(), code_id.clone(), Box::new(pin.clone()), ca_fingerprint.clone())
            }
            PairWith::Enrollment(token) => (
                format!("https://{}", token.server),
                token.key_id.clone(),
                Box::new(token.secret.clone()),
                Some(token.ca_fingerprint.clone()),
            ),
        };
    let name = DeviceName::parse(&opts.name).map_err(|e| CliError::new(e.to_string()))?;

    // Step 1: the node's CA, checked before anything else is sent.
    let node = dangerous_fetch_node_identity(&server).await?;
    // Exactly one certificate, re-encoded: what is fingerprinted is all that is ever trusted
    // (a second PEM block appended by someone in between would otherwise become a root too).
    let ca_pem = single_certificate(&node.ca_certificate_pem)?;
    let ca_fingerprint = certificate_fingerprint(
        &pem::parse(&ca_pem).map_err(|e| CliError::new(e.to_string()))?.into_contents(),
    );
    match expected_ca {
        Some(expected) if expected == ca_fingerprint => {}
        Some(expected) => {
            return Err(CliError::new(
                PairingError::CaMismatch { expected, actual: ca_fingerprint }.to_string()
                    + ": this is not the node that made the code (or someone is in between)",
            )
            .hint("nothing was sent; check the address, and get a new code from the node's operator"));
        }
        None => {
            if !confirm_ca(&ca_fingerprint) {
                return Err(CliError::new("the node's CA fingerprint was not confirmed; nothing was sent")
                    .hint("compare it with `palyra identity show` on the node and pass --ca-fingerprint"));
            }
        }
    }
    progress(PairEvent::CaPinned(ca_fingerprint.clone()));
    let channel = pinned_channel(&server, &ca_pem).await?;
    let mut client = PairingServiceClient::new(channel);

    // Step 2–3: the handshake.
    let identity = DeviceIdentity::generate().map_err(|e| CliError::new(e.to_string()))?;
    let (key_pem, csr_pem) =
        generate_tls_key_and_csr(identity.id()).map_err(|e| CliError::new(e.to_string()))?;
    let (mut machine, start) =
        DevicePairing::start(&identity, code_id, &*password, &ca_fingerprint, name, &csr_pem)
            .map_err(|e| CliError::new(e.to_string()))?;
    drop(password);
    let reply = client
        .start_pairing(pb::StartPairingRequest {
            code_id: start.code_id.to_string(),
            device_name: start.device_name.as_str().to_owned(),
            signing_public_key: start.signing_public_key.to_vec(),
            agreement_public_key: start.agreement_public_key.to_vec(),
            csr_pem: start.csr_pem.clone(),
            pake_message: start.pake_message.clone(),
        })
        .await
        .map_err(pairing_status)?
        .into_inner();
    let expires_at = reply
        .expires_at
        .map(|t| std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.seconds).unwrap_or(0)))
        .unwrap_or_else(|| SystemTime::now() + crate::pairing::SESSION_TTL);
    let reply =
        StartReply::decode(&reply.session_id, &reply.pake_message, &reply.server_confirmation, expires_at)
            .map_err(|e| CliError::new(format!("the node's answer is malformed: {e}")))?;
    let finish = machine.handle_reply(&identity, &reply, SystemTime::now()).map_err(|e| match e {
        PairingError::ServerProofInvalid if enrolling => CliError::new(
            "the node's confirmation does not verify: the enrollment token is not this node's, or an impostor answered; nothing more was sent",
        )
        .hint("ask the node's operator for a new token (`palyra enrollment create`)"),
        PairingError::ServerProofInvalid => CliError::new(
            "wrong PIN or impostor node: the node's confirmation does not verify; nothing more was sent",
        )
        .hint("check the PIN; each try uses one of the code's attempts"),
        other => CliError::new(other.to_string()),
    })?;
    let finished = client
        .finish_pairing(pb::FinishPairingRequest {
            session_id: finish.session_id.clone(),
            client_confirmation: finish.client_confirmation.to_vec(),
            signature: finish.signature.to_vec(),
        })
        .await
        .map_err(pairing_status)?
        .into_inner();
    let request_id = finished.request_id;

    // The private parts are kept from now on, so they never travel and survive a retry.
    fsutil::ensure_private_dir(&opts.data_dir).map_err(fs_error)?;
    fsutil::ensure_private_dir(&dir).map_err(fs_error)?;
    fsutil::write_private_atomic(&dir.join("identity.key"), &identity.to_bytes(), true).map_err(fs_error)?;
    fsutil::write_private_atomic(&dir.join("key.pem"), key_pem.as_bytes(), true).map_err(fs_error)?;
    let fingerprint = identity.fingerprint();
    if !enrolling {
        progress(PairEvent::Pending { request_id: request_id.clone(), fingerprint: fingerprint.clone() });
    }

    // Step 6: wait for the operator.
    let deadline = tokio::time::Instant::now() + opts.wait;
    loop {
        let poll = StatusPoll::sign(&identity, &request_id, SystemTime::now());
        let status = client
            .get_pairing_status(pb::GetPairingStatusRequest {
                request_id: poll.request_id.clone(),
                timestamp_unix_ms: poll.timestamp_unix_ms,
                signature: poll.signature.to_vec(),
            })
            .await;
        match status {
            Ok(status) => {
                let status = status.into_inner();
                match status.state() {
                    pb::PairingState::Approved => {
                        return store(&dir, &server, &status, &ca_fingerprint, fingerprint);
                    }
                    pb::PairingState::Rejected => {
                        return Err(CliError::new("the node's operator rejected this device")
                            .hint("ask the operator, then pair again with a new code"));
                    }
                    pb::PairingState::Expired => {
                        return Err(CliError::new("the pairing request expired before anyone approved it")
                            .hint("pair again with a new code"));
                    }
                    _ => {}
                }
            }
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {}
            Err(s) => return Err(s.into()),
        }
        if tokio::time::Instant::now() >= deadline {
            let hint = if enrolling {
                "the node took the key's use but could not be asked for the certificate; revoke the \
                 half-enrolled device (`palyra devices list`) and enroll again"
                    .to_owned()
            } else {
                format!("approve it on the node with `palyra pairing approve {request_id}`, then pair again")
            };
            return Err(CliError::new(format!("no decision on pairing request {request_id} yet")).hint(hint));
        }
        progress(PairEvent::Waiting);
        tokio::time::sleep(opts.poll_interval).await;
    }
}

fn store(
    dir: &Path,
    server: &str,
    status: &pb::GetPairingStatusResponse,
    ca_fingerprint: &str,
    fingerprint: String,
) -> Result<Paired, CliError> {
    let ca_pem = single_certificate(&status.ca_certificate_pem)?;
    let ca = pem::parse(&ca_pem).map_err(|e| CliError::new(e.to_string()))?;
    if certificate_fingerprint(ca.contents()) != ca_fingerprint {
        return Err(CliError::new("the node's CA changed during pairing; not storing anything"));
    }
    fsutil::write_private_atomic(&dir.join("ca.pem"), ca_pem.as_bytes(), true).map_err(fs_error)?;
    fsutil::write_private_atomic(&dir.join("device_id"), status.device_id.as_bytes(), true)
        .map_err(fs_error)?;
    // Later commands find the node without --server.
    super::address::store_paired_server(dir, server)?;
    // Last: its presence means "paired".
    fsutil::write_private_atomic(&dir.join("cert.pem"), status.certificate_pem.as_bytes(), false)
        .map_err(fs_error)?;
    Ok(Paired { device_id: status.device_id.clone(), fingerprint, dir: dir.to_path_buf() })
}

/// The one certificate in `text`, re-encoded as PEM. Anything else — no certificate, several
/// blocks, another PEM type — is refused: a pinned CA is exactly one certificate.
fn single_certificate(text: &str) -> Result<String, CliError> {
    let blocks = pem::parse_many(text)
        .map_err(|e| CliError::new(format!("the node sent an unreadable CA certificate: {e}")))?;
    match blocks.as_slice() {
        [only] if only.tag() == "CERTIFICATE" => Ok(pem::encode(only)),
        _ => Err(CliError::new(format!(
            "the node sent {} PEM blocks where exactly one CA certificate belongs; refusing to trust it",
            blocks.len()
        ))),
    }
}

fn fs_error(e: fsutil::FsError) -> CliError {
    CliError::new(e.to_string())
}

/// Pairing errors with what to do about them.
fn pairing_status(s: tonic::Status) -> CliError {
    let reason = s.get_error_details().error_info().map(|i| i.reason.clone()).unwrap_or_default();
    let hint = match reason.as_str() {
        "ERROR_REASON_PAIRING_CODE_INVALID" | "ERROR_REASON_PAIRING_CODE_EXPIRED" => {
            "ask the node's operator for a new code (`palyra pairing code`)"
        }
        "ERROR_REASON_PAIRING_ATTEMPTS_EXHAUSTED" => "the code is burned; ask for a new one",
        "ERROR_REASON_ENROLLMENT_KEY_USED_UP" | "ERROR_REASON_ENROLLMENT_KEY_REVOKED" => {
            "ask the node's operator for a new enrollment key (`palyra enrollment create`)"
        }
        "ERROR_REASON_PAIRING_PROOF_INVALID" => "wrong PIN or an altered handshake; check the PIN",
        "ERROR_REASON_RATE_LIMITED" => "too many tries; wait a minute",
        _ => "",
    };
    let mut err = CliError::from(s);
    if !hint.is_empty() {
        err.hint = Some(hint.to_owned());
    }
    err
}

/// A channel that trusts only `ca_pem` (server authentication; no client certificate yet).
async fn pinned_channel(server: &str, ca_pem: &str) -> Result<Channel, CliError> {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    let connected = Channel::from_shared(server.to_owned())
        .map_err(|e| CliError::new(format!("bad server {server:?}: {e}")).hint("use https://HOST:PORT"))?
        .tls_config(tls)
        .map_err(|e| CliError::new(format!("tls: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    match connected {
        Ok(channel) => Ok(channel),
        Err(e) => Err(super::address::unreachable_error(server, &e).await),
    }
}

/// Fetches GetNodeIdentity over TLS **without verifying the server**: only for step 1, whose
/// answer is checked against the expected CA fingerprint (or a person) before anything is
/// sent; nothing else ever travels over this channel.
async fn dangerous_fetch_node_identity(server: &str) -> Result<pbi::GetNodeIdentityResponse, CliError> {
    let uri: Uri = server
        .parse()
        .map_err(|e| CliError::new(format!("bad server {server:?}: {e}")).hint("use https://HOST:PORT"))?;
    let (host, port) = match (uri.host(), uri.port_u16()) {
        (Some(h), Some(p)) if uri.scheme_str() == Some("https") => (h.trim_matches(['[', ']']).to_owned(), p),
        _ => return Err(CliError::new(format!("bad server {server:?}")).hint("use https://HOST:PORT")),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| CliError::new(format!("tls: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(DangerousAcceptAnyServer(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(host.clone())
        .map_err(|e| CliError::new(format!("bad server host {host:?}: {e}")))?
        .to_owned();
    let connect = tower::service_fn(move |_: Uri| {
        let (connector, name, addr) = (connector.clone(), name.clone(), format!("{host}:{port}"));
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }) as std::pin::Pin<Box<dyn Future<Output = _> + Send>>
    });
    let channel = Endpoint::from_shared(format!("http://{}", uri.authority().map_or("", |a| a.as_str())))
        .map_err(|e| CliError::new(format!("bad server {server:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(connect)
        .await;
    let channel = match channel {
        Ok(channel) => channel,
        Err(e) => return Err(super::address::unreachable_error(server, &e).await),
    };
    Ok(IdentityServiceClient::new(channel)
        .get_node_identity(pbi::GetNodeIdentityRequest {})
        .await?
        .into_inner())
}

/// Accepts any server certificate (signatures are still checked). Used only by
/// [`dangerous_fetch_node_identity`].
#[derive(Debug)]
struct DangerousAcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for DangerousAcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// An enrollment token from `file` (`-`: stdin), at most 4 KiB.
fn read_token(file: &Path) -> Result<zeroize::Zeroizing<String>, CliError> {
    use std::io::Read;
    let mut text = zeroize::Zeroizing::new(String::new());
    let read = if file == Path::new("-") {
        std::io::stdin().lock().take(4096).read_to_string(&mut text)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(4096).read_to_string(&mut text))
    };
    read.map_err(|e| {
        CliError::new(format!("cannot read the enrollment token from {}: {e}", file.display()))
    })?;
    Ok(text)
}

/// `palyra pair`.
pub(super) async fn run(ctx: &Context, args: PairArgs) -> Result<(), CliError> {
    let token = match (&args.enrollment_key, &args.enrollment_key_file) {
        (_, Some(file)) => Some(read_token(file)?),
        (Some(token), None) => {
            if std::env::var("PALYRA_ENROLLMENT_KEY").ok().as_deref() != Some(token.as_str()) {
                eprintln!(
                    "warning: an enrollment token on the command line is visible to other local users; \
                     prefer PALYRA_ENROLLMENT_KEY or --enrollment-key-file"
                );
            }
            Some(zeroize::Zeroizing::new(token.clone()))
        }
        (None, None) => None,
    };
    let with = match (args.uri, args.code, args.pin) {
        _ if token.is_some() => {
            let token = token.unwrap_or_default();
            PairWith::Enrollment(EnrollmentToken::parse(&token).map_err(|e| CliError::new(e.to_string()))?)
        }
        (Some(uri), _, _) => {
            PairWith::Uri(PairingUri::parse(uri.trim()).map_err(|e| CliError::new(e.to_string()))?)
        }
        (None, Some(code), Some(pin)) => PairWith::Code {
            code_id: CodeId::parse(code.trim()).map_err(|e| CliError::new(e.to_string()))?,
            pin: Pin::parse(pin.trim()).map_err(|e| CliError::new(e.to_string()))?,
            ca_fingerprint: match args.ca_fingerprint {
                Some(fp) if is_fingerprint(&fp.to_lowercase()) => Some(fp.to_lowercase()),
                Some(_) => {
                    return Err(CliError::new("--ca-fingerprint is not a hex SHA-256 (64 hex digits)"));
                }
                None => None,
            },
        },
        _ => return Err(CliError::new("give --uri, --code with --pin, or --enrollment-key")),
    };
    let name = args
        .name
        .unwrap_or_else(|| crate::identity::ca::local_host_name().unwrap_or_else(|| "device".to_owned()));
    let opts = PairOptions {
        server: ctx.server.clone(),
        data_dir: ctx.data_dir.clone(),
        with,
        name,
        poll_interval: Duration::from_secs(1),
        wait: Duration::from_secs(args.wait_seconds),
    };
    let confirm = |fingerprint: &str| -> bool {
        use std::io::{BufRead, IsTerminal, Write};
        if !std::io::stdin().is_terminal() {
            eprintln!(
                "the node's CA fingerprint is {fingerprint}; pass --ca-fingerprint to pair without a terminal"
            );
            return false;
        }
        eprint!(
            "The node's CA fingerprint is\n  {fingerprint}\nDoes it match `palyra identity show` on the node? [y/N] "
        );
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).is_ok() && matches!(line.trim(), "y" | "Y" | "yes")
    };
    let spinner = ['|', '/', '-', '\\'];
    let mut tick = 0usize;
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stderr()) && !ctx.json;
    let mut progress = |event: PairEvent| match event {
        PairEvent::CaPinned(fp) => eprintln!("node CA {fp} pinned"),
        PairEvent::Pending { request_id, fingerprint } => {
            eprintln!("PIN accepted. This device's fingerprint: {fingerprint}");
            eprintln!("Waiting for approval; on the node run:\n  palyra pairing approve {request_id}");
        }
        PairEvent::Waiting if interactive => {
            tick += 1;
            eprint!("\r{} waiting for approval", spinner[tick % spinner.len()]);
        }
        PairEvent::Waiting => {}
    };
    let paired = pair(&opts, &confirm, &mut progress).await?;
    if interactive {
        eprintln!();
    }
    ctx.print(
        &serde_json::json!({ "device_id": paired.device_id, "fingerprint": paired.fingerprint, "dir": paired.dir }),
        || {
            format!(
                "paired as device {} ({}); credentials in {}",
                paired.device_id,
                paired.fingerprint,
                paired.dir.display()
            )
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_ca_is_exactly_one_certificate() {
        let now = SystemTime::now();
        let ca = crate::identity::DeviceCa::create(crate::identity::DeviceId::generate(), now).expect("ca");
        let other =
            crate::identity::DeviceCa::create(crate::identity::DeviceId::generate(), now).expect("ca");
        let one = single_certificate(ca.certificate_pem()).expect("one certificate");
        assert_eq!(pem::parse(&one).expect("pem").into_contents(), ca.certificate_der().as_ref());
        let smuggled = format!("{}{}", ca.certificate_pem(), other.certificate_pem());
        assert!(single_certificate(&smuggled).is_err(), "a second CA appended in transit is refused");
        assert!(single_certificate("").is_err());
        assert!(
            single_certificate("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err()
        );
    }
}
