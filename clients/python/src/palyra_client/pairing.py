"""The joining device's side of pairing (``docs/pairing-protocol.md`` in the repository), as
``palyra pair`` does it: SPAKE2 with the PIN, a transcript that binds the node's CA, the device's
keys and CSR; then polling for the operator's approval and storing the credentials in
``<data_dir>/client/``, where :func:`palyra_client.connect` (and the ``palyra`` CLI) find them.

The device's private keys (Ed25519 identity, X25519 agreement key, ECDSA P-256 TLS key) are made
here and never leave it: the node gets public keys and a CSR.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlsplit

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID
from spake2 import SPAKE2_A

from ._proto.palyra.identity.v1 import identity_pb2, identity_pb2_grpc
from ._proto.palyra.pairing.v1 import pairing_pb2, pairing_pb2_grpc
from .client import DEFAULT_SERVER, _target, default_data_dir
from .errors import PalyraError, _ErrorInterceptor

PROTOCOL = b"palyra-pairing-v1"
DEVICE_IDENTITY = b"palyra-pairing-v1/device"
NODE_IDENTITY = b"palyra-pairing-v1/node"
DEVICE_CONFIRM_INFO = b"palyra-pairing-v1 device confirm"
NODE_CONFIRM_INFO = b"palyra-pairing-v1 node confirm"
FINISH_TAG = b"palyra-pairing-v1/finish"
STATUS_TAG = b"palyra-pairing-v1/status"
# The identity file's format, shared with the Rust CLI: version, ULID, Ed25519 seed, X25519 secret.
_IDENTITY_FORMAT_V1 = 1

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class PairingFailed(Exception):
    """Pairing did not complete: a mismatched CA, a wrong PIN, a rejection, a timeout. Errors
    from the node itself are raised as :class:`palyra_client.PalyraError`."""


@dataclass(frozen=True)
class Paired:
    """A paired device: its id, its fingerprint and where its credentials are."""

    device_id: str
    fingerprint: str
    dir: Path


@dataclass(frozen=True)
class PairingUri:
    """``palyra://pair?server=HOST:PORT&code=CODE_ID&pin=PIN&ca=CA_FINGERPRINT``."""

    server: str
    code_id: str
    pin: str
    ca_fingerprint: str

    @classmethod
    def parse(cls, uri: str) -> PairingUri:
        parts = urlsplit(uri.strip())
        if parts.scheme != "palyra" or parts.netloc != "pair":
            raise ValueError("not a pairing URI (palyra://pair?...)")
        query = parse_qs(parts.query, strict_parsing=True)
        try:
            values = {k: query[k][0] for k in ("server", "code", "pin", "ca")}
        except KeyError as missing:
            raise ValueError(f"the pairing URI has no {missing.args[0]}") from None
        return cls(values["server"], values["code"], values["pin"], values["ca"])


_ENROLLMENT_PREFIX = "palyra-enroll:v1:"
# The node's own bounds (src/pairing/enrollment.rs, src/pairing/code.rs): a token is checked
# here exactly as `palyra pair --enrollment-key` checks it.
_MAX_ENROLLMENT_TOKEN = 1024
_CODE_ID_LEN = 10
_SECRET_LEN = 32
_BASE64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _valid_server(server: str) -> bool:
    """``HOST:PORT`` as the node validates it: a port 1-65535; a DNS name or IPv4 address of
    letters, digits, dots and hyphens, or a bracketed IPv6 address."""
    host, sep, port = server.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return False
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    return 0 < len(host) <= 253 and all(c.isascii() and (c.isalnum() or c in ".-") for c in host)


@dataclass(frozen=True)
class EnrollmentToken:
    """``palyra-enroll:v1:...`` from ``palyra enrollment create`` (or CreateEnrollmentKey): the
    node's address, an enrollment key's id and secret, and the node's CA fingerprint. A device
    paired with it is approved at once, with the key's scopes. Secret: ``repr`` hides it."""

    server: str
    key_id: str
    secret: str = field(repr=False)
    ca_fingerprint: str

    @classmethod
    def parse(cls, token: str) -> EnrollmentToken:
        """Parses a token, bounded, every field checked; errors never repeat the token."""
        text = token.strip()
        if len(text) > _MAX_ENROLLMENT_TOKEN:
            raise ValueError("longer than any enrollment token")
        if not text.startswith(_ENROLLMENT_PREFIX):
            raise ValueError(f"an enrollment token starts with {_ENROLLMENT_PREFIX}")
        body = text[len(_ENROLLMENT_PREFIX) :]
        # Unpadded base64url only, as the node writes it.
        if not body or not set(body) <= _BASE64URL or len(body) % 4 == 1:
            raise ValueError("the enrollment token is not intact (base64)")
        try:
            inner = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
        except (ValueError, UnicodeDecodeError):
            raise ValueError("the enrollment token is not intact") from None
        fields = inner.split("\n")
        if len(fields) != 4:
            raise ValueError("the enrollment token is not intact (fields)")
        server, key_id, secret, ca = fields
        if not _valid_server(server):
            raise ValueError("the enrollment token's server is not HOST:PORT")
        key_id = key_id.upper().replace("I", "1").replace("L", "1").replace("O", "0")
        if len(key_id) != _CODE_ID_LEN or any(c not in _CROCKFORD for c in key_id):
            raise ValueError("the enrollment token's key id is malformed")
        if len(secret) != _SECRET_LEN or any(c not in _CROCKFORD for c in secret):
            raise ValueError("the enrollment token's secret is malformed")
        if len(ca) != 64 or any(c not in "0123456789abcdef" for c in ca):
            raise ValueError("the enrollment token's CA fingerprint is malformed")
        return cls(server, key_id, secret, ca)


def _ulid() -> str:
    value = (int(time.time() * 1000) << 80) | int.from_bytes(secrets.token_bytes(10), "big")
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in range(25, -1, -1))


def _ulid_bytes(text: str) -> bytes:
    value = 0
    for ch in text:
        value = (value << 5) | _CROCKFORD.index(ch)
    return value.to_bytes(16, "big")


def _transcript(*fields: bytes) -> bytes:
    h = hashlib.sha256()
    for field in fields:
        h.update(len(field).to_bytes(4, "big"))
        h.update(field)
    return h.digest()


def _confirmation(k: bytes, t: bytes, info: bytes) -> bytes:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=t, info=info).derive(k)
    return hmac.new(key, t, hashlib.sha256).digest()


def _fingerprint_pem(pem: str) -> str:
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    # 0600 like every file of the CLI's client/ (it refuses to read one that others can).
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def dangerous_fetch_node_identity(server: str, timeout: float = 5.0) -> identity_pb2.GetNodeIdentityResponse:
    """GetNodeIdentity over TLS **without verifying the server**: only for step 1, whose answer
    (the node's CA) is checked against the expected CA fingerprint before anything is sent.

    grpcio cannot skip verification, and the node sends only its leaf certificate, so the leaf
    itself (read here without verification) is the one trust anchor of a throwaway channel.
    """
    host, _, port = _target(server).rpartition(":")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
        with context.wrap_socket(sock, server_hostname=host.strip("[]")) as tls:
            der = tls.getpeercert(binary_form=True)
    leaf = ssl.DER_cert_to_PEM_cert(der).encode()
    channel = grpc.secure_channel(_target(server), grpc.ssl_channel_credentials(root_certificates=leaf))
    try:
        stub = identity_pb2_grpc.IdentityServiceStub(grpc.intercept_channel(channel, _ErrorInterceptor()))
        return stub.GetNodeIdentity(identity_pb2.GetNodeIdentityRequest(), timeout=timeout)
    finally:
        channel.close()


def pair(
    server: str | None = None,
    *,
    uri: str | None = None,
    code: str | None = None,
    pin: str | None = None,
    enrollment_key: str | None = None,
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    ca_fingerprint: str | None = None,
    confirm_ca: Callable[[str], bool] | None = None,
    on_pending: Callable[[str, str], None] | None = None,
    wait_seconds: float = 600.0,
    poll_interval: float = 1.0,
) -> Paired:
    """Pairs the device whose data dir is ``data_dir`` (default: the CLI's) with a node, by ``uri`` (from a QR code
    or ``palyra pairing code``), by ``code`` and ``pin`` (then with ``server``), or by ``enrollment_key`` (a
    ``palyra-enroll:v1:`` token: approved at once, no operator step; its CA fingerprint is checked like a URI's).

    The node's CA is checked before anything is sent: against the URI's ``ca``; by code, against
    ``ca_fingerprint``, or else ``confirm_ca(fingerprint)`` must return True. ``on_pending``
    hears ``(request_id, device_fingerprint)`` once the request waits for the operator. Blocks
    until the operator approves (returns), rejects or lets it expire (:class:`PairingFailed`),
    or ``wait_seconds`` pass.
    """
    client_dir = (Path(data_dir) if data_dir is not None else default_data_dir()) / "client"
    if (client_dir / "cert.pem").exists():
        raise PairingFailed(f"this data dir is already paired ({client_dir})")
    if enrollment_key is not None:
        if uri is not None or code is not None or pin is not None or ca_fingerprint is not None:
            raise ValueError("pass enrollment_key alone: it carries the server, the key and the CA fingerprint")
        token = EnrollmentToken.parse(enrollment_key)
        server, code, pin, expected_ca = f"https://{token.server}", token.key_id, token.secret, token.ca_fingerprint
    elif uri is not None:
        if code is not None or pin is not None or ca_fingerprint is not None:
            raise ValueError("pass uri, or code and pin (and ca_fingerprint), not both")
        parsed = PairingUri.parse(uri)
        server, code, pin, expected_ca = f"https://{parsed.server}", parsed.code_id, parsed.pin, parsed.ca_fingerprint
    elif code is None or pin is None:
        raise ValueError("pass uri, or code and pin")
    else:
        server, expected_ca = server or DEFAULT_SERVER, ca_fingerprint
    if not name or len(name) > 64 or any(ord(c) < 32 for c in name):
        raise ValueError("the device name must be 1 to 64 printable characters")

    # Step 1: the node's CA, checked before anything else is sent.
    node = dangerous_fetch_node_identity(server)
    ca_pem = node.ca_certificate_pem
    ca_fp = _fingerprint_pem(ca_pem)
    if expected_ca is not None:
        if not hmac.compare_digest(expected_ca, ca_fp):
            raise PairingFailed(
                f"the node's CA fingerprint is {ca_fp}, expected {expected_ca}: this is not the node "
                "that made the code (or someone is in between); nothing was sent"
            )
    elif confirm_ca is None or not confirm_ca(ca_fp):
        raise PairingFailed("the node's CA fingerprint was not confirmed; nothing was sent")

    channel = grpc.intercept_channel(
        grpc.secure_channel(_target(server), grpc.ssl_channel_credentials(root_certificates=ca_pem.encode())),
        _ErrorInterceptor(),
    )
    try:
        stub = pairing_pb2_grpc.PairingServiceStub(channel)
        return _handshake_and_wait(
            stub, client_dir, code, pin, name, ca_pem, ca_fp, on_pending, wait_seconds, poll_interval
        )
    finally:
        channel.close()


def _handshake_and_wait(
    stub: pairing_pb2_grpc.PairingServiceStub,
    client_dir: Path,
    code_id: str,
    pin: str,
    name: str,
    ca_pem: str,
    ca_fp: str,
    on_pending: Callable[[str, str], None] | None,
    wait_seconds: float,
    poll_interval: float,
) -> Paired:
    # Steps 2-3: keys, CSR, SPAKE2 and the transcript.
    device_id = _ulid()
    signing = ed25519.Ed25519PrivateKey.generate()
    agreement = x25519.X25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    signing_public = signing.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    agreement_public = agreement.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(tls_key, hashes.SHA256())
    )
    csr_pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    csr_der = csr.public_bytes(serialization.Encoding.DER)

    spake = SPAKE2_A(pin.encode(), idA=DEVICE_IDENTITY, idB=NODE_IDENTITY)
    pake_message = spake.start()
    reply = stub.StartPairing(
        pairing_pb2.StartPairingRequest(
            code_id=code_id,
            device_name=name,
            signing_public_key=signing_public,
            agreement_public_key=agreement_public,
            csr_pem=csr_pem,
            pake_message=pake_message,
        )
    )
    try:
        k = spake.finish(reply.pake_message)
    except Exception:
        raise PairingFailed("wrong PIN or impostor node: the node's SPAKE2 message is invalid") from None
    t = _transcript(
        PROTOCOL,
        code_id.encode(),
        ca_fp.encode(),
        pake_message,
        reply.pake_message,
        signing_public,
        agreement_public,
        csr_der,
        name.encode(),
    )
    if not hmac.compare_digest(_confirmation(k, t, NODE_CONFIRM_INFO), reply.server_confirmation):
        raise PairingFailed(
            "wrong PIN or impostor node: the node's confirmation does not verify; nothing more was "
            "sent (each try uses one of the code's attempts)"
        )
    finished = stub.FinishPairing(
        pairing_pb2.FinishPairingRequest(
            session_id=reply.session_id,
            client_confirmation=_confirmation(k, t, DEVICE_CONFIRM_INFO),
            signature=signing.sign(FINISH_TAG + t),
        )
    )
    request_id = finished.request_id

    # The private parts are kept from now on, in the Rust CLI's layout.
    client_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    client_dir.mkdir(mode=0o700, exist_ok=True)
    identity = (
        bytes([_IDENTITY_FORMAT_V1])
        + _ulid_bytes(device_id)
        + signing.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        + agreement.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    )
    _write_private(client_dir / "identity.key", identity)
    _write_private(
        client_dir / "key.pem",
        tls_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    fingerprint = hashlib.sha256(signing_public).hexdigest()
    if on_pending is not None:
        on_pending(request_id, fingerprint)

    # Step 6: wait for the operator, with signed polls.
    deadline = time.monotonic() + wait_seconds
    while True:
        ts = int(time.time() * 1000)
        try:
            status = stub.GetPairingStatus(
                pairing_pb2.GetPairingStatusRequest(
                    request_id=request_id,
                    timestamp_unix_ms=ts,
                    signature=signing.sign(STATUS_TAG + request_id.encode() + ts.to_bytes(8, "big")),
                )
            )
        except PalyraError as e:
            if e.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
        else:
            if status.state == pairing_pb2.PAIRING_STATE_APPROVED:
                if _fingerprint_pem(status.ca_certificate_pem) != ca_fp:
                    raise PairingFailed("the node's CA changed during pairing; not storing anything")
                _write_private(client_dir / "ca.pem", status.ca_certificate_pem.encode())
                _write_private(client_dir / "device_id", status.device_id.encode())
                # Last: its presence means "paired".
                _write_private(client_dir / "cert.pem", status.certificate_pem.encode())
                return Paired(status.device_id, fingerprint, client_dir)
            if status.state == pairing_pb2.PAIRING_STATE_REJECTED:
                raise PairingFailed("the node's operator rejected this device")
            if status.state == pairing_pb2.PAIRING_STATE_EXPIRED:
                raise PairingFailed("the pairing request expired before anyone approved it")
        if time.monotonic() >= deadline:
            raise PairingFailed(f"no decision on pairing request {request_id} yet; approve it and pair again")
        time.sleep(poll_interval)
