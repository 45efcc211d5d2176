"""What recording spans costs on the chat path: CPU per conversation with spans off (the
runtime's light W3C propagation) and on (ECO2_OTEL_TRACES_EXPORTER=console: OpenTelemetry's gRPC
interceptors, chat.turn / node.* / model.* spans, batched export), in one run.

    python bench/tracing.py [--conversations 40] [--rounds 5]

Starts its own embedded data plane (temp dir under /tmp, mode 0755), `eco2 serve auth`, and two
stacks of `eco2 serve events`, `character` and `chat` (offline model) — one with spans off, one
with spans on, each on its own Valkey database so neither router sees the other's events. Rounds
of N concurrent StreamChat conversations alternate between the stacks; the CPU (user + system)
of each stack's three processes over its rounds, divided by its conversations, is the figure.
The spans exported are counted in the traced processes' logs. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpc_ceiling import free_port, stop_process, wait_serving  # noqa: E402

from eco2.chat.v1 import chat_pb2, chat_pb2_grpc  # noqa: E402
from eco2.events.v1 import events_pb2  # noqa: E402
from eco2.services.runtime.dev_identity import dev_wristband  # noqa: E402
from eco2.services.runtime.identity import IDENTITY_KEY  # noqa: E402

QUESTIONS = [
    "투명 페트병은 어떻게 버려?",
    "다 쓴 건전지는 어디에 버려?",
    "우유팩 버리는 법 알려줘",
    "캔은 어떻게 버려?",
]
#: One line of the console exporter's JSON per span.
SPAN_MARK = '"kind": "SpanKind.'


def serve(name: str, env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    penv = {**os.environ, **env, "ECO2_GRPC_PORT": str(port), "ECO2_METRICS_PORT": "0", "ECO2_LOG_LEVEL": "WARNING"}
    return subprocess.Popen(
        [sys.executable, "-m", "eco2.services.cli", "serve", name],
        env=penv,
        start_new_session=True,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def with_db(redis_url: str, db: int) -> str:
    parts = urlsplit(redis_url)
    return urlunsplit(parts._replace(path=f"/{db}"))


async def start_stack(arm: str, base: dict[str, str], root: Path) -> dict:
    """events, character and chat of one arm, started one after the other (chat migrates)."""
    env = {**base, "ECO2_OTEL_TRACES_EXPORTER": "console" if arm == "traced" else "none"}
    procs, ports = {}, {}
    for name in ("events", "character", "chat"):
        ports[name] = free_port()
        if name == "chat":
            env = {
                **env,
                "ECO2_EVENTS_ADDR": f"127.0.0.1:{ports['events']}",
                "ECO2_CHARACTER_ADDR": f"127.0.0.1:{ports['character']}",
                "ECO2_LOCATION_ADDR": "127.0.0.1:1",
                "ECO2_IMAGES_ADDR": "127.0.0.1:1",
                "ECO2_CHAT_MODEL": "offline",
                "ECO2_CHAT_JOB_KIND": f"bench-{arm}",
                "ECO2_CHAT_STREAM_TIMEOUT_S": "600",
            }
        procs[name] = serve(name, env, ports[name], root / f"{arm}-{name}.log")
        await wait_serving(ports[name], procs[name], timeout=120)
    return {
        "arm": arm,
        "procs": procs,
        "chat": f"127.0.0.1:{ports['chat']}",
        "cpu": [psutil.Process(p.pid) for p in procs.values()],
    }


async def one_turn(stub, text: str, metadata) -> tuple[bool, float]:
    started = time.monotonic()
    async for e in stub.StreamChat(chat_pb2.StreamChatRequest(message=text), metadata=metadata, timeout=300):
        if e.kind in (events_pb2.EVENT_KIND_DONE, events_pb2.EVENT_KIND_ERROR):
            return e.kind == events_pb2.EVENT_KIND_DONE, time.monotonic() - started
    return False, time.monotonic() - started


def cpu_s(processes: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in processes)


async def run_round(stack: dict, stub, n: int, metadata, round_no: int) -> dict:
    before = cpu_s(stack["cpu"])
    results = await asyncio.gather(
        *(one_turn(stub, f"{QUESTIONS[i % len(QUESTIONS)]} #{round_no}-{i}", metadata) for i in range(n))
    )
    return {
        "cpu_s": cpu_s(stack["cpu"]) - before,
        "done": sum(ok for ok, _ in results),
        "e2e": [t for ok, t in results if ok],
    }


async def main(args) -> dict:
    from eco2.services.dataplane.embedded import EmbeddedDataPlane

    root = Path(tempfile.mkdtemp(prefix="eco2-bench-tracing-", dir="/tmp"))
    root.chmod(0o755)
    plane = EmbeddedDataPlane(root / "data")
    info = plane.start()
    stacks: list[dict] = []
    auth = None
    try:
        base = {
            "DATABASE_URL": info.database_url,
            "REDIS_URL": info.redis_url,
            "ECO2_DEPLOYMENT": "embedded",
            "LC_ALL": "C.UTF-8",
        }
        auth_port = free_port()
        auth = serve("auth", {**base, "ECO2_AUTH_RATE_LIMIT_PER_S": "0"}, auth_port, root / "auth.log")
        await wait_serving(auth_port, auth, timeout=120)
        base["ECO2_AUTH_ADDR"] = f"127.0.0.1:{auth_port}"
        for db, arm in enumerate(("plain", "traced"), start=1):
            stacks.append(await start_stack(arm, {**base, "REDIS_URL": with_db(info.redis_url, db)}, root))
        metadata = ((IDENTITY_KEY, await dev_wristband(base["ECO2_AUTH_ADDR"], "bench-tracing")),)
        channels = {s["arm"]: grpc.aio.insecure_channel(s["chat"]) for s in stacks}
        stubs = {arm: chat_pb2_grpc.ChatServiceStub(ch) for arm, ch in channels.items()}
        for s in stacks:  # warm-up: imports, pools, caches
            await run_round(s, stubs[s["arm"]], 4, metadata, 0)
        rounds: dict[str, list[dict]] = {"plain": [], "traced": []}
        for r in range(1, args.rounds + 1):
            for s in stacks if r % 2 else stacks[::-1]:  # alternate which arm goes first
                rounds[s["arm"]].append(await run_round(s, stubs[s["arm"]], args.conversations, metadata, r))
        for ch in channels.values():
            await ch.close()
    finally:
        for s in stacks:
            for p in s["procs"].values():
                stop_process(p)  # SIGTERM: the traced processes flush their last spans
        if auth is not None:
            stop_process(auth)
        plane.stop()
    spans = sum(
        (root / f"traced-{name}.log").read_text(errors="replace").count(SPAN_MARK)
        for name in ("events", "character", "chat")
    )
    out: dict = {
        "bench": "tracing",
        "machine": f"{platform.node()} {os.cpu_count()} cpu",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "conversations_per_round": args.conversations,
        "rounds": args.rounds,
    }
    for arm, rs in rounds.items():
        n = sum(r["done"] for r in rs)
        per_round = [r["cpu_s"] * 1000 / max(1, r["done"]) for r in rs]
        e2e = sorted(t for r in rs for t in r["e2e"])
        out[arm] = {
            "done": n,
            "of": args.conversations * args.rounds,
            "cpu_ms_per_conversation": round(sum(r["cpu_s"] for r in rs) * 1000 / max(1, n), 2),
            "cpu_ms_per_conversation_by_round": [round(x, 2) for x in per_round],
            "e2e_ms_p50": round(statistics.median(e2e) * 1000, 1) if e2e else None,
        }
    plain, traced = out["plain"]["cpu_ms_per_conversation"], out["traced"]["cpu_ms_per_conversation"]
    out["tracing_cpu_ms_per_conversation"] = round(traced - plain, 2)
    out["tracing_cpu_pct"] = round(100 * (traced - plain) / plain, 1) if plain else None
    conversations = 4 + args.conversations * args.rounds
    out["spans_per_conversation"] = round(spans / conversations, 1)
    out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        out["dir"] = str(root)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=40, help="concurrent conversations per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per arm (interleaved)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir (the processes' logs, the exported spans)"
    )
    print(json.dumps(asyncio.run(main(parser.parse_args())), ensure_ascii=False))
