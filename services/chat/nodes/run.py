"""How a node's body runs: under its policy (policy.py: timeout, retries, breaker, fail mode),
announced by STAGE started/finished/failed events, timed into `spans` and the node metrics; the
update it returns records the last seq. `superstep` wraps each node of the graph: it waits for
the task's events to be stored once, when the task returns its update to LangGraph (which
checkpoints it), not after each of the nodes a task runs in turn (understand runs intent, router,
waste_rag and the character lookup in one task): a checkpoint never records a seq whose event
was not published, and a task's events go out in as few batches as the outbox coalesces."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from langgraph.runtime import Runtime

from eco2.events.v1 import events_pb2
from eco2.services.runtime.telemetry import span

from .. import metrics
from ..deps import JobContext
from ..policy import FailMode, NodeFailed
from ..state import highest, merge


async def run_node(
    name: str, runtime: Runtime[JobContext], body: Callable[[], Awaitable[dict]], *, announce: bool = True
) -> dict:
    ctx = runtime.context
    em = ctx.emitter
    if ctx.cancelled.is_set():
        raise asyncio.CancelledError("job cancelled")
    with span(f"node.{name}"):
        started = time.monotonic()
        if announce:
            await em.stage(name, events_pb2.STAGE_PHASE_STARTED)
        try:
            update = await ctx.deps.policy.run(name, body)
        except NodeFailed as failed:
            elapsed = time.monotonic() - started
            metrics.node_finished(name, "failed", elapsed)
            if announce:  # an unannounced step (waste_rag's character lookup) fails quietly: the policy logs it
                await em.stage(name, events_pb2.STAGE_PHASE_FAILED, elapsed_s=elapsed, message=failed.cause[:200])
            if failed.mode == FailMode.FAIL_CLOSE:
                raise
            update = {"failed": [name]}
        else:
            elapsed = time.monotonic() - started
            metrics.node_finished(name, "ok", elapsed)
            if announce:
                await em.stage(name, events_pb2.STAGE_PHASE_FINISHED, elapsed_s=elapsed)
    update = dict(update or {})
    update.setdefault("spans", {})
    update["spans"] = {**update["spans"], name: [started, time.monotonic()]}
    update["seq"] = em.seq  # stored before LangGraph checkpoints the update: see `superstep`
    return update


def superstep(
    node: Callable[[Any, Runtime[JobContext]], Awaitable[dict]],
) -> Callable[[Any, Runtime[JobContext]], Awaitable[dict]]:
    """`node` as the graph runs it: its update goes back to LangGraph (and into a checkpoint)
    only once every event it emitted is stored (or it raises why one was not)."""

    async def step(state: Any, runtime: Runtime[JobContext]) -> dict:
        update = await node(state, runtime)
        await runtime.context.emitter.drain()
        return update

    step.__name__ = step.__qualname__ = node.__name__
    step.__doc__ = node.__doc__
    return step


async def nothing() -> dict:
    return {}


def combine(first: dict, then: dict) -> dict:
    """Two node updates as one (a superstep's update): the later wins, except the reducers' keys."""
    out = {**first, **then}
    for key, reduce in (("spans", merge), ("contexts", merge), ("places", merge), ("seq", highest)):
        if key in first and key in then:
            out[key] = reduce(first[key], then[key])
    for key in ("citations", "failed"):
        if key in first and key in then:
            out[key] = first[key] + then[key]
    return out
