//! The SPAKE2 pairing handshake (`src/pairing/handshake.rs`, docs/pairing-protocol.md), both sans-IO
//! machines driven by one structured input: which PIN and CA the device believes in, the
//! code's state, edits a man in the middle makes to each message's wire fields, whether the
//! node's session goes through its sealed storage form (`src/pairing/session.rs`) between the
//! two steps, the clocks, forged finishes and replays.
//!
//! The oracle: the device accepts the node's reply exactly when both sides used the same PIN,
//! the device expected this CA, no transcript field was altered and the reply is in time; the
//! node accepts a finish exactly when the device accepted and the finish arrives unaltered, in
//! time, for its session. A verified pairing carries what the device sent. Every second
//! message to either machine is refused.

#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use palyra::identity::ca::{Csr, generate_tls_key_and_csr};
use palyra::identity::{DeviceIdentity, Role};
use palyra::pairing::{
    CodeId, CodeState, DeviceName, DevicePairing, FinishMessage, NodeSession, PairingCode, PairingError, Pin,
    StartMessage, StartReply, StatusPoll, open_session, seal_session,
};
use palyra::unix_time::unix_ms;
use palyra_fuzz::{
    PAIRING_CA as CA, PAIRING_CODE_ID as CODE_ID, PAIRING_PIN as NODE_PIN, SESSION_SEAL_KEY, now,
};
use ring::aead;

const OTHER_CA: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
const SESSION_TTL_MS: u64 = 120_000;

struct Fixture {
    identity: DeviceIdentity,
    csr_pem: String,
    other_csr_pem: String,
    seal_key: aead::LessSafeKey,
}

// libFuzzer runs the target on one thread; the fixture is made once per process.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(&[0x01; 16]);
        bytes.extend_from_slice(&[0x42; 32]);
        bytes.extend_from_slice(&[0x24; 32]);
        let identity = DeviceIdentity::from_bytes(&bytes).expect("a device identity");
        let (_, csr_pem) = generate_tls_key_and_csr(identity.id()).expect("a CSR");
        let (_, other_csr_pem) = generate_tls_key_and_csr(identity.id()).expect("a CSR");
        let seal_key = aead::LessSafeKey::new(
            aead::UnboundKey::new(&aead::AES_256_GCM, &SESSION_SEAL_KEY).expect("a 32-byte key"),
        );
        Fixture { identity, csr_pem, other_csr_pem, seal_key }
    })
}

#[derive(Arbitrary, Debug)]
enum StartEdit {
    CodeId(String),
    LowerCaseCodeId,
    Name(String),
    SigningKey(Vec<u8>),
    FlipSigningKey(u8, u8),
    AgreementKey(Vec<u8>),
    FlipAgreementKey(u8, u8),
    OtherCsr,
    CsrText(String),
    CsrCrLf,
    Pake(Vec<u8>),
    FlipPake(u8, u8),
}

#[derive(Arbitrary, Debug)]
enum ReplyEdit {
    SessionId(String),
    Pake(Vec<u8>),
    FlipPake(u8, u8),
    Confirmation(Vec<u8>),
    FlipConfirmation(u8, u8),
    ExpiresAtMs(u32),
}

#[derive(Arbitrary, Debug)]
enum FinishEdit {
    SessionId(String),
    Confirmation(Vec<u8>),
    FlipConfirmation(u8, u8),
    Signature(Vec<u8>),
    FlipSignature(u8, u8),
}

#[derive(Arbitrary, Debug)]
enum Storage {
    Sealed { peer_address: String },
    FlipSealed { at: u16, mask: u8 },
    OpenedAsOtherSession(String),
}

#[derive(Arbitrary, Debug)]
struct Run {
    device_pin: Option<u32>,
    device_expects_other_ca: bool,
    node_role: bool,
    code_state: u8,
    attempts_left: u8,
    start_edits: Vec<StartEdit>,
    storage: Option<Storage>,
    reply_edits: Vec<ReplyEdit>,
    reply_after_ms: u32,
    finish_edits: Vec<FinishEdit>,
    finish_after_ms: u32,
    forged_confirmation: Vec<u8>,
    forged_signature: Vec<u8>,
    poll_after_ms: u32,
}

fn flip(bytes: &mut [u8], at: u8, mask: u8) {
    if !bytes.is_empty() {
        let at = usize::from(at) % bytes.len();
        bytes[at] ^= mask;
    }
}

fn later(ms: u32) -> SystemTime {
    // Half the range falls inside the session's lifetime, half after it.
    now() + Duration::from_millis(u64::from(ms) % (2 * SESSION_TTL_MS))
}

/// The wire fields of StartPairing.
struct StartWire {
    code_id: String,
    name: String,
    signing: Vec<u8>,
    agreement: Vec<u8>,
    csr_pem: String,
    pake: Vec<u8>,
}

fn edit_start(m: &StartMessage, edits: &[StartEdit], f: &Fixture) -> StartWire {
    let mut w = StartWire {
        code_id: m.code_id.as_str().to_owned(),
        name: m.device_name.as_str().to_owned(),
        signing: m.signing_public_key.to_vec(),
        agreement: m.agreement_public_key.to_vec(),
        csr_pem: m.csr_pem.clone(),
        pake: m.pake_message.clone(),
    };
    for edit in edits {
        match edit {
            StartEdit::CodeId(s) => w.code_id = s.clone(),
            StartEdit::LowerCaseCodeId => w.code_id = w.code_id.to_lowercase(),
            StartEdit::Name(s) => w.name = s.clone(),
            StartEdit::SigningKey(b) => w.signing = b.clone(),
            StartEdit::FlipSigningKey(at, mask) => flip(&mut w.signing, *at, *mask),
            StartEdit::AgreementKey(b) => w.agreement = b.clone(),
            StartEdit::FlipAgreementKey(at, mask) => flip(&mut w.agreement, *at, *mask),
            StartEdit::OtherCsr => w.csr_pem = f.other_csr_pem.clone(),
            StartEdit::CsrText(s) => w.csr_pem = s.clone(),
            StartEdit::CsrCrLf => w.csr_pem = w.csr_pem.replace('\n', "\r\n"),
            StartEdit::Pake(b) => w.pake = b.clone(),
            StartEdit::FlipPake(at, mask) => flip(&mut w.pake, *at, *mask),
        }
    }
    w
}

/// Whether the node's view of StartPairing differs from the device's in a transcript field.
fn transcript_differs(device: &StartMessage, node: &StartMessage) -> bool {
    device.code_id != node.code_id
        || device.device_name != node.device_name
        || device.signing_public_key != node.signing_public_key
        || device.agreement_public_key != node.agreement_public_key
        || device.csr_der != node.csr_der
        || device.pake_message != node.pake_message
}

fn code(run: &Run) -> PairingCode {
    let state = match run.code_state % 8 {
        1 => CodeState::Used,
        2 => CodeState::Burned,
        3 => CodeState::Expired,
        _ => CodeState::Active,
    };
    PairingCode {
        code_id: CodeId::parse(CODE_ID).expect("a code id"),
        sealed_pin: Some(vec![0; 34]),
        role: if run.node_role { Role::Node } else { Role::Device },
        created_at: now(),
        expires_at: now() + Duration::from_secs(600),
        max_attempts: 10,
        attempts_left: u32::from(run.attempts_left % 11),
        state,
    }
}

/// The node's session after StartPairing, possibly through its sealed stored form. `None`
/// when storage refused (as it must for a tampered or misplaced state).
fn through_storage(f: &Fixture, node: NodeSession, storage: &Option<Storage>) -> Option<NodeSession> {
    let Some(storage) = storage else { return Some(node) };
    let peer = match storage {
        Storage::Sealed { peer_address } => peer_address.as_str(),
        _ => "127.0.0.1:5000",
    };
    let sealed = match seal_session(&f.seal_key, &node, peer) {
        Ok(sealed) => sealed,
        Err(_) => {
            assert!(peer.len() > 256, "a session awaiting finish seals unless the peer address is too long");
            return None;
        }
    };
    match storage {
        Storage::Sealed { .. } => {
            let (opened, peer_again) =
                open_session(&f.seal_key, node.session_id(), &sealed).expect("a sealed session opens");
            assert_eq!(peer_again, peer);
            assert_eq!(opened.session_id(), node.session_id());
            assert_eq!(opened.code_id(), node.code_id());
            assert_eq!(unix_ms(opened.expires_at()), unix_ms(node.expires_at()));
            Some(opened)
        }
        Storage::FlipSealed { at, mask } => {
            let mut bad = sealed.clone();
            let at = usize::from(*at) % bad.len();
            bad[at] ^= mask;
            let opened = open_session(&f.seal_key, node.session_id(), &bad);
            assert_eq!(opened.is_ok(), *mask == 0, "an altered sealed session must not open");
            opened.ok().map(|(s, _)| s)
        }
        Storage::OpenedAsOtherSession(id) => {
            let opened = open_session(&f.seal_key, id, &sealed);
            assert_eq!(opened.is_ok(), id == node.session_id(), "a session opened under another id");
            opened.ok().map(|(s, _)| s)
        }
    }
}

fuzz_target!(|run: Run| {
    let f = fixture();
    let t0 = now();
    let device_pin = run.device_pin.map_or_else(|| NODE_PIN.to_owned(), |n| format!("{:06}", n % 1_000_000));
    let same_pin = device_pin == NODE_PIN;
    let device_ca = if run.device_expects_other_ca { OTHER_CA } else { CA };
    let code_id = CodeId::parse(CODE_ID).expect("a code id");

    // Step 2, device side.
    let (mut device, start) = DevicePairing::start(
        &f.identity,
        code_id.clone(),
        &Pin::parse(&device_pin).expect("six digits"),
        device_ca,
        DeviceName::parse("phone").expect("a name"),
        &f.csr_pem,
    )
    .expect("the device starts");

    // In flight, then the node's decoder.
    let w = edit_start(&start, &run.start_edits, f);
    let Ok(received) =
        StartMessage::decode(&w.code_id, &w.name, &w.signing, &w.agreement, &w.csr_pem, &w.pake)
    else {
        return;
    };
    let start_altered = transcript_differs(&start, &received);

    // Step 2, node side: an attempt is spent first, as the service does.
    let mut code = code(&run);
    let was_usable = code.state == CodeState::Active && code.attempts_left > 0;
    if code.take_attempt(t0).is_err() {
        assert!(!was_usable, "an active code with attempts left refused an attempt");
        return;
    }
    let node_pin = Pin::parse(NODE_PIN).expect("six digits");
    let (node, reply) = match NodeSession::start(&code, &node_pin, CA, received.clone(), t0) {
        Ok(started) => started,
        Err(e) => {
            assert_eq!(e, PairingError::CodeInvalid);
            assert_ne!(received.code_id, code.code_id);
            return;
        }
    };
    assert_eq!(received.code_id, code.code_id);
    assert!(!format!("{node:?}{reply:?}").contains(&hex_of(&reply.server_confirmation)));
    let node_session_id = reply.session_id.clone();
    let Some(mut node) = through_storage(f, node, &run.storage) else { return };

    // The reply in flight, then the device's decoder and machine.
    let mut r = (
        reply.session_id.clone(),
        reply.pake_message.clone(),
        reply.server_confirmation.to_vec(),
        reply.expires_at,
    );
    for edit in &run.reply_edits {
        match edit {
            ReplyEdit::SessionId(s) => r.0 = s.clone(),
            ReplyEdit::Pake(b) => r.1 = b.clone(),
            ReplyEdit::FlipPake(at, mask) => flip(&mut r.1, *at, *mask),
            ReplyEdit::Confirmation(b) => r.2 = b.clone(),
            ReplyEdit::FlipConfirmation(at, mask) => flip(&mut r.2, *at, *mask),
            ReplyEdit::ExpiresAtMs(ms) => r.3 = t0 + Duration::from_millis(u64::from(*ms)),
        }
    }
    let reply_at = later(run.reply_after_ms);
    let device_result = match StartReply::decode(&r.0, &r.1, &r.2, r.3) {
        Ok(received_reply) => {
            let reply_altered = received_reply.pake_message != reply.pake_message
                || received_reply.server_confirmation != reply.server_confirmation;
            let result = device.handle_reply(&f.identity, &received_reply, reply_at);
            let expected = same_pin
                && !run.device_expects_other_ca
                && !start_altered
                && !reply_altered
                && reply_at < received_reply.expires_at;
            assert_eq!(
                result.is_ok(),
                expected,
                "device: {result:?} (same pin {same_pin}, start altered {start_altered}, reply altered {reply_altered})"
            );
            // A second reply is refused, whatever became of the first.
            assert!(matches!(
                device.handle_reply(&f.identity, &received_reply, reply_at),
                Err(PairingError::UnexpectedMessage(_))
            ));
            Some(result)
        }
        Err(_) => None,
    };

    let finish_at = later(run.finish_after_ms);
    let in_time = finish_at < t0 + Duration::from_millis(SESSION_TTL_MS);
    match device_result {
        Some(Ok(finish)) => {
            let mut m =
                (finish.session_id.clone(), finish.client_confirmation.to_vec(), finish.signature.to_vec());
            for edit in &run.finish_edits {
                match edit {
                    FinishEdit::SessionId(s) => m.0 = s.clone(),
                    FinishEdit::Confirmation(b) => m.1 = b.clone(),
                    FinishEdit::FlipConfirmation(at, mask) => flip(&mut m.1, *at, *mask),
                    FinishEdit::Signature(b) => m.2 = b.clone(),
                    FinishEdit::FlipSignature(at, mask) => flip(&mut m.2, *at, *mask),
                }
            }
            let Ok(received_finish) = FinishMessage::decode(&m.0, &m.1, &m.2) else { return };
            let unaltered = received_finish.session_id == node_session_id
                && received_finish.client_confirmation == finish.client_confirmation
                && received_finish.signature == finish.signature;
            let result = node.handle_finish(&received_finish, finish_at);
            assert_eq!(result.is_ok(), unaltered && in_time, "node: {result:?} (unaltered {unaltered})");
            if let Ok(verified) = result {
                assert_eq!(verified.code_id, start.code_id);
                assert_eq!(verified.device_name, start.device_name);
                assert_eq!(verified.signing_public_key, f.identity.signing_public_key());
                assert_eq!(verified.agreement_public_key, f.identity.agreement_public_key());
                assert_eq!(Csr::parse_pem(&verified.csr_pem).expect("a CSR").der(), &start.csr_der[..]);
                assert_eq!(verified.role, code.role);
                assert_eq!(verified.fingerprint(), f.identity.fingerprint());
                // The paired device's status polls verify with the key the node learned.
                let poll_at = later(run.poll_after_ms);
                let poll = StatusPoll::sign(&f.identity, "01J9ZQ8X7C6V5B4N3M2K1J0H9G", poll_at);
                let skew = unix_ms(poll_at).abs_diff(unix_ms(t0));
                assert_eq!(poll.verify(&verified.signing_public_key, t0).is_ok(), skew <= 60_000);
            }
            assert!(matches!(
                node.handle_finish(&received_finish, finish_at),
                Err(PairingError::UnexpectedMessage(_))
            ));
        }
        _ => {
            // No honest finish exists: whatever an attacker sends for the session fails.
            let forged =
                FinishMessage::decode(&node_session_id, &run.forged_confirmation, &run.forged_signature);
            if let Ok(forged) = forged {
                let result = node.handle_finish(&forged, finish_at);
                assert!(
                    matches!(result, Err(PairingError::ProofInvalid | PairingError::SessionExpired)),
                    "a forged finish: {result:?}"
                );
            }
        }
    }
});

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
