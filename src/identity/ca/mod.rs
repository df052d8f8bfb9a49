//! The node's device CA: a self-signed ECDSA P-256 CA that issues the node's TLS server
//! certificate and the client certificates of paired devices, plus the parsing the TLS edges
//! need: [`csr`] (CSRs in: parsing and signature checks) and [`certificate`] (what is built
//! into and read out of certificates: validity windows, names, device ids, PEM bundles).
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

mod certificate;
mod csr;

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

#[cfg_attr(not(feature = "testkit"), allow(unused_imports))]
pub use certificate::{
    CLOCK_SKEW_ALLOWANCE, DEVICE_URI_PREFIX, IssuedCert, IssuedKeyPair, ServerName, certificate_fingerprint,
    certificate_not_after, certificate_not_after_pem, certificate_server_names, certificate_validity_pem,
    device_id_from_certificate, local_host_name, needs_renewal, public_key_of_pem, server_names,
};
use certificate::{
    Window, check_key_matches, first_certificate, ia5, name, parse_certificate, pem_bundle, pem_of,
    random_serial, validity_of,
};
#[cfg_attr(not(feature = "testkit"), allow(unused_imports))]
pub use csr::{Csr, CsrKeyAlgorithm, MAX_CSR_PEM_LEN, csr_for_key, generate_tls_key_and_csr};

use super::sealed::SecretStore;
use super::{DeviceId, IdentityError, Role};

/// Lifetime of the CA certificate.
pub const CA_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 60 * 60);
/// Lifetime of the node's TLS server certificate.
pub const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 60 * 60);
/// Default lifetime of a device's client certificate.
pub const DEFAULT_CLIENT_CERT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Identity-store entry of the CA (certificate PEM followed by its PKCS#8 key PEM).
pub const CA_STORE_NAME: &str = "ca.pem";

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

#[cfg(test)]
#[allow(clippy::expect_used, reason = "test setup fails loudly")]
mod tests {
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;

    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::server::WebPkiClientVerifier;
    use rustls_pki_types::{PrivateKeyDer, ServerName as TlsName, UnixTime};
    use x509_parser::extensions::GeneralName;
    use x509_parser::oid_registry::OID_EC_P256;

    use super::*;
    use crate::identity::sealed::InMemorySecretStore;

    pub(super) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    pub(super) fn roots(ca: &DeviceCa) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.certificate_der().clone()).expect("add root");
        Arc::new(roots)
    }

    pub(super) fn unix(t: SystemTime) -> UnixTime {
        UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).expect("after 1970"))
    }

    /// rustls's own client-certificate check: chain to `ca`, clientAuth EKU, dates.
    pub(super) fn client_cert_verifies(
        ca: &DeviceCa,
        cert: &CertificateDer<'static>,
        now: SystemTime,
    ) -> bool {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots(ca), provider()).build().expect("verifier");
        verifier.verify_client_cert(cert, &[], unix(now)).is_ok()
    }

    /// rustls's own server-certificate check for `name`.
    pub(super) fn server_cert_verifies(
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

    pub(super) fn parse(der: &[u8]) -> X509Certificate<'_> {
        X509Certificate::from_der(der).expect("certificate").1
    }

    pub(super) fn common_name(name: &x509_parser::x509::X509Name<'_>) -> String {
        name.iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or_default().to_owned()
    }

    pub(super) fn secs(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
    }

    pub(super) fn csr_pem_of(key: &KeyPair, params: &CertificateParams) -> String {
        params.serialize_request(key).expect("csr").pem().expect("pem")
    }

    pub(super) fn pem_block(label: &str, der: &[u8]) -> String {
        pem::encode(&pem::Pem::new(label, der))
    }

    pub(super) const DAY: Duration = Duration::from_secs(86_400);

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
    fn an_expired_ca_issues_nothing() -> Result<(), IdentityError> {
        let then = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let ca = DeviceCa::create(DeviceId::generate(), then)?;
        let later = then + CA_VALIDITY + DAY;
        assert!(matches!(ca.issue_server_certificate(&[], later), Err(IdentityError::Certificate(_))));
        Ok(())
    }
}
