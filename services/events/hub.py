"""In-process fan-out of live events: one Pub/Sub connection per shard, shared by every
subscriber of the process, dispatched in memory by job id.

A subscriber costs one small object (no task, no queue object): a list of buffered live
messages, a resync flag and, while it waits, one future. When its buffer is full the hub
drops the buffer and flags it to resync from the replay stream, so a slow subscriber never
blocks the others and never loses an event. After the Pub/Sub connection of a shard was
(re)established every subscriber of that shard resyncs, since messages may have been lost
while it was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio
from prometheus_client import Counter, Gauge
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eco2.services.runtime.errors import ResourceExhausted

from . import domain

log = logging.getLogger("eco2.events.hub")

SUBSCRIBERS = Gauge("eco2_events_subscribers", "Live subscribers registered in this process")
RESYNCS = Counter("eco2_events_subscriber_resyncs_total", "Subscribers sent back to the replay stream", ["reason"])
LIVE = Counter("eco2_events_live_messages_total", "Pub/Sub messages received by this process")
RECONNECTS = Counter("eco2_events_pubsub_reconnects_total", "Pub/Sub (re)subscriptions per shard", ["shard"])


class Sub:
    __slots__ = ("job", "buf", "resync", "waiter")

    def __init__(self, job: str) -> None:
        self.job = job
        self.buf: list[tuple[int, int, bool, bytes]] = []
        self.resync = False
        self.waiter: asyncio.Future | None = None

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)


class Hub:
    def __init__(self, pubsub_redis: redis.asyncio.Redis, shards: int, *, buffer: int, max_subscribers: int, retry_s: float) -> None:
        self.redis = pubsub_redis
        self.shards = shards
        self.buffer = buffer
        self.max_subscribers = max_subscribers
        self.retry_s = retry_s
        self.by_job: dict[str, list[Sub]] = {}
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
        self.by_job.setdefault(job_id, []).append(sub)
        self.count += 1
        SUBSCRIBERS.inc()
        return sub

    def unregister(self, sub: Sub) -> None:
        subs = self.by_job.get(sub.job)
        if subs is None:
            return
        with contextlib.suppress(ValueError):
            subs.remove(sub)
            self.count -= 1
            SUBSCRIBERS.dec()
        if not subs:
            del self.by_job[sub.job]

    async def wait(self, sub: Sub, timeout: float | None) -> bool:
        if sub.buf or sub.resync:
            return True
        fut = asyncio.get_running_loop().create_future()
        sub.waiter = fut
        try:
            if timeout is None:
                await fut
                return True
            try:
                await asyncio.wait_for(fut, timeout)
                return True
            except TimeoutError:
                return bool(sub.buf or sub.resync)
        finally:
            sub.waiter = None

    # -- fan-out ---------------------------------------------------------------------------
    def dispatch(self, message: bytes) -> None:
        """Hand each event of a fan-out message to the subscribers of its job."""
        by_job = self.by_job
        cap = self.buffer
        n = 0
        for prev, seq, terminal, job, data in domain.iter_live(message):
            n += 1
            subs = by_job.get(job)
            if not subs:
                continue
            item = (prev, seq, terminal, data)
            for sub in subs:
                if sub.resync:
                    continue
                buf = sub.buf
                if len(buf) >= cap:
                    buf.clear()
                    sub.resync = True
                    RESYNCS.labels("slow_subscriber").inc()
                else:
                    buf.append(item)
                sub.wake()
        LIVE.inc(n)

    def resync_shard(self, shard: int) -> None:
        for job, subs in self.by_job.items():
            if domain.shard_of(job, self.shards) != shard:
                continue
            for sub in subs:
                sub.buf.clear()
                sub.resync = True
                sub.wake()
                RESYNCS.labels("pubsub_reconnect").inc()

    async def _listen(self, shard: int) -> None:
        channel = domain.fanout_channel(shard).encode()
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(channel)
                async for msg in pubsub.listen():
                    kind = msg["type"]
                    if kind == b"message" or kind == "message":
                        try:
                            self.dispatch(msg["data"])
                        except (ValueError, UnicodeDecodeError):
                            log.warning("malformed fan-out message ignored", extra={"shard": shard})
                    elif kind in (b"subscribe", "subscribe"):
                        # first subscription, or redis-py reconnected and resubscribed on its own:
                        # anything published meanwhile was missed, so everyone catches up
                        RECONNECTS.labels(str(shard)).inc()
                        self.resync_shard(shard)
                        self._ready[shard].set()
            except asyncio.CancelledError:
                raise
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("pub/sub connection lost; reconnecting", extra={"shard": shard, "error": str(exc)})
                await asyncio.sleep(self.retry_s)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
