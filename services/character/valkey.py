"""Valkey adapter: the catalog-changed broadcast (Pub/Sub) every replica listens to."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio

log = logging.getLogger("eco2.character.broadcast")

#: The Pub/Sub channel announcing a catalog change (the payload is informative only).
CATALOG_CHANNEL = "eco2:character:catalog:changed"


class ValkeyCatalogBroadcast:
    def __init__(self, client: redis.asyncio.Redis, *, channel: str = CATALOG_CHANNEL, retry_s: float = 1.0) -> None:
        self.client = client
        self.channel = channel
        self.retry_s = retry_s
        self.subscribed = asyncio.Event()

    async def publish_changed(self, reason: str = "changed") -> int:
        return int(await self.client.publish(self.channel, reason))

    async def listen(self, on_change: Callable[[], Awaitable[object]]) -> None:
        """Subscribe, reload once (a change may have happened while not subscribed), then
        reload on every message. Reconnects after a lost connection, reloading again."""
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.subscribed.set()
                await on_change()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        await on_change()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost, Postgres briefly down...: retry
                self.subscribed.clear()
                log.warning("catalog broadcast interrupted; resubscribing", extra={"error": repr(exc)})
                await asyncio.sleep(self.retry_s)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass
