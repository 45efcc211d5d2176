"""gRPC-Web (binary and text) and Connect (unary and server streaming) → gRPC, for any method.

Messages pass through as bytes (Connect JSON is converted with the contracts' descriptors).
The request's grpc-timeout / connect-timeout-ms becomes the upstream deadline, allowlisted
headers become metadata, and a client that goes away cancels the upstream call.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable, Iterable

import grpc
from google.protobuf import json_format, message_factory
from google.rpc import error_details_pb2, status_pb2

from eco2.services.runtime.errors import DomainError, FieldViolation
from eco2.services.runtime.validation import ascii_digits

from .framing import (
    COMPRESSED_FLAG,
    CONNECT_END_FLAG,
    HEADER,
    TRAILERS_FLAG,
    FrameError,
    FrameTooLarge,
    decode_text,
    encode_text,
    frame,
    header_value,
    parse_frames,
    parse_grpc_timeout,
    status_headers,
    trailer_block,
)
from .http import BodyIncomplete, BodyTimeout, BodyTooLarge, ClientGone, Headers, Request
from .protojson import number_violations
from .upstream import Route, Upstreams

log = logging.getLogger("eco2.gateway.bridge")

GRPC_WEB_TYPES = {
    "application/grpc-web": False,
    "application/grpc-web+proto": False,
    "application/grpc-web-text": True,
    "application/grpc-web-text+proto": True,
}
CONNECT_UNARY_TYPES = {"application/proto", "application/json"}
CONNECT_STREAM_TYPES = {"application/connect+proto", "application/connect+json"}
ALL_TYPES = sorted([*GRPC_WEB_TYPES, *CONNECT_UNARY_TYPES, *CONNECT_STREAM_TYPES])

CONNECT_CODES = {
    1: "canceled",
    2: "unknown",
    3: "invalid_argument",
    4: "deadline_exceeded",
    5: "not_found",
    6: "already_exists",
    7: "permission_denied",
    8: "resource_exhausted",
    9: "failed_precondition",
    10: "aborted",
    11: "out_of_range",
    12: "unimplemented",
    13: "internal",
    14: "unavailable",
    15: "data_loss",
    16: "unauthenticated",
}
CONNECT_HTTP = {
    1: 499,
    2: 500,
    3: 400,
    4: 504,
    5: 404,
    6: 409,
    7: 403,
    8: 429,
    9: 400,
    10: 409,
    11: 400,
    12: 501,
    13: 500,
    14: 503,
    15: 500,
    16: 401,
}
HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
#: upstream response headers that must not be copied onto the HTTP response
_SKIP_RESPONSE_HEADERS = {
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "grpc-status",
    "grpc-message",
}
_OK = grpc.StatusCode.OK.value[0]
#: a unary call still running after this long gets a task watching for the client going away
_UNARY_WATCH_DELAY_S = 0.02


class CallError(Exception):
    """A gRPC status produced by the gateway itself (bad input, unknown route, ...)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str,
        violations: Iterable[FieldViolation] = (),
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        err = DomainError(message, reason=reason, violations=list(violations))
        err.code = code
        self.status = err.to_status()
        self.code = code.value[0]
        self.message = message
        self.reason = reason
        self.http_status = http_status

    @property
    def trailing(self) -> list[tuple[str, bytes]]:
        return [("grpc-status-details-bin", self.status.SerializeToString())]


def _metadata_items(md) -> list[tuple[str, str | bytes]]:
    return [(k, v) for k, v in (md or ()) if k not in _SKIP_RESPONSE_HEADERS and not k.startswith(":")]


def _details_bin(trailing: Iterable[tuple[str, str | bytes]]) -> bytes | None:
    for k, v in trailing:
        if k == "grpc-status-details-bin":
            return v if isinstance(v, bytes) else base64.b64decode(v + "=" * (-len(v) % 4))
    return None


# --- writers: one per wire protocol --------------------------------------------------------


class GrpcWebWriter:
    def __init__(self, req: Request, text: bool, extra: Headers) -> None:
        self.req = req
        self.text = text
        self.content_type = b"application/grpc-web-text+proto" if text else b"application/grpc-web+proto"
        self.extra = extra

    def _enc(self, data: bytes) -> bytes:
        return encode_text(data) if self.text else data

    def _headers(self, md) -> Headers:
        out = [(b"content-type", self.content_type)]
        out += [(k.encode(), header_value(k, v).encode("ascii", "replace")) for k, v in _metadata_items(md)]
        return out + self.extra

    async def unary(self, initial, message: bytes, trailing) -> None:
        body = self._enc(frame(message)) + self._enc(
            frame(trailer_block(_OK, "", _metadata_items(trailing)), TRAILERS_FLAG)
        )
        await self.req.finish(200, [*self._headers(initial), (b"content-length", str(len(body)).encode())], body)

    async def headers(self, initial) -> None:
        await self.req.start(200, self._headers(initial))

    async def message(self, data: bytes) -> None:
        await self.req.write(self._enc(frame(data)))

    async def end(self, code: int, message: str, trailing) -> None:
        await self.req.write(
            self._enc(frame(trailer_block(code, message, _metadata_items(trailing)), TRAILERS_FLAG)), more=False
        )

    async def trailers_only(self, code: int, message: str, trailing, http_status: int | None = None) -> None:
        headers = [
            (b"content-type", self.content_type),
            *status_headers(code, message, _metadata_items(trailing)),
            (b"content-length", b"0"),
            *self.extra,
        ]
        await self.req.start(200, headers)
        await self.req.write(b"", more=False)


#: The google.rpc error details the edge also shows decoded (BadRequest, ErrorInfo, RetryInfo, ...).
_KNOWN_DETAILS = {
    d.full_name: message_factory.GetMessageClass(d) for d in error_details_pb2.DESCRIPTOR.message_types_by_name.values()
}


def _detail(d) -> dict:
    """One detail in Connect's error JSON: `type`, `value` (its bytes, base64) and, for the known
    google.rpc details, `debug`: the same message as proto3 JSON, for people and plain-JSON clients."""
    name = d.type_url.rsplit("/", 1)[-1]
    out = {"type": name, "value": base64.b64encode(d.value).decode().rstrip("=")}
    cls = _KNOWN_DETAILS.get(name)
    if cls is not None:
        try:
            out["debug"] = json_format.MessageToDict(cls.FromString(d.value))
        except Exception:  # noqa: BLE001 - undecodable bytes: the detail stays, opaque
            pass
    return out


def connect_error(code: int, message: str, trailing) -> dict:
    out: dict = {"code": CONNECT_CODES.get(code, "unknown"), "message": message}
    raw = _details_bin(trailing or ())
    if raw:
        status = status_pb2.Status()
        try:
            status.ParseFromString(raw)
        except Exception:  # noqa: BLE001 - a broken details trailer is dropped, the status stays
            status = status_pb2.Status()
        out["details"] = [_detail(d) for d in status.details]
    return out


class ConnectUnaryWriter:
    def __init__(self, req: Request, json_mode: bool, convert: Callable[[bytes], bytes], extra: Headers) -> None:
        self.req = req
        self.content_type = b"application/json" if json_mode else b"application/proto"
        self.convert = convert
        self.extra = extra

    async def unary(self, initial, message: bytes, trailing) -> None:
        body = self.convert(message)
        headers = [(b"content-type", self.content_type), (b"content-length", str(len(body)).encode())]
        headers += [(k.encode(), header_value(k, v).encode("ascii", "replace")) for k, v in _metadata_items(initial)]
        headers += [
            (b"trailer-" + k.encode(), header_value(k, v).encode("ascii", "replace"))
            for k, v in _metadata_items(trailing)
        ]
        await self.req.start(200, headers + self.extra)
        await self.req.write(body, more=False)

    async def trailers_only(self, code: int, message: str, trailing, http_status: int | None = None) -> None:
        body = json.dumps(connect_error(code, message, trailing), ensure_ascii=False).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [
            (k.encode(), header_value(k, v).encode("ascii", "replace"))
            for k, v in _metadata_items(trailing)
            if k != "grpc-status-details-bin"
        ]
        await self.req.start(http_status or CONNECT_HTTP.get(code, 500), headers + self.extra)
        await self.req.write(body, more=False)


class ConnectStreamWriter:
    def __init__(self, req: Request, json_mode: bool, convert: Callable[[bytes], bytes], extra: Headers) -> None:
        self.req = req
        self.content_type = b"application/connect+json" if json_mode else b"application/connect+proto"
        self.convert = convert
        self.extra = extra

    async def headers(self, initial) -> None:
        headers = [(b"content-type", self.content_type)]
        headers += [(k.encode(), header_value(k, v).encode("ascii", "replace")) for k, v in _metadata_items(initial)]
        await self.req.start(200, headers + self.extra)

    async def message(self, data: bytes) -> None:
        await self.req.write(frame(self.convert(data)))

    async def end(self, code: int, message: str, trailing) -> None:
        end: dict = {}
        if code != _OK:
            end["error"] = connect_error(code, message, trailing)
        md: dict[str, list[str]] = {}
        for k, v in _metadata_items(trailing):
            if k != "grpc-status-details-bin":
                md.setdefault(k, []).append(header_value(k, v))
        if md:
            end["metadata"] = md
        await self.req.write(frame(json.dumps(end, ensure_ascii=False).encode(), CONNECT_END_FLAG), more=False)

    async def trailers_only(self, code: int, message: str, trailing, http_status: int | None = None) -> None:
        await self.headers(())
        await self.end(code, message, trailing)


# --- the bridge ----------------------------------------------------------------------------


class Bridge:
    def __init__(self, settings, upstreams: Upstreams) -> None:
        self.settings = settings
        self.upstreams = upstreams
        self._classes: dict[str, tuple] = {}

    def _json_classes(self, route: Route):
        if route.descriptor is None:
            raise CallError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"JSON needs the contract of {route.service}, which the gateway does not know; use application/proto",
                "NO_DESCRIPTOR",
            )
        cached = self._classes.get(route.path)
        if cached is None:
            d = route.descriptor
            cached = (message_factory.GetMessageClass(d.input_type), message_factory.GetMessageClass(d.output_type))
            self._classes[route.path] = cached
        return cached

    def _timeout(self, req: Request, connect: bool, streaming: bool) -> float | None:
        cap = self.settings.gateway_max_timeout_s
        if connect:
            raw = req.headers.get("connect-timeout-ms")
            if raw is not None:
                if not ascii_digits(raw) or len(raw) > 10:
                    raise CallError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"malformed connect-timeout-ms {raw!r}: want up to 10 digits",
                        "BAD_TIMEOUT",
                        [FieldViolation("connect-timeout-ms", "up to 10 digits")],
                    )
                return min(int(raw) / 1000.0, cap)
        else:
            raw = req.headers.get("grpc-timeout")
            if raw is not None:
                try:
                    return min(parse_grpc_timeout(raw), cap)
                except ValueError as exc:
                    raise CallError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        str(exc),
                        "BAD_TIMEOUT",
                        [FieldViolation("grpc-timeout", str(exc))],
                    ) from None
        return cap if streaming else self.settings.gateway_default_timeout_s

    def _metadata(self, req: Request, identity: list[tuple[str, str]], removed: set[str]) -> list[tuple[str, str]]:
        md: list[tuple[str, str]] = []
        for name in self.settings.gateway_metadata_allowlist:
            value = req.headers.get(name)
            if value is not None and name not in removed:
                if any(ord(c) < 0x20 or ord(c) > 0x7E for c in value):
                    raise CallError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"header {name} has characters gRPC metadata cannot carry",
                        "BAD_METADATA",
                        [FieldViolation(name, "printable ASCII only")],
                    )
                md.append((name, value))
        md += identity
        return md

    async def handle(
        self, req: Request, route: Route | None, route_error: str | None, identity, removed, extra: Headers
    ) -> None:
        ctype = req.content_type
        text = GRPC_WEB_TYPES.get(ctype)
        connect_unary = ctype in CONNECT_UNARY_TYPES
        connect_stream = ctype in CONNECT_STREAM_TYPES
        json_mode = ctype.endswith("json")
        convert = _identity
        if text is not None:
            writer = GrpcWebWriter(req, text, extra)
        elif connect_unary:
            writer = ConnectUnaryWriter(req, json_mode, convert, extra)
        else:
            writer = ConnectStreamWriter(req, json_mode, convert, extra)
        try:
            if route is None:
                raise CallError(
                    grpc.StatusCode.UNIMPLEMENTED, route_error or "unknown method", "UNKNOWN_METHOD", http_status=404
                )
            if route.client_streaming:
                raise CallError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"{route.service}/{route.method} is client streaming, which gRPC-Web and Connect from browsers cannot carry",
                    "CLIENT_STREAMING",
                )
            if req.headers.get("content-encoding", "identity") not in ("identity", "") or req.headers.get(
                "connect-content-encoding", "identity"
            ) not in ("identity", ""):
                raise CallError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    "compressed requests are not supported: send identity encoding",
                    "COMPRESSION",
                )
            if json_mode:
                in_cls, out_cls = self._json_classes(route)
                convert = _to_json(out_cls)
                writer.convert = convert
            streaming = connect_stream or (text is not None and route.server_streaming is not False)
            timeout = self._timeout(req, connect=text is None, streaming=streaming)
            metadata = self._metadata(req, identity, removed)
            message = await self._read_message(req, text, connect_unary, connect_stream)
            if json_mode:
                message = _from_json(in_cls, message)
        except CallError as err:
            if err.reason not in ("MESSAGE_TOO_LARGE", "BODY_TIMEOUT"):  # those bodies are not worth reading
                await req.drain(
                    self.settings.gateway_max_message_bytes * 2, min(1.0, self.settings.gateway_body_timeout_s)
                )
            await writer.trailers_only(err.code, err.message, err.trailing, err.http_status if connect_unary else None)
            return
        await self._call(req, route, message, timeout, metadata, streaming, writer)

    async def _read_message(self, req: Request, text: bool | None, connect_unary: bool, connect_stream: bool) -> bytes:
        limit = self.settings.gateway_max_message_bytes
        if req.method != "POST":
            raise CallError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"method {req.method} not allowed: gRPC-Web and Connect calls are POST",
                "METHOD_NOT_ALLOWED",
                http_status=405,
            )
        body_limit = limit if connect_unary else limit + HEADER.size
        if text:
            body_limit = (body_limit + 2) // 3 * 4 + 1024

        def early(buf: bytearray) -> None:  # refuse an oversized frame before its bytes arrive
            if not text and not connect_unary:
                n = len(buf) >= HEADER.size and HEADER.unpack_from(bytes(buf[: HEADER.size]))[1]
                if n and n > limit:
                    raise FrameTooLarge(n, limit)

        try:
            body = await req.read_body(
                body_limit, self.settings.gateway_body_timeout_s, "ECO2_GATEWAY_MAX_MESSAGE_BYTES", check=early
            )
            if connect_unary:
                return body
            if text:
                body = decode_text(body)
            frames = parse_frames(body, limit)
        except FrameTooLarge as exc:
            raise CallError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), exc.reason) from None
        except FrameError as exc:
            raise CallError(
                grpc.StatusCode.INVALID_ARGUMENT, str(exc), exc.reason, [FieldViolation("body", str(exc))]
            ) from None
        except BodyTooLarge as exc:
            raise CallError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request larger than {exc.limit} bytes (ECO2_GATEWAY_MAX_MESSAGE_BYTES)",
                "MESSAGE_TOO_LARGE",
            ) from None
        except BodyTimeout as exc:
            raise CallError(grpc.StatusCode.DEADLINE_EXCEEDED, exc.message, exc.reason, http_status=408) from None
        except BodyIncomplete as exc:
            raise CallError(
                grpc.StatusCode.INVALID_ARGUMENT,
                exc.message,
                exc.reason,
                [FieldViolation("body", exc.message)],
                http_status=400,
            ) from None
        messages = []
        for flags, payload in frames:
            if flags & COMPRESSED_FLAG:
                raise CallError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    "compressed frames are not supported: send identity encoding",
                    "COMPRESSION",
                )
            if flags & (TRAILERS_FLAG | CONNECT_END_FLAG):
                raise CallError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"unexpected frame flags 0x{flags:02x} in a request",
                    "BAD_FRAME_FLAGS",
                )
            messages.append(payload)
        if len(messages) != 1:
            raise CallError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"expected exactly one request message, got {len(messages)}",
                "MESSAGE_COUNT",
                [FieldViolation("body", "exactly one message frame")],
            )
        return messages[0]

    async def _call(
        self, req: Request, route: Route, message: bytes, timeout, metadata, streaming: bool, writer
    ) -> None:
        if streaming:
            call = self.upstreams.stream(route)(message, timeout=timeout, metadata=metadata)
        else:
            call = self.upstreams.unary(route)(message, timeout=timeout, metadata=metadata)
        watcher: asyncio.Future | None = None
        timer: asyncio.TimerHandle | None = None

        def watch() -> None:  # a client that goes away cancels the upstream call
            nonlocal watcher
            watcher = asyncio.ensure_future(req.wait_disconnect())
            watcher.add_done_callback(lambda _f: call.cancel())

        if streaming:
            watch()
        else:
            # Most unary replies are back within milliseconds: the watcher task (and the pending
            # receive it holds) is only started for a call still running after a short delay.
            timer = asyncio.get_running_loop().call_later(_UNARY_WATCH_DELAY_S, watch)
        try:
            if not streaming:
                try:
                    reply = await call
                except grpc.aio.AioRpcError as exc:
                    await writer.trailers_only(exc.code().value[0], exc.details() or "", exc.trailing_metadata())
                    return
                await writer.unary(await call.initial_metadata(), reply, await call.trailing_metadata())
                return
            started = False
            try:
                while True:
                    data = await call.read()
                    if data is grpc.aio.EOF:
                        break
                    if not started:
                        await writer.headers(await call.initial_metadata())
                        started = True
                    await writer.message(data)
                code = (await call.code()).value[0]
                details = await call.details() or ""
                trailing = await call.trailing_metadata()
            except grpc.aio.AioRpcError as exc:
                code, details, trailing = exc.code().value[0], exc.details() or "", exc.trailing_metadata()
            if not started and code != _OK:
                await writer.trailers_only(code, details, trailing)
                return
            if not started:
                await writer.headers(await call.initial_metadata())
            await writer.end(code, details, trailing)
        except asyncio.CancelledError:
            if req.disconnected:  # we cancelled the call: the client went away
                return
            call.cancel()
            raise
        except ClientGone:
            call.cancel()
        finally:
            if timer is not None:
                timer.cancel()
            if watcher is not None:
                watcher.cancel()


def _identity(data: bytes) -> bytes:
    return data


def _to_json(cls) -> Callable[[bytes], bytes]:
    def convert(data: bytes) -> bytes:
        msg = cls()
        msg.ParseFromString(data)
        return json_format.MessageToJson(msg, indent=None, ensure_ascii=False).encode()

    return convert


def _from_json(cls, body: bytes) -> bytes:
    try:
        text = body.decode("utf-8") if body else "{}"
        violations = number_violations(json.loads(text), cls.DESCRIPTOR)
        if violations:
            raise CallError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"invalid request: {', '.join(v.field for v in violations)}",
                "BAD_JSON",
                violations,
            )
        msg = json_format.Parse(text, cls())
    except (json_format.ParseError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        raise CallError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"request is not valid JSON for {cls.DESCRIPTOR.full_name}: {exc}",
            "BAD_JSON",
            [FieldViolation("body", str(exc))],
        ) from None
    return msg.SerializeToString()
