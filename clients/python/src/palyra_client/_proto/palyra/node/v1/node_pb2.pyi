import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from palyra_client._proto.palyra.audit.v1 import audit_pb2 as _audit_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Request(_message.Message):
    __slots__ = ("method", "since_sequence", "kinds", "at_sequence")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SINCE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    AT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    method: str
    since_sequence: int
    kinds: _containers.RepeatedScalarFieldContainer[str]
    at_sequence: int
    def __init__(self, method: _Optional[str] = ..., since_sequence: _Optional[int] = ..., kinds: _Optional[_Iterable[str]] = ..., at_sequence: _Optional[int] = ...) -> None: ...

class AuditCheckpointResponse(_message.Message):
    __slots__ = ("checkpoint", "public_key", "hash_at_sequence")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    HASH_AT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    checkpoint: _audit_pb2.AuditCheckpoint
    public_key: str
    hash_at_sequence: str
    def __init__(self, checkpoint: _Optional[_Union[_audit_pb2.AuditCheckpoint, _Mapping]] = ..., public_key: _Optional[str] = ..., hash_at_sequence: _Optional[str] = ...) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("status", "device_id", "version", "uptime_seconds")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    status: str
    device_id: str
    version: str
    uptime_seconds: int
    def __init__(self, status: _Optional[str] = ..., device_id: _Optional[str] = ..., version: _Optional[str] = ..., uptime_seconds: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("sequence", "at", "kind", "subject", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    at: _timestamp_pb2.Timestamp
    kind: str
    subject: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, sequence: _Optional[int] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[str] = ..., subject: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "oldest_available_sequence")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OLDEST_AVAILABLE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    oldest_available_sequence: int
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., oldest_available_sequence: _Optional[int] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("health", "event", "error", "audit_checkpoint")
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    AUDIT_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    health: HealthResponse
    event: Event
    error: Error
    audit_checkpoint: AuditCheckpointResponse
    def __init__(self, health: _Optional[_Union[HealthResponse, _Mapping]] = ..., event: _Optional[_Union[Event, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., audit_checkpoint: _Optional[_Union[AuditCheckpointResponse, _Mapping]] = ...) -> None: ...
