"""What one Valkey round trip costs, sequentially (the paced event flow's case: every step
carries one or two events): Valkey's CPU per call, and the calling client's (docs/adr/0045).

    python bench/valkey_calls.py [--calls 20000] [--rounds 2]

Starts its own embedded data plane (temp dir under /tmp; AOF on, as `eco2 up` runs it), sends
each command `--calls` times one at a time over the lean RESP client
(services/dataplane/resp.py), measured as the valkey-server process's CPU per call; then runs
`EventPublisher.publish` of one event (the producer's Lua call) with Valkey's own
`INFO commandstats` per event. `client_cpu_us_per_call` is this process's CPU per call for the
same commands through the lean client, redis-py, and redis-py with its commands packed by
hiredis (a `Connection` subclass: the alternative to the lean client measured for ADR 0045),
the clients interleaved `--rounds` times; `rate_limit_hit` is the client CPU of one ext-authz
rate-limit hit (`BatchedTokenBucket`) over the lean client and over a redis-py pool, with one hit
per event-loop tick and with 64 hits on 16 keys coalesced per tick. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import psutil
import uvloop

from eco2.events.v1 import events_pb2 as E


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


async def client_cpu_us(calls: int, call) -> float:
    """This process's CPU per awaited `call()`, sequential."""
    before = time.process_time()
    for _ in range(calls):
        await call()
    return round((time.process_time() - before) / calls * 1e6, 1)


def hiredis_packed_redis(url: str):
    """redis-py whose connections pack commands with hiredis (its asyncio client packs in Python)."""
    import hiredis
    import redis.asyncio
    from redis.asyncio.connection import Connection

    class HiredisPacking(Connection):
        def pack_command(self, *args):
            first = args[0]
            if isinstance(first, str):
                args = (*first.encode().split(), *args[1:])
            return [hiredis.pack_command(args)]

    return redis.asyncio.Redis(
        connection_pool=redis.asyncio.ConnectionPool.from_url(url, connection_class=HiredisPacking)
    )


async def clients(redis, url: str, calls: int, rounds: int) -> dict:
    import asyncio

    from eco2.services.auth.valkey import _TOKEN_BUCKET_BATCH, BatchedTokenBucket
    from eco2.services.dataplane.resp import PoolCommands, RespClient

    lean, packed = RespClient.like(redis), hiredis_packed_redis(url)
    try:
        sha = await lean.execute("SCRIPT", "LOAD", _TOKEN_BUCKET_BATCH)
        keys = [f"bench:rl:u{i}" for i in range(16)]
        bucket_call = ("EVALSHA", sha, len(keys), *keys, "1000000.0", "1000000", *([4] * len(keys)))
        await redis.hset("bench:h", mapping={"s": 1, "c": 0, "o": "user"})
        for i in range(50):
            await redis.xadd("bench:x", {"p": i, "t": 0, "d": b"x" * 200})
        commands = {  # the rate limit's batch, the replay store's head and catch-up reads
            "EVALSHA token bucket, 16 keys": bucket_call,
            "HMGET 3 fields": ("HMGET", "bench:h", "s", "c", "o"),
            "XRANGE 50 entries": ("XRANGE", "bench:x", "-", "+", "COUNT", 50),
        }
        out: dict = {name: {"lean": [], "redis-py": [], "redis-py hiredis-packed": []} for name in commands}
        ticks = {"1 hit per tick": ["u0"], "64 hits on 16 keys per tick": [f"u{i % 16}" for i in range(64)]}
        out["rate_limit_hit"] = {tick: {"lean": [], "redis-py": []} for tick in ticks}
        for _ in range(rounds):
            for name, command in commands.items():
                out[name]["lean"].append(await client_cpu_us(calls, lambda c=command: lean.execute(*c)))
                out[name]["redis-py"].append(await client_cpu_us(calls, lambda c=command: redis.execute_command(*c)))
                out[name]["redis-py hiredis-packed"].append(
                    await client_cpu_us(calls, lambda c=command: packed.execute_command(*c))
                )
            for tick, users in ticks.items():
                for via, valkey in (("lean", lean), ("redis-py", PoolCommands(redis))):
                    bucket = BatchedTokenBucket(valkey, rate_per_s=1e6, burst=10**6, prefix="bench:rlb:")
                    per_tick = await client_cpu_us(
                        max(1, calls // len(users)), lambda b=bucket, u=users: asyncio.gather(*(b.hit(x) for x in u))
                    )
                    out["rate_limit_hit"][tick][via].append(round(per_tick / len(users), 2))
        return out
    finally:
        await lean.aclose()
        await packed.aclose()


async def main(calls: int, rounds: int) -> dict:
    from eco2.services.bus.producer import EventPublisher
    from eco2.services.dataplane.embedded import EmbeddedDataPlane
    from eco2.services.dataplane.resp import RespClient
    from eco2.services.dataplane.urls import create_redis

    root = Path(tempfile.mkdtemp(prefix="eco2-bench-valkey-", dir="/tmp"))
    root.chmod(0o755)  # the embedded PostgreSQL runs as an unprivileged user
    plane = EmbeddedDataPlane(root / "data")
    info = plane.start()
    redis = create_redis(info.redis_url)
    fast = RespClient.like(redis)
    try:
        valkey = psutil.Process(
            next(
                c.pid
                for c in psutil.net_connections(kind="tcp")
                if c.laddr and c.laddr.port == info.valkey_port and c.status == "LISTEN" and c.pid
            )
        )
        trivial = await fast.execute("SCRIPT", "LOAD", "return 1")
        one_xadd = await fast.execute(
            "SCRIPT", "LOAD", "redis.call('XADD', KEYS[1], 'MAXLEN', '1000', '*', 'd', ARGV[1]) return 1"
        )
        data = b"x" * 200
        out: dict = {
            "bench": "valkey_calls",
            "date": time.strftime("%Y-%m-%d"),
            "cpus": os.cpu_count(),
            "calls": calls,
            "loadavg_1m_before": round(os.getloadavg()[0], 2),
            "valkey_cpu_us_per_call": {},
        }
        for name, command in [
            ("PING", ("PING",)),
            ("XADD", ("XADD", "bench:s1", "MAXLEN", "1000", "*", "d", data)),
            ("EVALSHA return 1", ("EVALSHA", trivial, 0)),
            ("EVALSHA one XADD", ("EVALSHA", one_xadd, 1, "bench:s2", data)),
        ]:
            before = cpu_s(valkey)
            for _ in range(calls):
                await fast.execute(*command)
            out["valkey_cpu_us_per_call"][name] = round((cpu_s(valkey) - before) / calls * 1e6, 1)

        pub = EventPublisher(redis)
        jobs = [f"bench-job-{i}" for i in range(100)]
        await redis.config_resetstat()
        before, mine = cpu_s(valkey), time.process_time()
        for i in range(calls):
            await pub.publish(E.Event(job_id=jobs[i % 100], seq=i // 100 + 1, kind=E.EVENT_KIND_TOKEN, delta="토큰 "))
        out["publish_one_event"] = {
            "valkey_cpu_us": round((cpu_s(valkey) - before) / calls * 1e6, 1),
            "client_cpu_us": round((time.process_time() - mine) / calls * 1e6, 1),
            "commandstats_us_per_event": {
                k.removeprefix("cmdstat_"): round(v["usec"] / calls, 2)
                for k, v in (await redis.info("commandstats")).items()
                if v["calls"] >= calls
            },
        }
        await pub.aclose()
        out["client_cpu_us_per_call"] = await clients(redis, info.redis_url, calls, rounds)
        return out
    finally:
        await fast.aclose()
        await redis.aclose()
        plane.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--calls", type=int, default=20_000, help="sequential calls per command (psutil CPU times tick at 10 ms)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the client comparison")
    args = parser.parse_args()
    print(json.dumps(uvloop.run(main(args.calls, args.rounds)), ensure_ascii=False))
