"""The places sub-agents (location, collection_point) and the question that asks for the
user's location (human in the loop: `interrupt()`, NEEDS_INPUT)."""

from __future__ import annotations

from langgraph.runtime import Runtime
from langgraph.types import interrupt

from eco2.chat.v1 import chat_pb2
from eco2.events.v1 import events_pb2

from .. import intents as I
from ..deps import JobContext
from ..state import REQUIRED, Branch, ChatState
from .run import run_node


def places_node(name: str):
    """A nearby search. Without a location it only says so (`needs_location`): the answer covers
    the other parts of the question first, then `ask_location` asks for it (NEEDS_INPUT) and
    this node runs again with the reply."""

    async def node(branch: Branch, runtime: Runtime[JobContext]) -> dict:
        deps = runtime.context.deps
        key = f"{name}_context"

        async def body() -> dict:
            location = branch.get("location")
            if not location:
                return {
                    "contexts": {
                        key: {"declined": True, "places": []}
                        if branch.get("located")
                        else {"needs_location": True, "places": []}
                    }
                }
            if deps.places is None:
                return {"contexts": {key: {"unavailable": True, "places": []}}}
            em = runtime.context.emitter
            await em.tool(name, "location.search_nearby", f"{name}-nearby", events_pb2.TOOL_PHASE_STARTED)
            found = await deps.places.nearby(
                location["latitude"],
                location["longitude"],
                radius_m=deps.search_radius_m,
                limit=deps.places_limit,
                collection_points=name == "collection_point",
            )
            await em.tool(
                name,
                "location.search_nearby",
                f"{name}-nearby",
                events_pb2.TOOL_PHASE_RESULT,
                message=f"{len(found)} places",
            )
            # what the answer and the model read of each place; the whole record goes to the result
            places = [
                {
                    "id": p["id"],
                    "name": p["name"],
                    "address": p["road_address"] or p["address"],
                    "distance_m": p["distance_m"],
                    "distance_text": p["distance_text"],
                }
                for p in found
            ]
            cites = [
                {
                    "source_id": f"place:{p['id']}",
                    "kind": chat_pb2.CITATION_KIND_PLACE,
                    "title": p["name"],
                    "snippet": p["address"],
                }
                for p in places
            ]
            return {"contexts": {key: {"places": places}}, "citations": cites, "places": {name: found}}

        return await run_node(name, runtime, body)

    node.__name__ = name
    return node


def waiting_for_location(state: ChatState) -> list[str]:
    """The places intents that still need the user's location."""
    contexts = state.get("contexts") or {}
    return [
        i
        for i in state.get("intents") or []
        if i in (I.LOCATION, I.COLLECTION_POINT) and (contexts.get(REQUIRED[i]) or {}).get("needs_location")
    ]


async def ask_location(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    """Human in the loop: the graph stops here (NEEDS_INPUT) after answering what it could;
    ProvideInput resumes it with the location or `declined`. The one interrupt() of the node,
    outside any retry loop: LangGraph matches resume values to interrupt() calls by their order
    within the task."""
    reply = interrupt(
        {
            "input_id": "location",
            "kind": "location",
            "prompt": "가까운 곳을 찾으려면 현재 위치가 필요해요. 위치를 공유해 주시겠어요?",
        }
    )
    location = (reply or {}).get("location") if not (reply or {}).get("declined") else None
    return {"located": True, **({"location": location} if location else {})}
