"""grpc.aio server bootstrap shared by every service.

A service provides a `ServiceApp`; `run()` gives it health (following the app's dependency
checks, dependencies.py), reflection, the runtime
interceptors, OpenTelemetry, /metrics, JSON logs and a graceful SIGTERM shutdown:
NOT_SERVING first, streams drained (then ended with UNAVAILABLE + RetryInfo), in-flight
unary calls given `shutdown_grace_s`, then the app's pools closed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .dependencies import DependencyWatcher
from .identity import IdentityVerifier, fetch_auth_jwks, keys_from_jwks
from .interceptors import CoreServerInterceptor, ShutdownCoordinator
from .logs import configure_logging
from .metrics import serve_metrics
from .settings import RuntimeSettings
from .telemetry import configure_tracing, shutdown_tracing, tracer_provider

log = logging.getLogger("eco2.server")


class ServiceApp(Protocol):
    """What a service gives the runtime.

    Optionally also `dependency_checks() -> Mapping[str, Check]` (called after `start`): the
    dependencies it cannot serve without (dependencies.py); health is NOT_SERVING while one fails.
    """

    #: Short name as in `eco2 serve NAME`.
    name: str
    settings: RuntimeSettings

    def service_names(self) -> Sequence[str]:
        """Full names of the gRPC services registered, e.g. 'eco2.character.v1.CharacterService'."""
        ...

    async def start(self, server: grpc.aio.Server) -> None:
        """Open connections, warm caches, register servicers. Runs before SERVING."""
        ...

    async def stop(self) -> None:
        """Close connections. Runs after the server stopped."""
        ...

    # Optional: `bare_methods`, full method names ("/pkg.Service/Method") served without the
    # runtime's per-call wrapper (error mapping, metrics, context, identity). Only for a hot
    # method that maps every failure itself and needs no caller: ext-authz `Check`.


def identity_verifier(app: ServiceApp, settings: RuntimeSettings) -> IdentityVerifier:
    """The wristband verifier of a server: keys pinned by ECO2_IDENTITY_JWKS plus auth's
    (GetJwks at ECO2_IDENTITY_JWKS_FROM). An app that holds the keys itself (auth) gives them
    with an `identity_keys()` method instead of calling itself."""
    own = getattr(app, "identity_keys", None)  # async: the keys, as current as the app's store
    if own is not None:
        fetch = own
    else:

        async def fetch():
            return await fetch_auth_jwks(settings.identity_jwks_from)

    return IdentityVerifier(
        issuer=settings.identity_issuer,
        audience=settings.identity_audience,
        cache_size=settings.identity_cache_size,
        pinned=keys_from_jwks(settings.identity_jwks) if settings.identity_jwks else None,
        fetch=fetch,
        refresh_s=settings.identity_jwks_refresh_s,
        min_refresh_s=settings.identity_jwks_min_refresh_s,
    )


@dataclass
class RunningServer:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    metrics_port: int | None
    shutdown: ShutdownCoordinator
    app: ServiceApp
    settings: RuntimeSettings
    dependencies: DependencyWatcher
    _metrics_server: object | None = field(default=None, repr=False)

    async def stop(self, grace: float | None = None) -> None:
        grace = self.settings.shutdown_grace_s if grace is None else grace
        log.info("shutting down", extra={"grace_s": grace, "streams": self.shutdown.active_streams})
        await self.dependencies.stop()  # first: a dependency coming back must not report SERVING again
        await self.health.enter_graceful_shutdown()
        stream_budget = min(grace / 2, 5.0)
        drain = asyncio.create_task(self.shutdown.drain_streams(stream_budget))
        await self.server.stop(grace)
        await drain
        await _stop_app(self.app, grace)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()  # type: ignore[attr-defined]
        log.info("stopped")


async def _stop_app(app: ServiceApp, timeout: float) -> None:
    """Close the app's pools and subscriptions, bounded: a stuck close must not keep a
    stopping process alive forever."""
    try:
        await asyncio.wait_for(app.stop(), timeout=max(timeout, 1.0))
    except TimeoutError:
        log.error("the app did not close its resources in time; exiting anyway", extra={"timeout_s": timeout})
    except Exception:
        log.exception("closing the app's resources failed")


def server_options(settings: RuntimeSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # A port clash must fail loudly, not silently share the port with another process; only
        # the port `eco2 up` holds for this process is shared with its holder.
        ("grpc.so_reuseport", int(settings.reuse_port)),
        # Keepalive pings from clients (every 30 s, clients.py) keep idle streams open: a
        # NEEDS_INPUT wait or an SSE relay may send nothing for an hour. Without these the
        # server accepts one ping per 5 minutes, counts each earlier one as a strike and sends
        # GOAWAY too_many_pings after 2 strikes, ending every idle stream after ~2 minutes.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", int(settings.grpc_min_ping_interval_s * 1000)),
        ("grpc.http2.max_ping_strikes", settings.grpc_max_ping_strikes),
    ]


async def start(
    app: ServiceApp, settings: RuntimeSettings, *, metrics: bool = True, tracing: bool = True
) -> RunningServer:
    """Start `app` on settings.grpc_host:grpc_port and report SERVING. Does not block."""
    shutdown = ShutdownCoordinator()
    interceptors: list[grpc.aio.ServerInterceptor] = []
    # Spans are recorded only when an exporter is configured; otherwise the core interceptor
    # carries the W3C trace context itself at a fraction of the cost (docs/adr/0002).
    recording = tracing and settings.otel_traces_exporter != "none"
    if recording:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor  # only when spans are recorded

        configure_tracing(app.name, settings.otel_traces_exporter)
        interceptors.append(aio_server_interceptor(tracer_provider=tracer_provider()))
    interceptors.append(
        CoreServerInterceptor(
            shutdown,
            identities=identity_verifier(app, settings),
            light_tracing=not recording,
            reject_drain_s=settings.stream_reject_drain_s,
            bare_methods=frozenset(getattr(app, "bare_methods", ())),
        )
    )
    server = grpc.aio.server(interceptors=interceptors, options=server_options(settings))
    # Ports first: a port clash fails fast, before the app opened pools or subscriptions.
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot listen on {address}: {exc} (is the port in use? set ECO2_GRPC_PORT)") from exc
    metrics_server, metrics_port = (None, None)
    if metrics:
        try:
            metrics_server, metrics_port = serve_metrics(
                settings.metrics_host, settings.metrics_port, reuse_port=settings.reuse_port
            )
        except OSError as exc:
            raise RuntimeError(
                f"cannot serve /metrics on {settings.metrics_host}:{settings.metrics_port}: {exc}"
            ) from exc
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        await app.start(server)
    except BaseException:
        if metrics_server is not None:
            metrics_server.shutdown()
        await _stop_app(app, settings.shutdown_grace_s)
        raise
    names = list(app.service_names())
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    await server.start()
    for name in [*names, ""]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def follow(down: frozenset[str]) -> None:  # every service of the process, and "" (the server)
        status = health_pb2.HealthCheckResponse.NOT_SERVING if down else health_pb2.HealthCheckResponse.SERVING
        for name in [*names, ""]:
            await health_servicer.set(name, status)

    checks = app.dependency_checks() if hasattr(app, "dependency_checks") else {}
    dependencies = DependencyWatcher(
        checks, follow, interval_s=settings.health_check_interval_s, timeout_s=settings.health_check_timeout_s
    )
    dependencies.start()
    log.info(
        "serving",
        extra={
            "service": app.name,
            "grpc": f"{settings.grpc_host}:{port}",
            "metrics_port": metrics_port,
            "services": names,
            "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        },
    )
    return RunningServer(
        server, health_servicer, port, metrics_port, shutdown, app, settings, dependencies, metrics_server
    )


def tune_gc(gen0_threshold: int) -> None:
    """Everything allocated by start-up (modules, descriptors, pools, the knowledge base) lives as
    long as the process: frozen, full collections no longer walk it (each walk pauses the loop),
    and a larger young generation is collected less often (grpc, LangGraph and the SDKs allocate
    per message). Only `eco2 serve` processes: never the loop of an embedding caller (ADR 0004)."""
    if gen0_threshold:
        gc.freeze()
        gc.set_threshold(gen0_threshold, *gc.get_threshold()[1:])


async def run(app: ServiceApp, settings: RuntimeSettings) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully. The body of `eco2 serve NAME`."""
    configure_logging(app.name, settings.log_level, settings.log_format)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = await start(app, settings)
    tune_gc(settings.gc_gen0_threshold)
    await stop.wait()
    await running.stop()
    shutdown_tracing()  # the spans still batched go out before the process exits
