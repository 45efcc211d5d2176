"""The chat graph's checkpointer: LangGraph's AsyncPostgresSaver, writing only what a resume can
read (ADR 0060, "Checkpoints").

A turn is one LangGraph thread (thread id = job id). Of what AsyncPostgresSaver writes for it,
this saver keeps back what the job's payload or the next checkpoint already holds:

- a new thread's input checkpoint (step -1) and the one after LangGraph's START task (step 0),
  with their task writes: both hold the job's input, and a re-claimed job with no checkpoint
  starts again from its payload (worker.py `_run_graph`). The thread's first stored checkpoint
  is the one after its first node; it stores every channel's value and has no parent.
- the task writes of a superstep that runs a single task: the step's checkpoint, written next,
  holds them applied, and LangGraph reads pending writes only of the thread's latest checkpoint.
  A crash before that checkpoint commits re-runs the task, as a crash inside it does.

What is kept back is written after all, with the write that needs it and in its round trip, when
a task writes one of LangGraph's special channels (error, interrupt, resume, scheduled: an
interrupt must be resumable, a failure readable). A step with several tasks (a `Send` fan-out)
stores each task's writes when it finishes, so that a crash keeps the branches that finished.
The tables and the serializer are AsyncPostgresSaver's.

Serialisation runs on the event loop instead of a thread per call: a turn's state is small.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import WRITES_IDX_MAP, ChannelVersions, Checkpoint, CheckpointMetadata
from langgraph.checkpoint.base import get_serializable_checkpoint_metadata as serializable_metadata
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.serde.types import _DeltaSnapshot
from langgraph.constants import START, TASKS
from langgraph.graph.state import CompiledStateGraph, StateGraph
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("eco2.chat.checkpoints")


async def open_pool(url: str, *, max_size: int, min_size: int = 4) -> AsyncConnectionPool:
    """The psycopg pool a checkpointer writes through, with the connection settings
    AsyncPostgresSaver requires (autocommit, no server-side prepared statements, dict rows)."""
    pool = AsyncConnectionPool(
        url,
        min_size=min(min_size, max_size),
        max_size=max_size,
        open=False,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
    )
    await pool.open(wait=True, timeout=30)
    return pool


#: (thread_id, checkpoint_ns, checkpoint_id)
Key = tuple[str, str, str]


@dataclass
class _Put:
    config: RunnableConfig
    checkpoint: Checkpoint
    metadata: CheckpointMetadata
    new_versions: ChannelVersions


@dataclass
class _Held:
    """What is kept back of one checkpoint: the checkpoint itself (not stored yet) and the task
    writes of the step that runs from it."""

    put: _Put | None  # None: the checkpoint is stored
    next_nodes: int | None  # the tasks of the step that runs from it (None: not known)
    since: float  # loop time it was held at
    parent: _Held | None = None  # a held parent (the input checkpoint of the step-0 one)
    writes: list[tuple[Key, Sequence[tuple[str, Any]], str, str]] = field(default_factory=list)

    def chain(self) -> list[_Held]:
        return [*(self.parent.chain() if self.parent else []), self]


class TurnCheckpointer(AsyncPostgresSaver):
    """What is held stays in memory until the next checkpoint supersedes it, a special write
    stores it, or its thread is deleted. What a turn that stopped otherwise (cancelled, or failed
    outside a node) left is stored after all once older than `held_s` seconds
    (ECO2_CHAT_CHECKPOINT_HELD_S), or when more than `held_max` checkpoints are held
    (ECO2_CHAT_CHECKPOINT_HELD_MAX): storing it late is always safe."""

    def __init__(self, conn, *, serde=None, held_s: float = 60.0, held_max: int = 10_000) -> None:
        super().__init__(conn, serde=serde)
        self.held_s, self.held_max = held_s, held_max
        self.trigger_to_nodes: Mapping[str, Sequence[str]] | None = None
        self._held: OrderedDict[Key, _Held] = OrderedDict()
        self._flushes: dict[Key, asyncio.Task] = {}  # held keys being stored after all

    def compile(self, graph: StateGraph) -> CompiledStateGraph:
        """The graph compiled on this checkpointer, which learns from it which node each channel
        triggers (how many tasks the step after a checkpoint runs)."""
        compiled = graph.compile(checkpointer=self)
        self.trigger_to_nodes = compiled.trigger_to_nodes
        return compiled

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        conf = config["configurable"]
        thread_id, ns, parent_id = conf["thread_id"], conf["checkpoint_ns"], conf.get("checkpoint_id")
        key = (thread_id, ns, checkpoint["id"])
        next_config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": key[2]}}
        if (flush := self._flushes.get((thread_id, ns, parent_id))) is not None:
            await flush  # the parent's values are stored before a checkpoint that names only changes
        parent = self._held.pop((thread_id, ns, parent_id), None) if parent_id else None
        put = _Put(config, checkpoint, dict(metadata), new_versions)
        next_nodes = self._tasks_after(checkpoint)
        if _input_of_new_thread(parent_id, metadata) or (
            parent is not None and parent.put is not None and self._only_start_after(parent.put.checkpoint)
        ):
            self._hold(key, _Held(put, next_nodes, self.loop.time(), parent=parent))
            return next_config
        if parent is not None and parent.put is not None:  # the thread's first stored checkpoint
            put.config = {**config, "configurable": {**conf, "checkpoint_id": None}}
        if next_nodes == 1:
            self._hold(key, _Held(None, next_nodes, self.loop.time()))
        await self._store([put], [], first=parent is not None and parent.put is not None)
        return next_config

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        conf = config["configurable"]
        key = (conf["thread_id"], conf["checkpoint_ns"], conf["checkpoint_id"])
        write = (key, writes, task_id, task_path)
        special = any(channel in WRITES_IDX_MAP for channel, _ in writes)
        held = self._held.get(key)
        if held is not None and not special and (held.put is not None or held.next_nodes == 1):
            held.writes.append(write)
            return
        if held is None:
            await self._store([], [write])
            return
        del self._held[key]
        await self._flush(held, [write])

    async def adelete_thread(self, thread_id: str) -> None:
        for key in [k for k in self._held if k[0] == thread_id]:
            del self._held[key]
        # a late store of what the thread held must not bring rows back after the delete
        await asyncio.gather(*(t for k, t in self._flushes.items() if k[0] == thread_id), return_exceptions=True)
        await super().adelete_thread(thread_id)

    def _tasks_after(self, checkpoint: Checkpoint) -> int | None:
        """How many tasks the step that runs from `checkpoint` has at most: the nodes its updated
        channels trigger (LangGraph's own candidates) and its `Send`s."""
        updated = checkpoint.get("updated_channels")
        if self.trigger_to_nodes is None or updated is None:
            return None
        nodes = {n for channel in updated for n in self.trigger_to_nodes.get(channel, ())}
        return len(nodes) + len(checkpoint["channel_values"].get(TASKS) or ())

    def _only_start_after(self, checkpoint: Checkpoint) -> bool:
        """The step after `checkpoint` runs LangGraph's START task only (it maps the input onto
        the state's channels)."""
        updated = checkpoint.get("updated_channels")
        if self.trigger_to_nodes is None or updated is None or checkpoint["channel_values"].get(TASKS):
            return False
        return {n for channel in updated for n in self.trigger_to_nodes.get(channel, ())} == {START}

    def _hold(self, key: Key, held: _Held) -> None:
        self._held[key] = held
        while self._held and (
            len(self._held) > self.held_max or next(iter(self._held.values())).since < held.since - self.held_s
        ):
            oldest_key, oldest = self._held.popitem(last=False)
            if not any(h.put is not None or h.writes for h in oldest.chain()):
                continue
            task = self.loop.create_task(self._flush(oldest, []))
            self._flushes[oldest_key] = task
            task.add_done_callback(lambda t, k=oldest_key: self._stored_late(k, t))

    def _stored_late(self, key: Key, task: asyncio.Task) -> None:
        self._flushes.pop(key, None)
        if not task.cancelled() and task.exception() is not None:  # a checkpoint after it fails too
            log.warning("storing a held checkpoint failed", extra={"thread_id": key[0]}, exc_info=task.exception())

    async def _flush(self, held: _Held, writes: list) -> None:
        """Store what is held of a checkpoint (and of its held parent), with `writes`."""
        chain = held.chain()
        puts = [h.put for h in chain if h.put is not None]
        await self._store(puts, [w for h in chain for w in h.writes] + writes, first=bool(puts))

    async def _store(self, puts: list[_Put], writes: list, *, first: bool = False) -> None:
        """Checkpoints (oldest first) and task writes in one pipeline. The first checkpoint of
        `first` stores the value of every channel (no stored parent holds them)."""
        statements: list[tuple[str, list]] = []
        for i, put in enumerate(puts):
            statements += self._checkpoint_statements(put, all_blobs=first and i == 0)
        for (thread_id, ns, checkpoint_id), task_writes, task_id, task_path in writes:
            query = (
                self.UPSERT_CHECKPOINT_WRITES_SQL
                if all(channel in WRITES_IDX_MAP for channel, _ in task_writes)
                else self.INSERT_CHECKPOINT_WRITES_SQL
            )
            statements.append((query, self._dump_writes(thread_id, ns, checkpoint_id, task_id, task_path, task_writes)))
        async with self._cursor(pipeline=True) as cur:
            for query, params in statements:
                await cur.executemany(query, params)

    def _checkpoint_statements(self, put: _Put, *, all_blobs: bool) -> list[tuple[str, list]]:
        """AsyncPostgresSaver.aput's statements: primitive values inline in the checkpoint row,
        the others as blobs of the versions that changed (every version for a first checkpoint:
        its parents, not stored, hold none)."""
        conf = put.config["configurable"]
        thread_id, ns = conf["thread_id"], conf["checkpoint_ns"]
        checkpoint = put.checkpoint
        inline = dict(checkpoint["channel_values"])
        blobs = {}
        for k, v in checkpoint["channel_values"].items():
            if isinstance(v, _DeltaSnapshot):
                blobs[k], inline[k] = v, True
            elif not (v is None or isinstance(v, str | int | float | bool)):
                blobs[k] = inline.pop(k)
        versions = checkpoint["channel_versions"] if all_blobs else put.new_versions
        out = []
        if blob_versions := {k: v for k, v in versions.items() if k in blobs}:
            out.append((self.UPSERT_CHECKPOINT_BLOBS_SQL, self._dump_blobs(thread_id, ns, blobs, blob_versions)))
        row = (
            thread_id,
            ns,
            checkpoint["id"],
            conf.get("checkpoint_id"),
            Jsonb({**checkpoint, "channel_values": inline}),
            Jsonb(serializable_metadata(put.config, put.metadata)),
        )
        out.append((self.UPSERT_CHECKPOINTS_SQL, [row]))
        return out


def _input_of_new_thread(parent_id: str | None, metadata: CheckpointMetadata) -> bool:
    return parent_id is None and metadata.get("source") == "input" and metadata.get("step") == -1
