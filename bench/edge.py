"""Edge benchmark: gRPC-Web unary through the gateway vs direct gRPC, and many idle SSE clients.

    python bench/edge.py                       # full run: 5,000 SSE clients for 300 s
    python bench/edge.py --sse-clients 1000 --sse-seconds 20 --unary-seconds 5   # quick run
    python bench/edge.py --skip-unary --skip-sse                                # the catch-up run only

Starts its own embedded data plane (temp dir under /tmp, mode 0755) and the character,
events and gateway services as `python -m eco2.services.cli serve NAME` processes on
127.0.0.1 (gateway in mesh auth mode: this measures translation, not ext-authz). Prints one
JSON line.

unary: the same GetCharacter on the same character process, for the same time with the same
concurrency: (a) grpc.aio straight to it, (b) gRPC-Web over HTTP/1.1 keep-alive through the
gateway (a lean asyncio client). ratio = b / a.
sse: N clients each hold GET /v1/jobs/{job}/events open (jobs shared by 100 clients each); a
producer publishes one TOKEN per job every `--sse-interval` s, then DONE; every client must
receive every event. rss_per_client_kb = (gateway RSS with N idle clients − RSS before) / N.
sse_catchup: `--catchup-clients` clients (one user each: nothing shared) each read a finished job
of their own of `--catchup-events` events from the start at once, as after a reconnect storm; events/s and CPU
per delivered event of the gateway and the events process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpc_ceiling import free_port  # noqa: E402

from eco2.character.v1 import character_pb2, character_pb2_grpc  # noqa: E402
from eco2.events.v1 import events_pb2 as E  # noqa: E402


def wait_grpc(addr: str, timeout: float = 60) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(addr) as ch:
        while time.monotonic() < deadline:
            try:
                if health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise RuntimeError(f"{addr} not serving")


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not serving")


# --- unary -----------------------------------------------------------------------------------


async def direct_unary(addr: str, seconds: float, concurrency: int) -> dict:
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = character_pb2_grpc.CharacterServiceStub(ch)
        req = character_pb2.GetCharacterRequest(code="char-eco")
        await stub.GetCharacter(req)
        count, errors = 0, 0
        end = time.monotonic() + seconds

        async def worker():
            nonlocal count, errors
            while time.monotonic() < end:
                try:
                    await stub.GetCharacter(req, metadata=(("x-eco2-user-id", "bench"),))
                    count += 1
                except grpc.RpcError:
                    errors += 1

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return {"rps": round(count / (time.monotonic() - t0)), "errors": errors}


async def gateway_unary(port: int, seconds: float, concurrency: int) -> dict:
    msg = character_pb2.GetCharacterRequest(code="char-eco").SerializeToString()
    body = struct.pack(">BI", 0, len(msg)) + msg
    request = (
        b"POST /eco2.character.v1.CharacterService/GetCharacter HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        b"content-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\nx-eco2-user-id: bench\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    count, errors = 0, 0
    end = time.monotonic() + seconds

    async def read_response(reader) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        length = None
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        payload = await reader.readexactly(length) if length is not None else b""
        return head.startswith(b"HTTP/1.1 200") and b"grpc-status: 0" in payload and len(payload) > 20

    async def worker():
        nonlocal count, errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < end:
                writer.write(request)
                if await read_response(reader):
                    count += 1
                else:
                    errors += 1
        finally:
            writer.close()

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"rps": round(count / (time.monotonic() - t0)), "errors": errors}


# --- SSE -------------------------------------------------------------------------------------


async def sse_run(port: int, redis_url: str, gw_pid: int, clients: int, seconds: float, interval: float) -> dict:
    from eco2.services.bus.producer import EventPublisher
    from eco2.services.dataplane.urls import create_redis

    redis = create_redis(redis_url)
    pub = EventPublisher(redis)
    run = os.urandom(4).hex()
    jobs = [f"job-bench-{run}-{i}" for i in range(max(1, clients // 100))]
    for job in jobs:
        await pub.set_owner(job, "bench")  # every client reads as the user "bench": a job streams to its owner only
        await pub.publish(E.Event(job_id=job, seq=1, kind=E.EVENT_KIND_STAGE, stage=E.STAGE_QUEUED))
    gw = psutil.Process(gw_pid)
    rss_before = gw.memory_info().rss
    received = [0] * clients
    finished = [False] * clients
    connected = 0
    all_connected = asyncio.Event()

    async def client(i: int):
        nonlocal connected
        job = jobs[i % len(jobs)]
        for attempt in range(20):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=16 * 1024)
                break
            except OSError:
                await asyncio.sleep(0.2 * (attempt + 1))
        else:
            return
        writer.write(
            f"GET /v1/jobs/{job}/events HTTP/1.1\r\nhost: 127.0.0.1\r\nx-eco2-user-id: bench\r\naccept: text/event-stream\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            writer.close()
            return
        connected += 1
        if connected == clients:
            all_connected.set()
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                if line.startswith(b"id: "):
                    received[i] += 1
                elif line.startswith(b"event: done"):
                    finished[i] = True
                    break
        finally:
            writer.close()

    t_connect = time.monotonic()
    tasks = [asyncio.ensure_future(client(i)) for i in range(clients)]
    # connect in waves so the listen backlog is not the thing measured
    try:
        await asyncio.wait_for(all_connected.wait(), 120)
    except TimeoutError:
        pass
    connect_s = time.monotonic() - t_connect
    await asyncio.sleep(2)
    rss_idle = gw.memory_info().rss
    cpu0 = gw.cpu_times()
    seq = 1
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        await asyncio.sleep(interval)
        seq += 1
        await asyncio.gather(
            *(pub.publish(E.Event(job_id=job, seq=seq, kind=E.EVENT_KIND_TOKEN, delta="t")) for job in jobs)
        )
    rss_peak = gw.memory_info().rss
    seq += 1
    await asyncio.gather(*(pub.publish(E.Event(job_id=job, seq=seq, kind=E.EVENT_KIND_DONE)) for job in jobs))
    await asyncio.wait(tasks, timeout=60)
    cpu1 = gw.cpu_times()
    for t in tasks:
        t.cancel()
    await redis.aclose()
    expected = seq  # events 1..seq per client
    complete = sum(1 for i in range(clients) if received[i] == expected and finished[i])
    return {
        "clients": clients,
        "connected": connected,
        "connect_s": round(connect_s, 1),
        "seconds": seconds,
        "events_per_client": expected,
        "clients_with_every_event": complete,
        "delivered_pct": round(100 * sum(received) / (expected * clients), 3),
        "rss_before_mb": round(rss_before / 2**20, 1),
        "rss_idle_mb": round(rss_idle / 2**20, 1),
        "rss_peak_mb": round(rss_peak / 2**20, 1),
        "rss_per_client_kb": round((rss_idle - rss_before) / clients / 1024, 1),
        "gateway_cpu_s": round((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system), 1),
    }


async def sse_catchup(port: int, redis_url: str, gw_pid: int, ev_pid: int, clients: int, events: int) -> dict:
    """`clients` browsers (each its own user, so no feed is shared) open the SSE stream of a
    finished job of `events` events of their own (a job streams to its owner only) from the
    start, all at once, as after a reconnect storm:
    every client must receive every event; CPU per delivered event of the gateway and of the
    events process."""
    from eco2.services.bus.producer import EventPublisher
    from eco2.services.dataplane.urls import create_redis

    redis = create_redis(redis_url)
    pub = EventPublisher(redis)
    run = os.urandom(4).hex()
    jobs = [f"job-catchup-{run}-{i}" for i in range(clients)]
    for i, job in enumerate(jobs):
        await pub.set_owner(job, f"catchup-{i}")
        for first in range(1, events, 500):
            await pub.publish_many(
                [
                    E.Event(job_id=job, seq=q, kind=E.EVENT_KIND_TOKEN, delta="토큰 ")
                    for q in range(first, min(events, first + 500))
                ]
            )
        await pub.publish(E.Event(job_id=job, seq=events, kind=E.EVENT_KIND_DONE))
    await redis.aclose()
    received = [0] * clients

    async def client(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        writer.write(
            f"GET /v1/jobs/{jobs[i]}/events HTTP/1.1\r\nhost: 127.0.0.1\r\nx-eco2-user-id: catchup-{i}\r\naccept: text/event-stream\r\n\r\n".encode()
        )
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                return
            while line := await reader.readline():
                if line.startswith(b"id: "):
                    received[i] += 1
                elif line.startswith(b"event: done"):
                    break
        finally:
            writer.close()

    gw, ev = psutil.Process(gw_pid), psutil.Process(ev_pid)
    cpu = lambda p: sum(p.cpu_times()[:2])  # noqa: E731
    g0, e0, t0 = cpu(gw), cpu(ev), time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(clients))), 300)
    wall = time.monotonic() - t0
    delivered = sum(received)
    return {
        "clients": clients,
        "events_per_client": events,
        "clients_with_every_event": sum(1 for r in received if r == events),
        "seconds": round(wall, 2),
        "events_per_s": round(delivered / wall),
        "gateway_cpu_us_per_event": round((cpu(gw) - g0) / max(1, delivered) * 1e6, 1),
        "events_cpu_us_per_event": round((cpu(ev) - e0) / max(1, delivered) * 1e6, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--unary-seconds", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--sse-clients", type=int, default=5000)
    ap.add_argument("--sse-seconds", type=float, default=300)
    ap.add_argument("--sse-interval", type=float, default=15)
    ap.add_argument("--skip-sse", action="store_true")
    ap.add_argument(
        "--catchup-clients",
        type=int,
        default=100,
        help="SSE clients catching up on one finished job at once (0 = skip)",
    )
    ap.add_argument("--catchup-events", type=int, default=1000, help="events of that job")
    ap.add_argument("--skip-unary", action="store_true")
    ap.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="event loop of the served processes (ECO2_EVENT_LOOP)",
    )
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.sse_clients * 2 + 1024)), hard))

    from eco2.services.dataplane.embedded import EmbeddedDataPlane

    tmp = Path(tempfile.mkdtemp(prefix="eco2-bench-edge-", dir="/tmp"))
    tmp.chmod(0o755)
    plane = EmbeddedDataPlane(tmp / "data")
    info = plane.start()
    procs: list[subprocess.Popen] = []
    try:
        ports = {n: free_port() for n in ("character", "events", "gateway")}
        env = {
            **os.environ,
            "DATABASE_URL": info.database_url,
            "REDIS_URL": info.redis_url,
            "ECO2_DEPLOYMENT": "embedded",
            "ECO2_DATA_DIR": str(tmp / "data"),
            "ECO2_LOG_LEVEL": "WARNING",
            "ECO2_METRICS_PORT": "0",
            "LC_ALL": "C.UTF-8",
            "ECO2_CHARACTER_ADDR": f"127.0.0.1:{ports['character']}",
            "ECO2_EVENTS_ADDR": f"127.0.0.1:{ports['events']}",
            "ECO2_GATEWAY_AUTH_MODE": "mesh",
            "ECO2_HTTP_PORT": str(ports["gateway"]),
            "ECO2_GATEWAY_SSE_KEEPALIVE_S": "15",
            "ECO2_EVENT_LOOP": args.loop,
        }
        for name in ("character", "events", "gateway"):
            child = dict(env, ECO2_GRPC_PORT=str(ports[name]))
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "eco2.services.cli", "serve", name],
                    env=child,
                    stdout=subprocess.DEVNULL,
                    stderr=open(tmp / f"{name}.log", "wb"),
                )
            )
        wait_grpc(f"127.0.0.1:{ports['character']}")
        wait_grpc(f"127.0.0.1:{ports['events']}")
        wait_http(f"http://127.0.0.1:{ports['gateway']}/healthz")

        async def go():
            character, gateway = psutil.Process(procs[0].pid), psutil.Process(procs[2].pid)

            def cpu(p):
                t = p.cpu_times()
                return t.user + t.system

            out: dict = {"bench": "edge", "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
            if args.catchup_clients:
                out["sse_catchup"] = await sse_catchup(
                    ports["gateway"],
                    info.redis_url,
                    procs[2].pid,
                    procs[1].pid,
                    args.catchup_clients,
                    args.catchup_events,
                )
            if args.skip_unary:
                return out
            c0 = cpu(character)
            direct = await direct_unary(f"127.0.0.1:{ports['character']}", args.unary_seconds, args.concurrency)
            c1, g1 = cpu(character), cpu(gateway)
            via = await gateway_unary(ports["gateway"], args.unary_seconds, args.concurrency)
            c2, g2 = cpu(character), cpu(gateway)
            n_direct = direct["rps"] * args.unary_seconds
            n_via = via["rps"] * args.unary_seconds
            out |= {
                "unary": {
                    "direct_grpc_rps": direct["rps"],
                    "grpc_web_via_gateway_rps": via["rps"],
                    "ratio": round(via["rps"] / max(1, direct["rps"]), 3),
                    "errors": direct["errors"] + via["errors"],
                    "concurrency": args.concurrency,
                    "seconds": args.unary_seconds,
                    # CPU per call (µs): robust to a busy machine, unlike rps
                    "upstream_cpu_us_per_call_direct": round((c1 - c0) / max(1, n_direct) * 1e6, 1),
                    "upstream_cpu_us_per_call_via": round((c2 - c1) / max(1, n_via) * 1e6, 1),
                    "gateway_cpu_us_per_call": round((g2 - g1) / max(1, n_via) * 1e6, 1),
                    "event_loop": args.loop,
                },
            }
            if not args.skip_sse:
                out["sse"] = await sse_run(
                    ports["gateway"],
                    info.redis_url,
                    procs[2].pid,
                    args.sse_clients,
                    args.sse_seconds,
                    args.sse_interval,
                )
            return out

        print(json.dumps(asyncio.run(go())), flush=True)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        plane.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
