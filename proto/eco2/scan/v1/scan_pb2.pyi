import datetime

from eco2.character.v1 import character_pb2 as _character_pb2
from eco2.events.v1 import events_pb2 as _events_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScanBasis(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCAN_BASIS_UNSPECIFIED: _ClassVar[ScanBasis]
    SCAN_BASIS_VISION: _ClassVar[ScanBasis]
    SCAN_BASIS_HINT: _ClassVar[ScanBasis]
    SCAN_BASIS_ANSWER: _ClassVar[ScanBasis]
    SCAN_BASIS_UNCLASSIFIED: _ClassVar[ScanBasis]

class ScanStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCAN_STATUS_UNSPECIFIED: _ClassVar[ScanStatus]
    SCAN_STATUS_QUEUED: _ClassVar[ScanStatus]
    SCAN_STATUS_RUNNING: _ClassVar[ScanStatus]
    SCAN_STATUS_WAITING_INPUT: _ClassVar[ScanStatus]
    SCAN_STATUS_DONE: _ClassVar[ScanStatus]
    SCAN_STATUS_FAILED: _ClassVar[ScanStatus]
SCAN_BASIS_UNSPECIFIED: ScanBasis
SCAN_BASIS_VISION: ScanBasis
SCAN_BASIS_HINT: ScanBasis
SCAN_BASIS_ANSWER: ScanBasis
SCAN_BASIS_UNCLASSIFIED: ScanBasis
SCAN_STATUS_UNSPECIFIED: ScanStatus
SCAN_STATUS_QUEUED: ScanStatus
SCAN_STATUS_RUNNING: ScanStatus
SCAN_STATUS_WAITING_INPUT: ScanStatus
SCAN_STATUS_DONE: ScanStatus
SCAN_STATUS_FAILED: ScanStatus

class DisposalRule(_message.Message):
    __slots__ = ("document_id", "title", "steps", "exceptions")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    EXCEPTIONS_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    title: str
    steps: _containers.RepeatedScalarFieldContainer[str]
    exceptions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, document_id: _Optional[str] = ..., title: _Optional[str] = ..., steps: _Optional[_Iterable[str]] = ..., exceptions: _Optional[_Iterable[str]] = ...) -> None: ...

class ScanResult(_message.Message):
    __slots__ = ("scan_id", "image_key", "classification", "recyclable", "rules", "instructions", "explanation", "reward", "completed_at", "basis", "warnings", "vision_model")
    SCAN_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_KEY_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    RECYCLABLE_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    BASIS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    VISION_MODEL_FIELD_NUMBER: _ClassVar[int]
    scan_id: str
    image_key: str
    classification: _character_pb2.Classification
    recyclable: bool
    rules: _containers.RepeatedCompositeFieldContainer[DisposalRule]
    instructions: _containers.RepeatedScalarFieldContainer[str]
    explanation: str
    reward: _character_pb2.Reward
    completed_at: _timestamp_pb2.Timestamp
    basis: ScanBasis
    warnings: _containers.RepeatedScalarFieldContainer[str]
    vision_model: str
    def __init__(self, scan_id: _Optional[str] = ..., image_key: _Optional[str] = ..., classification: _Optional[_Union[_character_pb2.Classification, _Mapping]] = ..., recyclable: _Optional[bool] = ..., rules: _Optional[_Iterable[_Union[DisposalRule, _Mapping]]] = ..., instructions: _Optional[_Iterable[str]] = ..., explanation: _Optional[str] = ..., reward: _Optional[_Union[_character_pb2.Reward, _Mapping]] = ..., completed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., basis: _Optional[_Union[ScanBasis, str]] = ..., warnings: _Optional[_Iterable[str]] = ..., vision_model: _Optional[str] = ...) -> None: ...

class StreamScanRequest(_message.Message):
    __slots__ = ("image_key", "hint", "client_scan_id")
    IMAGE_KEY_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SCAN_ID_FIELD_NUMBER: _ClassVar[int]
    image_key: str
    hint: str
    client_scan_id: str
    def __init__(self, image_key: _Optional[str] = ..., hint: _Optional[str] = ..., client_scan_id: _Optional[str] = ...) -> None: ...

class SubmitScanRequest(_message.Message):
    __slots__ = ("image_key", "hint", "client_scan_id")
    IMAGE_KEY_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SCAN_ID_FIELD_NUMBER: _ClassVar[int]
    image_key: str
    hint: str
    client_scan_id: str
    def __init__(self, image_key: _Optional[str] = ..., hint: _Optional[str] = ..., client_scan_id: _Optional[str] = ...) -> None: ...

class SubmitScanResponse(_message.Message):
    __slots__ = ("job_id", "scan_id", "deduplicated")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SCAN_ID_FIELD_NUMBER: _ClassVar[int]
    DEDUPLICATED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    scan_id: str
    deduplicated: bool
    def __init__(self, job_id: _Optional[str] = ..., scan_id: _Optional[str] = ..., deduplicated: _Optional[bool] = ...) -> None: ...

class GetScanRequest(_message.Message):
    __slots__ = ("scan_id",)
    SCAN_ID_FIELD_NUMBER: _ClassVar[int]
    scan_id: str
    def __init__(self, scan_id: _Optional[str] = ...) -> None: ...

class GetScanResponse(_message.Message):
    __slots__ = ("result", "status", "job_id")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    result: ScanResult
    status: ScanStatus
    job_id: str
    def __init__(self, result: _Optional[_Union[ScanResult, _Mapping]] = ..., status: _Optional[_Union[ScanStatus, str]] = ..., job_id: _Optional[str] = ...) -> None: ...

class ProvideScanInputRequest(_message.Message):
    __slots__ = ("job_id", "input_id", "category", "text")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    input_id: str
    category: _character_pb2.WasteCategory
    text: str
    def __init__(self, job_id: _Optional[str] = ..., input_id: _Optional[str] = ..., category: _Optional[_Union[_character_pb2.WasteCategory, str]] = ..., text: _Optional[str] = ...) -> None: ...

class ProvideScanInputResponse(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ClassifyPhotoRequest(_message.Message):
    __slots__ = ("image_key", "hint")
    IMAGE_KEY_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    image_key: str
    hint: str
    def __init__(self, image_key: _Optional[str] = ..., hint: _Optional[str] = ...) -> None: ...

class ClassifyPhotoResponse(_message.Message):
    __slots__ = ("configured", "classification", "vision_model")
    CONFIGURED_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    VISION_MODEL_FIELD_NUMBER: _ClassVar[int]
    configured: bool
    classification: _character_pb2.Classification
    vision_model: str
    def __init__(self, configured: _Optional[bool] = ..., classification: _Optional[_Union[_character_pb2.Classification, _Mapping]] = ..., vision_model: _Optional[str] = ...) -> None: ...
