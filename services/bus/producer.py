"""The producer library every worker uses to publish job events.

    publisher = EventPublisher(redis)            # a redis.asyncio.Redis
    await publisher.set_owner(job_id, user_id)   # a user's job: before its first event
    await publisher.publish(events_pb2.Event(job_id=..., seq=1, kind=EVENT_KIND_STAGE, ...))

One Lua call appends the event to its shard stream `events:{N}` (read by the router) and to
the job's replay stream (read by Subscribe on catch-up), atomically and idempotently;
`publish_many` sends one such call per shard, all in one round trip.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis.asyncio
from prometheus_client import Counter

from eco2.events.v1 import events_pb2
from eco2.services.dataplane.resp import RespClient
from eco2.services.runtime.errors import FailedPrecondition, FieldViolation, InvalidArgument

from . import domain, scripts
from .settings import EventsSettings

PUBLISHED = Counter(
    "eco2_events_published_total", "Events appended by producers in this process, by outcome", ["outcome"]
)
_APPENDED = PUBLISHED.labels("appended")
_DUPLICATE = PUBLISHED.labels("duplicate")
_REJECTED = PUBLISHED.labels("rejected")

_KINDS = frozenset(events_pb2.EventKind.values()) - {events_pb2.EVENT_KIND_UNSPECIFIED}
_KIND_NAMES = ", ".join(events_pb2.EventKind.keys()[1:])


def _violations(event: events_pb2.Event, size: int, max_bytes: int, prefix: str = "") -> list[FieldViolation]:
    violations = []
    if not domain.valid_job_id(event.job_id):
        violations.append(FieldViolation(prefix + "job_id", f"must be {domain.JOB_ID_RULE}"))
    if not 1 <= event.seq <= domain.MAX_SEQ:
        violations.append(FieldViolation(prefix + "seq", f"must be between 1 and {domain.MAX_SEQ} (got {event.seq})"))
    if event.kind not in _KINDS:
        violations.append(FieldViolation(prefix + "kind", f"is required; one of {_KIND_NAMES}"))
    if size > max_bytes:
        violations.append(
            FieldViolation(
                prefix + "event", f"serialized size {size} exceeds {max_bytes} bytes (ECO2_EVENTS_MAX_EVENT_BYTES)"
            )
        )
    return violations


def _rejection(event: events_pb2.Event, code: int, last: bytes | str, index: int | None) -> FailedPrecondition:
    last_seq = int(last)
    meta = {"job_id": event.job_id, "seq": str(event.seq), "last_seq": str(last_seq)}
    if index is not None:
        meta["index"] = str(index)
    if code == -1:
        return FailedPrecondition(
            f"seq {event.seq} of job {event.job_id!r} is not greater than its last published seq {last_seq}",
            reason="SEQ_NOT_INCREASING",
            metadata=meta,
        )
    return FailedPrecondition(
        f"job {event.job_id!r} is closed: its terminal event (seq {last_seq}) was already published",
        reason="JOB_CLOSED",
        metadata=meta,
    )


class EventPublisher:
    """Publishes over its own lean connection (dataplane/resp.py, docs/adr/0045) to the server,
    database and credentials of the given redis-py client; concurrent publishes share it
    (pipelined). `aclose()` closes it."""

    def __init__(self, redis: redis.asyncio.Redis, settings: EventsSettings | None = None) -> None:
        self.redis = redis
        self.settings = settings or EventsSettings()
        self._script = redis.register_script(scripts.PUBLISH)
        self._own = redis.register_script(scripts.OWN)
        self._fast = RespClient.like(redis)
        s = self.settings
        self._head = [str(s.events_replay_maxlen), str(s.events_replay_ttl_s * 1000), str(s.events_shard_maxlen)]

    async def set_owner(self, job_id: str, user_id: str) -> None:
        """Record that job `job_id` belongs to `user_id`: EventService then streams it to that
        user only (docs/services/events.md, "Whose streams"). Call it before the job's first
        event; calling it again for the same user is a no-op. FailedPrecondition JOB_OWNED when
        the job already belongs to someone else."""
        violations = []
        if not domain.valid_job_id(job_id):
            violations.append(FieldViolation("job_id", f"must be {domain.JOB_ID_RULE}"))
        if not user_id:
            violations.append(FieldViolation("user_id", "is required"))
        if violations:
            raise InvalidArgument("invalid job owner: " + ", ".join(v.field for v in violations), violations=violations)
        key = domain.producer_key(domain.shard_of(job_id, self.settings.events_shards), job_id)
        (owned,) = await self._fast.evalsha_many(
            self._own.sha, scripts.OWN, [([key], [user_id, self.settings.events_replay_ttl_s * 1000])]
        )
        if isinstance(owned, Exception):
            raise owned
        if not owned:
            raise FailedPrecondition(
                f"job {job_id!r} already belongs to another user", reason="JOB_OWNED", metadata={"job_id": job_id}
            )

    async def publish(self, event: events_pb2.Event) -> bool:
        """Append `event`. True when appended; False when this (job_id, seq) was already
        published (a retry: no-op). FailedPrecondition SEQ_NOT_INCREASING when seq is not above
        the job's last published seq, JOB_CLOSED after the job's terminal event."""
        code, last = (await self._append([event]))[0]
        return self._outcome(event, code, last, None)

    async def publish_next(self, event: events_pb2.Event, *, attempts: int = 5) -> bool:
        """Publish `event` as its job's next event: seq = the job's last published seq + 1,
        whatever `event.seq` was. For a producer that does not track the job's seqs, e.g. one
        ending a dead-lettered job with ERROR. False when the job is already closed (its
        terminal event was published); a concurrent producer's event in between is retried."""
        shard = domain.shard_of(event.job_id, self.settings.events_shards)
        key = domain.producer_key(shard, event.job_id)
        for _ in range(attempts):
            last = await self.redis.hget(key, "s")
            event.seq = int(last or 0) + 1
            try:
                return await self.publish(event)
            except FailedPrecondition as exc:
                if exc.reason == "JOB_CLOSED":
                    return False
                if exc.reason != "SEQ_NOT_INCREASING":
                    raise
        raise FailedPrecondition(
            f"job {event.job_id!r} kept advancing: no seq after {attempts} attempts", reason="SEQ_NOT_INCREASING"
        )

    async def published(self, job_id: str, *, batch: int = 1000) -> list[events_pb2.Event]:
        """The events of `job_id` still in its replay stream, in seq order: what a client
        following the job was sent (e.g. the answer a cancelled chat run streamed so far)."""
        key = domain.replay_key(domain.shard_of(job_id, self.settings.events_shards), job_id)
        out: list[events_pb2.Event] = []
        after = "-"
        while True:
            rows = await self.redis.xrange(key, min=after, max="+", count=batch)
            for _entry_id, fields in rows:
                out.append(events_pb2.Event.FromString(fields[b"d"]))
            if len(rows) < batch:
                return out
            last = rows[-1][0]
            after = "(" + (last.decode() if isinstance(last, bytes) else str(last))

    async def publish_many(self, events: Sequence[events_pb2.Event]) -> list[bool]:
        """Append several events (of one or more jobs) in one round trip: one Lua call per
        shard, pipelined. Events of one job must be given in seq order; each event is applied
        exactly as `publish` would, in the order given. Returns True (appended) / False
        (duplicate, a no-op) per event, in input order.

        InvalidArgument (fields `events[i].…`) when any event is invalid: then nothing is sent.
        FailedPrecondition (SEQ_NOT_INCREASING / JOB_CLOSED, metadata `index`) for the first
        rejected event — the other events of the batch were still applied, so re-sending the
        corrected batch is safe (appended events are then no-ops)."""
        if not events:
            return []
        results = await self._append(events)
        out = []
        error = None
        for i, (event, (code, last)) in enumerate(zip(events, results)):
            try:
                out.append(self._outcome(event, code, last, i))
            except FailedPrecondition as exc:
                error = error or exc
                out.append(False)
        if error is not None:
            raise error
        return out

    async def aclose(self) -> None:
        await self._fast.aclose()

    # -- internals ---------------------------------------------------------------------------
    @staticmethod
    def _outcome(event: events_pb2.Event, code: int, last, index: int | None) -> bool:
        if code == 1:
            _APPENDED.inc()
            return True
        if code == 0:
            _DUPLICATE.inc()
            return False
        _REJECTED.inc()
        raise _rejection(event, code, last, index)

    async def _append(self, events: Sequence[events_pb2.Event]) -> list[tuple[int, bytes]]:
        """Validate, group by shard, one Lua call per shard (pipelined); (code, last) per event."""
        s = self.settings
        max_bytes, shards = s.events_max_event_bytes, s.events_shards
        groups: dict[int, tuple[list, list, list[int]]] = {}
        violations: list[FieldViolation] = []
        many = len(events) > 1
        now_ns = 0
        for i, event in enumerate(events):
            if not event.HasField("time"):
                now_ns = now_ns or time.time_ns()
                event.time.FromNanoseconds(now_ns)
            data = event.SerializeToString()
            job = event.job_id
            kind = event.kind
            if not (
                1 <= event.seq <= domain.MAX_SEQ
                and kind in _KINDS
                and len(data) <= max_bytes
                and domain.valid_job_id(job)
            ):
                violations += _violations(event, len(data), max_bytes, f"events[{i}]." if many else "")
                continue
            shard = domain.shard_of(job, shards)
            group = groups.get(shard)
            if group is None:
                group = groups[shard] = ([domain.shard_stream(shard)], list(self._head), [])
            keys, args, positions = group
            keys.append(domain.replay_key(shard, job))
            keys.append(domain.producer_key(shard, job))
            t = event.time
            args.append(job)
            args.append(
                f"{event.seq} {1 if kind in domain.TERMINAL_KINDS else 0} {domain.status_after(kind, event.stage, event.error.code)} "
                f"{event.stage} {event.job_kind} {t.seconds * 1000 + t.nanos // 1_000_000}"
            )
            args.append(event.node)
            args.append(data)
            positions.append(i)
        if violations:
            raise InvalidArgument("invalid event: " + ", ".join(v.field for v in violations), violations=violations)
        results: list = [None] * len(events)
        replies = await self._fast.evalsha_many(
            self._script.sha, scripts.PUBLISH, [(keys, args) for keys, args, _ in groups.values()]
        )
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        for (_, _, positions), reply in zip(groups.values(), replies):
            for j, i in enumerate(positions):
                results[i] = (reply[2 * j], reply[2 * j + 1])
        return results
