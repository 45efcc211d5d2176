import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WasteCategory(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WASTE_CATEGORY_UNSPECIFIED: _ClassVar[WasteCategory]
    WASTE_CATEGORY_PAPER: _ClassVar[WasteCategory]
    WASTE_CATEGORY_PAPER_PACK: _ClassVar[WasteCategory]
    WASTE_CATEGORY_CLEAR_PET: _ClassVar[WasteCategory]
    WASTE_CATEGORY_PLASTIC: _ClassVar[WasteCategory]
    WASTE_CATEGORY_VINYL: _ClassVar[WasteCategory]
    WASTE_CATEGORY_STYROFOAM: _ClassVar[WasteCategory]
    WASTE_CATEGORY_GLASS: _ClassVar[WasteCategory]
    WASTE_CATEGORY_METAL: _ClassVar[WasteCategory]
    WASTE_CATEGORY_BATTERY: _ClassVar[WasteCategory]
    WASTE_CATEGORY_LIGHTING: _ClassVar[WasteCategory]
    WASTE_CATEGORY_CLOTHING: _ClassVar[WasteCategory]
    WASTE_CATEGORY_ELECTRONICS: _ClassVar[WasteCategory]
    WASTE_CATEGORY_GENERAL: _ClassVar[WasteCategory]
    WASTE_CATEGORY_NON_COMBUSTIBLE: _ClassVar[WasteCategory]
    WASTE_CATEGORY_FOOD: _ClassVar[WasteCategory]
    WASTE_CATEGORY_HAZARDOUS: _ClassVar[WasteCategory]
    WASTE_CATEGORY_CONSTRUCTION: _ClassVar[WasteCategory]
    WASTE_CATEGORY_BULKY: _ClassVar[WasteCategory]

class RewardSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REWARD_SOURCE_UNSPECIFIED: _ClassVar[RewardSource]
    REWARD_SOURCE_SCAN: _ClassVar[RewardSource]
    REWARD_SOURCE_CHAT: _ClassVar[RewardSource]
    REWARD_SOURCE_DEFAULT: _ClassVar[RewardSource]

class RewardOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REWARD_OUTCOME_UNSPECIFIED: _ClassVar[RewardOutcome]
    REWARD_OUTCOME_RECEIVED: _ClassVar[RewardOutcome]
    REWARD_OUTCOME_ALREADY_OWNED: _ClassVar[RewardOutcome]
    REWARD_OUTCOME_NOT_ELIGIBLE: _ClassVar[RewardOutcome]
WASTE_CATEGORY_UNSPECIFIED: WasteCategory
WASTE_CATEGORY_PAPER: WasteCategory
WASTE_CATEGORY_PAPER_PACK: WasteCategory
WASTE_CATEGORY_CLEAR_PET: WasteCategory
WASTE_CATEGORY_PLASTIC: WasteCategory
WASTE_CATEGORY_VINYL: WasteCategory
WASTE_CATEGORY_STYROFOAM: WasteCategory
WASTE_CATEGORY_GLASS: WasteCategory
WASTE_CATEGORY_METAL: WasteCategory
WASTE_CATEGORY_BATTERY: WasteCategory
WASTE_CATEGORY_LIGHTING: WasteCategory
WASTE_CATEGORY_CLOTHING: WasteCategory
WASTE_CATEGORY_ELECTRONICS: WasteCategory
WASTE_CATEGORY_GENERAL: WasteCategory
WASTE_CATEGORY_NON_COMBUSTIBLE: WasteCategory
WASTE_CATEGORY_FOOD: WasteCategory
WASTE_CATEGORY_HAZARDOUS: WasteCategory
WASTE_CATEGORY_CONSTRUCTION: WasteCategory
WASTE_CATEGORY_BULKY: WasteCategory
REWARD_SOURCE_UNSPECIFIED: RewardSource
REWARD_SOURCE_SCAN: RewardSource
REWARD_SOURCE_CHAT: RewardSource
REWARD_SOURCE_DEFAULT: RewardSource
REWARD_OUTCOME_UNSPECIFIED: RewardOutcome
REWARD_OUTCOME_RECEIVED: RewardOutcome
REWARD_OUTCOME_ALREADY_OWNED: RewardOutcome
REWARD_OUTCOME_NOT_ELIGIBLE: RewardOutcome

class Character(_message.Message):
    __slots__ = ("code", "name", "aliases", "category", "match_label", "image_code", "description", "is_default")
    CODE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    MATCH_LABEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_CODE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    code: str
    name: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    category: WasteCategory
    match_label: str
    image_code: str
    description: str
    is_default: bool
    def __init__(self, code: _Optional[str] = ..., name: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., category: _Optional[_Union[WasteCategory, str]] = ..., match_label: _Optional[str] = ..., image_code: _Optional[str] = ..., description: _Optional[str] = ..., is_default: _Optional[bool] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("category", "major", "item", "situation_tags", "rules_found", "insufficiencies", "confidence")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    MAJOR_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    SITUATION_TAGS_FIELD_NUMBER: _ClassVar[int]
    RULES_FOUND_FIELD_NUMBER: _ClassVar[int]
    INSUFFICIENCIES_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    category: WasteCategory
    major: str
    item: str
    situation_tags: _containers.RepeatedScalarFieldContainer[str]
    rules_found: bool
    insufficiencies: _containers.RepeatedScalarFieldContainer[str]
    confidence: float
    def __init__(self, category: _Optional[_Union[WasteCategory, str]] = ..., major: _Optional[str] = ..., item: _Optional[str] = ..., situation_tags: _Optional[_Iterable[str]] = ..., rules_found: _Optional[bool] = ..., insufficiencies: _Optional[_Iterable[str]] = ..., confidence: _Optional[float] = ...) -> None: ...

class OwnedCharacter(_message.Message):
    __slots__ = ("character", "source", "acquired_at")
    CHARACTER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ACQUIRED_AT_FIELD_NUMBER: _ClassVar[int]
    character: Character
    source: RewardSource
    acquired_at: _timestamp_pb2.Timestamp
    def __init__(self, character: _Optional[_Union[Character, _Mapping]] = ..., source: _Optional[_Union[RewardSource, str]] = ..., acquired_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Reward(_message.Message):
    __slots__ = ("outcome", "character", "reason")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CHARACTER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    outcome: RewardOutcome
    character: Character
    reason: str
    def __init__(self, outcome: _Optional[_Union[RewardOutcome, str]] = ..., character: _Optional[_Union[Character, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class ListCharactersRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCharactersResponse(_message.Message):
    __slots__ = ("characters", "next_page_token")
    CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    characters: _containers.RepeatedCompositeFieldContainer[Character]
    next_page_token: str
    def __init__(self, characters: _Optional[_Iterable[_Union[Character, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetCharacterRequest(_message.Message):
    __slots__ = ("code",)
    CODE_FIELD_NUMBER: _ClassVar[int]
    code: str
    def __init__(self, code: _Optional[str] = ...) -> None: ...

class GetCharacterResponse(_message.Message):
    __slots__ = ("character",)
    CHARACTER_FIELD_NUMBER: _ClassVar[int]
    character: Character
    def __init__(self, character: _Optional[_Union[Character, _Mapping]] = ...) -> None: ...

class MatchCharacterRequest(_message.Message):
    __slots__ = ("category",)
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    category: WasteCategory
    def __init__(self, category: _Optional[_Union[WasteCategory, str]] = ...) -> None: ...

class MatchCharacterResponse(_message.Message):
    __slots__ = ("character", "matched")
    CHARACTER_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    character: Character
    matched: bool
    def __init__(self, character: _Optional[_Union[Character, _Mapping]] = ..., matched: _Optional[bool] = ...) -> None: ...

class GrantRewardRequest(_message.Message):
    __slots__ = ("source", "classification", "idempotency_key")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    source: RewardSource
    classification: Classification
    idempotency_key: str
    def __init__(self, source: _Optional[_Union[RewardSource, str]] = ..., classification: _Optional[_Union[Classification, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class GrantRewardResponse(_message.Message):
    __slots__ = ("reward",)
    REWARD_FIELD_NUMBER: _ClassVar[int]
    reward: Reward
    def __init__(self, reward: _Optional[_Union[Reward, _Mapping]] = ...) -> None: ...

class ListCollectionRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCollectionResponse(_message.Message):
    __slots__ = ("characters", "next_page_token")
    CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    characters: _containers.RepeatedCompositeFieldContainer[OwnedCharacter]
    next_page_token: str
    def __init__(self, characters: _Optional[_Iterable[_Union[OwnedCharacter, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
