"""What the character service needs from outside the process."""

from __future__ import annotations

from typing import Protocol

from .domain import Character


class CatalogRepository(Protocol):
    async def load_catalog(self) -> list[Character]:
        """Every character of the catalog."""
        ...
