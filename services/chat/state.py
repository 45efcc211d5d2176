"""The graph's state: one turn of a conversation, and the small input of each `Send` branch.

Everything here goes through the checkpoints, so every value is a plain value LangGraph's
serializer stores as it is: strings, numbers, lists and dicts, typed with TypedDicts. The
contract's messages (a character, a place) are made from them only when the result is built
(result.py).
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from . import intents as I
from .ports import Character, Place


def merge(a: dict | None, b: dict | None) -> dict:
    return {**(a or {}), **(b or {})}


def highest(a: int | None, b: int | None) -> int:
    return max(a or 0, b or 0)


def latest(a: Any, b: Any) -> Any:
    return b if b is not None else a


class Location(TypedDict):
    latitude: float
    longitude: float


class Citation(TypedDict, total=False):
    source_id: str  # "rule:<file>#<section>", "place:<id>", "character:<code>", "web:<url>" …
    kind: int  # eco2.chat.v1.CitationKind
    title: str
    snippet: str
    url: str


class HistoryMessage(TypedDict, total=False):
    role: str  # "user" | "assistant"
    text: str
    n: int  # the message's number in its conversation


class ChatState(TypedDict, total=False):
    # the turn, as the worker starts it
    job_id: str
    user_id: str
    conversation_id: str
    message: str
    image_key: str
    location: Annotated[
        Location | None, latest
    ]  # the input's, or a resumed places branch's (two may resume in one step)
    history: list[HistoryMessage]
    summary: str
    # summarize
    new_summary: str
    summary_upto: int  # the n of the last message the new summary covers
    # intent (and vision)
    intents: list[str]
    queries: dict[str, str]  # intent → its part of the message
    # the branches
    contexts: Annotated[
        dict[str, Any], merge
    ]  # what each intent gathered (REQUIRED), as the answer and the model read it
    citations: Annotated[list[Citation], operator.add]
    card: Character  # the character the answer shows (one writer per turn: waste_rag, or the character branch)
    places: Annotated[dict[str, list[Place]], merge]  # places node → the places it found
    failed: Annotated[list[str], operator.add]
    spans: Annotated[
        dict[str, list[float]], merge
    ]  # node → [start, end] (monotonic), for concurrency checks and metrics
    seq: Annotated[int, highest]  # the last event seq published
    # aggregator, answer, evaluate
    fallback_used: bool
    unsure: bool
    clarify: bool
    answer: str
    answered: list[str]  # intents the answer already covered (a partial answer before a NEEDS_INPUT)
    located: bool  # the location question was asked this turn (answered or declined)
    grade: dict[str, Any]


class Branch(TypedDict, total=False):
    """What one sub-agent gets through `Send`: its part of the message and the few facts of the
    turn it reads, not the whole state."""

    query: str  # this intent's part of the message
    message: str  # the whole message
    earlier: list[str]  # the user's earlier messages in the history, newest first
    summarised: list[str]  # the questions the summary keeps, newest first
    location: Location | None
    located: bool
    with_card: bool  # waste_rag attaches its category's character (no character branch this turn)
    enrichment: bool  # weather: a tip next to a waste answer, not an asked intent


#: The aggregator's contract: the context each intent must deliver (None: nothing required).
REQUIRED: dict[str, str | None] = {
    I.WASTE: "disposal_rules",
    I.CHARACTER: "character_context",
    I.LOCATION: "location_context",
    I.COLLECTION_POINT: "collection_point_context",
    I.BULK_WASTE: "bulk_waste_context",
    I.RECYCLABLE_PRICE: "price_context",
    I.WEATHER: "weather_context",
    I.WEB_SEARCH: "web_search_context",
    I.IMAGE_GENERATION: "image_generation_context",
    I.GENERAL: None,
}


def checkpoint_serializer() -> JsonPlusSerializer:
    """LangGraph's serializer, reviving only the types it knows to be safe (its own Send,
    Interrupt, Command …): the state holds plain values only, so a checkpoint that would need
    any other class to load is refused instead of constructing it."""
    return JsonPlusSerializer(allowed_msgpack_modules=None)
