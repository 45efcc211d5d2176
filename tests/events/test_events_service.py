"""EventService over real gRPC on a real port, fed by the real producer and router through the
session's real Valkey: exactly-once resumable Subscribe, GetJobState, bad input and faults."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from eco2.events.v1 import events_pb2, events_pb2_grpc
from eco2.services.bus import domain
from eco2.services.dataplane.urls import create_redis
from eco2.services.runtime.errors import status_details, unpack_details
from support.servers import env, running

E = events_pb2


def jid(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def ev(job: str, seq: int, kind: int = E.EVENT_KIND_TOKEN, **kw) -> events_pb2.Event:
    if kind == E.EVENT_KIND_TOKEN and "delta" not in kw:
        kw["delta"] = f"t{seq}"
    return events_pb2.Event(job_id=job, seq=seq, kind=kind, job_kind=E.JOB_KIND_CHAT, **kw)


def done(job: str, seq: int) -> events_pb2.Event:
    return ev(job, seq, E.EVENT_KIND_DONE, stage=E.STAGE_ANSWER, done=events_pb2.JobResult(summary="ok"))


TEST_ENV = {
    "ECO2_EVENTS_UNKNOWN_JOB_GRACE_S": "1.0",
    "ECO2_EVENTS_SUBSCRIBER_BUFFER": "8",
    "ECO2_EVENTS_REPLAY_BATCH": "7",  # small: catch-up crosses several XRANGE pages
    "ECO2_EVENTS_RECLAIM_IDLE_MS": "300",
    "ECO2_EVENTS_RECLAIM_INTERVAL_S": "0.2",
    "ECO2_EVENTS_ROUTER_BLOCK_MS": "200",
    "ECO2_EVENTS_BATCH_MAX_EVENTS": "6",  # below the replay page: the server's limit is reached
}
#: Subscribe (one Event per message) and SubscribeBatches (several per message): one
#: implementation, two framings; the guarantees are tested over both.
RPCS = ["per_event", "batches"]


@pytest.fixture(scope="module")
async def events(service_env):
    from eco2.services.events.app import create

    with env({**service_env, **TEST_ENV}):
        app = create()
    async with running(app, metrics=False) as server:
        yield server


@pytest.fixture(scope="module")
async def stub(events):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{events.port}") as ch:
        yield events_pb2_grpc.EventServiceStub(ch)


@pytest.fixture(scope="module")
async def redis_client(dataplane):
    client = create_redis(dataplane.redis_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
async def publisher(redis_client, events):
    from eco2.services.bus.producer import EventPublisher

    return EventPublisher(redis_client, events.app.settings)


async def collect(
    stub,
    job: str,
    after: int = 0,
    *,
    limit: int | None = None,
    timeout: float = 20,
    rpc: str = "per_event",
    messages: list | None = None,
    **batch,
) -> list[events_pb2.Event]:
    """The events of one stream; with rpc="batches" read over SubscribeBatches (each message's
    events; `limit` then stops after the message that reaches it), appending each message to
    `messages` when given."""
    out = []
    if rpc == "batches":
        call = stub.SubscribeBatches(E.SubscribeBatchesRequest(job_id=job, after_seq=after, **batch), timeout=timeout)
    else:
        call = stub.Subscribe(E.SubscribeRequest(job_id=job, after_seq=after), timeout=timeout)
    async for m in call:
        if rpc == "batches":
            assert m.events, "an empty batch message"
            out.extend(m.events)
        else:
            out.append(m)
        if messages is not None:
            messages.append(m)
        if limit is not None and len(out) >= limit:
            call.cancel()
            break
    return out


@pytest.mark.parametrize("rpc", RPCS)
async def test_replay_then_live_in_order_and_stream_ends_after_done(stub, publisher, rpc):
    job = jid()
    for s in range(1, 21):
        assert await publisher.publish(ev(job, s)) is True
    task = asyncio.create_task(collect(stub, job, rpc=rpc))
    await asyncio.sleep(0.2)
    for s in range(21, 41):
        await publisher.publish(ev(job, s))
    await publisher.publish(done(job, 41))
    got = await asyncio.wait_for(task, 20)
    assert [e.seq for e in got] == list(range(1, 42))
    assert got[5].delta == "t6" and got[-1].kind == E.EVENT_KIND_DONE and got[-1].done.summary == "ok"
    assert all(e.HasField("time") for e in got)


@pytest.mark.parametrize("rpc", RPCS)
async def test_resume_after_seq_and_after_terminal(stub, publisher, rpc):
    job = jid()
    for s in (2, 4, 9):  # seqs need not be contiguous
        await publisher.publish(ev(job, s))
    await publisher.publish(done(job, 12))
    assert [e.seq for e in await collect(stub, job, 4, rpc=rpc)] == [9, 12]
    assert [e.seq for e in await collect(stub, job, 3, rpc=rpc)] == [4, 9, 12]  # a cursor inside a gap
    assert await collect(stub, job, 12, rpc=rpc) == []  # already has the terminal event: ends at once


@pytest.mark.parametrize("rpc", RPCS)
async def test_after_seq_ahead_of_the_stream_waits(stub, publisher, rpc):
    job = jid()
    for s in range(1, 4):
        await publisher.publish(ev(job, s))
    task = asyncio.create_task(collect(stub, job, 5, rpc=rpc))
    await asyncio.sleep(0.5)
    assert not task.done()  # waits, does not fail and does not resend 1..3
    for s in range(4, 8):
        await publisher.publish(ev(job, s))
    await publisher.publish(done(job, 8))
    assert [e.seq for e in await asyncio.wait_for(task, 20)] == [6, 7, 8]


@pytest.mark.parametrize("rpc", RPCS)
async def test_unknown_job_is_not_found_after_the_grace_period(stub, events, rpc):
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(stub, jid("nobody"), rpc=rpc)
    waited = loop.time() - started
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert unpack_details(status_details(err.value))["ErrorInfo"].reason == "JOB_NOT_FOUND"
    assert waited >= events.app.settings.events_unknown_job_grace_s * 0.9


@pytest.mark.parametrize("rpc", RPCS)
async def test_a_job_that_starts_within_the_grace_period_streams(stub, publisher, rpc):
    job = jid()
    task = asyncio.create_task(collect(stub, job, rpc=rpc))
    await asyncio.sleep(0.3)
    await publisher.publish(ev(job, 1))
    await publisher.publish(done(job, 2))
    assert [e.seq for e in await asyncio.wait_for(task, 20)] == [1, 2]


@pytest.mark.parametrize(
    "job_id,field",
    [("", "job_id"), ("has space", "job_id"), ("x" * 129, "job_id"), ("line\nbreak", "job_id"), ("-leading", "job_id")],
)
async def test_bad_job_ids_are_invalid_argument(stub, job_id, field):
    for call in (
        lambda: collect(stub, job_id),
        lambda: collect(stub, job_id, rpc="batches", max_events=10),
        lambda: stub.GetJobState(E.GetJobStateRequest(job_id=job_id)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        bad = unpack_details(status_details(err.value))["BadRequest"]
        assert [v.field for v in bad.field_violations] == [field]


@pytest.mark.parametrize("method", ["Subscribe", "SubscribeBatches"])
async def test_malformed_request_bytes_are_invalid_argument(events, method):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{events.port}") as ch:
        call = ch.unary_stream(
            f"/eco2.events.v1.EventService/{method}", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call(b"\xff\xff\xff"):
                pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_get_job_state_follows_the_router(stub, publisher, redis_client, events):
    job = jid()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetJobState(E.GetJobStateRequest(job_id=job))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await publisher.publish(ev(job, 1, E.EVENT_KIND_STAGE, stage=E.STAGE_INTENT, node="intent"))
    await publisher.publish(ev(job, 2, E.EVENT_KIND_NEEDS_INPUT, stage=E.STAGE_SUBAGENT, node="location"))

    async def state_at(seq):
        for _ in range(200):
            st_ = (await stub.GetJobState(E.GetJobStateRequest(job_id=job))).state
            if st_.last_seq >= seq:
                return st_
            await asyncio.sleep(0.02)
        raise AssertionError(f"router never reached seq {seq}")

    s2 = await state_at(2)
    assert (s2.status, s2.stage, s2.node, s2.terminal, s2.job_kind) == (
        E.JOB_STATUS_WAITING_INPUT,
        E.STAGE_SUBAGENT,
        "location",
        False,
        E.JOB_KIND_CHAT,
    )
    assert s2.updated_at.seconds > 0
    await publisher.publish(
        ev(job, 3, E.EVENT_KIND_ERROR, error=events_pb2.JobError(code=14, reason="MODEL_UNAVAILABLE"))
    )
    s3 = await state_at(3)
    assert (s3.status, s3.terminal, s3.node) == (E.JOB_STATUS_FAILED, True, "location")
    # the state lives at least the TTL after the last event (scripts.py: refreshed once per ttl/16)
    key = domain.state_key(domain.shard_of(job, events.app.settings.events_shards), job)
    life = events.app.settings.events_replay_ttl_s * 1000
    assert life - 60_000 < await redis_client.pttl(key) <= life + life // 16
    assert int(await redis_client.hget(key, "x")) > 0


async def test_get_job_state_says_cancelled_for_a_cancelled_job(stub, publisher):
    """A job whose terminal ERROR carries google.rpc.Code CANCELLED (its owner cancelled it) is
    CANCELLED, not FAILED."""
    job = jid()
    await publisher.publish(ev(job, 1, E.EVENT_KIND_STAGE, stage=E.STAGE_ANSWER, node="answer"))
    await publisher.publish(ev(job, 2, E.EVENT_KIND_ERROR, error=events_pb2.JobError(code=1, reason="RUN_CANCELLED")))
    for _ in range(200):
        state = (await stub.GetJobState(E.GetJobStateRequest(job_id=job))).state
        if state.last_seq >= 2:
            break
        await asyncio.sleep(0.02)
    assert (state.last_seq, state.status, state.terminal) == (2, E.JOB_STATUS_CANCELLED, True)


@pytest.mark.parametrize("rpc", RPCS)
async def test_slow_subscriber_catches_up_from_the_replay_stream(stub, publisher, events, rpc):
    """Buffer of 8 live events: a reader that does not read while 300 events arrive overflows
    and falls back to the replay stream; it still gets every event once, in order."""
    job = jid()
    await publisher.publish(ev(job, 1))
    if rpc == "batches":
        call = stub.SubscribeBatches(E.SubscribeBatchesRequest(job_id=job), timeout=30)
        seqs = lambda m: [e.seq for e in m.events]  # noqa: E731
    else:
        call = stub.Subscribe(E.SubscribeRequest(job_id=job), timeout=30)
        seqs = lambda m: [m.seq]  # noqa: E731
    assert seqs(await call.read()) == [1]
    fast = asyncio.create_task(collect(stub, job, rpc=rpc))
    from eco2.services.events.hub import RESYNCS

    before = RESYNCS.labels("slow_subscriber")._value.get()
    for s in range(2, 301):
        await publisher.publish(ev(job, s, delta="x" * 16_000))  # 4.8 MB: fills the HTTP/2 windows
    await publisher.publish(done(job, 301))
    assert [e.seq for e in await asyncio.wait_for(fast, 30)] == list(range(1, 302))
    rest = []
    while (msg := await call.read()) is not grpc.aio.EOF:
        rest += seqs(msg)
    assert rest == list(range(2, 302))
    assert RESYNCS.labels("slow_subscriber")._value.get() > before


@pytest.mark.parametrize("rpc", RPCS)
async def test_a_thousand_subscribers_to_one_job_all_get_every_event(stub, publisher, rpc):
    job = jid()
    await publisher.publish(ev(job, 1))
    n = 1000
    tasks = [asyncio.create_task(collect(stub, job, timeout=120, rpc=rpc)) for _ in range(n)]
    from eco2.services.events import hub as hub_mod

    for _ in range(600):  # wait until every stream is registered
        await asyncio.sleep(0.05)
        if hub_mod.SUBSCRIBERS._value.get() >= n:
            break
    for s in range(2, 31):
        await publisher.publish(ev(job, s))
    await publisher.publish(done(job, 31))
    results = await asyncio.wait_for(asyncio.gather(*tasks), 120)
    expected = list(range(1, 32))
    bad = [r for r in results if [e.seq for e in r] != expected]
    assert not bad, f"{len(bad)} of {n} subscribers got a wrong sequence, e.g. {[e.seq for e in bad[0]]}"


@pytest.mark.parametrize("rpc", RPCS)
@hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(total=st.integers(min_value=1, max_value=40), cut=st.integers(min_value=0, max_value=45), gaps=st.booleans())
async def test_disconnect_at_a_random_seq_and_resume_gets_the_rest_exactly_once(stub, publisher, rpc, total, cut, gaps):
    job = jid("prop")
    seqs = [i * (3 if gaps else 1) + 1 for i in range(total)]
    half = len(seqs) // 2
    for s in seqs[:half]:
        await publisher.publish(ev(job, s))

    async def produce_rest():
        for s in seqs[half:-1]:
            await publisher.publish(ev(job, s))
            await asyncio.sleep(0)
        await publisher.publish(done(job, seqs[-1]))

    producer = asyncio.create_task(produce_rest())
    # with batches a message may carry more than `cut` events: the client has them all
    first = await collect(stub, job, limit=cut, rpc=rpc, max_events=3) if cut else []
    resume_from = first[-1].seq if first else 0
    second = await collect(stub, job, resume_from, rpc=rpc)
    await producer
    assert [e.seq for e in first + second] == seqs


async def test_router_killed_between_publish_and_ack_delivers_nothing_twice(events, redis_client, publisher, stub):
    """A router that dies after its Lua step published a batch but before XACK leaves the batch
    pending; another router reclaims it (XAUTOCLAIM) and re-routing publishes nothing again."""
    from eco2.services.bus import domain
    from eco2.services.events.router import Router

    s = events.app.settings
    router = events.app.router
    job = jid("crash")
    shard = domain.shard_of(job, s.events_shards)
    # listen to the raw fan-out channel: every PUBLISH of this job is counted
    raw = create_redis(events.app.settings.redis_url)
    pubsub = raw.pubsub()
    await pubsub.subscribe(domain.fanout_channel(shard))
    live = []

    async def listen():
        async for msg in pubsub.listen():
            if msg["type"] == "message":
                live.extend(seq for _, seq, _, j, _ in domain.iter_live(msg["data"]) if j == job)

    listener = asyncio.create_task(listen())

    class Dies(Exception):
        pass

    class CrashingRouter(Router):
        async def ack(self, acks):  # the process dies right here
            raise Dies()

    await router.stop()  # the module's router steps aside; a crashing one takes its place
    await asyncio.sleep(s.events_router_block_ms / 1000 + 0.1)  # a read it had in flight has ended
    crashing = CrashingRouter(redis_client, s, consumer="crashing-router")
    try:
        for q in range(1, 6):
            await publisher.publish(ev(job, q))
        await publisher.publish(done(job, 6))
        sub_task = asyncio.create_task(collect(stub, job))
        reply = await redis_client.xreadgroup(
            domain.ROUTER_GROUP, crashing.consumer, {domain.shard_stream(shard): ">"}, count=1000
        )
        entries = [e for e in reply[0][1] if e[1][b"h"].endswith(b" " + job.encode())]
        with pytest.raises(Dies):
            await crashing.route(shard, reply[0][1])
        assert len(entries) == 6
        pending = await redis_client.xpending_range(
            domain.shard_stream(shard), domain.ROUTER_GROUP, "-", "+", 1000, "crashing-router"
        )
        assert len(pending) == len(reply[0][1])  # published, never acknowledged
        # a subscriber meanwhile gets everything once (from replay and that one PUBLISH)
        got = await asyncio.wait_for(sub_task, 20)
        assert [e.seq for e in got] == [1, 2, 3, 4, 5, 6]
    finally:
        await router.start()  # the surviving router: its reclaimer takes the batch over
    for _ in range(200):
        pending = await redis_client.xpending_range(
            domain.shard_stream(shard), domain.ROUTER_GROUP, "-", "+", 1000, "crashing-router"
        )
        if not pending:
            break
        await asyncio.sleep(0.05)
    assert not pending, "the reclaimer did not take over the dead router's entries"
    await asyncio.sleep(0.2)
    listener.cancel()
    await pubsub.aclose()
    await raw.aclose()
    assert live == [1, 2, 3, 4, 5, 6]  # each published exactly once
    assert [e.seq for e in await collect(stub, job)] == [1, 2, 3, 4, 5, 6]
    await redis_client.xgroup_delconsumer(domain.shard_stream(shard), domain.ROUTER_GROUP, "crashing-router")


async def test_a_shard_whose_route_step_fails_stays_pending_while_the_others_are_acked(
    events, redis_client, publisher, stub
):
    """The router sends the Lua calls of every shard of a read in one pipeline: a call that
    fails (here WRONGTYPE on a damaged state key) leaves only its shard's entries pending (the
    reclaimer routes them later); the other shards are published and acknowledged."""
    from redis.exceptions import ResponseError

    from eco2.services.bus import domain
    from eco2.services.events.router import Router

    s = events.app.settings
    router = events.app.router
    good, bad = jid("good"), jid("bad")
    while domain.shard_of(bad, s.events_shards) == domain.shard_of(good, s.events_shards):
        bad = jid("bad")
    gshard, bshard = domain.shard_of(good, s.events_shards), domain.shard_of(bad, s.events_shards)
    probe = Router(redis_client, s, consumer="probe-router")
    try:
        await asyncio.wait_for(router.stop(), 30)
        await asyncio.sleep(s.events_router_block_ms / 1000 + 0.1)  # a read it had in flight has ended
        for job in (good, bad):
            await publisher.publish(ev(job, 1))
            await publisher.publish(done(job, 2))
        await redis_client.set(domain.state_key(bshard, bad), "not a hash")
        reply = await redis_client.xreadgroup(
            domain.ROUTER_GROUP,
            probe.consumer,
            {domain.shard_stream(gshard): ">", domain.shard_stream(bshard): ">"},
            count=1000,
        )
        batches = [
            (probe._streams[name.decode() if isinstance(name, bytes) else name], entries) for name, entries in reply
        ]
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await asyncio.wait_for(probe.route_shards(batches), 30)

        async def pending(shard):
            return await redis_client.xpending_range(
                domain.shard_stream(shard), domain.ROUTER_GROUP, "-", "+", 1000, "probe-router"
            )

        assert await pending(gshard) == []
        assert len(await pending(bshard)) == len(dict(batches)[bshard])
        assert [e.seq for e in await collect(stub, good, rpc="batches")] == [1, 2]
        await redis_client.delete(domain.state_key(bshard, bad))  # repaired: the reclaimer routes it
    finally:
        await asyncio.wait_for(router.start(), 30)
    for _ in range(200):
        if not await pending(bshard):
            break
        await asyncio.sleep(0.05)
    assert await pending(bshard) == []
    state = (await stub.GetJobState(E.GetJobStateRequest(job_id=bad), timeout=10)).state
    assert (state.last_seq, state.terminal) == (2, True)
    await redis_client.xgroup_delconsumer(domain.shard_stream(bshard), domain.ROUTER_GROUP, "probe-router")
    await redis_client.xgroup_delconsumer(domain.shard_stream(gshard), domain.ROUTER_GROUP, "probe-router")


@pytest.mark.parametrize("rpc", RPCS)
async def test_too_many_subscribers_is_resource_exhausted(events, stub, publisher, monkeypatch, rpc):
    hub = events.app.hub
    monkeypatch.setattr(hub, "max_subscribers", hub.count)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(stub, jid(), rpc=rpc)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "RetryInfo" in unpack_details(status_details(err.value))


@pytest.mark.parametrize("rpc", RPCS)
async def test_a_caught_up_stream_sends_live_events_without_reading_the_replay_stream(
    stub, publisher, redis_client, rpc
):
    """After its catch-up a stream sends each live event as it arrives: no replay XRANGE per
    wake-up (a round trip and a Redis call per event per subscriber)."""
    job = jid("live")
    await publisher.publish(ev(job, 1))
    if rpc == "batches":
        call = stub.SubscribeBatches(E.SubscribeBatchesRequest(job_id=job), timeout=20)
        seqs = lambda m: [e.seq for e in m.events]  # noqa: E731
    else:
        call = stub.Subscribe(E.SubscribeRequest(job_id=job), timeout=20)
        seqs = lambda m: [m.seq]  # noqa: E731
    assert seqs(await call.read()) == [1]

    async def xranges() -> int:
        return (await redis_client.info("commandstats")).get("cmdstat_xrange", {}).get("calls", 0)

    before = await xranges()
    for s in range(2, 22):
        await publisher.publish(ev(job, s))
        assert seqs(await asyncio.wait_for(call.read(), 5)) == [s]
    assert await xranges() - before == 0
    call.cancel()


async def test_batches_respect_the_limits_and_coalesce_what_is_ready(stub, publisher):
    """Each SubscribeBatches message holds at most max_events events and max_bytes bytes (an
    event larger than max_bytes alone); the server's limit (6 here) caps what a request asks
    for; the events are every event once, in order."""
    job = jid("batch")
    sizes = [10, 700, 40, 1500, 5000, 3, 900, 900, 900, 12] * 4
    for s, size in enumerate(sizes, 1):
        await publisher.publish(ev(job, s, delta="가" * (size // 3) if s % 2 else "x" * size))
    await publisher.publish(done(job, len(sizes) + 1))
    expected = list(range(1, len(sizes) + 2))
    for ask, cap in (
        ({}, 6),
        ({"max_events": 1000}, 6),
        ({"max_events": 3}, 3),
        ({"max_bytes": 2048}, 6),
        ({"max_events": 1, "max_bytes": 4_000_000_000}, 1),
    ):
        messages = []
        got = await collect(stub, job, rpc="batches", messages=messages, **ask)
        assert [e.seq for e in got] == expected, ask
        sizes_seen = [len(m.events) for m in messages]
        limit = ask.get("max_bytes")
        if limit and limit < 4_000_000_000:  # the byte limit binds first here
            assert 1 < max(sizes_seen) <= cap, (ask, sizes_seen)
            for m in messages:
                assert m.ByteSize() <= limit or len(m.events) == 1, (m.ByteSize(), [e.seq for e in m.events])
            assert any(m.ByteSize() > limit for m in messages)  # the 5,000-byte events travel alone
        else:
            assert max(sizes_seen) == cap, (ask, sizes_seen)  # the limit is reached, never passed
    assert len(messages) == len(expected)


async def test_batches_send_a_live_event_at_once(stub, publisher):
    """Nothing waits to fill a batch: with room for 6 events a single live event is sent alone,
    as soon as it is routed."""
    job = jid("batch-live")
    await publisher.publish(ev(job, 1))
    call = stub.SubscribeBatches(E.SubscribeBatchesRequest(job_id=job), timeout=20)
    assert [e.seq for e in (await call.read()).events] == [1]
    for s in (2, 3):
        await publisher.publish(ev(job, s))
        m = await asyncio.wait_for(call.read(), 5)
        assert [e.seq for e in m.events] == [s]
    await publisher.publish(done(job, 4))
    assert [e.seq for e in (await call.read()).events] == [4]
    assert await call.read() is grpc.aio.EOF
