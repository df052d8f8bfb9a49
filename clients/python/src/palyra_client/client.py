"""The mTLS channel to a node and typed access to its services."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator

import grpc

from ._proto.palyra.audit.v1 import audit_pb2_grpc
from ._proto.palyra.auth.v1 import auth_pb2_grpc
from ._proto.palyra.console.v1 import console_pb2_grpc
from ._proto.palyra.identity.v1 import identity_pb2, identity_pb2_grpc
from ._proto.palyra.pairing.v1 import pairing_pb2_grpc
from ._proto.palyra.policy.v1 import policy_pb2_grpc
from ._proto.palyra.vault.v1 import vault_pb2, vault_pb2_grpc
from .errors import PalyraError, _ErrorInterceptor
from .renewal import RenewalEvent, Renewer, RenewingChannel

#: Where ``palyra serve`` listens unless told otherwise.
DEFAULT_SERVER = "https://127.0.0.1:7443"

PathOrPem = str | os.PathLike[str] | bytes


def default_data_dir() -> Path:
    """The CLI's default: ``$PALYRA_HOME``, else ``$XDG_DATA_HOME/palyra``, else
    ``~/.local/share/palyra``."""
    if home := os.environ.get("PALYRA_HOME"):
        return Path(home)
    if xdg := os.environ.get("XDG_DATA_HOME"):
        return Path(xdg) / "palyra"
    return Path.home() / ".local" / "share" / "palyra"


def credentials_dir(data_dir: str | os.PathLike[str]) -> Path:
    """The directory with ``ca.pem``, ``cert.pem``, ``key.pem`` in a data dir: ``operator/`` on
    the node itself, ``client/`` on a paired device (the same order as the CLI)."""
    data = Path(data_dir)
    for sub in ("operator", "client"):
        if (data / sub / "cert.pem").is_file():
            return data / sub
    raise FileNotFoundError(
        f"no client credentials in {data}: run `palyra init` on the node, or pair this device "
        "(palyra_client.pair or `palyra pair`)"
    )


def _target(server: str) -> str:
    if server.startswith("https://"):
        return server[len("https://") :].rstrip("/")
    if "://" in server:
        raise ValueError(f"bad server {server!r}: use https://HOST:PORT")
    return server


def _pem(value: PathOrPem) -> bytes:
    return value if isinstance(value, bytes) else Path(value).read_bytes()


class Client:
    """A connection to a node: the generated stubs (``vault``, ``identity``, ``pairing``,
    ``policy``, ``audit``, ``auth``, ``console``) on one mTLS channel, plus a few helpers. Every failed call raises
    :class:`palyra_client.PalyraError`. Use it as a context manager, or call :meth:`close`.

    Made by :func:`connect` from a data dir, it renews its certificate on its own (see
    :mod:`palyra_client.renewal`)."""

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        target: str | None = None,
        pems: tuple[bytes, bytes, bytes] | None = None,
        renewer: Renewer | None = None,
    ) -> None:
        """``channel`` is any gRPC channel; ``target`` (``HOST:PORT``) and ``pems`` (ca, cert,
        key) let :meth:`watch_secrets` open its own asyncio channel; ``renewer`` is set by
        :func:`connect` for a self-renewing client (its channel is then a ``RenewingChannel``)."""
        self._renewer = renewer
        if renewer is not None:
            self.channel: grpc.Channel = channel
            target = renewer.target
        else:
            self.channel = grpc.intercept_channel(channel, _ErrorInterceptor())
        self._raw = channel
        self._target = target
        self._pems = pems
        self.vault = vault_pb2_grpc.VaultServiceStub(self.channel)
        self.identity = identity_pb2_grpc.IdentityServiceStub(self.channel)
        self.pairing = pairing_pb2_grpc.PairingServiceStub(self.channel)
        self.policy = policy_pb2_grpc.PolicyServiceStub(self.channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(self.channel)
        self.auth = auth_pb2_grpc.AuthProfileServiceStub(self.channel)
        self.console = console_pb2_grpc.ConsoleServiceStub(self.channel)

    def close(self) -> None:
        self._raw.close()

    # --- credentials ------------------------------------------------------------------------

    @property
    def renews(self) -> bool:
        """Whether this client renews its certificate on its own."""
        return self._renewer is not None

    @property
    def certificate_pem(self) -> bytes | None:
        """The client certificate new calls use (``None`` for a client made from a channel)."""
        if self._renewer is not None:
            return self._renewer.pems.cert
        return self._pems[1] if self._pems is not None else None

    def renew_certificate(self) -> None:
        """Renews the certificate now (a self-renewing client does so on its own past two thirds
        of its lifetime); raises :class:`PalyraError` (or ``OSError``, ``ValueError``) when it
        fails, keeping the old one."""
        if self._renewer is None:
            raise ValueError("this client was not made from a credentials directory; nothing to renew")
        self._renewer.renew()

    def _aio_credentials(self) -> tuple[str, grpc.ChannelCredentials]:
        if self._renewer is not None:
            pems = self._renewer.pems
            ca, cert, key = pems.ca, pems.cert, pems.key
        elif self._pems is not None and self._target is not None:
            ca, cert, key = self._pems
            return self._target, grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        else:
            raise ValueError("watch_secrets needs a client from connect() (it opens its own asyncio channel)")
        return self._target, grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- identity ---------------------------------------------------------------------------

    def whoami(self) -> identity_pb2.WhoAmIResponse:
        """Who the node thinks this caller is (principal type, device id, role, fingerprint)."""
        return self.identity.WhoAmI(identity_pb2.WhoAmIRequest())

    # --- vault ------------------------------------------------------------------------------

    def put_secret(
        self, scope: str, key: str, value: bytes | str, *, expected_version: int | None = None
    ) -> vault_pb2.SecretMetadata:
        """Stores a new version. ``expected_version`` makes it a compare-and-swap (0: the secret
        must not exist); a mismatch raises ``FAILED_PRECONDITION`` /
        ``ERROR_REASON_VERSION_CONFLICT``."""
        data = value.encode() if isinstance(value, str) else value
        request = vault_pb2.PutSecretRequest(scope=scope, key=key, value=data)
        if expected_version is not None:
            request.expected_version = expected_version
        return self.vault.PutSecret(request).metadata

    def get_secret(self, scope: str, key: str, *, version: int = 0) -> bytes:
        """The value of ``version`` (0: the latest)."""
        return self.vault.GetSecret(vault_pb2.GetSecretRequest(scope=scope, key=key, version=version)).value

    def secret_versions(self, scope: str, key: str) -> list[vault_pb2.SecretVersion]:
        """Every version of a secret, oldest first (values are never returned)."""
        response = self.vault.GetSecretMetadata(vault_pb2.GetSecretMetadataRequest(scope=scope, key=key))
        return list(response.versions)

    def list_secrets(self, scope: str, *, recursive: bool = False) -> Iterator[vault_pb2.SecretMetadata]:
        """The secrets in ``scope`` (and its sub-scopes with ``recursive``), page by page."""
        token = ""
        while True:
            page = self.vault.ListSecrets(
                vault_pb2.ListSecretsRequest(scope=scope, recursive=recursive, page_token=token)
            )
            yield from page.secrets
            token = page.next_page_token
            if not token:
                return

    def delete_secret(self, scope: str, key: str, *, destroy: bool = False) -> vault_pb2.SecretMetadata:
        """Soft-deletes (history kept), or with ``destroy`` erases every version."""
        return self.vault.DeleteSecret(vault_pb2.DeleteSecretRequest(scope=scope, key=key, destroy=destroy)).metadata

    async def watch_secrets(
        self,
        scope: str,
        *,
        recursive: bool = False,
        since_sequence: int = 0,
        progress: bool = False,
        backoff_initial: float = 0.25,
        backoff_max: float = 15.0,
    ) -> AsyncIterator[vault_pb2.WatchSecretsResponse]:
        """The changes of the secrets in ``scope`` (and its sub-scopes with ``recursive``), as
        they happen: an async generator of ``WatchSecretsResponse`` (``scope``, ``key``,
        ``version``, ``change`` — a ``vault_pb2.SecretChange`` —, ``sequence``, ``changed_at``),
        never values. First the changes after ``since_sequence`` (0: only new ones), then live.

        It remembers where it is: the last change's sequence, or the node's position from the
        progress markers it always asks for (the first says where the stream starts, later ones
        come while other scopes change). When the stream breaks (``UNAVAILABLE``, or an end the
        caller did not ask for) it reconnects after ``backoff_initial`` seconds, doubling up to
        ``backoff_max``, and resumes after that position: no gap, no repeat. With ``progress``
        the markers are yielded too (``change == SECRET_CHANGE_PROGRESS``, empty scope and key):
        the first one says the stream is live. Any other failure raises :class:`PalyraError`:
        ``PERMISSION_DENIED`` (scope not granted), ``UNAUTHENTICATED`` /
        ``ERROR_REASON_DEVICE_REVOKED``, ``OUT_OF_RANGE`` / ``ERROR_REASON_EVENTS_TRUNCATED``
        (``since_sequence`` older than the node keeps;
        ``.metadata["oldest_available_sequence"]`` says where to start over).
        Runs on an asyncio loop, with its own asyncio channel (renewed credentials are used from
        the next reconnect on). Stop it with ``break`` or ``aclose()``.
        """
        last = since_sequence
        delay = backoff_initial
        while True:
            if self._renewer is not None:
                await asyncio.to_thread(self._renewer.ensure_fresh)
            target, credentials = self._aio_credentials()
            async with grpc.aio.secure_channel(target, credentials) as channel:
                stub = vault_pb2_grpc.VaultServiceStub(channel)
                call = stub.WatchSecrets(
                    vault_pb2.WatchSecretsRequest(scope=scope, recursive=recursive, since_sequence=last, progress=True)
                )
                try:
                    async for change in call:
                        delay = backoff_initial
                        if change.change == vault_pb2.SECRET_CHANGE_PROGRESS:
                            last = max(last, change.sequence)
                            if progress:
                                yield change
                            continue
                        if change.sequence <= last:
                            continue  # never yield a change twice
                        last = change.sequence
                        yield change
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.UNAVAILABLE:
                        raise PalyraError.from_call(e) from None
                finally:
                    call.cancel()
            await asyncio.sleep(delay * random.uniform(0.75, 1.0))
            delay = min(backoff_max, delay * 2)


def connect(
    server: str | None = None,
    ca: PathOrPem | None = None,
    cert: PathOrPem | None = None,
    key: PathOrPem | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    renew: bool = True,
    on_renewal: Callable[[RenewalEvent], None] | None = None,
) -> Client:
    """Opens an mTLS channel to a node.

    ``connect(data_dir=D)`` (or ``connect(server, data_dir=D)``) uses ``D/operator/`` or
    ``D/client/``; ``connect(server, ca, cert, key)`` takes paths or PEM bytes. Without either,
    the CLI's default data dir is used. ``server`` is ``https://HOST:PORT`` (default
    ``https://127.0.0.1:7443``). The channel connects lazily: the first call reports a node
    that is down as ``UNAVAILABLE``.

    From a data dir (and unless ``renew=False``) the client renews its certificate on its own
    past two thirds of its lifetime, or with the device's identity key once it expired, and
    stores the new one in the directory's ``cert.pem``; ``on_renewal`` hears each attempt (a
    :class:`RenewalEvent`). See :mod:`palyra_client.renewal`.
    """
    server = server or DEFAULT_SERVER
    if ca is None and cert is None and key is None:
        creds = credentials_dir(data_dir if data_dir is not None else default_data_dir())
        if renew:
            renewer = Renewer(_target(server), creds, on_renewal=on_renewal)
            return Client(RenewingChannel(renewer), renewer=renewer)
        ca, cert, key = creds / "ca.pem", creds / "cert.pem", creds / "key.pem"
    elif ca is None or cert is None or key is None:
        raise ValueError("pass all of ca, cert and key, or a data_dir")
    pems = (_pem(ca), _pem(cert), _pem(key))
    credentials = grpc.ssl_channel_credentials(root_certificates=pems[0], private_key=pems[2], certificate_chain=pems[1])
    return Client(grpc.secure_channel(_target(server), credentials), target=_target(server), pems=pems)
