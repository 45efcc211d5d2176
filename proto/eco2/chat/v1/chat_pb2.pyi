import datetime

from eco2.character.v1 import character_pb2 as _character_pb2
from eco2.events.v1 import events_pb2 as _events_pb2
from eco2.location.v1 import location_pb2 as _location_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Intent(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTENT_UNSPECIFIED: _ClassVar[Intent]
    INTENT_WASTE: _ClassVar[Intent]
    INTENT_CHARACTER: _ClassVar[Intent]
    INTENT_LOCATION: _ClassVar[Intent]
    INTENT_BULK_WASTE: _ClassVar[Intent]
    INTENT_RECYCLABLE_PRICE: _ClassVar[Intent]
    INTENT_COLLECTION_POINT: _ClassVar[Intent]
    INTENT_WEATHER: _ClassVar[Intent]
    INTENT_IMAGE_GENERATION: _ClassVar[Intent]
    INTENT_WEB_SEARCH: _ClassVar[Intent]
    INTENT_GENERAL: _ClassVar[Intent]

class MessageRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESSAGE_ROLE_UNSPECIFIED: _ClassVar[MessageRole]
    MESSAGE_ROLE_USER: _ClassVar[MessageRole]
    MESSAGE_ROLE_ASSISTANT: _ClassVar[MessageRole]

class CitationKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CITATION_KIND_UNSPECIFIED: _ClassVar[CitationKind]
    CITATION_KIND_RULE: _ClassVar[CitationKind]
    CITATION_KIND_PRICE: _ClassVar[CitationKind]
    CITATION_KIND_PLACE: _ClassVar[CitationKind]
    CITATION_KIND_WEB: _ClassVar[CitationKind]
    CITATION_KIND_CHARACTER: _ClassVar[CitationKind]
    CITATION_KIND_WEATHER: _ClassVar[CitationKind]
    CITATION_KIND_BULK_WASTE_FEE: _ClassVar[CitationKind]

class GradeLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRADE_LEVEL_UNSPECIFIED: _ClassVar[GradeLevel]
    GRADE_LEVEL_GOOD: _ClassVar[GradeLevel]
    GRADE_LEVEL_ACCEPTABLE: _ClassVar[GradeLevel]
    GRADE_LEVEL_POOR: _ClassVar[GradeLevel]

class CancelMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CANCEL_MODE_UNSPECIFIED: _ClassVar[CancelMode]
    CANCEL_MODE_INTERRUPT: _ClassVar[CancelMode]
    CANCEL_MODE_ROLLBACK: _ClassVar[CancelMode]

class DoubleTextPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DOUBLE_TEXT_POLICY_UNSPECIFIED: _ClassVar[DoubleTextPolicy]
    DOUBLE_TEXT_POLICY_REJECT: _ClassVar[DoubleTextPolicy]
    DOUBLE_TEXT_POLICY_ENQUEUE: _ClassVar[DoubleTextPolicy]
    DOUBLE_TEXT_POLICY_INTERRUPT: _ClassVar[DoubleTextPolicy]
    DOUBLE_TEXT_POLICY_ROLLBACK: _ClassVar[DoubleTextPolicy]

class RunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATUS_UNSPECIFIED: _ClassVar[RunStatus]
    RUN_STATUS_QUEUED: _ClassVar[RunStatus]
    RUN_STATUS_RUNNING: _ClassVar[RunStatus]
    RUN_STATUS_WAITING_INPUT: _ClassVar[RunStatus]
    RUN_STATUS_SUCCEEDED: _ClassVar[RunStatus]
    RUN_STATUS_FAILED: _ClassVar[RunStatus]
    RUN_STATUS_CANCELLED: _ClassVar[RunStatus]
    RUN_STATUS_ROLLED_BACK: _ClassVar[RunStatus]

class MessageOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESSAGE_ORDER_UNSPECIFIED: _ClassVar[MessageOrder]
    MESSAGE_ORDER_NEWEST_FIRST: _ClassVar[MessageOrder]
    MESSAGE_ORDER_OLDEST_FIRST: _ClassVar[MessageOrder]
INTENT_UNSPECIFIED: Intent
INTENT_WASTE: Intent
INTENT_CHARACTER: Intent
INTENT_LOCATION: Intent
INTENT_BULK_WASTE: Intent
INTENT_RECYCLABLE_PRICE: Intent
INTENT_COLLECTION_POINT: Intent
INTENT_WEATHER: Intent
INTENT_IMAGE_GENERATION: Intent
INTENT_WEB_SEARCH: Intent
INTENT_GENERAL: Intent
MESSAGE_ROLE_UNSPECIFIED: MessageRole
MESSAGE_ROLE_USER: MessageRole
MESSAGE_ROLE_ASSISTANT: MessageRole
CITATION_KIND_UNSPECIFIED: CitationKind
CITATION_KIND_RULE: CitationKind
CITATION_KIND_PRICE: CitationKind
CITATION_KIND_PLACE: CitationKind
CITATION_KIND_WEB: CitationKind
CITATION_KIND_CHARACTER: CitationKind
CITATION_KIND_WEATHER: CitationKind
CITATION_KIND_BULK_WASTE_FEE: CitationKind
GRADE_LEVEL_UNSPECIFIED: GradeLevel
GRADE_LEVEL_GOOD: GradeLevel
GRADE_LEVEL_ACCEPTABLE: GradeLevel
GRADE_LEVEL_POOR: GradeLevel
CANCEL_MODE_UNSPECIFIED: CancelMode
CANCEL_MODE_INTERRUPT: CancelMode
CANCEL_MODE_ROLLBACK: CancelMode
DOUBLE_TEXT_POLICY_UNSPECIFIED: DoubleTextPolicy
DOUBLE_TEXT_POLICY_REJECT: DoubleTextPolicy
DOUBLE_TEXT_POLICY_ENQUEUE: DoubleTextPolicy
DOUBLE_TEXT_POLICY_INTERRUPT: DoubleTextPolicy
DOUBLE_TEXT_POLICY_ROLLBACK: DoubleTextPolicy
RUN_STATUS_UNSPECIFIED: RunStatus
RUN_STATUS_QUEUED: RunStatus
RUN_STATUS_RUNNING: RunStatus
RUN_STATUS_WAITING_INPUT: RunStatus
RUN_STATUS_SUCCEEDED: RunStatus
RUN_STATUS_FAILED: RunStatus
RUN_STATUS_CANCELLED: RunStatus
RUN_STATUS_ROLLED_BACK: RunStatus
MESSAGE_ORDER_UNSPECIFIED: MessageOrder
MESSAGE_ORDER_NEWEST_FIRST: MessageOrder
MESSAGE_ORDER_OLDEST_FIRST: MessageOrder

class Citation(_message.Message):
    __slots__ = ("source_id", "kind", "title", "snippet", "url")
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    kind: CitationKind
    title: str
    snippet: str
    url: str
    def __init__(self, source_id: _Optional[str] = ..., kind: _Optional[_Union[CitationKind, str]] = ..., title: _Optional[str] = ..., snippet: _Optional[str] = ..., url: _Optional[str] = ...) -> None: ...

class Grade(_message.Message):
    __slots__ = ("level", "score", "grader", "reasons")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    GRADER_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    level: GradeLevel
    score: float
    grader: str
    reasons: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, level: _Optional[_Union[GradeLevel, str]] = ..., score: _Optional[float] = ..., grader: _Optional[str] = ..., reasons: _Optional[_Iterable[str]] = ...) -> None: ...

class ChatResult(_message.Message):
    __slots__ = ("conversation_id", "message_id", "answer", "intents", "citations", "grade", "character", "places", "fallback_used", "image_key", "cancelled")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    INTENTS_FIELD_NUMBER: _ClassVar[int]
    CITATIONS_FIELD_NUMBER: _ClassVar[int]
    GRADE_FIELD_NUMBER: _ClassVar[int]
    CHARACTER_FIELD_NUMBER: _ClassVar[int]
    PLACES_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_USED_FIELD_NUMBER: _ClassVar[int]
    IMAGE_KEY_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    message_id: str
    answer: str
    intents: _containers.RepeatedScalarFieldContainer[Intent]
    citations: _containers.RepeatedCompositeFieldContainer[Citation]
    grade: Grade
    character: _character_pb2.Character
    places: _containers.RepeatedCompositeFieldContainer[_location_pb2.PlaceHit]
    fallback_used: bool
    image_key: str
    cancelled: bool
    def __init__(self, conversation_id: _Optional[str] = ..., message_id: _Optional[str] = ..., answer: _Optional[str] = ..., intents: _Optional[_Iterable[_Union[Intent, str]]] = ..., citations: _Optional[_Iterable[_Union[Citation, _Mapping]]] = ..., grade: _Optional[_Union[Grade, _Mapping]] = ..., character: _Optional[_Union[_character_pb2.Character, _Mapping]] = ..., places: _Optional[_Iterable[_Union[_location_pb2.PlaceHit, _Mapping]]] = ..., fallback_used: _Optional[bool] = ..., image_key: _Optional[str] = ..., cancelled: _Optional[bool] = ...) -> None: ...

class Conversation(_message.Message):
    __slots__ = ("id", "title", "message_count", "last_message_preview", "created_at", "updated_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_MESSAGE_PREVIEW_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    message_count: int
    last_message_preview: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., message_count: _Optional[int] = ..., last_message_preview: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("id", "role", "text", "image_key", "intents", "citations", "job_id", "created_at", "result")
    ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_KEY_FIELD_NUMBER: _ClassVar[int]
    INTENTS_FIELD_NUMBER: _ClassVar[int]
    CITATIONS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    id: str
    role: MessageRole
    text: str
    image_key: str
    intents: _containers.RepeatedScalarFieldContainer[Intent]
    citations: _containers.RepeatedCompositeFieldContainer[Citation]
    job_id: str
    created_at: _timestamp_pb2.Timestamp
    result: ChatResult
    def __init__(self, id: _Optional[str] = ..., role: _Optional[_Union[MessageRole, str]] = ..., text: _Optional[str] = ..., image_key: _Optional[str] = ..., intents: _Optional[_Iterable[_Union[Intent, str]]] = ..., citations: _Optional[_Iterable[_Union[Citation, _Mapping]]] = ..., job_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., result: _Optional[_Union[ChatResult, _Mapping]] = ...) -> None: ...

class StreamChatRequest(_message.Message):
    __slots__ = ("conversation_id", "message", "image_key", "location", "client_message_id", "double_text_policy")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_KEY_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_TEXT_POLICY_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    message: str
    image_key: str
    location: _location_pb2.GeoPoint
    client_message_id: str
    double_text_policy: DoubleTextPolicy
    def __init__(self, conversation_id: _Optional[str] = ..., message: _Optional[str] = ..., image_key: _Optional[str] = ..., location: _Optional[_Union[_location_pb2.GeoPoint, _Mapping]] = ..., client_message_id: _Optional[str] = ..., double_text_policy: _Optional[_Union[DoubleTextPolicy, str]] = ...) -> None: ...

class SendMessageRequest(_message.Message):
    __slots__ = ("conversation_id", "message", "image_key", "location", "client_message_id", "double_text_policy")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_KEY_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_TEXT_POLICY_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    message: str
    image_key: str
    location: _location_pb2.GeoPoint
    client_message_id: str
    double_text_policy: DoubleTextPolicy
    def __init__(self, conversation_id: _Optional[str] = ..., message: _Optional[str] = ..., image_key: _Optional[str] = ..., location: _Optional[_Union[_location_pb2.GeoPoint, _Mapping]] = ..., client_message_id: _Optional[str] = ..., double_text_policy: _Optional[_Union[DoubleTextPolicy, str]] = ...) -> None: ...

class SendMessageResponse(_message.Message):
    __slots__ = ("job_id", "conversation_id", "message_id", "deduplicated")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    DEDUPLICATED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    conversation_id: str
    message_id: str
    deduplicated: bool
    def __init__(self, job_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., message_id: _Optional[str] = ..., deduplicated: _Optional[bool] = ...) -> None: ...

class ProvideInputRequest(_message.Message):
    __slots__ = ("job_id", "input_id", "location", "text", "confirmed", "declined")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_ID_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    DECLINED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    input_id: str
    location: _location_pb2.GeoPoint
    text: str
    confirmed: bool
    declined: bool
    def __init__(self, job_id: _Optional[str] = ..., input_id: _Optional[str] = ..., location: _Optional[_Union[_location_pb2.GeoPoint, _Mapping]] = ..., text: _Optional[str] = ..., confirmed: _Optional[bool] = ..., declined: _Optional[bool] = ...) -> None: ...

class ProvideInputResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListConversationsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListConversationsResponse(_message.Message):
    __slots__ = ("conversations", "next_page_token")
    CONVERSATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    conversations: _containers.RepeatedCompositeFieldContainer[Conversation]
    next_page_token: str
    def __init__(self, conversations: _Optional[_Iterable[_Union[Conversation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetConversationRequest(_message.Message):
    __slots__ = ("conversation_id", "page_size", "page_token", "order")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    page_size: int
    page_token: str
    order: MessageOrder
    def __init__(self, conversation_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., order: _Optional[_Union[MessageOrder, str]] = ...) -> None: ...

class GetConversationResponse(_message.Message):
    __slots__ = ("conversation", "messages", "next_page_token")
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    conversation: Conversation
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    next_page_token: str
    def __init__(self, conversation: _Optional[_Union[Conversation, _Mapping]] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteConversationRequest(_message.Message):
    __slots__ = ("conversation_id",)
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    def __init__(self, conversation_id: _Optional[str] = ...) -> None: ...

class DeleteConversationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("job_id", "mode")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    mode: CancelMode
    def __init__(self, job_id: _Optional[str] = ..., mode: _Optional[_Union[CancelMode, str]] = ...) -> None: ...

class CancelRunResponse(_message.Message):
    __slots__ = ("job_id", "mode", "status", "already_cancelled")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ALREADY_CANCELLED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    mode: CancelMode
    status: RunStatus
    already_cancelled: bool
    def __init__(self, job_id: _Optional[str] = ..., mode: _Optional[_Union[CancelMode, str]] = ..., status: _Optional[_Union[RunStatus, str]] = ..., already_cancelled: _Optional[bool] = ...) -> None: ...

class GetConversationStateRequest(_message.Message):
    __slots__ = ("conversation_id", "page_size", "page_token", "include_checkpoints")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    page_size: int
    page_token: str
    include_checkpoints: bool
    def __init__(self, conversation_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_checkpoints: _Optional[bool] = ...) -> None: ...

class GetConversationStateResponse(_message.Message):
    __slots__ = ("conversation", "summary", "active_run", "runs", "next_page_token")
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_RUN_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    conversation: Conversation
    summary: str
    active_run: Run
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    next_page_token: str
    def __init__(self, conversation: _Optional[_Union[Conversation, _Mapping]] = ..., summary: _Optional[str] = ..., active_run: _Optional[_Union[Run, _Mapping]] = ..., runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("job_id", "status", "cancel_mode", "user_message_id", "question", "assistant_message_id", "answer", "intents", "facts", "pending_input", "checkpoints", "error_reason", "created_at", "updated_at")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_MODE_FIELD_NUMBER: _ClassVar[int]
    USER_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    ASSISTANT_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    INTENTS_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    PENDING_INPUT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    status: RunStatus
    cancel_mode: CancelMode
    user_message_id: str
    question: str
    assistant_message_id: str
    answer: str
    intents: _containers.RepeatedScalarFieldContainer[Intent]
    facts: _containers.RepeatedCompositeFieldContainer[Citation]
    pending_input: _events_pb2.InputRequest
    checkpoints: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    error_reason: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, job_id: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ..., cancel_mode: _Optional[_Union[CancelMode, str]] = ..., user_message_id: _Optional[str] = ..., question: _Optional[str] = ..., assistant_message_id: _Optional[str] = ..., answer: _Optional[str] = ..., intents: _Optional[_Iterable[_Union[Intent, str]]] = ..., facts: _Optional[_Iterable[_Union[Citation, _Mapping]]] = ..., pending_input: _Optional[_Union[_events_pb2.InputRequest, _Mapping]] = ..., checkpoints: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ..., error_reason: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("checkpoint_id", "step", "nodes", "next", "intents", "created_at")
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    INTENTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    checkpoint_id: str
    step: int
    nodes: _containers.RepeatedScalarFieldContainer[str]
    next: _containers.RepeatedScalarFieldContainer[str]
    intents: _containers.RepeatedScalarFieldContainer[Intent]
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, checkpoint_id: _Optional[str] = ..., step: _Optional[int] = ..., nodes: _Optional[_Iterable[str]] = ..., next: _Optional[_Iterable[str]] = ..., intents: _Optional[_Iterable[_Union[Intent, str]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
