"""The gateway's HTTP route table, and the small JSON routes a browser needs.

The gateway (app.py) declares its table as a sequence of `HttpRoute`s ending with a route that
matches every path; `find` picks the first route whose pattern matches the path and that
answers the method. The JSON routes (`JSON_ROUTES`) are each one gRPC call, proto3 JSON in and
out (`call_json`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import json_format

from eco2.auth.v1 import auth_pb2
from eco2.character.v1 import character_pb2
from eco2.chat.v1 import chat_pb2
from eco2.images.v1 import images_pb2
from eco2.scan.v1 import scan_pb2
from eco2.services.runtime.validation import ascii_digits

from .authz import Decision
from .bridge import CONNECT_CODES, CONNECT_HTTP, connect_error
from .http import Headers, HttpError, Request
from .protojson import number_violations
from .upstream import Upstreams

#: A route's handler: (request, the path's match, CORS headers, the Check decision or None).
Handler = Callable[[Request, re.Match, Headers, Decision | None], Awaitable[None]]
ANY: frozenset[str] = frozenset()


@dataclass(frozen=True)
class HttpRoute:
    kind: str  # what the route serves; the `kind` label of eco2_gateway_requests_total
    pattern: re.Pattern  # matched against the path
    methods: frozenset[str]  # the methods it answers; ANY: every method (the handler refuses the others)
    handler: Handler
    #: the edge's authorization (ext-authz Check) runs before the handler, which gets its
    #: decision; False: the path is public, or the handler checks once it knows more
    check: bool = True


def find(table: Sequence[HttpRoute], method: str, path: str) -> tuple[HttpRoute, re.Match]:
    """The first route that answers `method` and whose pattern matches `path`."""
    for route in table:
        if not route.methods or method in route.methods:
            m = route.pattern.match(path)
            if m:
                return route, m
    raise LookupError(f"no route for {method} {path}: the table must end with a route for every path")


def methods_for(table: Sequence[HttpRoute], path: str) -> list[str]:
    """The methods the routes whose pattern matches `path` answer (for 405's `Allow`)."""
    return sorted(
        {method for route in table if route.methods and route.pattern.match(path) for method in route.methods}
    )


@dataclass(frozen=True)
class JsonRoute:
    method: str
    pattern: re.Pattern
    service: str  # settings address name
    grpc_path: str
    request: type
    response: type
    #: builds the request from (path groups, query, JSON body)
    build: Callable[[re.Match, Request, dict], dict]
    post: Callable[[dict], dict] | None = None


def _body(m, req, body):
    return body


def _query_paging(m, req, body):
    out = {}
    if (size := req.query_value("page_size")) is not None:
        if not ascii_digits(size):
            raise HttpError(
                400, "page_size must be a non-negative integer", "BAD_QUERY", details={"field": "page_size"}
            )
        out["pageSize"] = int(size)
    if (token := req.query_value("page_token")) is not None:
        out["pageToken"] = token
    return out


def _with_events_url(reply: dict) -> dict:
    if reply.get("jobId"):
        reply["eventsUrl"] = f"/v1/jobs/{reply['jobId']}/events"
    return reply


JSON_ROUTES = [
    JsonRoute(
        "POST",
        re.compile(r"^/v1/auth/dev-sign-in$"),
        "auth",
        "/eco2.auth.v1.AuthService/DevSignIn",
        auth_pb2.DevSignInRequest,
        auth_pb2.DevSignInResponse,
        _body,
    ),
    JsonRoute(
        "GET",
        re.compile(r"^/v1/me$"),
        "auth",
        "/eco2.auth.v1.AuthService/GetMe",
        auth_pb2.GetMeRequest,
        auth_pb2.GetMeResponse,
        lambda m, r, b: {},
    ),
    JsonRoute(
        "POST",
        re.compile(r"^/v1/chat/messages$"),
        "chat",
        "/eco2.chat.v1.ChatService/SendMessage",
        chat_pb2.SendMessageRequest,
        chat_pb2.SendMessageResponse,
        _body,
        _with_events_url,
    ),
    JsonRoute(
        "POST",
        re.compile(r"^/v1/chat/input$"),
        "chat",
        "/eco2.chat.v1.ChatService/ProvideInput",
        chat_pb2.ProvideInputRequest,
        chat_pb2.ProvideInputResponse,
        _body,
    ),
    JsonRoute(
        "POST",
        re.compile(r"^/v1/chat/cancel$"),
        "chat",
        "/eco2.chat.v1.ChatService/CancelRun",
        chat_pb2.CancelRunRequest,
        chat_pb2.CancelRunResponse,
        _body,
    ),
    JsonRoute(
        "GET",
        re.compile(r"^/v1/conversations$"),
        "chat",
        "/eco2.chat.v1.ChatService/ListConversations",
        chat_pb2.ListConversationsRequest,
        chat_pb2.ListConversationsResponse,
        _query_paging,
    ),
    JsonRoute(
        "GET",
        re.compile(r"^/v1/conversations/([A-Za-z0-9_-]{1,64})$"),
        "chat",
        "/eco2.chat.v1.ChatService/GetConversation",
        chat_pb2.GetConversationRequest,
        chat_pb2.GetConversationResponse,
        lambda m, r, b: {"conversationId": m.group(1)},
    ),
    JsonRoute(
        "GET",
        re.compile(r"^/v1/images/meta/(sha256:[0-9a-f]{64})$"),
        "images",
        "/eco2.images.v1.ImageService/GetImage",
        images_pb2.GetImageRequest,
        images_pb2.GetImageResponse,
        lambda m, r, b: {"key": m.group(1)},
    ),
    JsonRoute(
        "POST",
        re.compile(r"^/v1/scans$"),
        "scan",
        "/eco2.scan.v1.ScanService/SubmitScan",
        scan_pb2.SubmitScanRequest,
        scan_pb2.SubmitScanResponse,
        _body,
        _with_events_url,
    ),
    JsonRoute(
        "POST",
        re.compile(r"^/v1/scans/input$"),
        "scan",
        "/eco2.scan.v1.ScanService/ProvideScanInput",
        scan_pb2.ProvideScanInputRequest,
        scan_pb2.ProvideScanInputResponse,
        _body,
    ),
    JsonRoute(
        "GET",
        re.compile(r"^/v1/scans/([A-Za-z0-9-]{1,64})$"),
        "scan",
        "/eco2.scan.v1.ScanService/GetScan",
        scan_pb2.GetScanRequest,
        scan_pb2.GetScanResponse,
        lambda m, r, b: {"scanId": m.group(1)},
    ),
    JsonRoute(
        "GET",
        re.compile(r"^/v1/characters$"),
        "character",
        "/eco2.character.v1.CharacterService/ListCharacters",
        character_pb2.ListCharactersRequest,
        character_pb2.ListCharactersResponse,
        _query_paging,
    ),
    JsonRoute(
        "GET",
        re.compile(r"^/v1/collection$"),
        "character",
        "/eco2.character.v1.CharacterService/ListCollection",
        character_pb2.ListCollectionRequest,
        character_pb2.ListCollectionResponse,
        _query_paging,
    ),
]


def grpc_error_body(exc: grpc.aio.AioRpcError) -> tuple[int, dict]:
    code = exc.code().value[0]
    status = CONNECT_HTTP.get(code, 502)
    err = connect_error(code, exc.details() or "", exc.trailing_metadata())
    return status, {"error": {"code": status, "reason": CONNECT_CODES.get(code, "unknown").upper(), **err}}


async def call_json(req: Request, route: JsonRoute, m: re.Match, upstreams: Upstreams, settings, metadata) -> None:
    body: dict = {}
    if req.method == "POST":
        raw = await req.read_body(
            settings.gateway_max_body_bytes, settings.gateway_body_timeout_s, "ECO2_GATEWAY_MAX_BODY_BYTES"
        )
        if raw.strip():
            if req.content_type != "application/json":
                raise HttpError(415, "send application/json", "UNSUPPORTED_MEDIA_TYPE")
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise HttpError(400, f"body is not JSON: {exc}", "BAD_JSON") from None
            if not isinstance(body, dict):
                raise HttpError(400, "body must be a JSON object", "BAD_JSON")
    fields = route.build(m, req, body)
    violations = number_violations(fields, route.request.DESCRIPTOR)
    if violations:
        raise HttpError(
            400,
            "invalid request: " + "; ".join(f"{v.field} {v.description}" for v in violations),
            "BAD_JSON",
            details={"field": violations[0].field},
        )
    try:
        request = json_format.ParseDict(fields, route.request())
    except json_format.ParseError as exc:
        raise HttpError(400, f"invalid request: {exc}", "BAD_JSON", details={"field": "body"}) from None
    stub = upstreams.channel(settings.address_of(route.service)).unary_unary(
        route.grpc_path,
        request_serializer=route.request.SerializeToString,
        response_deserializer=route.response.FromString,
    )
    try:
        reply = await stub(request, timeout=settings.gateway_default_timeout_s, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        status, err = grpc_error_body(exc)
        await req.respond_json(status, err)
        return
    out = json_format.MessageToDict(reply)
    if route.post:
        out = route.post(out)
    await req.respond_json(200, out)
