"""aggregator: checks each intent's context against the contract (state.REQUIRED), grades its
support, and sends an intent without enough support down the fallback chain; then answers in
the same superstep (answer, which grades it), unless the location must be asked first. A
re-claimed job whose worker died while answering aggregates again from the branches' results."""

from __future__ import annotations

from langgraph.runtime import Runtime

from eco2.services.knowledge import turn

from .. import bulk_waste as BW
from .. import intents as I
from .. import metrics
from .. import rules as R
from ..deps import ChatDeps, JobContext
from ..state import REQUIRED, ChatState
from .answer import answer, asks_location_first
from .places import waiting_for_location
from .price import price_context
from .run import combine, run_node
from .summarize import earlier_questions


def support(intent: str, contexts: dict) -> str:
    """How well the gathered context answers one intent: "ok", "weak" (part of it, or only what
    is not known) or "none" (nothing to answer from) — the grade that starts the fallback chain."""
    need = REQUIRED.get(intent)
    if need is None:
        return "ok"
    got = contexts.get(need)
    if intent == I.WASTE:
        ctx = contexts.get("waste_answers") or {}
        if not ctx.get("findings"):
            return "none"
        return "weak" if ctx.get("unknown") or ctx.get("local") else "ok"
    if intent == I.RECYCLABLE_PRICE:
        return "ok" if got and got.get("items") else "none"
    return "ok" if got else "none"


async def aggregator(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    """An intent without enough support goes down the fallback chain until one step answers it:
    1. retry: a rewritten query (the whole message and the previous user turn),
    2. web search (when configured), 3. an honest "not sure" answer that says what is not
    known and where to find it, 4. a clarifying question when the message names nothing."""
    deps = runtime.context.deps

    async def body() -> dict:
        contexts = dict(state.get("contexts") or {})
        intents = list(state.get("intents") or [])
        update: dict = {}
        cites: list[dict] = []
        pending = set(waiting_for_location(state))
        for intent in intents:
            if intent in pending or support(intent, contexts) == "ok":
                continue
            if intent in (I.LOCATION, I.COLLECTION_POINT):  # the places branch failed (LocationService down): say so
                metrics.fallback_taken("places_unavailable")
                contexts[REQUIRED[intent]] = {"unavailable": True, "places": []}
            elif intent == I.BULK_WASTE:  # the fee API failed (FALLBACK): the general rule, honestly without fees
                metrics.fallback_taken("bulk_waste_unavailable")
                contexts["bulk_waste_context"], extra = BW.unavailable(deps.kb)
                cites += extra
            elif intent in (I.WASTE, I.RECYCLABLE_PRICE):
                with turn.one_turn():  # the retry reads the message and the earlier turn again
                    step = await fallback(intent, state, contexts, deps)
                metrics.fallback_taken(step)
                if step in ("unsure", "clarify"):
                    update[step] = True
                    if step == "clarify" and intent == I.WASTE:
                        contexts["waste_answers"] = {**(contexts.get("waste_answers") or {}), "clarify": True}
                if step == "web_search":
                    update["intents"] = [*intents, I.WEB_SEARCH] if I.WEB_SEARCH not in intents else intents
            else:
                continue
            update["fallback_used"] = True
        if update.get("fallback_used") or contexts != (state.get("contexts") or {}):
            update["contexts"] = contexts
        if cites or contexts.get("_cites"):
            update["citations"] = cites + contexts.pop("_cites", [])
        return update

    update = await run_node("aggregator", runtime, body)
    gathered = combine(dict(state), update)
    if asks_location_first(gathered):
        return update
    return combine(update, await answer(gathered, runtime))


async def fallback(intent: str, state: ChatState, contexts: dict, deps: ChatDeps) -> str:
    """One intent down the chain; the name of the step that answered it (contexts updated)."""
    earlier = earlier_questions(state)[:1]
    ctx = contexts.get("waste_answers") or {}
    # 1. retry with a rewritten query: the whole message, with the previous turn for a follow-up
    if intent == I.WASTE and ctx.get("unknown"):
        retried = R.retry(deps.kb, ctx, earlier)
        if retried is not None:
            contexts["waste_answers"] = retried
            docs, cites = R.context_docs(retried)
            contexts["disposal_rules"] = docs
            contexts["_cites"] = cites
            return "rules_retry"
    if intent == I.RECYCLABLE_PRICE:
        items = deps.kb.search_prices(" ".join([state["message"], *earlier]))
        if items:
            contexts["price_context"] = price_context(deps.kb, state["message"], items)
            return "rules_retry"
    # 2. web search
    if deps.web_search is not None:
        results = await deps.web_search.search(state["message"], limit=3)
        if results:
            contexts["web_search_context"] = {"configured": True, "results": results}
            return "web_search"
    # 3. what is not known, said plainly; 4. or ask what the item is when nothing is named
    if intent == I.WASTE and ctx.get("clarify") and not ctx.get("findings") and not ctx.get("unknown"):
        return "clarify"
    return "unsure"
