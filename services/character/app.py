"""Composition root of the character service: settings → adapters → servicer."""

from __future__ import annotations

import logging
from importlib import resources

import grpc
from pydantic import Field

from eco2.character.v1 import character_pb2, character_pb2_grpc
from eco2.services.dataplane.migrations import apply_migrations
from eco2.services.dataplane.urls import create_pg_pool, create_redis
from eco2.services.runtime.dependencies import postgres_check
from eco2.services.runtime.settings import RuntimeSettings

from .catalog import CatalogCache
from .postgres import PostgresCatalogRepository, PostgresRewardRepository
from .service import CharacterServicer
from .valkey import CATALOG_CHANNEL, ValkeyCatalogBroadcast

log = logging.getLogger("eco2.character")


class CharacterSettings(RuntimeSettings):
    character_catalog_channel: str = Field(
        CATALOG_CHANNEL, min_length=1, description="Valkey Pub/Sub channel announcing catalog changes"
    )


class CharacterApp:
    name = "character"

    def __init__(self, settings: CharacterSettings) -> None:
        self.settings = settings
        self.pool = None
        self.redis = None
        self.catalog: CatalogCache | None = None

    def service_names(self) -> list[str]:
        return [character_pb2.DESCRIPTOR.services_by_name["CharacterService"].full_name]

    def dependency_checks(self):
        return {"postgres": postgres_check(self.pool)}  # Redis only carries catalog broadcasts: not required

    async def migrate(self) -> list[str]:
        """Apply the pending schema migrations; the names of the files applied. When one was
        applied and Valkey is configured, the replicas already running reload their catalog."""
        s = self.settings
        applied = await apply_migrations(s.database_url, "character", resources.files(__package__) / "migrations")
        if applied and s.redis_url:
            client = create_redis(s.redis_url)
            try:
                await ValkeyCatalogBroadcast(client, channel=s.character_catalog_channel).publish_changed(
                    "migrations " + ",".join(applied)
                )
            finally:
                await client.aclose()
        return applied

    async def start(self, server: grpc.aio.Server) -> None:
        s = self.settings
        if s.migrate_on_start:
            await self.migrate()
        self.pool = await create_pg_pool(s.database_url, max_size=s.db_pool_max, application_name="eco2-character")
        broadcast = None
        if s.redis_url:
            self.redis = create_redis(s.redis_url)
            broadcast = ValkeyCatalogBroadcast(self.redis, channel=s.character_catalog_channel)
        else:
            log.warning("REDIS_URL not set: catalog changes reach this replica only on restart")
        self.catalog = catalog = CatalogCache(PostgresCatalogRepository(self.pool), broadcast)
        await catalog.refresh()
        catalog.start_listening()
        servicer = CharacterServicer(catalog, PostgresRewardRepository(self.pool))
        character_pb2_grpc.add_CharacterServiceServicer_to_server(servicer, server)

    async def stop(self) -> None:
        if self.catalog is not None:
            await self.catalog.stop_listening()
        if self.redis is not None:
            await self.redis.aclose()
        if self.pool is not None:
            await self.pool.close()


def create() -> CharacterApp:
    return CharacterApp(CharacterSettings())
