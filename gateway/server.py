"""The gateway's HTTP server: Granian (Rust, hyper; HTTP/1.1 and h2c by prior knowledge)
embedded in the `eco2 serve gateway` process, serving an ASGI app on this process's event loop
(ADR 0073). Its HTTP runs on one Rust thread; there is no worker process.

Granian's own embedding, `granian.server.embed.Server`, binds its socket from an address and a
port and, at stop, waits for every open connection. The gateway needs its own socket — port 0
with the bound port read back (tests), SO_REUSEPORT for the port `eco2 up` holds for it, and
TCP_USER_TIMEOUT inherited by every accepted socket — and a bounded stop (streams still open
after the grace are cancelled). So it drives the worker that module drives, `ASGIWorker`, with
the same calls. That is Granian's private API: `granian` is pinned exactly (pyproject.toml) and
an upgrade re-runs the gateway suite.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from granian._futures import _future_watcher_wrapper, _new_cbscheduler
from granian._granian import ASGIWorker, WorkerSignal
from granian.asgi import _callback_wrapper
from granian.http import HTTP1Settings, HTTP2Settings
from granian.net import SocketHolder

from .settings import GatewaySettings

log = logging.getLogger("eco2.gateway.server")


def listen(host: str, port: int, backlog: int, user_timeout_s: float = 0, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket; TCP_USER_TIMEOUT drops a peer that stops acknowledging data."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # the port `eco2 up` holds for this process (ECO2_REUSE_PORT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if user_timeout_s and hasattr(socket, "TCP_USER_TIMEOUT"):
        # inherited by accepted sockets: the kernel drops a client that stops reading (zero
        # window) instead of the server flushing to it without end
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(user_timeout_s * 1000))
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"cannot listen on {host}:{port}: {exc} (is the port in use? set ECO2_HTTP_PORT)") from exc
    sock.setblocking(False)
    return sock


class HttpServer:
    """Serves `app` (ASGI, no lifespan) on the running loop until `stop()`."""

    def __init__(self, app, settings: GatewaySettings) -> None:
        self.app = app
        self.settings = settings
        self.port: int | None = None
        self.done: asyncio.Future | None = None  # resolved once Granian has stopped serving
        self._signal: WorkerSignal | None = None
        self._active: set[asyncio.Task] = set()

    async def start(self) -> int:
        """Listen and serve in the background; the bound port."""
        s = self.settings
        sock = listen(s.http_host, s.http_port, s.gateway_backlog, s.gateway_tcp_user_timeout_s, s.reuse_port)
        self.port = sock.getsockname()[1]
        loop = asyncio.get_running_loop()
        done = self.done = loop.create_future()
        stopped = WorkerSignal()  # set by stop(); its callback runs once the worker has finished
        stopped.add_cb(lambda: loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None)))
        self._signal = stopped
        worker = ASGIWorker(
            1,  # worker id
            (None, SocketHolder(sock.detach(), False, s.gateway_backlog)),  # Granian owns (and closes) the fd
            None,  # no IPC to a parent process
            1,
            512,
            1,
            30,  # Rust runtime threads, Rust blocking threads, Python threads, their idle timeout (s)
            s.gateway_max_concurrent_requests,  # backpressure: requests served at once
            "auto",  # HTTP/1.1, or HTTP/2 when the client starts with its preface (h2c prior knowledge)
            # hyper's header read timeout also bounds an idle keep-alive connection: the shorter one
            HTTP1Settings(
                keep_alive=True,
                header_read_timeout=int(min(s.gateway_header_timeout_s, s.gateway_keep_alive_s) * 1000),
                max_buffer_size=s.gateway_max_header_bytes,
            ),
            HTTP2Settings(max_concurrent_streams=s.gateway_h2_max_concurrent_streams),
            False,  # no websockets
            None,  # no static files
            False,
            None,
            None,
            None,
            "tls1.3",
            None,
            [],
            False,  # no TLS (cert, key, password, min protocol, CA, CRL, client verify)
            (None, None),  # no metrics
        )
        callback = _future_watcher_wrapper(_callback_wrapper(self._tracked, {}, {}, None))
        worker.serve_async(_new_cbscheduler(loop, callback, impl_asyncio=True), loop, stopped)
        return self.port

    async def _tracked(self, scope, receive, send) -> None:
        """The app, with its task known, so a stop past the grace can cancel it."""
        task = asyncio.current_task()
        self._active.add(task)
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if self._signal is not None:  # not our stop: let it propagate
                raise
        finally:
            self._active.discard(task)

    async def stop(self) -> None:
        """Stop accepting and wait for open connections; requests still running after
        ECO2_GATEWAY_SHUTDOWN_GRACE_S (SSE, long streams) are cancelled, which ends their
        responses. Idempotent."""
        stopped, self._signal = self._signal, None
        if stopped is None:
            return
        stopped.set()
        done, _ = await asyncio.wait([self.done], timeout=self.settings.gateway_shutdown_grace_s)
        if not done:
            for task in list(self._active):
                task.cancel()
            done, _ = await asyncio.wait([self.done], timeout=5.0)
            if not done:
                log.warning("granian did not stop within the grace; closing anyway")
