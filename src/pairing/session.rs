//! A node's handshake session at rest: what [`NodeSession`] needs between StartPairing and
//! FinishPairing (SPAKE2 is already done by then), as a versioned, bounded byte encoding,
//! sealed under the node's internal seal key with AAD `"palyra.pairing.session.v1" ‖
//! session_id`, so the database can keep sessions across a restart and a sealed state moved
//! to another session's row does not open.
//!
//! Encoding, version 1 (integers big-endian; `str` = u16 length ‖ UTF-8 bytes, `bytes` =
//! u16 length ‖ bytes):
//!
//! ```text
//! u8 version = 1
//! str session_id, str code_id, str device_name
//! [32] signing_public_key, [32] agreement_public_key
//! str csr_pem, bytes device pake_message, str role
//! [32] transcript T, [32] expected client confirmation HMAC(Kc, T)
//! u64 expires_at (unix ms), str peer_address
//! ```
//!
//! Only a session awaiting FinishPairing is encoded. Decoding is bounded, never panics,
//! refuses trailing bytes and re-validates every field as the wire decoders do (the CSR's
//! signature included). The plaintext (it holds the expected confirmation) lives in
//! zeroizing buffers only. No IO, no clock.

use std::time::{Duration, UNIX_EPOCH};

use ring::aead;
use zeroize::Zeroizing;

use super::PairingError;
use super::code::{open, seal};
use super::handshake::{NodeSession, NodeState, StartMessage, session_id};
use crate::identity::Role;
use crate::identity::ca::MAX_CSR_PEM_LEN;
use crate::unix_time::unix_ms;

/// The encoding's version byte.
pub const SESSION_STATE_VERSION: u8 = 1;
/// AAD prefix of a sealed session (the session id follows).
const SESSION_AAD: &[u8] = b"palyra.pairing.session.v1";
/// Longest peer address kept.
pub const MAX_PEER_ADDRESS_LEN: usize = 256;
/// Longest encoded state accepted (a 16 KiB CSR plus small fields).
pub const MAX_SESSION_STATE_LEN: usize = MAX_CSR_PEM_LEN + 2048;

/// Seals `session` (awaiting FinishPairing) and the peer address it came from under `key`,
/// bound to its session id: nonce ‖ ciphertext ‖ tag.
pub fn seal_session(
    key: &aead::LessSafeKey,
    session: &NodeSession,
    peer_address: &str,
) -> Result<Vec<u8>, PairingError> {
    let plain = encode(session, peer_address)?;
    seal(key, SESSION_AAD, &session.session_id, &plain)
}

/// Opens a session sealed by [`seal_session`] under `session_id`: the machine (awaiting
/// FinishPairing) and its peer address. A state sealed for another session, altered, or
/// sealed with another key is [`PairingError::Integrity`].
pub fn open_session(
    key: &aead::LessSafeKey,
    session_id: &str,
    sealed: &[u8],
) -> Result<(NodeSession, String), PairingError> {
    if sealed.len() > MAX_SESSION_STATE_LEN + 64 {
        return Err(PairingError::Integrity);
    }
    let plain = open(key, SESSION_AAD, session_id, sealed)?;
    let (session, peer) = decode(&plain)?;
    if session.session_id != session_id {
        return Err(PairingError::Integrity);
    }
    Ok((session, peer))
}

fn put_str(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), PairingError> {
    let len = u16::try_from(bytes.len()).map_err(|_| PairingError::invalid("session", "field too long"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// The version-1 encoding of `session` and `peer_address`.
pub(crate) fn encode(session: &NodeSession, peer_address: &str) -> Result<Zeroizing<Vec<u8>>, PairingError> {
    if session.state != NodeState::AwaitingFinish {
        return Err(PairingError::UnexpectedMessage("only a session awaiting FinishPairing is stored"));
    }
    if peer_address.len() > MAX_PEER_ADDRESS_LEN {
        return Err(PairingError::invalid("peer_address", "longer than 256 bytes"));
    }
    let start = &session.start;
    let mut out = Zeroizing::new(Vec::with_capacity(512 + start.csr_pem.len()));
    out.push(SESSION_STATE_VERSION);
    put_str(&mut out, session.session_id.as_bytes())?;
    put_str(&mut out, start.code_id.as_str().as_bytes())?;
    put_str(&mut out, start.device_name.as_str().as_bytes())?;
    out.extend_from_slice(&start.signing_public_key);
    out.extend_from_slice(&start.agreement_public_key);
    put_str(&mut out, start.csr_pem.as_bytes())?;
    put_str(&mut out, &start.pake_message)?;
    put_str(&mut out, session.role.as_str().as_bytes())?;
    out.extend_from_slice(&session.transcript);
    out.extend_from_slice(session.expected_client_confirmation.as_ref());
    out.extend_from_slice(&unix_ms(session.expires_at).to_be_bytes());
    put_str(&mut out, peer_address.as_bytes())?;
    if out.len() > MAX_SESSION_STATE_LEN {
        return Err(PairingError::invalid("session", "state too large"));
    }
    Ok(out)
}

/// A bounds-checked reader; every failure is [`PairingError::Integrity`].
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PairingError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(PairingError::Integrity)?;
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PairingError> {
        self.take(N)?.try_into().map_err(|_| PairingError::Integrity)
    }

    fn bytes(&mut self, max: usize) -> Result<&'a [u8], PairingError> {
        let len = usize::from(u16::from_be_bytes(self.array()?));
        if len > max {
            return Err(PairingError::Integrity);
        }
        self.take(len)
    }

    fn str(&mut self, max: usize) -> Result<&'a str, PairingError> {
        std::str::from_utf8(self.bytes(max)?).map_err(|_| PairingError::Integrity)
    }
}

/// Decodes a version-1 encoding.
pub(crate) fn decode(bytes: &[u8]) -> Result<(NodeSession, String), PairingError> {
    if bytes.len() > MAX_SESSION_STATE_LEN {
        return Err(PairingError::Integrity);
    }
    let mut r = Reader(bytes);
    if r.array::<1>()? != [SESSION_STATE_VERSION] {
        return Err(PairingError::Integrity);
    }
    let id = session_id(r.str(super::handshake::MAX_SESSION_ID_LEN)?).map_err(|_| PairingError::Integrity)?;
    let code_id = r.str(64)?;
    let device_name = r.str(1024)?;
    let signing_public_key: [u8; 32] = r.array()?;
    let agreement_public_key: [u8; 32] = r.array()?;
    let csr_pem = r.str(MAX_CSR_PEM_LEN)?;
    let pake_message = r.bytes(64)?;
    let role = r.str(16)?.parse::<Role>().map_err(|_| PairingError::Integrity)?;
    let transcript: [u8; 32] = r.array()?;
    let expected = Zeroizing::new(r.array::<32>()?);
    let expires_ms = u64::from_be_bytes(r.array()?);
    let peer_address = r.str(MAX_PEER_ADDRESS_LEN)?.to_owned();
    if !r.0.is_empty() {
        return Err(PairingError::Integrity);
    }
    let start = StartMessage::decode(
        code_id,
        device_name,
        &signing_public_key,
        &agreement_public_key,
        csr_pem,
        pake_message,
    )
    .map_err(|_| PairingError::Integrity)?;
    let expires_at =
        UNIX_EPOCH.checked_add(Duration::from_millis(expires_ms)).ok_or(PairingError::Integrity)?;
    let session = NodeSession {
        state: NodeState::AwaitingFinish,
        session_id: id,
        start,
        role,
        transcript,
        expected_client_confirmation: expected,
        expires_at,
    };
    Ok((session, peer_address))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::identity::DeviceIdentity;
    use crate::identity::ca::generate_tls_key_and_csr;
    use crate::pairing::{CodeId, CodeState, DeviceName, DevicePairing, PairingCode, Pin};

    const CA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn key(byte: u8) -> aead::LessSafeKey {
        aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, &[byte; 32]).unwrap())
    }

    /// A device and a node session awaiting its finish.
    fn started() -> (DeviceIdentity, DevicePairing, NodeSession, crate::pairing::StartReply) {
        let identity = DeviceIdentity::generate().unwrap();
        let (_key, csr_pem) = generate_tls_key_and_csr(identity.id()).unwrap();
        let mut code = PairingCode {
            code_id: CodeId::generate().unwrap(),
            sealed_pin: Some(vec![0]),
            role: Role::Node,
            created_at: t0(),
            expires_at: t0() + Duration::from_secs(600),
            max_attempts: 5,
            attempts_left: 5,
            state: CodeState::Active,
        };
        let pin = Pin::parse("482913").unwrap();
        let (device, start) = DevicePairing::start(
            &identity,
            code.code_id.clone(),
            &pin,
            CA,
            DeviceName::parse("phone").unwrap(),
            &csr_pem,
        )
        .unwrap();
        code.take_attempt(t0()).unwrap();
        let (node, reply) = NodeSession::start(&code, &pin, CA, start, t0()).unwrap();
        (identity, device, node, reply)
    }

    #[test]
    fn a_sealed_session_finishes_after_reopening() {
        let (identity, mut device, node, reply) = started();
        let k = key(7);
        let sealed = seal_session(&k, &node, "127.0.0.1:5000").unwrap();
        drop(node);
        let (mut reopened, peer) = open_session(&k, &reply.session_id, &sealed).unwrap();
        assert_eq!(peer, "127.0.0.1:5000");
        assert_eq!(reopened.session_id(), reply.session_id);
        assert_eq!(unix_ms(reopened.expires_at()), unix_ms(reply.expires_at));
        let finish = device.handle_reply(&identity, &reply, t0()).unwrap();
        let verified = reopened.handle_finish(&finish, t0() + Duration::from_secs(1)).unwrap();
        assert_eq!(verified.signing_public_key, identity.signing_public_key());
        assert_eq!((verified.role, verified.device_name.as_str()), (Role::Node, "phone"));
        // Once finished it is not stored again; its expiry still holds after reopening.
        assert!(seal_session(&k, &reopened, "").is_err());
        let (mut late, _) = open_session(&k, &reply.session_id, &sealed).unwrap();
        assert_eq!(late.handle_finish(&finish, reply.expires_at), Err(PairingError::SessionExpired));
    }

    #[test]
    fn a_sealed_session_opens_only_for_its_id_and_key_and_unaltered() {
        let (_, _, node, reply) = started();
        let (_, _, other, _) = started();
        let k = key(7);
        let sealed = seal_session(&k, &node, "").unwrap();
        assert!(open_session(&k, &reply.session_id, &sealed).is_ok());
        // Moved to another session's row.
        assert_eq!(open_session(&k, other.session_id(), &sealed).err(), Some(PairingError::Integrity));
        assert_eq!(open_session(&key(8), &reply.session_id, &sealed).err(), Some(PairingError::Integrity));
        for i in [0, 12, sealed.len() / 2, sealed.len() - 1] {
            let mut flipped = sealed.clone();
            flipped[i] ^= 1;
            assert_eq!(open_session(&k, &reply.session_id, &flipped).err(), Some(PairingError::Integrity));
        }
        for len in [0, 5, 12, 28, sealed.len() - 1] {
            assert_eq!(
                open_session(&k, &reply.session_id, &sealed[..len]).err(),
                Some(PairingError::Integrity)
            );
        }
        // A sealed PIN is not a sealed session, even under the same key and binding.
        let pin = crate::pairing::code::seal_pin(
            &k,
            &CodeId::parse("0000000000").unwrap(),
            &Pin::parse("482913").unwrap(),
        )
        .unwrap();
        assert_eq!(open_session(&k, "0000000000", &pin).err(), Some(PairingError::Integrity));
        // Debug never shows the expected confirmation.
        let plain = encode(&node, "").unwrap();
        assert!(!format!("{node:?}").contains(&hex::encode(&plain[plain.len() - 42..plain.len() - 10])));
    }

    #[test]
    fn decoding_is_bounded_strict_and_never_panics() {
        let (_, _, node, _) = started();
        let plain = encode(&node, "10.0.0.1:1").unwrap();
        assert!(decode(&plain).is_ok());
        // Every truncation, a trailing byte, another version.
        for len in 0..plain.len() {
            assert_eq!(decode(&plain[..len]).err(), Some(PairingError::Integrity), "{len}");
        }
        let mut longer = plain.to_vec();
        longer.push(0);
        assert_eq!(decode(&longer).err(), Some(PairingError::Integrity));
        let mut v2 = plain.to_vec();
        v2[0] = 2;
        assert_eq!(decode(&v2).err(), Some(PairingError::Integrity));
        assert_eq!(decode(&vec![1; MAX_SESSION_STATE_LEN + 1]).err(), Some(PairingError::Integrity));
        // Every single-byte change either decodes to something valid or is refused; no panic.
        for i in 0..plain.len() {
            for b in [0x00, 0xFF, plain[i] ^ 0x80] {
                let mut m = plain.to_vec();
                m[i] = b;
                let _ = decode(&m);
            }
        }
        for len in [0, 1, 3, 100, 1000] {
            let _ = decode(&vec![0xAB; len]);
            let _ = decode(&vec![1; len]);
        }
        assert!(encode(&node, &"a".repeat(MAX_PEER_ADDRESS_LEN + 1)).is_err());
    }
}
