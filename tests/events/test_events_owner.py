"""Whose streams: a job's events and state are its owner's only, over the real EventService,
producer and router on the session's Valkey. Anyone else gets the NOT_FOUND of an unknown job,
and no sooner than an unknown job gets it."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from eco2.events.v1 import events_pb2 as E
from eco2.events.v1 import events_pb2_grpc
from eco2.services.dataplane.urls import create_redis
from eco2.services.runtime.errors import FailedPrecondition, InvalidArgument, status_details, unpack_details
from support.identity import as_user
from support.servers import env, running

GRACE_S = 0.5


@pytest.fixture(scope="module")
async def events(service_env):
    from eco2.services.events.app import create

    with env({**service_env, "ECO2_EVENTS_UNKNOWN_JOB_GRACE_S": str(GRACE_S), "ECO2_EVENTS_ROUTER_BLOCK_MS": "200"}):
        app = create()
    async with running(app, metrics=False) as server:
        yield server


@pytest.fixture(scope="module")
async def stub(events):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{events.port}") as ch:
        yield events_pb2_grpc.EventServiceStub(ch)


@pytest.fixture(scope="module")
async def publisher(dataplane, events):
    from eco2.services.bus.producer import EventPublisher

    redis = create_redis(dataplane.redis_url)
    yield EventPublisher(redis, events.app.settings)
    await redis.aclose()


def user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


async def owned_job(publisher, owner: str | None, *, done: bool = True) -> str:
    job = f"owned-{uuid.uuid4().hex[:12]}"
    if owner is not None:
        await publisher.set_owner(job, owner)
    await publisher.publish(E.Event(job_id=job, seq=1, kind=E.EVENT_KIND_TOKEN, delta="mine"))
    if done:
        await publisher.publish(E.Event(job_id=job, seq=2, kind=E.EVENT_KIND_DONE))
    return job


async def read(stub, rpc: str, job: str, metadata=()) -> list[int]:
    if rpc == "batches":
        return [
            e.seq
            async for m in stub.SubscribeBatches(E.SubscribeBatchesRequest(job_id=job), metadata=metadata, timeout=20)
            for e in m.events
        ]
    return [e.seq async for e in stub.Subscribe(E.SubscribeRequest(job_id=job), metadata=metadata, timeout=20)]


async def refused(call) -> tuple[grpc.aio.AioRpcError, float]:
    """The error of a refused call and how long it took to come."""
    started = asyncio.get_running_loop().time()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value, asyncio.get_running_loop().time() - started


@pytest.mark.parametrize("rpc", ["per_event", "batches"])
async def test_the_owner_reads_and_anyone_else_gets_the_answer_of_an_unknown_job(stub, publisher, rpc):
    alice, mallory = user(), user()
    job = await owned_job(publisher, alice)
    assert await read(stub, rpc, job, as_user(alice)) == [1, 2]
    unknown = f"owned-{uuid.uuid4().hex[:12]}"
    for name, call in (
        ("stranger", read(stub, rpc, job, as_user(mallory))),
        ("no user", read(stub, rpc, job)),
        ("unknown", read(stub, rpc, unknown, as_user(mallory))),
    ):
        err, took = await refused(call)
        assert err.code() == grpc.StatusCode.NOT_FOUND, (name, err)
        assert unpack_details(status_details(err))["ErrorInfo"].reason == "JOB_NOT_FOUND"
        assert took >= GRACE_S * 0.9, f"{name}: refused after {took:.2f} s, sooner than an unknown job"
        assert job not in err.details() or name != "unknown"


async def test_a_stranger_waiting_on_a_live_job_gets_none_of_its_events(stub, publisher):
    alice, mallory = user(), user()
    job = await owned_job(publisher, alice, done=False)
    stranger = asyncio.create_task(refused(read(stub, "per_event", job, as_user(mallory))))
    await publisher.publish(E.Event(job_id=job, seq=2, kind=E.EVENT_KIND_TOKEN, delta="live"))
    await publisher.publish(E.Event(job_id=job, seq=3, kind=E.EVENT_KIND_DONE))
    err, _ = await asyncio.wait_for(stranger, 20)  # NOT_FOUND, not the events (read() would have returned them)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert await read(stub, "per_event", job, as_user(alice)) == [1, 2, 3]


async def test_a_job_subscribed_before_it_exists_is_checked_once_it_does(stub, publisher):
    alice, mallory = user(), user()
    job = f"owned-{uuid.uuid4().hex[:12]}"
    mine = asyncio.create_task(read(stub, "per_event", job, as_user(alice)))
    theirs = asyncio.create_task(refused(read(stub, "per_event", job, as_user(mallory))))
    await publisher.set_owner(job, alice)
    await publisher.publish(E.Event(job_id=job, seq=1, kind=E.EVENT_KIND_DONE))
    assert await asyncio.wait_for(mine, 20) == [1]
    err, _ = await asyncio.wait_for(theirs, 20)
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_job_state_is_the_owners_only(stub, publisher):
    alice, mallory = user(), user()
    job = await owned_job(publisher, alice)
    state = (await stub.GetJobState(E.GetJobStateRequest(job_id=job), metadata=as_user(alice))).state
    assert state.job_id == job and state.status in (
        E.JOB_STATUS_QUEUED,
        E.JOB_STATUS_RUNNING,
        E.JOB_STATUS_SUCCEEDED,
    )  # the router may be mid-way
    for metadata in (as_user(mallory), ()):
        err, _ = await refused(stub.GetJobState(E.GetJobStateRequest(job_id=job), metadata=metadata))
        assert err.code() == grpc.StatusCode.NOT_FOUND and err.details() == f"no job {job!r}"


async def test_a_job_of_the_mesh_is_not_a_users(stub, publisher):
    job = await owned_job(publisher, None)  # its producer recorded no owner
    assert await read(stub, "per_event", job) == [1, 2]  # a workload of the mesh, calling without a user
    err, _ = await refused(read(stub, "per_event", job, as_user(user())))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_an_owner_is_recorded_once(publisher):
    alice, mallory = user(), user()
    job = await owned_job(publisher, alice)
    await publisher.set_owner(job, alice)  # a retried send: no-op
    with pytest.raises(FailedPrecondition) as err:
        await publisher.set_owner(job, mallory)
    assert err.value.reason == "JOB_OWNED"
    with pytest.raises(InvalidArgument):
        await publisher.set_owner(job, "")
