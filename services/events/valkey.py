"""ReplayStore over Redis/Valkey streams (key layout: eco2.services.bus.domain)."""

from __future__ import annotations

import hiredis
import redis.asyncio
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from eco2.services.bus import domain

from .ports import JobHead, Stored


class ValkeyReplayStore:
    def __init__(self, redis: redis.asyncio.Redis, shards: int) -> None:
        self.redis = redis
        self.shards = shards

    async def head(self, job_id: str) -> JobHead | None:
        shard = domain.shard_of(job_id, self.shards)
        last, closed, owner = await self.redis.hmget(domain.producer_key(shard, job_id), "s", "c", "o")
        if last is None:
            return None
        return JobHead(int(last), closed == b"1", owner.decode() if owner else "")

    async def read_after(self, job_id: str, after_seq: int, count: int) -> list[Stored]:
        shard = domain.shard_of(job_id, self.shards)
        rows = await self.redis.xrange(domain.replay_key(shard, job_id), min=f"({after_seq}-0", max="+", count=count)
        out = []
        for entry_id, fields in rows:
            seq = int(entry_id.split(b"-", 1)[0])
            out.append(Stored(seq, int(fields[b"p"]), fields[b"t"] == b"1", fields[b"d"]))
        return out

    async def job_state(self, job_id: str) -> dict[bytes, bytes] | None:
        shard = domain.shard_of(job_id, self.shards)
        state = await self.redis.hgetall(domain.state_key(shard, job_id))
        return state or None


class FastConnection(Connection):
    """redis.asyncio connection that packs commands with hiredis (C) instead of redis-py's
    Python packer, as redis-py's own sync client does when hiredis is installed: about 4x less
    CPU for the router's and the producer's many-argument Lua calls."""

    def pack_command(self, *args):
        first = args[0]
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise DataError(str(exc)) from exc


def fast_redis(redis_url: str, **kwargs) -> redis.asyncio.Redis:
    """A redis.asyncio client (bytes replies) whose connections pack with hiredis."""
    kwargs.setdefault("decode_responses", False)
    pool_class = kwargs.pop("pool_class", redis.asyncio.ConnectionPool)
    pool = pool_class.from_url(redis_url, connection_class=FastConnection, **kwargs)
    return redis.asyncio.Redis(connection_pool=pool)
