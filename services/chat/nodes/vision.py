"""vision: a message with a photo — ScanService classifies the photo, which aims the waste branch
at what it shows (the body is ../media.py); then the router's stage, in the same superstep."""

from __future__ import annotations

from langgraph.runtime import Runtime

from .. import media as M
from ..deps import JobContext
from ..state import ChatState
from .route import router
from .run import combine, run_node


async def vision(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    ctx = runtime.context
    deps = ctx.deps

    async def body() -> dict:
        if deps.photos is None:  # no ScanService: say so, never guess (answer.py)
            return {"contexts": {"vision_context": {"configured": False}}}
        return await M.classify_photo(state, deps, ctx.emitter)

    update = await run_node("vision", runtime, body)
    if "vision" in update.get("failed", ()):  # FAIL_OPEN: the answer goes on from the text and says why
        update["contexts"] = {"vision_context": {"configured": True, "failed": True}}
    return combine(update, await router(state, runtime))
