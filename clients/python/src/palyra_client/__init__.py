"""Python client for Palyra.

The gRPC stubs and typed messages are generated from the repository's ``proto/`` by
``clients/generate.sh`` (grpcio-tools) into ``palyra_client._proto``; the public names below are a
small hand-written layer on top:

- :func:`connect` opens the mTLS channel from a data dir (or explicit PEMs) and returns a
  :class:`Client` with the generated stubs and vault helpers;
- every failed call raises :class:`PalyraError`, with the gRPC ``code`` and the ``reason``
  (``palyra.common.v1.ErrorReason``) from the ``google.rpc.ErrorInfo`` status detail;
- :func:`pair` is the joining device's side of pairing (``docs/pairing-protocol.md`` in the
  repository);
- a client made from a data dir renews its certificate on its own past two thirds of its
  lifetime, or with the device's identity key after it expired (:mod:`palyra_client.renewal`);
- :meth:`Client.watch_secrets` is an async generator of a scope's changes that reconnects and
  resumes by sequence.

Calls are synchronous (grpcio); only ``watch_secrets`` runs on asyncio.
"""

from ._proto.palyra.audit.v1 import audit_pb2
from ._proto.palyra.auth.v1 import auth_pb2
from ._proto.palyra.console.v1 import console_pb2
from ._proto.palyra.identity.v1 import identity_pb2
from ._proto.palyra.pairing.v1 import pairing_pb2
from ._proto.palyra.policy.v1 import policy_pb2
from ._proto.palyra.vault.v1 import vault_pb2
from .client import DEFAULT_SERVER, Client, connect, credentials_dir, default_data_dir
from .errors import ERROR_DOMAIN, ErrorReason, PalyraError
from .pairing import EnrollmentToken, Paired, PairingFailed, PairingUri, pair
from .renewal import RenewalEvent

__all__ = [
    "DEFAULT_SERVER",
    "ERROR_DOMAIN",
    "Client",
    "EnrollmentToken",
    "ErrorReason",
    "Paired",
    "PairingFailed",
    "PairingUri",
    "PalyraError",
    "RenewalEvent",
    "audit_pb2",
    "auth_pb2",
    "connect",
    "console_pb2",
    "credentials_dir",
    "default_data_dir",
    "identity_pb2",
    "pair",
    "pairing_pb2",
    "policy_pb2",
    "vault_pb2",
]
