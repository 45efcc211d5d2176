"""answer: the grounded answer, streamed token by token; the offline composer answers from the
same grounding when the model fails before its first token. A finished answer is graded in the
same superstep (evaluate): one checkpoint fewer per turn, and a re-claimed job whose worker died
while grading streams the answer again, with the same seqs."""

from __future__ import annotations

import asyncio
import time

from langgraph.runtime import Runtime

from eco2.events.v1 import events_pb2
from eco2.services.llm.offline import OfflineLLM
from eco2.services.llm.ports import Grounding, LLMError, Message
from eco2.services.runtime.telemetry import span

from .. import intents as I
from .. import metrics
from ..answer import compose
from ..deps import JobContext
from ..policy import NodeFailed
from ..state import ChatState
from .evaluate import evaluate
from .places import waiting_for_location
from .run import combine


def answer_now(state: ChatState) -> list[str]:
    """The intents this answer covers: all but those answered already and those still waiting for the location."""
    done, pending = set(state.get("answered") or []), set(waiting_for_location(state))
    return [i for i in state.get("intents") or [I.GENERAL] if i not in done and i not in pending]


def grounding_of(state: ChatState, intents: list[str] | None = None) -> Grounding:
    history = [Message("user" if m["role"] == "user" else "assistant", m["text"]) for m in state.get("history") or []]
    return Grounding(
        question=state["message"],
        intents=intents if intents is not None else list(state.get("intents") or [I.GENERAL]),
        contexts=dict(state.get("contexts") or {}),
        history=history,
        summary=state.get("summary", ""),
        unsure=bool(state.get("unsure")),
        clarify=bool(state.get("clarify")),
    )


async def answer(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    ctx = runtime.context
    deps, em = ctx.deps, ctx.emitter
    now = answer_now(state)
    grounding = grounding_of(state, now)
    before = state.get("answer") or ""  # the part answered before a NEEDS_INPUT (same turn)
    emitted: list[str] = []

    async def stream_with(llm) -> None:
        # The model's pieces go straight to TOKEN events: no LangGraph stream writer/callbacks, no
        # await per token (the outbox sends them in batches). A fixed number of pieces per event,
        # never a time window: a re-run re-emits the same seqs for the same text.
        per_event = em.tokens_per_event
        buffer: list[str] = []
        outbox = em.outbox
        async for piece in llm.stream([], grounding=grounding, max_tokens=deps.answer_max_tokens):
            if ctx.cancelled.is_set():
                raise asyncio.CancelledError("job cancelled")
            buffer.append(piece)
            if len(buffer) >= per_event or not emitted:
                text = "".join(buffer)
                buffer.clear()
                emitted.append(text)
                if em.first_token_at is None:
                    em.first_token_at = time.monotonic()
                em.token(text)
                if outbox.backlog > outbox.high_water:  # Valkey is not keeping up: wait for it
                    await em.drain()
        if buffer:
            emitted.append("".join(buffer))
            em.token(emitted[-1])

    async def body() -> dict:
        if emitted:  # tokens went out: a retry would repeat them
            raise LLMError("answer stream broke after tokens were sent", retryable=False)
        if before:  # the rest of an answer begins on a line of its own
            emitted.append("\n")
            em.token("\n")
        await stream_with(deps.llm)
        return {}

    with span("node.answer"):
        started = time.monotonic()
        await em.stage("answer", events_pb2.STAGE_PHASE_STARTED)
        fallback = False
        try:
            await deps.policy.run("answer", body)
        except NodeFailed as failed:
            if deps.llm.info.provider == "offline" or emitted:
                metrics.node_finished("answer", "failed", time.monotonic() - started)
                await em.stage("answer", events_pb2.STAGE_PHASE_FAILED, message=failed.cause[:200])
                raise
            # Model fallback: the offline composer answers from the same grounding.
            fallback = True
            metrics.fallback_taken("offline_model")
            await em.stage(
                "answer", events_pb2.STAGE_PHASE_PROGRESS, message="모델이 응답하지 않아 내장 지식으로 답할게요"
            )
            await stream_with(metrics.MeteredLLM(OfflineLLM(compose)))
        elapsed = time.monotonic() - started
        metrics.node_finished("answer", "ok", elapsed)
        await em.stage("answer", events_pb2.STAGE_PHASE_FINISHED, elapsed_s=elapsed)
        update: dict = {
            "answer": before + "".join(emitted),
            "answered": [*(state.get("answered") or []), *now],
            "spans": {"answer": [started, time.monotonic()]},
            "seq": em.seq,
        }
        if fallback:
            update["fallback_used"] = True
    done = {**state, **update}
    if answer_finished(done):
        update = combine(update, await evaluate(done, runtime))
    return update


def asks_location_first(state: ChatState) -> bool:
    """Nothing can be answered before the location question (ask_location comes next)."""
    return not answer_now(state) and waiting_for_location(state) and not state.get("located")


def answer_finished(state: ChatState) -> bool:
    """Nothing is left to ask: the answer is graded now (else ask_location comes next)."""
    return not (waiting_for_location(state) and not state.get("located"))
