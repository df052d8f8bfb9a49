"""One exception type for every failed call: the gRPC code plus Palyra's machine-readable
reason (``palyra.common.v1.ErrorReason``), read from the ``google.rpc.ErrorInfo`` that the node
puts in the ``grpc-status-details-bin`` trailer."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ._proto.palyra.common.v1 import errors_pb2

#: The ``ErrorReason`` enum, generated from ``proto/palyra/common/v1/errors.proto``.
ErrorReason = errors_pb2.ErrorReason

#: The ``ErrorInfo.domain`` of Palyra's reasons.
ERROR_DOMAIN = "palyra.dev"


class PalyraError(grpc.RpcError):
    """A call failed. ``code`` is the ``grpc.StatusCode``; ``reason`` is the ErrorReason name
    (for example ``"ERROR_REASON_VERSION_CONFLICT"``), or ``""`` when the status carried none
    (transport failures, for instance); ``metadata`` is the ErrorInfo's metadata."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}" + (f" [{reason}]" if reason else ""))
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})

    @property
    def reason_value(self) -> int:
        """The reason as an ``ErrorReason`` number (``ERROR_REASON_UNSPECIFIED`` when unknown)."""
        try:
            return ErrorReason.Value(self.reason)
        except ValueError:
            return ErrorReason.ERROR_REASON_UNSPECIFIED

    @classmethod
    def from_call(cls, call: Any) -> PalyraError:
        """Builds the error from a failed ``grpc.Call`` (a ``grpc.RpcError``)."""
        code = call.code() if hasattr(call, "code") else grpc.StatusCode.UNKNOWN
        message = call.details() if hasattr(call, "details") else str(call)
        reason = domain = ""
        metadata: dict[str, str] = {}
        try:
            status = rpc_status.from_call(call)
        except ValueError:
            # The details disagree with the status code/message: not trustworthy, ignore them.
            status = None
        if status is not None:
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
                    break
        return cls(code, message or "", reason, domain, metadata)


class _ErrorInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Raises every failed unary call as a :class:`PalyraError`."""

    def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        outcome = continuation(client_call_details, request)
        if outcome.exception() is not None:
            raise PalyraError.from_call(outcome)
        return outcome
