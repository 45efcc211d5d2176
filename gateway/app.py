"""The gateway: an ASGI app with one route table, served by Granian (server.py), and its
composition root.

Routes (the table in `Gateway.__init__`, in the order they are tried)
  /<package.Service>/<Method>            gRPC-Web (binary, text) and Connect (proto, JSON)
  GET  /, /static/*                      the browser UI
  GET  /healthz
  GET  <ECO2_IMAGES_URL_PREFIX>/*        signed image reads
  GET  /v1/jobs/{job_id}/events          SSE over EventService.SubscribeBatches
  GET  /.well-known/jwks.json
  POST /v1/images                        image upload (multipart)
  the JSON routes of routes.JSON_ROUTES: POST /v1/auth/dev-sign-in, GET /v1/me,
       POST /v1/chat/messages, POST /v1/chat/input, GET /v1/conversations[/{id}], ...
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
import re
import signal
from functools import partial
from importlib import resources

import grpc
from prometheus_client import Counter, Gauge

from eco2.auth.v1 import auth_pb2

from . import routes, uploads
from .authz import Authorizer, Decision
from .bridge import (
    ALL_TYPES,
    CONNECT_STREAM_TYPES,
    CONNECT_UNARY_TYPES,
    GRPC_WEB_TYPES,
    HTTP_TO_GRPC,
    Bridge,
    ConnectStreamWriter,
    ConnectUnaryWriter,
    GrpcWebWriter,
)
from .http import ClientGone, Headers, HttpError, Request
from .images import SignedImages
from .routes import ANY, HttpRoute, JsonRoute
from .server import HttpServer
from .settings import GatewaySettings
from .sse import PATH as SSE_PATH
from .sse import EventStreams
from .upstream import UnknownRoute, Upstreams, load_contracts

log = logging.getLogger("eco2.gateway")

REQUESTS = Counter("eco2_gateway_requests_total", "HTTP requests by kind and status", ["kind", "status"])
STREAMS = Gauge("eco2_gateway_streams_active", "open streaming responses (SSE, gRPC-Web, Connect)", ["kind"])

_RPC_PATH = re.compile(r"^/[A-Za-z_][A-Za-z0-9_.]*\.[A-Za-z_][A-Za-z0-9_]*/[A-Za-z_][A-Za-z0-9_]*$")
_GET, _READ, _POST = frozenset({"GET"}), frozenset({"GET", "HEAD"}), frozenset({"POST"})
_EXPOSE = b"grpc-status, grpc-message, grpc-status-details-bin, content-type"
_ALLOW_HEADERS = {
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "connect-protocol-version",
    "connect-timeout-ms",
    "authorization",
    "last-event-id",
    "x-request-id",
    "traceparent",
    "tracestate",
    "accept-language",
    "idempotency-key",
}
_RPC_TYPES = set(ALL_TYPES)
_COUNTERS: dict[tuple[str, bool], object] = {}


def _count(kind: str, gone: bool) -> None:
    """REQUESTS{kind, status} += 1, with the labelled child looked up once (labels() locks)."""
    child = _COUNTERS.get((kind, gone))
    if child is None:
        child = _COUNTERS[(kind, gone)] = REQUESTS.labels(kind, "gone" if gone else "done")
    child.inc()


mimetypes.add_type("application/manifest+json", ".webmanifest")  # the PWA manifest (not in every mime table)


def _load_static() -> dict[str, tuple[bytes, bytes]]:
    files: dict[str, tuple[bytes, bytes]] = {}
    root = resources.files(__package__) / "static"
    for entry in root.iterdir():
        if entry.is_file() and not entry.name.startswith(("_", ".")) and not entry.name.endswith(".py"):
            ctype = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
            if ctype.startswith("text/") or ctype in (
                "application/javascript",
                "application/manifest+json",
                "image/svg+xml",
            ):
                ctype += "; charset=utf-8"
            files[entry.name] = (entry.read_bytes(), ctype.encode())
    return files


class Denied(Exception):
    """Check denied the request; the gateway answers with the decision's status, headers and body."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.reason)
        self.decision = decision


class Gateway:
    """The ASGI application."""

    def __init__(self, settings: GatewaySettings) -> None:
        load_contracts()
        self.settings = settings
        self.upstreams = Upstreams(settings)
        self.authz = Authorizer(settings, self.upstreams.channel)
        self.bridge = Bridge(settings, self.upstreams)
        self.events = EventStreams(settings, self.upstreams)
        self.images = SignedImages(settings, self.upstreams)
        self.static = _load_static()
        self.cors_origins = set(settings.gateway_cors_origins)
        #: Tried in order: the first route that answers the method and whose pattern matches the
        #: path handles the request. With `check`, ext-authz Check runs first — also for a path no
        #: route serves (the last route), so an edge on its own answers as Envoy does in front,
        #: where ext_authz runs before the router.
        self.routes = (
            # Check once the bridge knows the method: a method no upstream serves needs none
            HttpRoute("rpc", _RPC_PATH, ANY, self._rpc, check=False),
            HttpRoute("static", re.compile(r"^/$|^/static/"), _READ, self._static, check=False),
            HttpRoute("health", re.compile(r"^/healthz$"), _READ, self._health, check=False),
            # the link's signature before Check (a bad link is 403 before anything is called)
            HttpRoute("image", self.images.pattern, ANY, self._image, check=False),
            HttpRoute("sse", SSE_PATH, _GET, self._sse),
            HttpRoute("jwks", re.compile(r"^/\.well-known/jwks\.json$"), _GET, self._jwks),
            HttpRoute("upload", re.compile(r"^/v1/images$"), _POST, self._upload),
            *(HttpRoute("json", r.pattern, frozenset({r.method}), partial(self._json, r)) for r in routes.JSON_ROUTES),
            HttpRoute("other", re.compile(""), ANY, self._no_route),
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":  # the server (server.py) runs no lifespan and no websockets
            await self.http(scope, receive, send)

    async def http(self, scope, receive, send) -> None:
        """One request: the origin (CORS), a preflight, else the route table."""
        req = Request(scope, receive, send, self.settings.gateway_send_timeout_s)
        kind, cors = "other", []
        try:
            cors = self._cors(req)
            if cors is None:
                kind, cors = "cors", []
                raise HttpError(
                    403, f"origin {req.origin!r} is not allowed (ECO2_GATEWAY_CORS_ORIGINS)", "ORIGIN_NOT_ALLOWED"
                )
            if req.method == "OPTIONS":
                kind = "preflight"
                await self._preflight(req, cors)
                return
            route, match = routes.find(self.routes, req.method, req.path)
            kind = route.kind
            await route.handler(req, match, cors, await self._allow(req) if route.check else None)
        except Denied as denied:
            kind = "denied"
            with contextlib.suppress(ClientGone):
                await self._deny(req, denied.decision, cors)
        except HttpError as err:
            if not req.disconnected:
                await req.drain(self.settings.gateway_max_body_bytes, min(1.0, self.settings.gateway_body_timeout_s))
                await req.respond_json(err.status, err.body(), err.headers)
        except ClientGone:
            pass
        finally:
            _count(kind, req.disconnected)

    # -- the edge's checks ------------------------------------------------------------------
    def _cors(self, req: Request) -> Headers | None:
        """CORS response headers; None when the origin is not allowed."""
        origin = req.origin
        if origin is None or origin == req.self_origin:
            return []
        if origin not in self.cors_origins:
            return None
        return [
            (b"access-control-allow-origin", origin.encode()),
            (b"vary", b"Origin"),
            (b"access-control-expose-headers", _EXPOSE),
        ]

    async def _allow(self, req: Request) -> Decision:
        """Check's decision when it allows the request; Denied otherwise."""
        decision = await self.authz.check(req)
        if not decision.allowed:
            raise Denied(decision)
        return decision

    async def _deny(self, req: Request, decision: Decision, cors: Headers) -> None:
        await req.drain(self.settings.gateway_max_body_bytes, min(1.0, self.settings.gateway_body_timeout_s))
        await req.respond(
            decision.status,
            decision.body,
            (dict(decision.deny_headers).get("content-type") or "application/json").encode(),
            [*((k.encode(), v.encode()) for k, v in decision.deny_headers if k != "content-type"), *cors],
        )

    def _identity_metadata(self, req: Request, decision: Decision) -> list[tuple[str, str]]:
        """The gRPC metadata of an upstream call: the allow-listed request headers Check did not
        remove, and the headers it injected."""
        md = []
        for name in self.settings.gateway_metadata_allowlist:
            if (
                name not in decision.removed
                and (value := req.headers.get(name)) is not None
                and value.isprintable()
                and value.isascii()
            ):
                md.append((name, value))
        return md + [(k, v) for k, v in decision.headers if v.isascii() and v.isprintable()]

    async def _preflight(self, req: Request, cors: Headers) -> None:
        if req.origin is None:
            raise HttpError(400, "a CORS preflight needs an Origin header", "NOT_A_PREFLIGHT")
        asked = {
            h.strip().lower() for h in req.headers.get("access-control-request-headers", "").split(",") if h.strip()
        }
        refused = sorted(asked - _ALLOW_HEADERS)
        if refused:
            raise HttpError(403, f"headers not allowed: {', '.join(refused)}", "HEADERS_NOT_ALLOWED")
        await req.start(
            204,
            [
                *cors,
                (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                (b"access-control-allow-headers", ", ".join(sorted(asked)).encode() or b"content-type"),
                (b"access-control-max-age", str(self.settings.gateway_cors_max_age_s).encode()),
                (b"content-length", b"0"),
            ],
        )
        await req.write(b"", more=False)

    # -- route handlers ---------------------------------------------------------------------
    async def _rpc(self, req: Request, _match, cors: Headers, _decision) -> None:
        ctype = req.content_type
        if ctype not in _RPC_TYPES:
            raise HttpError(
                415,
                f"content-type {ctype or '(none)'!r} is not gRPC-Web or Connect; use one of {', '.join(ALL_TYPES)}",
                "UNSUPPORTED_MEDIA_TYPE",
                headers=[(b"accept-post", ", ".join(ALL_TYPES).encode()), *cors],
            )
        route, route_error = None, None
        try:
            route = self.upstreams.route(req.path)
        except UnknownRoute as exc:
            route_error = str(exc)
        if route is not None:
            decision = await self.authz.check(req)
            if not decision.allowed:
                await self._deny_rpc(req, decision, cors)
                return
            identity, removed = (
                [(k, v) for k, v in decision.headers if v.isascii() and v.isprintable()],
                decision.removed,
            )
        else:
            identity, removed = [], set()
        streaming = ctype in CONNECT_STREAM_TYPES or (
            ctype in GRPC_WEB_TYPES and (route is None or route.server_streaming is not False)
        )
        if streaming:
            STREAMS.labels("rpc").inc()
        try:
            await self.bridge.handle(req, route, route_error, identity, removed, cors)
        finally:
            if streaming:
                STREAMS.labels("rpc").dec()

    async def _deny_rpc(self, req: Request, decision: Decision, cors: Headers) -> None:
        """A denial in the caller's protocol: gRPC-Web or Connect status, not an HTTP error page."""
        code = decision.grpc_code or HTTP_TO_GRPC.get(decision.status, 7)
        await req.drain(self.settings.gateway_max_message_bytes * 2, min(1.0, self.settings.gateway_body_timeout_s))
        ctype = req.content_type
        if ctype in GRPC_WEB_TYPES:
            writer = GrpcWebWriter(req, GRPC_WEB_TYPES[ctype], cors)
        elif ctype in CONNECT_UNARY_TYPES:
            writer = ConnectUnaryWriter(req, ctype.endswith("json"), lambda b: b, cors)
        else:
            writer = ConnectStreamWriter(req, ctype.endswith("json"), lambda b: b, cors)
        await writer.trailers_only(code, decision.reason, [], decision.status if ctype in CONNECT_UNARY_TYPES else None)

    async def _static(self, req: Request, _match, _cors, _decision) -> None:
        path = req.path
        name = "index.html" if path == "/" else path.removeprefix("/static/")
        found = self.static.get(name)
        if found is None:
            raise HttpError(404, f"no static file {name!r}", "NOT_FOUND")
        body, ctype = found
        headers = [(b"cache-control", b"no-cache"), (b"x-content-type-options", b"nosniff")]
        if name == "sw.js":  # the service worker lives under /static/ but caches the page at / (its scope)
            headers.append((b"service-worker-allowed", b"/"))
        await req.respond(200, body if req.method == "GET" else b"", ctype, headers)

    async def _health(self, req: Request, _match, cors: Headers, _decision) -> None:
        await req.respond_json(200, {"status": "SERVING"}, cors)

    async def _image(self, req: Request, _match, cors: Headers, _decision) -> None:
        sha, expires_at = self.images.verify(req)
        decision = await self._allow(req)
        await self.images.handle(req, sha, expires_at, self._identity_metadata(req, decision), cors)

    async def _sse(self, req: Request, match: re.Match, cors: Headers, decision: Decision) -> None:
        STREAMS.labels("sse").inc()
        try:
            await self.events.handle(req, match.group(1), self._identity_metadata(req, decision), cors)
        finally:
            STREAMS.labels("sse").dec()

    async def _jwks(self, req: Request, _match, cors: Headers, _decision) -> None:
        stub = self.upstreams.channel(self.settings.auth_addr).unary_unary(
            "/eco2.auth.v1.AuthService/GetJwks",
            request_serializer=auth_pb2.GetJwksRequest.SerializeToString,
            response_deserializer=auth_pb2.GetJwksResponse.FromString,
        )
        try:
            reply = await stub(auth_pb2.GetJwksRequest(), timeout=self.settings.gateway_default_timeout_s)
        except grpc.aio.AioRpcError as exc:
            status, err = routes.grpc_error_body(exc)
            await req.respond_json(status, err, cors)
            return
        keys = [{f.name: getattr(k, f.name) for f in k.DESCRIPTOR.fields if getattr(k, f.name)} for k in reply.keys]
        await req.respond_json(200, {"keys": keys}, [(b"cache-control", b"public, max-age=300"), *cors])

    async def _upload(self, req: Request, _match, _cors, decision: Decision) -> None:
        await uploads.upload(req, self.upstreams, self.settings, self._identity_metadata(req, decision))

    async def _json(self, route: JsonRoute, req: Request, match: re.Match, _cors, decision: Decision) -> None:
        await routes.call_json(req, route, match, self.upstreams, self.settings, self._identity_metadata(req, decision))

    async def _no_route(self, req: Request, _match, _cors, _decision) -> None:
        methods = routes.methods_for(self.routes, req.path)
        if methods:
            raise HttpError(
                405,
                f"use {', '.join(methods)}",
                "METHOD_NOT_ALLOWED",
                headers=[(b"allow", ", ".join(methods).encode())],
            )
        raise HttpError(404, f"no route for {req.method} {req.path}", "NOT_FOUND")


class GatewayApp:
    """`eco2 serve gateway`: an HTTP app (health: GET /healthz), not a gRPC server."""

    name = "gateway"
    protocol = "http"

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.asgi = Gateway(settings)
        self.server: HttpServer | None = None

    @property
    def port(self) -> int | None:
        return None if self.server is None else self.server.port

    async def start(self) -> int:
        """Listen and serve in the background on the running loop; returns the port."""
        self.server = HttpServer(self.asgi, self.settings)
        port = await self.server.start()
        log.info("serving", extra={"service": self.name, "http": f"{self.settings.http_host}:{port}"})
        return port

    async def stop(self) -> None:
        """Stop the server (open streams get the shutdown grace), then close the upstream channels."""
        if self.server is not None:
            await self.server.stop()
        await self.asgi.upstreams.close()

    async def serve(self) -> None:
        """The body of `eco2 serve gateway`: serve until SIGTERM/SIGINT."""
        from eco2.services.runtime.logs import configure_logging
        from eco2.services.runtime.metrics import serve_metrics

        s = self.settings
        configure_logging(self.name, s.log_level, s.log_format)
        try:
            serve_metrics(s.metrics_host, s.metrics_port, reuse_port=s.reuse_port)
        except OSError as exc:
            raise SystemExit(f"cannot serve /metrics on {s.metrics_host}:{s.metrics_port}: {exc}") from None
        try:
            await self.start()
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait([waiter, self.server.done], return_when=asyncio.FIRST_COMPLETED)
        log.info("shutting down")
        await self.stop()
        log.info("stopped")


def create() -> GatewayApp:
    return GatewayApp(GatewaySettings())
