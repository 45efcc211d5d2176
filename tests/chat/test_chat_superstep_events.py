"""A graph task's events go out together and are stored before LangGraph checkpoints its update
(nodes/run.py `superstep`): the chat graph on the real checkpointer (AsyncPostgresSaver on the
session's PostgreSQL) publishing through the real EventPublisher (the session's Valkey)."""

from __future__ import annotations

import uuid

import pytest
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from eco2.services.bus import domain
from eco2.services.bus.producer import EventPublisher
from eco2.services.bus.settings import EventsSettings
from eco2.services.chat.answer import compose
from eco2.services.chat.checkpoints import open_pool
from eco2.services.chat.deps import ChatDeps, JobContext
from eco2.services.chat.emitter import Emitter
from eco2.services.chat.graph import build_graph
from eco2.services.chat.outbox import EventOutbox
from eco2.services.chat.policy import PolicyRunner
from eco2.services.chat.state import checkpoint_serializer
from eco2.services.dataplane.urls import create_redis
from eco2.services.knowledge import kb
from eco2.services.llm.offline import OfflineLLM


class BatchLog(EventPublisher):
    """The product's publisher, noting the events of each `publish_many` call."""

    batches: list[list[tuple[str, int]]]

    async def publish_many(self, events):
        self.batches.append([(e.node, e.seq) for e in events])
        return await super().publish_many(events)


class StoredFirst(AsyncPostgresSaver):
    """The product's checkpointer, noting for each checkpoint (and each task's pending writes)
    the seq it records and the job's last seq stored in Valkey at that moment."""

    def __init__(self, pool, redis, job_id: str) -> None:
        super().__init__(pool, serde=checkpoint_serializer())
        self.redis, self.job_id = redis, job_id
        self.seen: list[tuple[int, int]] = []

    async def _stored(self) -> int:
        key = domain.producer_key(domain.shard_of(self.job_id, EventsSettings().events_shards), self.job_id)
        return int(await self.redis.hget(key, "s") or 0)

    async def aput(self, config, checkpoint, metadata, new_versions):
        seq = checkpoint["channel_values"].get("seq")
        if seq:
            self.seen.append((seq, await self._stored()))
        return await super().aput(config, checkpoint, metadata, new_versions)

    async def aput_writes(self, config, writes, task_id, task_path=""):
        for channel, value in writes:
            if channel == "seq" and value:
                self.seen.append((value, await self._stored()))
        return await super().aput_writes(config, writes, task_id, task_path)


@pytest.fixture
async def pg_pool(service_env):
    pool = await open_pool(service_env["DATABASE_URL"], max_size=2, min_size=1)
    yield pool
    await pool.close()


async def test_a_tasks_events_go_out_in_one_batch_and_are_stored_before_its_checkpoint(service_env, pg_pool):
    redis = create_redis(service_env["REDIS_URL"])
    publisher = BatchLog(redis)
    publisher.batches = []
    job = f"chat-{uuid.uuid4().hex}"
    saver = StoredFirst(pg_pool, redis, job)
    await saver.setup()
    graph = build_graph().compile(checkpointer=saver)
    try:
        deps = ChatDeps(kb=kb.load(), llm=OfflineLLM(compose), policy=PolicyRunner())
        em = Emitter(publisher, job, 1, tokens_per_event=4, outbox=EventOutbox(publisher))
        s = {
            "job_id": job,
            "user_id": "u",
            "conversation_id": str(uuid.uuid4()),
            "message": "페트병 어떻게 버려?",
            "image_key": "",
            "location": None,
            "history": [],
            "summary": "",
        }
        out = await graph.ainvoke(
            s, {"configurable": {"thread_id": job}}, context=JobContext(deps, em), durability="sync"
        )
    finally:
        await publisher.aclose()
        await redis.aclose()
    assert out["answer"] and out["seq"] == em.seq
    # the first task (understand) runs intent, router and waste_rag: their six STAGE events, one call
    first = publisher.batches[0]
    assert [node for node, _ in first] == ["intent"] * 2 + ["router"] * 2 + ["waste_rag"] * 2
    # the second (aggregator, answer with its tokens, evaluate): one call too; nothing else went out
    assert len(publisher.batches) == 2, [[n for n, _ in b] for b in publisher.batches]
    assert [seq for batch in publisher.batches for _, seq in batch] == list(range(2, em.seq + 1))
    # every checkpointed seq (task writes and checkpoints alike) was stored before it was written
    assert saver.seen and all(seq <= stored for seq, stored in saver.seen), saver.seen
    assert max(seq for seq, _ in saver.seen) == em.seq
