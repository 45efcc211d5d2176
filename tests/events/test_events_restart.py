"""Valkey restarted mid-stream: producers retry, the router and the Pub/Sub listeners
reconnect, subscribers resubscribe with their last seq, and nothing is missed or repeated.
Runs on a data plane of its own (the session one is shared by every test)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import grpc
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eco2.events.v1 import events_pb2, events_pb2_grpc
from eco2.services.dataplane.embedded import EmbeddedDataPlane
from eco2.services.dataplane.urls import create_redis
from support.servers import env, running

E = events_pb2
N = 120


@pytest.fixture
async def own_plane():
    root = Path(tempfile.mkdtemp(prefix="eco2-events-restart-", dir="/tmp"))
    root.chmod(0o755)
    plane = EmbeddedDataPlane(root / "data")
    info = await asyncio.to_thread(plane.start)
    try:
        yield plane, info
    finally:
        if plane.running:
            await asyncio.to_thread(plane.stop)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("rpc", ["per_event", "batches"])
async def test_valkey_restart_mid_stream_loses_and_repeats_nothing(own_plane, service_env, rpc):
    plane, info = own_plane
    from eco2.services.bus.producer import EventPublisher
    from eco2.services.events.app import create

    with env(
        {
            **service_env,
            "REDIS_URL": info.redis_url,
            "DATABASE_URL": info.database_url,
            "ECO2_EVENTS_REDIS_RETRY_S": "0.2",
            "ECO2_EVENTS_ROUTER_BLOCK_MS": "200",
            "ECO2_EVENTS_UNKNOWN_JOB_GRACE_S": "30",
        }
    ):
        app = create()
    async with running(app, metrics=False) as server:
        producer_redis = create_redis(info.redis_url)
        publisher = EventPublisher(producer_redis, app.settings)
        jobs = [f"restart-{i}" for i in range(3)]
        produced = {j: 0 for j in jobs}
        got: dict[str, list[int]] = {j: [] for j in jobs}
        resubscribes = {"n": 0}

        async def subscriber(ch, job):
            stub = events_pb2_grpc.EventServiceStub(ch)
            while True:
                after = got[job][-1] if got[job] else 0
                try:
                    if rpc == "batches":  # SubscribeBatches: several events per message
                        async for m in stub.SubscribeBatches(
                            E.SubscribeBatchesRequest(job_id=job, after_seq=after), timeout=60
                        ):
                            got[job].extend(e.seq for e in m.events)
                    else:
                        async for e in stub.Subscribe(E.SubscribeRequest(job_id=job, after_seq=after), timeout=60):
                            got[job].append(e.seq)
                    return
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                    resubscribes["n"] += 1
                    await asyncio.sleep(0.2)

        async def produce(job):
            for seq in range(1, N + 2):
                event = E.Event(
                    job_id=job, seq=seq, kind=E.EVENT_KIND_DONE if seq == N + 1 else E.EVENT_KIND_TOKEN, delta=str(seq)
                )
                while True:
                    try:
                        await publisher.publish(event)  # a retry after a lost reply is a no-op
                        break
                    except (RedisConnectionError, RedisTimeoutError, OSError):
                        await asyncio.sleep(0.1)
                produced[job] = seq
                await asyncio.sleep(0.01)

        from eco2.services.events.hub import RECONNECTS

        def reconnects() -> float:
            return sum(RECONNECTS.labels(str(s))._value.get() for s in range(app.settings.events_shards))

        before = reconnects()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            subs = [asyncio.create_task(subscriber(ch, j)) for j in jobs]
            producers = [asyncio.create_task(produce(j)) for j in jobs]
            while min(produced.values()) < N // 3:
                await asyncio.sleep(0.05)
            await asyncio.to_thread(plane.stop)  # SIGTERM: Valkey flushes its AOF
            await asyncio.sleep(0.5)
            assert (await asyncio.to_thread(plane.start)).redis_url == info.redis_url  # same port, AOF data
            await asyncio.wait_for(asyncio.gather(*producers), 120)
            await asyncio.wait_for(asyncio.gather(*subs), 120)
        await producer_redis.aclose()
        # the fault happened mid-stream: every shard's Pub/Sub connection came back and resynced
        assert reconnects() - before >= app.settings.events_shards
        assert max(produced.values()) == N + 1
    for j in jobs:
        assert got[j] == list(range(1, N + 2)), (
            f"{j}: {len(got[j])} events, first wrong at {next((i for i, s in enumerate(got[j]) if s != i + 1), None)}"
        )
