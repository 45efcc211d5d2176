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

import grpc

from .errors import Unauthenticated

USER_ID_KEY = "x-eco2-user-id"
ROLES_KEY = "x-eco2-roles"
PROVIDER_KEY = "x-eco2-provider"
REQUEST_ID_KEY = "x-request-id"
#: Metadata keys forwarded from an incoming call to the calls it makes.
FORWARDED_KEYS = frozenset({USER_ID_KEY, ROLES_KEY, PROVIDER_KEY, REQUEST_ID_KEY})

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("eco2_deadline", default=None)
_forwarded: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar("eco2_forwarded", default=())


def enter(context: grpc.aio.ServicerContext) -> tuple[contextvars.Token, contextvars.Token]:
    remaining = context.time_remaining()
    deadline = None if remaining is None else time.monotonic() + remaining
    forwarded = tuple((k, v) for k, v in (context.invocation_metadata() or ()) if k in FORWARDED_KEYS and isinstance(v, str))
    return _deadline.set(deadline), _forwarded.set(forwarded)


def leave(tokens: tuple[contextvars.Token, contextvars.Token]) -> None:
    _deadline.reset(tokens[0])
    _forwarded.reset(tokens[1])


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
