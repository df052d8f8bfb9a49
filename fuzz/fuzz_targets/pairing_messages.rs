//! Every pairing message as its raw wire fields (`src/pairing/handshake.rs` decoders), a
//! stored session's plaintext (`src/pairing/session.rs`) and a sealed one. The first byte
//! picks the message; the rest are `palyra_fuzz::Fields`. Checks: a decoded message fed back
//! through its decoder decodes to itself; a session encoding is a fixed point.

#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use palyra::fuzzing::{pairing_session_decode, pairing_session_encode};
use palyra::identity::ca::Csr;
use palyra::pairing::{
    CodeId, FinishMessage, PairingError, StartMessage, StartReply, StatusPoll, open_session,
};
use palyra::unix_time::unix_ms;
use palyra_fuzz::{Fields, SESSION_SEAL_KEY, now};
use ring::aead;

fn start(f: &mut Fields<'_>) {
    let (code, name, sk, ak, csr, pake) = (f.text(), f.text(), f.bytes(), f.bytes(), f.text(), f.bytes());
    match StartMessage::decode(&code, &name, sk, ak, &csr, pake) {
        Ok(m) => {
            assert_eq!(CodeId::parse(m.code_id.as_str()).as_ref(), Ok(&m.code_id));
            assert_eq!(m.device_name.as_str(), name);
            assert_eq!((&m.signing_public_key[..], &m.agreement_public_key[..]), (sk, ak));
            assert_eq!(m.csr_pem, csr);
            assert_eq!(m.csr_der, Csr::parse_pem(&csr).expect("the CSR decoded").der());
            assert_eq!(m.pake_message, pake);
            assert_eq!(m.fingerprint().len(), 64);
            let again = StartMessage::decode(
                m.code_id.as_str(),
                m.device_name.as_str(),
                &m.signing_public_key,
                &m.agreement_public_key,
                &m.csr_pem,
                &m.pake_message,
            );
            assert_eq!(again.as_ref(), Ok(&m));
        }
        Err(PairingError::InvalidArgument { field, .. }) => assert!(
            [
                "code_id",
                "device_name",
                "signing_public_key",
                "agreement_public_key",
                "csr_pem",
                "pake_message"
            ]
            .contains(&field)
        ),
        Err(e) => panic!("StartMessage::decode: {e:?}"),
    }
}

fn reply(f: &mut Fields<'_>) {
    let (session, pake, confirmation) = (f.text(), f.bytes(), f.bytes());
    let expires_at = UNIX_EPOCH + Duration::from_millis(f.u64() >> 8);
    match StartReply::decode(&session, pake, confirmation, expires_at) {
        Ok(r) => {
            assert_eq!(
                (r.session_id.as_str(), &r.pake_message[..], &r.server_confirmation[..]),
                (&*session, pake, confirmation)
            );
            let again =
                StartReply::decode(&r.session_id, &r.pake_message, &r.server_confirmation, r.expires_at);
            assert!(again.as_ref() == Ok(&r));
            // Debug shows the session, never the confirmation.
            assert!(!format!("{r:?}").contains(&format!("{:?}", r.server_confirmation)));
        }
        Err(PairingError::InvalidArgument { .. }) => {}
        Err(e) => panic!("StartReply::decode: {e:?}"),
    }
}

fn finish(f: &mut Fields<'_>) {
    let (session, confirmation, signature) = (f.text(), f.bytes(), f.bytes());
    match FinishMessage::decode(&session, confirmation, signature) {
        Ok(m) => {
            let again = FinishMessage::decode(&m.session_id, &m.client_confirmation, &m.signature);
            assert!(again.as_ref() == Ok(&m));
        }
        Err(PairingError::InvalidArgument { .. } | PairingError::SessionExpired) => {}
        Err(e) => panic!("FinishMessage::decode: {e:?}"),
    }
}

fn poll(f: &mut Fields<'_>) {
    let (request_id, timestamp, signature, key) = (f.text(), f.u64(), f.bytes(), f.bytes());
    match StatusPoll::decode(&request_id, timestamp, signature) {
        Ok(p) => {
            assert_eq!(p.request_id.len(), 26);
            let key: [u8; 32] = key.try_into().unwrap_or([0; 32]);
            // Verification is strict: if a poll verifies, no other signature, id or time does.
            if p.verify(&key, now()).is_ok() {
                for at in [0, 31, 32, 63] {
                    let mut forged = p.clone();
                    forged.signature[at] ^= 0x80;
                    assert!(
                        forged.verify(&key, now()).is_err(),
                        "a signature with byte {at} altered verified"
                    );
                }
                let later = StatusPoll { timestamp_unix_ms: p.timestamp_unix_ms ^ 1, ..p.clone() };
                assert!(later.verify(&key, now()).is_err());
            }
        }
        Err(PairingError::InvalidArgument { .. }) => {}
        Err(e) => panic!("StatusPoll::decode: {e:?}"),
    }
}

fn session_plaintext(bytes: &[u8]) {
    let Ok((session, peer)) = pairing_session_decode(bytes) else { return };
    let encoded = pairing_session_encode(&session, &peer).expect("a decoded session encodes");
    let (again, peer_again) = pairing_session_decode(&encoded).expect("an encoded session decodes");
    assert_eq!(peer_again, peer);
    assert_eq!(again.session_id(), session.session_id());
    assert_eq!(again.code_id(), session.code_id());
    assert_eq!(unix_ms(again.expires_at()), unix_ms(session.expires_at()));
    let twice = pairing_session_encode(&again, &peer_again).expect("encodes again");
    assert_eq!(*twice, *encoded, "the encoding of a decoded session is a fixed point");
}

fn sealed_session(f: &mut Fields<'_>) {
    let key = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::AES_256_GCM, &SESSION_SEAL_KEY).expect("a 32-byte key"),
    );
    let id = f.text();
    if let Ok((session, _)) = open_session(&key, &id, f.rest()) {
        assert_eq!(session.session_id(), id);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let mut fields = Fields::new(rest);
    match which % 6 {
        0 => start(&mut fields),
        1 => reply(&mut fields),
        2 => finish(&mut fields),
        3 => poll(&mut fields),
        4 => session_plaintext(rest),
        _ => sealed_session(&mut fields),
    }
});
