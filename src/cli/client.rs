//! gRPC channel to the node with the operator's (or a paired device's) client certificate.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::address::As;
use super::output::{CliError, Context, Exit};
use crate::fsutil;
use crate::identity::ca::{CLOCK_SKEW_ALLOWANCE, Csr, certificate_validity_pem, csr_for_key};
use crate::identity::{DeviceId, DeviceIdentity, renewal_proof_message};
use crate::wire::pb::identity::v1::{self as pb, identity_service_client::IdentityServiceClient};

/// A channel authenticated with the credentials in the data dir: `operator/` on the node
/// itself, `client/` on a paired device.
pub async fn connect(ctx: &Context) -> Result<Channel, CliError> {
    let dir = credentials_dir(ctx)?;
    let said_where = |mut e: CliError| {
        if e.exit_code() == Exit::Unavailable.code() && !ctx.server_from.is_empty() {
            e.message = format!("{} (server from {})", e.message, ctx.server_from);
        }
        e
    };
    renew_if_due(&ctx.server, &dir).await.map_err(said_where)?;
    channel(&ctx.server, &dir).await.map_err(said_where)
}

/// The directory holding this data dir's client credentials: `operator/` on the node itself,
/// `client/` on a paired device.
/// `--as` picks one.
pub fn credentials_dir(ctx: &Context) -> Result<PathBuf, CliError> {
    if let Some(dir) = &ctx.credentials {
        if dir.join("cert.pem").is_file() {
            return Ok(dir.clone());
        }
        return Err(CliError::new(format!(
            "no client credentials in {}: cert.pem is missing",
            dir.display()
        ))
        .hint(
            "--credentials (or PALYRA_CREDENTIALS) names a directory holding ca.pem, cert.pem and key.pem",
        ));
    }
    super::address::credential_dirs(&ctx.data_dir, ctx.as_, As::Operator).into_iter().next().ok_or_else(
        || {
            let which = match ctx.as_ {
                Some(As::Operator) => "operator ",
                Some(As::Device) => "device ",
                None => "",
            };
            CliError::new(format!("no {which}client credentials in {}", ctx.data_dir.display()))
                .hint("run `palyra init` on the node, or `palyra pair` on a device, or pass --data-dir")
        },
    )
}

/// When the certificate in `dir` is due for renewal (two thirds of its lifetime, counted from
/// issuance: `notBefore` + [`CLOCK_SKEW_ALLOWANCE`], to `notAfter`), and when it expires.
pub fn renewal_due(dir: &Path) -> Result<(SystemTime, SystemTime), CliError> {
    let cert_path = dir.join("cert.pem");
    let cert = fsutil::read_private(&cert_path).map_err(|e| CliError::new(e.to_string()))?;
    let Some((not_before, not_after)) = certificate_validity_pem(&cert) else {
        return Err(CliError::new(format!("{} is not a certificate", cert_path.display())));
    };
    // The lifetime counts from issuance: notBefore is backdated by the clock-skew allowance,
    // which would make a short-lived certificate look due at once (the Python and TypeScript
    // clients use the same rule).
    let issued = not_before + CLOCK_SKEW_ALLOWANCE;
    let lifetime = not_after.duration_since(issued).unwrap_or_default();
    Ok((issued + lifetime * 2 / 3, not_after))
}

/// Renews the certificate in `dir` when two thirds of its lifetime have passed (see
/// [`renew_now`]). A renewal that fails while the certificate is still valid is reported and
/// the command goes on.
pub async fn renew_if_due(server: &str, dir: &Path) -> Result<(), CliError> {
    let (due, not_after) = renewal_due(dir)?;
    let now = SystemTime::now();
    if now < due {
        return Ok(());
    }
    match renew_now(server, dir).await {
        Ok(_) => {
            eprintln!("renewed this device's certificate");
            Ok(())
        }
        Err(e) if now < not_after => {
            eprintln!("warning: could not renew this device's certificate yet: {e}");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Renews the certificate in `dir` now: over mTLS while it is valid, or after it expired
/// anonymously, with an Ed25519 proof over a fresh server challenge (only a paired device's
/// `client/` holds the identity key for that). The TLS key stays; only `cert.pem` is replaced,
/// atomically, and only by a certificate for the same device. Returns the new `not_after`.
pub async fn renew_now(server: &str, dir: &Path) -> Result<SystemTime, CliError> {
    let (_, not_after) = renewal_due(dir)?;
    let cert_pem = if SystemTime::now() >= not_after {
        renew_with_proof(server, dir).await?
    } else {
        renew_over_mtls(server, dir).await?
    };
    let Some((_, new_not_after)) = certificate_validity_pem(cert_pem.as_bytes()) else {
        return Err(CliError::new("the node sent something that is not a certificate"));
    };
    if pem_device_id(cert_pem.as_bytes()) != Some(certificate_device_id(dir)?) {
        return Err(CliError::new("the node sent a certificate for another device; keeping the old one"));
    }
    // The TLS key stays: a certificate for another key would leave this data dir unusable.
    let old_cert = fsutil::read_private(&dir.join("cert.pem")).map_err(|e| CliError::new(e.to_string()))?;
    let same_key = crate::identity::ca::public_key_of_pem(cert_pem.as_bytes())
        .is_some_and(|new| Some(new) == crate::identity::ca::public_key_of_pem(&old_cert));
    if !same_key {
        return Err(CliError::new("the node sent a certificate for another key; keeping the old one"));
    }
    fsutil::write_private_atomic(&dir.join("cert.pem"), cert_pem.as_bytes(), true)
        .map_err(|e| CliError::new(e.to_string()))?;
    Ok(new_not_after)
}

fn read_text(dir: &Path, name: &str) -> Result<zeroize::Zeroizing<String>, CliError> {
    let bytes = fsutil::read_private(&dir.join(name)).map_err(|e| CliError::new(e.to_string()))?;
    String::from_utf8(bytes)
        .map(zeroize::Zeroizing::new)
        .map_err(|_| CliError::new(format!("{} is not text", dir.join(name).display())))
}

/// The device id the certificate in `dir` was issued to.
fn certificate_device_id(dir: &Path) -> Result<DeviceId, CliError> {
    let cert = fsutil::read_private(&dir.join("cert.pem")).map_err(|e| CliError::new(e.to_string()))?;
    pem_device_id(&cert).ok_or_else(|| CliError::new("the certificate names no palyra device"))
}

fn pem_device_id(cert_pem: &[u8]) -> Option<DeviceId> {
    let parsed = pem::parse(cert_pem).ok()?;
    crate::identity::ca::device_id_from_certificate(parsed.contents())
}

async fn renew_over_mtls(server: &str, dir: &Path) -> Result<String, CliError> {
    let id = certificate_device_id(dir)?;
    let csr_pem = csr_for_key(id, &read_text(dir, "key.pem")?).map_err(|e| CliError::new(e.to_string()))?;
    let mut client = IdentityServiceClient::new(channel(server, dir).await?);
    let response = client.renew_certificate(pb::RenewCertificateRequest { csr_pem, proof: None }).await?;
    Ok(response.into_inner().certificate_pem)
}

async fn renew_with_proof(server: &str, dir: &Path) -> Result<String, CliError> {
    let id = certificate_device_id(dir)?;
    let identity_bytes = fsutil::read_private(&dir.join("identity.key")).map_err(|e| {
        CliError::new(format!(
            "the certificate expired and cannot be renewed without the device identity: {e}"
        ))
        .hint("pair this device again")
    })?;
    let identity = DeviceIdentity::from_bytes(&zeroize::Zeroizing::new(identity_bytes))
        .map_err(|e| CliError::new(e.to_string()))?;
    let csr_pem = csr_for_key(id, &read_text(dir, "key.pem")?).map_err(|e| CliError::new(e.to_string()))?;
    let csr = Csr::parse_pem(&csr_pem).map_err(|e| CliError::new(e.to_string()))?;

    // No valid client certificate: server-authenticated TLS only, with the node CA pinned.
    let ca = fsutil::read_private(&dir.join("ca.pem")).map_err(|e| CliError::new(e.to_string()))?;
    let endpoint = Channel::from_shared(server.to_owned())
        .map_err(|e| CliError::of(Exit::Usage, format!("bad --server {server:?}: {e}")))?
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
        .map_err(|e| CliError::new(format!("tls: {e}")))?;
    let anonymous = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(e) => return Err(super::address::connect_error(server, dir, &e).await),
    };
    let mut client = IdentityServiceClient::new(anonymous);
    let challenge = client
        .get_renewal_challenge(pb::GetRenewalChallengeRequest { device_id: id.to_string() })
        .await?
        .into_inner()
        .challenge;
    let signature = identity.sign(&renewal_proof_message(&challenge, csr.der())).to_vec();
    let proof = pb::RenewalProof { device_id: id.to_string(), challenge, signature };
    let response =
        client.renew_certificate(pb::RenewCertificateRequest { csr_pem, proof: Some(proof) }).await?;
    Ok(response.into_inner().certificate_pem)
}

/// A file of the client credentials in `dir` (`ca.pem`, `cert.pem`, `key.pem`): the directory
/// must be private (0700), and the TLS key too (0600); certificates are public and only read.
/// Whoever could read the key could act as this device. (`identity.key` is read with
/// `fsutil::read_private` where renewal needs it.)
pub(super) fn read_credential(dir: &Path, name: &str) -> Result<Vec<u8>, CliError> {
    let path = dir.join(name);
    if name == "key.pem" {
        return fsutil::read_private(&path).map_err(|e| CliError::new(e.to_string()));
    }
    fsutil::check_private(dir, fsutil::DIR_MODE).map_err(|e| CliError::new(e.to_string()))?;
    std::fs::read(&path).map_err(|e| CliError::new(format!("cannot read {}: {e}", path.display())))
}

/// A channel to `server` with `ca.pem`, `cert.pem` and `key.pem` from `dir`.
pub async fn channel(server: &str, dir: &Path) -> Result<Channel, CliError> {
    let read = |name: &str| read_credential(dir, name);
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")?))
        .identity(Identity::from_pem(read("cert.pem")?, read("key.pem")?));
    let endpoint = Channel::from_shared(server.to_owned())
        .map_err(|e| {
            CliError::of(Exit::Usage, format!("bad --server {server:?}: {e}")).hint("use https://HOST:PORT")
        })?
        .tls_config(tls)
        .map_err(|e| CliError::new(format!("tls: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(5));
    match endpoint.connect().await {
        Ok(channel) => Ok(channel),
        Err(e) => Err(super::address::connect_error(server, dir, &e).await),
    }
}
