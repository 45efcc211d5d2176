"""The ext-authz rate limit: one token bucket per user in Valkey, hits of one event-loop tick
coalesced into one EVALSHA over the lean pipelined client (docs/adr/0032, 0045). The global
limit holds across replicas; Valkey trouble fails closed."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest

from eco2.services.auth.valkey import BatchedTokenBucket
from eco2.services.dataplane.resp import RespClient
from eco2.services.dataplane.urls import create_redis
from support.auth import AuthClient, allowed, auth_server, denied

RATE, BURST = 2.0, 40


@pytest.fixture
async def valkey(service_env):
    p = RespClient.from_url(service_env["REDIS_URL"], reply_timeout=0.5)
    yield p
    await p.aclose()


def _prefix() -> str:
    return f"test:rl:{uuid.uuid4().hex[:8]}:"


async def test_concurrent_hits_share_round_trips_and_allow_exactly_the_burst(valkey):
    bucket = BatchedTokenBucket(valkey, rate_per_s=RATE, burst=BURST, prefix=_prefix())
    started = time.monotonic()
    results = await asyncio.gather(*(bucket.hit("u:a") for _ in range(BURST + 60)))
    elapsed = time.monotonic() - started
    passed = sum(1 for r in results if r == 0.0)
    assert BURST <= passed <= BURST + elapsed * RATE + 1
    retries = [r for r in results if r > 0]
    assert retries and all(0 < r <= 1 / RATE + 0.01 for r in retries)
    assert bucket.batches < len(results) / 10, bucket.batches  # coalesced, not one call per hit


async def test_keys_are_independent_within_one_batch(valkey):
    bucket = BatchedTokenBucket(valkey, rate_per_s=RATE, burst=3, prefix=_prefix())
    results = await asyncio.gather(*(bucket.hit(k) for k in ["u:a"] * 5 + ["u:b"] * 2 + ["ip:1"] * 4))
    assert [r == 0.0 for r in results] == [True] * 3 + [False] * 2 + [True] * 2 + [True] * 3 + [False]


async def test_the_bucket_refills_at_the_rate(valkey):
    bucket = BatchedTokenBucket(valkey, rate_per_s=20.0, burst=2, prefix=_prefix())
    assert [await bucket.hit("u:a") for _ in range(3)][:2] == [0.0, 0.0]
    retry = await bucket.hit("u:a")
    assert 0 < retry <= 0.06
    await asyncio.sleep(retry + 0.02)
    assert await bucket.hit("u:a") == 0.0


async def test_script_flushed_from_valkey_is_loaded_again(valkey, service_env):
    bucket = BatchedTokenBucket(valkey, rate_per_s=RATE, burst=BURST, prefix=_prefix())
    assert await bucket.hit("u:a") == 0.0
    admin = create_redis(service_env["REDIS_URL"])
    try:
        await admin.script_flush()
    finally:
        await admin.aclose()
    assert await bucket.hit("u:a") == 0.0


async def test_valkey_down_fails_every_waiting_hit():
    with socket_closed_port() as port:
        p = RespClient.from_url(f"redis://127.0.0.1:{port}/0", reply_timeout=0.2)
        bucket = BatchedTokenBucket(p, rate_per_s=RATE, burst=BURST)
        results = await asyncio.gather(*(bucket.hit("u:a") for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, Exception) for r in results), results
        await p.aclose()


async def test_a_silent_valkey_times_out_and_the_client_reconnects(service_env):
    replies = {"mute": True}

    async def handle(reader, writer):
        # a fake server that swallows requests while mute; otherwise proxies to the real Valkey
        host, port = service_env["REDIS_URL"].rsplit("@", 1)[-1].split("/")[0].split(":")
        up_r, up_w = await asyncio.open_connection(host, int(port))

        async def pump(src, dst, gate):
            while data := await src.read(65536):
                if not (gate and replies["mute"]):
                    dst.write(data)

        await asyncio.gather(pump(reader, up_w, True), pump(up_r, writer, False), return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = service_env["REDIS_URL"].replace(
        service_env["REDIS_URL"].rsplit("@", 1)[-1].split("/")[0], f"127.0.0.1:{port}"
    )
    replies["mute"] = False
    p = RespClient.from_url(url, reply_timeout=0.3)  # connects (AUTH) while the proxy talks
    bucket = BatchedTokenBucket(p, rate_per_s=RATE, burst=BURST, prefix=_prefix())
    try:
        assert await bucket.hit("u:a") == 0.0
        replies["mute"] = True
        started = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017 - whichever error the client's timeout gives
            await bucket.hit("u:a")
        assert time.monotonic() - started < 1.0
        replies["mute"] = False
        assert await bucket.hit("u:a") == 0.0  # a fresh connection, replies in order again
    finally:
        await p.aclose()
        server.close()


@contextlib.contextmanager
def socket_closed_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    yield port


# --------------------------------------------------------------------------- through Check
@pytest.fixture(scope="module")
async def two_replicas(service_env):
    limits = {"ECO2_AUTH_RATE_LIMIT_PER_S": str(RATE), "ECO2_AUTH_RATE_LIMIT_BURST": str(BURST)}
    async with contextlib.AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(auth_server(service_env, **limits)) for _ in range(2)]
        clients = [AuthClient(s.port) for s in servers]
        yield servers, clients
        for c in clients:
            await c.close()


async def test_the_limit_holds_across_two_replicas(two_replicas):
    _, (a, b) = two_replicas
    session = await a.sign_in()
    token = session.tokens.access_token
    started = time.monotonic()
    results = await asyncio.gather(*(c.check(token=token) for _ in range(BURST) for c in (a, b)))
    elapsed = time.monotonic() - started
    passed = sum(1 for r in results if allowed(r))
    # one shared bucket in Valkey: exact up to the refill during the test
    assert BURST <= passed <= BURST + elapsed * RATE + 1, (passed, elapsed)
    status, body, headers = denied(next(r for r in results if not allowed(r)))
    assert status == 429 and body["reason"] == "RATE_LIMITED" and int(headers["retry-after"]) >= 1


async def test_valkey_unreachable_for_the_limit_denies_503(two_replicas, monkeypatch):
    servers, (a, _) = two_replicas
    session = await a.sign_in()
    limiter = servers[0].app.authz.limiter
    with socket_closed_port() as port:
        dead = RespClient.from_url(f"redis://127.0.0.1:{port}/0", reply_timeout=0.2)
        monkeypatch.setattr(limiter, "valkey", dead)
        status, body, headers = denied(await a.check(token=session.tokens.access_token))
    assert status == 503 and body["reason"] == "UNAVAILABLE" and headers["retry-after"] == "1"
    monkeypatch.undo()
    assert allowed(await a.check(token=session.tokens.access_token))
