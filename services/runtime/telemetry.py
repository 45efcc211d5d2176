"""OpenTelemetry tracing with W3C trace-context propagation over gRPC metadata.

Spans are recorded only when ECO2_OTEL_TRACES_EXPORTER names an exporter (console, otlp). Then
`configure_tracing` installs the process's tracer provider, the runtime adds OpenTelemetry's gRPC
interceptors (a span per call served and per call made, server.py and clients.py), and `span()`
records the spans of our own: a chat turn, each graph node, each model call. Otherwise nothing
is recorded: the runtime carries the W3C trace context itself (context.py, docs/adr/0002) and
`span()` costs one function call.

The provider is this module's, not OpenTelemetry's global one (which can be set only once per
process): `shutdown_tracing()` flushes it and takes it down again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .context import trace_ids

_provider: TracerProvider | None = None
_tracer: Tracer | None = None
_propagator = TraceContextTextMapPropagator()
_NO_SPAN = contextlib.nullcontext()


def configure_tracing(service: str, exporter: str = "none", *, span_exporter: SpanExporter | None = None) -> None:
    """Install this process's tracer provider, once. `exporter` is the setting (none, console,
    otlp; spans batched); `span_exporter` an exporter object of the caller's instead (each span
    handed over as it ends: the tests' in-memory exporter)."""
    global _provider, _tracer
    if _provider is not None:
        return
    if span_exporter is not None:
        processor = SimpleSpanProcessor(span_exporter)
    elif exporter == "console":
        processor = BatchSpanProcessor(ConsoleSpanExporter())
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter,  # optional extra
        )

        processor = BatchSpanProcessor(OTLPSpanExporter())
    else:
        return
    provider = TracerProvider(resource=Resource.create({"service.name": f"eco2-{service}"}))
    provider.add_span_processor(processor)
    _provider, _tracer = provider, provider.get_tracer("eco2")


def shutdown_tracing() -> None:
    """Export the spans still batched and uninstall the provider (a stopping process)."""
    global _provider, _tracer
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def tracer_provider() -> TracerProvider | None:
    """The provider OpenTelemetry's gRPC interceptors record with; None when spans are off."""
    return _provider


def recording_enabled() -> bool:
    """True once configure_tracing() installed a provider that exports spans."""
    return _provider is not None


def span(name: str, *, traceparent: str | None = None, attributes: Mapping[str, object] | None = None):
    """A context manager recording span `name` around a block: a child of the current span, or of
    `traceparent` when given (queued work continuing the request that queued it). A no-op when
    spans are off."""
    if _tracer is None:
        return _NO_SPAN
    parent = _propagator.extract({"traceparent": traceparent}) if traceparent else None
    return _tracer.start_as_current_span(name, context=parent, attributes=attributes)


def open_span(name: str, *, attributes: Mapping[str, object] | None = None):
    """A span started as a child of the current one but not made current, for the caller to
    `end()`: one around a stream whose pieces are handed out in the consumer's context. None
    when spans are off."""
    if _tracer is None:
        return None
    return _tracer.start_span(name, attributes=attributes)


def current_traceparent() -> str:
    """The W3C `traceparent` of the current call or span ('' outside any trace)."""
    ids = trace_ids()
    if ids is None:
        return ""
    return f"00-{ids[0]:032x}-{ids[1]:016x}-{ids[2]:02x}"
