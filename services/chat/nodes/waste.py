"""The waste sub-agent (waste_rag): what the disposal rules say about each asked item."""

from __future__ import annotations

from langgraph.runtime import Runtime

from eco2.services.knowledge import turn

from .. import rules as R
from ..deps import JobContext
from ..state import Branch
from .character import category_card, rule_file_of
from .run import combine, run_node


async def waste_rag(branch: Branch, runtime: Runtime[JobContext]) -> dict:
    """What the rules say about each asked item (rules.py: the lines about it, the direct
    answer), and the Eco² character of its category (the answer's card): the character is
    asked for after the rules under the character node's own policy (timeout, breaker,
    FAIL_OPEN: no card, the rules still stand), in the same superstep — a branch of its own
    would cost a LangGraph task, its checkpoint writes and four events per answer."""
    deps = runtime.context.deps
    rule_file: list[str] = []

    async def body() -> dict:
        with turn.one_turn():  # the query, its parts and its items: each analysed once
            ctx = R.gather(
                deps.kb,
                branch.get("query") or branch["message"],
                previous=[*branch.get("earlier", []), *branch.get("summarised", [])],
            )
        update: dict = {"contexts": {"waste_answers": ctx}}
        if ctx["findings"]:
            rule_file[:] = [rule_file_of(ctx["findings"][0])]
            docs, cites = R.context_docs(ctx)
            update["contexts"]["disposal_rules"] = docs
            update["citations"] = cites
        return update

    update = await run_node("waste_rag", runtime, body)
    found_rules = rule_file and "disposal_rules" in (update.get("contexts") or {})
    if (
        not found_rules or not branch.get("with_card") or deps.characters is None
    ):  # no rules, or the character branch runs anyway
        return update
    extra = await run_node("character", runtime, lambda: category_card(deps, rule_file[0]), announce=False)
    return combine(update, {k: v for k, v in extra.items() if k != "failed"})  # the card is optional
