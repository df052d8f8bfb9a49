import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SecretChange(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SECRET_CHANGE_UNSPECIFIED: _ClassVar[SecretChange]
    SECRET_CHANGE_PUT: _ClassVar[SecretChange]
    SECRET_CHANGE_DELETE: _ClassVar[SecretChange]
    SECRET_CHANGE_DESTROY: _ClassVar[SecretChange]
    SECRET_CHANGE_PROGRESS: _ClassVar[SecretChange]
SECRET_CHANGE_UNSPECIFIED: SecretChange
SECRET_CHANGE_PUT: SecretChange
SECRET_CHANGE_DELETE: SecretChange
SECRET_CHANGE_DESTROY: SecretChange
SECRET_CHANGE_PROGRESS: SecretChange

class SecretMetadata(_message.Message):
    __slots__ = ("scope", "key", "object_id", "version", "created_at", "updated_at", "deleted", "size")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    scope: str
    key: str
    object_id: str
    version: int
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    deleted: bool
    size: int
    def __init__(self, scope: _Optional[str] = ..., key: _Optional[str] = ..., object_id: _Optional[str] = ..., version: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deleted: _Optional[bool] = ..., size: _Optional[int] = ...) -> None: ...

class SecretVersion(_message.Message):
    __slots__ = ("version", "created_at", "size", "destroyed")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DESTROYED_FIELD_NUMBER: _ClassVar[int]
    version: int
    created_at: _timestamp_pb2.Timestamp
    size: int
    destroyed: bool
    def __init__(self, version: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., size: _Optional[int] = ..., destroyed: _Optional[bool] = ...) -> None: ...

class PutSecretRequest(_message.Message):
    __slots__ = ("scope", "key", "value", "expected_version")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    scope: str
    key: str
    value: bytes
    expected_version: int
    def __init__(self, scope: _Optional[str] = ..., key: _Optional[str] = ..., value: _Optional[bytes] = ..., expected_version: _Optional[int] = ...) -> None: ...

class PutSecretResponse(_message.Message):
    __slots__ = ("metadata",)
    METADATA_FIELD_NUMBER: _ClassVar[int]
    metadata: SecretMetadata
    def __init__(self, metadata: _Optional[_Union[SecretMetadata, _Mapping]] = ...) -> None: ...

class GetSecretRequest(_message.Message):
    __slots__ = ("scope", "key", "version")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    scope: str
    key: str
    version: int
    def __init__(self, scope: _Optional[str] = ..., key: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetSecretResponse(_message.Message):
    __slots__ = ("value", "metadata", "version")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    value: bytes
    metadata: SecretMetadata
    version: int
    def __init__(self, value: _Optional[bytes] = ..., metadata: _Optional[_Union[SecretMetadata, _Mapping]] = ..., version: _Optional[int] = ...) -> None: ...

class ListSecretsRequest(_message.Message):
    __slots__ = ("scope", "recursive", "page_size", "page_token", "include_deleted")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    RECURSIVE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DELETED_FIELD_NUMBER: _ClassVar[int]
    scope: str
    recursive: bool
    page_size: int
    page_token: str
    include_deleted: bool
    def __init__(self, scope: _Optional[str] = ..., recursive: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_deleted: _Optional[bool] = ...) -> None: ...

class ListSecretsResponse(_message.Message):
    __slots__ = ("secrets", "next_page_token")
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    secrets: _containers.RepeatedCompositeFieldContainer[SecretMetadata]
    next_page_token: str
    def __init__(self, secrets: _Optional[_Iterable[_Union[SecretMetadata, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteSecretRequest(_message.Message):
    __slots__ = ("scope", "key", "destroy")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    DESTROY_FIELD_NUMBER: _ClassVar[int]
    scope: str
    key: str
    destroy: bool
    def __init__(self, scope: _Optional[str] = ..., key: _Optional[str] = ..., destroy: _Optional[bool] = ...) -> None: ...

class DeleteSecretResponse(_message.Message):
    __slots__ = ("metadata",)
    METADATA_FIELD_NUMBER: _ClassVar[int]
    metadata: SecretMetadata
    def __init__(self, metadata: _Optional[_Union[SecretMetadata, _Mapping]] = ...) -> None: ...

class GetSecretMetadataRequest(_message.Message):
    __slots__ = ("scope", "key")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    scope: str
    key: str
    def __init__(self, scope: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class GetSecretMetadataResponse(_message.Message):
    __slots__ = ("metadata", "versions")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    metadata: SecretMetadata
    versions: _containers.RepeatedCompositeFieldContainer[SecretVersion]
    def __init__(self, metadata: _Optional[_Union[SecretMetadata, _Mapping]] = ..., versions: _Optional[_Iterable[_Union[SecretVersion, _Mapping]]] = ...) -> None: ...

class RotateKeyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RotateKeyResponse(_message.Message):
    __slots__ = ("generation", "rewrapped")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    REWRAPPED_FIELD_NUMBER: _ClassVar[int]
    generation: int
    rewrapped: int
    def __init__(self, generation: _Optional[int] = ..., rewrapped: _Optional[int] = ...) -> None: ...

class WatchSecretsRequest(_message.Message):
    __slots__ = ("scope", "recursive", "since_sequence", "progress")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    RECURSIVE_FIELD_NUMBER: _ClassVar[int]
    SINCE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    scope: str
    recursive: bool
    since_sequence: int
    progress: bool
    def __init__(self, scope: _Optional[str] = ..., recursive: _Optional[bool] = ..., since_sequence: _Optional[int] = ..., progress: _Optional[bool] = ...) -> None: ...

class WatchSecretsResponse(_message.Message):
    __slots__ = ("scope", "key", "version", "change", "sequence", "changed_at")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    scope: str
    key: str
    version: int
    change: SecretChange
    sequence: int
    changed_at: _timestamp_pb2.Timestamp
    def __init__(self, scope: _Optional[str] = ..., key: _Optional[str] = ..., version: _Optional[int] = ..., change: _Optional[_Union[SecretChange, str]] = ..., sequence: _Optional[int] = ..., changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
