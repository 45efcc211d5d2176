"""Clients for the data plane from plain URLs (embedded or managed: the code is the same)."""

from __future__ import annotations

from typing import Any

import asyncpg
import redis.asyncio

from eco2.services.runtime.settings import POSTGRES_URL, REDIS_URL, require_url


async def create_pg_pool(
    database_url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    application_name: str | None = None,
    **kwargs: Any,
) -> asyncpg.Pool:
    """Open an asyncpg pool on ``database_url`` (``postgresql://...``).

    ``application_name`` shows up in ``pg_stat_activity``; other keyword arguments go to
    ``asyncpg.create_pool``.
    """
    require_url(database_url, "DATABASE_URL", POSTGRES_URL)
    server_settings = dict(kwargs.pop("server_settings", None) or {})
    if application_name:
        server_settings["application_name"] = application_name
    pool = await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        server_settings=server_settings or None,
        **kwargs,
    )
    return pool


def create_redis(redis_url: str, **kwargs: Any) -> redis.asyncio.Redis:
    """A ``redis.asyncio.Redis`` client for ``redis_url``; bytes replies unless told otherwise."""
    require_url(redis_url, "REDIS_URL", REDIS_URL)
    kwargs.setdefault("decode_responses", False)
    return redis.asyncio.Redis.from_url(redis_url, **kwargs)
