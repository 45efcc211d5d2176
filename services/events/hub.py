"""In-process fan-out of live events: one Pub/Sub connection per shard, shared by every
subscriber of the process, dispatched in memory by job id.

A subscriber costs one small object (no task, no queue object, no list while idle): its
buffered live messages (None when there are none), a resync flag, the next subscriber of the
same job (the subscribers of a job are a chain, not a list per job) and, while it waits, one
future that the stream awaits directly (docs/adr/0040). When its buffer is full the hub
drops the buffer and flags it to resync from the replay stream, so a slow subscriber never
blocks the others and never loses an event. After the Pub/Sub connection of a shard was
(re)established every subscriber of that shard resyncs, since messages may have been lost
while it was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable

import redis.asyncio
from prometheus_client import Counter, Gauge
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eco2.services.bus import domain
from eco2.services.dataplane.resp import RespClient
from eco2.services.runtime.errors import ResourceExhausted

log = logging.getLogger("eco2.events.hub")

SUBSCRIBERS = Gauge("eco2_events_subscribers", "Live subscribers registered in this process")
RESYNCS = Counter("eco2_events_subscriber_resyncs_total", "Subscribers sent back to the replay stream", ["reason"])
LIVE = Counter("eco2_events_live_messages_total", "Pub/Sub messages received by this process")
RECONNECTS = Counter("eco2_events_pubsub_reconnects_total", "Pub/Sub (re)subscriptions per shard", ["shard"])


class Sub:
    __slots__ = ("job", "buf", "resync", "waiter", "next")

    def __init__(self, job: str) -> None:
        self.job = job
        self.buf: list[tuple[int, int, bool, bytes]] | None = None
        self.resync = False
        self.waiter: asyncio.Future | None = None
        self.next: Sub | None = None

    def wake(self) -> None:
        w = self.waiter
        if w is not None:
            self.waiter = None
            if not w.done():
                w.set_result(True)


class Hub:
    """`pubsub_redis` names the server (a redis-py client): the hub opens one lean Pub/Sub
    connection per shard to it (resp.RespClient)."""

    def __init__(
        self, pubsub_redis: redis.asyncio.Redis, shards: int, *, buffer: int, max_subscribers: int, retry_s: float
    ) -> None:
        self.redis = pubsub_redis
        self.shards = shards
        self.buffer = buffer
        self.max_subscribers = max_subscribers
        self.retry_s = retry_s
        self.by_job: dict[str, Sub] = {}  # job → its first subscriber (Sub.next chains the others)
        self.count = 0
        self._tasks: list[asyncio.Task] = []
        self._ready = [asyncio.Event() for _ in range(shards)]

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, timeout: float = 10.0) -> None:
        self._tasks = [asyncio.create_task(self._listen(s), name=f"events-pubsub-{s}") for s in range(self.shards)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in self._ready)), timeout)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # -- subscribers -----------------------------------------------------------------------
    def register(self, job_id: str) -> Sub:
        if self.count >= self.max_subscribers:
            raise ResourceExhausted(
                f"this EventService process already serves {self.count} streams (ECO2_EVENTS_MAX_SUBSCRIBERS)",
                reason="TOO_MANY_SUBSCRIBERS",
                retry_after_s=self.retry_s,
            )
        sub = Sub(job_id)
        sub.next = self.by_job.get(job_id)
        self.by_job[job_id] = sub
        self.count += 1
        SUBSCRIBERS.inc()
        return sub

    def unregister(self, sub: Sub) -> None:
        head = self.by_job.get(sub.job)
        if head is sub:
            if sub.next is None:
                del self.by_job[sub.job]
            else:
                self.by_job[sub.job] = sub.next
        else:
            while head is not None and head.next is not sub:
                head = head.next
            if head is None:
                return  # not registered (any more)
            head.next = sub.next
        sub.next = None
        self.count -= 1
        SUBSCRIBERS.dec()

    def wait(self, sub: Sub, timeout: float | None) -> Awaitable[bool]:
        """Resolves to True once `sub` has live events or must resync, False after `timeout`.
        Without a timeout this is the subscriber's future itself: an idle stream awaits it
        directly, with no coroutine frame of its own."""
        fut = asyncio.get_running_loop().create_future()
        if sub.buf or sub.resync:
            fut.set_result(True)
            return fut
        sub.waiter = fut
        return fut if timeout is None else self._wait_for(sub, fut, timeout)

    @staticmethod
    async def _wait_for(sub: Sub, fut: asyncio.Future, timeout: float) -> bool:
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return bool(sub.buf or sub.resync)
        finally:
            if sub.waiter is fut:
                sub.waiter = None

    # -- fan-out ---------------------------------------------------------------------------
    def dispatch(self, message: bytes) -> None:
        """Hand each event of a fan-out message to the subscribers of its job."""
        by_job = self.by_job
        cap = self.buffer
        n = 0
        for prev, seq, terminal, job, data in domain.iter_live(message):
            n += 1
            sub = by_job.get(job)
            if sub is None:
                continue
            item = (prev, seq, terminal, data)
            while sub is not None:
                if not sub.resync:
                    buf = sub.buf
                    if buf is None:
                        sub.buf = [item]
                    elif len(buf) >= cap:
                        sub.buf = None
                        sub.resync = True
                        RESYNCS.labels("slow_subscriber").inc()
                    else:
                        buf.append(item)
                    sub.wake()
                sub = sub.next
        LIVE.inc(n)

    def resync_shard(self, shard: int) -> None:
        for job, sub in self.by_job.items():
            if domain.shard_of(job, self.shards) != shard:
                continue
            while sub is not None:
                sub.buf = None
                sub.resync = True
                sub.wake()
                RESYNCS.labels("pubsub_reconnect").inc()
                sub = sub.next

    async def _listen(self, shard: int) -> None:
        """Keep shard `shard`'s Pub/Sub connection subscribed; fan-out messages are dispatched
        straight from the connection's data callback (dataplane/resp.py: no task per message)."""
        channel = domain.fanout_channel(shard).encode()
        client = RespClient.like(self.redis)

        def on_push(reply) -> None:
            kind = reply[0] if isinstance(reply, list) and reply else None
            if kind == b"message":
                try:
                    self.dispatch(reply[2])
                except (ValueError, UnicodeDecodeError, IndexError):
                    log.warning("malformed fan-out message ignored", extra={"shard": shard})
            elif kind == b"subscribe":
                # first subscription, or a new connection after a lost one: anything published
                # meanwhile was missed, so everyone catches up
                RECONNECTS.labels(str(shard)).inc()
                self.resync_shard(shard)
                self._ready[shard].set()

        while True:
            conn = None
            try:
                conn = await client.connect(on_push)
                conn.send_only("SUBSCRIBE", channel)
                await conn.closed
                raise conn.error or RedisConnectionError("Pub/Sub connection closed")
            except asyncio.CancelledError:
                raise
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("pub/sub connection lost; reconnecting", extra={"shard": shard, "error": str(exc)})
                await asyncio.sleep(self.retry_s)
            finally:
                if conn is not None:
                    conn.close()
