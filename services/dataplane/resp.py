"""A lean RESP2 client for the hot Valkey paths (docs/adr/0045): the event bus's producer,
router and Pub/Sub fan-out, and the ext-authz rate limit.

redis-py's asyncio client spends several times this path's CPU per command (pool checkout and
release, retry and timeout wrappers, its observability hooks). Here commands are packed by
hiredis straight to an asyncio transport, replies parsed by hiredis in `data_received` and
handed to the waiting futures in order. Concurrent callers share the connection: their
commands are pipelined. Pub/Sub messages are delivered to a callback from `data_received` (no
task or coroutine per message).

Errors are redis-py's exception types (ConnectionError, TimeoutError, ResponseError,
NoScriptError, AuthenticationError), so callers handle both clients alike. Everything that is
not a hot path stays on redis-py.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as ssl_module
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
import redis.asyncio
from redis._parsers.base import BaseParser  # redis is pinned (pyproject): its error table, not a copy
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

PushHandler = Callable[[Any], None]


def _typed(error: ResponseError) -> Exception:
    """An error reply as the exception redis-py raises for it (its parser's table): LOADING →
    BusyLoadingError (a ConnectionError, so callers retry while Valkey loads its AOF after a
    restart), NOSCRIPT → NoScriptError, NOAUTH/WRONGPASS → AuthenticationError, READONLY, OOM, …"""
    return BaseParser.parse_error(str(error))


class RespConnection(asyncio.Protocol):
    """One connection: FIFO of reply futures; replies nobody waits for go to `on_push`."""

    def __init__(self, on_push: PushHandler | None = None) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiters: deque[asyncio.Future] = deque()
        self.transport: asyncio.Transport | None = None
        self.error: Exception | None = None  # set once the connection is lost
        self.on_push = on_push
        self.closed = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiters = self.waiters
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.drop(RedisConnectionError(f"Valkey protocol error: {exc}"))
                return
            if reply is False:
                return
            if waiters:
                fut = waiters.popleft()
                if not fut.done():  # a caller that gave up: its reply is dropped, order kept
                    fut.set_result(reply)
            elif self.on_push is not None:
                self.on_push(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(RedisConnectionError(f"connection to Valkey lost: {exc or 'closed'}"))

    def _lost(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(self.error)
                fut.exception()  # a caller that gave up must not log it as never retrieved
        if not self.closed.done():
            self.closed.set_result(None)

    # -- commands ------------------------------------------------------------------------------
    def send(self, commands: Sequence[Sequence[Any]]) -> list[asyncio.Future]:
        """Write the commands in one write; one future per reply."""
        if self.error is not None:
            raise self.error
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        payload = (
            b"".join(hiredis.pack_command(tuple(c)) for c in commands)
            if len(commands) > 1
            else hiredis.pack_command(tuple(commands[0]))
        )
        self.waiters.extend(futures)
        self.transport.write(payload)
        return futures

    def send_only(self, *args: Any) -> None:
        """Write a command whose replies arrive as pushes (SUBSCRIBE)."""
        if self.error is not None:
            raise self.error
        self.transport.write(hiredis.pack_command(args))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def drop(self, error: Exception) -> None:
        """Fail every waiting call with `error` and abort the connection (no reply can arrive
        for the wrong call afterwards)."""
        self._lost(error)
        if self.transport is not None:
            self.transport.abort()


class _EvalMany:
    async def evalsha_many(self, sha: str, source: str, calls: Sequence[tuple[Sequence, Sequence]]) -> list[Any]:
        """EVALSHA once per (keys, args), pipelined; calls that find the script missing
        (NOSCRIPT: Valkey restarted or flushed, nothing ran) are re-run once after SCRIPT LOAD.
        The replies in order, an error reply as its exception."""
        commands = [("EVALSHA", sha, len(keys), *keys, *args) for keys, args in calls]
        replies = await self.pipeline(commands)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            await self.execute("SCRIPT", "LOAD", source)
            for i, reply in zip(missing, await self.pipeline([commands[i] for i in missing])):
                replies[i] = reply
        return replies


class PoolCommands(_EvalMany):
    """The same calls over a redis-py client's pool, for paths that must not queue behind a
    lean connection's blocking read (the router's reclaimer)."""

    def __init__(self, redis: redis.asyncio.Redis) -> None:
        self.redis = redis

    async def execute(self, *args: Any) -> Any:
        return await self.redis.execute_command(*args)

    async def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute(raise_on_error=False)


class RespClient(_EvalMany):
    """A lazily (re)connected RespConnection.

    With `reply_timeout`, a reply later than that fails every call waiting on the connection
    and drops it (the next call reconnects), so replies are never matched to the wrong calls;
    without it a call waits as long as the connection lives (a blocking read such as the
    router's XREADGROUP BLOCK is bounded by its own timeout, and a lost connection fails every
    pending call at once). `aclose()` closes the connection; a later call opens a new one.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        connect_timeout: float = 5.0,
        client_name: str | None = None,
        reply_timeout: float | None = None,
    ) -> None:
        self.host, self.port, self.path, self.db = host, port, path, db
        self.username, self.password, self.ssl = username, password, ssl
        self.connect_timeout = connect_timeout
        self.client_name = client_name
        self.reply_timeout = reply_timeout
        self._conn: RespConnection | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def like(cls, client: redis.asyncio.Redis, **options: Any) -> RespClient:
        """A RespClient to the same server, database and credentials as a redis-py client;
        `options` (constructor arguments) override what the client's pool says."""
        return cls._from_pool(client.connection_pool, options)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RespClient:
        """A RespClient to the server a `redis://`, `rediss://` or `unix://` URL names, read as
        redis-py reads it; `options` are constructor arguments."""
        return cls._from_pool(redis.asyncio.ConnectionPool.from_url(url), options)

    @classmethod
    def _from_pool(cls, pool: redis.asyncio.ConnectionPool, options: dict[str, Any]) -> RespClient:
        kw = pool.connection_kwargs
        path = kw.get("path") if issubclass(pool.connection_class, UnixDomainSocketConnection) else None
        context = ssl_module.create_default_context() if issubclass(pool.connection_class, SSLConnection) else None
        settings = dict(
            host=kw.get("host", "127.0.0.1"),
            port=int(kw.get("port", 6379)),
            path=path,
            db=int(kw.get("db") or 0),
            username=kw.get("username"),
            password=kw.get("password"),
            ssl=context,
            connect_timeout=kw.get("socket_connect_timeout") or 5.0,
            client_name=kw.get("client_name"),
        )
        return cls(**(settings | options))

    @property
    def where(self) -> str:
        return self.path or f"{self.host}:{self.port}"

    async def connect(self, on_push: PushHandler | None = None) -> RespConnection:
        """A new connection, authenticated and on the right database."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.path:
                    _, conn = await loop.create_unix_connection(lambda: RespConnection(on_push), self.path)
                else:
                    _, conn = await loop.create_connection(
                        lambda: RespConnection(on_push), self.host, self.port, ssl=self.ssl
                    )
                hello: list[tuple] = []
                if self.password:
                    hello.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
                if self.db:
                    hello.append(("SELECT", self.db))
                if self.client_name:
                    hello.append(("CLIENT", "SETNAME", self.client_name))
                if hello:
                    for reply in await asyncio.gather(*conn.send(hello)):
                        if isinstance(reply, ResponseError):
                            conn.close()
                            raise _typed(reply)
        except TimeoutError as exc:
            raise RedisTimeoutError(f"timed out connecting to Valkey at {self.where}") from exc
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Valkey at {self.where}: {exc}") from exc
        return conn

    async def _connection(self) -> RespConnection:
        conn = self._conn
        if conn is not None and conn.error is None:
            return conn
        async with self._lock:
            conn = self._conn
            if conn is None or conn.error is not None:
                conn = self._conn = await self.connect()
            return conn

    async def _reply(self, conn: RespConnection, future: asyncio.Future) -> Any:
        """The reply `future` resolves to; with `reply_timeout`, a late one drops the connection,
        which fails `future` and every other waiting call with TimeoutError."""
        if self.reply_timeout is None:
            return await future
        timer = asyncio.get_running_loop().call_later(self.reply_timeout, self._late, conn, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _late(self, conn: RespConnection, future: asyncio.Future) -> None:
        if not future.done():
            conn.drop(RedisTimeoutError(f"no reply from Valkey at {self.where} within {self.reply_timeout:g} s"))

    async def execute(self, *args: Any) -> Any:
        """One command; an error reply is raised."""
        conn = self._conn
        if conn is None or conn.error is not None:
            conn = await self._connection()
        reply = await self._reply(conn, conn.send((args,))[0])
        if isinstance(reply, ResponseError):
            raise _typed(reply)
        return reply

    async def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Several commands in one write; the replies in order, an error reply as its exception."""
        conn = self._conn
        if conn is None or conn.error is not None:
            conn = await self._connection()
        futures = conn.send(commands)
        await self._reply(
            conn, futures[-1]
        )  # replies come in order: the others are in, or all failed with the connection
        replies = [f.result() for f in futures]
        return [_typed(r) if isinstance(r, ResponseError) else r for r in replies]

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            try:  # bounded: a transport that never reports the loss must not hang a shutdown
                await asyncio.wait_for(asyncio.shield(conn.closed), 2.0)
            except TimeoutError:
                if conn.transport is not None:
                    conn.transport.abort()
