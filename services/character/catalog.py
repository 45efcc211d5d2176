"""The in-process catalog cache: loaded before SERVING, swapped atomically on refresh."""

from __future__ import annotations

import logging

from .domain import Catalog
from .ports import CatalogRepository

log = logging.getLogger("eco2.character.catalog")


class CatalogCache:
    def __init__(self, repository: CatalogRepository) -> None:
        self.repository = repository
        self._snapshot: Catalog | None = None

    @property
    def snapshot(self) -> Catalog:
        if self._snapshot is None:
            raise RuntimeError("catalog not loaded: CatalogCache.refresh() runs before the server reports SERVING")
        return self._snapshot

    async def refresh(self) -> Catalog:
        snapshot = Catalog(await self.repository.load_catalog())
        self._snapshot = snapshot
        log.info("catalog loaded", extra={"characters": len(snapshot.characters)})
        return snapshot
