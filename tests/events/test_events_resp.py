"""The lean Valkey client (services/dataplane/resp.py, docs/adr/0045) against the
real embedded Valkey: pipelining order, redis-py's error types, a caller that gives up, a
killed connection, credentials and Pub/Sub pushes."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoPermissionError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from eco2.services.dataplane.resp import PoolCommands, RespClient
from eco2.services.dataplane.urls import create_redis


@pytest.fixture
async def redis_client(dataplane):
    client = create_redis(dataplane.redis_url)
    yield client
    await client.aclose()


def key(name: str) -> str:
    return f"resp-test:{name}:{uuid.uuid4().hex[:8]}"


async def test_commands_are_pipelined_in_order_with_redis_py_error_types(redis_client):
    client = RespClient.like(redis_client)
    k, h = key("n"), key("h")
    try:
        await client.execute("HSET", h, "f", "v")
        replies = await client.pipeline(
            [("SET", k, "41"), ("INCR", k), ("INCR", h), ("EVALSHA", "0" * 40, 0), ("GET", k)]
        )
        assert replies[:2] == [b"OK", 42] and replies[4] == b"42"
        assert isinstance(replies[2], ResponseError) and "WRONGTYPE" in str(replies[2])
        assert isinstance(replies[3], NoScriptError)
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await client.execute("INCR", h)
        # many concurrent callers share the connection; each gets its own reply
        got = await asyncio.gather(*(client.execute("ECHO", str(i)) for i in range(200)))
        assert got == [str(i).encode() for i in range(200)]
    finally:
        await redis_client.delete(k, h)
        await client.aclose()


async def test_error_replies_are_typed_as_redis_py_types_them(redis_client):
    """Valkey answers LOADING while it reads its AOF after a restart: redis-py raises
    BusyLoadingError, a ConnectionError that every caller retries; the lean connection must too
    (it raised a plain ResponseError, and a producer gave up mid-restart). The error replies come
    from the real server: a script's `redis.error_reply` travels as any error reply does."""
    client = RespClient.like(redis_client)
    reply = "return redis.error_reply(ARGV[1])"
    try:
        for message, kind in [
            ("LOADING Valkey is loading the dataset in memory", BusyLoadingError),
            ("READONLY You can't write against a read only replica.", ReadOnlyError),
            ("NOPERM this user has no permissions", NoPermissionError),
            ("WRONGPASS invalid username-password pair", AuthenticationError),
            ("NOGROUP No such key or consumer group", ResponseError),
        ]:
            with pytest.raises(kind) as raised:
                await client.execute("EVAL", reply, 0, message)
            assert type(raised.value) is kind and message.split(" ", 1)[1] in str(raised.value)
            (piped,) = await client.pipeline([("EVAL", reply, 0, message)])
            assert type(piped) is kind
        assert issubclass(BusyLoadingError, RedisConnectionError)  # what the callers' retry loops catch
    finally:
        await client.aclose()


async def test_evalsha_many_loads_a_missing_script_once_and_reruns_only_those_calls(redis_client):
    source = "return redis.call('INCR', KEYS[1])"
    sha = redis_client.register_script(source).sha
    k = key("evalsha")
    for via in (RespClient.like(redis_client), PoolCommands(redis_client)):
        await redis_client.script_flush()
        replies = await via.evalsha_many(sha, source, [([k], []), ([k], [])])
        assert replies[0] + 1 == replies[1]  # both ran, once each, in order
        if isinstance(via, RespClient):
            await via.aclose()
    assert int(await redis_client.get(k)) == 4
    await redis_client.delete(k)


async def test_a_caller_that_gives_up_does_not_shift_the_replies(redis_client):
    client = RespClient.like(redis_client)
    stream = key("stream")
    try:
        blocked = asyncio.ensure_future(client.execute("XREAD", "BLOCK", 300, "STREAMS", stream, "$"))
        await asyncio.sleep(0.05)
        blocked.cancel()
        # queued behind the blocked read; its reply must be PONG, not the read's nil
        assert await asyncio.wait_for(client.execute("PING"), 5) == b"PONG"
    finally:
        await client.aclose()


async def test_a_killed_connection_fails_pending_calls_and_the_next_call_reconnects(redis_client):
    name = f"resp-test-{uuid.uuid4().hex[:8]}"
    client = RespClient.like(redis_client, client_name=name)
    stream = key("killed")
    try:
        assert await client.execute("PING") == b"PONG"
        blocked = asyncio.ensure_future(client.execute("XREAD", "BLOCK", 5000, "STREAMS", stream, "$"))
        await asyncio.sleep(0.05)
        ids = [c["id"] for c in await redis_client.client_list() if c.get("name") == name]
        assert len(ids) == 1
        await redis_client.client_kill_filter(_id=ids[0])
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(blocked, 5)
        assert await client.execute("PING") == b"PONG"  # a new connection
        assert len([c for c in await redis_client.client_list() if c.get("name") == name]) == 1
    finally:
        await client.aclose()


async def test_wrong_credentials_and_an_unreachable_server_raise_redis_py_errors(redis_client):
    kw = redis_client.connection_pool.connection_kwargs
    wrong = RespClient(host=kw["host"], port=int(kw["port"]), password="not-the-password")
    with pytest.raises(AuthenticationError):
        await wrong.execute("PING")
    nobody = RespClient(host="127.0.0.1", port=1, connect_timeout=2)
    with pytest.raises(RedisConnectionError, match="cannot connect"):
        await nobody.execute("PING")


async def test_pubsub_messages_reach_the_callback(redis_client):
    client = RespClient.like(redis_client)
    channel = key("channel").encode()
    got: list = []
    subscribed = asyncio.Event()

    def on_push(reply) -> None:
        got.append(reply)
        if reply[0] == b"subscribe":
            subscribed.set()

    conn = await client.connect(on_push)
    try:
        conn.send_only("SUBSCRIBE", channel)
        await asyncio.wait_for(subscribed.wait(), 5)
        for i in range(3):
            await redis_client.publish(channel, f"m{i}")
        for _ in range(100):
            if len(got) == 4:
                break
            await asyncio.sleep(0.02)
        assert got == [[b"subscribe", channel, 1]] + [[b"message", channel, f"m{i}".encode()] for i in range(3)]
    finally:
        conn.close()
        await conn.closed
