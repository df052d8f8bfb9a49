import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AuditDecision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIT_DECISION_UNSPECIFIED: _ClassVar[AuditDecision]
    AUDIT_DECISION_ALLOW: _ClassVar[AuditDecision]
    AUDIT_DECISION_DENY: _ClassVar[AuditDecision]
AUDIT_DECISION_UNSPECIFIED: AuditDecision
AUDIT_DECISION_ALLOW: AuditDecision
AUDIT_DECISION_DENY: AuditDecision

class AuditRecord(_message.Message):
    __slots__ = ("sequence", "at", "principal", "action", "resource", "decision", "reason", "hash")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    at: _timestamp_pb2.Timestamp
    principal: str
    action: str
    resource: str
    decision: AuditDecision
    reason: str
    hash: str
    def __init__(self, sequence: _Optional[int] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., principal: _Optional[str] = ..., action: _Optional[str] = ..., resource: _Optional[str] = ..., decision: _Optional[_Union[AuditDecision, str]] = ..., reason: _Optional[str] = ..., hash: _Optional[str] = ...) -> None: ...

class ListAuditRecordsRequest(_message.Message):
    __slots__ = ("since_sequence", "limit", "principal", "action")
    SINCE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    since_sequence: int
    limit: int
    principal: str
    action: str
    def __init__(self, since_sequence: _Optional[int] = ..., limit: _Optional[int] = ..., principal: _Optional[str] = ..., action: _Optional[str] = ...) -> None: ...

class ListAuditRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ...) -> None: ...

class VerifyAuditLogRequest(_message.Message):
    __slots__ = ("full",)
    FULL_FIELD_NUMBER: _ClassVar[int]
    full: bool
    def __init__(self, full: _Optional[bool] = ...) -> None: ...

class VerifyAuditLogResponse(_message.Message):
    __slots__ = ("ok", "records_checked", "first_bad_sequence", "problem", "from_sequence")
    OK_FIELD_NUMBER: _ClassVar[int]
    RECORDS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    FIRST_BAD_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    records_checked: int
    first_bad_sequence: int
    problem: str
    from_sequence: int
    def __init__(self, ok: _Optional[bool] = ..., records_checked: _Optional[int] = ..., first_bad_sequence: _Optional[int] = ..., problem: _Optional[str] = ..., from_sequence: _Optional[int] = ...) -> None: ...

class PruneAuditLogRequest(_message.Message):
    __slots__ = ("retain_records", "retain_days")
    RETAIN_RECORDS_FIELD_NUMBER: _ClassVar[int]
    RETAIN_DAYS_FIELD_NUMBER: _ClassVar[int]
    retain_records: int
    retain_days: int
    def __init__(self, retain_records: _Optional[int] = ..., retain_days: _Optional[int] = ...) -> None: ...

class PruneAuditLogResponse(_message.Message):
    __slots__ = ("removed", "first_sequence", "last_sequence", "checkpoint")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    removed: int
    first_sequence: int
    last_sequence: int
    checkpoint: AuditCheckpoint
    def __init__(self, removed: _Optional[int] = ..., first_sequence: _Optional[int] = ..., last_sequence: _Optional[int] = ..., checkpoint: _Optional[_Union[AuditCheckpoint, _Mapping]] = ...) -> None: ...

class AuditCheckpoint(_message.Message):
    __slots__ = ("sequence", "head", "at_unix_ms", "kind", "signature")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    head: str
    at_unix_ms: int
    kind: str
    signature: str
    def __init__(self, sequence: _Optional[int] = ..., head: _Optional[str] = ..., at_unix_ms: _Optional[int] = ..., kind: _Optional[str] = ..., signature: _Optional[str] = ...) -> None: ...

class GetAuditCheckpointRequest(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class GetAuditCheckpointResponse(_message.Message):
    __slots__ = ("checkpoint", "public_key", "hash_at_sequence")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    HASH_AT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    checkpoint: AuditCheckpoint
    public_key: str
    hash_at_sequence: str
    def __init__(self, checkpoint: _Optional[_Union[AuditCheckpoint, _Mapping]] = ..., public_key: _Optional[str] = ..., hash_at_sequence: _Optional[str] = ...) -> None: ...

class ExportAuditLogRequest(_message.Message):
    __slots__ = ("since_sequence", "follow")
    SINCE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    since_sequence: int
    follow: bool
    def __init__(self, since_sequence: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class ExportAuditLogResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ...) -> None: ...
