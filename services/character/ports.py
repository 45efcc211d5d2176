"""What the character service needs from outside the process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from .domain import Character, GrantRecord, Ownership, RewardDecision


class CatalogRepository(Protocol):
    async def load_catalog(self) -> list[Character]:
        """Every character of the catalog."""
        ...


class RewardRepository(Protocol):
    async def find_grant(self, user_id: str, idempotency_key: str) -> GrantRecord | None:
        """The answer already given to this key, if any."""
        ...

    async def grant(
        self, user_id: str, idempotency_key: str, request_sha256: str, source: str, decision: RewardDecision
    ) -> tuple[GrantRecord, bool]:
        """Record the decision under the key (adding the ownership when eligible), atomically.
        Returns the stored answer and whether this call created it (False = a concurrent or
        earlier call with the same key answered first)."""
        ...

    async def collection(self, user_id: str, default_code: str, offset: int, limit: int) -> tuple[list[Ownership], int]:
        """A page of the user's characters (the default one is granted first) and the total."""
        ...


class CatalogBroadcast(Protocol):
    async def publish_changed(self) -> int:
        """Tell every replica the catalog changed; returns how many listeners got it."""
        ...

    async def listen(self, on_change: Callable[[], Awaitable[object]]) -> None:
        """Call `on_change` after (re)subscribing and on every broadcast, until cancelled."""
        ...
