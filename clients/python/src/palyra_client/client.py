"""The mTLS channel to a node and typed access to its services."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import grpc

from ._proto.palyra.audit.v1 import audit_pb2_grpc
from ._proto.palyra.auth.v1 import auth_pb2_grpc
from ._proto.palyra.console.v1 import console_pb2_grpc
from ._proto.palyra.identity.v1 import identity_pb2, identity_pb2_grpc
from ._proto.palyra.pairing.v1 import pairing_pb2_grpc
from ._proto.palyra.policy.v1 import policy_pb2_grpc
from ._proto.palyra.vault.v1 import vault_pb2, vault_pb2_grpc
from .errors import _ErrorInterceptor

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
    :class:`palyra_client.PalyraError`. Use it as a context manager, or call :meth:`close`."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = grpc.intercept_channel(channel, _ErrorInterceptor())
        self._raw = channel
        self.vault = vault_pb2_grpc.VaultServiceStub(self.channel)
        self.identity = identity_pb2_grpc.IdentityServiceStub(self.channel)
        self.pairing = pairing_pb2_grpc.PairingServiceStub(self.channel)
        self.policy = policy_pb2_grpc.PolicyServiceStub(self.channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(self.channel)
        self.auth = auth_pb2_grpc.AuthProfileServiceStub(self.channel)
        self.console = console_pb2_grpc.ConsoleServiceStub(self.channel)

    def close(self) -> None:
        self._raw.close()

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


def connect(
    server: str | None = None,
    ca: PathOrPem | None = None,
    cert: PathOrPem | None = None,
    key: PathOrPem | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
) -> Client:
    """Opens an mTLS channel to a node.

    ``connect(data_dir=D)`` (or ``connect(server, data_dir=D)``) uses ``D/operator/`` or
    ``D/client/``; ``connect(server, ca, cert, key)`` takes paths or PEM bytes. Without either,
    the CLI's default data dir is used. ``server`` is ``https://HOST:PORT`` (default
    ``https://127.0.0.1:7443``). The channel connects lazily: the first call reports a node
    that is down as ``UNAVAILABLE``.
    """
    server = server or DEFAULT_SERVER
    if ca is None and cert is None and key is None:
        creds = credentials_dir(data_dir if data_dir is not None else default_data_dir())
        ca, cert, key = creds / "ca.pem", creds / "cert.pem", creds / "key.pem"
    elif ca is None or cert is None or key is None:
        raise ValueError("pass all of ca, cert and key, or a data_dir")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_pem(ca), private_key=_pem(key), certificate_chain=_pem(cert)
    )
    return Client(grpc.secure_channel(_target(server), credentials))
