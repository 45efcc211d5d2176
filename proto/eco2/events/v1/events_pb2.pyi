import datetime

from google.protobuf import any_pb2 as _any_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_STAGE: _ClassVar[EventKind]
    EVENT_KIND_TOKEN: _ClassVar[EventKind]
    EVENT_KIND_TOOL: _ClassVar[EventKind]
    EVENT_KIND_NEEDS_INPUT: _ClassVar[EventKind]
    EVENT_KIND_DONE: _ClassVar[EventKind]
    EVENT_KIND_ERROR: _ClassVar[EventKind]

class JobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_KIND_UNSPECIFIED: _ClassVar[JobKind]
    JOB_KIND_CHAT: _ClassVar[JobKind]
    JOB_KIND_SCAN: _ClassVar[JobKind]

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_QUEUED: _ClassVar[Stage]
    STAGE_INTENT: _ClassVar[Stage]
    STAGE_VISION: _ClassVar[Stage]
    STAGE_ROUTER: _ClassVar[Stage]
    STAGE_SUBAGENT: _ClassVar[Stage]
    STAGE_AGGREGATE: _ClassVar[Stage]
    STAGE_ANSWER: _ClassVar[Stage]
    STAGE_EVALUATE: _ClassVar[Stage]
    STAGE_FALLBACK: _ClassVar[Stage]
    STAGE_SUMMARIZE: _ClassVar[Stage]
    STAGE_RULE: _ClassVar[Stage]
    STAGE_REWARD: _ClassVar[Stage]
    STAGE_PERSIST: _ClassVar[Stage]

class StagePhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_PHASE_UNSPECIFIED: _ClassVar[StagePhase]
    STAGE_PHASE_STARTED: _ClassVar[StagePhase]
    STAGE_PHASE_PROGRESS: _ClassVar[StagePhase]
    STAGE_PHASE_FINISHED: _ClassVar[StagePhase]
    STAGE_PHASE_FAILED: _ClassVar[StagePhase]
    STAGE_PHASE_SKIPPED: _ClassVar[StagePhase]

class ToolPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOOL_PHASE_UNSPECIFIED: _ClassVar[ToolPhase]
    TOOL_PHASE_STARTED: _ClassVar[ToolPhase]
    TOOL_PHASE_PROGRESS: _ClassVar[ToolPhase]
    TOOL_PHASE_RESULT: _ClassVar[ToolPhase]
    TOOL_PHASE_FAILED: _ClassVar[ToolPhase]

class InputKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INPUT_KIND_UNSPECIFIED: _ClassVar[InputKind]
    INPUT_KIND_LOCATION: _ClassVar[InputKind]
    INPUT_KIND_TEXT: _ClassVar[InputKind]
    INPUT_KIND_CONFIRMATION: _ClassVar[InputKind]
    INPUT_KIND_CHOICE: _ClassVar[InputKind]

class JobStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATUS_UNSPECIFIED: _ClassVar[JobStatus]
    JOB_STATUS_QUEUED: _ClassVar[JobStatus]
    JOB_STATUS_RUNNING: _ClassVar[JobStatus]
    JOB_STATUS_WAITING_INPUT: _ClassVar[JobStatus]
    JOB_STATUS_SUCCEEDED: _ClassVar[JobStatus]
    JOB_STATUS_FAILED: _ClassVar[JobStatus]
    JOB_STATUS_CANCELLED: _ClassVar[JobStatus]
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_STAGE: EventKind
EVENT_KIND_TOKEN: EventKind
EVENT_KIND_TOOL: EventKind
EVENT_KIND_NEEDS_INPUT: EventKind
EVENT_KIND_DONE: EventKind
EVENT_KIND_ERROR: EventKind
JOB_KIND_UNSPECIFIED: JobKind
JOB_KIND_CHAT: JobKind
JOB_KIND_SCAN: JobKind
STAGE_UNSPECIFIED: Stage
STAGE_QUEUED: Stage
STAGE_INTENT: Stage
STAGE_VISION: Stage
STAGE_ROUTER: Stage
STAGE_SUBAGENT: Stage
STAGE_AGGREGATE: Stage
STAGE_ANSWER: Stage
STAGE_EVALUATE: Stage
STAGE_FALLBACK: Stage
STAGE_SUMMARIZE: Stage
STAGE_RULE: Stage
STAGE_REWARD: Stage
STAGE_PERSIST: Stage
STAGE_PHASE_UNSPECIFIED: StagePhase
STAGE_PHASE_STARTED: StagePhase
STAGE_PHASE_PROGRESS: StagePhase
STAGE_PHASE_FINISHED: StagePhase
STAGE_PHASE_FAILED: StagePhase
STAGE_PHASE_SKIPPED: StagePhase
TOOL_PHASE_UNSPECIFIED: ToolPhase
TOOL_PHASE_STARTED: ToolPhase
TOOL_PHASE_PROGRESS: ToolPhase
TOOL_PHASE_RESULT: ToolPhase
TOOL_PHASE_FAILED: ToolPhase
INPUT_KIND_UNSPECIFIED: InputKind
INPUT_KIND_LOCATION: InputKind
INPUT_KIND_TEXT: InputKind
INPUT_KIND_CONFIRMATION: InputKind
INPUT_KIND_CHOICE: InputKind
JOB_STATUS_UNSPECIFIED: JobStatus
JOB_STATUS_QUEUED: JobStatus
JOB_STATUS_RUNNING: JobStatus
JOB_STATUS_WAITING_INPUT: JobStatus
JOB_STATUS_SUCCEEDED: JobStatus
JOB_STATUS_FAILED: JobStatus
JOB_STATUS_CANCELLED: JobStatus

class Event(_message.Message):
    __slots__ = ("job_id", "seq", "kind", "job_kind", "stage", "node", "delta", "time", "traceparent", "stage_info", "tool", "needs_input", "done", "error")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    JOB_KIND_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    STAGE_INFO_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    NEEDS_INPUT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    seq: int
    kind: EventKind
    job_kind: JobKind
    stage: Stage
    node: str
    delta: str
    time: _timestamp_pb2.Timestamp
    traceparent: str
    stage_info: StageInfo
    tool: ToolCall
    needs_input: InputRequest
    done: JobResult
    error: JobError
    def __init__(self, job_id: _Optional[str] = ..., seq: _Optional[int] = ..., kind: _Optional[_Union[EventKind, str]] = ..., job_kind: _Optional[_Union[JobKind, str]] = ..., stage: _Optional[_Union[Stage, str]] = ..., node: _Optional[str] = ..., delta: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., traceparent: _Optional[str] = ..., stage_info: _Optional[_Union[StageInfo, _Mapping]] = ..., tool: _Optional[_Union[ToolCall, _Mapping]] = ..., needs_input: _Optional[_Union[InputRequest, _Mapping]] = ..., done: _Optional[_Union[JobResult, _Mapping]] = ..., error: _Optional[_Union[JobError, _Mapping]] = ...) -> None: ...

class StageInfo(_message.Message):
    __slots__ = ("phase", "progress_percent", "message", "elapsed")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_FIELD_NUMBER: _ClassVar[int]
    phase: StagePhase
    progress_percent: int
    message: str
    elapsed: _duration_pb2.Duration
    def __init__(self, phase: _Optional[_Union[StagePhase, str]] = ..., progress_percent: _Optional[int] = ..., message: _Optional[str] = ..., elapsed: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("name", "call_id", "phase", "arguments", "result", "progress_percent", "message")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    call_id: str
    phase: ToolPhase
    arguments: _struct_pb2.Struct
    result: _struct_pb2.Struct
    progress_percent: int
    message: str
    def __init__(self, name: _Optional[str] = ..., call_id: _Optional[str] = ..., phase: _Optional[_Union[ToolPhase, str]] = ..., arguments: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., result: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., progress_percent: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class InputRequest(_message.Message):
    __slots__ = ("input_id", "kind", "prompt", "choices")
    INPUT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    input_id: str
    kind: InputKind
    prompt: str
    choices: _containers.RepeatedCompositeFieldContainer[InputChoice]
    def __init__(self, input_id: _Optional[str] = ..., kind: _Optional[_Union[InputKind, str]] = ..., prompt: _Optional[str] = ..., choices: _Optional[_Iterable[_Union[InputChoice, _Mapping]]] = ...) -> None: ...

class InputChoice(_message.Message):
    __slots__ = ("value", "label")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    value: str
    label: str
    def __init__(self, value: _Optional[str] = ..., label: _Optional[str] = ...) -> None: ...

class JobResult(_message.Message):
    __slots__ = ("result", "summary")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    result: _any_pb2.Any
    summary: str
    def __init__(self, result: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., summary: _Optional[str] = ...) -> None: ...

class JobError(_message.Message):
    __slots__ = ("code", "reason", "message", "retryable")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    code: int
    reason: str
    message: str
    retryable: bool
    def __init__(self, code: _Optional[int] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., retryable: _Optional[bool] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("job_id", "after_seq")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_seq: int
    def __init__(self, job_id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class SubscribeBatchesRequest(_message.Message):
    __slots__ = ("job_id", "after_seq", "max_events", "max_bytes")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_seq: int
    max_events: int
    max_bytes: int
    def __init__(self, job_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., max_events: _Optional[int] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class SubscribeBatchesResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class GetJobStateRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobStateResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    def __init__(self, state: _Optional[_Union[JobState, _Mapping]] = ...) -> None: ...

class JobState(_message.Message):
    __slots__ = ("job_id", "job_kind", "status", "stage", "node", "last_seq", "terminal", "updated_at")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    job_kind: JobKind
    status: JobStatus
    stage: Stage
    node: str
    last_seq: int
    terminal: bool
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, job_id: _Optional[str] = ..., job_kind: _Optional[_Union[JobKind, str]] = ..., status: _Optional[_Union[JobStatus, str]] = ..., stage: _Optional[_Union[Stage, str]] = ..., node: _Optional[str] = ..., last_seq: _Optional[int] = ..., terminal: _Optional[bool] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
