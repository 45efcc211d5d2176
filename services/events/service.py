"""gRPC surface: eco2.events.v1.EventService (Subscribe, SubscribeBatches, GetJobState).

Subscribe sends events still serialized as the producer stored them (the replay stream and
the fan-out carry Event bytes), so the service never re-encodes an event; the method is
registered with an identity response serializer for that. SubscribeBatches is the same stream
(one implementation, `_stream`) framed as SubscribeBatchesResponse messages of several events,
built by concatenating the stored bytes (domain.batch_messages).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

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


def _check_job_id(job_id: str) -> None:
    """Raises InvalidArgument for a bad job id (a stream keeps no Validator alive while it idles)."""
    v = Validator()
    _validate_job_id(v, job_id)
    v.raise_if_invalid()


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

    # Both stream methods are plain functions that check the request and return the `_stream`
    # coroutine itself (the runtime interceptor awaits it): an idle stream holds no frame of
    # theirs (docs/adr/0044).
    def Subscribe(self, request: events_pb2.SubscribeRequest, context) -> Awaitable[None]:
        _check_job_id(request.job_id)
        return self._stream(request.job_id, request.after_seq, context.write)

    def SubscribeBatches(self, request: events_pb2.SubscribeBatchesRequest, context) -> Awaitable[None]:
        _check_job_id(request.job_id)
        s = self.settings
        limits = (min(request.max_events or s.events_batch_max_events, s.events_batch_max_events),
                  min(request.max_bytes or s.events_batch_max_bytes, s.events_batch_max_bytes))
        return self._stream(request.job_id, request.after_seq, context.write, limits)

    @staticmethod
    async def _send(write, events: list[bytes], batch: tuple[int, int] | None) -> None:
        if batch is None:  # Subscribe: one Event per message
            for data in events:
                await write(data)
        else:  # SubscribeBatches: what is ready, in as few messages as the limits allow
            for message in domain.batch_messages(events, *batch):
                await write(message)

    async def _stream(self, job_id: str, after_seq: int, write, limits: tuple[int, int] | None = None) -> None:
        """Writes the events with `write` (context.write: one coroutine per stream and no
        generator hops per event, so an idle stream is one suspended frame). Each step sends
        every event it has ready in one `_send`: one message per event for Subscribe, as few as
        (max events, max bytes) = `limits` allow for SubscribeBatches. Nothing waits to fill a
        batch: events that arrive while a send is in flight make the next one."""
        s = self.settings
        feed, store = self.feed, self.store
        sub = feed.register(job_id)  # live first: nothing published from now on is missed
        try:
            cursor = Cursor(after_seq)
            head = await store.head(job_id)
            if head is not None and head.closed and head.last_seq <= after_seq:
                return  # the client already has the terminal event
            known = replay = head is not None
            deadline = None
            while True:
                # catch up from the replay stream: first (a known job), after a gap, after a resync
                # — not on every wake-up: live events that follow the last sent one are sent as they are
                if replay or sub.resync:
                    replay = sub.resync = False
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
                        out = []
                        for ev in batch:
                            cursor.last = ev.seq
                            out.append(ev.data)
                            if ev.terminal:
                                await self._send(write, out, limits)
                                return
                        if out:
                            await self._send(write, out, limits)
                        if len(batch) < s.events_replay_batch:
                            break
                # live
                while sub.buf and not sub.resync:
                    items, sub.buf = sub.buf, None
                    known = True
                    out = []
                    last = cursor.last
                    end = False
                    for prev, seq, terminal, data in items:
                        if seq <= last:
                            continue  # Step.SKIP: already sent
                        if prev > last:  # Step.GAP (see Cursor.step): the rest comes from the replay stream
                            sub.resync = True
                            break
                        last = seq  # Step.SEND
                        out.append(data)
                        if terminal:
                            end = True
                            break
                    cursor.last = last
                    if out:
                        await self._send(write, out, limits)
                    if end:
                        return
                if sub.resync:
                    continue
                if known:
                    # idle until the next live event: keep nothing of the last step alive (docs/adr/0044)
                    head = batch = first = ev = out = items = data = None
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
                    known = replay = True
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise _redis_down(exc) from exc
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
        "SubscribeBatches": grpc.unary_stream_rpc_method_handler(
            servicer.SubscribeBatches,
            request_deserializer=events_pb2.SubscribeBatchesRequest.FromString,
            response_serializer=bytes,  # SubscribeBatchesResponse bytes built by domain.batch_messages
        ),
        "GetJobState": grpc.unary_unary_rpc_method_handler(
            servicer.GetJobState,
            request_deserializer=events_pb2.GetJobStateRequest.FromString,
            response_serializer=events_pb2.GetJobStateResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
