"""Prometheus metrics: one /metrics endpoint per service process."""

from __future__ import annotations

import socket
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

RPC_HANDLED = Counter(
    "eco2_grpc_server_handled_total", "RPCs completed, by method and status code", ["grpc_method", "grpc_code"]
)
RPC_SECONDS = Histogram(
    "eco2_grpc_server_handling_seconds",
    "Time to complete an RPC (streams: until the stream ends)",
    ["grpc_method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
STREAMS_ACTIVE = Gauge("eco2_grpc_server_streams_active", "Server streams currently open", ["grpc_method"])
MALFORMED = Counter("eco2_grpc_server_malformed_requests_total", "Requests whose bytes did not parse", ["grpc_method"])


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:  # scrapes are not worth a log line
        pass


def serve_metrics(host: str, port: int, *, reuse_port: bool = False) -> tuple[object, int]:
    """Start the /metrics HTTP endpoint in a thread; returns (server, bound port).
    `reuse_port`: bind with SO_REUSEPORT (the port `eco2 up` holds for this process)."""

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        allow_reuse_port = reuse_port

    server = make_server(host, port, make_wsgi_app(), Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server, server.server_port
