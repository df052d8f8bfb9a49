//! Device identity bytes and what devices sign (`src/identity/`): `DeviceIdentity::from_bytes`
//! (a sealed identity read back), device ids, Ed25519 verification of signed status polls and
//! renewal proofs with fuzzed keys and signatures. The first byte picks the mode. Checks:
//! from_bytes → to_bytes is the identity; a signature made by an identity verifies for exactly
//! its message; a fuzzed signature never verifies a fixed identity's message.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palyra::identity::{DeviceIdentity, renewal_proof_message, verify_signature};
use palyra::pairing::StatusPoll;
use palyra_fuzz::{Fields, now};

fn fixed() -> &'static DeviceIdentity {
    static ID: OnceLock<DeviceIdentity> = OnceLock::new();
    ID.get_or_init(|| {
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(&[7; 80]);
        DeviceIdentity::from_bytes(&bytes).expect("an identity")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => {
            let Ok(identity) = DeviceIdentity::from_bytes(rest) else { return };
            assert_eq!(&identity.to_bytes()[..], rest);
            assert!(!format!("{identity:?}").contains(&format!("{:?}", &rest[17..49])));
            let message = b"palyra fuzz";
            let signature = identity.sign(message);
            assert!(verify_signature(&identity.signing_public_key(), message, &signature));
            assert!(!verify_signature(&identity.signing_public_key(), b"palyra fuzZ", &signature));
            assert_eq!(identity.fingerprint().len(), 64);
            let peer = fixed();
            let ours = identity.agree(&peer.agreement_public_key());
            let theirs = peer.agree(&identity.agreement_public_key());
            assert_eq!(ours.as_deref(), theirs.as_deref(), "X25519 agreement is symmetric");
        }
        1 => {
            // A renewal proof: challenge, CSR DER, key, signature.
            let mut f = Fields::new(rest);
            let (challenge, csr_der, key, signature) = (f.bytes(), f.bytes(), f.bytes(), f.bytes());
            let message = renewal_proof_message(challenge, csr_der);
            if let Ok(key) = <[u8; 32]>::try_from(key) {
                let _ = verify_signature(&key, &message, signature);
            }
            let id = fixed();
            assert!(
                !verify_signature(&id.signing_public_key(), &message, signature),
                "a forged proof verified"
            );
            let real = id.sign(&message);
            assert!(verify_signature(&id.signing_public_key(), &message, &real));
            let other = renewal_proof_message(challenge, &[csr_der, b"x"].concat());
            assert!(
                !verify_signature(&id.signing_public_key(), &other, &real),
                "a proof moved to another CSR"
            );
        }
        _ => {
            // A signed status poll from the wire.
            let mut f = Fields::new(rest);
            let (request_id, timestamp, signature) = (f.text(), f.u64(), f.bytes());
            if let Ok(poll) = StatusPoll::decode(&request_id, timestamp, signature) {
                assert!(poll.verify(&fixed().signing_public_key(), now()).is_err(), "a forged poll verified");
                let signed = StatusPoll::sign(fixed(), &poll.request_id, now());
                assert!(signed.verify(&fixed().signing_public_key(), now()).is_ok());
            }
        }
    }
});
