"""Channels to other services, with tracing, deadline and identity propagation."""

from __future__ import annotations

import grpc

from . import context as ctx
from .errors import DeadlineExceeded
from .telemetry import current_traceparent, recording_enabled, tracer_provider


def _adjust(details: grpc.aio.ClientCallDetails, default_timeout: float | None) -> grpc.aio.ClientCallDetails:
    """Apply the caller's deadline (never exceed it) and forward identity metadata."""
    remaining = ctx.time_remaining()
    timeout = details.timeout if details.timeout is not None else default_timeout
    if remaining is not None:
        if remaining <= 0:
            raise DeadlineExceeded(
                "the caller's deadline passed before a downstream call", reason="DEADLINE_PROPAGATED"
            )
        timeout = remaining if timeout is None else min(timeout, remaining)
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    present = {k for k, _ in metadata}
    for key, value in ctx.forwarded_metadata():
        if key not in present:
            metadata.add(key, value)
    if ctx.TRACEPARENT_KEY not in present:
        traceparent = current_traceparent()
        if traceparent:
            metadata.add(ctx.TRACEPARENT_KEY, traceparent)
    return grpc.aio.ClientCallDetails(details.method, timeout, metadata, details.credentials, details.wait_for_ready)


class _Propagate:
    def __init__(self, default_timeout: float) -> None:
        self.default_timeout = default_timeout


class PropagateUnaryUnary(_Propagate, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(_adjust(details, self.default_timeout), request)


class PropagateUnaryStream(_Propagate, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        # Streams outlive a single reply: only an explicit timeout or the caller's deadline bounds them.
        return await continuation(_adjust(details, None), request)


class PropagateStreamUnary(_Propagate, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(_adjust(details, self.default_timeout), request_iterator)


def channel(
    target: str,
    *,
    default_timeout_s: float = 5.0,
    max_message_bytes: int = 16 * 1024 * 1024,
    tracing: bool | None = None,
) -> grpc.aio.Channel:
    """An insecure (mesh-internal: Istio adds mTLS) channel to `target` ("host:port").

    Client spans are recorded only when a trace exporter is configured in this process;
    the W3C `traceparent` is propagated either way.
    """
    interceptors: list = []
    if recording_enabled() if tracing is None else tracing:
        from opentelemetry.instrumentation.grpc import aio_client_interceptors  # only when spans are recorded

        interceptors.extend(aio_client_interceptors(tracer_provider=tracer_provider()))
    interceptors += [
        PropagateUnaryUnary(default_timeout_s),
        PropagateUnaryStream(default_timeout_s),
        PropagateStreamUnary(default_timeout_s),
    ]
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
