"""`POST /v1/images` (multipart/form-data, field `file`) → the `ImageService.Upload` stream.

The body is parsed as it arrives and forwarded in chunks of ECO2_GATEWAY_UPLOAD_CHUNK_BYTES
through a bounded queue: a slow upstream slows the client down instead of filling memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

import grpc
from google.protobuf import json_format
from python_multipart.multipart import MultipartParser, parse_options_header

from eco2.images.v1 import images_pb2
from eco2.services.runtime.validation import ascii_digits

from .http import BodyIncomplete, HttpError, Request
from .routes import grpc_error_body

UPLOAD = "/eco2.images.v1.ImageService/Upload"
_DISPOSITION_NAME = re.compile(r'name="([^"]*)"')
_DISPOSITION_FILE = re.compile(r'filename="([^"]*)"')
#: `?channel=` of an upload (default chat); what a browser may upload as
_CHANNELS = {
    "chat": images_pb2.IMAGE_CHANNEL_CHAT,
    "scan": images_pb2.IMAGE_CHANNEL_SCAN,
    "profile": images_pb2.IMAGE_CHANNEL_PROFILE,
}


async def upload(req: Request, upstreams, settings, metadata) -> None:
    ctype, params = parse_options_header(req.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise HttpError(415, "send multipart/form-data with a `file` part", "UNSUPPORTED_MEDIA_TYPE")
    limit = settings.gateway_max_body_bytes
    length = req.headers.get("content-length")
    if length and ascii_digits(length) and int(length) > limit:
        raise HttpError(413, f"upload exceeds {limit} bytes (ECO2_GATEWAY_MAX_BODY_BYTES)", "BODY_TOO_LARGE")
    channel_name = (req.query_value("channel") or "chat").strip().lower()
    channel = _CHANNELS.get(channel_name)
    if channel is None:
        raise HttpError(
            400,
            f"channel must be one of {', '.join(_CHANNELS)}, got {channel_name[:40]!r}",
            "BAD_QUERY",
            details={"field": "channel"},
        )
    chunk_size = settings.gateway_upload_chunk_bytes
    queue: asyncio.Queue = asyncio.Queue(maxsize=4)
    state = {
        "part": None,
        "headers": {},
        "header_field": b"",
        "header_value": b"",
        "file_seen": False,
        "buf": bytearray(),
        "pending": [],
    }

    def on_part_begin():
        state["headers"] = {}

    def on_header_field(data, start, end):
        state["header_field"] += data[start:end]

    def on_header_value(data, start, end):
        state["header_value"] += data[start:end]

    def on_header_end():
        state["headers"][state["header_field"].decode("latin-1").lower()] = state["header_value"].decode(
            "utf-8", "replace"
        )
        state["header_field"], state["header_value"] = b"", b""

    def on_headers_finished():
        disposition = state["headers"].get("content-disposition", "")
        name = _DISPOSITION_NAME.search(disposition)
        is_file = bool(name and name.group(1) == "file" and not state["file_seen"])
        state["part"] = "file" if is_file else "other"
        if is_file:
            state["file_seen"] = True
            filename = (_DISPOSITION_FILE.search(disposition) or [None, ""])[1]
            meta = images_pb2.UploadMetadata(
                channel=channel, content_type=state["headers"].get("content-type", ""), filename=filename[:255]
            )
            state["pending"].append(images_pb2.UploadRequest(metadata=meta))

    def on_part_data(data, start, end):
        if state["part"] == "file":
            state["buf"] += data[start:end]
            while len(state["buf"]) >= chunk_size:
                state["pending"].append(images_pb2.UploadRequest(chunk=bytes(state["buf"][:chunk_size])))
                del state["buf"][:chunk_size]

    def on_part_end():
        if state["part"] == "file" and state["buf"]:
            state["pending"].append(images_pb2.UploadRequest(chunk=bytes(state["buf"])))
            state["buf"] = bytearray()
        state["part"] = None

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )

    async def requests():
        while True:
            item = await queue.get()
            if item is None:
                return
            yield item

    stub = upstreams.channel(settings.images_addr).stream_unary(
        UPLOAD,
        request_serializer=images_pb2.UploadRequest.SerializeToString,
        response_deserializer=images_pb2.UploadResponse.FromString,
    )
    call = None
    outcome: asyncio.Future | None = None  # the call's result, watched while feeding it

    async def feed(item) -> bool:
        """Queue one message for the upstream; False once the upstream has ended the call
        (it refused the upload: too large, wrong type...), so a full queue never blocks."""
        if outcome.done():
            return False
        put = asyncio.ensure_future(queue.put(item))
        await asyncio.wait([put, outcome], return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            return False
        return True

    async def answer() -> None:
        try:
            reply = await outcome
        except grpc.aio.AioRpcError as exc:
            status, err = grpc_error_body(exc)
            await req.respond_json(status, err)
            return
        await req.respond_json(200, json_format.MessageToDict(reply))

    received = 0
    try:
        async with asyncio.timeout(settings.gateway_body_timeout_s):
            while True:
                message = await req.receive()
                if message["type"] == "http.disconnect":
                    req.body_done = True  # nothing more comes
                    raise BodyIncomplete()
                data = message.get("body", b"")
                received += len(data)
                if received > limit:
                    raise HttpError(
                        413, f"upload exceeds {limit} bytes (ECO2_GATEWAY_MAX_BODY_BYTES)", "BODY_TOO_LARGE"
                    )
                try:
                    parser.write(data)
                except Exception as exc:  # noqa: BLE001 - python-multipart raises its own errors for malformed bodies
                    raise HttpError(400, f"malformed multipart body: {exc}", "BAD_MULTIPART") from None
                if state["pending"] and call is None:
                    call = stub(requests(), timeout=settings.gateway_default_timeout_s, metadata=metadata)
                    outcome = asyncio.ensure_future(_result(call))
                for item in state["pending"]:
                    if not await feed(item):
                        break
                state["pending"] = []
                if outcome is not None and outcome.done():  # refused mid-stream: answer now, drop the rest
                    await answer()
                    return
                if not message.get("more_body", False):
                    break
        parser.finalize()
        if not state["file_seen"]:
            raise HttpError(400, "the multipart body has no `file` part", "NO_FILE", details={"field": "file"})
        req.body_done = True
        await feed(None)
        await answer()
    except TimeoutError:
        raise HttpError(
            408,
            f"upload not received within {settings.gateway_body_timeout_s:g} s (ECO2_GATEWAY_BODY_TIMEOUT_S)",
            "BODY_TIMEOUT",
        ) from None
    finally:
        if call is not None and not call.done():
            call.cancel()
        if outcome is not None:
            if not outcome.done():
                outcome.cancel()
            with contextlib.suppress(BaseException):
                await outcome


async def _result(call):
    return await call
