"""The chat process's event outbox: every job's events go out in coalesced `publish_many` calls.

Publishing one event per round trip cost more CPU than everything else on a token's path
(ADR 0063). Instead, `Emitter`s (one per job, emitter.py) assign their seqs synchronously and
`submit` the events here; one flusher task sends everything submitted since its last call in one
`EventPublisher.publish_many` (one Lua call per shard, pipelined), i.e. one round trip per event
loop tick for all jobs of the process. Batching changes when bytes hit the wire, never which
seq an event gets, so a re-run job still re-emits the same (job, seq)s and the producer drops
the ones it has.

Ordering: a single flusher, batches sent one after the other, events in submit order: each
job's events land in seq order. Durability: an emitter `drain()`s (waits for its events to be
stored) before its graph task returns its update to LangGraph (nodes/run.py `superstep`), so a
checkpoint never records a seq whose event was not published — the worker crash test relies on
this.

Failures: SEQ_NOT_INCREASING (a re-run's seq that was never stored) drops that event, as
before; JOB_CLOSED and any other rejection fail the events' job only; an invalid event
(InvalidArgument rejects the whole call) makes the batch go out one event at a time so only its
job fails; a Valkey error is retried (a re-sent batch is idempotent) and then fails every job
in the batch. A job learns about a failure at its next emit or drain.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from eco2.events.v1 import events_pb2
from eco2.services.runtime.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger("eco2.chat.outbox")

#: Errors of one flushed batch: job id → exception; key ALL → every job of the batch.
ALL = ""
_NO_ERRORS: dict = {}


class EventOutbox:
    def __init__(
        self, sink, *, max_batch: int = 1000, retries: int = 2, retry_delay_s: float = 0.05, high_water: int = 50_000
    ) -> None:
        self.sink = sink
        self.max_batch, self.retries, self.retry_delay_s, self.high_water = (
            max_batch,
            retries,
            retry_delay_s,
            high_water,
        )
        self._many = getattr(sink, "publish_many", None)
        self._pending: list[events_pb2.Event] = []
        self._batch: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self.flushes = 0
        self.published = 0

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def submit(self, event: events_pb2.Event) -> asyncio.Future:
        """Queue `event` (no await); returns the future of the batch it goes out in. Its result
        is the batch's error map (job id → exception, `ALL` → all)."""
        if self._batch is None:
            self._batch = asyncio.get_running_loop().create_future()
        self._pending.append(event)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flush_loop(), name="chat-outbox")
        return self._batch

    async def _flush_loop(self) -> None:
        try:
            # Runs one loop iteration after the first submit: every job woken in that tick has
            # queued its events by then; events queued while a batch is in flight form the next one.
            while self._pending:
                events, batch = self._pending, self._batch
                self._pending, self._batch = [], None
                errors: dict = _NO_ERRORS
                try:
                    for i in range(0, len(events), self.max_batch):
                        chunk_errors = await self._send(events[i : i + self.max_batch])
                        if chunk_errors:
                            errors = {**errors, **chunk_errors}
                except BaseException as exc:  # noqa: BLE001 — cancelled (shutdown): tell the waiters
                    if not batch.done():
                        batch.set_result(
                            {ALL: exc if isinstance(exc, Exception) else ConnectionError("event outbox stopped")}
                        )
                    raise
                self.flushes += 1
                self.published += len(events)
                if not batch.done():
                    batch.set_result(errors)
        finally:
            self._task = None
            if self._pending:  # cancelled with events queued: a later submit restarts the flusher
                self._task = asyncio.get_running_loop().create_task(self._flush_loop(), name="chat-outbox")

    async def _send(self, events: Sequence[events_pb2.Event]) -> dict:
        if self._many is None:
            return await self._one_by_one(events)
        attempt = 0
        while True:
            try:
                await self._many(events)
                return _NO_ERRORS
            except FailedPrecondition as exc:
                # The producer applied the whole batch and reported its first rejection; re-sending
                # the events after it (appended ones are no-ops) finds any further rejection.
                index = int(exc.metadata.get("index", len(events)))
                errors: dict = {}
                if exc.reason != "SEQ_NOT_INCREASING":  # the job is closed (or worse): fail that job
                    errors[exc.metadata.get("job_id", ALL)] = exc
                rest = [e for e in events[index + 1 :] if e.job_id not in errors]
                if rest:
                    errors.update(await self._send(rest))
                return errors
            except InvalidArgument:
                return await self._one_by_one(events)
            except Exception as exc:  # noqa: BLE001 — Valkey unreachable/timeout: the batch is idempotent, resend
                attempt += 1
                if attempt > self.retries:
                    log.warning("event batch failed", extra={"events": len(events), "error": type(exc).__name__})
                    return {ALL: exc}
                await asyncio.sleep(self.retry_delay_s * attempt)

    async def _one_by_one(self, events: Sequence[events_pb2.Event]) -> dict:
        errors: dict = {}
        for event in events:
            if event.job_id in errors:
                continue
            try:
                await self.sink.publish(event)
            except FailedPrecondition as exc:
                if exc.reason != "SEQ_NOT_INCREASING":
                    errors[event.job_id] = exc
            except Exception as exc:  # noqa: BLE001
                errors[event.job_id] = exc
        return errors


def raise_for(job_id: str, batch: asyncio.Future | None) -> None:
    """Raise the error a flushed batch recorded for `job_id`, if any."""
    if batch is None or not batch.done():
        return
    errors = batch.result()
    if errors:
        exc = errors.get(job_id) or errors.get(ALL)
        if exc is not None:
            raise exc
