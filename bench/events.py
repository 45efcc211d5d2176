"""Benchmark of the event bus: publish → router → Subscribe throughput, end-to-end latency at a
fixed rate, and the cost of 10,000 idle Subscribe streams on one EventService process.

    python bench/events.py [--events 60000] [--rate 5000] [--streams 10000] [--batch 64] [--publishers 2] [--idle-cold]
                           [--loop uvloop|asyncio] [--publish-tick-ms 0] [--router-linger-ms MS] [--client python|node]
    python bench/events.py --events 0 --streams 10000       # the idle streams only
                           [--subscribe per-event|batches|both]

Starts its own embedded data plane (temp dir under /tmp), `eco2 serve events` processes and
publisher processes on 127.0.0.1, prints one JSON line, stops everything. The throughput and
latency runs are made with each subscribe mode asked for (default both): `per-event` reads
`Subscribe` (one Event per message), `batches` reads `SubscribeBatches` (what is ready, several
events per message).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpc_ceiling import free_port, stop_process, wait_serving  # noqa: E402

from eco2.events.v1 import events_pb2, events_pb2_grpc  # noqa: E402

E = events_pb2


# -- publisher worker (a separate process) ------------------------------------------------------


async def publisher_main(
    redis_url: str, jobs: list[str], per_job: int, rate: float, batch: int, tick_s: float = 0.0
) -> None:
    """Publishes per_job events to each job, `batch` events per publish_many round trip (1 =
    single `publish`); prints its own CPU seconds as JSON on stdout."""
    from eco2.services.bus.producer import EventPublisher
    from eco2.services.dataplane.urls import create_redis

    client = create_redis(redis_url)
    pub = EventPublisher(client)
    t0 = os.times()  # CPU from here on: interpreter start and imports are not per-event work
    began = time.time()  # the flow's clock starts here, not at the process spawn

    def event(job: str, seq: int):
        kind = E.EVENT_KIND_DONE if seq == per_job else E.EVENT_KIND_TOKEN
        return E.Event(job_id=job, seq=seq, kind=kind, delta="토큰 ")  # time filled by publish

    async def one(job: str) -> None:  # unpaced: every job as fast as it can
        for first in range(1, per_job + 1, batch):
            if batch == 1:
                await pub.publish(event(job, first))
            else:
                await pub.publish_many([event(job, q) for q in range(first, min(per_job, first + batch - 1) + 1)])

    async def paced() -> None:  # `rate` events/s over all jobs, round robin; what is due goes in one call
        # Each event's time is when it fell due, so the latency includes any wait in here.
        total, n = per_job * len(jobs), len(jobs)
        sent, start, wall0 = 0, time.perf_counter(), time.time_ns()
        while sent < total:
            now = time.perf_counter()
            due = min(total, int((now - start) * rate) + 1)
            if due <= sent:  # sleep until the next event is due (no polling), or one tick
                await asyncio.sleep(tick_s or start + sent / rate - now)
                continue
            k = min(due - sent, batch)
            evs = [event(jobs[i % n], i // n + 1) for i in range(sent, sent + k)]
            for i, ev in zip(range(sent, sent + k), evs):
                ev.time.FromNanoseconds(wall0 + int(i / rate * 1e9))
            if k == 1:
                await pub.publish(evs[0])
            else:
                await pub.publish_many(evs)
            sent += k

    if rate > 0:
        await paced()
    else:
        await asyncio.gather(*(one(j) for j in jobs))
    await client.aclose()
    t = os.times()
    print(json.dumps({"cpu_s": t.user + t.system - t0.user - t0.system, "began": began}), flush=True)


def event_loop(name: str):
    """Loop factory for asyncio.Runner: uvloop's, or None (asyncio's default)."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


# -- orchestration --------------------------------------------------------------------------------


def serve(env: dict[str, str], role: str, port: int) -> subprocess.Popen:
    penv = {
        **os.environ,
        **env,
        "ECO2_EVENTS_ROLE": role,
        "ECO2_GRPC_PORT": str(port),
        "ECO2_METRICS_PORT": "0",
        "ECO2_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "eco2.services.cli", "serve", "events"], env=penv, start_new_session=True
    )


def redis_connections(pid: int, valkey_port: int) -> int:
    return sum(
        1
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.raddr and c.raddr.port == valkey_port and c.status == "ESTABLISHED"
    )


async def command_stats(redis_url: str) -> dict[str, tuple[int, int]]:
    """Valkey's INFO commandstats: {command: (calls, usec)}."""
    from eco2.services.dataplane.urls import create_redis

    client = create_redis(redis_url)
    try:
        info = await client.info("commandstats")
    finally:
        await client.aclose()
    return {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for k, v in info.items()}


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


async def run_flow(
    redis_url: str,
    port: int,
    tag: str,
    jobs: int,
    per_job: int,
    rate: float,
    publishers: int,
    batch: int,
    server_pid: int,
    valkey_pid: int,
    mode: str = "per-event",
    loop: str = "uvloop",
    tick_ms: float = 0.0,
    client: str = "python",
) -> dict:
    """`jobs` jobs, one subscriber each; `publishers` processes publish per_job events per job.
    CPU per event is reported for the events server process (router + EventService), Valkey,
    the publishers and this client process: robust on a busy machine, unlike events/s.
    mode "per-event" subscribes with Subscribe, "batches" with SubscribeBatches. client "node"
    subscribes from a Node (@grpc/grpc-js) process instead of this one (bench/events_client.mjs)."""
    names = [f"{tag}-{i}" for i in range(jobs)]
    latencies: list[float] = []
    received = 0
    messages = 0
    parse = E.Event.FromString
    parse_batch = E.SubscribeBatchesResponse.FromString
    # a few HTTP/2 connections, as many browsers behind an edge would use
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(4)
    ]
    try:
        # raw bytes (no parse) unless the latency run needs each event's time
        if mode == "batches":  # a batch has to be parsed to count its events
            calls = [
                c.unary_stream(
                    "/eco2.events.v1.EventService/SubscribeBatches",
                    request_serializer=E.SubscribeBatchesRequest.SerializeToString,
                )
                for c in channels
            ]
        else:
            calls = [
                c.unary_stream(
                    "/eco2.events.v1.EventService/Subscribe", request_serializer=E.SubscribeRequest.SerializeToString
                )
                for c in channels
            ]

        async def subscribe(i: int, job: str) -> None:
            nonlocal received, messages
            n = m = 0
            if mode == "batches":
                async for data in calls[i % len(calls)](E.SubscribeBatchesRequest(job_id=job), timeout=600):
                    m += 1
                    evs = parse_batch(data).events
                    n += len(evs)
                    if rate:
                        now = time.time()
                        latencies.extend(now - (e.time.seconds + e.time.nanos / 1e9) for e in evs)
            else:
                async for data in calls[i % len(calls)](E.SubscribeRequest(job_id=job), timeout=600):
                    n += 1
                    if rate:
                        e = parse(data)
                        latencies.append(time.time() - (e.time.seconds + e.time.nanos / 1e9))
                m = n
            received += n
            messages += m

        node = None
        if client == "node":
            spec = {
                "port": port,
                "jobs": names,
                "mode": mode,
                "latency": bool(rate),
                "channels": len(channels),
                "timeoutS": 600,
            }
            node = subprocess.Popen(
                ["node", str(Path(__file__).with_name("events_client.mjs")), json.dumps(spec)],
                stdout=subprocess.PIPE,
                text=True,
            )
            ready = await asyncio.to_thread(node.stdout.readline)
            if not ready.startswith('{"ready"'):
                node.kill()
                raise RuntimeError(f"node client did not start: {ready!r}")
            subs = []
        else:
            subs = [asyncio.create_task(subscribe(i, j)) for i, j in enumerate(names)]
            await asyncio.sleep(0.5)  # streams registered (unknown jobs wait for their first event)
        server, valkey, me = psutil.Process(server_pid), psutil.Process(valkey_pid), psutil.Process()
        stats0 = await command_stats(redis_url)
        cpu0 = (cpu_s(server), cpu_s(valkey), cpu_s(me))
        chunks = [names[i::publishers] for i in range(publishers)]
        started = time.perf_counter()
        # subprocess.Popen (CPython's fork_exec), not the loop's subprocess support: uvloop's
        # spawn forks this grpc-threaded process in a way that now and then let the child die
        # of SIGSEGV before exec (publishers exited -11 with no output, ~1 run in 5)
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-X",
                    "faulthandler",
                    __file__,
                    "--publisher",
                    redis_url,
                    ",".join(c),
                    str(per_job),
                    str(rate / publishers if rate else 0),
                    str(batch),
                    loop,
                    str(tick_ms),
                ],
                stdout=subprocess.PIPE,
            )
            for c in chunks
        ]
        outs = await asyncio.gather(*(asyncio.to_thread(p.communicate) for p in procs))
        failed = [p.returncode for p in procs if p.returncode != 0]
        if failed:  # say so now, not after the subscribers' 600 s timeout
            raise RuntimeError(f"publisher process(es) failed with exit codes {failed}: {[o[0][-500:] for o in outs]}")
        published_at = time.perf_counter()
        if node is not None:
            report, _ = await asyncio.wait_for(asyncio.to_thread(node.communicate), 600)
            ended = time.time()
            report = json.loads(report.strip().splitlines()[-1])
            if "error" in report:
                raise RuntimeError(f"node client failed: {report['error']}")
            received, messages = report["received"], report["messages"]
            latencies = [ms / 1000 for ms in report["latencies_ms"]]
        else:
            await asyncio.wait_for(asyncio.gather(*subs), 600)
            ended = time.time()
        elapsed = time.perf_counter() - started
        cpu1 = (cpu_s(server), cpu_s(valkey), cpu_s(me))
        stats1 = await command_stats(redis_url)
    finally:
        for c in channels:
            await c.close()
    total = jobs * per_job
    reports = [json.loads(o[0].decode().strip().splitlines()[-1]) for o in outs]
    pub_cpu = sum(r["cpu_s"] for r in reports)
    # from the first publisher's first event to the last event received (publisher process
    # start-up, ~1 s of imports, is not part of the flow)
    flow_s = ended - min(r["began"] for r in reports)
    us = lambda seconds: round(seconds / max(received, 1) * 1e6, 1)  # noqa: E731
    out = {
        "subscribe": mode,
        "events": total,
        "received": received,
        "messages": messages,
        "events_per_message": round(received / max(messages, 1), 2),
        "seconds": round(flow_s, 2),
        "events_per_s": round(received / flow_s),
        "seconds_with_process_start": round(elapsed, 2),
        "publish_seconds": round(published_at - started, 2),
        "publish_batch": batch,
        "cpu_us_per_event": {
            "events_server": us(cpu1[0] - cpu0[0]),
            "valkey": us(cpu1[1] - cpu0[1]),
            "publishers": us(pub_cpu),
            "subscriber_client": us(report["cpu_s"] if node is not None else cpu1[2] - cpu0[2]),
        },
        "client": client,
    }
    # Valkey's own accounting: calls per event and µs of command time per event, by command
    out["valkey_commands_per_event"] = {
        name: {
            "calls": round((c - stats0.get(name, (0, 0))[0]) / max(received, 1), 3),
            "us": round((u - stats0.get(name, (0, 0))[1]) / max(received, 1), 1),
        }
        for name, (c, u) in sorted(stats1.items())
        if c > stats0.get(name, (0, 0))[0] and name != "info"
    }
    if latencies:
        latencies.sort()
        q = lambda p: round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2)  # noqa: E731
        out.update({"p50_ms": q(0.50), "p95_ms": q(0.95), "p99_ms": q(0.99), "max_ms": round(latencies[-1] * 1000, 2)})
    return out


async def idle_streams(
    redis_url: str, env: dict[str, str], valkey_port: int, n: int, warm_connections: bool = True
) -> dict:
    """n Subscribe streams (one job each, one event received) idling on one service process.

    grpc core sizes a new call's memory arena from the calls its connection has finished
    (1 KB on a connection that finished none, then many small overflow blocks): with
    `warm_connections` each connection first finishes one Subscribe, as a long-lived client
    connection has; without it every stream is a first call of its connection (more memory
    per stream: docs/benchmarks.md)."""
    from eco2.services.bus.producer import EventPublisher
    from eco2.services.dataplane.urls import create_redis

    client = create_redis(redis_url)
    pub = EventPublisher(client)
    names = [f"idle-{i}" for i in range(n)]
    for i in range(0, n, 50):
        await asyncio.gather(
            *(
                pub.publish(E.Event(job_id=j, seq=1, kind=E.EVENT_KIND_STAGE, stage=E.STAGE_QUEUED))
                for j in names[i : i + 50]
            )
        )
    port = free_port()
    proc = serve(env, "service", port)
    try:
        await wait_serving(port)
        ps = psutil.Process(proc.pid)
        channels = [
            grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(20)
        ]
        stubs = [events_pb2_grpc.EventServiceStub(c) for c in channels]
        if warm_connections:  # one finished Subscribe per connection
            for k, stub in enumerate(stubs):
                done = f"idle-done-{k}"
                await pub.publish(E.Event(job_id=done, seq=1, kind=E.EVENT_KIND_DONE))
                assert [e.seq async for e in stub.Subscribe(E.SubscribeRequest(job_id=done))] == [1]
        # warm the process up with one stream so first-call allocations are not counted per stream
        warm = stubs[0].Subscribe(E.SubscribeRequest(job_id=names[0]))
        await warm.read()
        await asyncio.sleep(1.0)
        rss_before = ps.memory_info().rss
        calls = []
        t0 = time.perf_counter()
        rest = names[1:]
        for i in range(0, len(rest), 250):  # clients arrive in waves of 250
            wave = [
                stubs[(i + k) % len(stubs)].Subscribe(E.SubscribeRequest(job_id=job))
                for k, job in enumerate(rest[i : i + 250])
            ]
            firsts = await asyncio.gather(*(c.read() for c in wave))
            assert all(f.seq == 1 for f in firsts)
            calls += wave
        opened_s = time.perf_counter() - t0
        await asyncio.sleep(2.0)
        rss_after = ps.memory_info().rss
        conns = redis_connections(proc.pid, valkey_port)
        streams = len(calls) + 1
        # still alive: one more event on a few of them arrives
        for c in calls:
            c.cancel()
        warm.cancel()
        for c in channels:
            await c.close()
        return {
            "streams": streams,
            "open_seconds": round(opened_s, 2),
            "rss_before_mb": round(rss_before / 2**20, 1),
            "rss_after_mb": round(rss_after / 2**20, 1),
            "kb_per_idle_stream": round((rss_after - rss_before) / (streams - 1) / 1024, 1),
            "connections": len(channels),
            "connections_warmed": warm_connections,
            "redis_connections": conns,
        }
    finally:
        stop_process(proc)
        await client.aclose()


async def main(args) -> dict:
    from eco2.services.dataplane.embedded import EmbeddedDataPlane

    root = Path(tempfile.mkdtemp(prefix="eco2-bench-events-", dir="/tmp"))
    root.chmod(0o755)
    plane = EmbeddedDataPlane(root / "data")
    info = plane.start()
    procs = []
    try:
        env = {"REDIS_URL": info.redis_url, "DATABASE_URL": info.database_url, "ECO2_EVENTS_UNKNOWN_JOB_GRACE_S": "60"}
        if args.router_linger_ms is not None:
            env["ECO2_EVENTS_ROUTER_LINGER_MS"] = str(args.router_linger_ms)
        port = free_port()
        procs.append(serve(env, "all", port))  # router + EventService in one process
        await wait_serving(port)
        valkey_pid = next(
            c.pid
            for c in psutil.net_connections(kind="tcp")
            if c.laddr and c.laddr.port == info.valkey_port and c.status == "LISTEN" and c.pid
        )
        load_before = os.getloadavg()
        modes = ["per-event", "batches"] if args.subscribe == "both" else [args.subscribe]
        runs = {}
        for mode in modes if args.events else []:  # --events 0: only the idle streams
            load = os.getloadavg()[0]
            throughput = await run_flow(
                info.redis_url,
                port,
                f"tp-{mode}",
                args.jobs,
                args.events // args.jobs,
                0,
                args.publishers,
                args.batch,
                procs[0].pid,
                valkey_pid,
                mode,
                args.loop,
                client=args.client,
            )
            throughput["loadavg_1m_before"] = round(load, 2)
            load = os.getloadavg()[0]
            latency = await run_flow(
                info.redis_url,
                port,
                f"lat-{mode}",
                args.jobs,
                int(args.rate * args.seconds) // args.jobs,
                args.rate,
                args.publishers,
                args.batch,
                procs[0].pid,
                valkey_pid,
                mode,
                args.loop,
                args.publish_tick_ms,
                client=args.client,
            )
            latency["target_rate"] = args.rate
            latency["publish_tick_ms"] = args.publish_tick_ms
            latency["router_linger_ms"] = args.router_linger_ms if args.router_linger_ms is not None else "default"
            latency["loadavg_1m_before"] = round(load, 2)
            runs[mode] = {"throughput": throughput, "latency": latency}
        all_conns = redis_connections(procs[0].pid, info.valkey_port)
        idle = (
            await idle_streams(info.redis_url, env, info.valkey_port, args.streams, not args.idle_cold)
            if args.streams
            else None
        )
        return {
            "bench": "events",
            "date": time.strftime("%Y-%m-%d"),
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "runs": runs,
            "idle": idle,
            "redis_connections_all_role": all_conns,
        }
    finally:
        for p in procs:
            stop_process(p)
        plane.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--publisher":
        _, _, url, jobs, per_job, rate, batch, loop, tick_ms = sys.argv
        with asyncio.Runner(loop_factory=event_loop(loop)) as runner:
            runner.run(
                publisher_main(url, jobs.split(","), int(per_job), float(rate), int(batch), float(tick_ms) / 1000)
            )
        sys.exit(0)
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--events", type=int, default=60_000, help="events in the throughput run (0: no throughput and latency runs)"
    )
    parser.add_argument("--jobs", type=int, default=100, help="concurrent jobs (one subscriber each)")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--rate", type=float, default=5000, help="events/s of the latency run")
    parser.add_argument("--seconds", type=float, default=6, help="length of the latency run")
    parser.add_argument("--streams", type=int, default=10_000, help="idle Subscribe streams (0: skip)")
    parser.add_argument(
        "--idle-cold",
        action="store_true",
        help="idle streams on connections that finished no call before (grpc's call arenas not sized yet)",
    )
    parser.add_argument(
        "--batch", type=int, default=64, help="events per publish_many call in the publishers (1: publish)"
    )
    parser.add_argument(
        "--subscribe",
        choices=["per-event", "batches", "both"],
        default="both",
        help="Subscribe (one Event per message), SubscribeBatches, or both in turn",
    )
    parser.add_argument(
        "--publish-tick-ms",
        type=float,
        default=0.0,
        help="paced publishers wake every this many ms and send what is due (0: at each event's due time)",
    )
    parser.add_argument(
        "--router-linger-ms",
        type=float,
        default=None,
        help="ECO2_EVENTS_ROUTER_LINGER_MS for the events process (default: the product's)",
    )
    parser.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="event loop of the publishers and the subscribing client (uvloop: as `eco2 serve` runs workers)",
    )
    parser.add_argument(
        "--client",
        choices=["python", "node"],
        default="python",
        help="subscribing client of the flow runs: this process (grpcio) or Node's @grpc/grpc-js "
        "(bench/events_client.mjs; needs `npm ci --prefix tests/node`)",
    )
    os.environ.setdefault("LC_ALL", "C.UTF-8")
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=event_loop(args.loop)) as runner:
        print(json.dumps(runner.run(main(args))))
