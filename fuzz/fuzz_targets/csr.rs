//! CSR intake (`src/identity/ca.rs`): `Csr::parse_pem` (pairing, renewal) and `parse_der`,
//! then `DeviceCa::issue_client_certificate` on what verifies; and the certificate readers
//! (`device_id_from_certificate`, `certificate_server_names`, `certificate_validity_pem`).
//! The first byte picks the mode. Checks: a parsed CSR re-parses from its DER to itself; an
//! issued certificate is signed by the CA, names exactly the device chosen by the node, and
//! carries the CSR's key and nothing else of it; no input passes for a CA signature.

#![no_main]

use std::cell::OnceCell;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use palyra::identity::ca::{
    CLOCK_SKEW_ALLOWANCE, Csr, MAX_CSR_PEM_LEN, certificate_server_names, certificate_validity_pem,
    device_id_from_certificate,
};
use palyra::identity::{DeviceCa, DeviceId, IdentityError, Role};
use palyra_fuzz::now;
use x509_parser::prelude::{FromDer, X509Certificate};

thread_local! {
    static CA: OnceCell<DeviceCa> = const { OnceCell::new() };
}

fn issue(ca: &DeviceCa, csr: &Csr, pem_text: &str, knobs: u8) {
    let id = DeviceId::parse("01j9zq8x7c6v5b4n3m2k1j0h9g").expect("a device id");
    let role = if knobs & 1 == 0 { Role::Device } else { Role::Node };
    let validity = Duration::from_secs(u64::from(knobs >> 1) * 86_400);
    let issued = match ca.issue_client_certificate(pem_text, id, role, validity, now()) {
        Ok(issued) => issued,
        Err(IdentityError::InvalidArgument(_)) if validity.is_zero() => return,
        Err(e) => panic!("a verified CSR was refused: {e:?}"),
    };
    assert!(ca.signed(&issued.cert_der));
    assert_eq!(device_id_from_certificate(&issued.cert_der), Some(id));
    assert_eq!(
        certificate_validity_pem(issued.cert_pem.as_bytes()),
        Some((issued.issued_at - CLOCK_SKEW_ALLOWANCE, issued.not_after))
    );
    assert_eq!(issued.not_after, now() + validity);
    let (_, cert) = X509Certificate::from_der(&issued.cert_der).expect("an issued certificate parses");
    assert_eq!(&cert.public_key().subject_public_key.data[..], csr.public_key(), "the CSR's key");
    assert!(!cert.is_ca());
    assert!(certificate_server_names(&issued.cert_der).expect("parses").is_empty(), "no DNS or IP name");
    // Only the node's choices: the subject is the device id (and the role), whatever the CSR asked.
    let subject = cert.subject().to_string();
    assert!(subject.contains(&format!("CN={id}")), "{subject}");
    let extensions: Vec<String> = cert.extensions().iter().map(|e| e.oid.to_id_string()).collect();
    for oid in &extensions {
        assert!(
            ["2.5.29.15", "2.5.29.17", "2.5.29.19", "2.5.29.35", "2.5.29.37", "2.5.29.14"]
                .contains(&oid.as_str()),
            "unexpected extension {oid} in an issued certificate"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    CA.with(|cell| {
        let ca = cell.get_or_init(|| {
            DeviceCa::create(DeviceId::parse("01j9zq8x7c6v5b4n3m2k1j0h9h").expect("an id"), now())
                .expect("a CA")
        });
        match mode % 3 {
            0 => {
                let Some((&knobs, rest)) = rest.split_first() else { return };
                let text = String::from_utf8_lossy(rest);
                let Ok(csr) = Csr::parse_pem(&text) else { return };
                assert!(text.len() <= MAX_CSR_PEM_LEN);
                assert!(Csr::parse_der(csr.der()).ok().as_ref() == Some(&csr));
                issue(ca, &csr, &text, knobs);
            }
            1 => {
                let Ok(csr) = Csr::parse_der(rest) else { return };
                assert_eq!(csr.der(), rest);
                let text = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", rest.to_vec()));
                assert!(Csr::parse_pem(&text).ok().as_ref() == Some(&csr));
                issue(ca, &csr, &text, 60);
            }
            _ => {
                let _ = device_id_from_certificate(rest);
                let _ = certificate_server_names(rest);
                let _ = certificate_validity_pem(rest);
                assert!(!ca.signed(rest) || rest == ca.certificate_der().as_ref(), "a forged CA signature");
            }
        }
    });
});
