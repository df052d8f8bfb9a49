//! The pairing handshake (docs/pairing-protocol.md), both sides as sans-IO state machines.
//!
//! The device calls [`DevicePairing::start`] (→ [`StartMessage`]) and
//! [`DevicePairing::handle_reply`] (→ [`FinishMessage`]); the node calls
//! [`NodeSession::start`] (→ [`StartReply`]) and [`NodeSession::handle_finish`] (→
//! [`VerifiedPairing`]). Each machine takes `now` and messages and returns messages or an
//! error; a message in the wrong state (a replay, or out of order) is refused. Every message
//! has a `decode` that takes the raw wire fields, is bounded and never panics, so the edges
//! (gRPC, fuzzers) hand untrusted bytes straight to it.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::unix_time::unix_ms;

use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hkdf, hmac};
use spake2::{Ed25519Group, Identity, Password, Spake2};
use subtle::ConstantTimeEq;

use super::code::{CodeId, PairingCode, PakePassword, is_fingerprint};
use super::{PROTOCOL, PairingError, SESSION_TTL};
use crate::identity::ca::{Csr, MAX_CSR_PEM_LEN};
use crate::identity::{DeviceIdentity, Role, fingerprint_of, verify_signature};

/// SPAKE2 identity of side A.
pub const DEVICE_IDENTITY: &[u8] = b"palyra-pairing-v1/device";
/// SPAKE2 identity of side B.
pub const NODE_IDENTITY: &[u8] = b"palyra-pairing-v1/node";
/// HKDF info of the device's confirmation key `Kc`.
pub const DEVICE_CONFIRM_INFO: &[u8] = b"palyra-pairing-v1 device confirm";
/// HKDF info of the node's confirmation key `Ks`.
pub const NODE_CONFIRM_INFO: &[u8] = b"palyra-pairing-v1 node confirm";
/// Domain tag of the FinishPairing signature.
pub const FINISH_TAG: &[u8] = b"palyra-pairing-v1/finish";
/// Domain tag of the GetPairingStatus signature.
pub const STATUS_TAG: &[u8] = b"palyra-pairing-v1/status";
/// A SPAKE2 (Ed25519 group) message: a side byte and a 32-byte element.
pub const PAKE_MESSAGE_LEN: usize = 33;
#[cfg_attr(not(feature = "testkit"), allow(unused_imports))]
pub use super::name::{DeviceName, MAX_DEVICE_NAME_CHARS};
/// Longest session id accepted.
pub(super) const MAX_SESSION_ID_LEN: usize = 64;

fn key32(field: &'static str, bytes: &[u8]) -> Result<[u8; 32], PairingError> {
    bytes
        .try_into()
        .map_err(|_| PairingError::invalid(field, format!("expected 32 bytes, got {}", bytes.len())))
}

fn sig64(field: &'static str, bytes: &[u8]) -> Result<[u8; 64], PairingError> {
    bytes
        .try_into()
        .map_err(|_| PairingError::invalid(field, format!("expected 64 bytes, got {}", bytes.len())))
}

fn pake(field: &'static str, bytes: &[u8]) -> Result<Vec<u8>, PairingError> {
    if bytes.len() != PAKE_MESSAGE_LEN {
        return Err(PairingError::invalid(
            field,
            format!("a SPAKE2 message has {PAKE_MESSAGE_LEN} bytes, got {}", bytes.len()),
        ));
    }
    Ok(bytes.to_vec())
}

pub(super) fn session_id(text: &str) -> Result<String, PairingError> {
    if text.is_empty() || text.len() > MAX_SESSION_ID_LEN || !text.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(PairingError::invalid("session_id", "not a session id returned by StartPairing"));
    }
    Ok(text.to_owned())
}

/// Device → node, step 2: StartPairing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartMessage {
    /// The code.
    pub code_id: CodeId,
    /// The device's name.
    pub device_name: DeviceName,
    /// Its Ed25519 signing public key.
    pub signing_public_key: [u8; 32],
    /// Its X25519 agreement public key.
    pub agreement_public_key: [u8; 32],
    /// The CSR as sent (PEM).
    pub csr_pem: String,
    /// The CSR's DER (what the transcript hashes).
    pub csr_der: Vec<u8>,
    /// The device's SPAKE2 message.
    pub pake_message: Vec<u8>,
}

impl StartMessage {
    /// Decodes and checks the wire fields: lengths, the name, the CSR (parsed, bounded, its
    /// self-signature verified).
    pub fn decode(
        code_id: &str,
        device_name: &str,
        signing_public_key: &[u8],
        agreement_public_key: &[u8],
        csr_pem: &str,
        pake_message: &[u8],
    ) -> Result<Self, PairingError> {
        let code_id = CodeId::parse(code_id)?;
        let device_name = DeviceName::parse_exact(device_name)?;
        let signing_public_key = key32("signing_public_key", signing_public_key)?;
        let agreement_public_key = key32("agreement_public_key", agreement_public_key)?;
        if csr_pem.len() > MAX_CSR_PEM_LEN {
            return Err(PairingError::invalid("csr_pem", format!("longer than {MAX_CSR_PEM_LEN} bytes")));
        }
        let csr = Csr::parse_pem(csr_pem).map_err(|e| PairingError::invalid("csr_pem", e.to_string()))?;
        Ok(StartMessage {
            code_id,
            device_name,
            signing_public_key,
            agreement_public_key,
            csr_pem: csr_pem.to_owned(),
            csr_der: csr.der().to_vec(),
            pake_message: pake("pake_message", pake_message)?,
        })
    }

    /// Lowercase hex SHA-256 of the signing key.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.signing_public_key)
    }
}

/// Node → device, step 2's answer.
#[derive(Clone, PartialEq, Eq)]
pub struct StartReply {
    /// The session, for FinishPairing.
    pub session_id: String,
    /// The node's SPAKE2 message.
    pub pake_message: Vec<u8>,
    /// HMAC-SHA256(Ks, T).
    pub server_confirmation: [u8; 32],
    /// When the session expires.
    pub expires_at: SystemTime,
}

impl fmt::Debug for StartReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartReply").field("session_id", &self.session_id).finish_non_exhaustive()
    }
}

impl StartReply {
    /// Decodes the wire fields.
    pub fn decode(
        session: &str,
        pake_message: &[u8],
        server_confirmation: &[u8],
        expires_at: SystemTime,
    ) -> Result<Self, PairingError> {
        Ok(StartReply {
            session_id: session_id(session)?,
            pake_message: pake("pake_message", pake_message)?,
            server_confirmation: key32("server_confirmation", server_confirmation)?,
            expires_at,
        })
    }
}

/// Device → node, step 3: FinishPairing.
#[derive(Clone, PartialEq, Eq)]
pub struct FinishMessage {
    /// The session.
    pub session_id: String,
    /// HMAC-SHA256(Kc, T).
    pub client_confirmation: [u8; 32],
    /// Ed25519 over `FINISH_TAG ‖ T`.
    pub signature: [u8; 64],
}

impl fmt::Debug for FinishMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FinishMessage").field("session_id", &self.session_id).finish_non_exhaustive()
    }
}

impl FinishMessage {
    /// Decodes the wire fields. A session id that cannot be one of ours is
    /// [`PairingError::SessionExpired`] (there is no such session).
    pub fn decode(session: &str, client_confirmation: &[u8], signature: &[u8]) -> Result<Self, PairingError> {
        Ok(FinishMessage {
            session_id: session_id(session).map_err(|_| PairingError::SessionExpired)?,
            client_confirmation: key32("client_confirmation", client_confirmation)?,
            signature: sig64("signature", signature)?,
        })
    }
}

/// Device → node, step 6: a signed GetPairingStatus poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPoll {
    /// The request polled for, as sent (the signature covers these bytes).
    pub request_id: String,
    /// The device's clock, ms since the epoch.
    pub timestamp_unix_ms: u64,
    /// Ed25519 over `STATUS_TAG ‖ request_id ‖ timestamp (u64 BE)`.
    pub signature: [u8; 64],
}

impl StatusPoll {
    /// Decodes the wire fields: the request id must be a ULID.
    pub fn decode(request_id: &str, timestamp_unix_ms: u64, signature: &[u8]) -> Result<Self, PairingError> {
        if request_id.len() != 26 || ulid::Ulid::from_string(request_id).is_err() {
            return Err(PairingError::invalid("request_id", "not a ULID"));
        }
        Ok(StatusPoll {
            request_id: request_id.to_owned(),
            timestamp_unix_ms,
            signature: sig64("signature", signature)?,
        })
    }

    /// A poll signed by `identity` at `now`.
    pub fn sign(identity: &DeviceIdentity, request_id: &str, now: SystemTime) -> Self {
        let timestamp_unix_ms = unix_ms(now);
        StatusPoll {
            request_id: request_id.to_owned(),
            timestamp_unix_ms,
            signature: identity.sign(&Self::message(request_id, timestamp_unix_ms)),
        }
    }

    /// Checks the signature against the requesting device's key, then the clock skew.
    pub fn verify(&self, signing_public_key: &[u8; 32], now: SystemTime) -> Result<(), PairingError> {
        let message = Self::message(&self.request_id, self.timestamp_unix_ms);
        if !verify_signature(signing_public_key, &message, &self.signature) {
            return Err(PairingError::ProofInvalid);
        }
        let skew_ms = unix_ms(now).abs_diff(self.timestamp_unix_ms);
        if u128::from(skew_ms) > super::MAX_CLOCK_SKEW.as_millis() {
            return Err(PairingError::ClockSkew { skew_ms });
        }
        Ok(())
    }

    fn message(request_id: &str, timestamp_unix_ms: u64) -> Vec<u8> {
        let mut m = STATUS_TAG.to_vec();
        m.extend_from_slice(request_id.as_bytes());
        m.extend_from_slice(&timestamp_unix_ms.to_be_bytes());
        m
    }
}

/// The transcript hash `T`: SHA-256 over each field as a 4-byte big-endian length and its
/// bytes, in the order docs/pairing-protocol.md ("Transcript hash") gives.
pub fn transcript(
    code_id: &CodeId,
    ca_fingerprint: &str,
    start: &StartMessage,
    node_pake_message: &[u8],
) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let fields: [&[u8]; 9] = [
        PROTOCOL.as_bytes(),
        code_id.as_str().as_bytes(),
        ca_fingerprint.as_bytes(),
        &start.pake_message,
        node_pake_message,
        &start.signing_public_key,
        &start.agreement_public_key,
        &start.csr_der,
        start.device_name.as_str().as_bytes(),
    ];
    for field in fields {
        // Invariant: every field is bounded far below 4 GiB by its decoder.
        let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
        ctx.update(&len.to_be_bytes());
        ctx.update(field);
    }
    let mut t = [0u8; 32];
    t.copy_from_slice(ctx.finish().as_ref());
    t
}

/// `HMAC-SHA256(HKDF-SHA256(ikm = K, salt = T, info), T)`.
fn confirmation(k: &[u8], t: &[u8; 32], info: &'static [u8]) -> Result<[u8; 32], PairingError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, t).extract(k);
    let info = [info];
    let okm = prk.expand(&info, hmac::HMAC_SHA256).map_err(|_| PairingError::Random)?;
    let key = hmac::Key::from(okm);
    let mut out = [0u8; 32];
    out.copy_from_slice(hmac::sign(&key, t).as_ref());
    Ok(out)
}

fn finish_message(t: &[u8; 32]) -> Vec<u8> {
    let mut m = FINISH_TAG.to_vec();
    m.extend_from_slice(t);
    m
}

fn equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

enum DeviceState {
    AwaitingReply(Box<Spake2<Ed25519Group>>),
    Finished,
    Failed,
}

/// The joining device's side of the handshake.
pub struct DevicePairing {
    state: DeviceState,
    start: StartMessage,
    ca_fingerprint: String,
}

impl fmt::Debug for DevicePairing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            DeviceState::AwaitingReply(_) => "awaiting-reply",
            DeviceState::Finished => "finished",
            DeviceState::Failed => "failed",
        };
        f.debug_struct("DevicePairing").field("state", &state).field("code_id", &self.start.code_id).finish()
    }
}

impl DevicePairing {
    /// Starts the handshake for `identity` with the code and PIN, against a node whose CA
    /// fingerprint the device has already checked (step 1), sending `csr_pem` (the device's
    /// TLS key). Returns the machine and the StartPairing message.
    pub fn start(
        identity: &DeviceIdentity,
        code_id: CodeId,
        pin: &(impl PakePassword + ?Sized),
        ca_fingerprint: &str,
        device_name: DeviceName,
        csr_pem: &str,
    ) -> Result<(Self, StartMessage), PairingError> {
        if !is_fingerprint(ca_fingerprint) {
            return Err(PairingError::invalid("ca_fingerprint", "not a lowercase hex SHA-256"));
        }
        let csr = Csr::parse_pem(csr_pem).map_err(|e| PairingError::invalid("csr_pem", e.to_string()))?;
        let (spake, pake_message) = Spake2::<Ed25519Group>::start_a(
            &Password::new(pin.pake_password()),
            &Identity::new(DEVICE_IDENTITY),
            &Identity::new(NODE_IDENTITY),
        );
        let start = StartMessage {
            code_id,
            device_name,
            signing_public_key: identity.signing_public_key(),
            agreement_public_key: identity.agreement_public_key(),
            csr_pem: csr_pem.to_owned(),
            csr_der: csr.der().to_vec(),
            pake_message,
        };
        let machine = DevicePairing {
            state: DeviceState::AwaitingReply(Box::new(spake)),
            start: start.clone(),
            ca_fingerprint: ca_fingerprint.to_owned(),
        };
        Ok((machine, start))
    }

    /// Handles the node's StartReply: finishes SPAKE2, checks the node's confirmation in
    /// constant time ([`PairingError::ServerProofInvalid`]: wrong PIN or impostor node) and
    /// returns the FinishPairing message. Any second call is refused.
    pub fn handle_reply(
        &mut self,
        identity: &DeviceIdentity,
        reply: &StartReply,
        now: SystemTime,
    ) -> Result<FinishMessage, PairingError> {
        let state = std::mem::replace(&mut self.state, DeviceState::Failed);
        let DeviceState::AwaitingReply(spake) = state else {
            self.state = state;
            return Err(PairingError::UnexpectedMessage("a StartPairing reply after the handshake ended"));
        };
        if now >= reply.expires_at {
            return Err(PairingError::SessionExpired);
        }
        let k = zeroize::Zeroizing::new(
            spake.finish(&reply.pake_message).map_err(|_| PairingError::ServerProofInvalid)?,
        );
        let t = transcript(&self.start.code_id, &self.ca_fingerprint, &self.start, &reply.pake_message);
        let expected = confirmation(&k, &t, NODE_CONFIRM_INFO)?;
        if !equal(&expected, &reply.server_confirmation) {
            return Err(PairingError::ServerProofInvalid);
        }
        let client_confirmation = confirmation(&k, &t, DEVICE_CONFIRM_INFO)?;
        let signature = identity.sign(&finish_message(&t));
        self.state = DeviceState::Finished;
        Ok(FinishMessage { session_id: reply.session_id.clone(), client_confirmation, signature })
    }
}

/// What the node knows once a handshake verified: everything a PairingRequest needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPairing {
    /// The code used.
    pub code_id: CodeId,
    /// The device's name.
    pub device_name: DeviceName,
    /// Its signing key.
    pub signing_public_key: [u8; 32],
    /// Its agreement key.
    pub agreement_public_key: [u8; 32],
    /// Its CSR (PEM).
    pub csr_pem: String,
    /// The role from the code.
    pub role: Role,
}

impl VerifiedPairing {
    /// Lowercase hex SHA-256 of the signing key.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.signing_public_key)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NodeState {
    AwaitingFinish,
    Finished,
    Failed,
}

/// The node's side of one handshake session.
/// Its durable form (sealed, versioned) is [`super::session`].
pub struct NodeSession {
    pub(super) state: NodeState,
    pub(super) session_id: String,
    pub(super) start: StartMessage,
    pub(super) role: Role,
    pub(super) transcript: [u8; 32],
    pub(super) expected_client_confirmation: zeroize::Zeroizing<[u8; 32]>,
    pub(super) expires_at: SystemTime,
}

impl fmt::Debug for NodeSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeSession")
            .field("state", &self.state)
            .field("session_id", &self.session_id)
            .field("code_id", &self.start.code_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl NodeSession {
    /// Answers a StartPairing for `code` (whose attempt the caller has already taken with
    /// [`PairingCode::take_attempt`]) and its opened `pin`: runs SPAKE2 side B, computes `T`
    /// and the node's confirmation. The session lives [`SESSION_TTL`].
    pub fn start(
        code: &PairingCode,
        pin: &(impl PakePassword + ?Sized),
        ca_fingerprint: &str,
        start: StartMessage,
        now: SystemTime,
    ) -> Result<(Self, StartReply), PairingError> {
        if start.code_id != code.code_id || code.state != super::CodeState::Active {
            return Err(PairingError::CodeInvalid);
        }
        if now >= code.expires_at {
            return Err(PairingError::CodeExpired);
        }
        let (spake, pake_message) = Spake2::<Ed25519Group>::start_b(
            &Password::new(pin.pake_password()),
            &Identity::new(DEVICE_IDENTITY),
            &Identity::new(NODE_IDENTITY),
        );
        // A malformed device element means no shared key: answer with a random confirmation
        // so the failure shows at FinishPairing like any wrong PIN.
        let k = zeroize::Zeroizing::new(match spake.finish(&start.pake_message) {
            Ok(k) => k,
            Err(_) => random_bytes::<32>()?.to_vec(),
        });
        let t = transcript(&start.code_id, ca_fingerprint, &start, &pake_message);
        let server_confirmation = confirmation(&k, &t, NODE_CONFIRM_INFO)?;
        let expected = zeroize::Zeroizing::new(confirmation(&k, &t, DEVICE_CONFIRM_INFO)?);
        let session_id = hex::encode(random_bytes::<16>()?);
        let expires_at = now + SESSION_TTL;
        let reply =
            StartReply { session_id: session_id.clone(), pake_message, server_confirmation, expires_at };
        let session = NodeSession {
            state: NodeState::AwaitingFinish,
            session_id,
            start,
            role: code.role,
            transcript: t,
            expected_client_confirmation: expected,
            expires_at,
        };
        Ok((session, reply))
    }

    /// The session's id.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The code it runs under.
    pub fn code_id(&self) -> &CodeId {
        &self.start.code_id
    }

    /// When it expires.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// Whether it is past its lifetime at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.expires_at
    }

    /// Handles FinishPairing: checks the client confirmation (constant time) and the Ed25519
    /// signature over `T`. A failure ends the session; so does success. Any later message is
    /// refused.
    pub fn handle_finish(
        &mut self,
        finish: &FinishMessage,
        now: SystemTime,
    ) -> Result<VerifiedPairing, PairingError> {
        if self.state != NodeState::AwaitingFinish {
            return Err(PairingError::UnexpectedMessage("FinishPairing on an ended session"));
        }
        self.state = NodeState::Failed;
        if now >= self.expires_at || !equal(finish.session_id.as_bytes(), self.session_id.as_bytes()) {
            return Err(PairingError::SessionExpired);
        }
        let confirmed = equal(&finish.client_confirmation, self.expected_client_confirmation.as_ref());
        let signed = verify_signature(
            &self.start.signing_public_key,
            &finish_message(&self.transcript),
            &finish.signature,
        );
        if !(confirmed & signed) {
            return Err(PairingError::ProofInvalid);
        }
        self.state = NodeState::Finished;
        Ok(VerifiedPairing {
            code_id: self.start.code_id.clone(),
            device_name: self.start.device_name.clone(),
            signing_public_key: self.start.signing_public_key,
            agreement_public_key: self.start.agreement_public_key,
            csr_pem: self.start.csr_pem.clone(),
            role: self.role,
        })
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], PairingError> {
    let mut out = [0u8; N];
    SystemRandom::new().fill(&mut out).map_err(|_| PairingError::Random)?;
    Ok(out)
}

/// How long after `now` a code made with `ttl` expires, with the TTL checked.
pub fn code_expiry(now: SystemTime, ttl: Duration) -> Result<SystemTime, PairingError> {
    if ttl < super::MIN_CODE_TTL || ttl > super::MAX_CODE_TTL {
        return Err(PairingError::invalid("ttl_seconds", "a code lives 30 to 86,400 seconds"));
    }
    Ok(now + ttl)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use crate::identity::ca::generate_tls_key_and_csr;
    use crate::pairing::{CodeState, Pin};

    const CA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn t0() -> SystemTime {
        std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    struct Setup {
        identity: DeviceIdentity,
        code: PairingCode,
        pin: Pin,
        csr_pem: String,
    }

    fn setup() -> Setup {
        let identity = DeviceIdentity::generate().unwrap();
        let (_key, csr_pem) = generate_tls_key_and_csr(identity.id()).unwrap();
        let code = PairingCode {
            code_id: CodeId::generate().unwrap(),
            sealed_pin: Some(vec![0]),
            role: Role::Device,
            created_at: t0(),
            expires_at: t0() + Duration::from_secs(600),
            max_attempts: 5,
            attempts_left: 5,
            state: CodeState::Active,
        };
        Setup { identity, code, pin: Pin::parse("482913").unwrap(), csr_pem }
    }

    fn device_start(s: &Setup, pin: &str) -> (DevicePairing, StartMessage) {
        DevicePairing::start(
            &s.identity,
            s.code.code_id.clone(),
            &Pin::parse(pin).unwrap(),
            CA,
            DeviceName::parse("phone").unwrap(),
            &s.csr_pem,
        )
        .unwrap()
    }

    /// What crosses the wire, decoded again as the node would.
    fn over_the_wire(m: &StartMessage) -> StartMessage {
        StartMessage::decode(
            m.code_id.as_str(),
            m.device_name.as_str(),
            &m.signing_public_key,
            &m.agreement_public_key,
            &m.csr_pem,
            &m.pake_message,
        )
        .unwrap()
    }

    #[test]
    fn happy_path() {
        let mut s = setup();
        let (mut device, start) = device_start(&s, "482913");
        s.code.take_attempt(t0()).unwrap();
        let (mut node, reply) = NodeSession::start(&s.code, &s.pin, CA, over_the_wire(&start), t0()).unwrap();
        assert_eq!(s.code.attempts_left, 4);
        let finish = device.handle_reply(&s.identity, &reply, t0()).unwrap();
        let wire = FinishMessage::decode(&finish.session_id, &finish.client_confirmation, &finish.signature)
            .unwrap();
        let verified = node.handle_finish(&wire, t0() + Duration::from_secs(1)).unwrap();
        assert_eq!(verified.signing_public_key, s.identity.signing_public_key());
        assert_eq!(verified.fingerprint(), s.identity.fingerprint());
        assert_eq!(verified.device_name.as_str(), "phone");
        assert_eq!(verified.role, Role::Device);
        assert_eq!(verified.csr_pem, s.csr_pem);
        // Replays are refused on both sides.
        assert!(matches!(
            device.handle_reply(&s.identity, &reply, t0()),
            Err(PairingError::UnexpectedMessage(_))
        ));
        assert!(matches!(node.handle_finish(&wire, t0()), Err(PairingError::UnexpectedMessage(_))));
        assert!(!format!("{node:?}{reply:?}{finish:?}").contains(&hex::encode(reply.server_confirmation)));
    }

    #[test]
    fn a_wrong_pin_is_caught_by_the_device_and_costs_the_node_an_attempt() {
        let mut s = setup();
        let (mut device, start) = device_start(&s, "111112");
        s.code.take_attempt(t0()).unwrap();
        let (mut node, reply) = NodeSession::start(&s.code, &s.pin, CA, start.clone(), t0()).unwrap();
        assert_eq!(s.code.attempts_left, 4);
        assert_eq!(device.handle_reply(&s.identity, &reply, t0()), Err(PairingError::ServerProofInvalid));
        assert!(PairingError::ServerProofInvalid.to_string().contains("wrong PIN or impostor node"));
        // A device that presses on anyway (an attacker guessing) fails at the node.
        let forged = FinishMessage {
            session_id: reply.session_id.clone(),
            client_confirmation: [0; 32],
            signature: s.identity.sign(b"anything"),
        };
        assert_eq!(node.handle_finish(&forged, t0()), Err(PairingError::ProofInvalid));
        assert!(!s.code.after_failure());
    }

    #[test]
    fn five_wrong_pins_burn_the_code() {
        let mut s = setup();
        for i in 0..5 {
            let (_, start) = device_start(&s, "222223");
            s.code.take_attempt(t0()).unwrap();
            let (mut node, reply) = NodeSession::start(&s.code, &s.pin, CA, start, t0()).unwrap();
            let bad = FinishMessage {
                session_id: reply.session_id,
                client_confirmation: [1; 32],
                signature: [0; 64],
            };
            assert_eq!(node.handle_finish(&bad, t0()), Err(PairingError::ProofInvalid));
            assert_eq!(s.code.after_failure(), i == 4);
        }
        assert_eq!(s.code.take_attempt(t0()), Err(PairingError::AttemptsExhausted));
    }

    /// A man in the middle who knows nothing of the PIN changes one field of StartPairing;
    /// the two transcripts differ, so the device refuses the node's confirmation, and a
    /// FinishPairing computed over the device's transcript does not verify at the node.
    #[test]
    fn a_transcript_field_changed_in_flight_is_detected() {
        let other = DeviceIdentity::generate().unwrap();
        let (_, other_csr) = generate_tls_key_and_csr(other.id()).unwrap();
        type Tamper<'a> = Box<dyn Fn(&mut StartMessage) + 'a>;
        let tamper: [(&str, Tamper<'_>); 4] = [
            ("device name", Box::new(|m| m.device_name = DeviceName::parse("evil").unwrap())),
            ("signing key", Box::new(|m| m.signing_public_key = other.signing_public_key())),
            ("agreement key", Box::new(|m| m.agreement_public_key = other.agreement_public_key())),
            (
                "csr",
                Box::new(|m| {
                    m.csr_pem = other_csr.clone();
                    m.csr_der = Csr::parse_pem(&other_csr).unwrap().der().to_vec();
                }),
            ),
        ];
        for (what, change) in &tamper {
            let mut s = setup();
            let (mut device, start) = device_start(&s, "482913");
            let mut altered = start.clone();
            change(&mut altered);
            s.code.take_attempt(t0()).unwrap();
            let (mut node, reply) = NodeSession::start(&s.code, &s.pin, CA, altered, t0()).unwrap();
            assert_eq!(
                device.handle_reply(&s.identity, &reply, t0()),
                Err(PairingError::ServerProofInvalid),
                "{what}"
            );
            // Even with the node's confirmation passed through, the finish does not verify.
            let forged = FinishMessage {
                session_id: reply.session_id,
                client_confirmation: [0; 32],
                signature: [0; 64],
            };
            assert_eq!(node.handle_finish(&forged, t0()), Err(PairingError::ProofInvalid), "{what}");
        }
        // The CA fingerprint: a device that expects another CA (an impostor node).
        let mut s = setup();
        let (mut device, start) = device_start(&s, "482913");
        s.code.take_attempt(t0()).unwrap();
        let other_ca = "f".repeat(64);
        let (_, reply) = NodeSession::start(&s.code, &s.pin, &other_ca, start, t0()).unwrap();
        assert_eq!(device.handle_reply(&s.identity, &reply, t0()), Err(PairingError::ServerProofInvalid));
    }

    #[test]
    fn a_finish_that_does_not_match_the_node_transcript_fails() {
        // The device's finish is honest, but the node saw another device name: its T differs.
        let mut s = setup();
        let (mut device, start) = device_start(&s, "482913");
        s.code.take_attempt(t0()).unwrap();
        let (_, reply) = NodeSession::start(&s.code, &s.pin, CA, start.clone(), t0()).unwrap();
        let finish = device.handle_reply(&s.identity, &reply, t0()).unwrap();
        let mut altered = start;
        altered.device_name = DeviceName::parse("evil").unwrap();
        let (mut node2, reply2) = NodeSession::start(&s.code, &s.pin, CA, altered, t0()).unwrap();
        let moved = FinishMessage { session_id: reply2.session_id, ..finish };
        assert_eq!(node2.handle_finish(&moved, t0()), Err(PairingError::ProofInvalid));
    }

    #[test]
    fn expired_codes_and_sessions_and_out_of_order_messages() {
        let mut s = setup();
        let (mut device, start) = device_start(&s, "482913");
        let late = s.code.expires_at;
        assert_eq!(s.code.clone().take_attempt(late), Err(PairingError::CodeExpired));
        assert_eq!(
            NodeSession::start(&s.code, &s.pin, CA, start.clone(), late).err(),
            Some(PairingError::CodeExpired)
        );
        s.code.take_attempt(t0()).unwrap();
        let (mut node, reply) = NodeSession::start(&s.code, &s.pin, CA, start.clone(), t0()).unwrap();
        assert_eq!(reply.expires_at, t0() + SESSION_TTL);
        // The device refuses a reply whose session is already over.
        assert_eq!(
            device.handle_reply(&s.identity, &reply, reply.expires_at),
            Err(PairingError::SessionExpired)
        );
        // A finish after the session's lifetime is refused and ends the session.
        let (mut d2, start2) = device_start(&s, "482913");
        let (mut n2, reply2) = NodeSession::start(&s.code, &s.pin, CA, start2, t0()).unwrap();
        let finish2 = d2.handle_reply(&s.identity, &reply2, t0()).unwrap();
        assert_eq!(n2.handle_finish(&finish2, t0() + SESSION_TTL), Err(PairingError::SessionExpired));
        assert!(matches!(n2.handle_finish(&finish2, t0()), Err(PairingError::UnexpectedMessage(_))));
        // A finish for another session is refused.
        let wrong =
            FinishMessage { session_id: "00".into(), client_confirmation: [0; 32], signature: [0; 64] };
        assert_eq!(node.handle_finish(&wrong, t0()), Err(PairingError::SessionExpired));
        // A code that was used, or a message for another code, cannot start a session.
        let mut used = s.code.clone();
        used.consume();
        assert_eq!(
            NodeSession::start(&used, &s.pin, CA, start.clone(), t0()).err(),
            Some(PairingError::CodeInvalid)
        );
        let mut other_code = start;
        other_code.code_id = CodeId::parse("0000000000").unwrap();
        assert_eq!(
            NodeSession::start(&s.code, &s.pin, CA, other_code, t0()).err(),
            Some(PairingError::CodeInvalid)
        );
    }

    #[test]
    fn status_polls_are_signed_and_fresh() {
        let s = setup();
        let id = ulid::Ulid::generate().to_string();
        let poll = StatusPoll::sign(&s.identity, &id, t0());
        let wire = StatusPoll::decode(&poll.request_id, poll.timestamp_unix_ms, &poll.signature).unwrap();
        let key = s.identity.signing_public_key();
        wire.verify(&key, t0() + Duration::from_secs(59)).unwrap();
        assert!(matches!(
            wire.verify(&key, t0() + Duration::from_secs(61)),
            Err(PairingError::ClockSkew { .. })
        ));
        assert!(matches!(
            wire.verify(&key, t0() - Duration::from_secs(61)),
            Err(PairingError::ClockSkew { .. })
        ));
        let other = DeviceIdentity::generate().unwrap();
        assert_eq!(wire.verify(&other.signing_public_key(), t0()), Err(PairingError::ProofInvalid));
        let moved = StatusPoll { timestamp_unix_ms: poll.timestamp_unix_ms + 1, ..poll.clone() };
        assert_eq!(moved.verify(&key, t0()), Err(PairingError::ProofInvalid));
        assert!(StatusPoll::decode("", 0, &[0; 64]).is_err());
        assert!(StatusPoll::decode(&id, 0, &[0; 63]).is_err());
    }

    #[test]
    fn decoders_are_bounded_and_say_which_field() {
        let s = setup();
        let (_, m) = device_start(&s, "482913");
        let field = |r: Result<StartMessage, PairingError>| match r {
            Err(PairingError::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let (c, n, sk, ak, csr, p) = (
            m.code_id.as_str(),
            m.device_name.as_str(),
            &m.signing_public_key[..],
            &m.agreement_public_key[..],
            m.csr_pem.as_str(),
            &m.pake_message[..],
        );
        assert_eq!(field(StartMessage::decode("x", n, sk, ak, csr, p)), "code_id");
        assert_eq!(field(StartMessage::decode(c, "", sk, ak, csr, p)), "device_name");
        assert_eq!(field(StartMessage::decode(c, &"n".repeat(65), sk, ak, csr, p)), "device_name");
        assert_eq!(field(StartMessage::decode(c, "a\nb", sk, ak, csr, p)), "device_name");
        assert_eq!(field(StartMessage::decode(c, n, &sk[1..], ak, csr, p)), "signing_public_key");
        assert_eq!(field(StartMessage::decode(c, n, sk, &[], csr, p)), "agreement_public_key");
        assert_eq!(field(StartMessage::decode(c, n, sk, ak, "junk", p)), "csr_pem");
        assert_eq!(field(StartMessage::decode(c, n, sk, ak, &"A".repeat(20_000), p)), "csr_pem");
        assert_eq!(field(StartMessage::decode(c, n, sk, ak, csr, &p[1..])), "pake_message");
        assert!(StartMessage::decode(c, &"é".repeat(64), sk, ak, csr, p).is_ok());
        assert!(StartReply::decode("", p, &[0; 32], t0()).is_err());
        assert!(StartReply::decode("ab", p, &[0; 31], t0()).is_err());
        assert_eq!(FinishMessage::decode("", &[0; 32], &[0; 64]).err(), Some(PairingError::SessionExpired));
        assert!(FinishMessage::decode("ab", &[0; 32], &[0; 65]).is_err());
        // Arbitrary bytes never panic.
        for len in [0, 1, 32, 33, 64, 100] {
            let junk = vec![0xAB; len];
            let text = String::from_utf8_lossy(&junk).into_owned();
            let _ = StartMessage::decode(&text, &text, &junk, &junk, &text, &junk);
            let _ = StartReply::decode(&text, &junk, &junk, t0());
            let _ = FinishMessage::decode(&text, &junk, &junk);
            let _ = StatusPoll::decode(&text, u64::MAX, &junk);
        }
    }

    /// A garbage SPAKE2 element from the device does not crash the node; the handshake just
    /// fails like a wrong PIN.
    #[test]
    fn a_bad_pake_element_fails_like_a_wrong_pin() {
        let mut s = setup();
        let (_, mut start) = device_start(&s, "482913");
        start.pake_message = vec![0x41; PAKE_MESSAGE_LEN];
        s.code.take_attempt(t0()).unwrap();
        let (mut node, reply) = NodeSession::start(&s.code, &s.pin, CA, start, t0()).unwrap();
        let f =
            FinishMessage { session_id: reply.session_id, client_confirmation: [0; 32], signature: [0; 64] };
        assert_eq!(node.handle_finish(&f, t0()), Err(PairingError::ProofInvalid));
    }
}
