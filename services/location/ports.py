"""What the location service needs from outside the process."""

from __future__ import annotations

from typing import Protocol

from .domain import Hit, NearbyQuery, Place


class PlaceRepository(Protocol):
    async def nearby(self, query: NearbyQuery) -> list[Hit]:
        """Places within query.radius_m, nearest first, at most query.limit."""
        ...

    async def search_text(self, text: str, near: tuple[float, float] | None, limit: int) -> list[Hit]:
        """Places whose name or address matches `text` (substring or trigram word similarity);
        nearest first when `near` is given, else best match first."""
        ...

    async def get(self, place_id: str) -> Place | None: ...

    async def upsert(self, places: list[Place]) -> int:
        """Insert or update by id; returns how many rows were written."""
        ...


class KeywordSearch(Protocol):
    """An outside keyword place search (Kakao Local)."""

    async def search(self, text: str, near: tuple[float, float] | None, limit: int) -> list[Hit]: ...

    async def aclose(self) -> None: ...
