"""The job queue workers (chat, scan) claim from: one stream per kind, one consumer group.

    queue = JobQueue(redis, "chat")
    await queue.enqueue(job_id, payload)           # False when job_id was already enqueued
    job = await queue.claim("worker-1")            # None when nothing came within block_ms
    ... await queue.ack(job)  or  await queue.fail(job, "why")

Keys (the `{kind}` hash tag keeps one kind's keys in one cluster slot):
    jobs:{kind}              the queue stream (consumer group `workers`)
    jobs:{kind}:dead         dead-letter stream: job_id, payload, attempts, error
    jobs:{kind}:id:<job_id>  dedupe marker (ECO2_JOBS_DEDUPE_TTL_S)
    jobs:{kind}:attempts     hash job_id → claims so far
    jobs:{kind}:errors       hash job_id → last error reported by fail()
    jobs:kinds               set of every kind a queue was opened for (what QueueSampler reads)

Delivery is at-least-once: a job whose worker died (no ack within the visibility timeout)
is claimed again by another worker; after `jobs_max_attempts` claims it goes to the
dead-letter stream with its last error instead, and `on_dead(job, error)` (when given) is
called, e.g. to end the job's event stream with an ERROR event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError, ResponseError

from eco2.services.runtime.errors import FieldViolation, InvalidArgument

from . import domain, scripts
from .settings import EventsSettings

log = logging.getLogger("eco2.jobs")

GROUP = "workers"
KINDS_KEY = "jobs:kinds"
KIND_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
JOBS = Counter(
    "eco2_jobs_total",
    "Job queue operations, by kind and outcome (enqueued, duplicate, claimed, reclaimed, acked, failed, dead)",
    ["kind", "outcome"],
)
# Sampled from Valkey by QueueSampler (the event router runs one).
DEPTH = Gauge("eco2_jobs_depth", "Jobs queued and not yet claimed by a worker", ["kind"])
PENDING = Gauge(
    "eco2_jobs_pending",
    "Jobs claimed by a worker and not yet acknowledged (running, or failed and due for a retry)",
    ["kind"],
)
OLDEST_AGE = Gauge(
    "eco2_jobs_oldest_age_seconds", "Age of the oldest job still in the queue, claimed or not (0 when empty)", ["kind"]
)
OLDEST_PENDING_AGE = Gauge(
    "eco2_jobs_oldest_pending_age_seconds",
    "Age (since enqueue) of the oldest claimed, unacknowledged job (0 when none)",
    ["kind"],
)
DEAD_LETTERS = Gauge("eco2_jobs_dead_letters", "Entries in the kind's dead-letter stream jobs:{kind}:dead", ["kind"])


@dataclass(slots=True)
class Job:
    job_id: str
    payload: bytes
    attempt: int
    entry_id: str
    #: the consumer that holds the claim
    consumer: str = ""


def ends_stream_on_dead(sink, *, job_kind: int, message: str, stream_of: Callable[[Job], str] = lambda job: job.job_id):
    """An `on_dead` for a queue whose jobs stream events: a job that ran out of attempts ends its
    stream (`stream_of(job)`, the job id unless a resume job streams on another's) with ERROR
    JOB_FAILED carrying `message`, so a client following it is told instead of waiting until its
    deadline. `sink` is the worker's EventPublisher."""
    from eco2.events.v1 import events_pb2

    async def on_dead(job: Job, error: str) -> None:
        job_id = stream_of(job)
        event = events_pb2.Event(
            job_id=job_id,
            kind=events_pb2.EVENT_KIND_ERROR,
            job_kind=job_kind,
            node="error",
            error=events_pb2.JobError(code=14, reason="JOB_FAILED", message=message, retryable=True),
        )
        if await sink.publish_next(event):
            log.warning(
                "a dead-lettered job ended its stream with ERROR",
                extra={"job_id": job_id, "seq": event.seq, "error": error[:300]},
            )

    return on_dead


class JobQueue:
    def __init__(
        self,
        redis: redis.asyncio.Redis,
        kind: str,
        settings: EventsSettings | None = None,
        *,
        on_dead: Callable[[Job, str], Awaitable[None]] | None = None,
    ) -> None:
        if not KIND_RE.match(kind):
            raise InvalidArgument(
                "invalid job kind", violations=[FieldViolation("kind", "must match [a-z][a-z0-9_-]{0,31}")]
            )
        self.redis = redis
        self.kind = kind
        self.settings = settings or EventsSettings()
        self.stream = f"jobs:{{{kind}}}"
        self.dead_stream = f"jobs:{{{kind}}}:dead"
        self._attempts = f"jobs:{{{kind}}}:attempts"
        self._errors = f"jobs:{{{kind}}}:errors"
        self._enqueue = redis.register_script(scripts.ENQUEUE)
        self._claim = redis.register_script(scripts.CLAIM)
        self._group_ready = False
        self._cursor = "0-0"
        self._visibility_ms = int(self.settings.jobs_visibility_timeout_s * 1000)
        self.on_dead = on_dead
        # one labelled child per outcome, looked up once (a job passes 3-4 of them)
        self._counted = {
            outcome: JOBS.labels(kind, outcome)
            for outcome in ("enqueued", "duplicate", "claimed", "reclaimed", "acked", "failed", "dead")
        }

    def _dedupe_key(self, job_id: str) -> str:
        return f"jobs:{{{self.kind}}}:id:{job_id}"

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        await self.redis.sadd(KINDS_KEY, self.kind)
        self._group_ready = True

    async def enqueue(self, job_id: str, payload: bytes) -> bool:
        if not domain.valid_job_id(job_id):
            raise InvalidArgument(
                "invalid job id", violations=[FieldViolation("job_id", f"must be {domain.JOB_ID_RULE}")]
            )
        if not isinstance(payload, (bytes, bytearray)) or len(payload) > self.settings.events_max_event_bytes:
            raise InvalidArgument(
                "invalid job payload",
                violations=[
                    FieldViolation(
                        "payload",
                        f"must be bytes of at most {self.settings.events_max_event_bytes} (ECO2_EVENTS_MAX_EVENT_BYTES)",
                    )
                ],
            )
        await self._ensure_group()
        added = await self._enqueue(
            keys=[self._dedupe_key(job_id), self.stream],
            args=[job_id, bytes(payload), self.settings.jobs_dedupe_ttl_s * 1000],
        )
        self._counted["enqueued" if added else "duplicate"].inc()
        return bool(added)

    async def claim(self, consumer: str, *, block_ms: int = 1000) -> Job | None:
        """The next job for `consumer`: first one whose worker died (idle past the visibility
        timeout, or failed and due for retry), else a new one, waiting up to block_ms. One
        round trip when a job is there (scripts.CLAIM); a blocking read only when none is."""
        await self._ensure_group()
        while True:
            cursor, how, *entry = await self._claim(
                keys=[self.stream, self._attempts], args=[GROUP, consumer, self._visibility_ms, self._cursor]
            )
            self._cursor = cursor.decode()
            if not how:
                break
            entry_id, job_id, payload, attempt = entry
            job = await self._unless_dead(Job(job_id.decode(), payload, attempt, entry_id.decode(), consumer))
            if job is not None:
                self._counted["reclaimed" if how == b"r" else "claimed"].inc()
                return job
        if block_ms <= 0:
            return None
        reply = await self.redis.xreadgroup(GROUP, consumer, {self.stream: ">"}, count=1, block=block_ms)
        for _stream, entries in reply or ():
            for entry in entries:
                job = await self._take(entry, consumer)
                if job is not None:
                    self._counted["claimed"].inc()
                    return job
        return None

    async def _take(self, entry, consumer: str) -> Job | None:
        entry_id, fields = entry
        entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        if not fields:  # deleted meanwhile
            await self.redis.xack(self.stream, GROUP, entry_id)
            return None
        job_id = fields[b"j"].decode()
        attempt = await self.redis.hincrby(self._attempts, job_id, 1)
        return await self._unless_dead(Job(job_id, fields[b"p"], attempt, entry_id, consumer))

    async def _unless_dead(self, job: Job) -> Job | None:
        """`job`, or None once it has used up its attempts: then it goes to the dead letters."""
        if job.attempt <= self.settings.jobs_max_attempts:
            return job
        last = await self.redis.hget(self._errors, job.job_id)
        reason = (
            f"not acknowledged within {self.settings.jobs_visibility_timeout_s:g} s after {job.attempt - 1} attempts"
        )
        await self._dead(
            job, reason + (f"; last error: {last.decode(errors='replace')}" if last else ""), job.attempt - 1
        )
        return None

    @contextlib.asynccontextmanager
    async def holding(self, job: Job):
        """Keep the claim on `job` while the body runs: its idle time is reset every third of the
        visibility timeout (XCLAIM JUSTID by the same consumer, no new attempt), so a job that
        runs longer than the timeout is not claimed a second time — nor dead-lettered under a
        worker still answering it. A worker that dies stops renewing: the job is reclaimed."""

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.settings.jobs_visibility_timeout_s / 3)
                try:
                    await self.redis.xclaim(self.stream, GROUP, job.consumer, 0, [job.entry_id], justid=True)
                except Exception:  # noqa: BLE001 — Valkey hiccup: the next round tries again
                    log.warning(
                        "renewing a job's claim failed", extra={"job_id": job.job_id, "kind": self.kind}, exc_info=True
                    )

        renewer = asyncio.create_task(renew(), name=f"renew-{job.job_id}")
        try:
            yield job
        finally:
            renewer.cancel()

    async def ack(self, job: Job) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, GROUP, job.entry_id)
            pipe.xdel(self.stream, job.entry_id)
            pipe.hdel(self._attempts, job.job_id)
            pipe.hdel(self._errors, job.job_id)
            await pipe.execute()
        self._counted["acked"].inc()

    def retry_delay_s(self, attempt: int) -> float:
        """How long a job whose `attempt`-th attempt failed waits before it may be claimed again:
        jobs_retry_delay_s, times jobs_retry_backoff for each earlier failure, at most
        jobs_retry_max_delay_s, lengthened by up to jobs_retry_jitter of it at random."""
        s = self.settings
        delay = min(s.jobs_retry_delay_s * s.jobs_retry_backoff ** max(0, attempt - 1), s.jobs_retry_max_delay_s)
        return delay * (1 + random.uniform(0, s.jobs_retry_jitter))

    async def fail(self, job: Job, error: str) -> None:
        """Retry after `retry_delay_s`, or dead-letter after jobs_max_attempts attempts."""
        if job.attempt >= self.settings.jobs_max_attempts:
            await self._dead(job, error, job.attempt)
            return
        # Make the entry look idle for (visibility - delay): claim() takes it again after the delay
        # (after the visibility timeout at the latest).
        idle = max(0, self._visibility_ms - int(self.retry_delay_s(job.attempt) * 1000))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._errors, job.job_id, error)
            pipe.xclaim(self.stream, GROUP, "retry", 0, [job.entry_id], idle=idle, justid=True)
            await pipe.execute()
        self._counted["failed"].inc()

    async def _dead(self, job: Job, error: str, attempts: int) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(
                self.dead_stream,
                {"j": job.job_id, "p": job.payload, "a": str(attempts), "e": error},
                maxlen=self.settings.jobs_dead_maxlen,
                approximate=True,
            )
            pipe.xack(self.stream, GROUP, job.entry_id)
            pipe.xdel(self.stream, job.entry_id)
            pipe.hdel(self._attempts, job.job_id)
            pipe.hdel(self._errors, job.job_id)
            await pipe.execute()
        self._counted["dead"].inc()
        if self.on_dead is not None:
            try:
                await self.on_dead(job, error)
            except Exception:  # noqa: BLE001 — the job is dead-lettered either way
                log.warning("on_dead failed", extra={"job_id": job.job_id, "kind": self.kind}, exc_info=True)


# -- what is in the queues ----------------------------------------------------------------


@dataclass(slots=True)
class QueueStats:
    kind: str
    depth: int  # queued, not yet claimed
    pending: int  # claimed, not yet acknowledged
    oldest_age_s: float  # the oldest job still in the queue (0: empty)
    oldest_pending_age_s: float  # the oldest claimed one, since it was enqueued (0: none)
    dead: int  # entries of the dead-letter stream


def _entry_ms(entry_id) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return int(text.split("-")[0])


async def known_kinds(redis_client: redis.asyncio.Redis) -> list[str]:
    """Every kind a JobQueue was opened for on this Valkey, sorted."""
    return sorted(k.decode() if isinstance(k, bytes) else k for k in await redis_client.smembers(KINDS_KEY))


async def queue_stats(redis_client: redis.asyncio.Redis, kind: str) -> QueueStats:
    """One round trip: the stream's length, its oldest entry, the group's pending summary and
    the dead-letter stream's length. Acknowledged jobs are deleted from the stream, so what is
    in it is either pending or not yet claimed."""
    stream = f"jobs:{{{kind}}}"
    async with redis_client.pipeline(transaction=False) as pipe:
        pipe.xlen(stream)
        pipe.xrange(stream, count=1)
        pipe.xpending(stream, GROUP)
        pipe.xlen(f"{stream}:dead")
        length, oldest, pending, dead = await pipe.execute(raise_on_error=False)
    if isinstance(pending, ResponseError):  # NOGROUP: no queue opened yet
        pending = {"pending": 0, "min": None}
    for reply in (length, oldest, dead):
        if isinstance(reply, Exception):
            raise reply
    now_ms = time.time() * 1000
    claimed = int(pending.get("pending") or 0)
    oldest_age = max(0.0, (now_ms - _entry_ms(oldest[0][0])) / 1000) if oldest else 0.0
    pending_age = max(0.0, (now_ms - _entry_ms(pending["min"])) / 1000) if claimed and pending.get("min") else 0.0
    return QueueStats(kind, max(0, int(length) - claimed), claimed, oldest_age, pending_age, int(dead))


class QueueSampler:
    """Sets the eco2_jobs_* gauges of every known kind every `interval_s` (one round trip per
    kind). The event router runs it: one process per deployment, not every worker."""

    def __init__(self, redis_client: redis.asyncio.Redis, interval_s: float) -> None:
        self.redis = redis_client
        self.interval_s = interval_s
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="jobs-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def sample(self) -> list[QueueStats]:
        stats = [await queue_stats(self.redis, kind) for kind in await known_kinds(self.redis)]
        for q in stats:
            DEPTH.labels(q.kind).set(q.depth)
            PENDING.labels(q.kind).set(q.pending)
            OLDEST_AGE.labels(q.kind).set(q.oldest_age_s)
            OLDEST_PENDING_AGE.labels(q.kind).set(q.oldest_pending_age_s)
            DEAD_LETTERS.labels(q.kind).set(q.dead)
        return stats

    async def _loop(self) -> None:
        while True:
            try:
                await self.sample()
            except (RedisError, OSError) as exc:
                log.warning("sampling the job queues failed", extra={"error": str(exc)})
            await asyncio.sleep(self.interval_s)
