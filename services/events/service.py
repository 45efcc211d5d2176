"""gRPC surface: eco2.events.v1.EventService (Subscribe, GetJobState).

Subscribe sends events still serialized as the producer stored them (the replay stream and
the fan-out carry Event bytes), so the service never re-encodes an event; the method is
registered with an identity response serializer for that.
"""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import timestamp_pb2
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eco2.events.v1 import events_pb2
from eco2.services.runtime.errors import DomainError, NotFound, Unavailable
from eco2.services.runtime.validation import Validator

from . import domain
from .domain import Cursor
from .ports import LiveFeed, ReplayStore
from .settings import EventsSettings

SERVICE = events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name


class OutOfRange(DomainError):
    code = grpc.StatusCode.OUT_OF_RANGE
    default_reason = "OUT_OF_RANGE"


def _validate_job_id(v: Validator, job_id: str) -> None:
    if v.text("job_id", job_id, min_len=1, max_len=domain.JOB_ID_MAX, single_line=True):
        v.check(domain.valid_job_id(job_id), "job_id", f"must be {domain.JOB_ID_RULE}")


def _redis_down(exc: Exception) -> Unavailable:
    return Unavailable(
        f"the event store is unreachable ({type(exc).__name__}); resubscribe with after_seq = the last seq received",
        reason="EVENT_STORE_UNAVAILABLE",
        retry_after_s=1.0,
    )


class EventServicer:
    def __init__(self, store: ReplayStore, feed: LiveFeed, settings: EventsSettings) -> None:
        self.store = store
        self.feed = feed
        self.settings = settings

    async def Subscribe(self, request: events_pb2.SubscribeRequest, context):
        v = Validator()
        _validate_job_id(v, request.job_id)
        v.raise_if_invalid()
        try:
            await self._stream(request.job_id, request.after_seq, context.write)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise _redis_down(exc) from exc

    async def _stream(self, job_id: str, after_seq: int, write) -> None:
        """Writes the events with `write` (context.write: one coroutine per stream and no
        generator hops per event, so an idle stream is one suspended frame)."""
        s = self.settings
        feed, store = self.feed, self.store
        sub = feed.register(job_id)  # live first: nothing published from now on is missed
        try:
            cursor = Cursor(after_seq)
            head = await store.head(job_id)
            if head is not None and head.closed and head.last_seq <= after_seq:
                return  # the client already has the terminal event
            known = head is not None
            deadline = None
            while True:
                # catch up from the replay stream (first, after a gap, after a resync)
                if known or sub.resync:
                    sub.resync = False
                    while True:
                        batch = await store.read_after(job_id, cursor.last, s.events_replay_batch)
                        if batch:
                            known = True
                            first = batch[0]
                            if first.prev > cursor.last:
                                raise OutOfRange(
                                    f"events of job {job_id!r} after seq {cursor.last} are no longer kept "
                                    f"(replay keeps {s.events_replay_maxlen} events, ECO2_EVENTS_REPLAY_MAXLEN); "
                                    f"the oldest kept is seq {first.seq}",
                                    reason="REPLAY_TRIMMED",
                                    metadata={"job_id": job_id, "after_seq": str(cursor.last), "oldest_seq": str(first.seq)},
                                )
                        for ev in batch:
                            cursor.last = ev.seq
                            await write(ev.data)
                            if ev.terminal:
                                return
                        if len(batch) < s.events_replay_batch:
                            break
                # live
                while sub.buf and not sub.resync:
                    items, sub.buf = sub.buf, []
                    known = True
                    for prev, seq, terminal, data in items:
                        last = cursor.last
                        if seq <= last:
                            continue  # Step.SKIP: already sent
                        if prev > last:  # Step.GAP (see Cursor.step): the rest comes from the replay stream
                            sub.resync = True
                            break
                        cursor.last = seq  # Step.SEND
                        await write(data)
                        if terminal:
                            return
                if sub.resync:
                    continue
                if known:
                    await feed.wait(sub, None)
                    continue
                # unknown job: wait for its first event, at most the grace period
                loop_time = _now()
                if deadline is None:
                    deadline = loop_time + s.events_unknown_job_grace_s
                if loop_time >= deadline or not await feed.wait(sub, deadline - loop_time):
                    if await store.head(job_id) is None:
                        raise NotFound(
                            f"no events for job {job_id!r} (waited {s.events_unknown_job_grace_s:g} s, ECO2_EVENTS_UNKNOWN_JOB_GRACE_S)",
                            reason="JOB_NOT_FOUND",
                            metadata={"job_id": job_id},
                        )
                    known = True
        finally:
            feed.unregister(sub)

    async def GetJobState(self, request: events_pb2.GetJobStateRequest, context) -> events_pb2.GetJobStateResponse:
        v = Validator()
        _validate_job_id(v, request.job_id)
        v.raise_if_invalid()
        try:
            state = await self.store.job_state(request.job_id)
            head = None if state else await self.store.head(request.job_id)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise _redis_down(exc) from exc
        if state is None:
            if head is None:
                raise NotFound(f"no job {request.job_id!r}", reason="JOB_NOT_FOUND", metadata={"job_id": request.job_id})
            # published, not routed yet
            return events_pb2.GetJobStateResponse(
                state=events_pb2.JobState(job_id=request.job_id, status=events_pb2.JOB_STATUS_QUEUED)
            )
        ms = int(state.get(b"tm", b"0"))
        return events_pb2.GetJobStateResponse(
            state=events_pb2.JobState(
                job_id=request.job_id,
                job_kind=int(state.get(b"jk", b"0")),
                status=int(state.get(b"status", b"0")),
                stage=int(state.get(b"stage", b"0")),
                node=state.get(b"node", b"").decode(),
                last_seq=int(state.get(b"seq", b"0")),
                terminal=state.get(b"term") == b"1",
                updated_at=timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000),
            )
        )


def _now() -> float:
    return asyncio.get_running_loop().time()


def add_to_server(servicer: EventServicer, server: grpc.aio.Server) -> None:
    handlers = {
        "Subscribe": grpc.unary_stream_rpc_method_handler(
            servicer.Subscribe,
            request_deserializer=events_pb2.SubscribeRequest.FromString,
            response_serializer=bytes,  # already-serialized Event bytes
        ),
        "GetJobState": grpc.unary_unary_rpc_method_handler(
            servicer.GetJobState,
            request_deserializer=events_pb2.GetJobStateRequest.FromString,
            response_serializer=events_pb2.GetJobStateResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
