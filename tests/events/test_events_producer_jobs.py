"""The producer library and the job queue against the session's real Valkey."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio

from eco2.events.v1 import events_pb2
from eco2.services.bus import domain
from eco2.services.bus.jobs import JobQueue
from eco2.services.bus.producer import EventPublisher
from eco2.services.bus.settings import EventsSettings
from eco2.services.dataplane.urls import create_redis
from eco2.services.runtime.errors import FailedPrecondition, InvalidArgument
from support.servers import env

E = events_pb2


def jid() -> str:
    return f"p-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
async def redis_client(dataplane):
    client = create_redis(dataplane.redis_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
def settings(service_env):
    with env(
        {
            **service_env,
            "ECO2_JOBS_VISIBILITY_TIMEOUT_S": "0.4",
            "ECO2_JOBS_RETRY_DELAY_S": "0.1",
            "ECO2_JOBS_MAX_ATTEMPTS": "3",
        }
    ):
        return EventsSettings()


@pytest.fixture(scope="module")
def publisher(redis_client, settings):
    return EventPublisher(redis_client, settings)


def tok(job, seq, **kw):
    return E.Event(job_id=job, seq=seq, kind=E.EVENT_KIND_TOKEN, delta="a", **kw)


async def replay(redis_client, settings, job):
    shard = domain.shard_of(job, settings.events_shards)
    return await redis_client.xrange(domain.replay_key(shard, job))


async def test_publish_appends_to_shard_and_replay_streams_once(redis_client, settings, publisher):
    job = jid()
    shard = domain.shard_of(job, settings.events_shards)
    before = await redis_client.xlen(domain.shard_stream(shard))
    assert await publisher.publish(tok(job, 1)) is True
    assert await publisher.publish(tok(job, 1)) is False  # a retry: no-op
    assert await publisher.publish(tok(job, 3)) is True
    assert await publisher.publish(tok(job, 1)) is False  # any published seq is a no-op duplicate
    rows = await replay(redis_client, settings, job)
    assert [r[0] for r in rows] == [b"1-0", b"3-0"]
    assert [int(r[1][b"p"]) for r in rows] == [0, 1]  # each knows the seq before it
    stored = E.Event.FromString(rows[1][1][b"d"])
    assert stored.seq == 3 and stored.HasField("time")  # the producer filled the time
    assert await redis_client.xlen(domain.shard_stream(shard)) - before >= 2
    ttl = await redis_client.pttl(domain.replay_key(shard, job))
    life = settings.events_replay_ttl_s * 1000
    assert life - 60_000 < ttl <= life + life // 16  # at least the TTL after the last event (scripts.py)


async def test_expiries_are_refreshed_once_per_sixteenth_of_the_ttl_not_per_call(redis_client, settings, publisher):
    """PUBLISH (and ROUTE, the same rule) PEXPIREs a job's keys only when its last refresh (field
    `x`, the server's TIME) is ttl/16 old: the keys live at least ttl after the last event."""
    job = jid()
    shard = domain.shard_of(job, settings.events_shards)
    pkey, rkey = domain.producer_key(shard, job), domain.replay_key(shard, job)
    life = settings.events_replay_ttl_s * 1000
    assert await publisher.publish(tok(job, 1))
    refreshed = int(await redis_client.hget(pkey, "x"))
    # a recent refresh: the next call leaves the expiries alone (lowered here to tell)
    for key in (pkey, rkey):
        await redis_client.pexpire(key, 600_000)
    assert await publisher.publish(tok(job, 2))
    assert 0 < await redis_client.pttl(pkey) <= 600_000 and 0 < await redis_client.pttl(rkey) <= 600_000
    assert int(await redis_client.hget(pkey, "x")) == refreshed
    # a refresh ttl/16 old: the next call sets both to ttl + ttl/16 again
    await redis_client.hset(pkey, "x", refreshed - life // 16)
    assert await publisher.publish(tok(job, 3))
    for key in (pkey, rkey):
        assert life < await redis_client.pttl(key) <= life + life // 16
    assert int(await redis_client.hget(pkey, "x")) >= refreshed


async def test_a_seq_that_goes_backwards_is_rejected(publisher):
    job = jid()
    await publisher.publish(tok(job, 5))
    with pytest.raises(FailedPrecondition) as err:
        await publisher.publish(tok(job, 4))
    assert err.value.reason == "SEQ_NOT_INCREASING" and err.value.metadata["last_seq"] == "5"


async def test_terminal_event_closes_the_job(publisher):
    job = jid()
    await publisher.publish(tok(job, 1))
    done = E.Event(job_id=job, seq=2, kind=E.EVENT_KIND_DONE)
    assert await publisher.publish(done) is True
    assert await publisher.publish(done) is False  # retrying the terminal event is still a no-op
    with pytest.raises(FailedPrecondition) as err:
        await publisher.publish(tok(job, 3))
    assert err.value.reason == "JOB_CLOSED"


@pytest.mark.parametrize(
    "event,field",
    [
        (E.Event(job_id="", seq=1, kind=E.EVENT_KIND_TOKEN), "job_id"),
        (E.Event(job_id="a b", seq=1, kind=E.EVENT_KIND_TOKEN), "job_id"),
        (E.Event(job_id="ok", seq=0, kind=E.EVENT_KIND_TOKEN), "seq"),
        (E.Event(job_id="ok", seq=2**53, kind=E.EVENT_KIND_TOKEN), "seq"),
        (E.Event(job_id="ok", seq=1), "kind"),
        (E.Event(job_id="ok", seq=1, kind=99), "kind"),
    ],
)
async def test_invalid_events_are_rejected_with_the_field(publisher, event, field):
    with pytest.raises(InvalidArgument) as err:
        await publisher.publish(event)
    assert [v.field for v in err.value.violations] == [field]


async def test_oversized_event_is_rejected(redis_client, service_env):
    with env({**service_env, "ECO2_EVENTS_MAX_EVENT_BYTES": "1000"}):
        small = EventPublisher(redis_client, EventsSettings())
    with pytest.raises(InvalidArgument) as err:
        await small.publish(E.Event(job_id=jid(), seq=1, kind=E.EVENT_KIND_TOKEN, delta="x" * 2000))
    assert [v.field for v in err.value.violations] == ["event"]


async def test_replay_stream_is_capped(redis_client, service_env):
    with env({**service_env, "ECO2_EVENTS_REPLAY_MAXLEN": "10"}):
        s = EventsSettings()
    p = EventPublisher(redis_client, s)
    job = jid()
    for q in range(1, 26):
        await p.publish(tok(job, q))
    rows = await replay(redis_client, s, job)
    assert [int(r[0].split(b"-")[0]) for r in rows] == list(range(16, 26))


async def test_concurrent_publishers_of_one_seq_append_it_once(publisher, redis_client, settings):
    job = jid()
    results = await asyncio.gather(*(publisher.publish(tok(job, 1)) for _ in range(20)))
    assert sorted(results) == [False] * 19 + [True]
    assert len(await replay(redis_client, settings, job)) == 1


# -- job queue ---------------------------------------------------------------------------------


def kind() -> str:
    return "k" + uuid.uuid4().hex[:8]


async def test_enqueue_is_idempotent_and_claim_ack_removes_the_job(redis_client, settings):
    q = JobQueue(redis_client, kind(), settings)
    assert await q.enqueue("job-1", b"\x00payload") is True
    assert await q.enqueue("job-1", b"other") is False
    job = await q.claim("w1", block_ms=100)
    assert (job.job_id, job.payload, job.attempt) == ("job-1", b"\x00payload", 1)
    assert await q.claim("w2", block_ms=50) is None  # claimed by w1, still within visibility
    await q.ack(job)
    await asyncio.sleep(settings.jobs_visibility_timeout_s + 0.2)
    assert await q.claim("w2", block_ms=50) is None  # acked: never comes back
    assert await redis_client.xlen(q.stream) == 0


class Counted(redis.asyncio.Redis):
    """The session's Valkey through redis-py, counting the commands sent (a pipeline is one)."""

    sent = 0

    async def execute_command(self, *args, **options):
        self.sent += 1
        return await super().execute_command(*args, **options)


async def test_a_claim_that_finds_a_job_is_one_round_trip_new_or_reclaimed(dataplane, settings):
    client = Counted.from_url(dataplane.redis_url)
    try:
        q = JobQueue(client, kind(), settings)
        assert await q.claim("w", block_ms=0) is None  # the group exists from here on
        await q.enqueue("job-rt", b"p")
        client.sent = 0
        job = await q.claim("dies", block_ms=100)
        assert (job.job_id, job.attempt, client.sent) == ("job-rt", 1, 1)
        for _ in range(200):  # the first worker died: reclaimed once the visibility timeout passed
            client.sent = 0
            if (again := await q.claim("survivor", block_ms=20)) is not None:
                break
        assert (again.job_id, again.attempt, client.sent) == ("job-rt", 2, 1)
        await q.ack(again)
    finally:
        await client.aclose()


async def test_a_job_whose_worker_died_is_reclaimed_after_the_visibility_timeout(redis_client, settings):
    q = JobQueue(redis_client, kind(), settings)
    await q.enqueue("job-2", b"p")
    first = await q.claim("dies", block_ms=100)
    assert first.attempt == 1
    assert await q.claim("survivor", block_ms=50) is None
    await asyncio.sleep(settings.jobs_visibility_timeout_s + 0.1)
    again = await q.claim("survivor", block_ms=50)
    assert (again.job_id, again.attempt) == ("job-2", 2)
    await q.ack(again)


async def test_a_held_job_keeps_its_claim_past_the_visibility_timeout_and_is_reclaimed_once_let_go(
    redis_client, settings
):
    q = JobQueue(redis_client, kind(), settings)
    await q.enqueue("job-held", b"p")
    job = await q.claim("slow-worker", block_ms=100)
    loop = asyncio.get_running_loop()
    async with q.holding(job):
        until = loop.time() + 4 * settings.jobs_visibility_timeout_s
        while loop.time() < until:  # a worker still answering: nobody else may take its job
            assert await q.claim("other", block_ms=20) is None
    again = None
    for _ in range(100):  # let go without an ack (the worker died): reclaimed after the timeout
        again = await q.claim("other", block_ms=20)
        if again is not None:
            break
        await asyncio.sleep(0.02)
    assert again is not None and (again.job_id, again.attempt) == ("job-held", 2)
    await q.ack(again)


async def test_failed_job_is_retried_then_dead_lettered_with_its_error(redis_client, settings):
    q = JobQueue(redis_client, kind(), settings)
    await q.enqueue("job-3", b"payload-3")
    attempts = []
    for n in range(settings.jobs_max_attempts):
        job = None
        for _ in range(40):
            job = await q.claim("w", block_ms=50)
            if job:
                break
            await asyncio.sleep(0.05)
        assert job is not None, f"attempt {n + 1} never came"
        attempts.append(job.attempt)
        await q.fail(job, f"boom {job.attempt}")
    assert attempts == [1, 2, 3]
    await asyncio.sleep(settings.jobs_visibility_timeout_s + 0.1)
    assert await q.claim("w", block_ms=50) is None
    dead = await redis_client.xrange(q.dead_stream)
    assert len(dead) == 1
    fields = dead[0][1]
    assert (fields[b"j"], fields[b"p"], fields[b"a"], fields[b"e"]) == (b"job-3", b"payload-3", b"3", b"boom 3")


async def test_each_further_failure_of_a_job_waits_longer(redis_client, settings):
    """ECO2_JOBS_RETRY_DELAY_S after the first failure, twice that after the second
    (ECO2_JOBS_RETRY_BACKOFF 2), each lengthened by at most the jitter; capped by
    ECO2_JOBS_RETRY_MAX_DELAY_S."""
    q = JobQueue(redis_client, kind(), settings)
    base, jitter = settings.jobs_retry_delay_s, settings.jobs_retry_jitter
    for attempt in (1, 2, 3):
        delay = q.retry_delay_s(attempt)
        assert base * 2 ** (attempt - 1) <= delay <= base * 2 ** (attempt - 1) * (1 + jitter)
    assert q.retry_delay_s(40) <= settings.jobs_retry_max_delay_s * (1 + jitter)
    await q.enqueue("job-backoff", b"p")
    loop = asyncio.get_running_loop()
    waited = []
    job = await q.claim("w", block_ms=50)
    for _ in range(2):
        await q.fail(job, "boom")
        failed_at, job = loop.time(), None
        while job is None:
            job = await q.claim("w", block_ms=0)
            if job is None:
                await asyncio.sleep(0.01)
        waited.append(loop.time() - failed_at)
    assert waited[0] >= base * 0.9 and waited[1] >= 2 * base * 0.9, waited  # never earlier than the delay
    await q.ack(job)


async def test_a_job_abandoned_max_attempts_times_is_dead_lettered(redis_client, settings):
    q = JobQueue(redis_client, kind(), settings)
    await q.enqueue("job-4", b"p4")
    job = await q.claim("w", block_ms=50)
    await q.fail(job, "first error")  # a reported failure, then workers die
    for _ in range(settings.jobs_max_attempts - 1):
        got = None
        for _ in range(40):
            got = await q.claim("w", block_ms=50)
            if got:
                break
            await asyncio.sleep(0.05)
        assert got is not None
    await asyncio.sleep(settings.jobs_visibility_timeout_s + 0.1)
    assert await q.claim("w", block_ms=50) is None
    dead = await redis_client.xrange(q.dead_stream)
    assert dead and dead[0][1][b"j"] == b"job-4"
    assert b"first error" in dead[0][1][b"e"] and dead[0][1][b"a"] == b"3"


async def test_many_workers_claim_each_job_exactly_once(redis_client, settings):
    q = JobQueue(redis_client, kind(), settings)
    ids = [f"job-{i}" for i in range(60)]
    for i in ids:
        await q.enqueue(i, i.encode())
    seen = []

    async def worker(name):
        while (job := await q.claim(name, block_ms=100)) is not None:
            seen.append(job.job_id)
            await q.ack(job)

    await asyncio.gather(*(worker(f"w{i}") for i in range(6)))
    assert sorted(seen) == sorted(ids)


@pytest.mark.parametrize("bad_kind", ["", "Chat", "a b", "x" * 40])
async def test_bad_queue_kind_or_job_id_is_invalid(redis_client, settings, bad_kind):
    with pytest.raises(InvalidArgument):
        JobQueue(redis_client, bad_kind, settings)
    with pytest.raises(InvalidArgument):
        await JobQueue(redis_client, "chat", settings).enqueue("bad id", b"")


# -- publish_many: several events (one or more jobs, one or more shards) per round trip -------


async def test_publish_many_appends_in_order_and_is_idempotent(redis_client, settings, publisher):
    jobs = [jid() for _ in range(6)]  # with 4 shards, several shards in one pipelined call
    assert len({domain.shard_of(j, settings.events_shards) for j in jobs}) > 1
    batch = [tok(j, s) for s in (1, 2, 4) for j in jobs]  # interleaved jobs, each in seq order
    assert await publisher.publish_many(batch) == [True] * len(batch)
    for j in jobs:
        rows = await replay(redis_client, settings, j)
        assert [r[0] for r in rows] == [b"1-0", b"2-0", b"4-0"]
        assert [int(r[1][b"p"]) for r in rows] == [0, 1, 2]  # prev seq chained inside one call
        assert E.Event.FromString(rows[0][1][b"d"]).HasField("time")
    # the same batch again (a retry) is a no-op; so is any mix of old and new events
    assert await publisher.publish_many(batch) == [False] * len(batch)
    assert await publisher.publish_many([tok(jobs[0], 4), tok(jobs[0], 5), tok(jobs[0], 5)]) == [False, True, False]
    assert await publisher.publish(tok(jobs[0], 5)) is False
    rows = await replay(redis_client, settings, jobs[0])
    assert [r[0] for r in rows] == [b"1-0", b"2-0", b"4-0", b"5-0"]


async def test_publish_many_shard_entries_are_routable(redis_client, settings, publisher):
    """The shard stream entry carries everything the router needs in its `h` field."""
    job = jid()
    shard = domain.shard_of(job, settings.events_shards)
    await publisher.publish_many(
        [tok(job, 1), E.Event(job_id=job, seq=2, kind=E.EVENT_KIND_STAGE, stage=E.STAGE_INTENT, node="intent")]
    )
    rows = [
        r
        for r in await redis_client.xrevrange(domain.shard_stream(shard), count=200)
        if r[1][b"h"].endswith(b" " + job.encode())
    ]
    assert len(rows) == 2
    h2 = rows[0][1][b"h"].split(b" ")
    assert h2[:3] == [b"1", b"2", b"0"] and h2[4] == str(E.STAGE_INTENT).encode() and rows[0][1][b"n"] == b"intent"
    assert b"n" not in rows[1][1]  # no node: no field


async def test_publish_many_rejections_and_terminal_inside_a_batch(redis_client, settings, publisher):
    a, b = jid(), jid()
    await publisher.publish(tok(a, 5))
    # a's 3 goes backwards; b's events and a's 6 are still applied, then the first rejection is raised
    with pytest.raises(FailedPrecondition) as err:
        await publisher.publish_many(
            [tok(b, 1), tok(a, 3), tok(a, 6), E.Event(job_id=b, seq=2, kind=E.EVENT_KIND_DONE), tok(b, 3)]
        )
    assert err.value.reason == "SEQ_NOT_INCREASING" and err.value.metadata["index"] == "1"
    assert [r[0] for r in await replay(redis_client, settings, a)] == [b"5-0", b"6-0"]
    assert [r[0] for r in await replay(redis_client, settings, b)] == [b"1-0", b"2-0"]  # seq 3 after DONE: JOB_CLOSED
    with pytest.raises(FailedPrecondition) as err:
        await publisher.publish_many([tok(b, 4)])
    assert err.value.reason == "JOB_CLOSED"


async def test_publish_many_invalid_event_sends_nothing(redis_client, settings, publisher):
    job = jid()
    with pytest.raises(InvalidArgument) as err:
        await publisher.publish_many(
            [tok(job, 1), E.Event(job_id=job, seq=0, kind=E.EVENT_KIND_TOKEN), tok("bad id", 1)]
        )
    fields = {v.field for v in err.value.violations}
    assert fields == {"events[1].seq", "events[2].job_id"}
    assert await replay(redis_client, settings, job) == []
    assert await publisher.publish_many([]) == []


async def test_concurrent_identical_batches_append_each_seq_once(redis_client, settings, publisher):
    job = jid()
    batches = [[tok(job, s) for s in range(1, 41)] for _ in range(5)]  # 5 retries racing
    results = await asyncio.gather(*(publisher.publish_many(b) for b in batches))
    assert sum(r.count(True) for r in results) == 40
    assert [r[0] for r in await replay(redis_client, settings, job)] == [f"{s}-0".encode() for s in range(1, 41)]


def test_live_frames_round_trip():
    frame = domain.frame_live(0, 1, False, "job-1", b"a b\nc") + domain.frame_live(1, 2, True, "job-2", b"")
    assert list(domain.iter_live(frame)) == [(0, 1, False, "job-1", b"a b\nc"), (1, 2, True, "job-2", b"")]
    with pytest.raises(ValueError):
        list(domain.iter_live(frame[:-1]))  # truncated


async def test_publish_many_across_shards_is_one_pipeline_and_survives_a_script_flush(
    redis_client, settings, publisher
):
    """Several shards' Lua calls go in one pipeline without redis-py's SCRIPT EXISTS round trip;
    when Valkey lost the script (restart, SCRIPT FLUSH) the calls are re-run after SCRIPT LOAD."""
    jobs = []
    while len({domain.shard_of(j, settings.events_shards) for j in jobs}) < min(3, settings.events_shards):
        jobs.append(jid())

    async def exists_calls() -> int:
        return (await redis_client.info("commandstats")).get("cmdstat_script|exists", {}).get("calls", 0)

    before = await exists_calls()
    assert await publisher.publish_many([tok(j, 1) for j in jobs]) == [True] * len(jobs)
    await redis_client.script_flush()
    assert await publisher.publish_many([tok(j, s) for j in jobs for s in (2, 3)]) == [True] * (2 * len(jobs))
    assert await publisher.publish_many([tok(j, 3) for j in jobs]) == [False] * len(jobs)  # duplicates: no-ops
    assert await exists_calls() == before
    for j in jobs:
        assert [r[0] for r in await replay(redis_client, settings, j)] == [b"1-0", b"2-0", b"3-0"]


async def test_publish_next_follows_the_last_seq_and_stops_at_a_closed_job(publisher):
    job = jid()
    assert await publisher.publish_next(tok(job, 99)) is True  # a job with no events yet: seq 1
    await publisher.publish(tok(job, 5))
    error = events_pb2.Event(
        job_id=job, kind=events_pb2.EVENT_KIND_ERROR, error=events_pb2.JobError(reason="JOB_FAILED")
    )
    assert await publisher.publish_next(error) is True and error.seq == 6
    assert await publisher.publish_next(tok(job, 1)) is False  # closed by its ERROR: nothing after it


async def test_dead_lettering_calls_on_dead_with_the_job_and_its_error(redis_client, settings):
    dead: list[tuple[str, str]] = []

    async def on_dead(job, error: str) -> None:
        dead.append((job.job_id, error))

    q = JobQueue(redis_client, kind(), settings, on_dead=on_dead)
    await q.enqueue("job-5", b"p5")
    job = await q.claim("w", block_ms=50)
    job.attempt = settings.jobs_max_attempts  # its last attempt
    await q.fail(job, "gave up")
    assert dead == [("job-5", "gave up")]


async def test_a_dead_lettered_job_ends_its_stream_with_job_failed(redis_client, settings, publisher):
    from eco2.services.bus.jobs import ends_stream_on_dead

    stream = f"scan-{uuid.uuid4().hex[:8]}"
    await publisher.publish(events_pb2.Event(job_id=stream, seq=1, kind=events_pb2.EVENT_KIND_STAGE))
    on_dead = ends_stream_on_dead(
        publisher,
        job_kind=events_pb2.JOB_KIND_SCAN,
        message="다시 시도해 주세요",
        stream_of=lambda job: job.job_id.split(":", 1)[0],
    )
    q = JobQueue(redis_client, kind(), settings, on_dead=on_dead)
    await q.enqueue(f"{stream}:input:1", b"{}")  # a resume job streams on its scan's job
    job = await q.claim("w", block_ms=50)
    job.attempt = settings.jobs_max_attempts
    await q.fail(job, "gave up")
    rows = await replay(redis_client, settings, stream)
    assert [r[0] for r in rows] == [b"1-0", b"2-0"]  # the job's next seq
    last = events_pb2.Event.FromString(rows[-1][1][b"d"])
    assert last.kind == events_pb2.EVENT_KIND_ERROR
    assert (last.job_kind, last.error.reason, last.error.message) == (
        events_pb2.JOB_KIND_SCAN,
        "JOB_FAILED",
        "다시 시도해 주세요",
    )
