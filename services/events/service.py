"""gRPC surface: eco2.events.v1.EventService (Subscribe, SubscribeBatches, GetJobState).

A job's streams and state are its owner's only (the user its producer recorded with
EventPublisher.set_owner; "" for a job of the mesh's own, read by callers without a user):
anyone else gets the NOT_FOUND of an unknown job, at the same moment, so a job id tells a
stranger nothing (docs/services/events.md, "Whose streams").

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
from eco2.services.bus import domain
from eco2.services.bus.domain import Cursor
from eco2.services.bus.settings import EventsSettings
from eco2.services.runtime.context import caller_id
from eco2.services.runtime.errors import DomainError, NotFound, Unauthenticated, Unavailable
from eco2.services.runtime.validation import Validator

from .ports import JobHead, LiveFeed, ReplayStore

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


def _caller(context) -> str:
    """The user calling; "" for a workload of the mesh calling on its own (no user identity)."""
    try:
        return caller_id(context)
    except Unauthenticated:
        return ""


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
    # theirs (docs/adr/0040).
    def Subscribe(self, request: events_pb2.SubscribeRequest, context) -> Awaitable[None]:
        _check_job_id(request.job_id)
        return self._stream(request.job_id, _caller(context), request.after_seq, context.write)

    def SubscribeBatches(self, request: events_pb2.SubscribeBatchesRequest, context) -> Awaitable[None]:
        _check_job_id(request.job_id)
        s = self.settings
        limits = (
            min(request.max_events or s.events_batch_max_events, s.events_batch_max_events),
            min(request.max_bytes or s.events_batch_max_bytes, s.events_batch_max_bytes),
        )
        return self._stream(request.job_id, _caller(context), request.after_seq, context.write, limits)

    @staticmethod
    async def _send(write, events: list[bytes], batch: tuple[int, int] | None) -> None:
        if batch is None:  # Subscribe: one Event per message
            for data in events:
                await write(data)
        else:  # SubscribeBatches: what is ready, in as few messages as the limits allow
            for message in domain.batch_messages(events, *batch):
                await write(message)

    async def _stream(
        self, job_id: str, caller: str, after_seq: int, write, limits: tuple[int, int] | None = None
    ) -> None:
        """Writes the events with `write` (context.write: one coroutine per stream and no
        generator hops per event, so an idle stream is one suspended frame). Each step sends
        every event it has ready in one `_send`: one message per event for Subscribe, as few as
        (max events, max bytes) = `limits` allow for SubscribeBatches. Nothing waits to fill a
        batch: events that arrive while a send is in flight make the next one."""
        s = self.settings
        feed, store = self.feed, self.store
        sub = feed.register(job_id)  # live first: nothing published from now on is missed
        try:
            head = await self._admit(job_id, caller, sub)
            if head.closed and head.last_seq <= after_seq:
                return  # the client already has the terminal event
            cursor = Cursor(after_seq)
            replay = True
            while True:
                # catch up from the replay stream: first (a known job), after a gap, after a resync
                # — not on every wake-up: live events that follow the last sent one are sent as they are
                if replay or sub.resync:
                    replay = sub.resync = False
                    while True:
                        batch = await store.read_after(job_id, cursor.last, s.events_replay_batch)
                        if batch:
                            first = batch[0]
                            if first.prev > cursor.last:
                                raise OutOfRange(
                                    f"events of job {job_id!r} after seq {cursor.last} are no longer kept "
                                    f"(replay keeps {s.events_replay_maxlen} events, ECO2_EVENTS_REPLAY_MAXLEN); "
                                    f"the oldest kept is seq {first.seq}",
                                    reason="REPLAY_TRIMMED",
                                    metadata={
                                        "job_id": job_id,
                                        "after_seq": str(cursor.last),
                                        "oldest_seq": str(first.seq),
                                    },
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
                # idle until the next live event: keep nothing of the last step alive (docs/adr/0040)
                head = batch = first = ev = out = items = data = None
                await feed.wait(sub, None)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise _redis_down(exc) from exc
        finally:
            feed.unregister(sub)

    async def _admit(self, job_id: str, caller: str, sub) -> JobHead:
        """The job's head once the job exists and is `caller`'s to read, else NotFound.

        An unknown job gets ECO2_EVENTS_UNKNOWN_JOB_GRACE_S to publish its first event (a
        subscriber may be quicker than the producer). Someone else's job is refused like an
        unknown one, and no sooner, so neither the answer nor its timing tells them apart."""
        grace = self.settings.events_unknown_job_grace_s
        deadline = _now() + grace
        head = await self.store.head(job_id)
        while head is None and (remaining := deadline - _now()) > 0:
            await self.feed.wait(sub, remaining)  # wakes on the job's first live event (or a resync)
            # the replay that starts the stream reads whatever the live buffer held
            sub.buf, sub.resync = None, False
            head = await self.store.head(job_id)
        if head is not None and head.owner == caller:
            return head
        if head is not None:
            await asyncio.sleep(max(0.0, deadline - _now()))
        raise NotFound(
            f"no events for job {job_id!r} (waited {grace:g} s, ECO2_EVENTS_UNKNOWN_JOB_GRACE_S)",
            reason="JOB_NOT_FOUND",
            metadata={"job_id": job_id},
        )

    async def GetJobState(self, request: events_pb2.GetJobStateRequest, context) -> events_pb2.GetJobStateResponse:
        v = Validator()
        _validate_job_id(v, request.job_id)
        v.raise_if_invalid()
        try:
            head, state = await asyncio.gather(self.store.head(request.job_id), self.store.job_state(request.job_id))
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise _redis_down(exc) from exc
        if head is None or head.owner != _caller(context):  # unknown, or someone else's: the same answer
            raise NotFound(f"no job {request.job_id!r}", reason="JOB_NOT_FOUND", metadata={"job_id": request.job_id})
        if state is None:
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
