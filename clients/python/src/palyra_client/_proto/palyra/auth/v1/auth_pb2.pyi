import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AuthProfileKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUTH_PROFILE_KIND_UNSPECIFIED: _ClassVar[AuthProfileKind]
    AUTH_PROFILE_KIND_API_KEY: _ClassVar[AuthProfileKind]
    AUTH_PROFILE_KIND_OAUTH2: _ClassVar[AuthProfileKind]

class AuthProfileStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUTH_PROFILE_STATUS_UNSPECIFIED: _ClassVar[AuthProfileStatus]
    AUTH_PROFILE_STATUS_READY: _ClassVar[AuthProfileStatus]
    AUTH_PROFILE_STATUS_NEEDS_AUTHORIZATION: _ClassVar[AuthProfileStatus]
    AUTH_PROFILE_STATUS_NEEDS_REAUTHORIZATION: _ClassVar[AuthProfileStatus]
AUTH_PROFILE_KIND_UNSPECIFIED: AuthProfileKind
AUTH_PROFILE_KIND_API_KEY: AuthProfileKind
AUTH_PROFILE_KIND_OAUTH2: AuthProfileKind
AUTH_PROFILE_STATUS_UNSPECIFIED: AuthProfileStatus
AUTH_PROFILE_STATUS_READY: AuthProfileStatus
AUTH_PROFILE_STATUS_NEEDS_AUTHORIZATION: AuthProfileStatus
AUTH_PROFILE_STATUS_NEEDS_REAUTHORIZATION: AuthProfileStatus

class OAuth2Config(_message.Message):
    __slots__ = ("client_id", "authorize_url", "token_url", "scopes", "redirect_uri")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZE_URL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_URL_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_URI_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    authorize_url: str
    token_url: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    redirect_uri: str
    def __init__(self, client_id: _Optional[str] = ..., authorize_url: _Optional[str] = ..., token_url: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., redirect_uri: _Optional[str] = ...) -> None: ...

class AuthProfile(_message.Message):
    __slots__ = ("name", "provider", "kind", "oauth2", "status", "created_at", "updated_at", "access_token_expires_at", "last_error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OAUTH2_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    provider: str
    kind: AuthProfileKind
    oauth2: OAuth2Config
    status: AuthProfileStatus
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    access_token_expires_at: _timestamp_pb2.Timestamp
    last_error: str
    def __init__(self, name: _Optional[str] = ..., provider: _Optional[str] = ..., kind: _Optional[_Union[AuthProfileKind, str]] = ..., oauth2: _Optional[_Union[OAuth2Config, _Mapping]] = ..., status: _Optional[_Union[AuthProfileStatus, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., access_token_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[str] = ...) -> None: ...

class CreateProfileRequest(_message.Message):
    __slots__ = ("name", "provider", "kind", "api_key", "oauth2")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    OAUTH2_FIELD_NUMBER: _ClassVar[int]
    name: str
    provider: str
    kind: AuthProfileKind
    api_key: bytes
    oauth2: OAuth2Config
    def __init__(self, name: _Optional[str] = ..., provider: _Optional[str] = ..., kind: _Optional[_Union[AuthProfileKind, str]] = ..., api_key: _Optional[bytes] = ..., oauth2: _Optional[_Union[OAuth2Config, _Mapping]] = ...) -> None: ...

class CreateProfileResponse(_message.Message):
    __slots__ = ("profile",)
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    profile: AuthProfile
    def __init__(self, profile: _Optional[_Union[AuthProfile, _Mapping]] = ...) -> None: ...

class ListProfilesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListProfilesResponse(_message.Message):
    __slots__ = ("profiles",)
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    profiles: _containers.RepeatedCompositeFieldContainer[AuthProfile]
    def __init__(self, profiles: _Optional[_Iterable[_Union[AuthProfile, _Mapping]]] = ...) -> None: ...

class GetProfileRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetProfileResponse(_message.Message):
    __slots__ = ("profile",)
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    profile: AuthProfile
    def __init__(self, profile: _Optional[_Union[AuthProfile, _Mapping]] = ...) -> None: ...

class DeleteProfileRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteProfileResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StartAuthorizationRequest(_message.Message):
    __slots__ = ("name", "redirect_uri")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_URI_FIELD_NUMBER: _ClassVar[int]
    name: str
    redirect_uri: str
    def __init__(self, name: _Optional[str] = ..., redirect_uri: _Optional[str] = ...) -> None: ...

class StartAuthorizationResponse(_message.Message):
    __slots__ = ("authorize_url", "state", "expires_at")
    AUTHORIZE_URL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    authorize_url: str
    state: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, authorize_url: _Optional[str] = ..., state: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CompleteAuthorizationRequest(_message.Message):
    __slots__ = ("state", "code")
    STATE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    state: str
    code: str
    def __init__(self, state: _Optional[str] = ..., code: _Optional[str] = ...) -> None: ...

class CompleteAuthorizationResponse(_message.Message):
    __slots__ = ("profile",)
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    profile: AuthProfile
    def __init__(self, profile: _Optional[_Union[AuthProfile, _Mapping]] = ...) -> None: ...

class GetAccessTokenRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetAccessTokenResponse(_message.Message):
    __slots__ = ("access_token", "token_type", "expires_at")
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TYPE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    access_token: str
    token_type: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, access_token: _Optional[str] = ..., token_type: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RevokeProfileRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RevokeProfileResponse(_message.Message):
    __slots__ = ("profile",)
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    profile: AuthProfile
    def __init__(self, profile: _Optional[_Union[AuthProfile, _Mapping]] = ...) -> None: ...
