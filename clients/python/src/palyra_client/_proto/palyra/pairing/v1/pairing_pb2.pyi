import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PairingState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAIRING_STATE_UNSPECIFIED: _ClassVar[PairingState]
    PAIRING_STATE_PENDING: _ClassVar[PairingState]
    PAIRING_STATE_APPROVED: _ClassVar[PairingState]
    PAIRING_STATE_REJECTED: _ClassVar[PairingState]
    PAIRING_STATE_EXPIRED: _ClassVar[PairingState]

class EnrollmentKeyState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENROLLMENT_KEY_STATE_UNSPECIFIED: _ClassVar[EnrollmentKeyState]
    ENROLLMENT_KEY_STATE_ACTIVE: _ClassVar[EnrollmentKeyState]
    ENROLLMENT_KEY_STATE_USED_UP: _ClassVar[EnrollmentKeyState]
    ENROLLMENT_KEY_STATE_EXPIRED: _ClassVar[EnrollmentKeyState]
    ENROLLMENT_KEY_STATE_REVOKED: _ClassVar[EnrollmentKeyState]
PAIRING_STATE_UNSPECIFIED: PairingState
PAIRING_STATE_PENDING: PairingState
PAIRING_STATE_APPROVED: PairingState
PAIRING_STATE_REJECTED: PairingState
PAIRING_STATE_EXPIRED: PairingState
ENROLLMENT_KEY_STATE_UNSPECIFIED: EnrollmentKeyState
ENROLLMENT_KEY_STATE_ACTIVE: EnrollmentKeyState
ENROLLMENT_KEY_STATE_USED_UP: EnrollmentKeyState
ENROLLMENT_KEY_STATE_EXPIRED: EnrollmentKeyState
ENROLLMENT_KEY_STATE_REVOKED: EnrollmentKeyState

class PairingRequest(_message.Message):
    __slots__ = ("request_id", "device_name", "fingerprint", "role", "state", "created_at", "decided_at", "peer_address", "device_id", "expires_at", "reject_reason", "scopes")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REJECT_REASON_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    device_name: str
    fingerprint: str
    role: str
    state: PairingState
    created_at: _timestamp_pb2.Timestamp
    decided_at: _timestamp_pb2.Timestamp
    peer_address: str
    device_id: str
    expires_at: _timestamp_pb2.Timestamp
    reject_reason: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[str] = ..., device_name: _Optional[str] = ..., fingerprint: _Optional[str] = ..., role: _Optional[str] = ..., state: _Optional[_Union[PairingState, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decided_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., peer_address: _Optional[str] = ..., device_id: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reject_reason: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ...) -> None: ...

class CreatePairingCodeRequest(_message.Message):
    __slots__ = ("ttl_seconds", "role", "max_attempts")
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ttl_seconds: int
    role: str
    max_attempts: int
    def __init__(self, ttl_seconds: _Optional[int] = ..., role: _Optional[str] = ..., max_attempts: _Optional[int] = ...) -> None: ...

class CreatePairingCodeResponse(_message.Message):
    __slots__ = ("code_id", "pin", "uri", "expires_at", "max_attempts", "role")
    CODE_ID_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    code_id: str
    pin: str
    uri: str
    expires_at: _timestamp_pb2.Timestamp
    max_attempts: int
    role: str
    def __init__(self, code_id: _Optional[str] = ..., pin: _Optional[str] = ..., uri: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_attempts: _Optional[int] = ..., role: _Optional[str] = ...) -> None: ...

class StartPairingRequest(_message.Message):
    __slots__ = ("code_id", "device_name", "signing_public_key", "agreement_public_key", "csr_pem", "pake_message")
    CODE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    SIGNING_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    PAKE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code_id: str
    device_name: str
    signing_public_key: bytes
    agreement_public_key: bytes
    csr_pem: str
    pake_message: bytes
    def __init__(self, code_id: _Optional[str] = ..., device_name: _Optional[str] = ..., signing_public_key: _Optional[bytes] = ..., agreement_public_key: _Optional[bytes] = ..., csr_pem: _Optional[str] = ..., pake_message: _Optional[bytes] = ...) -> None: ...

class StartPairingResponse(_message.Message):
    __slots__ = ("session_id", "pake_message", "server_confirmation", "expires_at")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PAKE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SERVER_CONFIRMATION_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    pake_message: bytes
    server_confirmation: bytes
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, session_id: _Optional[str] = ..., pake_message: _Optional[bytes] = ..., server_confirmation: _Optional[bytes] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class FinishPairingRequest(_message.Message):
    __slots__ = ("session_id", "client_confirmation", "signature")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CONFIRMATION_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    client_confirmation: bytes
    signature: bytes
    def __init__(self, session_id: _Optional[str] = ..., client_confirmation: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class FinishPairingResponse(_message.Message):
    __slots__ = ("request_id", "state")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    state: PairingState
    def __init__(self, request_id: _Optional[str] = ..., state: _Optional[_Union[PairingState, str]] = ...) -> None: ...

class GetPairingStatusRequest(_message.Message):
    __slots__ = ("request_id", "timestamp_unix_ms", "signature")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    timestamp_unix_ms: int
    signature: bytes
    def __init__(self, request_id: _Optional[str] = ..., timestamp_unix_ms: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class GetPairingStatusResponse(_message.Message):
    __slots__ = ("state", "device_id", "certificate_pem", "ca_certificate_pem")
    STATE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    state: PairingState
    device_id: str
    certificate_pem: str
    ca_certificate_pem: str
    def __init__(self, state: _Optional[_Union[PairingState, str]] = ..., device_id: _Optional[str] = ..., certificate_pem: _Optional[str] = ..., ca_certificate_pem: _Optional[str] = ...) -> None: ...

class ListPairingRequestsRequest(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: PairingState
    def __init__(self, state: _Optional[_Union[PairingState, str]] = ...) -> None: ...

class ListPairingRequestsResponse(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[PairingRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[PairingRequest, _Mapping]]] = ...) -> None: ...

class ApprovePairingRequest(_message.Message):
    __slots__ = ("request_id", "role", "scopes")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    role: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[str] = ..., role: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ...) -> None: ...

class ApprovePairingResponse(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: PairingRequest
    def __init__(self, request: _Optional[_Union[PairingRequest, _Mapping]] = ...) -> None: ...

class RejectPairingRequest(_message.Message):
    __slots__ = ("request_id", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RejectPairingResponse(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: PairingRequest
    def __init__(self, request: _Optional[_Union[PairingRequest, _Mapping]] = ...) -> None: ...

class EnrollmentKey(_message.Message):
    __slots__ = ("key_id", "role", "scopes", "max_uses", "uses", "created_at", "expires_at", "revoked_at", "state")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    role: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    max_uses: int
    uses: int
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    revoked_at: _timestamp_pb2.Timestamp
    state: EnrollmentKeyState
    def __init__(self, key_id: _Optional[str] = ..., role: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., max_uses: _Optional[int] = ..., uses: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[EnrollmentKeyState, str]] = ...) -> None: ...

class CreateEnrollmentKeyRequest(_message.Message):
    __slots__ = ("role", "scopes", "max_uses", "ttl_seconds")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    role: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    max_uses: int
    ttl_seconds: int
    def __init__(self, role: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., max_uses: _Optional[int] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class CreateEnrollmentKeyResponse(_message.Message):
    __slots__ = ("key_id", "token", "expires_at", "key")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    token: str
    expires_at: _timestamp_pb2.Timestamp
    key: EnrollmentKey
    def __init__(self, key_id: _Optional[str] = ..., token: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., key: _Optional[_Union[EnrollmentKey, _Mapping]] = ...) -> None: ...

class ListEnrollmentKeysRequest(_message.Message):
    __slots__ = ("include_inactive",)
    INCLUDE_INACTIVE_FIELD_NUMBER: _ClassVar[int]
    include_inactive: bool
    def __init__(self, include_inactive: _Optional[bool] = ...) -> None: ...

class ListEnrollmentKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[EnrollmentKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[EnrollmentKey, _Mapping]]] = ...) -> None: ...

class RevokeEnrollmentKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class RevokeEnrollmentKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: EnrollmentKey
    def __init__(self, key: _Optional[_Union[EnrollmentKey, _Mapping]] = ...) -> None: ...
