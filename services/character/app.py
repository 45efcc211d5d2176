"""Composition root of the character service: settings → adapters → servicer."""

from __future__ import annotations

from importlib import resources

import grpc

from eco2.character.v1 import character_pb2, character_pb2_grpc
from eco2.services.dataplane.migrations import apply_migrations
from eco2.services.dataplane.urls import create_pg_pool
from eco2.services.runtime.settings import RuntimeSettings

from .catalog import CatalogCache
from .postgres import PostgresCatalogRepository
from .service import CharacterServicer


class CharacterSettings(RuntimeSettings):
    pass


class CharacterApp:
    name = "character"

    def __init__(self, settings: CharacterSettings) -> None:
        self.settings = settings
        self.pool = None

    def service_names(self) -> list[str]:
        return [character_pb2.DESCRIPTOR.services_by_name["CharacterService"].full_name]

    async def start(self, server: grpc.aio.Server) -> None:
        s = self.settings
        await apply_migrations(s.database_url, "character", resources.files(__package__) / "migrations")
        self.pool = await create_pg_pool(s.database_url, max_size=s.db_pool_max, application_name="eco2-character")
        catalog = CatalogCache(PostgresCatalogRepository(self.pool))
        await catalog.refresh()
        character_pb2_grpc.add_CharacterServiceServicer_to_server(CharacterServicer(catalog), server)

    async def stop(self) -> None:
        if self.pool is not None:
            await self.pool.close()


def create() -> CharacterApp:
    return CharacterApp(CharacterSettings())
