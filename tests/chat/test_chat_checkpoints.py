"""What a turn stores through the chat checkpointer (services/chat/checkpoints.py), on the
session's real PostgreSQL and the real graph, and that a turn resumes from what a crash at each
point leaves: another process (a new checkpointer, nothing in memory) picks it up."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from langgraph.types import Command

from eco2.events.v1 import events_pb2
from eco2.services.chat.answer import compose
from eco2.services.chat.checkpoints import TurnCheckpointer, open_pool
from eco2.services.chat.deps import ChatDeps, JobContext
from eco2.services.chat.emitter import Emitter
from eco2.services.chat.graph import build_graph
from eco2.services.chat.policy import PolicyRunner
from eco2.services.chat.state import checkpoint_serializer
from eco2.services.chat.worker import continues_from
from eco2.services.knowledge import kb
from eco2.services.llm.offline import OfflineLLM

ONE_BRANCH = "투명 페트병은 어떻게 버려?"
TWO_BRANCHES = "페트병 버리는 법이랑 오늘 날씨 알려줘"
NEARBY = "근처 수거함 알려줘"
SEOUL = {"location": {"latitude": 37.5663, "longitude": 126.9779}}


class Recorder:
    def __init__(self) -> None:
        self.events: list[events_pb2.Event] = []

    async def publish(self, event: events_pb2.Event) -> bool:
        self.events.append(event)
        return True

    def by_seq(self) -> list[tuple]:
        """The events as the bus keeps them: one per seq (a re-emitted seq is dropped)."""
        kept: dict[int, tuple] = {}
        for e in self.events:
            kept.setdefault(e.seq, (e.seq, e.kind, e.node, e.delta))
        return sorted(kept.values())


class Crash(Exception):
    """The worker died: nothing after this point is stored."""


class CrashingCheckpointer(TurnCheckpointer):
    """The product's checkpointer in a process that dies just before the checkpoint of step
    `crash_at` is stored (the step's tasks have finished; writes stored so far stay)."""

    def __init__(self, conn, *, crash_at: int) -> None:
        super().__init__(conn, serde=checkpoint_serializer())
        self.crash_at = crash_at

    async def aput(self, config, checkpoint, metadata, new_versions):
        if metadata.get("step") == self.crash_at:
            raise Crash
        return await super().aput(config, checkpoint, metadata, new_versions)


@pytest.fixture(scope="module")
async def pool(service_env):
    pool = await open_pool(service_env["DATABASE_URL"], max_size=4)
    await TurnCheckpointer(pool).setup()
    yield pool
    await pool.close()


def process(pool, *, crash_at: int | None = None):
    """The graph as one chat process compiles it: on a checkpointer of its own."""
    saver = (
        TurnCheckpointer(pool, serde=checkpoint_serializer())
        if crash_at is None
        else CrashingCheckpointer(pool, crash_at=crash_at)
    )
    return saver.compile(build_graph())


DEPS = ChatDeps(kb=kb.load(), llm=OfflineLLM(compose), policy=PolicyRunner())


def turn(message: str) -> tuple[dict, dict]:
    job = f"chat-{uuid.uuid4().hex}"
    state = {
        "job_id": job,
        "user_id": "u",
        "conversation_id": str(uuid.uuid4()),
        "message": message,
        "image_key": "",
        "location": None,
        "history": [],
        "summary": "",
    }
    return state, {"configurable": {"thread_id": job}}


async def run(graph, graph_input, config, sink: Recorder, seq: int = 1) -> dict:
    emitter = Emitter(sink, config["configurable"]["thread_id"], seq)
    return await graph.ainvoke(graph_input, config, context=JobContext(DEPS, emitter), durability="sync")


async def stored(pool, job: str) -> dict:
    """The thread's rows: its checkpoints (step, parent, source) and task writes (checkpoint
    step, task path, channel)."""
    async with pool.connection() as conn:
        checkpoints = await (
            await conn.execute(
                "SELECT checkpoint_id, parent_checkpoint_id, metadata FROM checkpoints WHERE thread_id = %s"
                " ORDER BY checkpoint_id",
                (job,),
            )
        ).fetchall()
        writes = await (
            await conn.execute(
                "SELECT checkpoint_id, task_path, channel FROM checkpoint_writes WHERE thread_id = %s", (job,)
            )
        ).fetchall()
    step = {c["checkpoint_id"]: c["metadata"]["step"] for c in checkpoints}
    return {
        "steps": [c["metadata"]["step"] for c in checkpoints],
        "sources": [c["metadata"]["source"] for c in checkpoints],
        "parents": [step.get(c["parent_checkpoint_id"], c["parent_checkpoint_id"]) for c in checkpoints],
        "writes": sorted((step.get(w["checkpoint_id"]), w["task_path"], w["channel"]) for w in writes),
    }


async def resumed(pool, config) -> tuple:
    """How another process resumes the thread (worker.py `_turn`): the latest checkpoint's
    state, and its seq for the emitter."""
    snapshot = await process(pool).aget_state(config)
    return snapshot, int((snapshot.values or {}).get("seq") or 0)


# ------------------------------------------------------------------ what a turn stores


async def test_a_one_branch_turn_stores_its_two_node_checkpoints_and_no_task_writes(pool):
    state, config = turn(ONE_BRANCH)
    out = await run(process(pool), state, config, Recorder())
    assert out["answer"]
    rows = await stored(pool, state["job_id"])
    # not the input (-1) nor START's (0): the payload holds them; no writes: each step's own
    # checkpoint holds its single task's writes applied
    assert rows == {"steps": [1, 2], "sources": ["loop", "loop"], "parents": [None, 1], "writes": []}
    snapshot = await process(pool).aget_state(config)
    assert snapshot.next == () and snapshot.values["answer"] == out["answer"]
    first = [s async for s in process(pool).aget_state_history(config)][-1]
    assert first.next == ("aggregator",) and first.parent_config is None
    # the first stored checkpoint carries the input, the history included, as values
    assert {k: first.values[k] for k in state} == state


async def test_a_fan_out_stores_each_branch_writes_as_it_finishes(pool):
    state, config = turn(TWO_BRANCHES)
    await run(process(pool), state, config, Recorder())
    rows = await stored(pool, state["job_id"])
    assert rows["steps"] == [1, 2, 3] and rows["parents"] == [None, 1, 2]
    branches = {path for step, path, _ in rows["writes"]}
    assert len(branches) == 2 and all(path.startswith("~__pregel_push") for path in branches)
    assert {step for step, _, _ in rows["writes"]} == {1}, "only the fan-out step's writes"


async def test_an_interrupt_is_stored_and_another_process_resumes_it(pool):
    state, config = turn(NEARBY)
    out = await run(process(pool), state, config, Recorder())
    asked = out["__interrupt__"]
    rows = await stored(pool, state["job_id"])
    last = rows["steps"][-1]
    assert (last, "~__pregel_pull, ask_location", "__interrupt__") in rows["writes"]
    snapshot, seq = await resumed(pool, config)
    assert snapshot.next == ("ask_location",) and [i.id for i in snapshot.interrupts] == [asked[0].id]
    ids = [i.id for i in snapshot.interrupts]
    out = await run(
        process(pool), Command(resume=SEOUL if len(ids) <= 1 else dict.fromkeys(ids, SEOUL)), config, Recorder(), seq
    )
    assert "__interrupt__" not in out and out["contexts"]["collection_point_context"]["places"] is not None
    assert out["location"] == SEOUL["location"]


# ------------------------------------------------------------------ crash points


async def clean_run(pool, message: str) -> list[tuple]:
    state, config = turn(message)
    sink = Recorder()
    await run(process(pool), state, config, sink)
    return sink.by_seq()


@pytest.mark.parametrize("message", [ONE_BRANCH, TWO_BRANCHES])
async def test_a_crash_before_the_first_checkpoint_leaves_nothing_and_the_job_starts_again(pool, message):
    """Dead in the first node, or after it before its checkpoint: no row; the re-claimed job
    starts from its payload and the client sees the same events once."""
    state, config = turn(message)
    sink = Recorder()
    with pytest.raises(Crash):
        await run(process(pool, crash_at=1), state, config, sink)
    assert sink.events, "the first node had published"
    assert (await stored(pool, state["job_id"]))["steps"] == []
    snapshot, seq = await resumed(pool, config)
    assert snapshot.next == () and not snapshot.values and seq == 0
    out = await run(process(pool), state, config, sink, 1)
    assert out["answer"]
    assert [e[1:] for e in sink.by_seq()] == [e[1:] for e in await clean_run(pool, message)]


async def test_a_crash_after_the_answer_before_its_checkpoint_answers_again_from_the_last_one(pool):
    """Dead between the aggregator's end and its checkpoint: its writes were never stored, the
    re-claimed job runs the aggregator again from the checkpoint after `intent`, under the same
    seqs."""
    state, config = turn(ONE_BRANCH)
    sink = Recorder()
    with pytest.raises(Crash):
        await run(process(pool, crash_at=2), state, config, sink)
    assert any(e.kind == events_pb2.EVENT_KIND_TOKEN for e in sink.events), "the answer had streamed"
    assert await stored(pool, state["job_id"]) == {"steps": [1], "sources": ["loop"], "parents": [None], "writes": []}
    snapshot, seq = await resumed(pool, config)
    assert snapshot.next == ("aggregator",) and seq > 0
    out = await run(process(pool), None, config, sink, seq)
    assert out["answer"]
    assert [e[1:] for e in sink.by_seq()] == [e[1:] for e in await clean_run(pool, ONE_BRANCH)]


async def test_a_crash_after_a_fan_out_keeps_the_branches_that_finished(pool):
    state, config = turn(TWO_BRANCHES)
    sink = Recorder()
    with pytest.raises(Crash):
        await run(process(pool, crash_at=2), state, config, sink)
    snapshot, seq = await resumed(pool, config)
    branches = {t.name for t in snapshot.tasks if t.result is not None}
    assert branches == {"waste_rag", "weather"}
    assert snapshot.next == () and continues_from(snapshot), "a re-claiming worker continues, not starts again"
    again = Recorder()
    out = await run(process(pool), None, config, again, seq)
    assert out["answer"]
    assert not [e for e in again.events if e.node in branches], "the finished branches did not run again"
    sink.events += again.events
    assert [e[1:] for e in sink.by_seq()] == [e[1:] for e in await clean_run(pool, TWO_BRANCHES)]


# ------------------------------------------------------------------ what is held in memory


async def test_past_its_limit_the_checkpointer_stores_what_it_holds(pool):
    """A checkpointer that may hold nothing stores what AsyncPostgresSaver stores: every
    checkpoint and every task's writes."""
    graph = process(pool)
    graph.checkpointer.held_max = 0
    state, config = turn(ONE_BRANCH)
    out = await run(graph, state, config, Recorder())
    while graph.checkpointer._flushes:
        await asyncio.gather(*graph.checkpointer._flushes.values())
    rows = await stored(pool, state["job_id"])
    assert rows["steps"] == [-1, 0, 1, 2] and rows["parents"] == [None, -1, 0, 1]
    assert {(step, path) for step, path, _ in rows["writes"]} == {
        (-1, "~__pregel_pull, __start__"),
        (0, "~__pregel_pull, intent"),
        (1, "~__pregel_pull, aggregator"),
    }
    assert (await process(pool).aget_state(config)).values["answer"] == out["answer"]


async def test_deleting_a_thread_forgets_what_is_held_of_it(pool):
    """A rolled-back run (CancelRun ROLLBACK deletes its thread) leaves nothing in memory."""
    state, config = turn(ONE_BRANCH)
    crashed = process(pool, crash_at=1)
    with pytest.raises(Crash):
        await run(crashed, state, config, Recorder())
    held = crashed.checkpointer._held
    assert any(key[0] == state["job_id"] for key in held), "the input and START's checkpoints"
    await crashed.checkpointer.adelete_thread(state["job_id"])
    assert not any(key[0] == state["job_id"] for key in held)


async def test_what_a_stopped_turn_left_is_stored_once_older_than_held_s(pool):
    """A turn that stopped before its first checkpoint (here: its process's checkpointer failed;
    a cancel leaves the same) holds its input in memory; once older than `held_s` the next hold
    stores it, as AsyncPostgresSaver would have, and a resume reads it."""
    graph = process(pool, crash_at=1)
    stopped, config = turn(ONE_BRANCH)
    with pytest.raises(Crash):
        await run(graph, stopped, config, Recorder())
    graph.checkpointer.crash_at, graph.checkpointer.held_s = None, 0.0
    state, other = turn(ONE_BRANCH)
    await run(graph, state, other, Recorder())
    while graph.checkpointer._flushes:
        await asyncio.gather(*graph.checkpointer._flushes.values())
    rows = await stored(pool, stopped["job_id"])
    assert rows["steps"] == [-1, 0] and rows["parents"] == [None, -1]
    assert {(step, path) for step, path, _ in rows["writes"]} == {
        (-1, "~__pregel_pull, __start__"),
        (0, "~__pregel_pull, intent"),
    }
    snapshot, seq = await resumed(pool, config)
    assert snapshot.next == () and {t.name for t in snapshot.tasks if t.result is not None} == {"intent"}
    out = await run(process(pool), None, config, Recorder(), seq)
    assert out["answer"]
