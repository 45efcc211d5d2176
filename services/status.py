"""`eco2 status`: the services of a running stack in one table — health, open streams, queue.

Reads the stack's endpoints.json (`eco2 up` writes it), then asks each service as an operator
would: gRPC health (HTTP `/healthz` for the gateway), its `/metrics` for the streams open now,
and Valkey for the job queue named like the service (`jobs:{chat}`: queued, running, oldest,
dead letters). Exit code 1 when a service is not SERVING.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import RedisError

#: Samples that count a process's open streams: gRPC server streams, the gateway's responses.
STREAM_GAUGES = ("eco2_grpc_server_streams_active", "eco2_gateway_streams_active")
TIMEOUT_S = 3.0


@dataclass
class Row:
    service: str
    health: str
    streams: str
    queue: str

    @property
    def serving(self) -> bool:
        return self.health == "SERVING"


def health_of(address: str) -> str:
    """SERVING, NOT_SERVING, ... as the service reports it, or DOWN (why)."""
    if address.startswith("http"):
        try:
            with urllib.request.urlopen(f"{address}/healthz", timeout=TIMEOUT_S) as reply:
                return "SERVING" if reply.status == 200 else f"DOWN (HTTP {reply.status})"
        except urllib.error.HTTPError as exc:
            return f"DOWN (HTTP {exc.code})"
        except OSError as exc:
            return f"DOWN ({type(exc).__name__})"
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S
            )
        except grpc.RpcError as exc:
            return f"DOWN ({exc.code().name})"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def open_streams(metrics_url: str) -> str:
    """The streams the service's /metrics reports open right now ('?' when it does not answer)."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=TIMEOUT_S) as reply:
            text = reply.read().decode()
    except OSError:
        return "?"
    total = sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name in STREAM_GAUGES)
    return str(int(total))


def _age(seconds: float) -> str:
    return "-" if seconds <= 0 else f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


async def queues(redis_url: str) -> dict[str, str]:
    """kind → one line about its queue, for every kind a queue was opened for on this Valkey."""
    from .bus.jobs import known_kinds, queue_stats
    from .dataplane.urls import create_redis

    redis = create_redis(redis_url)
    try:
        out = {}
        for kind in await known_kinds(redis):
            q = await queue_stats(redis, kind)
            out[kind] = f"{kind}: {q.depth} waiting, {q.pending} running, oldest {_age(q.oldest_age_s)}, {q.dead} dead"
        return out
    finally:
        await redis.aclose()


def status(endpoints: dict) -> list[Row]:
    redis_url = (endpoints.get("dataplane") or {}).get("redis_url")
    try:
        by_kind = asyncio.run(queues(redis_url)) if redis_url else {}
    except (RedisError, OSError) as exc:  # Valkey down: the rest still says something
        by_kind = {}
        queue_error = f"? ({type(exc).__name__})"
    else:
        queue_error = None
    rows = []
    for name, metrics_url in endpoints["metrics"].items():
        queue = by_kind.get(name) or (queue_error if queue_error and name in ("chat", "scan") else "-")
        rows.append(Row(name, health_of(endpoints[name]), open_streams(metrics_url), queue))
    return rows


def render(rows: list[Row]) -> str:
    table = [("SERVICE", "HEALTH", "STREAMS", "QUEUE")] + [(r.service, r.health, r.streams, r.queue) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}".rstrip() for a, b, c, d in table)
