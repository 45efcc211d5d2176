"""The bulk_waste sub-agent: 대형폐기물 fees of a 시·군·구 (the lookup itself is ../bulk_waste.py)."""

from __future__ import annotations

from langgraph.runtime import Runtime

from .. import bulk_waste as BW
from ..deps import JobContext
from ..state import Branch
from .run import run_node


async def bulk_waste(branch: Branch, runtime: Runtime[JobContext]) -> dict:
    ctx = runtime.context
    deps = ctx.deps
    # where the 시·군·구 and the item may be named: the branch's sub-query, the message, earlier turns
    texts = [branch.get("query") or branch["message"], branch["message"], *branch.get("earlier", [])]

    async def body() -> dict:
        return await BW.lookup(
            kb=deps.kb,
            llm=deps.llm,
            fees=deps.bulk_waste,
            texts=texts,
            emitter=ctx.emitter,
            iterations=deps.bulk_waste_tool_iterations,
        )

    return await run_node("bulk_waste", runtime, body)
