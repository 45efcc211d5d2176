"""A finished turn's state → the contract's ChatResult (what DONE carries and the message stores)."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from eco2.character.v1 import character_pb2
from eco2.chat.v1 import chat_pb2
from eco2.location.v1 import location_pb2

from . import intents as I
from .nodes.evaluate import rule_grade
from .ports import Character, Place
from .state import ChatState

INTENT_ENUM = {i: chat_pb2.Intent.Value(f"INTENT_{i.upper()}") for i in I.ALL_INTENTS}
#: the places nodes, in the order the result lists their places
PLACES_NODES = ("collection_point", "location")


def citations_of(state: ChatState) -> list[chat_pb2.Citation]:
    seen, out = set(), []
    for c in state.get("citations") or []:
        if c["source_id"] in seen:
            continue
        seen.add(c["source_id"])
        out.append(
            chat_pb2.Citation(
                source_id=c["source_id"],
                kind=c["kind"],
                title=c.get("title", ""),
                snippet=c.get("snippet", ""),
                url=c.get("url", ""),
            )
        )
    return out


def character_pb(c: Character) -> character_pb2.Character:
    return character_pb2.Character(**c)


def place_hit_pb(p: Place) -> location_pb2.PlaceHit:
    place = location_pb2.Place(
        id=p["id"],
        name=p["name"],
        address=p["address"],
        road_address=p["road_address"],
        phone=p["phone"],
        location=location_pb2.GeoPoint(latitude=p["latitude"], longitude=p["longitude"]),
        store_category=p["store_category"],
        pickup_categories=p["pickup_categories"],
        source=p["source"],
        opening_hours=p["opening_hours"],
        url=p["url"],
    )
    if p["updated_at"]:
        updated = timestamp_pb2.Timestamp()
        updated.FromJsonString(p["updated_at"])
        place.updated_at.CopyFrom(updated)
    return location_pb2.PlaceHit(place=place, distance_m=p["distance_m"], distance_text=p["distance_text"])


def result_of(state: ChatState, *, message_id: str) -> chat_pb2.ChatResult:
    grade = state.get("grade") or rule_grade(state)
    result = chat_pb2.ChatResult(
        conversation_id=state["conversation_id"],
        message_id=message_id,
        answer=state.get("answer", ""),
        intents=[INTENT_ENUM[i] for i in state.get("intents") or []],
        citations=citations_of(state),
        grade=chat_pb2.Grade(
            level=grade["level"], score=grade["score"], grader=grade["grader"], reasons=grade["reasons"]
        ),
        fallback_used=bool(state.get("fallback_used")),
    )
    contexts = state.get("contexts") or {}
    result.image_key = (contexts.get("image_generation_context") or {}).get("image_key", "")
    if state.get("card"):
        result.character.CopyFrom(character_pb(state["card"]))
    found = state.get("places") or {}
    for node in PLACES_NODES:
        result.places.extend(place_hit_pb(p) for p in found.get(node) or [])
    return result
