"""Benchmark of the chat graph's checkpointer: the same one-branch turns through the real graph
(the offline model, an event sink that keeps nothing, durability `sync`) on LangGraph's
AsyncPostgresSaver, on the chat's TurnCheckpointer (services/chat/checkpoints.py) and on the
latter holding nothing (`held_max=0`: every row stored, serialised on the loop), in alternating
rounds, on an embedded PostgreSQL of its own.

    python bench/checkpoints.py [--turns 400] [--concurrency 50] [--rounds 3]

Measured per turn and checkpointer, the median over the rounds: user+system CPU of this process
(the graph, the model, the checkpointer, psycopg: only the checkpointer differs) and of
PostgreSQL's process tree, and the rows a turn leaves (checkpoints, task writes, blobs).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chat import tree_cpu_s  # noqa: E402

from eco2.services.chat.answer import compose  # noqa: E402
from eco2.services.chat.checkpoints import TurnCheckpointer, open_pool  # noqa: E402
from eco2.services.chat.deps import ChatDeps, JobContext  # noqa: E402
from eco2.services.chat.emitter import Emitter  # noqa: E402
from eco2.services.chat.graph import build_graph  # noqa: E402
from eco2.services.chat.policy import PolicyRunner  # noqa: E402
from eco2.services.chat.state import checkpoint_serializer  # noqa: E402
from eco2.services.knowledge import kb, morph  # noqa: E402
from eco2.services.llm.offline import OfflineLLM  # noqa: E402

MESSAGE = "투명 페트병은 어떻게 버려?"


class Discard:
    async def publish(self, event) -> bool:
        return True


#: the checkpointers compared: LangGraph's; the chat's holding nothing (every row stored, as
#: LangGraph's does, serialised on the loop: what inline serialisation alone saves); the chat's
NAMES = ("AsyncPostgresSaver", "TurnCheckpointer held_max=0", "TurnCheckpointer")


def compiled(name: str, pool):
    if name == "AsyncPostgresSaver":
        return build_graph().compile(checkpointer=AsyncPostgresSaver(pool, serde=checkpoint_serializer()))
    held_max = 0 if name.endswith("held_max=0") else 10_000
    return TurnCheckpointer(pool, serde=checkpoint_serializer(), held_max=held_max).compile(build_graph())


async def turns(graph, deps: ChatDeps, n: int, concurrency: int) -> list[str]:
    slots = asyncio.Semaphore(concurrency)
    jobs = [f"bench-{uuid.uuid4().hex}" for _ in range(n)]

    async def one(job: str) -> None:
        async with slots:
            state = {
                "job_id": job,
                "user_id": "u",
                "conversation_id": str(uuid.uuid4()),
                "message": MESSAGE,
                "image_key": "",
                "location": None,
                "history": [],
                "summary": "",
            }
            out = await graph.ainvoke(
                state,
                {"configurable": {"thread_id": job}},
                context=JobContext(deps, Emitter(Discard(), job, 1)),
                durability="sync",
            )
            assert out["answer"]

    await asyncio.gather(*(one(j) for j in jobs))
    return jobs


async def rows_per_turn(pool, jobs: list[str]) -> dict:
    out = {}
    async with pool.connection() as conn:
        for table in ("checkpoints", "checkpoint_writes", "checkpoint_blobs"):
            cur = await conn.execute(f"SELECT count(*) AS n FROM {table} WHERE thread_id = ANY(%s)", (jobs,))
            out[table] = round((await cur.fetchone())["n"] / len(jobs), 2)
    return out


async def main(args) -> dict:
    from eco2.services.dataplane.embedded import EmbeddedDataPlane

    root = Path(tempfile.mkdtemp(prefix="eco2-bench-checkpoints-", dir="/tmp"))
    root.chmod(0o755)
    plane = EmbeddedDataPlane(root / "data")
    info = plane.start()
    try:
        pool = await open_pool(info.database_url, max_size=20)
        await AsyncPostgresSaver(pool).setup()
        morph.warm()
        deps = ChatDeps(kb=kb.load(), llm=OfflineLLM(compose), policy=PolicyRunner())
        names = NAMES
        for name in names:  # warm-up: imports, prepared plans, the analyser's caches
            await turns(compiled(name, pool), deps, 20, args.concurrency)
        cpu: dict[str, list[float]] = {n: [] for n in names}
        pg: dict[str, list[float]] = {n: [] for n in names}
        rows: dict[str, dict] = {}
        me = psutil.Process()
        for _ in range(args.rounds):
            for name in names:
                graph = compiled(name, pool)
                c0, p0 = sum(me.cpu_times()[:2]), tree_cpu_s(info.pg_pid)
                jobs = await turns(graph, deps, args.turns, args.concurrency)
                while graph.checkpointer is not None and getattr(graph.checkpointer, "_flushes", None):
                    await asyncio.gather(*graph.checkpointer._flushes.values())
                cpu[name].append((sum(me.cpu_times()[:2]) - c0) * 1000 / args.turns)
                pg[name].append((tree_cpu_s(info.pg_pid) - p0) * 1000 / args.turns)
                rows[name] = await rows_per_turn(pool, jobs)
        await pool.close()
    finally:
        plane.stop()
        shutil.rmtree(root, ignore_errors=True)
    out: dict = {
        "bench": "checkpoints",
        "machine": f"{platform.node()} {os.cpu_count()} cpu",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "turns": args.turns,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    for name in names:
        out[name] = {
            "process_cpu_ms_per_turn": round(statistics.median(cpu[name]), 2),
            "postgres_cpu_ms_per_turn": round(statistics.median(pg[name]), 2),
            "rows_per_turn": rows[name],
        }
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
