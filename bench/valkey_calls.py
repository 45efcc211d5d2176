"""What one Valkey round trip costs Valkey itself, sequentially (the paced event flow's case:
every step carries one or two events), measured as the valkey-server process's CPU per call.

    python bench/valkey_calls.py [--calls 20000]

Starts its own embedded data plane (temp dir under /tmp; AOF on, as `eco2 up` runs it), sends
each command `--calls` times one at a time over the lean RESP connection
(services/dataplane/resp.py), and last runs `EventPublisher.publish` of one event (the producer's
Lua call) with Valkey's own `INFO commandstats` per event. Prints one JSON line.
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


async def main(calls: int) -> dict:
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
        valkey = psutil.Process(next(c.pid for c in psutil.net_connections(kind="tcp")
                                     if c.laddr and c.laddr.port == info.valkey_port and c.status == "LISTEN" and c.pid))
        trivial = await fast.execute("SCRIPT", "LOAD", "return 1")
        one_xadd = await fast.execute("SCRIPT", "LOAD", "redis.call('XADD', KEYS[1], 'MAXLEN', '1000', '*', 'd', ARGV[1]) return 1")
        data = b"x" * 200
        out: dict = {"bench": "valkey_calls", "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "calls": calls,
                     "loadavg_1m_before": round(os.getloadavg()[0], 2), "valkey_cpu_us_per_call": {}}
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
            "commandstats_us_per_event": {k.removeprefix("cmdstat_"): round(v["usec"] / calls, 2)
                                          for k, v in (await redis.info("commandstats")).items()
                                          if v["calls"] >= calls},
        }
        await pub.aclose()
        return out
    finally:
        await fast.aclose()
        await redis.aclose()
        plane.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20_000, help="sequential calls per command (psutil CPU times tick at 10 ms)")
    args = parser.parse_args()
    print(json.dumps(uvloop.run(main(args.calls)), ensure_ascii=False))
