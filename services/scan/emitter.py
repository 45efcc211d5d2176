"""A scan's events: seq-numbered in emit order, published in batches.

Every event a scan emits is a function of what its stages stored (postgres.py): a stage stores
its outcome before emitting anything that depends on it. A worker that re-runs a scan (after a
crash, or to continue it after an answer) therefore re-emits the very same events with the very
same seqs from the start; the producer keeps the first copy of each (job, seq) and drops the
repeats, so a client sees every event exactly once and in order. QUEUED is seq 1 (the servicer
publishes it); the worker's first event is seq 2.
"""

from __future__ import annotations

import time

from google.protobuf import duration_pb2

from eco2.events.v1 import events_pb2
from eco2.services.runtime.errors import FailedPrecondition

from .domain import pieces


def queued_event(job_id: str) -> events_pb2.Event:
    event = events_pb2.Event(
        job_id=job_id,
        seq=1,
        kind=events_pb2.EVENT_KIND_STAGE,
        job_kind=events_pb2.JOB_KIND_SCAN,
        stage=events_pb2.STAGE_QUEUED,
        node="queue",
        stage_info=events_pb2.StageInfo(phase=events_pb2.STAGE_PHASE_STARTED, message="사진을 받았어요"),
    )
    event.time.FromNanoseconds(time.time_ns())
    return event


async def publish_tolerant(sink, events: list[events_pb2.Event]) -> None:
    """Publish in one round trip; a repeat below the job's last seq whose copy was trimmed from the
    replay stream (SEQ_NOT_INCREASING) is dropped like any repeat, and the rest still go out."""
    while events:
        try:
            await sink.publish_many(events)
            return
        except FailedPrecondition as exc:
            if exc.reason != "SEQ_NOT_INCREASING":
                raise
            events = events[int(exc.metadata.get("index", len(events))) + 1 :]


class Emitter:
    def __init__(self, sink, job_id: str, *, tokens_per_event: int) -> None:
        self.sink, self.job_id, self.tokens_per_event = sink, job_id, tokens_per_event
        self.seq = 1
        self._pending: list[events_pb2.Event] = []

    def put(self, kind: int, *, stage: int, node: str, delta: str = "", **payload) -> int:
        self.seq += 1
        self._pending.append(
            events_pb2.Event(
                job_id=self.job_id,
                seq=self.seq,
                kind=kind,
                job_kind=events_pb2.JOB_KIND_SCAN,
                stage=stage,
                node=node,
                delta=delta,
                **payload,
            )
        )
        return self.seq

    def stage(self, stage: int, node: str, phase: int, message: str = "", *, elapsed_s: float | None = None) -> None:
        info = events_pb2.StageInfo(phase=phase, message=message)
        if elapsed_s is not None:
            info.elapsed.CopyFrom(duration_pb2.Duration(seconds=int(elapsed_s), nanos=int((elapsed_s % 1) * 1e9)))
        self.put(events_pb2.EVENT_KIND_STAGE, stage=stage, node=node, stage_info=info)

    def tokens(self, text: str) -> None:
        """The answer as TOKEN events: the first word alone (it shows at once), then
        `tokens_per_event` words per event (a fixed grouping: a re-run emits the same events)."""
        words = pieces(text)
        groups = words[:1] + [
            "".join(words[i : i + self.tokens_per_event]) for i in range(1, len(words), self.tokens_per_event)
        ]
        for delta in groups:
            self.put(events_pb2.EVENT_KIND_TOKEN, stage=events_pb2.STAGE_ANSWER, node="answer", delta=delta)

    async def flush(self) -> None:
        """Publish everything emitted since the last flush (one round trip)."""
        events, self._pending = self._pending, []
        await publish_tolerant(self.sink, events)
