"""Self-renewing credentials: a client made from a credentials directory (``<data dir>/client/``
of a paired device, or ``operator/`` on the node) renews its certificate on its own, as the
``palyra`` CLI does.

The rule is the CLI's: renew once two thirds of the certificate's lifetime have passed, the
lifetime counted from issuance (``notBefore`` + 5 minutes, since the node backdates ``notBefore``
for clocks that run behind) to ``notAfter``. Before expiry the renewal is
``IdentityService/RenewCertificate`` over mTLS; after it, an anonymous ``GetRenewalChallenge``
and ``RenewCertificate`` with an Ed25519 proof by the device's identity key (``identity.key``,
which only a paired device's ``client/`` holds). The TLS key stays; ``cert.pem`` is replaced
atomically (temp file, fsync, rename, fsync of the directory; mode 0600).

A renewal is tried by a background thread when it is due and before a call that finds it due;
one that fails keeps the old certificate and is retried with exponential backoff. New calls go
to a channel with the new certificate; calls in flight finish on the old channel, which is
closed once the last of them is done.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from ._proto.palyra.identity.v1 import identity_pb2, identity_pb2_grpc
from .errors import _ErrorInterceptor

#: How far the node backdates ``notBefore`` (``CLOCK_SKEW_ALLOWANCE`` in the node's CA).
CLOCK_SKEW_ALLOWANCE = 300.0
#: The domain tag of the renewal proof (``RENEWAL_PROOF_TAG`` in the node).
RENEWAL_PROOF_TAG = b"palyra-renewal-v1/proof"
#: The URI SAN prefix that names a device in its certificate.
DEVICE_URI_PREFIX = "palyra://device/"
# identity.key: version (1) ‖ ULID (16) ‖ Ed25519 seed (32) ‖ X25519 secret (32).
_IDENTITY_LEN = 81
_IDENTITY_FORMAT_V1 = 1
_RPC_TIMEOUT = 10.0


@dataclass(frozen=True)
class RenewalEvent:
    """What a renewal attempt did, for ``connect(on_renewal=...)``: ``not_after`` of the new
    certificate when it succeeded; else ``error`` (the old certificate is kept) and ``retry_in``
    seconds until the next try."""

    not_after: datetime | None = None
    error: Exception | None = None
    retry_in: float | None = None


@dataclass(frozen=True)
class _Pems:
    ca: bytes
    cert: bytes
    key: bytes = field(repr=False)  # the private key never shows in a repr


def certificate_window(cert_pem: bytes) -> tuple[float, float]:
    """(issued at, not after) of a certificate, in seconds since the epoch: issuance is
    ``notBefore`` + :data:`CLOCK_SKEW_ALLOWANCE`."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    not_before = cert.not_valid_before_utc.timestamp()
    return not_before + CLOCK_SKEW_ALLOWANCE, cert.not_valid_after_utc.timestamp()


def renewal_due_at(cert_pem: bytes) -> float:
    """When two thirds of the certificate's lifetime (from issuance) have passed."""
    issued, not_after = certificate_window(cert_pem)
    lifetime = max(0.0, not_after - issued)
    return not_after - lifetime / 3


def _device_id(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier) if san is not None else []
    for uri in uris:
        if uri.startswith(DEVICE_URI_PREFIX):
            return uri[len(DEVICE_URI_PREFIX) :]
    raise ValueError("the certificate names no palyra device (no palyra://device/ URI)")


def _csr(key_pem: bytes, device_id: str) -> tuple[str, bytes]:
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("key.pem is not an ECDSA key")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode(), csr.public_bytes(serialization.Encoding.DER)


def _public_der(key_or_cert: Any) -> bytes:
    return key_or_cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _signing_key(identity: bytes) -> ed25519.Ed25519PrivateKey:
    if len(identity) != _IDENTITY_LEN or identity[0] != _IDENTITY_FORMAT_V1:
        raise ValueError("identity.key is not a version-1 device identity (81 bytes)")
    return ed25519.Ed25519PrivateKey.from_private_bytes(identity[17:49])


def write_private_atomic(path: Path, data: bytes) -> None:
    """Replaces ``path`` with ``data`` atomically: a new 0600 temp file in the same directory,
    written and fsynced, renamed over ``path``, then the directory fsynced."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{random.getrandbits(32):08x}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class _Generation:
    """One channel with one certificate, and how many calls are on it."""

    def __init__(self, target: str, pems: _Pems) -> None:
        self.pems = pems
        credentials = grpc.ssl_channel_credentials(
            root_certificates=pems.ca, private_key=pems.key, certificate_chain=pems.cert
        )
        self.raw = grpc.secure_channel(target, credentials)
        self.channel = grpc.intercept_channel(self.raw, _ErrorInterceptor())
        self.in_flight = 0
        self.retired = False
        self.closed = False


class Renewer:
    """The credentials of one directory, the channel that uses them, and their renewal."""

    def __init__(
        self,
        target: str,
        directory: Path,
        *,
        on_renewal: Callable[[RenewalEvent], None] | None = None,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
    ) -> None:
        self.target = target
        self.dir = Path(directory)
        self._on_renewal = on_renewal
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        read = lambda name: (self.dir / name).read_bytes()  # noqa: E731
        pems = _Pems(read("ca.pem"), read("cert.pem"), read("key.pem"))
        self._state = threading.Lock()  # the current generation and the retired ones
        self._renewing = threading.Lock()  # one renewal at a time
        self._current = _Generation(target, pems)
        self._retired: list[_Generation] = []
        self._set_times(pems.cert)
        self._failures = 0
        self._retry_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="palyra-renewal", daemon=True)
        self._thread.start()

    # --- what the client uses ---------------------------------------------------------------

    @property
    def pems(self) -> _Pems:
        with self._state:
            return self._current.pems

    def acquire(self) -> _Generation:
        """The channel for a new call (renewing first when due), counted as in use."""
        self.ensure_fresh()
        with self._state:
            generation = self._current
            generation.in_flight += 1
            return generation

    def release(self, generation: _Generation) -> None:
        with self._state:
            generation.in_flight -= 1
            close = generation.retired and generation.in_flight == 0 and not generation.closed
            if close:
                generation.closed = True
                self._retired.remove(generation)
        if close:
            # Not on this thread: it may be one of the channel's own (a call's done callback).
            threading.Thread(target=generation.raw.close, name="palyra-channel-close", daemon=True).start()

    def ensure_fresh(self, *, wait: bool = False) -> None:
        """Renews when due and not backing off. A caller that finds another renewal under way
        waits for it only when the certificate has expired (or ``wait``)."""
        now = time.time()
        if now < self._due or now < self._retry_at:
            return
        if not self._renewing.acquire(blocking=wait or now >= self._not_after):
            return
        try:
            now = time.time()
            if now >= self._due and now >= self._retry_at:
                self._renew_locked(raise_errors=False)
        finally:
            self._renewing.release()

    def renew(self) -> None:
        """Renews now, whatever the certificate's age; raises when it fails (the old certificate
        is kept)."""
        with self._renewing:
            self._renew_locked(raise_errors=True)

    def close(self) -> None:
        self._stop.set()
        with self._state:
            generations = [self._current, *self._retired]
            for g in generations:
                g.closed = True
            self._retired.clear()
        for g in generations:
            g.raw.close()

    # --- renewal ------------------------------------------------------------------------------

    def _set_times(self, cert: bytes) -> None:
        self._due = renewal_due_at(cert)
        self._not_after = certificate_window(cert)[1]

    def _run(self) -> None:
        while True:
            wake = max(self._due, self._retry_at) - time.time()
            if self._stop.wait(timeout=min(max(wake, 0.05), 3600.0)):
                return
            try:
                self.ensure_fresh(wait=True)
            except Exception:  # never let the thread die; ensure_fresh reports its errors
                pass

    def _renew_locked(self, *, raise_errors: bool) -> None:
        current = self._current
        try:
            if time.time() >= self._not_after:
                cert = self._renew_with_proof(current.pems)
            else:
                cert = self._renew_over_mtls(current)
            self._check(cert, current.pems.key)
            write_private_atomic(self.dir / "cert.pem", cert)
        except Exception as e:
            self._failures += 1
            delay = min(self._backoff_max, self._backoff_initial * 2 ** (self._failures - 1))
            delay *= random.uniform(0.75, 1.0)
            self._retry_at = time.time() + delay
            self._notify(RenewalEvent(error=e, retry_in=delay))
            if raise_errors:
                raise
            return
        fresh = _Generation(self.target, _Pems(current.pems.ca, cert, current.pems.key))
        with self._state:
            if current.closed:  # closed while renewing
                fresh.raw.close()
                return
            self._current = fresh
            current.retired = True
            close_now = current.in_flight == 0
            if close_now:
                current.closed = True
            else:
                self._retired.append(current)
        if close_now:
            current.raw.close()
        self._set_times(cert)
        self._failures = 0
        self._retry_at = 0.0
        self._notify(RenewalEvent(not_after=datetime.fromtimestamp(self._not_after, timezone.utc)))

    def _notify(self, event: RenewalEvent) -> None:
        if self._on_renewal is not None:
            try:
                self._on_renewal(event)
            except Exception:
                pass

    def _renew_over_mtls(self, generation: _Generation) -> bytes:
        csr_pem, _ = _csr(generation.pems.key, _device_id(generation.pems.cert))
        stub = identity_pb2_grpc.IdentityServiceStub(generation.channel)
        reply = stub.RenewCertificate(identity_pb2.RenewCertificateRequest(csr_pem=csr_pem), timeout=_RPC_TIMEOUT)
        return reply.certificate_pem.encode()

    def _renew_with_proof(self, pems: _Pems) -> bytes:
        try:
            signing = _signing_key((self.dir / "identity.key").read_bytes())
        except OSError as e:
            raise RuntimeError(
                f"the certificate in {self.dir} expired and cannot be renewed without the device "
                f"identity ({e.strerror}): pair this device again"
            ) from None
        device_id = _device_id(pems.cert)
        csr_pem, csr_der = _csr(pems.key, device_id)
        # No valid client certificate: server-authenticated TLS only, the node's CA pinned.
        channel = grpc.secure_channel(self.target, grpc.ssl_channel_credentials(root_certificates=pems.ca))
        try:
            stub = identity_pb2_grpc.IdentityServiceStub(grpc.intercept_channel(channel, _ErrorInterceptor()))
            challenge = stub.GetRenewalChallenge(
                identity_pb2.GetRenewalChallengeRequest(device_id=device_id), timeout=_RPC_TIMEOUT
            ).challenge
            message = RENEWAL_PROOF_TAG + challenge + hashlib.sha256(csr_der).digest()
            proof = identity_pb2.RenewalProof(device_id=device_id, challenge=challenge, signature=signing.sign(message))
            reply = stub.RenewCertificate(
                identity_pb2.RenewCertificateRequest(csr_pem=csr_pem, proof=proof), timeout=_RPC_TIMEOUT
            )
            return reply.certificate_pem.encode()
        finally:
            channel.close()

    @staticmethod
    def _check(cert_pem: bytes, key_pem: bytes) -> None:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        if _public_der(cert) != _public_der(key):
            raise ValueError("the node answered with a certificate for another key")


class _MultiCallable:
    """A method of :class:`RenewingChannel`: each call goes to the current channel and is
    counted there until it completes."""

    def __init__(self, renewer: Renewer, kind: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._renewer = renewer
        self._kind = kind
        self._method = method
        self._args = args
        self._kwargs = kwargs
        self._unary_response = kind in ("unary_unary", "stream_unary")

    def _invoke(self, how: str, *args: Any, **kwargs: Any) -> Any:
        generation = self._renewer.acquire()
        try:
            callable_ = getattr(generation.channel, self._kind)(self._method, *self._args, **self._kwargs)
            result = getattr(callable_, how)(*args, **kwargs)
        except BaseException:
            self._renewer.release(generation)
            raise
        if self._unary_response and how != "future":
            self._renewer.release(generation)
            return result
        # A future or a response stream: in use until it is done.
        released = threading.Event()

        def done(_: Any) -> None:
            if not released.is_set():
                released.set()
                self._renewer.release(generation)

        result.add_done_callback(done)
        return result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._invoke("__call__", *args, **kwargs)

    def with_call(self, *args: Any, **kwargs: Any) -> Any:
        return self._invoke("with_call", *args, **kwargs)

    def future(self, *args: Any, **kwargs: Any) -> Any:
        return self._invoke("future", *args, **kwargs)


class RenewingChannel(grpc.Channel):
    """A ``grpc.Channel`` whose calls go to the renewer's current channel."""

    def __init__(self, renewer: Renewer) -> None:
        self.renewer = renewer

    def _method(self, kind: str, method: str, *args: Any, **kwargs: Any) -> _MultiCallable:
        return _MultiCallable(self.renewer, kind, method, args, kwargs)

    def unary_unary(self, method, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        return self._method("unary_unary", method, *args, **kwargs)

    def unary_stream(self, method, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        return self._method("unary_stream", method, *args, **kwargs)

    def stream_unary(self, method, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        return self._method("stream_unary", method, *args, **kwargs)

    def stream_stream(self, method, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        return self._method("stream_stream", method, *args, **kwargs)

    def subscribe(self, callback, try_to_connect=False):  # type: ignore[no-untyped-def, override]
        # Subscriptions are to the channel of the moment (a renewal replaces it).
        with self.renewer._state:
            raw = self.renewer._current.raw
        raw.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback):  # type: ignore[no-untyped-def, override]
        with self.renewer._state:
            raw = self.renewer._current.raw
        raw.unsubscribe(callback)

    def close(self) -> None:
        self.renewer.close()

    def __enter__(self) -> RenewingChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
