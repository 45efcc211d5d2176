"""What the EventService needs from outside the process."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class JobHead:
    """The producer's view of a job: its last published seq, whether it is closed, and the user
    it belongs to ("" when its producer recorded none: a job of the mesh's own)."""

    last_seq: int
    closed: bool
    owner: str = ""


@dataclass(frozen=True, slots=True)
class Stored:
    """One event as kept in a job's replay stream (still serialized)."""

    seq: int
    prev: int
    terminal: bool
    data: bytes


class ReplayStore(Protocol):
    async def head(self, job_id: str) -> JobHead | None:
        """None when the job is unknown (never published, or expired)."""
        ...

    async def read_after(self, job_id: str, after_seq: int, count: int) -> list[Stored]:
        """Up to `count` events of the job with seq > after_seq, in seq order."""
        ...

    async def job_state(self, job_id: str) -> dict[bytes, bytes] | None:
        """The router's state hash of the job, None when the router has not seen it."""
        ...


class Subscription(Protocol):
    """One subscriber's live feed (see hub.Hub)."""

    job: str
    buf: list | None  # None: no live events buffered
    resync: bool


class LiveFeed(Protocol):
    def register(self, job_id: str) -> Subscription: ...

    def unregister(self, sub: Subscription) -> None: ...

    def wait(self, sub: Subscription, timeout: float | None) -> Awaitable[bool]:
        """Until the subscription has live events or must resync; False on timeout."""
        ...
