"""Dependencies down, on a data plane of this module's own (the session's is shared by every
test and is never killed): while PostgreSQL is dead a Postgres-backed RPC answers UNAVAILABLE
+ RetryInfo (not INTERNAL) and health says NOT_SERVING; once it is back, SERVING and answers."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eco2.location.v1 import location_pb2, location_pb2_grpc
from eco2.services.dataplane.embedded import EmbeddedDataPlane
from eco2.services.runtime.errors import status_details, unpack_details
from support.servers import env, running

CITY_HALL = location_pb2.GeoPoint(latitude=37.5665, longitude=126.9780)
SERVICE = "eco2.location.v1.LocationService"
#: dependency checks in these tests: often, so a change shows within a second
CHECKS = {"ECO2_HEALTH_CHECK_INTERVAL_S": "0.2", "ECO2_HEALTH_CHECK_TIMEOUT_S": "1"}


@pytest.fixture(scope="module")
async def own_plane():
    root = Path(tempfile.mkdtemp(prefix="eco2-deps-down-", dir="/tmp"))
    root.chmod(0o755)
    plane = EmbeddedDataPlane(root / "data")
    info = await asyncio.to_thread(plane.start)
    try:
        yield plane, info
    finally:
        if plane.running:
            await asyncio.to_thread(plane.stop)
        shutil.rmtree(root, ignore_errors=True)


async def kill_postgres(plane: EmbeddedDataPlane) -> None:
    """SIGKILL PostgreSQL (a crash, not a shutdown); the plane's Valkey stays up."""
    pid = plane.info.pg_pid
    os.kill(pid, signal.SIGKILL)
    while True:  # gone once its pid no longer answers (reaped by the plane's Popen on stop)
        try:
            if plane.postgres.exited():
                return
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.02)


async def restart(plane: EmbeddedDataPlane) -> None:
    await asyncio.to_thread(plane.stop)
    await asyncio.to_thread(plane.start)


async def health_becomes(ch: grpc.aio.Channel, want, service: str = SERVICE, timeout: float = 30) -> None:
    """Wait on the Health.Watch stream until `service` reports `want`."""
    async with asyncio.timeout(timeout):
        async for reply in health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=service)):
            if reply.status == want:
                return


async def test_postgres_down_is_unavailable_with_retry_info_and_not_serving_then_back(own_plane, service_env):
    plane, info = own_plane
    from eco2.services.location.app import create

    with env({**service_env, "DATABASE_URL": info.database_url, "REDIS_URL": info.redis_url, **CHECKS}):
        app = create()
    async with running(app, metrics=False) as server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = location_pb2_grpc.LocationServiceStub(ch)
        request = location_pb2.SearchNearbyRequest(center=CITY_HALL, radius_m=3000)
        assert (await stub.SearchNearby(request)).places
        await health_becomes(ch, health_pb2.HealthCheckResponse.SERVING)

        await kill_postgres(plane)
        for _ in range(3):  # the pool's dead connections first, then new connections refused
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.SearchNearby(request, timeout=20)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
            details = unpack_details(status_details(err.value))
            assert details["ErrorInfo"].reason == "DEPENDENCY_UNAVAILABLE"
            assert details["ErrorInfo"].metadata["dependency"] == "postgres"
            assert details["RetryInfo"].retry_delay.ToTimedelta().total_seconds() > 0
        await health_becomes(ch, health_pb2.HealthCheckResponse.NOT_SERVING)
        await health_becomes(ch, health_pb2.HealthCheckResponse.NOT_SERVING, service="")

        await restart(plane)
        await health_becomes(ch, health_pb2.HealthCheckResponse.SERVING)
        await health_becomes(ch, health_pb2.HealthCheckResponse.SERVING, service="")
        assert (await stub.SearchNearby(request, timeout=20)).places


async def kill_valkey(plane: EmbeddedDataPlane) -> None:
    """SIGKILL Valkey (a crash); PostgreSQL stays up."""
    os.kill(plane.info.valkey_pid, signal.SIGKILL)
    while not plane.valkey.exited():
        await asyncio.sleep(0.02)


async def test_send_message_with_valkey_down_stores_nothing_and_is_unavailable(own_plane, service_env):
    plane, info = own_plane
    import asyncpg

    from eco2.chat.v1 import chat_pb2, chat_pb2_grpc
    from eco2.services.chat.app import create
    from eco2.services.dataplane.urls import create_redis
    from support.identity import as_user

    with env(
        {
            **service_env,
            "DATABASE_URL": info.database_url,
            "REDIS_URL": info.redis_url,
            **CHECKS,
            "ECO2_CHAT_WORKERS": "0",
            "ECO2_EVENTS_ADDR": "127.0.0.1:1",
            "ECO2_IMAGES_ADDR": "127.0.0.1:1",
        }
    ):
        app = create()  # no workers: a queued job stays queued, for the test to find
    user = f"u-atomic-{os.getpid()}"
    async with running(app, metrics=False) as server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = chat_pb2_grpc.ChatServiceStub(ch)
        db = await asyncpg.connect(info.database_url)
        try:
            await kill_valkey(plane)
            for attempt in range(3):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.SendMessage(
                        chat_pb2.SendMessageRequest(message=f"캔은 어떻게 버려? {attempt}"),
                        metadata=as_user(user),
                        timeout=30,
                    )
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
                assert "RetryInfo" in unpack_details(status_details(err.value))
            # nothing half-done: no message, no conversation
            assert await db.fetchval("SELECT count(*) FROM chat_messages WHERE user_id = $1", user) == 0
            assert await db.fetchval("SELECT count(*) FROM chat_conversations WHERE user_id = $1", user) == 0

            await db.close()
            await restart(plane)  # (PostgreSQL too: the plane restarts as a whole)
            await health_becomes(ch, health_pb2.HealthCheckResponse.SERVING, service="eco2.chat.v1.ChatService")
            sent = await stub.SendMessage(
                chat_pb2.SendMessageRequest(message="캔은 어떻게 버려?"), metadata=as_user(user), timeout=30
            )
            # the message and its job, both
            db = await asyncpg.connect(info.database_url)
            assert (
                await db.fetchval(
                    "SELECT count(*) FROM chat_messages WHERE user_id = $1 AND job_id = $2", user, sent.job_id
                )
                == 1
            )
        finally:
            await db.close()
        redis = create_redis(plane.info.redis_url)
        try:
            assert await redis.exists(f"jobs:{{{app.settings.chat_job_kind}}}:id:{sent.job_id}")
        finally:
            await redis.aclose()


async def test_a_transaction_whose_connection_dropped_is_unavailable_not_internal(dataplane):
    """PostgreSQL killed inside a transaction: asyncpg, which already saw the connection close,
    raises InterfaceError ("the underlying connection is closed") at the COMMIT, not one of its
    connection errors; SendMessage answered INTERNAL (found by tests/system/test_faults.py). Here the
    connection is ended by the server (pg_terminate_backend), as a crash ends it."""
    import asyncpg

    from eco2.services.runtime.errors import dependency_down

    conn, other = await asyncpg.connect(dataplane.database_url), await asyncpg.connect(dataplane.database_url)
    try:
        with pytest.raises(asyncpg.InterfaceError) as err:
            async with conn.transaction():
                await conn.execute("SELECT 1")
                await other.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
                while not conn.is_closed():  # until asyncpg read the end of the connection
                    await asyncio.sleep(0.01)
        down = dependency_down(err.value)
        assert (
            down is not None and down.code == grpc.StatusCode.UNAVAILABLE and down.metadata["dependency"] == "postgres"
        )
        assert (
            dependency_down(asyncpg.InterfaceError("cannot perform operation: another operation is in progress"))
            is None
        )  # a bug stays INTERNAL
        # the pool's reset of a connection released after the server died (asyncpg's coreproto
        # message; the pool then terminates the connection): SendMessage answered INTERNAL after
        # its message was committed, so the client did not retry (found by tests/system/test_faults.py)
        reset = asyncpg.exceptions._base.InternalClientError(
            "cannot switch to state 15; another operation (2) is in progress"
        )
        assert dependency_down(reset) is not None
    finally:
        await conn.close()
        await other.close()
