"""PostgreSQL adapter of the images service: blobs (once per sha256) and who owns them."""

from __future__ import annotations

import asyncpg

from .domain import ImageRecord

_SELECT = (
    "SELECT b.sha256, b.format, b.content_type, b.size_bytes, o.channel, o.filename, o.created_at"
    " FROM image_owner o JOIN image_blob b USING (sha256) WHERE o.user_id = $1 AND o.sha256 = $2"
)


def _record(r: asyncpg.Record) -> ImageRecord:
    return ImageRecord(
        r["sha256"], r["format"], r["content_type"], r["size_bytes"], r["channel"], r["filename"], r["created_at"]
    )


class PostgresImageRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def blob_exists(self, sha256: str) -> bool:
        return bool(await self.pool.fetchval("SELECT true FROM image_blob WHERE sha256 = $1", sha256))

    async def record(
        self, user_id: str, sha256: str, fmt: str, content_type: str, size: int, channel: str, filename: str
    ) -> tuple[ImageRecord, bool]:
        async with self.pool.acquire() as conn, conn.transaction():
            new_blob = await conn.fetchval(
                "INSERT INTO image_blob (sha256, format, content_type, size_bytes) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (sha256) DO NOTHING RETURNING true",
                sha256,
                fmt,
                content_type,
                size,
            )
            await conn.execute(
                "INSERT INTO image_owner (user_id, sha256, channel, filename) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (user_id, sha256) DO NOTHING",
                user_id,
                sha256,
                channel,
                filename,
            )
            row = await conn.fetchrow(_SELECT, user_id, sha256)
        return _record(row), not new_blob

    async def get(self, user_id: str, sha256: str) -> ImageRecord | None:
        row = await self.pool.fetchrow(_SELECT, user_id, sha256)
        return None if row is None else _record(row)
