"""Every event a chat job publishes goes out through here: QUEUED when the message is sent
(`publish_queued`), then one `Emitter` per run of the job's graph (STAGE, TOOL, TOKEN,
NEEDS_INPUT, DONE, ERROR), which assigns the seqs in emit order and queues the events on the
process's outbox (outbox.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from google.protobuf import duration_pb2

from eco2.events.v1 import events_pb2

from .outbox import EventOutbox, raise_for

STAGE_OF = {
    "summarize": events_pb2.STAGE_SUMMARIZE,
    "intent": events_pb2.STAGE_INTENT,
    "vision": events_pb2.STAGE_VISION,
    "router": events_pb2.STAGE_ROUTER,
    "aggregator": events_pb2.STAGE_AGGREGATE,
    "answer": events_pb2.STAGE_ANSWER,
    "evaluate": events_pb2.STAGE_EVALUATE,
}
STAGE_MESSAGES = {
    "intent": "질문을 이해하고 있어요",
    "router": "필요한 정보를 모으고 있어요",
    "waste_rag": "분리배출 규정을 찾고 있어요",
    "collection_point": "가까운 수거함을 찾고 있어요",
    "location": "가까운 재활용 장소를 찾고 있어요",
    "answer": "답변을 쓰고 있어요",
    "evaluate": "답변을 점검하고 있어요",
    "aggregator": "모은 정보를 정리하고 있어요",
    "summarize": "지난 대화를 요약하고 있어요",
}


class Emitter:
    """Assigns the job's seqs in emit order and queues the events on the process's outbox
    (outbox.py), which publishes them in coalesced batches in the same order. `emit` does not wait
    for the network; `drain()` does (before a graph task's update is checkpointed: nodes/run.py
    `superstep`; and before the run's ack)."""

    def __init__(
        self,
        sink,
        job_id: str,
        base_seq: int,
        *,
        traceparent: str = "",
        tokens_per_event: int = 1,
        outbox: EventOutbox | None = None,
    ) -> None:
        self.sink, self.job_id, self.seq, self.traceparent = sink, job_id, base_seq, traceparent
        self.tokens_per_event = tokens_per_event
        self.outbox = outbox if outbox is not None else EventOutbox(sink)
        self._batch: asyncio.Future | None = None  # the batch the last event goes out in
        self._earlier: list[asyncio.Future] = []  # earlier batches of ours still in flight
        self.first_token_at: float | None = None

    def put(self, kind: int, *, stage: int = 0, node: str = "", delta: str = "", **payload: Any) -> int:
        """Assign the next seq and queue the event (synchronous: seq order = publish order)."""
        self._check()
        self.seq += 1
        event = events_pb2.Event(
            job_id=self.job_id,
            seq=self.seq,
            kind=kind,
            job_kind=events_pb2.JOB_KIND_CHAT,
            stage=stage,
            node=node,
            delta=delta,
            traceparent=self.traceparent,
            **payload,
        )
        batch = self.outbox.submit(event)
        if batch is not self._batch:
            if self._batch is not None:
                self._earlier.append(self._batch)
            self._batch = batch
        return self.seq

    def _check(self) -> None:
        """Raise the failure of a finished batch of ours, if any: an earlier batch's too, not
        only the last one's, however many batches went out since the last drain. A failed batch
        is kept, so every later emit and drain raises it."""
        earlier = self._earlier
        while earlier and earlier[0].done():
            raise_for(self.job_id, earlier[0])
            earlier.pop(0)
        if self._batch is not None and self._batch.done():
            raise_for(self.job_id, self._batch)

    def token(self, delta: str) -> int:
        return self.put(events_pb2.EVENT_KIND_TOKEN, stage=events_pb2.STAGE_ANSWER, node="answer", delta=delta)

    async def emit(self, kind: int, *, stage: int = 0, node: str = "", delta: str = "", **payload: Any) -> int:
        return self.put(kind, stage=stage, node=node, delta=delta, **payload)

    async def drain(self) -> None:
        """Wait until every event emitted so far is stored (or raise why it was not)."""
        batch = self._batch
        if batch is not None:
            if not batch.done():
                await asyncio.shield(batch)  # batches go out in order: the earlier ones are done too
            self._check()

    async def stage(self, node: str, phase: int, *, elapsed_s: float | None = None, message: str = "") -> None:
        info = events_pb2.StageInfo(phase=phase, message=message or STAGE_MESSAGES.get(node, ""))
        if elapsed_s is not None:
            info.elapsed.CopyFrom(duration_pb2.Duration(seconds=int(elapsed_s), nanos=int((elapsed_s % 1) * 1e9)))
        await self.emit(
            events_pb2.EVENT_KIND_STAGE, stage=STAGE_OF.get(node, events_pb2.STAGE_SUBAGENT), node=node, stage_info=info
        )

    async def tool(self, node: str, name: str, call_id: str, phase: int, *, message: str = "") -> None:
        await self.emit(
            events_pb2.EVENT_KIND_TOOL,
            stage=STAGE_OF.get(node, events_pb2.STAGE_SUBAGENT),
            node=node,
            tool=events_pb2.ToolCall(name=name, call_id=call_id, phase=phase, message=message),
        )


async def publish_tolerant(sink, event: events_pb2.Event) -> bool:
    """Publish; a re-run's seq below the job's high-water mark that was never stored is dropped, not fatal."""
    from eco2.services.runtime.errors import FailedPrecondition

    try:
        return await sink.publish(event)
    except FailedPrecondition as exc:
        if exc.reason == "SEQ_NOT_INCREASING":
            return False
        raise


async def publish_queued(
    sink, job_id: str, owner: str, outbox: EventOutbox | None = None, *, traceparent: str = ""
) -> None:
    """The job's owner, then its first event (QUEUED): from then on the job streams to `owner` only."""
    await sink.set_owner(job_id, owner)
    event = events_pb2.Event(
        job_id=job_id,
        seq=1,
        kind=events_pb2.EVENT_KIND_STAGE,
        job_kind=events_pb2.JOB_KIND_CHAT,
        stage=events_pb2.STAGE_QUEUED,
        node="queue",
        traceparent=traceparent,
        stage_info=events_pb2.StageInfo(phase=events_pb2.STAGE_PHASE_STARTED, message="질문을 받았어요"),
    )
    event.time.FromNanoseconds(time.time_ns())
    if outbox is None:
        await publish_tolerant(sink, event)
        return
    batch = outbox.submit(event)  # coalesced with every other send and token of this tick
    await asyncio.shield(batch)
    raise_for(job_id, batch)
