//! Certificate signing requests in: a bounded, panic-free parser that accepts only ECDSA P-256
//! and Ed25519 keys and verifies the request's own signature, and the CSRs a device makes for
//! its TLS key (pairing, renewal).
//!
//! Only the public key of a request is ever used: the CA chooses everything else
//! (`super::DeviceCa::issue_client_certificate`). This module issues nothing.

use std::fmt;

use rcgen::{
    CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, PublicKeyData, SignatureAlgorithm,
};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::{Error as PemError, PemObject};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

use super::certificate::name;
use crate::identity::{DeviceId, IdentityError};

/// Largest CSR accepted, in bytes of PEM.
pub const MAX_CSR_PEM_LEN: usize = 16 * 1024;

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
    pub(super) public_key: CsrPublicKey,
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
pub(super) struct CsrPublicKey {
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
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
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

fn invalid_csr(reason: impl Into<String>) -> IdentityError {
    IdentityError::InvalidCsr(reason.into())
}

#[cfg(test)]
#[allow(clippy::expect_used, reason = "test setup fails loudly")]
mod tests {
    use std::time::SystemTime;

    use proptest::prelude::*;

    use super::super::tests::{DAY, client_cert_verifies, csr_pem_of, pem_block};
    use super::super::{DEFAULT_CLIENT_CERT_VALIDITY, DeviceCa};
    use super::*;
    use crate::identity::Role;

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

    proptest! {
        #[test]
        fn csr_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Csr::parse_der(&bytes);
            let _ = Csr::parse_pem(&pem_block("CERTIFICATE REQUEST", &bytes));
            let _ = Csr::parse_pem(&String::from_utf8_lossy(&bytes));
        }
    }
}
