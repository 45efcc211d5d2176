"""Benchmark of the chat agent: N concurrent conversations through one chat process and the
EventService against a fake streaming model, and one offline turn to DONE.

    python bench/chat.py [--conversations 1000] [--offline-turns 20]

Starts its own embedded data plane (temp dir under /tmp, mode 0755), a fake OpenAI-compatible
model server (tests/support/fake_llm.py: first token after 200 ms, then one token per 20 ms,
100 tokens), `eco2 serve auth` (job wristbands), `events`, `character` and `chat` processes on
127.0.0.1, every service trusting this bench's wristband key (ECO2_IDENTITY_JWKS) as tests pin
theirs; prints one JSON line and stops everything.

Measured per conversation (client: StreamChat on the chat process):
    e2e          send → DONE on the client
    model        the model's own time, measured by the fake server for that conversation (its
                 streaming call from request to last token, plus the LLM grader's call)
    overhead     e2e − model  (target p95 ≤ 150 ms)
    added TTFT   (send → first TOKEN on the client) − (request → first token at the model)
                 (target p95 ≤ 50 ms)
    CPU          user+system CPU per conversation of chat, events, the fake model, the client,
                 PostgreSQL and Valkey (their process trees); `server_cpu_ms_per_conversation`
                 = chat + events + Valkey + PostgreSQL
Offline: one turn at a time, send → DONE, the offline provider (target p50 ≤ 300 ms).

Cancel (`--cancels N`): an API-only `eco2 serve chat` and a workers-only one (the cancel travels
to another process), the same fake model; N turns, `--cancel-concurrency` at a time, each
cancelled (interrupt and rollback in turn) once its third TOKEN event arrived:
    cancel latency   CancelRun sent → the run's terminal ERROR (RUN_CANCELLED / RUN_ROLLED_BACK)
                     on the client's EventService.Subscribe
    reply latency    CancelRun sent → its reply (it waits until the cancel is carried out)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
import jwt
import psutil
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpc_ceiling import free_port, stop_process, wait_serving  # noqa: E402

from eco2.chat.v1 import chat_pb2, chat_pb2_grpc  # noqa: E402
from eco2.events.v1 import events_pb2, events_pb2_grpc  # noqa: E402
from eco2.services.runtime.identity import IDENTITY_KEY  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIRST_TOKEN_MS, TOKEN_MS, TOKENS = 200, 20, 100
KEY = ec.generate_private_key(ec.SECP256R1())
KID = "bench-chat"


def jwks() -> str:
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(KEY.public_key()))
    return json.dumps({"keys": [{**jwk, "kid": KID, "alg": "ES256", "use": "sig"}]})


def wristband(user: str) -> tuple[tuple[str, str], ...]:
    """The identity the edge would inject for `user` (what chat and events act on)."""
    now = int(time.time())
    claims = {
        "iss": "eco2-auth",
        "aud": "eco2-mesh",
        "typ": "identity",
        "sub": user,
        "roles": ["user"],
        "provider": "dev",
        "iat": now,
        "exp": now + 3600,
    }
    return ((IDENTITY_KEY, jwt.encode(claims, KEY, algorithm="ES256", headers={"kid": KID})),)


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))], 1)


def tree_cpu_s(pid: int) -> float:
    """User+system CPU seconds of a server and its worker processes (PostgreSQL's backends): the
    live ones, plus those it has reaped."""
    try:
        proc = psutil.Process(pid)
        t = proc.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in proc.children(recursive=True):
            try:
                c = child.cpu_times()
                total += c.user + c.system
            except psutil.NoSuchProcess:
                pass
        return total
    except psutil.NoSuchProcess:
        return 0.0


def start_fake_model(
    log: Path | None, *, first_token_ms: int = FIRST_TOKEN_MS, token_ms: int = TOKEN_MS
) -> tuple[subprocess.Popen, int]:
    """tests/support/fake_llm.py on a free port, streaming TOKENS pieces; returns once it listens."""
    port = free_port()
    fake = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tests" / "support" / "fake_llm.py"),
            "--port",
            str(port),
            "--first-token-ms",
            str(first_token_ms),
            "--token-ms",
            str(token_ms),
            "--tokens",
            str(TOKENS),
        ],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=log.open("ab") if log is not None else subprocess.DEVNULL,
    )
    fake.stdout.readline()  # {"port": ...} once listening
    return fake, port


def serve(name: str, env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    penv = {**os.environ, **env, "ECO2_GRPC_PORT": str(port), "ECO2_METRICS_PORT": "0", "ECO2_LOG_LEVEL": "WARNING"}
    profile = ["-m", "cProfile", "-o", str(log.with_suffix(".prof"))] if os.environ.get("BENCH_PROFILE") == name else []
    return subprocess.Popen(
        [sys.executable, *profile, "-m", "eco2.services.cli", "serve", name],
        env=penv,
        start_new_session=True,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def one_turn(stub, text: str, user: str, events=None) -> dict:
    """One conversation turn: StreamChat on the chat process, or (events = an EventService stub)
    SendMessage + EventService.Subscribe, the client path that does not relay through chat."""
    out: dict = {"ok": False, "tokens": 0, "events": 0}
    md = wristband(user)
    started = time.monotonic()
    try:
        if events is None:
            stream = stub.StreamChat(chat_pb2.StreamChatRequest(message=text), metadata=md, timeout=300)
        else:
            sent = await stub.SendMessage(chat_pb2.SendMessageRequest(message=text), metadata=md, timeout=300)
            # a job streams to its owner only: subscribe as the user who sent it
            stream = events.Subscribe(
                events_pb2.SubscribeRequest(job_id=sent.job_id, after_seq=0), metadata=md, timeout=300
            )
        async for e in stream:
            out["events"] += 1
            if e.kind == events_pb2.EVENT_KIND_TOKEN:
                out["tokens"] += 1
                out.setdefault("first_token", time.monotonic() - started)
            elif e.kind == events_pb2.EVENT_KIND_DONE:
                out["ok"] = True
                out["e2e"] = time.monotonic() - started
                result = chat_pb2.ChatResult()
                out["character"] = e.done.result.Unpack(result) and bool(result.character.code)
            elif e.kind == events_pb2.EVENT_KIND_ERROR:
                out["error"] = e.error.reason
            if e.kind in (events_pb2.EVENT_KIND_DONE, events_pb2.EVENT_KIND_ERROR):
                break
    except grpc.aio.AioRpcError as exc:
        out["error"] = exc.code().name
    return out


async def offline_phase(base_env: dict, root: Path, turns: int) -> dict:
    port = free_port()
    proc = serve(
        "chat",
        {**base_env, "ECO2_CHAT_MODEL": "offline", "ECO2_CHAT_JOB_KIND": "bench-offline"},
        port,
        root / "chat-offline.log",
    )
    try:
        await wait_serving(port, proc, timeout=90)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = chat_pb2_grpc.ChatServiceStub(ch)
            await one_turn(stub, "캔은 어떻게 버려?", "bench-warmup")  # warm-up (imports, pools)
            results = [
                await one_turn(stub, q, f"bench-off-{i}")
                for i, q in zip(
                    range(turns),
                    [
                        "투명 페트병은 어떻게 버려?",
                        "건전지는 어디에 버려?",
                        "우유팩 버리는 법 알려줘",
                        "신문지 시세 얼마야?",
                    ]
                    * turns,
                )
            ]
    finally:
        stop_process(proc)
    e2e = [r["e2e"] * 1000 for r in results if r["ok"]]
    return {
        "offline_turns": turns,
        "offline_done": len(e2e),
        "offline_p50_ms": pct(e2e, 50),
        "offline_p95_ms": pct(e2e, 95),
        "offline_with_character": sum(1 for r in results if r.get("character")),
    }


async def load_phase(
    base_env: dict,
    root: Path,
    n: int,
    channels: int,
    durability: str,
    tokens_per_event: int | None,
    intent_mode: str,
    events_proc: subprocess.Popen,
    client: str,
    events_port: int,
    data_pids: dict[str, int] | None = None,
) -> dict:
    fake, fake_port = start_fake_model(root / "fake.log")
    port = free_port()
    env = {
        **base_env,
        "ECO2_CHAT_MODEL": "gpt-5-mini",
        "ECO2_OPENAI_API_KEY": "sk-bench",
        "ECO2_OPENAI_BASE_URL": f"http://127.0.0.1:{fake_port}/v1",
        "ECO2_CHAT_JOB_KIND": "bench-load",
        "ECO2_CHAT_WORKERS": str(max(64, n)),
        "ECO2_CHAT_CLAIMERS": "8",
        "ECO2_CHAT_PG_POOL_MAX": "40",
        "ECO2_CHAT_STREAM_TIMEOUT_S": "600",
        "ECO2_CHAT_CHECKPOINT_DURABILITY": durability,
    }
    if tokens_per_event:
        env["ECO2_CHAT_TOKENS_PER_EVENT"] = str(tokens_per_event)
    if intent_mode:
        env["ECO2_CHAT_INTENT_MODE"] = intent_mode
    proc = serve("chat", env, port, root / "chat-load.log")
    try:
        await wait_serving(port, proc, timeout=90)
        chans = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(channels)]
        stubs = [chat_pb2_grpc.ChatServiceStub(c) for c in chans]
        echans = (
            [grpc.aio.insecure_channel(f"127.0.0.1:{events_port}") for _ in range(channels)]
            if client == "subscribe"
            else []
        )
        estubs = [events_pb2_grpc.EventServiceStub(c) for c in echans] or [None] * channels
        await one_turn(stubs[0], "캔은 어떻게 버려? #warmup0", "bench-warmup", estubs[0])
        markers = [f"c{uuid.uuid4().hex[:10]}" for _ in range(n)]
        cpu = {name: psutil.Process(p.pid) for name, p in (("chat", proc), ("events", events_proc), ("model", fake))}
        cpu0 = {name: sum(p.cpu_times()[:2]) for name, p in cpu.items()}
        data0 = {name: tree_cpu_s(pid) for name, pid in (data_pids or {}).items()}
        client0 = sum(psutil.Process().cpu_times()[:2])
        started = time.monotonic()
        results = await asyncio.gather(
            *(
                one_turn(stubs[i % channels], f"투명 페트병은 어떻게 버려? #{m}", f"bench-{i}", estubs[i % channels])
                for i, m in enumerate(markers)
            )
        )
        wall = time.monotonic() - started
        cpu_ms = {
            f"{name}_cpu_ms_per_conversation": round((sum(p.cpu_times()[:2]) - cpu0[name]) * 1000 / n, 1)
            for name, p in cpu.items()
        }
        cpu_ms.update(
            {
                f"{name}_cpu_ms_per_conversation": round((tree_cpu_s(pid) - data0[name]) * 1000 / n, 1)
                for name, pid in (data_pids or {}).items()
            }
        )
        if data_pids:  # what the target counts: chat + events + Valkey + PostgreSQL
            cpu_ms["server_cpu_ms_per_conversation"] = round(
                sum(cpu_ms[f"{k}_cpu_ms_per_conversation"] for k in ("chat", "events", *data_pids)), 1
            )
        cpu_ms["client_cpu_ms_per_conversation"] = round(
            (sum(psutil.Process().cpu_times()[:2]) - client0) * 1000 / n, 1
        )
        for c in chans + echans:
            await c.close()
        with urllib.request.urlopen(f"http://127.0.0.1:{fake_port}/_timings", timeout=30) as r:
            timings = json.loads(r.read())
    finally:
        stop_process(proc)
        stop_process(fake)
    overhead, added_ttft, model_ms, e2e_ms = [], [], [], []
    for m, r in zip(markers, results):
        calls = timings.get(m) or []
        if not r["ok"] or not calls:
            continue
        stream = max(calls, key=lambda c: (c["end"] or c["start"]) - c["start"])  # the answer stream is the long call
        model = sum((c["end"] or c["start"]) - c["start"] for c in calls)
        model_ms.append(model * 1000)
        e2e_ms.append(r["e2e"] * 1000)
        overhead.append((r["e2e"] - model) * 1000)
        if "first_token" in r and stream["first"] is not None:
            added_ttft.append((r["first_token"] - (stream["first"] - stream["start"])) * 1000)
    done = sum(1 for r in results if r["ok"])
    errors: dict[str, int] = {}
    for r in results:
        if not r["ok"]:
            errors[r.get("error", "no DONE")] = errors.get(r.get("error", "no DONE"), 0) + 1
    return {
        "conversations": n,
        "complete_pct": round(100 * done / n, 2),
        "errors": errors,
        "wall_s": round(wall, 2),
        "with_character_pct": round(100 * sum(1 for r in results if r.get("character")) / n, 2),
        "tokens_per_answer": TOKENS,
        "events_per_conversation": round(sum(r["events"] for r in results) / n, 1),
        "token_events_per_conversation": round(sum(r["tokens"] for r in results) / n, 1),
        "model_ms_p50": pct(model_ms, 50),
        "e2e_ms_p50": pct(e2e_ms, 50),
        "e2e_ms_p95": pct(e2e_ms, 95),
        "overhead_ms_p50": pct(overhead, 50),
        "overhead_ms_p95": pct(overhead, 95),
        "overhead_ms_max": pct(overhead, 100),
        "added_ttft_ms_p50": pct(added_ttft, 50),
        "added_ttft_ms_p95": pct(added_ttft, 95),
        "client": client,
        "durability": durability,
        "tokens_per_event": tokens_per_event or "default",
        "intent_mode": intent_mode or "default",
        "event_loop": os.environ.get("ECO2_EVENT_LOOP", "default"),
        **cpu_ms,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "targets": {"complete_pct": 100, "overhead_ms_p95": 150, "added_ttft_ms_p95": 50},
    }


async def cancel_phase(base_env: dict, root: Path, n: int, concurrency: int, events_port: int) -> dict:
    fake, fake_port = start_fake_model(root / "fake.log")
    env = {
        **base_env,
        "ECO2_CHAT_MODEL": "gpt-5-mini",
        "ECO2_OPENAI_API_KEY": "sk-bench",
        "ECO2_OPENAI_BASE_URL": f"http://127.0.0.1:{fake_port}/v1",
        "ECO2_CHAT_JOB_KIND": "bench-cancel",
        "ECO2_CHAT_INTENT_MODE": "rules",
    }
    api_port, worker_port = free_port(), free_port()
    interrupt, rollback = chat_pb2.CANCEL_MODE_INTERRUPT, chat_pb2.CANCEL_MODE_ROLLBACK
    api = serve("chat", {**env, "ECO2_CHAT_WORKERS": "0"}, api_port, root / "chat-cancel-api.log")
    worker = None
    try:
        await wait_serving(api_port, api, timeout=90)  # it applies the migrations; the worker starts after it
        worker = serve("chat", {**env, "ECO2_CHAT_WORKERS": "64"}, worker_port, root / "chat-cancel-worker.log")
        await wait_serving(worker_port, worker, timeout=90)
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{api_port}") as ch,
            grpc.aio.insecure_channel(f"127.0.0.1:{events_port}") as ech,
        ):
            chat, events = chat_pb2_grpc.ChatServiceStub(ch), events_pb2_grpc.EventServiceStub(ech)
            await one_turn(chat, "캔은 어떻게 버려?", "bench-cancel-warmup", events)
            slots = asyncio.Semaphore(concurrency)

            async def one(i: int) -> dict:
                mode = interrupt if i % 2 == 0 else rollback
                md = wristband(f"bench-cancel-{i}")
                out: dict = {"mode": mode, "ok": False}
                async with slots:
                    sent = await chat.SendMessage(
                        chat_pb2.SendMessageRequest(message="투명 페트병은 어떻게 버려?"), metadata=md, timeout=60
                    )
                    tokens, asked, reply = 0, 0.0, None

                    async def cancel() -> float:
                        await chat.CancelRun(
                            chat_pb2.CancelRunRequest(job_id=sent.job_id, mode=mode), metadata=md, timeout=60
                        )
                        return time.monotonic()

                    async for e in events.Subscribe(
                        events_pb2.SubscribeRequest(job_id=sent.job_id), metadata=md, timeout=120
                    ):
                        if e.kind == events_pb2.EVENT_KIND_TOKEN:
                            tokens += 1
                            if tokens == 3:
                                asked = time.monotonic()
                                reply = asyncio.ensure_future(cancel())
                        elif e.kind in (events_pb2.EVENT_KIND_DONE, events_pb2.EVENT_KIND_ERROR):
                            ended = time.monotonic()
                            out["reason"] = e.error.reason or "DONE"
                            break
                    if reply is not None:
                        out["terminal_ms"] = (ended - asked) * 1000
                        out["reply_ms"] = (await reply - asked) * 1000
                        out["ok"] = out["reason"] == ("RUN_CANCELLED" if mode == interrupt else "RUN_ROLLED_BACK")
                return out

            results = await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        for p in (api, worker, fake):
            if p is not None:
                stop_process(p)

    def figures(rs: list[dict], name: str) -> dict:
        terminal, reply = [r["terminal_ms"] for r in rs if r["ok"]], [r["reply_ms"] for r in rs if r["ok"]]
        return {
            f"{name}_ms_p50": pct(terminal, 50),
            f"{name}_ms_p99": pct(terminal, 99),
            f"{name}_reply_ms_p50": pct(reply, 50),
            f"{name}_reply_ms_p99": pct(reply, 99),
        }

    return {
        "cancels": n,
        "cancel_concurrency": concurrency,
        "cancels_ok": sum(1 for r in results if r["ok"]),
        "cancel_outcomes": sorted({r.get("reason", "none") for r in results}),
        **figures(results, "cancel"),
        **figures([r for r in results if r["mode"] == interrupt], "cancel_interrupt"),
        **figures([r for r in results if r["mode"] == rollback], "cancel_rollback"),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def sdk_floor(n: int) -> dict:
    """Client CPU of one streamed model answer through the OpenAI adapter alone (the answer node's
    call), n concurrent, against the fake in another process with no pacing: the cheapest case,
    a floor for a chat process's CPU per conversation."""
    import uvloop

    from eco2.services.llm.openai_adapter import OpenAILLM
    from eco2.services.llm.ports import Message, ModelInfo

    fake, port = start_fake_model(None, first_token_ms=0, token_ms=0)

    async def run() -> float:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        info = ModelInfo(
            name="gpt-5-mini",
            provider="openai",
            context_window=128000,
            capabilities=frozenset(),
            max_output=4096,
            summary_threshold=10000,
        )
        llm = OpenAILLM(info, api_key="sk-bench", base_url=f"http://127.0.0.1:{port}/v1")
        msgs = [Message("system", "너는 분리배출 도우미야. " * 40), Message("user", "투명 페트병은 어떻게 버려?")]

        async def one() -> None:
            async for _ in llm.stream(msgs):
                pass

        await asyncio.gather(*(one() for _ in range(n)))  # warm-up: connections, first-call caches
        t0 = time.process_time()
        await asyncio.gather(*(one() for _ in range(n)))
        cpu = (time.process_time() - t0) / n
        await llm.aclose()
        return cpu

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            cpu = runner.run(run())
    finally:
        stop_process(fake)
    return {"sdk_floor_concurrent": n, "sdk_floor_cpu_ms_per_answer": round(cpu * 1000, 2)}


async def main(args) -> dict:
    from eco2.services.dataplane.embedded import EmbeddedDataPlane

    root = Path(tempfile.mkdtemp(prefix="eco2-bench-chat-", dir="/tmp"))
    root.chmod(0o755)
    plane = EmbeddedDataPlane(root / "data")
    info = plane.start()
    procs: list[subprocess.Popen] = []
    try:
        events_port, auth_port = free_port(), free_port()
        base = {
            "DATABASE_URL": info.database_url,
            "REDIS_URL": info.redis_url,
            "ECO2_DEPLOYMENT": "embedded",
            "LC_ALL": "C.UTF-8",
            "ECO2_IDENTITY_JWKS": jwks(),
            "ECO2_AUTH_ADDR": f"127.0.0.1:{auth_port}",
        }
        procs.append(serve("auth", base, auth_port, root / "auth.log"))  # chat asks it for each job's wristband
        await wait_serving(auth_port, procs[-1], timeout=90)
        events_proc = serve("events", base, events_port, root / "events.log")
        procs.append(events_proc)
        await wait_serving(events_port, procs[-1], timeout=90)
        # a waste answer carries its category's character (CharacterService, cached by chat)
        character_port = free_port()
        character = serve("character", base, character_port, root / "character.log")
        procs.append(character)
        await wait_serving(character_port, character, timeout=90)
        base = {
            **base,
            "ECO2_EVENTS_ADDR": f"127.0.0.1:{events_port}",
            "ECO2_CHARACTER_ADDR": f"127.0.0.1:{character_port}",
            "ECO2_LOCATION_ADDR": "127.0.0.1:1",
            "ECO2_IMAGES_ADDR": "127.0.0.1:1",
        }
        out: dict = {
            "bench": "chat",
            "machine": f"{platform.node()} {os.cpu_count()} cpu",
            "date": time.strftime("%Y-%m-%d"),
        }
        if args.offline_turns:
            out.update(await offline_phase(base, root, args.offline_turns))
        if args.cancels:
            out.update(await cancel_phase(base, root, args.cancels, args.cancel_concurrency, events_port))
        if args.conversations:
            out.update(
                await load_phase(
                    base,
                    root,
                    args.conversations,
                    args.channels,
                    args.durability,
                    args.tokens_per_event,
                    args.intent_mode,
                    events_proc,
                    args.client,
                    events_port,
                    {"postgres": info.pg_pid, "valkey": info.valkey_pid},
                )
            )
        return out
    finally:
        for p in procs:
            stop_process(p)
        plane.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=1000, help="concurrent conversations (0 = skip)")
    parser.add_argument("--offline-turns", type=int, default=20, help="sequential offline turns (0 = skip)")
    parser.add_argument("--channels", type=int, default=4, help="client gRPC channels")
    parser.add_argument(
        "--cancels", type=int, default=0, help="turns cancelled mid-answer, for the cancel latency (0 = skip)"
    )
    parser.add_argument("--cancel-concurrency", type=int, default=10, help="cancelled turns in flight at once")
    parser.add_argument(
        "--durability",
        default="sync",
        choices=["sync", "async", "exit"],
        help="ECO2_CHAT_CHECKPOINT_DURABILITY of the chat process",
    )
    parser.add_argument(
        "--tokens-per-event",
        type=int,
        default=0,
        help="ECO2_CHAT_TOKENS_PER_EVENT of the chat process (0 = its default)",
    )
    parser.add_argument(
        "--sdk-floor",
        type=int,
        default=0,
        help="only measure the OpenAI adapter's client CPU per streamed answer, N concurrent (no servers)",
    )
    parser.add_argument(
        "--intent-mode",
        default="",
        choices=["", "rules", "model", "auto"],
        help="ECO2_CHAT_INTENT_MODE of the chat process ('' = its default)",
    )
    parser.add_argument(
        "--client",
        default="stream",
        choices=["stream", "subscribe"],
        help="StreamChat on chat, or SendMessage + EventService.Subscribe",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temp dir (logs; with BENCH_PROFILE=chat a cProfile of the chat process)",
    )
    args = parser.parse_args()
    if args.sdk_floor:
        print(
            json.dumps(
                {"bench": "chat-sdk-floor", "date": time.strftime("%Y-%m-%d"), **sdk_floor(args.sdk_floor)},
                ensure_ascii=False,
            )
        )
    else:
        print(json.dumps(asyncio.run(main(args)), ensure_ascii=False))
