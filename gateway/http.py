"""Small ASGI helpers: the request, bounded body reads, writes with a timeout, JSON replies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from eco2.services.runtime.validation import ascii_digits

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


class HttpError(Exception):
    """An HTTP error with a JSON body {"error": {"code", "message", "reason"...}}."""

    def __init__(
        self, status: int, message: str, reason: str, *, headers: Headers | None = None, details: dict | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.headers = headers or []
        self.details = details or {}

    def body(self) -> dict:
        return {"error": {"code": self.status, "reason": self.reason, "message": self.message, **self.details}}


class BodyTooLarge(HttpError):
    def __init__(self, limit: int, setting: str) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes ({setting})", "BODY_TOO_LARGE")
        self.limit = limit


class BodyTimeout(HttpError):
    def __init__(self, seconds: float) -> None:
        super().__init__(
            408, f"request body not received within {seconds:g} s (ECO2_GATEWAY_BODY_TIMEOUT_S)", "BODY_TIMEOUT"
        )


class BodyIncomplete(HttpError):
    """The request body ended before it was complete. Granian reports a body that does not
    parse (a malformed chunked encoding, fewer bytes than Content-Length) as a disconnect of
    the client, and sends a bare 500 for a request the app leaves unanswered; so the gateway
    answers 400, which a client that really left never reads."""

    def __init__(self) -> None:
        super().__init__(
            400,
            "the request body ended before it was complete (a malformed chunked encoding, fewer bytes than "
            "Content-Length, or the client went away)",
            "BODY_INCOMPLETE",
        )


class ClientGone(Exception):
    """The client disconnected (or stopped reading for longer than the send timeout)."""


class Request:
    __slots__ = (
        "scope",
        "receive",
        "send",
        "method",
        "path",
        "headers",
        "_query",
        "body_done",
        "disconnected",
        "send_timeout",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send, send_timeout: float) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            key = k.decode("latin-1").lower()
            value = v.decode("latin-1")
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        self.headers = headers
        self._query: dict[str, list[str]] | None = None
        self.body_done = False
        self.disconnected = False
        self.send_timeout = send_timeout

    @property
    def query(self) -> dict[str, list[str]]:
        if self._query is None:
            self._query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        return self._query

    def query_value(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    @property
    def origin(self) -> str | None:
        return self.headers.get("origin")

    @property
    def self_origin(self) -> str:
        host = self.headers.get("host") or self.headers.get(":authority") or ""
        return f"{self.scope.get('scheme', 'http')}://{host}"

    async def read_body(
        self, limit: int, timeout: float, setting: str, *, check: Callable[[bytearray], None] | None = None
    ) -> bytes:
        """The whole body, refused past `limit` bytes or after `timeout` seconds."""
        if self.body_done:
            return b""
        length = self.headers.get("content-length")
        if length is not None and ascii_digits(length) and int(length) > limit:
            raise BodyTooLarge(limit, setting)
        buf = bytearray()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    message = await self.receive()
                    if message["type"] == "http.disconnect":
                        self.body_done = True  # nothing more comes
                        raise BodyIncomplete()
                    buf += message.get("body", b"")
                    if len(buf) > limit:
                        raise BodyTooLarge(limit, setting)
                    if check is not None:
                        check(buf)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise BodyTimeout(timeout) from None
        self.body_done = True
        return bytes(buf)

    async def drain(self, limit: int, timeout: float) -> None:
        """Read and drop an unread body before an early answer, so a keep-alive connection
        stays in step (bounded: past `limit` bytes or `timeout` the rest is left to the server)."""
        if self.body_done or self.disconnected:
            return
        seen = 0
        try:
            async with asyncio.timeout(timeout):
                while seen <= limit:
                    message = await self.receive()
                    if (
                        message["type"] == "http.disconnect"
                    ):  # or a body that does not parse (BodyIncomplete): answer anyway
                        self.body_done = True
                        return
                    seen += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        self.body_done = True
                        return
        except TimeoutError:
            return

    async def wait_disconnect(self) -> None:
        """Returns when the client goes away (run as a task once the body was read)."""
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                return

    async def start(self, status: int, headers: Headers) -> None:
        if self._body_left_unread() and self.scope.get("http_version", "1.1").startswith("1"):
            # the server closes a connection whose request body it did not read: saying so keeps
            # an HTTP/1.1 client from sending its next request on it
            headers = [*headers, (b"connection", b"close")]
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    def _body_left_unread(self) -> bool:
        if self.body_done or self.disconnected:
            return False
        length = self.headers.get("content-length", "0").strip()
        return (length.isdigit() and int(length) > 0) or "chunked" in self.headers.get("transfer-encoding", "")

    async def write(self, data: bytes, more: bool = True) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def finish(self, status: int, headers: Headers, body: bytes) -> None:
        """A whole response (headers and the complete body) under one send timeout."""
        if self.disconnected:
            raise ClientGone()
        try:
            async with asyncio.timeout(self.send_timeout):
                await self.send({"type": "http.response.start", "status": status, "headers": headers})
                await self.send({"type": "http.response.body", "body": body, "more_body": False})
        except TimeoutError:
            self.disconnected = True
            raise ClientGone() from None

    async def _send(self, message: dict) -> None:
        if self.disconnected:
            raise ClientGone()
        try:
            async with asyncio.timeout(self.send_timeout):
                await self.send(message)
        except TimeoutError:
            self.disconnected = True
            raise ClientGone() from None

    async def respond(
        self, status: int, body: bytes, content_type: bytes, headers: Iterable[tuple[bytes, bytes]] = ()
    ) -> None:
        await self.finish(
            status, [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers], body
        )

    async def respond_json(self, status: int, obj: Any, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
        await self.respond(status, body, b"application/json", [(b"cache-control", b"no-store"), *headers])
