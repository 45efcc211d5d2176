"""Per-request context that follows a call into its downstream calls.

The server interceptor records the caller's deadline and the identity metadata injected by
ext-authz; the client interceptor (see clients.py) applies both to outgoing calls, so a
chat request that has 2 s left never waits 5 s on the character service, and the
character service sees the same `x-eco2-user-id`.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Sequence

import random

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace

from .errors import Unauthenticated

_random = random.Random()
TRACEPARENT_KEY = "traceparent"

USER_ID_KEY = "x-eco2-user-id"
ROLES_KEY = "x-eco2-roles"
PROVIDER_KEY = "x-eco2-provider"
REQUEST_ID_KEY = "x-request-id"
#: Metadata keys forwarded from an incoming call to the calls it makes.
FORWARDED_KEYS = frozenset({USER_ID_KEY, ROLES_KEY, PROVIDER_KEY, REQUEST_ID_KEY})

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("eco2_deadline", default=None)
_forwarded: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar("eco2_forwarded", default=())


def enter(context: grpc.aio.ServicerContext, *, light_tracing: bool = True) -> None:
    """Record the incoming call's deadline, forwarded metadata and trace context.

    grpc.aio runs every RPC in its own task, so the values live exactly as long as the call
    (and the tasks it spawns) and need no reset.
    """
    remaining = context.time_remaining()
    _deadline.set(None if remaining is None else time.monotonic() + remaining)
    forwarded = []
    traceparent = None
    for k, v in context.invocation_metadata() or ():
        if k in FORWARDED_KEYS and isinstance(v, str):
            forwarded.append((k, v))
        elif k == TRACEPARENT_KEY and isinstance(v, str):
            traceparent = v
    _forwarded.set(tuple(forwarded))
    if light_tracing:
        _attach_trace(traceparent)


def _attach_trace(traceparent: str | None) -> None:
    """W3C trace context without span recording: continue the caller's trace (or start one)
    so logs carry trace ids and downstream calls carry `traceparent`, at a few µs per call."""
    trace_id = 0
    flags = 1
    if traceparent:
        parts = traceparent.split("-")
        if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
            try:
                trace_id = int(parts[1], 16)
                flags = int(parts[3][:2], 16)
            except ValueError:
                trace_id = 0
    if not trace_id:
        trace_id = _random.getrandbits(128) or 1
    span_ctx = trace.SpanContext(trace_id, _random.getrandbits(64) or 1, is_remote=False, trace_flags=trace.TraceFlags(flags & 1))
    otel_context.attach(trace.set_span_in_context(trace.NonRecordingSpan(span_ctx)))


def time_remaining() -> float | None:
    """Seconds left before the current incoming call's deadline (None = no deadline)."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def forwarded_metadata() -> Sequence[tuple[str, str]]:
    return _forwarded.get()


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else None
    return None


def caller_id(context: grpc.aio.ServicerContext) -> str:
    """The user id injected by ext-authz. Services never take identity from request fields."""
    user_id = metadata_value(context, USER_ID_KEY)
    if not user_id:
        raise Unauthenticated(f"missing {USER_ID_KEY} metadata: call through the edge or ext-authz", reason="NO_IDENTITY")
    return user_id
