"""The chat agent as a LangGraph StateGraph: the wiring of the nodes (nodes/) over the state (state.py).

    intent (summarize + intent + router) → (vision) ─Send→ {waste_rag, character, location,
    collection_point, bulk_waste, recyclable_price, weather, web_search, image_generation,
    general} → aggregator (required-field contract, support grade, fallback chain; then, in the
    same superstep, answer (tokens) and evaluate) → END

Each superstep after the first node is a checkpoint write (checkpoints.py stores neither the
input's nor LangGraph's START step): the aggregator answers and grades in its own step, and a
turn whose only branch is waste_rag runs it inside `intent` (no `Send`), so such a turn stores
two checkpoints, after intent and after the aggregator. A question that also asks
for something nearby without a location is answered in two parts: aggregator (everything
else, streamed first) → ask_location (`interrupt()`, NEEDS_INPUT) → the places branches with
the reply → aggregator (the places, then evaluate). ProvideInput resumes the graph through
`Command(resume=...)`. The answer and evaluate nodes stay wired for checkpoints that name them
as their next step.
"""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph

from . import intents as I
from .deps import JobContext
from .nodes.aggregate import aggregator
from .nodes.answer import answer
from .nodes.bulk_waste import bulk_waste
from .nodes.character import character
from .nodes.evaluate import evaluate
from .nodes.places import ask_location, places_node
from .nodes.price import recyclable_price
from .nodes.route import NODE_OF, after_answer, after_ask, after_intent, fan_out
from .nodes.run import superstep
from .nodes.tools import general, image_generation, weather, web_search
from .nodes.understand import understand
from .nodes.vision import vision
from .nodes.waste import waste_rag
from .state import ChatState

SUBAGENTS = {
    "waste_rag": waste_rag,
    "character": character,
    "location": places_node("location"),
    "collection_point": places_node("collection_point"),
    "bulk_waste": bulk_waste,
    "recyclable_price": recyclable_price,
    "weather": weather,
    "web_search": web_search,
    "image_generation": image_generation,
    "general": general,
}


def build_graph() -> StateGraph:
    g = StateGraph(ChatState, context_schema=JobContext)
    g.add_node("intent", superstep(understand))
    g.add_node("vision", superstep(vision))
    for name, node in SUBAGENTS.items():
        g.add_node(name, superstep(node))
        g.add_edge(name, "aggregator")
    g.add_node("aggregator", superstep(aggregator))
    g.add_node("answer", superstep(answer))
    g.add_node("ask_location", superstep(ask_location))
    g.add_node("evaluate", superstep(evaluate))
    g.add_edge(START, "intent")
    g.add_conditional_edges("intent", after_intent, ["vision", "aggregator", *NODE_OF.values()])
    g.add_conditional_edges("vision", fan_out, [*NODE_OF.values()])
    g.add_conditional_edges("aggregator", after_answer, ["ask_location", END])
    g.add_conditional_edges("answer", after_answer, ["ask_location", END])
    g.add_conditional_edges("ask_location", after_ask, [NODE_OF[I.LOCATION], NODE_OF[I.COLLECTION_POINT]])
    g.add_edge("evaluate", END)
    return g
