import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateLoginTokenRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateLoginTokenResponse(_message.Message):
    __slots__ = ("login_url", "expires_at", "console_url")
    LOGIN_URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CONSOLE_URL_FIELD_NUMBER: _ClassVar[int]
    login_url: str
    expires_at: _timestamp_pb2.Timestamp
    console_url: str
    def __init__(self, login_url: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., console_url: _Optional[str] = ...) -> None: ...
