"""What one chat turn has worked out from its text, kept until the turn's step ends.

A turn reads its message to route it, reads it again to find its rules and its card, and the
same words recur in its parts and items: within `one_turn()` each of those readings is done
once, keyed by the exact text. Nothing is kept from one turn to the next (the block's end drops
it), so what a turn costs does not depend on what others asked before.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

_current: contextvars.ContextVar[dict[str, dict] | None] = contextvars.ContextVar("eco2_turn", default=None)


@contextlib.contextmanager
def one_turn() -> Iterator[None]:
    """Results of the work done inside the block are kept for the rest of it; a block inside
    another shares the outer one's."""
    if _current.get() is not None:
        yield
        return
    token = _current.set({})
    try:
        yield
    finally:
        _current.reset(token)


def once(kind: str, key: str, work: Callable[[str], T]) -> T:
    """`work(key)`, done once per `key` for this turn's work of one `kind` (e.g. "analyses");
    outside a turn, every time."""
    results = _current.get()
    if results is None:
        return work(key)
    done = results.setdefault(kind, {})
    if key not in done:
        done[key] = work(key)
    return done[key]
