"""The waste sub-agent (waste_rag): what the disposal rules say about each asked item."""

from __future__ import annotations

from langgraph.runtime import Runtime

from .. import rules as R
from ..deps import JobContext
from ..state import Branch
from .character import character_context, character_of
from .run import combine, run_node


async def waste_rag(branch: Branch, runtime: Runtime[JobContext]) -> dict:
    """What the rules say about each asked item (rules.py: the lines about it, the direct
    answer), and the Eco² character of its category (the answer's card): the character is
    looked up after the rules under the character node's own policy (timeout, breaker,
    FAIL_OPEN: no card, the rules still stand), in the same superstep — a branch of its own
    would cost a LangGraph task, its checkpoint writes and four events per answer."""
    deps = runtime.context.deps
    category: list[str] = []

    async def body() -> dict:
        ctx = R.gather(deps.kb, branch.get("query") or branch["message"], previous=[*branch.get("earlier", []), *branch.get("summarised", [])])
        update: dict = {"contexts": {"waste_answers": ctx}}
        if ctx["findings"]:
            first = ctx["findings"][0]
            names = {r.file: r.name for r in deps.kb.rules}
            category[:] = [names.get((first["dest_files"] or [first["file"]])[0], first["name"])]
            docs, cites = R.context_docs(ctx)
            update["contexts"]["disposal_rules"] = docs
            update["citations"] = cites
        return update

    update = await run_node("waste_rag", runtime, body)
    found_rules = category and "disposal_rules" in (update.get("contexts") or {})
    entry = character_of(deps.kb, category[0]) if found_rules and branch.get("with_card") else None
    if entry is None:  # no rules, a category without a character (food waste), or the character branch runs anyway
        return update
    extra = await run_node("character", runtime, lambda: character_context(deps, entry, None), announce=False)
    return combine(update, {k: v for k, v in extra.items() if k != "failed"})  # the card is optional
