import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageChannel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_CHANNEL_UNSPECIFIED: _ClassVar[ImageChannel]
    IMAGE_CHANNEL_CHAT: _ClassVar[ImageChannel]
    IMAGE_CHANNEL_SCAN: _ClassVar[ImageChannel]
    IMAGE_CHANNEL_PROFILE: _ClassVar[ImageChannel]
    IMAGE_CHANNEL_GENERATED: _ClassVar[ImageChannel]

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PNG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_JPEG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_GIF: _ClassVar[ImageFormat]
    IMAGE_FORMAT_WEBP: _ClassVar[ImageFormat]
IMAGE_CHANNEL_UNSPECIFIED: ImageChannel
IMAGE_CHANNEL_CHAT: ImageChannel
IMAGE_CHANNEL_SCAN: ImageChannel
IMAGE_CHANNEL_PROFILE: ImageChannel
IMAGE_CHANNEL_GENERATED: ImageChannel
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
IMAGE_FORMAT_PNG: ImageFormat
IMAGE_FORMAT_JPEG: ImageFormat
IMAGE_FORMAT_GIF: ImageFormat
IMAGE_FORMAT_WEBP: ImageFormat

class Image(_message.Message):
    __slots__ = ("key", "sha256", "format", "content_type", "size_bytes", "channel", "filename", "created_at")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    key: str
    sha256: str
    format: ImageFormat
    content_type: str
    size_bytes: int
    channel: ImageChannel
    filename: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, key: _Optional[str] = ..., sha256: _Optional[str] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., content_type: _Optional[str] = ..., size_bytes: _Optional[int] = ..., channel: _Optional[_Union[ImageChannel, str]] = ..., filename: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UploadMetadata(_message.Message):
    __slots__ = ("channel", "content_type", "filename")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    channel: ImageChannel
    content_type: str
    filename: str
    def __init__(self, channel: _Optional[_Union[ImageChannel, str]] = ..., content_type: _Optional[str] = ..., filename: _Optional[str] = ...) -> None: ...

class UploadRequest(_message.Message):
    __slots__ = ("metadata", "chunk")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    metadata: UploadMetadata
    chunk: bytes
    def __init__(self, metadata: _Optional[_Union[UploadMetadata, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadResponse(_message.Message):
    __slots__ = ("image", "deduplicated")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    DEDUPLICATED_FIELD_NUMBER: _ClassVar[int]
    image: Image
    deduplicated: bool
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., deduplicated: _Optional[bool] = ...) -> None: ...

class GetImageRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class GetImageResponse(_message.Message):
    __slots__ = ("image", "signed_url", "url_expires_at")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    SIGNED_URL_FIELD_NUMBER: _ClassVar[int]
    URL_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    image: Image
    signed_url: str
    url_expires_at: _timestamp_pb2.Timestamp
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., signed_url: _Optional[str] = ..., url_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReadImageRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class ReadImageResponse(_message.Message):
    __slots__ = ("image", "chunk")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    image: Image
    chunk: bytes
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...
