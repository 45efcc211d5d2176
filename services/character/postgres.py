"""PostgreSQL adapters of the character service."""

from __future__ import annotations

import asyncpg

from eco2.character.v1 import character_pb2

from .domain import Character


class PostgresCatalogRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def load_catalog(self) -> list[Character]:
        rows = await self.pool.fetch(
            "SELECT code, name, aliases, category, match_label, image_code, description, is_default, sort_order"
            " FROM character_catalog ORDER BY sort_order, code"
        )
        return [
            Character(
                code=r["code"],
                name=r["name"],
                aliases=tuple(r["aliases"]),
                category=character_pb2.WasteCategory.Value(f"WASTE_CATEGORY_{r['category']}"),
                match_label=r["match_label"],
                image_code=r["image_code"],
                description=r["description"],
                is_default=r["is_default"],
                sort_order=r["sort_order"],
            )
            for r in rows
        ]
