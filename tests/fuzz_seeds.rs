//! The seed corpus of the fuzz targets (`fuzz/corpus/<target>/seed-*`): valid examples of every
//! input, made by the real code, so the fuzzers start from deep inside each parser.
//!
//! `cargo test --test integration fuzz_seeds:: -- --ignored` (re)writes them; keys, nonces and signatures are
//! fresh each time, the shapes are fixed. The test that always runs checks that the committed
//! seeds are still what they claim (an envelope opens, a CSR verifies, a URI parses, ...), so a
//! format change that would leave the fuzzers starting from junk fails here.
//!
//! Framing and fixtures are the fuzz crate's (`fuzz/src/lib.rs`): `u16 BE length ‖ bytes`
//! fields, the envelope root key and binding, the session seal key. Keep both in step.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use bytes::BytesMut;
use palyra::config::FileConfig;
use palyra::fuzzing::pairing_session_encode;
use palyra::identity::ca::{Csr, generate_tls_key_and_csr};
use palyra::identity::{DeviceCa, DeviceId, DeviceIdentity, Role, renewal_proof_message};
use palyra::pairing::{
    CodeId, CodeState, DeviceName, DevicePairing, EnrollmentSecret, EnrollmentToken, NodeSession,
    PairingCode, PairingUri, Pin, StatusPoll, seal_session,
};
use palyra::policy::{PolicyEngine, Severity};
use palyra::quic::{frame, pb};
use palyra::testkit::fuzz::{
    ENVELOPE_KEY, ENVELOPE_ROOT_KEY, ENVELOPE_SCOPE, ENVELOPE_VERSION, PAIRING_CA, PAIRING_CODE_ID,
    PAIRING_PIN, SESSION_SEAL_KEY, frame, now,
};
use palyra::vault::envelope;
use palyra::vault::{Binding, KeyHierarchy, RootKey, Scope, SecretKey};
use ring::aead;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

fn with_mode(mode: u8, rest: &[u8]) -> Vec<u8> {
    [&[mode][..], rest].concat()
}

fn identity() -> DeviceIdentity {
    let mut bytes = vec![1u8];
    bytes.extend_from_slice(&[0x11; 16]);
    bytes.extend_from_slice(&[0x22; 32]);
    bytes.extend_from_slice(&[0x44; 32]);
    DeviceIdentity::from_bytes(&bytes).unwrap()
}

fn envelope_keys() -> (KeyHierarchy, Scope, SecretKey) {
    (
        KeyHierarchy::new(&RootKey::from_bytes(ENVELOPE_ROOT_KEY)),
        Scope::parse(ENVELOPE_SCOPE).unwrap(),
        SecretKey::parse(ENVELOPE_KEY).unwrap(),
    )
}

fn session_key() -> aead::LessSafeKey {
    aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, &SESSION_SEAL_KEY).unwrap())
}

/// A device start and the node's session for it, as the pairing service makes them.
fn handshake() -> (DeviceIdentity, palyra::pairing::StartMessage, NodeSession, palyra::pairing::StartReply) {
    let identity = identity();
    let (_key, csr_pem) = generate_tls_key_and_csr(identity.id()).unwrap();
    let pin = Pin::parse(PAIRING_PIN).unwrap();
    let mut code = PairingCode {
        code_id: CodeId::parse(PAIRING_CODE_ID).unwrap(),
        sealed_pin: Some(vec![0]),
        role: Role::Device,
        created_at: now(),
        expires_at: now() + Duration::from_secs(600),
        max_attempts: 5,
        attempts_left: 5,
        state: CodeState::Active,
    };
    let (_device, start) = DevicePairing::start(
        &identity,
        code.code_id.clone(),
        &pin,
        PAIRING_CA,
        DeviceName::parse("phone").unwrap(),
        &csr_pem,
    )
    .unwrap();
    code.take_attempt(now()).unwrap();
    let (node, reply) = NodeSession::start(&code, &pin, PAIRING_CA, start.clone(), now()).unwrap();
    (identity, start, node, reply)
}

fn quic_frame(messages: &[&dyn Fn(&mut BytesMut)]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for m in messages {
        m(&mut buf);
    }
    buf.to_vec()
}

/// Every seed: (target, name, bytes).
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add =
        |target: &'static str, name: &str, bytes: Vec<u8>| out.push((target, name.to_owned(), bytes));

    // quic_frame: requests and responses as the node and QuicClient write them, and bad headers.
    let health =
        pb::Request { method: "node.health".into(), since_sequence: 0, kinds: vec![], at_sequence: None };
    let stream = pb::Request {
        method: "node.stream_events".into(),
        since_sequence: 120,
        kinds: vec!["vault.secret.written".into(), "device.revoked".into()],
        at_sequence: None,
    };
    add("quic_frame", "request-health", quic_frame(&[&|b| frame::encode(&health, b)]));
    add("quic_frame", "request-stream-events", quic_frame(&[&|b| frame::encode(&stream, b)]));
    let health_response = pb::Response {
        body: Some(pb::response::Body::Health(pb::HealthResponse {
            status: "ok".into(),
            device_id: "01j9zq8x7c6v5b4n3m2k1j0h9g".into(),
            version: "0.1.0".into(),
            uptime_seconds: 42,
        })),
    };
    add("quic_frame", "response-health", quic_frame(&[&|b| frame::encode(&health_response, b)]));
    let error = pb::Response {
        body: Some(pb::response::Body::Error(pb::Error {
            code: "events_truncated".into(),
            message: "since 3 is older than retention".into(),
            oldest_available_sequence: 17,
        })),
    };
    add(
        "quic_frame",
        "responses-two",
        quic_frame(&[&|b| frame::encode(&health_response, b), &|b| frame::encode(&error, b)]),
    );
    let event = pb::Response {
        body: Some(pb::response::Body::Event(pb::Event {
            sequence: 121,
            at: Some(prost_types::Timestamp { seconds: 1_800_000_000, nanos: 5 }),
            kind: "vault.secret.written".into(),
            subject: "agents/alpha/OPENAI_API_KEY".into(),
            attributes: [("version".to_owned(), "3".to_owned())].into(),
        })),
    };
    add("quic_frame", "response-event", quic_frame(&[&|b| frame::encode(&event, b)]));
    add("quic_frame", "header-4gib", u32::MAX.to_be_bytes().to_vec());
    add("quic_frame", "header-zero", vec![0, 0, 0, 0]);
    add("quic_frame", "truncated", vec![0, 0, 0, 9, 0x0a]);

    // scope: names, a (scope, key) pair, a page token, a device id, a profile name.
    for (name, text) in [
        ("scope", "agents/alpha"),
        ("scope-deep", "a/b.c/d_e/f-g/0/1/2/h"),
        ("scope-key", "agents/alpha\nOPENAI_API_KEY"),
        ("device-id", "01J9ZQ8X7C6V5B4N3M2K1J0H9G"),
        ("device-scope", "devices/01j9zq8x7c6v5b4n3m2k1j0h9g"),
        ("profile", "palyra/auth/github"),
        ("dotdot", "a/b..c"),
    ] {
        add("scope", name, text.as_bytes().to_vec());
    }
    add("scope", "page-token", hex::encode("a\n0\n1\na/b\nK").into_bytes());

    // envelope: sealed under the fixture key and binding, at two generations, and a rewrap.
    let (keys, scope, key) = envelope_keys();
    let binding = Binding { scope: &scope, key: &key, version: ENVELOPE_VERSION };
    let small = envelope::seal(&keys.vault_kek(1), 1, binding, b"sk-live-123").unwrap();
    add("envelope", "gen1-small", small.clone());
    add("envelope", "gen1-empty", envelope::seal(&keys.vault_kek(1), 1, binding, b"").unwrap());
    add("envelope", "gen7-1k", envelope::seal(&keys.vault_kek(7), 7, binding, &[0xa5; 1024]).unwrap());
    add(
        "envelope",
        "gen2-rewrapped",
        envelope::rewrap(&small, binding, &keys.vault_kek(1), &keys.vault_kek(2), 2).unwrap(),
    );

    // pairing_messages: each real message's wire fields, behind its mode byte.
    let (identity, start, node, reply) = handshake();
    add(
        "pairing_messages",
        "start",
        with_mode(
            0,
            &frame(&[
                start.code_id.as_str().as_bytes(),
                start.device_name.as_str().as_bytes(),
                &start.signing_public_key,
                &start.agreement_public_key,
                start.csr_pem.as_bytes(),
                &start.pake_message,
            ]),
        ),
    );
    let expires_ms =
        (u64::try_from(reply.expires_at.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()) << 8;
    add(
        "pairing_messages",
        "reply",
        with_mode(
            1,
            &frame(&[
                reply.session_id.as_bytes(),
                &reply.pake_message,
                &reply.server_confirmation,
                &expires_ms.to_be_bytes(),
            ]),
        ),
    );
    add(
        "pairing_messages",
        "finish",
        with_mode(2, &frame(&[reply.session_id.as_bytes(), &[0x17; 32], &identity.sign(b"finish")])),
    );
    let request_id = "01J9ZQ8X7C6V5B4N3M2K1J0H9G";
    let poll = StatusPoll::sign(&identity, request_id, now());
    add(
        "pairing_messages",
        "poll",
        with_mode(
            3,
            &frame(&[
                request_id.as_bytes(),
                &poll.timestamp_unix_ms.to_be_bytes(),
                &poll.signature,
                &identity.signing_public_key(),
            ]),
        ),
    );
    add(
        "pairing_messages",
        "session-plaintext",
        with_mode(4, &pairing_session_encode(&node, "127.0.0.1:5000").unwrap()),
    );
    let sealed = seal_session(&session_key(), &node, "127.0.0.1:5000").unwrap();
    add(
        "pairing_messages",
        "session-sealed",
        [&[5u8][..], &frame(&[reply.session_id.as_bytes()]), &sealed].concat(),
    );

    // pairing_handshake: structured (arbitrary) input; empty is the honest run.
    add("pairing_handshake", "honest", Vec::new());
    add("pairing_handshake", "wrong-pin", vec![1, 0x39, 0x30, 0, 0]);

    // pairing_uri: URIs as `palyra pairing code` prints them, and their parts.
    let uri = PairingUri {
        server: "127.0.0.1:7443".into(),
        code_id: CodeId::parse(PAIRING_CODE_ID).unwrap(),
        pin: Pin::parse(PAIRING_PIN).unwrap(),
        ca_fingerprint: PAIRING_CA.into(),
    };
    add("pairing_uri", "uri", uri.to_uri().as_bytes().to_vec());
    let v6 = PairingUri { server: "[::1]:7443".into(), ..uri.clone() };
    add("pairing_uri", "uri-ipv6", v6.to_uri().as_bytes().to_vec());
    let named = PairingUri { server: "node.example.com:443".into(), ..uri.clone() };
    add("pairing_uri", "uri-dns-extra", format!("{}&v=2", &*named.to_uri()).into_bytes());
    add("pairing_uri", "code-lower", b"7k2m9qxr4t".to_vec());
    add("pairing_uri", "pin", b"482913".to_vec());
    let token = EnrollmentToken {
        server: "127.0.0.1:7443".into(),
        key_id: CodeId::parse(PAIRING_CODE_ID).unwrap(),
        secret: EnrollmentSecret::parse("0123456789ABCDEFGHJKMNPQRSTVWXYZ").unwrap(),
        ca_fingerprint: PAIRING_CA.into(),
    };
    add("pairing_uri", "enrollment-token", token.to_text().as_bytes().to_vec());

    // csr: a P-256 and an Ed25519 request (PEM and DER), one asking for extensions the node
    // must not copy, and certificates for the readers.
    let (_key, p256) = generate_tls_key_and_csr(identity.id()).unwrap();
    add("csr", "p256-pem", with_mode(0, &[&[30u8][..], p256.as_bytes()].concat()));
    add("csr", "p256-der", with_mode(1, Csr::parse_pem(&p256).unwrap().der()));
    let ed_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["evil.example.com".to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "admin");
    let ed = params.serialize_request(&ed_key).unwrap();
    add(
        "csr",
        "ed25519-asks-for-ca-and-san-pem",
        with_mode(0, &[&[61u8][..], ed.pem().unwrap().as_bytes()].concat()),
    );
    add("csr", "ed25519-der", with_mode(1, ed.der()));
    let ca = DeviceCa::create(DeviceId::generate(), now()).unwrap();
    let issued = ca
        .issue_client_certificate(&p256, identity.id(), Role::Device, Duration::from_secs(86_400), now())
        .unwrap();
    add("csr", "client-certificate", with_mode(2, &issued.cert_der));
    add("csr", "ca-certificate", with_mode(2, ca.certificate_der()));

    // policy_text: the defaults and policies of each shape the engine slices differently.
    add("policy_text", "default", palyra::policy::DEFAULT_POLICIES.as_bytes().to_vec());
    add(
        "policy_text",
        "shapes",
        br#"@id("device-eq") permit (principal == Palyra::Device::"01j9zq8x7c6v5b4n3m2k1j0h9a", action, resource);
@id("role-read") permit (principal in Palyra::Role::"node", action in Palyra::Action::"vault.read", resource in Palyra::Scope::"agents");
@id("anchored") permit (principal, action == Palyra::Action::"palyra.vault.v1.VaultService/GetSecret", resource in Palyra::Scope::"agents/alpha");
@id("when") forbid (principal, action in Palyra::Action::"self", resource is Palyra::Device) when { principal has name && principal.name like "ph*" };
@id("profile") permit (principal is Palyra::Device, action == Palyra::Action::"palyra.auth.v1.AuthProfileService/GetAccessToken", resource == Palyra::Profile::"github");
@id("anon") permit (principal == Palyra::Anonymous::"anonymous", action == Palyra::Action::"node.health", resource);
"#
        .to_vec(),
    );
    add("policy_text", "syntax-error", b"permit (principal, action, resource) when { 1 + };".to_vec());

    // policy_request: principal, action, resource, context, role.
    for (name, p, a, r, c) in [
        (
            "get-secret",
            r#"Palyra::Device::"01j9zq8x7c6v5b4n3m2k1j0h9a""#,
            r#"Palyra::Action::"palyra.vault.v1.VaultService/GetSecret""#,
            r#"Palyra::Scope::"devices/01j9zq8x7c6v5b4n3m2k1j0h9a/x""#,
            "{}",
        ),
        (
            "renew",
            r#"Palyra::Anonymous::"anonymous""#,
            r#"Palyra::Action::"palyra.identity.v1.IdentityService/RenewCertificate""#,
            r#"Palyra::Device::"01j9zq8x7c6v5b4n3m2k1j0h9a""#,
            r#"{"renewal_proof": true}"#,
        ),
        (
            "token",
            r#"Palyra::Device::"01j9zq8x7c6v5b4n3m2k1j0h9a""#,
            r#"Palyra::Action::"palyra.auth.v1.AuthProfileService/GetAccessToken""#,
            r#"Palyra::Profile::"github""#,
            "",
        ),
        (
            "health",
            r#"Palyra::Anonymous::"anonymous""#,
            r#"Palyra::Action::"node.health""#,
            r#"Palyra::Node::"local""#,
            "",
        ),
    ] {
        add("policy_request", name, frame(&[p.as_bytes(), a.as_bytes(), r.as_bytes(), c.as_bytes(), &[1]]));
    }

    // config: palyra.toml as documented.
    add(
        "config",
        "full",
        b"grpc_addr = \"127.0.0.1:7443\"\nquic_addr = \"[::1]:7444\"\nkey_backend = \"file\"\nserver_names = [\"node.example.com\", \"192.168.1.10\"]\nmax_value_bytes = 65536\n".to_vec(),
    );
    add("config", "empty", Vec::new());
    add("config", "unknown-key", b"grpc_addr = \"127.0.0.1:1\"\n[extra]\nx = 1\n".to_vec());

    // identity: serialized identity, a renewal proof, a status poll.
    add("identity", "device-identity", with_mode(0, &identity.to_bytes()));
    let challenge = [0x5c; 32];
    let csr_der = Csr::parse_pem(&p256).unwrap().der().to_vec();
    let proof = identity.sign(&renewal_proof_message(&challenge, &csr_der));
    add(
        "identity",
        "renewal-proof",
        with_mode(1, &frame(&[&challenge, &csr_der, &identity.signing_public_key(), &proof])),
    );
    add(
        "identity",
        "status-poll",
        with_mode(
            2,
            &frame(&[request_id.as_bytes(), &poll.timestamp_unix_ms.to_be_bytes(), &poll.signature]),
        ),
    );

    // auth: token endpoint answers, a profile name, OAuth settings.
    let answer =
        |status: u16, body: &str| with_mode(0, &[&status.to_be_bytes()[..], body.as_bytes()].concat());
    add(
        "auth",
        "token",
        answer(
            200,
            r#"{"access_token":"at-1","token_type":"Bearer","expires_in":3600,"refresh_token":"rt-1"}"#,
        ),
    );
    add("auth", "token-no-expiry", answer(200, r#"{"access_token":"at-2"}"#));
    add(
        "auth",
        "invalid-grant",
        answer(400, r#"{"error":"invalid_grant","error_description":"refresh token revoked"}"#),
    );
    add("auth", "server-error", answer(503, r#"{"error":"temporarily_unavailable"}"#));
    add("auth", "profile-name", with_mode(1, b"github"));
    add(
        "auth",
        "oauth-config",
        with_mode(
            2,
            &frame(&[
                b"client-123",
                b"https://auth.example.com/authorize",
                b"http://127.0.0.1:8080/token",
                b"repo,read:user",
                b"http://127.0.0.1:53682/callback",
            ]),
        ),
    );
    // reference: a reference, a template and a dotenv file as `palyra run` and `inject` read them.
    add("reference", "reference", b"palyra://agents/alpha/OPENAI_API_KEY?version=3".to_vec());
    add(
        "reference",
        "template",
        b"api_key: {{ palyra://agents/alpha/API_KEY }}\ndb: \"{{palyra://agents/alpha/db/PASSWORD?version=2}}\"\nother: {{ not.ours }}\n".to_vec(),
    );
    add(
        "reference",
        "dotenv",
        b"# settings\nexport API_KEY=\"palyra://agents/alpha/API_KEY\"\nDB_PASSWORD='single $quoted'  # comment\nMULTI=\"line one\\nline \\\"two\\\"\nstill two\"\nPLAIN = value # trailing\n".to_vec(),
    );
    // backup: a round trip of three files with no bit flipped (mode 1, flip index past the end),
    // and a recovery code as printed (mode 2).
    add("backup", "round-trip", [&[1u8, 0xff, 0xff, 0xff, 0xff][..], &[b'x'; 200][..]].concat());
    let code = palyra::backup::RecoveryCode::generate().unwrap();
    add("backup", "recovery-code", [&[2u8][..], code.display().as_bytes()].concat());
    out
}

#[test]
#[ignore = "writes fuzz/corpus/*/seed-*: run with --ignored to regenerate the seeds"]
fn write_fuzz_seeds() {
    for (target, name, bytes) in seeds() {
        let dir = corpus().join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    }
}

fn committed(target: &str, name: &str) -> Vec<u8> {
    let path = corpus().join(target).join(format!("seed-{name}"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (regenerate with --ignored)", path.display()))
}

/// Every seed the generator makes is committed, and the committed ones still reach deep: the
/// envelopes open, the CSRs verify, the URI, config and policies parse, the session decodes.
#[test]
fn committed_seeds_are_valid_examples() {
    for (target, name, _) in seeds() {
        committed(target, &name);
    }
    let (keys, scope, key) = envelope_keys();
    let binding = Binding { scope: &scope, key: &key, version: ENVELOPE_VERSION };
    for name in ["gen1-small", "gen1-empty", "gen7-1k", "gen2-rewrapped"] {
        envelope::open(&committed("envelope", name), binding, |g| Some(keys.vault_kek(g)))
            .unwrap_or_else(|e| panic!("envelope seed {name}: {e}"));
    }
    let pem = |name: &str| String::from_utf8(committed("csr", name)[2..].to_vec()).unwrap();
    Csr::parse_pem(&pem("p256-pem")).unwrap();
    Csr::parse_pem(&pem("ed25519-asks-for-ca-and-san-pem")).unwrap();
    Csr::parse_der(&committed("csr", "p256-der")[1..]).unwrap();
    let uri = String::from_utf8(committed("pairing_uri", "uri")).unwrap();
    PairingUri::parse(&uri).unwrap();
    let token = String::from_utf8(committed("pairing_uri", "enrollment-token")).unwrap();
    EnrollmentToken::parse(&token).unwrap();
    let config = String::from_utf8(committed("config", "full")).unwrap();
    FileConfig::parse(&config, Path::new("seed")).unwrap();
    let engine = PolicyEngine::with_defaults().unwrap();
    let shapes = String::from_utf8(committed("policy_text", "shapes")).unwrap();
    let diagnostics = engine.validate(&shapes);
    assert!(diagnostics.iter().all(|d| d.severity == Severity::Warning), "{diagnostics:?}");
    palyra::fuzzing::pairing_session_decode(&committed("pairing_messages", "session-plaintext")[1..])
        .unwrap();
    let sealed = committed("pairing_messages", "session-sealed");
    let id_len = usize::from(u16::from_be_bytes([sealed[1], sealed[2]]));
    let id = std::str::from_utf8(&sealed[3..3 + id_len]).unwrap();
    palyra::pairing::open_session(&session_key(), id, &sealed[3 + id_len..]).unwrap();
    DeviceIdentity::from_bytes(&committed("identity", "device-identity")[1..]).unwrap();
    palyra::vault::reference::Reference::parse(
        std::str::from_utf8(&committed("reference", "reference")).unwrap(),
    )
    .unwrap();
    let template = String::from_utf8(committed("reference", "template")).unwrap();
    assert_eq!(palyra::vault::reference::placeholders(&template).unwrap().len(), 2);
    let dotenv = String::from_utf8(committed("reference", "dotenv")).unwrap();
    assert_eq!(palyra::vault::dotenv::parse(&dotenv).unwrap().len(), 4);
    let token = committed("auth", "token");
    palyra::auth::oauth::parse_token_response(200, &token[3..]).unwrap();
    let code = committed("backup", "recovery-code");
    palyra::backup::RecoveryCode::parse(std::str::from_utf8(&code[1..]).unwrap()).unwrap();
}
