//! What the CA builds into certificates and what the node reads back out of them: validity
//! windows (backdated by [`CLOCK_SKEW_ALLOWANCE`]), subject names, random serials, server names,
//! the device id of a client certificate, fingerprints, PEM bundles of a certificate and its key.
//!
//! No signing here (`super::DeviceCa` signs) and no chain verification (rustls does it). The only
//! IO is [`local_host_name`].

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::Ia5String;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

use crate::identity::{DeviceId, IdentityError};

/// How far `notBefore` is set before the issuing moment.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(5 * 60);
/// Prefix of the URI SAN that names a device in its client certificate.
pub const DEVICE_URI_PREFIX: &str = "palyra://device/";

/// A certificate with its freshly generated private key (the node's server certificate).
pub struct IssuedKeyPair {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// The PKCS#8 private key, PEM.
    pub key_pem: Zeroizing<String>,
    /// When it was issued (`notBefore` is [`CLOCK_SKEW_ALLOWANCE`] earlier).
    pub issued_at: SystemTime,
    /// When it expires (`notAfter`).
    pub not_after: SystemTime,
}

impl IssuedKeyPair {
    /// The private key in the form rustls takes (`ServerConfig::with_single_cert`).
    pub fn private_key_der(&self) -> Result<PrivateKeyDer<'static>, IdentityError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|_| {
            IdentityError::Malformed { what: "private key", detail: "not a PKCS#8 PEM block".into() }
        })?;
        Ok(PrivateKeyDer::Pkcs8(der))
    }

    /// Whether it is time to issue a new one (see [`needs_renewal`]).
    pub fn needs_renewal(&self, now: SystemTime) -> bool {
        needs_renewal(self.not_after, self.issued_at, now)
    }

    /// Certificate PEM followed by key PEM: how it is sealed in the identity store, as one
    /// entry so a renewal replaces both atomically.
    pub fn to_pem_bundle(&self) -> Zeroizing<String> {
        pem_bundle(&self.cert_pem, &self.key_pem)
    }

    /// Parses [`Self::to_pem_bundle`].
    pub fn from_pem_bundle(bundle: &str) -> Result<Self, IdentityError> {
        let cert_der = first_certificate(bundle)?;
        let (not_before, not_after) = validity_of(&cert_der)?;
        let key_der = PrivatePkcs8KeyDer::from_pem_slice(bundle.as_bytes()).map_err(|_| {
            IdentityError::Malformed { what: "key bundle", detail: "no PKCS#8 private key".into() }
        })?;
        let key = KeyPair::from_pkcs8_der_and_sign_algo(&key_der, &PKCS_ECDSA_P256_SHA256)?;
        check_key_matches(&cert_der, &key)?;
        Ok(IssuedKeyPair {
            cert_pem: pem_of(&cert_der),
            cert_der,
            key_pem: Zeroizing::new(key.serialize_pem()),
            issued_at: not_before + CLOCK_SKEW_ALLOWANCE,
            not_after,
        })
    }
}

impl fmt::Debug for IssuedKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedKeyPair")
            .field("fingerprint", &certificate_fingerprint(&self.cert_der))
            .field("issued_at", &self.issued_at)
            .field("not_after", &self.not_after)
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

/// A certificate issued for a key the node never sees (a device's client certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// When it was issued (`notBefore` is [`CLOCK_SKEW_ALLOWANCE`] earlier).
    pub issued_at: SystemTime,
    /// When it expires (`notAfter`).
    pub not_after: SystemTime,
}

/// Whether a certificate should be renewed: when less than a third of its lifetime is left
/// (or it has expired).
pub fn needs_renewal(not_after: SystemTime, issued_at: SystemTime, now: SystemTime) -> bool {
    let lifetime = not_after.duration_since(issued_at).unwrap_or(Duration::ZERO);
    match not_after.duration_since(now) {
        Ok(left) => left < lifetime / 3,
        Err(_) => true,
    }
}

/// The validity window (not before, not after) of the first certificate in a PEM text.
pub fn certificate_validity_pem(pem_bytes: &[u8]) -> Option<(SystemTime, SystemTime)> {
    let parsed = pem::parse(pem_bytes).ok()?;
    validity_of(parsed.contents()).ok()
}

/// The public key (SubjectPublicKeyInfo, DER) of the first certificate in a PEM text.
pub fn public_key_of_pem(pem_bytes: &[u8]) -> Option<Vec<u8>> {
    let parsed = pem::parse(pem_bytes).ok()?;
    let (_, cert) = X509Certificate::from_der(parsed.contents()).ok()?;
    Some(cert.public_key().raw.to_vec())
}

/// The device named by a client certificate's `palyra://device/<id>` URI SAN. `None` when the
/// certificate does not parse or has no such SAN, or more than one. Call it only on a
/// certificate rustls has verified against the node CA.
pub fn device_id_from_certificate(cert_der: &[u8]) -> Option<DeviceId> {
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut found = None;
    for general_name in &san.value.general_names {
        if let GeneralName::URI(uri) = general_name
            && let Some(id) = uri.strip_prefix(DEVICE_URI_PREFIX)
        {
            if found.is_some() {
                return None;
            }
            // The node wrote this SAN from a `DeviceId`: anything but the canonical spelling
            // was not written by it.
            found = Some(DeviceId::parse_canonical(id).ok()?);
        }
    }
    found
}

/// Lowercase hex SHA-256 of a certificate's DER.
pub fn certificate_fingerprint(cert_der: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, cert_der))
}

/// This host's name, from `/proc/sys/kernel/hostname` or `$HOSTNAME`, lower-cased; `None`
/// when neither gives a valid DNS name.
pub fn local_host_name() -> Option<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())?;
    let name = raw.trim().to_ascii_lowercase();
    is_dns_name(&name).then_some(name)
}

/// A name in a server certificate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServerName {
    /// A DNS name, lower case.
    Dns(String),
    /// An IP address.
    Ip(IpAddr),
}

impl ServerName {
    /// Parses an IP address or a DNS name (letters, digits, hyphens, dots; at most 253
    /// characters); DNS names are lower-cased.
    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(ServerName::Ip(ip));
        }
        let lower = text.to_ascii_lowercase();
        if is_dns_name(&lower) {
            Ok(ServerName::Dns(lower))
        } else {
            let shown: String = text.chars().take(64).collect();
            Err(IdentityError::InvalidArgument(format!(
                "server name {shown:?} is neither an IP address nor a DNS name"
            )))
        }
    }

    pub(super) fn to_san(&self) -> Result<SanType, IdentityError> {
        Ok(match self {
            ServerName::Dns(name) => SanType::DnsName(ia5(name.clone())?),
            ServerName::Ip(ip) => SanType::IpAddress(*ip),
        })
    }
}

/// The names a server certificate gets: `localhost`, `127.0.0.1`, `::1`, this host's name and
/// `extra_names`, sorted and deduplicated.
pub fn server_names(extra_names: &[String]) -> Result<Vec<ServerName>, IdentityError> {
    let mut names = vec![
        ServerName::Dns("localhost".into()),
        ServerName::Ip(IpAddr::from([127, 0, 0, 1])),
        ServerName::Ip(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])),
    ];
    names.extend(local_host_name().map(ServerName::Dns));
    for extra in extra_names {
        names.push(ServerName::parse(extra)?);
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// The DNS and IP SANs of a certificate, sorted (to compare with [`server_names`]).
pub fn certificate_server_names(cert_der: &[u8]) -> Result<Vec<ServerName>, IdentityError> {
    let cert = parse_certificate(cert_der)?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for general_name in &san.value.general_names {
            match general_name {
                GeneralName::DNSName(dns) => names.push(ServerName::Dns(dns.to_ascii_lowercase())),
                GeneralName::IPAddress(bytes) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                        names.push(ServerName::Ip(IpAddr::from(v4)));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                        names.push(ServerName::Ip(IpAddr::from(v6)));
                    }
                }
                _ => {}
            }
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// The validity of a certificate about to be issued, in whole seconds.
pub(super) struct Window {
    pub(super) issued_at: SystemTime,
    pub(super) not_after: SystemTime,
}

impl Window {
    pub(super) fn new(
        now: SystemTime,
        validity: Duration,
        cap: Option<SystemTime>,
    ) -> Result<Self, IdentityError> {
        let secs = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| IdentityError::InvalidArgument("the clock is before 1970".into()))?
            .as_secs();
        let issued_at = UNIX_EPOCH + Duration::from_secs(secs);
        let wanted = issued_at
            .checked_add(Duration::from_secs(validity.as_secs()))
            .ok_or_else(|| IdentityError::InvalidArgument("certificate validity out of range".into()))?;
        let not_after = cap.map_or(wanted, |cap| wanted.min(cap));
        if not_after <= issued_at {
            return Err(IdentityError::Certificate(
                "the CA certificate has expired; no certificate can be issued".into(),
            ));
        }
        Ok(Window { issued_at, not_after })
    }

    pub(super) fn apply(&self, params: &mut CertificateParams) -> Result<(), IdentityError> {
        let not_before = self.issued_at.checked_sub(CLOCK_SKEW_ALLOWANCE).unwrap_or(UNIX_EPOCH);
        params.not_before = to_offset(not_before)?;
        params.not_after = to_offset(self.not_after)?;
        Ok(())
    }
}

fn to_offset(t: SystemTime) -> Result<OffsetDateTime, IdentityError> {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    i64::try_from(secs)
        .ok()
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
        .filter(|t| t.year() <= 9999)
        .ok_or_else(|| IdentityError::InvalidArgument("certificate validity out of range".into()))
}

pub(super) fn name(common_name: &str, unit: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Palyra");
    if let Some(unit) = unit {
        dn.push(DnType::OrganizationalUnitName, unit);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

pub(super) fn ia5(text: String) -> Result<Ia5String, IdentityError> {
    Ia5String::try_from(text).map_err(|e| IdentityError::Certificate(e.to_string()))
}

/// 16 random bytes, positive and without a leading zero byte (so always 16 bytes of DER).
pub(super) fn random_serial() -> Result<SerialNumber, IdentityError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).map_err(|_| IdentityError::Random)?;
    bytes[0] = (bytes[0] & 0x7f).max(1);
    Ok(SerialNumber::from_slice(&bytes))
}

pub(super) fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, IdentityError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        _ => Err(IdentityError::Malformed {
            what: "certificate",
            detail: "not a DER X.509 certificate".into(),
        }),
    }
}

pub(super) fn first_certificate(text: &str) -> Result<CertificateDer<'static>, IdentityError> {
    CertificateDer::from_pem_slice(text.as_bytes()).map_err(|_| IdentityError::Malformed {
        what: "certificate",
        detail: "no PEM CERTIFICATE block".into(),
    })
}

/// The expiry of a PEM certificate (the first certificate in `pem_bytes`), or `None` when it
/// does not parse.
pub fn certificate_not_after_pem(pem_bytes: &[u8]) -> Option<SystemTime> {
    certificate_validity_pem(pem_bytes).map(|(_, not_after)| not_after)
}

/// The expiry of a DER certificate, or `None` when it does not parse.
pub fn certificate_not_after(cert_der: &[u8]) -> Option<SystemTime> {
    validity_of(cert_der).ok().map(|(_, not_after)| not_after)
}

pub(super) fn validity_of(cert_der: &[u8]) -> Result<(SystemTime, SystemTime), IdentityError> {
    let cert = parse_certificate(cert_der)?;
    let at = |secs: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    let validity = cert.validity();
    Ok((at(validity.not_before.timestamp()), at(validity.not_after.timestamp())))
}

pub(super) fn check_key_matches(cert_der: &[u8], key: &KeyPair) -> Result<(), IdentityError> {
    let cert = parse_certificate(cert_der)?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(IdentityError::Malformed {
            what: "certificate and key",
            detail: "the private key does not belong to the certificate".into(),
        });
    }
    Ok(())
}

pub(super) fn pem_of(cert_der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", cert_der), config)
}

/// `cert ‖ key` with a newline after each, built in one zeroizing buffer (no unwiped copy of
/// the key is left behind).
pub(super) fn pem_bundle(cert_pem: &str, key_pem: &str) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(cert_pem.len() + key_pem.len() + 2));
    for part in [cert_pem, key_pem] {
        out.push_str(part);
        if !part.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::expect_used, reason = "test setup fails loudly")]
mod tests {
    use super::super::DeviceCa;
    use super::*;

    #[test]
    fn device_ids_come_only_from_device_certificates() -> Result<(), IdentityError> {
        let now = SystemTime::now();
        let ca = DeviceCa::create(DeviceId::generate(), now)?;
        assert_eq!(device_id_from_certificate(ca.certificate_der()), None);
        assert_eq!(device_id_from_certificate(&ca.issue_server_certificate(&[], now)?.cert_der), None);
        assert_eq!(device_id_from_certificate(b"garbage"), None);
        Ok(())
    }

    #[test]
    fn renewal_at_a_third_of_the_lifetime_left() {
        let issued = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let not_after = issued + Duration::from_secs(90);
        assert!(!needs_renewal(not_after, issued, issued));
        assert!(!needs_renewal(not_after, issued, issued + Duration::from_secs(60)));
        assert!(needs_renewal(not_after, issued, issued + Duration::from_secs(61)));
        assert!(needs_renewal(not_after, issued, not_after + Duration::from_secs(1)));
    }
}
