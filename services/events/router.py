"""The event router: shard streams → Lua (high-water mark + job state) → Pub/Sub fan-out.

One consumer group `router` per shard stream; one XREADGROUP reads every shard in a batch;
per shard, one Lua call records the marks, advances job states and PUBLISHes; then XACK. A
reclaimer (XAUTOCLAIM) takes over entries a dead router left pending; re-routing them is a
no-op for every event the dead router had already published.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket

import redis.asyncio
from prometheus_client import Counter, Gauge
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import domain, scripts
from .settings import EventsSettings

log = logging.getLogger("eco2.events.router")

ROUTED = Counter("eco2_events_routed_total", "Shard stream entries the router handled, by outcome", ["shard", "outcome"])
RECLAIMED = Counter("eco2_events_reclaimed_total", "Entries taken over from a dead router (XAUTOCLAIM)", ["shard"])
LAG = Gauge("eco2_events_router_lag", "Entries in a shard stream not yet read by the router group", ["shard"])
PENDING = Gauge("eco2_events_router_pending", "Entries read but not yet acknowledged", ["shard"])
ROUTER_ERRORS = Counter("eco2_events_router_redis_errors_total", "Redis errors the router recovered from")

#: A fan-out message carries routed events up to about this many bytes (Pub/Sub clients are
#: disconnected when their output buffer passes Valkey's client-output-buffer-limit).
FRAME_BYTES = 256 * 1024


def _legacy_header(fields: dict) -> bytes:
    """The `h` field of an entry written by an older producer (one field per value)."""
    g = fields.get
    return b" ".join((g(b"p", b"0"), g(b"s", b"0"), g(b"t", b"0"), g(b"st", b"0"), g(b"g", b"0"), g(b"k", b"0"), g(b"tm", b"0"), g(b"j", b"")))


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Router:
    def __init__(self, redis: redis.asyncio.Redis, settings: EventsSettings | None = None, *, consumer: str | None = None) -> None:
        self.redis = redis
        self.settings = settings or EventsSettings()
        self.consumer = consumer or consumer_name()
        self._route = redis.register_script(scripts.ROUTE)
        self._ttl_ms = str(self.settings.events_replay_ttl_s * 1000)
        self._shards = list(range(self.settings.events_shards))
        self._streams = {domain.shard_stream(s): s for s in self._shards}
        self._tasks: list[asyncio.Task] = []
        self.routed = 0  # entries published (for tests and the bench)

    # -- lifecycle -------------------------------------------------------------------------
    async def ensure_groups(self) -> None:
        for stream in self._streams:
            try:
                # id 0: entries published before the first router started are routed too
                await self.redis.xgroup_create(stream, domain.ROUTER_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def start(self) -> None:
        await self.ensure_groups()
        self._tasks = [asyncio.create_task(self._read_loop(), name="events-router"),
                       asyncio.create_task(self._reclaim_loop(), name="events-reclaimer")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # -- loops -----------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        s = self.settings
        streams = {name: ">" for name in self._streams}
        while True:
            try:
                # raw reply (no per-entry dicts): "XREADGROUP GROUP" is not a key of redis-py's
                # response callbacks, and the client splits it into two words on the wire
                reply = await self.redis.execute_command(
                    "XREADGROUP GROUP", domain.ROUTER_GROUP, self.consumer, "COUNT", s.events_router_batch,
                    "BLOCK", s.events_router_block_ms, "STREAMS", *streams, *streams.values(),
                )
                if isinstance(reply, dict):  # RESP3 map
                    reply = reply.items()
                for stream, entries in reply or ():
                    name = stream.decode() if isinstance(stream, bytes) else stream
                    await self.route(self._streams[name], entries)
            except asyncio.CancelledError:
                raise
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                ROUTER_ERRORS.inc()
                log.warning("router lost Redis; retrying", extra={"error": str(exc)})
                await asyncio.sleep(s.events_redis_retry_s)
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # the streams were deleted (e.g. Redis restarted without data)
                    await self.ensure_groups()
                    continue
                ROUTER_ERRORS.inc()
                log.exception("router step failed")
                await asyncio.sleep(s.events_redis_retry_s)

    async def _reclaim_loop(self) -> None:
        s = self.settings
        while True:
            try:
                await asyncio.sleep(s.events_reclaim_interval_s)
                await self.reclaim()
                await self.refresh_metrics()
            except asyncio.CancelledError:
                raise
            except (RedisConnectionError, RedisTimeoutError, OSError, ResponseError) as exc:
                ROUTER_ERRORS.inc()
                log.warning("reclaimer step failed", extra={"error": str(exc)})

    # -- steps -----------------------------------------------------------------------------
    async def reclaim(self) -> int:
        """Take over entries idle in another consumer's pending list and route them."""
        s = self.settings
        total = 0
        for shard in self._shards:
            cursor = "0-0"
            while True:
                reply = await self.redis.xautoclaim(
                    domain.shard_stream(shard), domain.ROUTER_GROUP, self.consumer,
                    min_idle_time=s.events_reclaim_idle_ms, start_id=cursor, count=s.events_router_batch,
                )
                cursor, entries = reply[0], reply[1]
                deleted = reply[2] if len(reply) > 2 else []
                if deleted:  # trimmed away before anyone routed them
                    await self.redis.xack(domain.shard_stream(shard), domain.ROUTER_GROUP, *deleted)
                if entries:
                    RECLAIMED.labels(str(shard)).inc(len(entries))
                    total += len(entries)
                    await self.route(shard, entries)
                if cursor in (b"0-0", "0-0"):
                    break
        return total

    async def refresh_metrics(self) -> None:
        for shard in self._shards:
            for group in await self.redis.xinfo_groups(domain.shard_stream(shard)):
                name = group.get("name")
                if name in (domain.ROUTER_GROUP, domain.ROUTER_GROUP.encode()):
                    PENDING.labels(str(shard)).set(group.get("pending") or 0)
                    lag = group.get("lag")
                    if lag is not None:
                        LAG.labels(str(shard)).set(lag)

    async def route(self, shard: int, entries: list) -> int:
        """Route entries of one shard: one Lua call (marks, states, PUBLISH), then XACK."""
        jobs: dict[bytes, None] = {}
        args: list = []
        ids = []
        for entry_id, fields in entries:
            ids.append(entry_id)
            if not fields:  # deleted entry
                continue
            if isinstance(fields, list):  # raw reply: [b"h", h, b"d", d] or [b"h", h, b"n", n, b"d", d]
                if fields[0] == b"h" and len(fields) in (4, 6):
                    h, node, data = fields[1], (fields[3] if len(fields) == 6 else b""), fields[-1]
                else:
                    fields = dict(zip(fields[::2], fields[1::2]))
            if not isinstance(fields, list):
                h = fields.get(b"h")
                if h is None:
                    h = _legacy_header(fields)
                node, data = fields.get(b"n", b""), fields.get(b"d", b"")
            jobs[h[h.rindex(b" ") + 1 :]] = None
            args.append(h)
            args.append(node)
            args.append(data)
        published = 0
        routed = len(args) // 3
        if routed:
            keys = [domain.state_key(shard, job.decode()) for job in jobs]
            published = await self._route(
                keys=keys, args=[domain.fanout_channel(shard), self._ttl_ms, FRAME_BYTES, len(keys), *jobs, *args]
            )
        await self.ack(shard, ids)
        self.routed += published
        ROUTED.labels(str(shard), "published").inc(published)
        if routed > published:
            ROUTED.labels(str(shard), "already_routed").inc(routed - published)
        return published

    async def ack(self, shard: int, ids: list) -> None:
        if ids:
            await self.redis.xack(domain.shard_stream(shard), domain.ROUTER_GROUP, *ids)

