"""The producer library every worker uses to publish job events.

    publisher = EventPublisher(redis)            # a redis.asyncio.Redis
    await publisher.publish(events_pb2.Event(job_id=..., seq=1, kind=EVENT_KIND_STAGE, ...))

One Lua call appends the event to its shard stream `events:{N}` (read by the router) and to
the job's replay stream (read by Subscribe on catch-up), atomically and idempotently.
"""

from __future__ import annotations

import time

import redis.asyncio
from prometheus_client import Counter

from eco2.events.v1 import events_pb2
from eco2.services.runtime.errors import FailedPrecondition, FieldViolation, InvalidArgument

from . import domain, scripts
from .settings import EventsSettings

PUBLISHED = Counter("eco2_events_published_total", "Events appended by producers in this process, by outcome", ["outcome"])


def validate_event(event: events_pb2.Event, max_bytes: int) -> None:
    violations = []
    if not domain.valid_job_id(event.job_id):
        violations.append(FieldViolation("job_id", f"must be {domain.JOB_ID_RULE}"))
    if not 1 <= event.seq <= domain.MAX_SEQ:
        violations.append(FieldViolation("seq", f"must be between 1 and {domain.MAX_SEQ} (got {event.seq})"))
    if event.kind not in events_pb2.EventKind.values() or event.kind == events_pb2.EVENT_KIND_UNSPECIFIED:
        violations.append(FieldViolation("kind", f"is required; one of {', '.join(events_pb2.EventKind.keys()[1:])}"))
    size = event.ByteSize()
    if size > max_bytes:
        violations.append(FieldViolation("event", f"serialized size {size} exceeds {max_bytes} bytes (ECO2_EVENTS_MAX_EVENT_BYTES)"))
    if violations:
        raise InvalidArgument("invalid event: " + ", ".join(v.field for v in violations), violations=violations)


class EventPublisher:
    def __init__(self, redis: redis.asyncio.Redis, settings: EventsSettings | None = None) -> None:
        self.redis = redis
        self.settings = settings or EventsSettings()
        self._script = redis.register_script(scripts.PUBLISH)
        self._ttl_ms = str(self.settings.events_replay_ttl_s * 1000)

    async def publish(self, event: events_pb2.Event) -> bool:
        """Append `event`. True when appended; False when this (job_id, seq) was already
        published (a retry: no-op). FailedPrecondition SEQ_NOT_INCREASING when seq is not above
        the job's last published seq, JOB_CLOSED after the job's terminal event."""
        s = self.settings
        validate_event(event, s.events_max_event_bytes)
        if not event.HasField("time"):
            event.time.FromNanoseconds(time.time_ns())
        shard = domain.shard_of(event.job_id, s.events_shards)
        terminal = "1" if event.kind in domain.TERMINAL_KINDS else "0"
        code, last = await self._script(
            keys=[domain.shard_stream(shard), domain.replay_key(shard, event.job_id), domain.producer_key(shard, event.job_id)],
            args=[
                event.job_id,
                str(event.seq),
                event.SerializeToString(),
                str(domain.status_after(event.kind, event.stage)),
                str(event.stage),
                event.node,
                str(event.job_kind),
                terminal,
                str(s.events_replay_maxlen),
                self._ttl_ms,
                str(s.events_shard_maxlen),
                str(event.time.seconds * 1000 + event.time.nanos // 1_000_000),
            ],
        )
        if code == 1:
            PUBLISHED.labels("appended").inc()
            return True
        if code == 0:
            PUBLISHED.labels("duplicate").inc()
            return False
        last_seq = int(last)
        meta = {"job_id": event.job_id, "seq": str(event.seq), "last_seq": str(last_seq)}
        if code == -1:
            PUBLISHED.labels("rejected").inc()
            raise FailedPrecondition(
                f"seq {event.seq} of job {event.job_id!r} is not greater than its last published seq {last_seq}",
                reason="SEQ_NOT_INCREASING",
                metadata=meta,
            )
        PUBLISHED.labels("rejected").inc()
        raise FailedPrecondition(
            f"job {event.job_id!r} is closed: its terminal event (seq {last_seq}) was already published",
            reason="JOB_CLOSED",
            metadata=meta,
        )
