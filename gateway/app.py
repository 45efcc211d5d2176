"""The gateway: an ASGI app on Granian or Hypercorn (HTTP/1.1 and h2c), and its composition root.

Routes
  POST /<package.Service>/<Method>       gRPC-Web (binary, text) and Connect (proto, JSON)
  GET  /v1/jobs/{job_id}/events          SSE over EventService.Subscribe
  POST /v1/auth/dev-sign-in, GET /v1/me, POST /v1/chat/messages, POST /v1/chat/input,
  GET  /v1/conversations[/{id}], POST /v1/images, GET /v1/images/meta/{key},
  GET  /.well-known/jwks.json, GET /healthz, GET / and /static/* (the browser UI)
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import re
import signal
import socket
from importlib import resources

import grpc
from prometheus_client import Counter, Gauge

from eco2.auth.v1 import auth_pb2

from . import routes, uploads
from .authz import Authorizer
from .bridge import ALL_TYPES, CONNECT_STREAM_TYPES, CONNECT_UNARY_TYPES, GRPC_WEB_TYPES, Bridge
from .http import ClientGone, HttpError, Request
from .images import SignedImages
from .settings import GatewaySettings
from .sse import PATH as SSE_PATH
from .sse import EventStreams
from .upstream import UnknownRoute, Upstreams, load_contracts

log = logging.getLogger("eco2.gateway")

REQUESTS = Counter("eco2_gateway_requests_total", "HTTP requests by kind and status", ["kind", "status"])
STREAMS = Gauge("eco2_gateway_streams_active", "open streaming responses (SSE, gRPC-Web, Connect)", ["kind"])

_RPC_PATH = re.compile(r"^/[A-Za-z_][A-Za-z0-9_.]*\.[A-Za-z_][A-Za-z0-9_]*/[A-Za-z_][A-Za-z0-9_]*$")
_EXPOSE = b"grpc-status, grpc-message, grpc-status-details-bin, content-type"
_ALLOW_HEADERS = {
    "content-type", "x-grpc-web", "x-user-agent", "grpc-timeout", "connect-protocol-version", "connect-timeout-ms",
    "authorization", "last-event-id", "x-request-id", "traceparent", "tracestate", "accept-language", "idempotency-key",
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
            if ctype.startswith("text/") or ctype in ("application/javascript", "application/manifest+json", "image/svg+xml"):
                ctype += "; charset=utf-8"
            files[entry.name] = (entry.read_bytes(), ctype.encode())
    return files


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

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.upstreams.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    def _cors(self, req: Request) -> list[tuple[bytes, bytes]] | None:
        """CORS response headers; None when the origin is not allowed."""
        origin = req.origin
        if origin is None or origin == req.self_origin:
            return []
        if origin not in self.cors_origins:
            return None
        return [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin"), (b"access-control-expose-headers", _EXPOSE)]

    async def http(self, scope, receive, send) -> None:
        req = Request(scope, receive, send, self.settings.gateway_send_timeout_s)
        kind = "other"
        try:
            cors = self._cors(req)
            if cors is None:
                kind = "cors"
                raise HttpError(403, f"origin {req.origin!r} is not allowed (ECO2_GATEWAY_CORS_ORIGINS)", "ORIGIN_NOT_ALLOWED")
            if req.method == "OPTIONS":
                kind = "preflight"
                await self._preflight(req, cors)
                return
            path = req.path
            if _RPC_PATH.match(path):
                kind = "rpc"
                await self._rpc(req, cors)
                return
            if req.method in ("GET", "HEAD") and (path == "/" or path.startswith("/static/")):
                kind = "static"
                await self._static(req, path)
                return
            if path == "/healthz":
                kind = "health"
                await req.respond_json(200, {"status": "SERVING"}, cors)
                return
            image = None
            if self.images.matches(path):
                kind = "image"
                image = self.images.verify(req)  # 403 before anything is called
            decision = await self.authz.check(req)
            if not decision.allowed:
                kind = "denied"
                await req.drain(self.settings.gateway_max_body_bytes, min(1.0, self.settings.gateway_body_timeout_s))
                await req.respond(decision.status, decision.body, (dict(decision.deny_headers).get("content-type") or "application/json").encode(),
                                  [*((k.encode(), v.encode()) for k, v in decision.deny_headers if k != "content-type"), *cors])
                return
            metadata = self._identity_metadata(req, decision)
            if image is not None:
                await self.images.handle(req, image[0], image[1], metadata, cors)
                return
            if m := SSE_PATH.match(path):
                kind = "sse"
                STREAMS.labels("sse").inc()
                try:
                    await self.events.handle(req, m.group(1), metadata, cors)
                finally:
                    STREAMS.labels("sse").dec()
                return
            if path == "/.well-known/jwks.json":
                kind = "jwks"
                await self._jwks(req, cors)
                return
            if path == "/v1/images" and req.method == "POST":
                kind = "upload"
                await uploads.upload(req, self.upstreams, self.settings, metadata)
                return
            found = routes.match(req)
            if found:
                kind = "json"
                await routes.call_json(req, found[0], found[1], self.upstreams, self.settings, metadata)
                return
            raise HttpError(404, f"no route for {req.method} {path}", "NOT_FOUND")
        except HttpError as err:
            if not req.disconnected:
                await req.drain(self.settings.gateway_max_body_bytes, min(1.0, self.settings.gateway_body_timeout_s))
                await req.respond_json(err.status, err.body(), err.headers)
        except ClientGone:
            pass
        finally:
            _count(kind, req.disconnected)

    def _identity_metadata(self, req: Request, decision) -> list[tuple[str, str]]:
        md = []
        for name in self.settings.gateway_metadata_allowlist:
            if name not in decision.removed and (value := req.headers.get(name)) is not None and value.isprintable() and value.isascii():
                md.append((name, value))
        return md + [(k, v) for k, v in decision.headers if v.isascii() and v.isprintable()]

    async def _preflight(self, req: Request, cors) -> None:
        if req.origin is None:
            raise HttpError(400, "a CORS preflight needs an Origin header", "NOT_A_PREFLIGHT")
        asked = {h.strip().lower() for h in req.headers.get("access-control-request-headers", "").split(",") if h.strip()}
        refused = sorted(asked - _ALLOW_HEADERS)
        if refused:
            raise HttpError(403, f"headers not allowed: {', '.join(refused)}", "HEADERS_NOT_ALLOWED")
        await req.start(204, [
            *cors,
            (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
            (b"access-control-allow-headers", ", ".join(sorted(asked)).encode() or b"content-type"),
            (b"access-control-max-age", str(self.settings.gateway_cors_max_age_s).encode()),
            (b"content-length", b"0"),
        ])
        await req.write(b"", more=False)

    async def _rpc(self, req: Request, cors) -> None:
        ctype = req.content_type
        if ctype not in _RPC_TYPES:
            raise HttpError(415, f"content-type {ctype or '(none)'!r} is not gRPC-Web or Connect; use one of {', '.join(ALL_TYPES)}",
                            "UNSUPPORTED_MEDIA_TYPE", headers=[(b"accept-post", ", ".join(ALL_TYPES).encode()), *cors])
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
            identity, removed = [(k, v) for k, v in decision.headers if v.isascii() and v.isprintable()], decision.removed
        else:
            identity, removed = [], set()
        streaming = ctype in CONNECT_STREAM_TYPES or (ctype in GRPC_WEB_TYPES and (route is None or route.server_streaming is not False))
        if streaming:
            STREAMS.labels("rpc").inc()
        try:
            await self.bridge.handle(req, route, route_error, identity, removed, cors)
        finally:
            if streaming:
                STREAMS.labels("rpc").dec()

    async def _deny_rpc(self, req: Request, decision, cors) -> None:
        from .bridge import HTTP_TO_GRPC, ConnectStreamWriter, ConnectUnaryWriter, GrpcWebWriter

        code = decision.grpc_code or HTTP_TO_GRPC.get(decision.status, 7)
        message = decision.reason
        await req.drain(self.settings.gateway_max_message_bytes * 2, min(1.0, self.settings.gateway_body_timeout_s))
        ctype = req.content_type
        if ctype in GRPC_WEB_TYPES:
            writer = GrpcWebWriter(req, GRPC_WEB_TYPES[ctype], cors)
        elif ctype in CONNECT_UNARY_TYPES:
            writer = ConnectUnaryWriter(req, ctype.endswith("json"), lambda b: b, cors)
        else:
            writer = ConnectStreamWriter(req, ctype.endswith("json"), lambda b: b, cors)
        await writer.trailers_only(code, message, [], decision.status if ctype in CONNECT_UNARY_TYPES else None)

    async def _static(self, req: Request, path: str) -> None:
        name = "index.html" if path == "/" else path.removeprefix("/static/")
        found = self.static.get(name)
        if found is None:
            raise HttpError(404, f"no static file {name!r}", "NOT_FOUND")
        body, ctype = found
        headers = [(b"cache-control", b"no-cache"), (b"x-content-type-options", b"nosniff")]
        if name == "sw.js":  # the service worker lives under /static/ but caches the page at / (its scope)
            headers.append((b"service-worker-allowed", b"/"))
        await req.respond(200, body if req.method == "GET" else b"", ctype, headers)

    async def _jwks(self, req: Request, cors) -> None:
        stub = self.upstreams.channel(self.settings.auth_addr).unary_unary(
            "/eco2.auth.v1.AuthService/GetJwks", request_serializer=auth_pb2.GetJwksRequest.SerializeToString, response_deserializer=auth_pb2.GetJwksResponse.FromString
        )
        try:
            reply = await stub(auth_pb2.GetJwksRequest(), timeout=self.settings.gateway_default_timeout_s)
        except grpc.aio.AioRpcError as exc:
            status, err = routes.grpc_error_body(exc)
            await req.respond_json(status, err, cors)
            return
        keys = [{f.name: getattr(k, f.name) for f in k.DESCRIPTOR.fields if getattr(k, f.name)} for k in reply.keys]
        await req.respond_json(200, {"keys": keys}, [(b"cache-control", b"public, max-age=300"), *cors])


# --- the process --------------------------------------------------------------------------


def _listen(host: str, port: int, backlog: int, user_timeout_s: float = 0, reuse_port: bool = False) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # the port `eco2 up` holds for this process (ECO2_REUSE_PORT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if user_timeout_s and hasattr(socket, "TCP_USER_TIMEOUT"):
        # Inherited by accepted sockets: a client that stops reading (zero window) is dropped by
        # the kernel, which also frees the connection Hypercorn would otherwise keep flushing.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(user_timeout_s * 1000))
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"cannot listen on {host}:{port}: {exc} (is the port in use? set ECO2_HTTP_PORT)") from exc
    sock.setblocking(False)
    return sock


class GatewayApp:
    """`eco2 serve gateway`: an HTTP app (health: GET /healthz), not a gRPC server."""

    name = "gateway"
    protocol = "http"

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.asgi = Gateway(settings)
        self.port: int | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Future | None = None
        self._granian_sig = None
        self._active: set[asyncio.Task] = set()

    def _config(self):
        from hypercorn.config import Config

        s = self.settings
        config = Config()
        config.keep_alive_timeout = s.gateway_keep_alive_s
        config.h11_max_incomplete_size = s.gateway_max_header_bytes
        config.graceful_timeout = s.gateway_shutdown_grace_s
        config.h2_max_concurrent_streams = s.gateway_h2_max_concurrent_streams
        config.backlog = s.gateway_backlog
        config.accesslog = None
        config.errorlog = logging.getLogger("eco2.gateway.server")
        config.include_server_header = False
        return config

    async def start(self) -> int:
        """Listen and serve in the background on the running loop; returns the port."""
        if self.settings.gateway_server == "granian":
            return await self._start_granian()
        from hypercorn.asyncio.run import worker_serve
        from hypercorn.config import Sockets
        from hypercorn.utils import wrap_app

        s = self.settings
        sock = _listen(s.http_host, s.http_port, s.gateway_backlog, s.gateway_tcp_user_timeout_s, s.reuse_port)
        self.port = sock.getsockname()[1]
        self._stop = asyncio.Event()
        app = wrap_app(self.asgi, 0, "asgi")
        self._task = asyncio.ensure_future(worker_serve(app, self._config(), sockets=Sockets([], [sock], []), shutdown_trigger=self._stop.wait))
        await asyncio.sleep(0)
        log.info("serving", extra={"service": self.name, "http": f"{s.http_host}:{self.port}"})
        return self.port

    async def _start_granian(self) -> int:
        from granian._futures import _future_watcher_wrapper, _new_cbscheduler
        from granian._granian import ASGIWorker, SocketHolder, WorkerSignal
        from granian.asgi import _callback_wrapper
        from granian.http import HTTP1Settings, HTTP2Settings

        s = self.settings
        sock = _listen(s.http_host, s.http_port, s.gateway_backlog, s.gateway_tcp_user_timeout_s, s.reuse_port)
        self.port = sock.getsockname()[1]
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        sig = WorkerSignal()
        sig.add_cb(lambda: loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None)))
        self._granian_sig = sig
        holder = SocketHolder(sock.detach(), False, s.gateway_backlog)  # Granian owns (and closes) the fd
        worker = ASGIWorker(
            1, (None, holder), None, 1, 512, 1, 30, s.gateway_max_concurrent_requests, "auto",
            # hyper's header read timeout also bounds an idle keep-alive connection: the shorter one
            HTTP1Settings(keep_alive=True, header_read_timeout=int(min(s.gateway_header_timeout_s, s.gateway_keep_alive_s) * 1000),
                          max_buffer_size=s.gateway_max_header_bytes),
            HTTP2Settings(max_concurrent_streams=s.gateway_h2_max_concurrent_streams),
            False, None, False, None, None, None, "tls1.3", None, [], False, (None, None),
        )
        asgi, active = self.asgi, self._active

        async def tracked(scope, receive, send) -> None:  # so a stop past the grace can cancel them
            task = asyncio.current_task()
            active.add(task)
            try:
                await asgi(scope, receive, send)
            except asyncio.CancelledError:
                if self._granian_sig is not None:  # not our shutdown: let it propagate
                    raise
            finally:
                active.discard(task)

        callback = _future_watcher_wrapper(_callback_wrapper(tracked, {}, {}, None))
        scheduler = _new_cbscheduler(loop, callback, impl_asyncio=True)
        worker.serve_async(scheduler, loop, sig)
        self._task = asyncio.ensure_future(done)
        log.info("serving", extra={"service": self.name, "http": f"{s.http_host}:{self.port}", "server": "granian"})
        return self.port

    async def stop(self) -> None:
        if self._granian_sig is not None:
            # Granian stops accepting and waits for open connections; streams still open after
            # the grace (SSE, long server streams) are cancelled, which ends their responses.
            self._granian_sig.set()
            self._granian_sig = None
            if self._task is not None:
                done, _ = await asyncio.wait([self._task], timeout=self.settings.gateway_shutdown_grace_s)
                if not done:
                    for task in list(self._active):
                        task.cancel()
                    done, _ = await asyncio.wait([self._task], timeout=5.0)
                    if not done:
                        log.warning("granian did not stop within the grace; closing anyway")
                self._task = None
            await self.asgi.upstreams.close()
            return
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
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
        await asyncio.wait([waiter, self._task], return_when=asyncio.FIRST_COMPLETED)
        log.info("shutting down")
        await self.stop()
        log.info("stopped")


def create() -> GatewayApp:
    return GatewayApp(GatewaySettings())
