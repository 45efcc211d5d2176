"""`GET /v1/jobs/{job_id}/events`: a job's events as Server-Sent Events.

Over `EventService.SubscribeBatches(job_id, after_seq)` (every event that is ready in one
message: a reconnecting client's catch-up costs a few messages and writes, not one per event),
one upstream call per job and caller shared by all its SSE clients (see `Feed`): `id:` is the
event's seq (the resume
cursor: `Last-Event-ID` or `?after_seq=`), `event:` its kind (stage, token, tool,
needs_input, done, error), `data:` the event as proto3 JSON. Keepalive comments every
ECO2_GATEWAY_SSE_KEEPALIVE_S; the stream ends after the terminal event.
"""

from __future__ import annotations

import asyncio
import json
import re

import grpc
from google.protobuf import json_format
from prometheus_client import Counter

from eco2.events.v1 import events_pb2
from eco2.services.runtime.identity import IDENTITY_KEY
from eco2.services.runtime.validation import ascii_digits

from .bridge import CONNECT_CODES, CONNECT_HTTP, connect_error
from .http import ClientGone, Headers, HttpError, Request
from .upstream import Upstreams

SUBSCRIBE = "/eco2.events.v1.EventService/SubscribeBatches"
JOB_STATE = "/eco2.events.v1.EventService/GetJobState"
PATH = re.compile(r"^/v1/jobs/([A-Za-z0-9_.:-]{1,128})/events$")
TERMINAL = {events_pb2.EVENT_KIND_DONE, events_pb2.EVENT_KIND_ERROR}
_KIND_NAMES = {v.number: v.name.removeprefix("EVENT_KIND_").lower() for v in events_pb2.EventKind.DESCRIPTOR.values}
_MAX_SEQ = 2**64 - 1
CATCH_UPS = Counter(
    "eco2_gateway_sse_catch_ups_total",
    "SSE clients that fell behind their shared feed's buffer and went on over an upstream call of their own",
)


def parse_cursor(req: Request) -> int:
    raw = req.headers.get("last-event-id")
    source = "Last-Event-ID"
    if raw is None:
        raw, source = req.query_value("after_seq"), "after_seq"
    if raw is None or raw == "":
        return 0
    raw = raw.strip()
    if not ascii_digits(raw) or len(raw) > 20 or int(raw) > _MAX_SEQ:
        raise HttpError(
            400,
            f"{source} must be an event seq (a non-negative integer), got {raw[:40]!r}",
            "BAD_CURSOR",
            details={"field": source},
        )
    return int(raw)


def render(event: events_pb2.Event) -> bytes:
    data = json_format.MessageToJson(event, indent=None, ensure_ascii=False)
    kind = _KIND_NAMES.get(event.kind, "message")
    return f"id: {event.seq}\nevent: {kind}\ndata: {data}\n\n".encode()


class Feed:
    """One upstream `SubscribeBatches(job_id, after_seq=start)` shared by every SSE client of that job
    and caller whose cursor it covers (seq > start). A gRPC streaming call costs about an idle SSE
    client's whole memory budget, so N browsers on one job (tabs, reconnects, a demo screen) cost
    one call, not N (ADR 0072).

    The events it has read are kept (bounded by ECO2_GATEWAY_SSE_FEED_BUFFER_EVENTS, oldest
    dropped first, which raises `start`) so a client that joins late gets them from its cursor.
    Waiting clients share one future (`changed`), resolved on every new event or the end."""

    __slots__ = (
        "key",
        "start",
        "base",
        "events",
        "ended",
        "error",
        "changed",
        "clients",
        "call",
        "task",
        "limit",
        "hub",
    )

    def __init__(self, hub: EventStreams, key, start: int, call, limit: int) -> None:
        self.hub = hub
        self.key = key
        self.start = start  # the feed holds (or held) every event with seq > start
        self.base = 0  # absolute position of events[0]
        self.events: list[tuple[int, int, bytes]] = []  # (seq, kind, rendered SSE block)
        self.ended = False
        self.error: grpc.aio.AioRpcError | None = None
        self.changed: asyncio.Future = asyncio.get_running_loop().create_future()
        self.clients = 0
        self.call = call
        self.limit = limit
        self.task = asyncio.ensure_future(self._pump())

    def covers(self, cursor: int) -> bool:
        return cursor >= self.start

    def position(self, cursor: int) -> int:
        """Absolute position of the first event after `cursor`."""
        for i, (seq, _kind, _block) in enumerate(self.events):
            if seq > cursor:
                return self.base + i
        return self.base + len(self.events)

    def _wake(self) -> None:
        changed, self.changed = self.changed, asyncio.get_running_loop().create_future()
        changed.set_result(None)

    async def _pump(self) -> None:
        try:
            while True:
                batch = await self.call.read()
                if batch is grpc.aio.EOF:
                    break
                self.events.extend((event.seq, event.kind, render(event)) for event in batch.events)
                if len(self.events) > self.limit:  # drop the oldest half: late joiners before it get their own call
                    cut = len(self.events) // 2
                    self.start = self.events[cut - 1][0]
                    del self.events[:cut]
                    self.base += cut
                self._wake()
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        except asyncio.CancelledError:
            self.error = None
        finally:
            self.ended = True
            self.hub._forget(self)
            self._wake()

    def leave(self) -> None:
        self.clients -= 1
        if self.clients <= 0 and not self.ended:
            self.hub._forget(self)
            self.call.cancel()
            self.task.cancel()


class EventStreams:
    def __init__(self, settings, upstreams: Upstreams) -> None:
        self.settings = settings
        self.upstreams = upstreams
        self._subscribe = None
        self._job_state = None
        self._feeds: dict[tuple[str, str], Feed] = {}

    def _stub(self):
        if self._subscribe is None:
            self._subscribe = self.upstreams.channel(self.settings.events_addr).unary_stream(
                SUBSCRIBE,
                request_serializer=events_pb2.SubscribeBatchesRequest.SerializeToString,
                response_deserializer=events_pb2.SubscribeBatchesResponse.FromString,
            )
        return self._subscribe

    async def _check_job(self, job_id: str, metadata: list[tuple[str, str]]) -> None:
        """GetJobState as the caller: NOT_FOUND for a job that does not exist or is someone
        else's, answered at once, so the client gets a real 404 instead of headers and an
        in-band error after the events service's unknown-job grace (ECO2_EVENTS_UNKNOWN_JOB_GRACE_S)."""
        if self._job_state is None:
            self._job_state = self.upstreams.channel(self.settings.events_addr).unary_unary(
                JOB_STATE,
                request_serializer=events_pb2.GetJobStateRequest.SerializeToString,
                response_deserializer=events_pb2.GetJobStateResponse.FromString,
            )
        await self._job_state(
            events_pb2.GetJobStateRequest(job_id=job_id),
            metadata=metadata,
            timeout=self.settings.gateway_default_timeout_s,
        )

    def _forget(self, feed: Feed) -> None:
        if self._feeds.get(feed.key) is feed:
            del self._feeds[feed.key]

    def _join(self, job_id: str, after: int, metadata: list[tuple[str, str]]) -> Feed:
        # Shared per job *and credential*: a feed serves only requests carrying the very wristband
        # its upstream Subscribe was authorised with (EventService verified that one), so no
        # header a client can choose lets it join another user's stream.
        key = (job_id, next((v for k, v in metadata if k == IDENTITY_KEY), ""))
        feed = self._feeds.get(key)
        if feed is None or not feed.covers(after):
            # at most half the feed's buffer per message: a client that was caught up when a message
            # arrived keeps every event of it when the buffer drops its oldest half (see _pump)
            limit = self.settings.gateway_sse_feed_buffer_events
            call = self._stub()(
                events_pb2.SubscribeBatchesRequest(job_id=job_id, after_seq=after, max_events=max(1, limit // 2)),
                metadata=metadata,
            )
            feed = Feed(self, key, after, call, limit)
            if key not in self._feeds:
                self._feeds[key] = feed
        feed.clients += 1
        return feed

    async def handle(self, req: Request, job_id: str, metadata: list[tuple[str, str]], extra: Headers) -> None:
        after = parse_cursor(req)
        try:
            await self._check_job(job_id, metadata)
        except grpc.aio.AioRpcError as exc:
            await self._refuse(req, exc, extra)
            return
        feed = self._join(job_id, after, metadata)
        watcher = asyncio.ensure_future(req.wait_disconnect())
        s = self.settings
        started = False
        pos = feed.position(after)
        try:
            # Wait briefly for the first event so an early upstream error (e.g. OUT_OF_RANGE: the
            # replay was trimmed past the cursor) gets a real HTTP status.
            if pos - feed.base >= len(feed.events) and not feed.ended:
                await asyncio.wait(
                    [feed.changed, watcher], timeout=s.gateway_sse_header_wait_s, return_when=asyncio.FIRST_COMPLETED
                )
            while not watcher.done():
                if (
                    pos < feed.base
                ):  # fell behind the shared feed's buffer: go on from its own cursor on a call of its own
                    CATCH_UPS.inc()
                    feed.leave()
                    feed = self._join(job_id, after, metadata)
                    pos = feed.position(after)
                    continue
                i = pos - feed.base
                if i < len(feed.events):
                    if not started:
                        await self._start(req, extra)
                        started = True
                    # everything the feed has past the cursor, in one write
                    chunk, terminal = [], False
                    for seq, kind, block in feed.events[i:]:
                        pos += 1
                        if seq > after:
                            after = seq
                            chunk.append(block)
                            if kind in TERMINAL:
                                terminal = True
                                break
                    if chunk:
                        await req.write(b"".join(chunk))
                    if terminal:
                        break
                    continue
                if feed.ended:
                    if feed.error is not None:
                        raise feed.error
                    break
                if not started:
                    await self._start(req, extra)
                    started = True
                done, _ = await asyncio.wait(
                    [feed.changed, watcher], timeout=s.gateway_sse_keepalive_s, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    await req.write(b": keepalive\n\n")
            if watcher.done():
                return
            if not started:
                await self._start(req, extra)
            await req.write(b"", more=False)
        except grpc.aio.AioRpcError as exc:
            if not started:
                await self._refuse(req, exc, extra)
            else:  # headers are out: tell the client in-band, it resumes from its last id
                err = connect_error(exc.code().value[0], exc.details() or "", exc.trailing_metadata())
                await req.write(f"event: error\ndata: {json.dumps(err, ensure_ascii=False)}\n\n".encode(), more=False)
        except (asyncio.CancelledError, ClientGone):
            if not req.disconnected:
                raise
        finally:
            watcher.cancel()
            feed.leave()

    @staticmethod
    async def _refuse(req: Request, exc: grpc.aio.AioRpcError, extra: Headers) -> None:
        """An upstream error before the stream started, as an HTTP error with its JSON body."""
        code = exc.code().value[0]
        err = connect_error(code, exc.details() or "", exc.trailing_metadata())
        status = CONNECT_HTTP.get(code, 502)
        await req.respond_json(
            status, {"error": {"code": status, "reason": CONNECT_CODES.get(code, "unknown").upper(), **err}}, extra
        )

    async def _start(self, req: Request, extra: Headers) -> None:
        await req.start(
            200,
            [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"),
                *extra,
            ],
        )
        await req.write(b"retry: 2000\n\n")
