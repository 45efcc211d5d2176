"""The event router: shard streams → Lua (high-water mark + job state) → Pub/Sub fan-out.

One consumer group `router` per shard stream; one XREADGROUP reads every shard in a batch;
per shard, one Lua call records the marks, advances job states and PUBLISHes (the calls of all
shards pipelined: one round trip); then XACK, sent in one pipeline with the next XREADGROUP. So
a read costs two round trips however many shards it touched (each one a turn of an event loop
the process shares with its Subscribe streams). A reclaimer (XAUTOCLAIM) takes over entries a dead router left
pending; re-routing them is a no-op for every event the dead router had already published.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time

import redis.asyncio
from prometheus_client import Counter, Gauge, Histogram
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eco2.services.bus import domain, scripts
from eco2.services.bus.settings import EventsSettings
from eco2.services.dataplane.resp import PoolCommands, RespClient

log = logging.getLogger("eco2.events.router")

ROUTED = Counter(
    "eco2_events_routed_total", "Shard stream entries the router handled, by outcome", ["shard", "outcome"]
)
RECLAIMED = Counter("eco2_events_reclaimed_total", "Entries taken over from a dead router (XAUTOCLAIM)", ["shard"])
LAG = Gauge("eco2_events_router_lag", "Entries in a shard stream not yet read by the router group", ["shard"])
PENDING = Gauge("eco2_events_router_pending", "Entries read but not yet acknowledged", ["shard"])
ROUTER_ERRORS = Counter("eco2_events_router_redis_errors_total", "Redis errors the router recovered from")
FANOUT_LAG = Histogram(
    "eco2_events_fanout_lag_seconds",
    "Per routed batch of a shard: from its oldest entry's append to the shard stream to its fan-out PUBLISH",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

#: A fan-out message carries routed events up to about this many bytes (Pub/Sub clients are
#: disconnected when their output buffer passes Valkey's client-output-buffer-limit).
FRAME_BYTES = 256 * 1024


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Router:
    #: how long `stop` waits for the read and reclaim loops to end after cancelling them
    STOP_TIMEOUT_S = 10.0

    def __init__(
        self, redis: redis.asyncio.Redis, settings: EventsSettings | None = None, *, consumer: str | None = None
    ) -> None:
        self.redis = redis
        self.settings = settings or EventsSettings()
        self.consumer = consumer or consumer_name()
        self._route = redis.register_script(scripts.ROUTE)
        # the read → route → ack round trips go over one lean connection of the router's own
        # (dataplane/resp.py, docs/adr/0045); groups, the reclaimer's scans and metrics use `redis`
        self._fast = RespClient.like(redis)
        self._pool = PoolCommands(redis)
        self._ttl_ms = str(self.settings.events_replay_ttl_s * 1000)
        self._shards = list(range(self.settings.events_shards))
        self._streams = {domain.shard_stream(s): s for s in self._shards}
        self._published = [ROUTED.labels(str(s), "published") for s in self._shards]
        self._already = [ROUTED.labels(str(s), "already_routed") for s in self._shards]
        self._tasks: list[asyncio.Task] = []
        self._deferred: list[tuple[int, list]] = []  # XACKs that go out with the next read
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
        self._tasks = [
            asyncio.create_task(self._read_loop(), name="events-router"),
            asyncio.create_task(self._reclaim_loop(), name="events-reclaimer"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # bounded: a loop stuck in a call that ignores its cancel must not hang a stop
            _, stuck = await asyncio.wait(self._tasks, timeout=self.STOP_TIMEOUT_S)
            if stuck:
                log.warning("router tasks did not stop in time", extra={"tasks": [t.get_name() for t in stuck]})
        self._tasks = []
        await self._fast.aclose()  # ends a blocking read still in flight
        acks, self._deferred = self._deferred, []
        with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError, ResponseError):
            await self.ack(acks)  # else another router's reclaimer takes them (re-routing publishes nothing)

    # -- loops -----------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        s = self.settings
        streams = {name: ">" for name in self._streams}
        linger = s.events_router_linger_ms / 1000
        # raw reply (no per-entry dicts)
        read = (
            "XREADGROUP",
            "GROUP",
            domain.ROUTER_GROUP,
            self.consumer,
            "COUNT",
            s.events_router_batch,
            "BLOCK",
            s.events_router_block_ms,
            "STREAMS",
            *streams,
            *streams.values(),
        )
        while True:
            try:
                reply = await self._read(read)
                if isinstance(reply, dict):  # RESP3 map
                    reply = reply.items()
                if reply:
                    batches = [
                        (self._streams[name.decode() if isinstance(name, bytes) else name], entries)
                        for name, entries in reply
                    ]
                    await self.route_shards(batches, defer_ack=True)
                    if linger and sum(len(e) for _, e in batches) < s.events_router_batch:
                        await asyncio.sleep(linger)  # caught up: let the next read gather more
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
                    domain.shard_stream(shard),
                    domain.ROUTER_GROUP,
                    self.consumer,
                    min_idle_time=s.events_reclaim_idle_ms,
                    start_id=cursor,
                    count=s.events_router_batch,
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
        return await self.route_shards([(shard, entries)])

    async def _read(self, command: tuple) -> list | dict | None:
        """XREADGROUP, preceded in the same round trip by the XACKs of the previous read."""
        acks, self._deferred = [(shard, ids) for shard, ids in self._deferred if ids], []
        if not acks:
            return await self._fast.execute(*command)
        replies = await self._fast.pipeline([*_xacks(acks), command])
        error = next((r for r in replies if isinstance(r, Exception)), None)
        if error is not None:
            raise error
        return replies[-1]

    async def route_shards(self, batches: list[tuple[int, list]], *, defer_ack: bool = False) -> int:
        """Route entries of several shards: one Lua call per shard, all in one round trip, then
        the XACKs of the shards whose call succeeded (one round trip, or with `defer_ack` sent
        along with the read loop's next XREADGROUP); then the first error, if any, is raised
        (its entries stay pending: routed again by the reclaimer)."""
        calls, routed, acks = [], [], []
        for shard, entries in batches:
            ids, keys, argv = self._prepare(shard, entries)
            acks.append((shard, ids))
            if keys:
                calls.append((keys, argv))
                routed.append((shard, (len(argv) - 4 - len(keys)) // 3))
        # the read loop's calls go over the router's lean connection; the others (reclaimer,
        # tests) over the pool, not queued behind the read loop's blocking XREADGROUP
        via = self._fast if defer_ack else self._pool
        replies = await via.evalsha_many(self._route.sha, scripts.ROUTE, calls) if calls else []
        error = next((r for r in replies if isinstance(r, Exception)), None)
        if error is not None:  # ack only the shards whose Lua ran
            failed = {shard for (shard, _), r in zip(routed, replies) if isinstance(r, Exception)}
            acks = [a for a in acks if a[0] not in failed]
        if defer_ack and error is None:
            self._deferred = acks
        else:
            await self.ack(acks)
        total = 0
        now_ms = time.time() * 1000
        oldest = {shard: entries[0][0] for shard, entries in batches if entries}
        for (shard, n), published in zip(routed, replies):
            if isinstance(published, Exception):
                continue
            FANOUT_LAG.observe(max(0.0, now_ms - _entry_ms(oldest[shard])) / 1000)
            total += published
            self._published[shard].inc(published)
            if n > published:
                self._already[shard].inc(n - published)
        self.routed += total
        if error is not None:
            raise error
        return total

    def _prepare(self, shard: int, entries: list) -> tuple[list, list, list]:
        """(entry ids, KEYS, ARGV) of the ROUTE script for entries of one shard."""
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
                if h is None:  # not written by the producer's PUBLISH script: acked, not routed
                    continue
                node, data = fields.get(b"n", b""), fields.get(b"d", b"")
            jobs[h[h.rindex(b" ") + 1 :]] = None
            args.append(h)
            args.append(node)
            args.append(data)
        if not args:
            return ids, [], []
        keys = [domain.state_key(shard, job.decode()) for job in jobs]
        return ids, keys, [domain.fanout_channel(shard), self._ttl_ms, FRAME_BYTES, len(keys), *jobs, *args]

    async def ack(self, acks: list[tuple[int, list]]) -> None:
        """XACK (shard, entry ids) pairs: one round trip."""
        commands = _xacks([(shard, ids) for shard, ids in acks if ids])
        if commands:
            error = next((r for r in await self._pool.pipeline(commands) if isinstance(r, Exception)), None)
            if error is not None:
                raise error


def _entry_ms(entry_id: bytes | str) -> int:
    """The append time (ms) a stream entry id carries: "<ms>-<n>"."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[0])


def _xacks(acks: list[tuple[int, list]]) -> list[tuple]:
    return [("XACK", domain.shard_stream(shard), domain.ROUTER_GROUP, *ids) for shard, ids in acks]
