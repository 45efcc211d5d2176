"""The in-process catalog cache: loaded before SERVING, swapped atomically on refresh.

Every replica keeps the whole catalog in memory (13 rows) and reloads it from Postgres when a
catalog-changed broadcast arrives on Valkey Pub/Sub (see valkey.py), plus once after every
(re)subscription so a change made while the subscription was down is not missed.
"""

from __future__ import annotations

import asyncio
import logging

from .domain import Catalog
from .ports import CatalogBroadcast, CatalogRepository

log = logging.getLogger("eco2.character.catalog")


class CatalogCache:
    def __init__(self, repository: CatalogRepository, broadcast: CatalogBroadcast | None = None) -> None:
        self.repository = repository
        self.broadcast = broadcast
        self._snapshot: Catalog | None = None
        self._listener: asyncio.Task | None = None

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

    async def _safe_refresh(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # keep serving the last good snapshot
            log.error("catalog refresh failed; keeping the previous snapshot", extra={"error": repr(exc)})

    def start_listening(self) -> None:
        if self.broadcast is not None and self._listener is None:
            self._listener = asyncio.create_task(self.broadcast.listen(self._safe_refresh), name="catalog-broadcast")

    async def stop_listening(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except (asyncio.CancelledError, Exception):
                pass
            self._listener = None

    async def publish_changed(self) -> int:
        """Announce a catalog change to every replica (this one included)."""
        if self.broadcast is None:
            await self.refresh()
            return 0
        return await self.broadcast.publish_changed()
