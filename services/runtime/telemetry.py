"""OpenTelemetry tracing with W3C trace-context propagation over gRPC metadata."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from .context import trace_ids

_configured = False


def configure_tracing(service: str, exporter: str = "none") -> None:
    """Install a tracer provider once per process. W3C tracecontext is OTel's default propagator."""
    global _configured
    if _configured or exporter == "none":
        return
    provider = TracerProvider(resource=Resource.create({"service.name": f"eco2-{service}"}))
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # optional extra

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _configured = True


def recording_enabled() -> bool:
    """True once configure_tracing() installed a provider that exports spans."""
    return _configured


def current_traceparent() -> str:
    """The W3C `traceparent` of the current call or span ('' outside any trace)."""
    ids = trace_ids()
    if ids is None:
        return ""
    return f"00-{ids[0]:032x}-{ids[1]:016x}-{ids[2]:02x}"
