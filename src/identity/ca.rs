//! The node's device CA: a self-signed ECDSA P-256 CA that issues the node's TLS server
//! certificate and the client certificates of paired devices, plus the parsing the TLS edges
//! need (CSRs in, device ids out of verified client certificates).
//!
//! Every certificate is ECDSA P-256 signed (accepted by rustls, BoringSSL/grpcio, OpenSSL and
//! Go), has explicit validity (backdated by [`CLOCK_SKEW_ALLOWANCE`] for peers whose clocks run
//! a little behind) and a random serial. Client certificates are built from a verified CSR of
//! which only the public key is used: the node chooses the subject (CN = device id), the one
//! SAN (`palyra://device/<id>`) and the clientAuth EKU; nothing is copied from the request.
//!
//! This module does not verify chains (rustls does, with the CA certificate as the only root),
//! does not decide who may get a certificate (pairing and the registry do), and reads no clock:
//! `now` is passed in. The only IO is [`local_host_name`].

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, PublicKeyData, SanType, SerialNumber,
    SignatureAlgorithm,
};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::pem::{Error as PemError, PemObject};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

use super::store::SecretStore;
use super::{DeviceId, IdentityError, Role};

/// Lifetime of the CA certificate.
pub const CA_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 60 * 60);
/// Lifetime of the node's TLS server certificate.
pub const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 60 * 60);
/// Default lifetime of a device's client certificate.
pub const DEFAULT_CLIENT_CERT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// How far `notBefore` is set before the issuing moment.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(5 * 60);
/// Largest CSR accepted, in bytes of PEM.
pub const MAX_CSR_PEM_LEN: usize = 16 * 1024;
/// Prefix of the URI SAN that names a device in its client certificate.
pub const DEVICE_URI_PREFIX: &str = "palyra://device/";
/// Identity-store entry of the CA (certificate PEM followed by its PKCS#8 key PEM).
pub const CA_STORE_NAME: &str = "ca.pem";

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

/// The node's certificate authority.
pub struct DeviceCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    fingerprint: String,
    not_after: SystemTime,
}

impl fmt::Debug for DeviceCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCa")
            .field("fingerprint", &self.fingerprint)
            .field("not_after", &self.not_after)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl DeviceCa {
    /// A new CA for node `node_id`: P-256, `CA:TRUE, pathlen:0`, keyCertSign + cRLSign,
    /// CN "Palyra node CA <node id>", valid for [`CA_VALIDITY`] from `now`. Not persisted: see
    /// [`Self::save`].
    pub fn create(node_id: DeviceId, now: SystemTime) -> Result<Self, IdentityError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let window = Window::new(now, CA_VALIDITY, None)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&format!("Palyra node CA {node_id}"), None);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial()?);
        window.apply(&mut params)?;
        let cert = params.self_signed(&key)?;
        // Rebuild from the encoded certificate, exactly as `load` will: the issuer name and key
        // identifier of every leaf then come from the same bytes before and after a restart.
        Self::from_parts(cert.der().clone(), key)
    }

    /// Parses a CA from its certificate and PKCS#8 key (PEM, in any order, in one string).
    pub fn from_pem_bundle(bundle: &str) -> Result<Self, IdentityError> {
        let cert_der = first_certificate(bundle)?;
        let key_der = PrivatePkcs8KeyDer::from_pem_slice(bundle.as_bytes()).map_err(|_| {
            IdentityError::Malformed { what: "ca bundle", detail: "no PKCS#8 private key".into() }
        })?;
        let key = KeyPair::from_pkcs8_der_and_sign_algo(&key_der, &PKCS_ECDSA_P256_SHA256)?;
        Self::from_parts(cert_der, key)
    }

    fn from_parts(cert_der: CertificateDer<'static>, key: KeyPair) -> Result<Self, IdentityError> {
        let cert = parse_certificate(&cert_der)?;
        if !cert.is_ca() {
            return Err(IdentityError::Malformed { what: "ca certificate", detail: "not a CA".into() });
        }
        check_key_matches(&cert_der, &key)?;
        let (_, not_after) = validity_of(&cert_der)?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(DeviceCa {
            issuer,
            cert_pem: pem_of(&cert_der),
            fingerprint: certificate_fingerprint(&cert_der),
            cert_der,
            not_after,
        })
    }

    /// Certificate PEM followed by key PEM.
    pub fn to_pem_bundle(&self) -> Zeroizing<String> {
        let key = Zeroizing::new(self.issuer.key().serialize_pem());
        pem_bundle(&self.cert_pem, &key)
    }

    /// Seals the CA into `store` as [`CA_STORE_NAME`]. Never overwrites:
    /// [`IdentityError::AlreadyExists`] if a CA is there.
    pub fn save(&self, store: &dyn SecretStore) -> Result<(), IdentityError> {
        store.create(CA_STORE_NAME, self.to_pem_bundle().as_bytes())
    }

    /// The CA sealed in `store`, if there is one.
    pub fn load(store: &dyn SecretStore) -> Result<Option<Self>, IdentityError> {
        let Some(bytes) = store.get(CA_STORE_NAME)? else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| IdentityError::Malformed { what: "ca bundle", detail: "not UTF-8".into() })?;
        Self::from_pem_bundle(text).map(Some)
    }

    /// The CA certificate, PEM: what clients trust.
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER: the one root of the node's rustls verifiers.
    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Lowercase hex SHA-256 of the CA certificate's DER.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// When the CA certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Whether `cert_der` carries a valid signature by this CA's key. Not a chain check (no
    /// dates, no usages): rustls does that.
    pub fn signed(&self, cert_der: &[u8]) -> bool {
        let (Ok((_, cert)), Ok((_, ca))) =
            (X509Certificate::from_der(cert_der), X509Certificate::from_der(&self.cert_der))
        else {
            return false;
        };
        cert.verify_signature(Some(ca.public_key())).is_ok()
    }

    /// A fresh server key and certificate: SANs `localhost`, `127.0.0.1`, `::1`, this host's
    /// name and `extra_names` (DNS names or IP addresses), serverAuth, valid for
    /// [`SERVER_CERT_VALIDITY`] (never beyond the CA).
    pub fn issue_server_certificate(
        &self,
        extra_names: &[String],
        now: SystemTime,
    ) -> Result<IssuedKeyPair, IdentityError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let window = Window::new(now, SERVER_CERT_VALIDITY, Some(self.not_after))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("Palyra node", None);
        params.subject_alt_names =
            server_names(extra_names)?.iter().map(|n| n.to_san()).collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        window.apply(&mut params)?;
        self.leaf_defaults(&mut params)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedKeyPair {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: Zeroizing::new(key.serialize_pem()),
            issued_at: window.issued_at,
            not_after: window.not_after,
        })
    }

    /// A client certificate for the key of `csr_pem` (whose signature is verified; see
    /// [`Csr::parse_pem`]): CN = `device_id`, OU = `role` (informational: the registry is
    /// authoritative), the one SAN `palyra://device/<device_id>`, clientAuth only, not a CA,
    /// valid for `validity` (never beyond the CA). Nothing is copied from the request.
    pub fn issue_client_certificate(
        &self,
        csr_pem: &str,
        device_id: DeviceId,
        role: Role,
        validity: Duration,
        now: SystemTime,
    ) -> Result<IssuedCert, IdentityError> {
        let csr = Csr::parse_pem(csr_pem)?;
        if validity.is_zero() {
            return Err(IdentityError::InvalidArgument("a certificate validity must be positive".into()));
        }
        let window = Window::new(now, validity, Some(self.not_after))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&device_id.to_string(), Some(role.as_str()));
        params.subject_alt_names = vec![SanType::URI(ia5(format!("{DEVICE_URI_PREFIX}{device_id}"))?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        window.apply(&mut params)?;
        self.leaf_defaults(&mut params)?;
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issued_at: window.issued_at,
            not_after: window.not_after,
        })
    }

    fn leaf_defaults(&self, params: &mut CertificateParams) -> Result<(), IdentityError> {
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        Ok(())
    }
}

/// The key algorithm of a CSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CsrKeyAlgorithm {
    /// ECDSA on P-256.
    EcdsaP256,
    /// Ed25519.
    Ed25519,
}

/// A parsed certificate signing request whose signature has been verified.
#[derive(Clone, PartialEq, Eq)]
pub struct Csr {
    der: Vec<u8>,
    public_key: CsrPublicKey,
}

impl fmt::Debug for Csr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Csr")
            .field("key_algorithm", &self.key_algorithm())
            .field("len", &self.der.len())
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq)]
struct CsrPublicKey {
    raw: Vec<u8>,
    algorithm: &'static SignatureAlgorithm,
}

impl PublicKeyData for CsrPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

impl Csr {
    /// Parses a PEM `CERTIFICATE REQUEST` (at most [`MAX_CSR_PEM_LEN`] bytes), accepts only
    /// ECDSA P-256 and Ed25519 keys, and verifies the request's signature with its own key.
    /// Bounded and panic-free on any input; errors are [`IdentityError::InvalidCsr`] with a
    /// reason that never quotes the input.
    pub fn parse_pem(pem_text: &str) -> Result<Self, IdentityError> {
        if pem_text.len() > MAX_CSR_PEM_LEN {
            return Err(invalid_csr(format!(
                "the request is {} bytes; the limit is {MAX_CSR_PEM_LEN}",
                pem_text.len()
            )));
        }
        // One block, or which one is "the" request depends on the parser that reads it: ours
        // takes the first CSR, another might take the last or refuse.
        let blocks = pem_text.matches("-----BEGIN ").count();
        if blocks > 1 {
            return Err(invalid_csr(format!(
                "the text holds {blocks} PEM blocks; send exactly one CERTIFICATE REQUEST"
            )));
        }
        let der = CertificateSigningRequestDer::from_pem_slice(pem_text.as_bytes()).map_err(|e| match e {
            PemError::NoItemsFound => invalid_csr("no PEM CERTIFICATE REQUEST block found"),
            _ => invalid_csr("malformed PEM"),
        })?;
        Self::parse_der(&der)
    }

    /// Parses and verifies a DER request, as [`Self::parse_pem`].
    pub fn parse_der(der: &[u8]) -> Result<Self, IdentityError> {
        if der.len() > MAX_CSR_PEM_LEN {
            return Err(invalid_csr(format!(
                "the request is {} bytes; the limit is {MAX_CSR_PEM_LEN}",
                der.len()
            )));
        }
        let (rest, csr) = X509CertificationRequest::from_der(der)
            .map_err(|_| invalid_csr("not a DER-encoded PKCS#10 certification request"))?;
        if !rest.is_empty() {
            return Err(invalid_csr("trailing bytes after the request"));
        }
        let spki = &csr.certification_request_info.subject_pki;
        let raw = spki.subject_public_key.data.to_vec();
        let algorithm = if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
            if curve != Some(OID_EC_P256) {
                return Err(invalid_csr("unsupported elliptic curve; use P-256 or Ed25519"));
            }
            if raw.len() != 65 || raw.first() != Some(&4) {
                return Err(invalid_csr("malformed P-256 public key"));
            }
            &PKCS_ECDSA_P256_SHA256
        } else if spki.algorithm.algorithm == OID_SIG_ED25519 {
            if raw.len() != 32 {
                return Err(invalid_csr("malformed Ed25519 public key"));
            }
            &PKCS_ED25519
        } else {
            return Err(invalid_csr(format!(
                "unsupported key algorithm {}; use ECDSA P-256 or Ed25519",
                spki.algorithm.algorithm
            )));
        };
        csr.verify_signature()
            .map_err(|_| invalid_csr("the signature does not verify with the request's key"))?;
        Ok(Csr { der: der.to_vec(), public_key: CsrPublicKey { raw, algorithm } })
    }

    /// The request's DER (as the pairing transcript hashes it).
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Its key's algorithm.
    pub fn key_algorithm(&self) -> CsrKeyAlgorithm {
        if self.public_key.algorithm == &PKCS_ED25519 {
            CsrKeyAlgorithm::Ed25519
        } else {
            CsrKeyAlgorithm::EcdsaP256
        }
    }

    /// The raw public key (the SubjectPublicKeyInfo's bit string: an uncompressed P-256 point
    /// or 32 Ed25519 bytes).
    pub fn public_key(&self) -> &[u8] {
        &self.public_key.raw
    }
}

/// A new ECDSA P-256 key (PKCS#8 PEM) and a CSR for it with CN = `device_id`: what `palyra
/// init` makes for the operator and what a joining device sends when pairing or renewing.
pub fn generate_tls_key_and_csr(device_id: DeviceId) -> Result<(Zeroizing<String>, String), IdentityError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let csr = csr_for(device_id, &key)?;
    Ok((Zeroizing::new(key.serialize_pem()), csr))
}

/// A CSR (PEM) for an existing TLS key (PKCS#8 PEM): renewing without changing the key, so
/// only the certificate file has to be replaced.
pub fn csr_for_key(device_id: DeviceId, key_pem: &str) -> Result<String, IdentityError> {
    let key = KeyPair::from_pem(key_pem)?;
    csr_for(device_id, &key)
}

fn csr_for(device_id: DeviceId, key: &KeyPair) -> Result<String, IdentityError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&device_id.to_string(), None);
    Ok(params.serialize_request(key)?.pem()?)
}

/// The validity window (not before, not after) of the first certificate in a PEM text.
pub fn certificate_validity_pem(pem_bytes: &[u8]) -> Option<(SystemTime, SystemTime)> {
    let parsed = pem::parse(pem_bytes).ok()?;
    validity_of(parsed.contents()).ok()
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

    fn to_san(&self) -> Result<SanType, IdentityError> {
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
struct Window {
    issued_at: SystemTime,
    not_after: SystemTime,
}

impl Window {
    fn new(now: SystemTime, validity: Duration, cap: Option<SystemTime>) -> Result<Self, IdentityError> {
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

    fn apply(&self, params: &mut CertificateParams) -> Result<(), IdentityError> {
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

fn name(common_name: &str, unit: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Palyra");
    if let Some(unit) = unit {
        dn.push(DnType::OrganizationalUnitName, unit);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

fn ia5(text: String) -> Result<Ia5String, IdentityError> {
    Ia5String::try_from(text).map_err(|e| IdentityError::Certificate(e.to_string()))
}

/// 16 random bytes, positive and without a leading zero byte (so always 16 bytes of DER).
fn random_serial() -> Result<SerialNumber, IdentityError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).map_err(|_| IdentityError::Random)?;
    bytes[0] = (bytes[0] & 0x7f).max(1);
    Ok(SerialNumber::from_slice(&bytes))
}

fn invalid_csr(reason: impl Into<String>) -> IdentityError {
    IdentityError::InvalidCsr(reason.into())
}

fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, IdentityError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        _ => Err(IdentityError::Malformed {
            what: "certificate",
            detail: "not a DER X.509 certificate".into(),
        }),
    }
}

fn first_certificate(text: &str) -> Result<CertificateDer<'static>, IdentityError> {
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

fn validity_of(cert_der: &[u8]) -> Result<(SystemTime, SystemTime), IdentityError> {
    let cert = parse_certificate(cert_der)?;
    let at = |secs: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    let validity = cert.validity();
    Ok((at(validity.not_before.timestamp()), at(validity.not_after.timestamp())))
}

fn check_key_matches(cert_der: &[u8], key: &KeyPair) -> Result<(), IdentityError> {
    let cert = parse_certificate(cert_der)?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(IdentityError::Malformed {
            what: "certificate and key",
            detail: "the private key does not belong to the certificate".into(),
        });
    }
    Ok(())
}

fn pem_of(cert_der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", cert_der), config)
}

/// `cert ‖ key` with a newline after each, built in one zeroizing buffer (no unwiped copy of
/// the key is left behind).
fn pem_bundle(cert_pem: &str, key_pem: &str) -> Zeroizing<String> {
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
    use std::sync::Arc;

    use proptest::prelude::*;
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::server::WebPkiClientVerifier;
    use rustls_pki_types::{ServerName as TlsName, UnixTime};

    use super::*;
    use crate::identity::store::InMemorySecretStore;

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(ca: &DeviceCa) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.certificate_der().clone()).expect("add root");
        Arc::new(roots)
    }

    fn unix(t: SystemTime) -> UnixTime {
        UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).expect("after 1970"))
    }

    /// rustls's own client-certificate check: chain to `ca`, clientAuth EKU, dates.
    fn client_cert_verifies(ca: &DeviceCa, cert: &CertificateDer<'static>, now: SystemTime) -> bool {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots(ca), provider()).build().expect("verifier");
        verifier.verify_client_cert(cert, &[], unix(now)).is_ok()
    }

    /// rustls's own server-certificate check for `name`.
    fn server_cert_verifies(
        ca: &DeviceCa,
        cert: &CertificateDer<'static>,
        name: &str,
        now: SystemTime,
    ) -> bool {
        let verifier =
            WebPkiServerVerifier::builder_with_provider(roots(ca), provider()).build().expect("verifier");
        let name = TlsName::try_from(name.to_owned()).expect("server name");
        verifier.verify_server_cert(cert, &[], &name, &[], unix(now)).is_ok()
    }

    fn parse(der: &[u8]) -> X509Certificate<'_> {
        X509Certificate::from_der(der).expect("certificate").1
    }

    fn common_name(name: &x509_parser::x509::X509Name<'_>) -> String {
        name.iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or_default().to_owned()
    }

    fn secs(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
    }

    fn csr_pem_of(key: &KeyPair, params: &CertificateParams) -> String {
        params.serialize_request(key).expect("csr").pem().expect("pem")
    }

    fn pem_block(label: &str, der: &[u8]) -> String {
        pem::encode(&pem::Pem::new(label, der))
    }

    #[test]
    fn ca_is_a_constrained_ten_year_p256_ca() -> Result<(), IdentityError> {
        let node = DeviceId::generate();
        let now = SystemTime::now();
        let ca = DeviceCa::create(node, now)?;
        let cert = parse(ca.certificate_der());
        let constraints = cert.basic_constraints().expect("ext").expect("basic constraints").value;
        assert!(constraints.ca);
        assert_eq!(constraints.path_len_constraint, Some(0));
        let usage = cert.key_usage().expect("ext").expect("key usage").value;
        assert!(usage.key_cert_sign() && usage.crl_sign());
        assert_eq!(common_name(cert.subject()), format!("Palyra node CA {node}"));
        assert_eq!(
            cert.public_key().algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()),
            Some(OID_EC_P256)
        );
        let validity = cert.validity();
        let not_before = u64::try_from(validity.not_before.timestamp()).expect("positive");
        let not_after = u64::try_from(validity.not_after.timestamp()).expect("positive");
        assert_eq!(not_before, secs(now) - CLOCK_SKEW_ALLOWANCE.as_secs());
        assert_eq!(not_after, secs(now) + CA_VALIDITY.as_secs());
        assert_eq!(secs(ca.not_after()), not_after);
        assert_eq!(ca.fingerprint(), certificate_fingerprint(ca.certificate_der()));
        assert_eq!(ca.fingerprint().len(), 64);
        assert!(ca.certificate_pem().starts_with("-----BEGIN CERTIFICATE-----\n"));
        let shown = format!("{ca:?}");
        assert!(shown.contains("redacted") && !shown.contains("PRIVATE"), "{shown}");
        Ok(())
    }

    #[test]
    fn a_loaded_ca_issues_certificates_that_verify_against_the_original() -> Result<(), IdentityError> {
        let now = SystemTime::now();
        let store = InMemorySecretStore::new();
        assert!(DeviceCa::load(&store)?.is_none());
        let original = DeviceCa::create(DeviceId::generate(), now)?;
        original.save(&store)?;
        assert!(matches!(original.save(&store), Err(IdentityError::AlreadyExists(_))));

        let loaded = DeviceCa::load(&store)?.expect("saved CA");
        assert_eq!(loaded.fingerprint(), original.fingerprint());
        assert_eq!(loaded.certificate_pem(), original.certificate_pem());

        let device = DeviceId::generate();
        let (_key, csr) = generate_tls_key_and_csr(device)?;
        let client =
            loaded.issue_client_certificate(&csr, device, Role::Device, DEFAULT_CLIENT_CERT_VALIDITY, now)?;
        assert!(client_cert_verifies(&original, &client.cert_der, now));
        assert!(original.signed(&client.cert_der));
        let server = loaded.issue_server_certificate(&[], now)?;
        assert!(server_cert_verifies(&original, &server.cert_der, "localhost", now));

        // The verifier is not permissive: another CA's certificates do not verify.
        let stranger = DeviceCa::create(DeviceId::generate(), now)?;
        let foreign = stranger.issue_client_certificate(
            &csr,
            device,
            Role::Device,
            DEFAULT_CLIENT_CERT_VALIDITY,
            now,
        )?;
        assert!(!client_cert_verifies(&original, &foreign.cert_der, now));
        assert!(!original.signed(&foreign.cert_der));
        // Nor does a server certificate pass as a client certificate (EKU).
        assert!(!client_cert_verifies(&original, &server.cert_der, now));
        // Nor an expired one.
        assert!(!client_cert_verifies(&original, &client.cert_der, now + DEFAULT_CLIENT_CERT_VALIDITY + DAY));
        Ok(())
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_bundle_with_a_foreign_key_is_refused() -> Result<(), IdentityError> {
        let now = SystemTime::now();
        let ca = DeviceCa::create(DeviceId::generate(), now)?;
        let other_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let bundle = format!("{}{}", ca.certificate_pem(), other_key.serialize_pem());
        let err = DeviceCa::from_pem_bundle(&bundle).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("does not belong"), "{err}");
        assert!(DeviceCa::from_pem_bundle("nothing here").is_err());
        Ok(())
    }

    #[test]
    fn server_certificate_names_usage_and_validity() -> Result<(), IdentityError> {
        let now = SystemTime::now();
        let ca = DeviceCa::create(DeviceId::generate(), now)?;
        let extra = vec!["Node.Example".to_owned(), "10.1.2.3".to_owned(), "localhost".to_owned()];
        let server = ca.issue_server_certificate(&extra, now)?;
        for name in ["localhost", "127.0.0.1", "::1", "node.example", "10.1.2.3"] {
            assert!(server_cert_verifies(&ca, &server.cert_der, name, now), "{name}");
        }
        assert!(!server_cert_verifies(&ca, &server.cert_der, "other.example", now));
        if let Some(host) = local_host_name() {
            assert!(server_cert_verifies(&ca, &server.cert_der, &host, now), "{host}");
        }
        assert_eq!(certificate_server_names(&server.cert_der)?, server_names(&extra)?);

        let cert = parse(&server.cert_der);
        let eku = cert.extended_key_usage().expect("ext").expect("eku").value;
        assert!(eku.server_auth && !eku.client_auth && !eku.any && eku.other.is_empty());
        assert!(!cert.is_ca());
        assert_eq!(secs(server.not_after), secs(now) + SERVER_CERT_VALIDITY.as_secs());
        assert_eq!(secs(server.issued_at), secs(now));
        assert!(!server.needs_renewal(now));
        assert!(server.needs_renewal(now + Duration::from_secs(61 * 86_400)));

        // The key is the certificate's, in both forms the TLS edge takes, and survives a bundle.
        let again = IssuedKeyPair::from_pem_bundle(&server.to_pem_bundle())?;
        assert_eq!(again.cert_der, server.cert_der);
        assert_eq!(*again.key_pem, *server.key_pem);
        assert_eq!((again.issued_at, again.not_after), (server.issued_at, server.not_after));
        assert!(matches!(server.private_key_der()?, PrivateKeyDer::Pkcs8(_)));
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| IdentityError::Certificate(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![server.cert_der.clone()], server.private_key_der()?)
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        assert!(!format!("{server:?}").contains("PRIVATE KEY"));

        for bad in ["", "bad name", "-x.example", "a..b", "é.example"] {
            assert!(
                matches!(
                    ca.issue_server_certificate(&[bad.to_owned()], now),
                    Err(IdentityError::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
        Ok(())
    }

    #[test]
    fn client_certificate_is_chosen_by_the_node_not_the_request() -> Result<(), IdentityError> {
        let now = SystemTime::now();
        let ca = DeviceCa::create(DeviceId::generate(), now)?;
        let device = DeviceId::generate();
        // A greedy request: another subject, DNS and URI SANs, serverAuth, CA:TRUE.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut greedy = CertificateParams::new(vec!["evil.example".to_owned()])?;
        greedy
            .subject_alt_names
            .push(SanType::URI(ia5(format!("{DEVICE_URI_PREFIX}{}", DeviceId::generate()))?));
        greedy.distinguished_name = name("admin", Some("admin"));
        greedy.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::Any];
        greedy.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = csr_pem_of(&key, &greedy);

        let issued =
            ca.issue_client_certificate(&csr, device, Role::Node, DEFAULT_CLIENT_CERT_VALIDITY, now)?;
        let cert = parse(&issued.cert_der);
        let san = cert.subject_alternative_name().expect("ext").expect("san").value;
        assert_eq!(san.general_names, vec![GeneralName::URI(&format!("{DEVICE_URI_PREFIX}{device}"))]);
        let eku = cert.extended_key_usage().expect("ext").expect("eku").value;
        assert!(eku.client_auth && !eku.server_auth && !eku.any && eku.other.is_empty());
        assert!(!cert.is_ca());
        assert_eq!(common_name(cert.subject()), device.to_string());
        assert_eq!(
            cert.subject().iter_organizational_unit().next().and_then(|u| u.as_str().ok()),
            Some("node")
        );
        assert_eq!(cert.issuer().as_raw(), parse(ca.certificate_der()).subject().as_raw());
        assert_eq!(cert.public_key().subject_public_key.data.as_ref(), key.public_key_raw());
        let oids: Vec<String> = cert.extensions().iter().map(|e| e.oid.to_id_string()).collect();
        assert_eq!(
            oids,
            ["2.5.29.35", "2.5.29.17", "2.5.29.15", "2.5.29.37", "2.5.29.14", "2.5.29.19"],
            "AKI, SAN, KU, EKU, SKI, basic constraints and nothing else"
        );
        assert_eq!(secs(issued.not_after) - secs(issued.issued_at), 30 * 86_400);
        assert_eq!(secs(issued.issued_at), secs(now));
        assert_eq!(
            u64::try_from(cert.validity().not_after.timestamp()).expect("positive"),
            secs(now) + 30 * 86_400
        );
        assert!(client_cert_verifies(&ca, &issued.cert_der, now));
        assert_eq!(device_id_from_certificate(&issued.cert_der), Some(device));

        // A shorter validity is honoured; none beyond the CA's own.
        let short = ca.issue_client_certificate(&csr, device, Role::Device, DAY, now)?;
        assert_eq!(secs(short.not_after), secs(now) + 86_400);
        let long = ca.issue_client_certificate(&csr, device, Role::Device, CA_VALIDITY * 2, now)?;
        assert_eq!(long.not_after, ca.not_after());
        assert!(matches!(
            ca.issue_client_certificate(&csr, device, Role::Device, Duration::ZERO, now),
            Err(IdentityError::InvalidArgument(_))
        ));
        Ok(())
    }

    #[test]
    fn ed25519_requests_are_accepted_and_p384_refused() -> Result<(), IdentityError> {
        let now = SystemTime::now();
        let ca = DeviceCa::create(DeviceId::generate(), now)?;
        let device = DeviceId::generate();
        let ed = KeyPair::generate_for(&PKCS_ED25519)?;
        let csr = csr_pem_of(&ed, &CertificateParams::default());
        assert_eq!(Csr::parse_pem(&csr)?.key_algorithm(), CsrKeyAlgorithm::Ed25519);
        let issued =
            ca.issue_client_certificate(&csr, device, Role::Device, DEFAULT_CLIENT_CERT_VALIDITY, now)?;
        assert!(client_cert_verifies(&ca, &issued.cert_der, now));

        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?;
        let csr = csr_pem_of(&p384, &CertificateParams::default());
        match Csr::parse_pem(&csr) {
            Err(IdentityError::InvalidCsr(reason)) => {
                assert!(reason.contains("unsupported elliptic curve"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        Ok(())
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() -> Result<(), IdentityError> {
        let now = SystemTime::now();
        let ca = DeviceCa::create(DeviceId::generate(), now)?;
        let device = DeviceId::generate();
        let (_key, good) = generate_tls_key_and_csr(device)?;
        let good_der = Csr::parse_pem(&good)?.der().to_vec();
        assert_eq!(Csr::parse_pem(&good)?.key_algorithm(), CsrKeyAlgorithm::EcdsaP256);

        let reason = |pem: &str| match ca.issue_client_certificate(pem, device, Role::Device, DAY, now) {
            Err(IdentityError::InvalidCsr(reason)) => reason,
            other => panic!("expected InvalidCsr, got {other:?}"),
        };
        // The signature's last byte flipped, then a byte of the signed subject.
        let mut bad_signature = good_der.clone();
        *bad_signature.last_mut().expect("non-empty") ^= 1;
        assert!(
            reason(&pem_block("CERTIFICATE REQUEST", &bad_signature)).contains("signature does not verify")
        );
        let cn = device.to_string();
        let at = good_der.windows(cn.len()).position(|w| w == cn.as_bytes()).expect("cn in csr");
        let mut bad_subject = good_der.clone();
        bad_subject[at] ^= 0x20;
        assert!(
            reason(&pem_block("CERTIFICATE REQUEST", &bad_subject)).contains("signature does not verify")
        );

        assert!(reason("garbage").contains("no PEM CERTIFICATE REQUEST block"));
        assert!(reason("").contains("no PEM CERTIFICATE REQUEST block"));
        assert!(reason(&pem_block("CERTIFICATE", &good_der)).contains("no PEM CERTIFICATE REQUEST block"));
        assert!(
            reason("-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n")
                .contains("malformed PEM")
        );
        assert!(reason(&pem_block("CERTIFICATE REQUEST", b"not der")).contains("not a DER-encoded"));
        assert!(
            reason(&pem_block("CERTIFICATE REQUEST", &good_der[..good_der.len() - 1])).contains("not a DER")
        );
        let trailing = [&good_der[..], &[0u8]].concat();
        assert!(reason(&pem_block("CERTIFICATE REQUEST", &trailing)).contains("trailing bytes"));
        // Two requests, or a request beside another block: ambiguous, refused.
        let two = format!("{good}{good}");
        assert!(reason(&two).contains("2 PEM blocks"), "{}", reason(&two));
        let beside = format!("{}{good}", pem_block("PRIVATE KEY", b"whatever"));
        assert!(reason(&beside).contains("2 PEM blocks"));
        let oversized = format!("{good}{}", " ".repeat(MAX_CSR_PEM_LEN));
        assert!(reason(&oversized).contains("limit is 16384"));
        Ok(())
    }

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

    #[test]
    fn an_expired_ca_issues_nothing() -> Result<(), IdentityError> {
        let then = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let ca = DeviceCa::create(DeviceId::generate(), then)?;
        let later = then + CA_VALIDITY + DAY;
        assert!(matches!(ca.issue_server_certificate(&[], later), Err(IdentityError::Certificate(_))));
        Ok(())
    }

    proptest! {
        #[test]
        fn csr_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Csr::parse_der(&bytes);
            let _ = Csr::parse_pem(&pem_block("CERTIFICATE REQUEST", &bytes));
            let _ = Csr::parse_pem(&String::from_utf8_lossy(&bytes));
        }
    }
}
