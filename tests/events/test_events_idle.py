"""What an idle Subscribe stream keeps alive (docs/adr/0040): the frames behind it on a real
server, and the hub's per-subscriber state (a chain per job, no list while idle)."""

from __future__ import annotations

import asyncio
import gc
import types
import uuid
from collections import Counter

import grpc
import pytest

from eco2.events.v1 import events_pb2, events_pb2_grpc
from eco2.services.bus import domain
from eco2.services.dataplane.urls import create_redis
from eco2.services.events.hub import Hub
from support.servers import env, running

E = events_pb2


@pytest.fixture(scope="module")
async def events(service_env):
    from eco2.services.events.app import create

    with env({**service_env, "ECO2_EVENTS_ROLE": "all"}):
        app = create()
    async with running(app, metrics=False) as server:
        yield server


STREAM_PATH = ("/services/events/service.py", "/services/events/hub.py", "/services/runtime/interceptors.py")


def stream_frames() -> Counter:
    """Coroutines and async generators of the Subscribe path (servicer, hub, runtime
    interceptor) alive now, by kind and name."""
    out: Counter = Counter()
    for o in gc.get_objects():
        if not isinstance(
            o, (types.CoroutineType, types.AsyncGeneratorType)
        ):  # never getattr on arbitrary objects (ctypes loaders load libraries by attribute name)
            continue
        code = o.cr_code if isinstance(o, types.CoroutineType) else o.ag_code
        if code.co_filename.endswith(STREAM_PATH):
            out[(type(o).__name__, code.co_qualname)] += 1
    return out


async def test_an_idle_subscribe_stream_is_two_frames_and_no_buffers(events, dataplane):
    from eco2.services.bus.producer import EventPublisher

    redis = create_redis(dataplane.redis_url)
    job = f"idle-{uuid.uuid4().hex[:12]}"
    await EventPublisher(redis, events.app.settings).publish(
        E.Event(job_id=job, seq=1, kind=E.EVENT_KIND_STAGE, stage=E.STAGE_QUEUED)
    )
    hub = events.app.hub
    n = 40
    async with grpc.aio.insecure_channel(f"127.0.0.1:{events.port}") as ch:
        stub = events_pb2_grpc.EventServiceStub(ch)
        before = stream_frames()
        calls = [stub.Subscribe(E.SubscribeRequest(job_id=job)) for _ in range(n)]
        assert [(await c.read()).seq for c in calls] == [1] * n
        subs = []
        for _ in range(100):  # every stream is parked on its subscriber's future
            sub, subs = hub.by_job.get(job), []
            while sub is not None:
                subs.append(sub)
                sub = sub.next
            if len(subs) == n and all(s.waiter is not None for s in subs):
                break
            await asyncio.sleep(0.05)
        assert len(subs) == n and all(s.waiter is not None and s.buf is None for s in subs)
        grown = stream_frames() - before
        # the runtime's wrapper is a coroutine (grpc's writer path), not an async generator;
        # Subscribe returns the `_stream` coroutine (no frame of its own) and the stream awaits
        # its future itself (no Hub.wait coroutine): two frames per stream
        assert grown == Counter(
            {
                ("coroutine", "CoreServerInterceptor._writer_stream.<locals>.call"): n,
                ("coroutine", "EventServicer._stream"): n,
            }
        )
        # still live: one more event reaches every idle stream
        await EventPublisher(redis, events.app.settings).publish(E.Event(job_id=job, seq=2, kind=E.EVENT_KIND_DONE))
        assert [(await c.read()).seq for c in calls] == [2] * n
        for c in calls:
            await c.code()
    await redis.aclose()
    for _ in range(50):
        if job not in hub.by_job:
            break
        await asyncio.sleep(0.05)
    assert job not in hub.by_job


async def test_subscribers_of_a_job_are_a_chain(dataplane):
    redis = create_redis(dataplane.redis_url)
    hub = Hub(redis, 4, buffer=2, max_subscribers=10, retry_s=1.0)
    a, b, c = (hub.register("job-a") for _ in range(3))
    other = hub.register("job-b")
    hub.unregister(b)
    hub.unregister(b)  # twice: nothing more happens
    assert hub.count == 3
    waits = [asyncio.ensure_future(hub.wait(s, None)) for s in (a, c, other)]
    hub.dispatch(domain.frame_live(0, 1, False, "job-a", b"e1"))
    assert await asyncio.wait_for(waits[0], 1) is True and await asyncio.wait_for(waits[1], 1) is True
    assert a.buf == c.buf == [(0, 1, False, b"e1")] and b.buf is None and other.buf is None
    assert not waits[2].done() and await hub.wait(other, 0.05) is False
    # a full buffer is dropped and the subscriber resyncs; the others keep theirs
    a.buf = None
    for seq in (2, 3):
        hub.dispatch(domain.frame_live(seq - 1, seq, False, "job-a", b"e"))
    assert c.resync and c.buf is None and not a.resync and len(a.buf) == 2
    hub.unregister(c)
    hub.unregister(a)
    assert "job-a" not in hub.by_job and hub.count == 1
    hub.unregister(other)
    assert hub.by_job == {} and hub.count == 0
    waits[2].cancel()
    await redis.aclose()
