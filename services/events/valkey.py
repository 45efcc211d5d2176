"""ReplayStore over Redis/Valkey streams (key layout: eco2.services.bus.domain), read over one
lean pipelined connection (dataplane/resp.py, docs/adr/0045): every Subscribe reads its job's
head and replay stream through it, concurrent streams' reads share its round trips."""

from __future__ import annotations

from eco2.services.bus import domain
from eco2.services.dataplane.resp import RespClient

from .ports import JobHead, Stored


class ValkeyReplayStore:
    def __init__(self, client: RespClient, shards: int) -> None:
        self.client = client
        self.shards = shards

    async def head(self, job_id: str) -> JobHead | None:
        shard = domain.shard_of(job_id, self.shards)
        last, closed, owner = await self.client.execute("HMGET", domain.producer_key(shard, job_id), "s", "c", "o")
        if last is None:
            return None
        return JobHead(int(last), closed == b"1", owner.decode() if owner else "")

    async def read_after(self, job_id: str, after_seq: int, count: int) -> list[Stored]:
        shard = domain.shard_of(job_id, self.shards)
        rows = await self.client.execute(
            "XRANGE", domain.replay_key(shard, job_id), f"({after_seq}-0", "+", "COUNT", count
        )
        out = []
        for entry_id, flat in rows:
            fields = dict(zip(flat[::2], flat[1::2]))
            seq = int(entry_id.split(b"-", 1)[0])
            out.append(Stored(seq, int(fields[b"p"]), fields[b"t"] == b"1", fields[b"d"]))
        return out

    async def job_state(self, job_id: str) -> dict[bytes, bytes] | None:
        shard = domain.shard_of(job_id, self.shards)
        flat = await self.client.execute("HGETALL", domain.state_key(shard, job_id))
        return dict(zip(flat[::2], flat[1::2])) or None

    async def aclose(self) -> None:
        await self.client.aclose()
