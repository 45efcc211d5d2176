"""Prometheus metrics: one /metrics endpoint per service process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

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


def serve_metrics(host: str, port: int) -> tuple[object, int]:
    """Start the /metrics HTTP endpoint in a thread; returns (server, bound port)."""
    server, _thread = start_http_server(port, addr=host)
    return server, server.server_port
