"""`GET /v1/jobs/{job_id}/events`: a job's events as Server-Sent Events.

Over `EventService.Subscribe(job_id, after_seq)`: `id:` is the event's seq (the resume
cursor: `Last-Event-ID` or `?after_seq=`), `event:` its kind (stage, token, tool,
needs_input, done, error), `data:` the event as proto3 JSON. Keepalive comments every
ECO2_GATEWAY_SSE_KEEPALIVE_S; the stream ends after the terminal event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

import grpc
from google.protobuf import json_format

from eco2.events.v1 import events_pb2

from .bridge import CONNECT_CODES, CONNECT_HTTP, connect_error
from .http import ClientGone, Headers, HttpError, Request
from .upstream import Upstreams

SUBSCRIBE = "/eco2.events.v1.EventService/Subscribe"
PATH = re.compile(r"^/v1/jobs/([A-Za-z0-9_.:-]{1,128})/events$")
TERMINAL = {events_pb2.EVENT_KIND_DONE, events_pb2.EVENT_KIND_ERROR}
_KIND_NAMES = {v.number: v.name.removeprefix("EVENT_KIND_").lower() for v in events_pb2.EventKind.DESCRIPTOR.values}
_MAX_SEQ = 2**64 - 1


def parse_cursor(req: Request) -> int:
    raw = req.headers.get("last-event-id")
    source = "Last-Event-ID"
    if raw is None:
        raw, source = req.query_value("after_seq"), "after_seq"
    if raw is None or raw == "":
        return 0
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 20 or int(raw) > _MAX_SEQ:
        raise HttpError(400, f"{source} must be an event seq (a non-negative integer), got {raw[:40]!r}", "BAD_CURSOR", details={"field": source})
    return int(raw)


def render(event: events_pb2.Event) -> bytes:
    data = json_format.MessageToJson(event, indent=None, ensure_ascii=False)
    kind = _KIND_NAMES.get(event.kind, "message")
    return f"id: {event.seq}\nevent: {kind}\ndata: {data}\n\n".encode()


class EventStreams:
    def __init__(self, settings, upstreams: Upstreams) -> None:
        self.settings = settings
        self.upstreams = upstreams
        self._subscribe = None

    def _stub(self):
        if self._subscribe is None:
            self._subscribe = self.upstreams.channel(self.settings.events_addr).unary_stream(
                SUBSCRIBE, request_serializer=events_pb2.SubscribeRequest.SerializeToString, response_deserializer=events_pb2.Event.FromString
            )
        return self._subscribe

    async def handle(self, req: Request, job_id: str, metadata: list[tuple[str, str]], extra: Headers) -> None:
        if req.method != "GET":
            raise HttpError(405, "use GET", "METHOD_NOT_ALLOWED", headers=[(b"allow", b"GET")])
        after = parse_cursor(req)
        call = self._stub()(events_pb2.SubscribeRequest(job_id=job_id, after_seq=after), metadata=metadata)
        watcher = asyncio.ensure_future(req.wait_disconnect())
        watcher.add_done_callback(lambda _f: call.cancel())
        s = self.settings
        next_read: asyncio.Future | None = None
        started = False
        try:
            next_read = asyncio.ensure_future(call.read())
            # Wait briefly for the first event so an unknown job gets a real HTTP error.
            done, _ = await asyncio.wait([next_read], timeout=s.gateway_sse_header_wait_s)
            if not done:
                await self._start(req, extra)
                started = True
            while True:
                done, _ = await asyncio.wait([next_read], timeout=s.gateway_sse_keepalive_s)
                if not done:
                    await req.write(b": keepalive\n\n")
                    continue
                event = next_read.result()
                next_read = None
                if event is grpc.aio.EOF:
                    break
                if not started:
                    await self._start(req, extra)
                    started = True
                await req.write(render(event))
                if event.kind in TERMINAL:
                    break
                next_read = asyncio.ensure_future(call.read())
            if not started:
                await self._start(req, extra)
            await req.write(b"", more=False)
        except grpc.aio.AioRpcError as exc:
            code = exc.code().value[0]
            err = connect_error(code, exc.details() or "", exc.trailing_metadata())
            if not started:
                await req.respond_json(CONNECT_HTTP.get(code, 502), {"error": {"code": CONNECT_HTTP.get(code, 502), "reason": CONNECT_CODES.get(code, "unknown").upper(), **err}}, extra)
            else:  # headers are out: tell the client in-band, it resumes from its last id
                await req.write(f"event: error\ndata: {json.dumps(err, ensure_ascii=False)}\n\n".encode(), more=False)
        except (asyncio.CancelledError, ClientGone):
            if not req.disconnected:
                raise
        finally:
            watcher.cancel()
            call.cancel()
            if next_read is not None and not next_read.done():
                next_read.cancel()
                with contextlib.suppress(BaseException):
                    await next_read

    async def _start(self, req: Request, extra: Headers) -> None:
        await req.start(200, [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            *extra,
        ])
        await req.write(b"retry: 2000\n\n")
