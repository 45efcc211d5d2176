"""The router and the graph's conditional edges: which sub-agents run (one `Send` per intent,
each with its own small `Branch` input), and where the graph goes after the aggregator, the
answer and the location question."""

from __future__ import annotations

from langgraph.graph import END
from langgraph.runtime import Runtime
from langgraph.types import Send

from .. import intents as I
from ..deps import JobContext
from ..state import Branch, ChatState
from .answer import answer_finished
from .places import waiting_for_location
from .run import nothing, run_node
from .summarize import asked_in_summary, earlier_user_turns

#: intent → the node of its sub-agent
NODE_OF = {i: ("waste_rag" if i == I.WASTE else i) for i in I.ALL_INTENTS}


async def router(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    """The router's stage events; its fan-out is the conditional edge `fan_out` (no superstep of its own)."""
    return await run_node("router", runtime, nothing)


def branch(state: ChatState, intent: str, **extra) -> Branch:
    """The input of one intent's branch."""
    intents = state.get("intents") or []
    return Branch(
        query=(state.get("queries") or {}).get(intent, state["message"]),
        message=state["message"],
        earlier=earlier_user_turns(state),
        summarised=asked_in_summary(state.get("summary", "")),
        location=state.get("location"),
        located=bool(state.get("located")),
        with_card=I.CHARACTER not in intents,
        **extra,
    )


def fan_out(state: ChatState) -> list[Send]:
    intents = state.get("intents") or []
    sends = [Send(NODE_OF[i], branch(state, i)) for i in intents or [I.GENERAL]]
    # Enrichment: a waste question with a known location also gets the weather (rainy day tips).
    # (Its category's Eco² character is attached by waste_rag itself: no branch of its own.)
    if I.WASTE in intents and state.get("location") and I.WEATHER not in intents:
        sends.append(Send("weather", branch(state, I.WEATHER, enrichment=True)))
    return sends


def inline_branch(state: ChatState) -> Send | None:
    """The branch `intent` runs in its own superstep: a turn whose only branch is waste_rag."""
    sends = fan_out(state)
    return sends[0] if len(sends) == 1 and sends[0].node == "waste_rag" else None


def after_intent(state: ChatState) -> str | list[Send]:
    if state.get("image_key"):
        return "vision"
    return "aggregator" if inline_branch(state) is not None else fan_out(state)


def after_answer(state: ChatState) -> str:
    """After the aggregator (which answers what can be answered now, and grades a finished
    answer) or the answer node: the location question, or the end of the turn."""
    return END if answer_finished(state) else "ask_location"


def after_ask(state: ChatState) -> list[Send]:
    """The places branches again, with the user's reply in the state (ask_location)."""
    return [Send(NODE_OF[i], branch(state, i)) for i in waiting_for_location(state)]
