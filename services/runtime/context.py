"""Per-request context that follows a call into its downstream calls.

The server interceptor records the caller's deadline, trace context and verified identity
(the `x-eco2-identity` wristband, see identity.py); the client interceptor (clients.py)
applies them to outgoing calls, so a chat request that has 2 s left never waits 5 s on the
character service, and the character service sees the same caller.
"""

from __future__ import annotations

import contextvars
import random
import time
from collections.abc import Sequence

import grpc
from opentelemetry import trace

from .errors import Unauthenticated
from .identity import IDENTITY_KEY, Identity

_random = random.Random()
TRACEPARENT_KEY = "traceparent"

#: The informational header ext-authz also injects (access logs, dashboards). Services never act
#: on it and never forward it: the identity is the verified wristband (IDENTITY_KEY).
USER_ID_KEY = "x-eco2-user-id"
REQUEST_ID_KEY = "x-request-id"
#: Metadata keys forwarded from an incoming call to the calls it makes.
FORWARDED_KEYS = frozenset({IDENTITY_KEY, REQUEST_ID_KEY})


class _Call(tuple):
    """What the server interceptor records for one incoming call: (deadline, forwarded
    metadata, trace id, span id, trace flags, wristband, verified identity); trace id 0 when
    OpenTelemetry owns the trace. One context variable, one small tuple: an idle stream keeps
    it for its whole life."""

    __slots__ = ()


_NO_CALL = _Call((None, (), 0, 0, 0, None, None))
_call: contextvars.ContextVar[_Call] = contextvars.ContextVar("eco2_call", default=_NO_CALL)


def enter(context: grpc.aio.ServicerContext, *, light_tracing: bool = True) -> str | None:
    """Record the incoming call's deadline, forwarded metadata and trace context; returns the
    call's wristband (to be verified with `set_identity`), None when it has none.

    grpc.aio runs every RPC in its own task, so the values live exactly as long as the call
    (and the tasks it spawns) and need no reset.

    Light tracing (no span exporter): W3C trace context without span recording — the caller's
    trace is continued (or one is started) so logs carry trace ids and downstream calls carry
    `traceparent`. The ids are kept as plain ints here, not as an attached OpenTelemetry
    context (a span, a span context and a context dict per call, which an idle stream would
    hold: docs/adr/0040); `trace_ids()` reads them.
    """
    remaining = context.time_remaining()
    forwarded = []
    traceparent = token = None
    for k, v in context.invocation_metadata() or ():
        if k in FORWARDED_KEYS and isinstance(v, str):
            forwarded.append((k, v))
            if k == IDENTITY_KEY:
                token = v
        elif k == TRACEPARENT_KEY and isinstance(v, str):
            traceparent = v
    trace_id = span_id = flags = 0
    if light_tracing:
        trace_id, flags = _parse_traceparent(traceparent)
        span_id = _random.getrandbits(64) or 1
    _call.set(
        _Call(
            (
                None if remaining is None else time.monotonic() + remaining,
                tuple(forwarded),
                trace_id,
                span_id,
                flags,
                token,
                None,
            )
        )
    )
    return token


def act_as(token: str | None, traceparent: str | None = None, *, light_tracing: bool = True) -> None:
    """Run the current task as queued work of a request that has ended (a chat job): its
    downstream calls carry `token` as their wristband (acting for the user who queued it), and
    its logs, events and calls continue that request's trace (`traceparent`, kept with the job).
    Without light tracing (spans recorded) the trace is the current OpenTelemetry span's: the
    caller opens one whose parent is `traceparent` (telemetry.span)."""
    trace_id = span_id = flags = 0
    if light_tracing:
        trace_id, flags = _parse_traceparent(traceparent)
        span_id = _random.getrandbits(64) or 1
    _call.set(_Call((None, ((IDENTITY_KEY, token),) if token else (), trace_id, span_id, flags, token, None)))


def set_identity(identity: Identity) -> None:
    """Record the verified identity of the current call (the interceptor does, once verified)."""
    _call.set(_Call((*_call.get()[:6], identity)))


def _parse_traceparent(traceparent: str | None) -> tuple[int, int]:
    """(trace id, sampled flag) of a W3C traceparent; a new random trace id when it is absent
    or malformed."""
    if traceparent:
        parts = traceparent.split("-")
        if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
            try:
                trace_id = int(parts[1], 16)
                if trace_id:
                    return trace_id, int(parts[3][:2], 16) & 1
            except ValueError:
                pass
    return _random.getrandbits(128) or 1, 1


def trace_ids() -> tuple[int, int, int] | None:
    """(trace id, span id, flags) of the current call: the light ids recorded by `enter`, else
    the current OpenTelemetry span's (span recording on); None outside any trace."""
    call = _call.get()
    if call[2]:
        return call[2], call[3], call[4]
    span_ctx = trace.get_current_span().get_span_context()
    if span_ctx.is_valid:
        return span_ctx.trace_id, span_ctx.span_id, int(span_ctx.trace_flags)
    return None


def time_remaining() -> float | None:
    """Seconds left before the current incoming call's deadline (None = no deadline)."""
    deadline = _call.get()[0]
    return None if deadline is None else deadline - time.monotonic()


def forwarded_metadata() -> Sequence[tuple[str, str]]:
    return _call.get()[1]


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else None
    return None


def verified_identity() -> Identity | None:
    """The verified identity of the current call; None when it carries no wristband."""
    return _call.get()[6]


def caller(context: grpc.aio.ServicerContext | None = None) -> Identity:
    """The verified identity of the current call, or Unauthenticated. `context` is accepted
    for symmetry with the servicer's arguments; the identity lives in the call's context."""
    identity = _call.get()[6]
    if identity is None:
        raise Unauthenticated(f"no {IDENTITY_KEY}: call through the edge (ext-authz issues it)", reason="NO_IDENTITY")
    return identity


def caller_id(context: grpc.aio.ServicerContext | None = None) -> str:
    """The user id of the current call's verified identity. Services never take identity from
    request fields or from a bare x-eco2-user-id."""
    return caller(context).user_id
