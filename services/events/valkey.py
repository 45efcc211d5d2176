"""ReplayStore over Redis/Valkey streams (key layout: eco2.services.bus.domain)."""

from __future__ import annotations

import redis.asyncio

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
