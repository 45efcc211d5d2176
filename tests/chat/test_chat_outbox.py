"""The chat process's event outbox (services/chat/outbox.py): every job's events go out in
coalesced publish_many calls, in seq order per job; seqs are assigned at emit, so a re-run job
re-emits the same (job, seq)s and the producer's dedupe gives each token exactly once."""

from __future__ import annotations

import asyncio

import pytest

from eco2.events.v1 import events_pb2
from eco2.services.chat.emitter import Emitter
from eco2.services.chat.outbox import EventOutbox
from eco2.services.runtime.errors import FailedPrecondition, InvalidArgument


class Producer:
    """EventPublisher's contract in memory: per job a high-water mark, a stored set, a closed flag."""

    def __init__(self) -> None:
        self.stored: dict[str, dict[int, events_pb2.Event]] = {}
        self.last: dict[str, int] = {}
        self.closed: set[str] = set()
        self.calls: list[int] = []
        self.fail_next = 0

    def _one(self, e: events_pb2.Event, index: int | None) -> bool:
        if e.delta == "INVALID":
            raise InvalidArgument("invalid event")
        last = self.last.get(e.job_id, 0)
        meta = {
            "job_id": e.job_id,
            "seq": str(e.seq),
            "last_seq": str(last),
            **({"index": str(index)} if index is not None else {}),
        }
        if e.seq <= last:
            if e.seq in self.stored.get(e.job_id, {}):
                return False
            raise FailedPrecondition("not increasing", reason="SEQ_NOT_INCREASING", metadata=meta)
        if e.job_id in self.closed:
            raise FailedPrecondition("closed", reason="JOB_CLOSED", metadata=meta)
        self.stored.setdefault(e.job_id, {})[e.seq] = e
        self.last[e.job_id] = e.seq
        if e.kind in (events_pb2.EVENT_KIND_DONE, events_pb2.EVENT_KIND_ERROR):
            self.closed.add(e.job_id)
        return True

    async def publish(self, e: events_pb2.Event) -> bool:
        self.calls.append(1)
        return self._one(e, None)

    async def publish_many(self, events) -> list[bool]:
        await asyncio.sleep(0)
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("valkey went away")
        if any(e.delta == "INVALID" for e in events):
            raise InvalidArgument("invalid event")
        self.calls.append(len(events))
        out, error = [], None
        for i, e in enumerate(events):
            try:
                out.append(self._one(e, i))
            except FailedPrecondition as exc:
                error = error or exc
                out.append(False)
        if error:
            raise error
        return out

    def deltas(self, job: str) -> list[str]:
        return [self.stored[job][s].delta for s in sorted(self.stored.get(job, {}))]


async def run_job(
    outbox: EventOutbox, job: str, pieces: list[str], *, base: int = 1, stop_after: int | None = None
) -> Emitter:
    em = Emitter(outbox.sink, job, base, tokens_per_event=1, outbox=outbox)
    await em.emit(events_pb2.EVENT_KIND_STAGE, node="answer")
    for i, p in enumerate(pieces):
        if stop_after is not None and i == stop_after:
            return em
        em.token(p)
        if i % 7 == 0:
            await asyncio.sleep(0)  # other jobs interleave
    await em.emit(events_pb2.EVENT_KIND_DONE, node="done")
    await em.drain()
    return em


async def test_many_jobs_share_few_round_trips_and_keep_seq_order():
    producer = Producer()
    outbox = EventOutbox(producer)
    pieces = [f"t{i} " for i in range(50)]
    await asyncio.gather(*(run_job(outbox, f"chat-job{j}", pieces) for j in range(40)))
    for j in range(40):
        seqs = sorted(producer.stored[f"chat-job{j}"])
        assert seqs == list(range(2, 2 + 52)), "every event stored, seqs consecutive"
        assert producer.deltas(f"chat-job{j}")[1:-1] == pieces
    events = 40 * 52
    assert sum(producer.calls) == events
    assert len(producer.calls) < events / 20, f"coalesced: {len(producer.calls)} calls for {events} events"


async def test_a_rerun_after_a_crash_re_emits_the_same_seqs_and_each_token_lands_once():
    producer = Producer()
    pieces = [f"조각{i:02d} " for i in range(30)]
    # 1. the first worker gets half way, its last events never leave the process (killed)
    first = EventOutbox(producer)
    em = await run_job(first, "chat-crash", pieces, stop_after=12)
    await em.drain()
    # 2. the re-run starts from the checkpoint's seq (before the answer node) and emits everything again
    await run_job(EventOutbox(producer), "chat-crash", pieces)
    assert producer.deltas("chat-crash")[1:-1] == pieces, "each token exactly once, in order"


async def test_a_rerun_seq_that_was_never_stored_is_dropped_not_fatal():
    producer = Producer()
    outbox = EventOutbox(producer)
    producer.last["chat-gap"] = 10  # a later seq was stored; seq 5 was lost
    em = Emitter(producer, "chat-gap", 4, outbox=outbox)
    await em.emit(events_pb2.EVENT_KIND_STAGE, node="x")  # seq 5: SEQ_NOT_INCREASING, dropped
    other = Emitter(producer, "chat-other", 1, outbox=outbox)
    await other.emit(events_pb2.EVENT_KIND_STAGE, node="y")  # same batch: still stored
    await em.drain()
    await other.drain()
    assert producer.deltas("chat-other") == [""] and 5 not in producer.stored.get("chat-gap", {})


async def test_a_closed_job_fails_only_that_job_and_an_invalid_event_only_its_job():
    producer = Producer()
    outbox = EventOutbox(producer)
    producer.closed.add("chat-closed")
    closed = Emitter(producer, "chat-closed", 1, outbox=outbox)
    bad = Emitter(producer, "chat-bad", 1, outbox=outbox)
    fine = Emitter(producer, "chat-fine", 1, outbox=outbox)
    await closed.emit(events_pb2.EVENT_KIND_STAGE, node="a")
    bad.token("INVALID")
    fine.token("ok")
    with pytest.raises(FailedPrecondition):
        await closed.drain()
    with pytest.raises(InvalidArgument):
        await bad.drain()
    await fine.drain()
    assert producer.deltas("chat-fine") == ["ok"]
    with pytest.raises(InvalidArgument):  # the job learns it at its next emit too
        bad.token("more")


async def test_a_valkey_error_is_retried_with_the_same_batch():
    producer = Producer()
    producer.fail_next = 1
    outbox = EventOutbox(producer, retry_delay_s=0.01)
    em = Emitter(producer, "chat-retry", 1, outbox=outbox)
    for t in ("a", "b", "c"):
        em.token(t)
    await em.drain()
    assert producer.deltas("chat-retry") == ["a", "b", "c"]


async def test_a_sink_without_publish_many_gets_one_event_at_a_time():
    class Plain:
        def __init__(self) -> None:
            self.events: list[events_pb2.Event] = []

        async def publish(self, e: events_pb2.Event) -> bool:
            self.events.append(e)
            return True

    sink = Plain()
    em = Emitter(sink, "chat-plain", 1)
    for t in ("x", "y"):
        em.token(t)
    await em.drain()
    assert [(e.seq, e.delta) for e in sink.events] == [(2, "x"), (3, "y")]


async def test_a_lost_earlier_batch_fails_the_drain_even_when_a_later_one_is_stored():
    """Batch 1 fails for good (Valkey away past the retries), batch 2 is stored: the job's drain
    must still raise, or a checkpoint would record seqs whose events were never published."""
    producer = Producer()
    producer.fail_next = 3  # the first call and its two retries
    outbox = EventOutbox(producer, retries=2, retry_delay_s=0.01)
    em = Emitter(producer, "chat-lost", 1, outbox=outbox)
    em.token("lost")
    while not producer.fail_next < 3:  # batch 1 is in flight: the next event makes batch 2
        await asyncio.sleep(0)
    em.token("stored")
    with pytest.raises(ConnectionError):
        await em.drain()
    assert producer.deltas("chat-lost") == ["stored"]
    with pytest.raises(ConnectionError):  # and every later emit says so too
        em.token("more")
