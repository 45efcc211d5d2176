"""ext-authz Check throughput, latency and revocation propagation (issue 3).

Starts its own embedded data plane (temp dir) and auth servers as separate processes
(`python -m eco2.services.cli serve auth`); the load runs in this process on 127.0.0.1 with
the load generator of bench/grpc_ceiling.py, which also measures the no-op ceiling (the
same eco2 runtime, no work) in the same run. Istio-shaped CheckRequests with valid tokens.

  - check_*: closed-loop Check/s on one auth server process, with the per-user rate limit on
    (Valkey token bucket, the hits of a loop tick in one EVALSHA; limits set high so valid traffic passes) and off;
  - paced_2000: open-loop 2,000 Check/s, p50/p99;
  - server_cpu_us_per_call: CPU the server process spent per call (robust to a busy machine);
    one_core_capacity = 1e6 / that, cpu_ratio = no-op CPU per call / Check CPU per call;
  - revocation: SignOut on one of 4 replicas → each replica denies the token (polled every
    ~2 ms); p50/p99/max of the per-replica delay, measured from the start of SignOut.

    python bench/ext_authz.py [--seconds 8] [--concurrency 64] [--revocations 40]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpc_ceiling import UNARY, ServerCpu, free_port, percentile, spawn_noop_server, stop_process, unary_load  # noqa: E402

from eco2.auth.v1 import auth_pb2, auth_pb2_grpc  # noqa: E402

CHECK = "/envoy.service.auth.v3.Authorization/Check"


def check_request(token: str, source: str = "10.1.2.3") -> bytes:
    req = external_auth_pb2.CheckRequest()
    attrs = req.attributes
    attrs.source.address.socket_address.address = source
    attrs.source.address.socket_address.port_value = 53422
    attrs.destination.address.socket_address.address = "10.0.0.10"
    attrs.destination.address.socket_address.port_value = 8443
    attrs.destination.principal = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
    attrs.request.time.GetCurrentTime()
    http = attrs.request.http
    http.id = "14217865321789465123"
    http.method = "POST"
    http.path = "/eco2.character.v1.CharacterService/ListCharacters"
    http.host = "eco2.example"
    http.scheme = "https"
    http.protocol = "HTTP/2"
    http.headers.update(
        {
            ":authority": "eco2.example",
            ":method": "POST",
            ":path": http.path,
            ":scheme": "https",
            "authorization": f"Bearer {token}",
            "content-type": "application/grpc-web+proto",
            "x-grpc-web": "1",
            "accept": "application/grpc-web+proto",
            "origin": "https://eco2.example",
            "user-agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
            "x-forwarded-for": source,
            "x-forwarded-proto": "https",
            "x-request-id": str(uuid.uuid4()),
            "x-envoy-external-address": source,
            "x-eco2-user-id": "spoofed",
        }
    )
    attrs.context_extensions["route"] = "api"
    return req.SerializeToString()


def spawn_auth(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    full = {**os.environ, **env, "ECO2_GRPC_PORT": str(port), "ECO2_METRICS_PORT": "0", "ECO2_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "eco2.services.cli", "serve", "auth"], env=full, stdout=subprocess.DEVNULL
    )
    return proc, f"127.0.0.1:{port}"


async def wait_serving(target: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            if proc.poll() is not None:
                raise RuntimeError("auth server exited")
            try:
                r = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("auth server did not become SERVING")
            await asyncio.sleep(0.1)


async def verify_allowed(target: str, request: bytes) -> None:
    async with grpc.aio.insecure_channel(target) as ch:
        resp = await external_auth_pb2_grpc.AuthorizationStub(ch).Check(
            external_auth_pb2.CheckRequest.FromString(request)
        )
        if not resp.HasField("ok_response"):
            raise RuntimeError(f"the bench token is not allowed: {resp}")


async def revocation_propagation(targets: list[str], rounds: int) -> dict:
    chans = [grpc.aio.insecure_channel(t) for t in targets]
    authz = [external_auth_pb2_grpc.AuthorizationStub(c) for c in chans]
    auth = [auth_pb2_grpc.AuthServiceStub(c) for c in chans]
    delays: list[float] = []
    try:
        for i in range(rounds):
            home = i % len(targets)
            s = await auth[home].DevSignIn(auth_pb2.DevSignInRequest(display_name=f"bench-rev-{uuid.uuid4().hex[:8]}"))
            req = external_auth_pb2.CheckRequest.FromString(
                check_request(s.tokens.access_token, source=f"10.9.{i % 250}.1")
            )
            for a in authz:  # warm every replica's claims cache: the token is "known valid"
                assert (await a.Check(req)).HasField("ok_response")
            md = (("x-eco2-user-id", s.user.id), ("authorization", f"Bearer {s.tokens.access_token}"))
            started = time.perf_counter()
            await auth[home].SignOut(auth_pb2.SignOutRequest(refresh_token=s.tokens.refresh_token), metadata=md)

            async def until_denied(a, req, started: float) -> float:
                while True:
                    resp = await a.Check(req)
                    if resp.HasField("denied_response"):
                        return time.perf_counter() - started
                    if time.perf_counter() - started > 5:
                        return float("inf")
                    await asyncio.sleep(0.002)

            delays += await asyncio.gather(*(until_denied(a, req, started) for a in authz))
    finally:
        for c in chans:
            await c.close()
    return {
        "replicas": len(targets),
        "rounds": rounds,
        "p50_ms": round(percentile(delays, 0.5) * 1000, 2),
        "p99_ms": round(percentile(delays, 0.99) * 1000, 2),
        "max_ms": round(max(delays) * 1000, 2),
    }


async def measure(env: dict[str, str], seconds: float, concurrency: int, rounds: int) -> dict:
    out: dict = {}
    noop, noop_target = spawn_noop_server("runtime")
    try:
        cpu = ServerCpu(noop.pid)
        out["noop_ceiling"] = await unary_load(noop_target, UNARY, b"", seconds=seconds, concurrency=concurrency)
        out["noop_ceiling"]["server_cpu_us_per_call"] = cpu.per(out["noop_ceiling"]["calls"])
    finally:
        stop_process(noop)

    high = {"ECO2_AUTH_RATE_LIMIT_PER_S": "1000000", "ECO2_AUTH_RATE_LIMIT_BURST": "1000000"}
    procs = [spawn_auth({**env, **high}) for _ in range(4)]
    off, off_target = spawn_auth({**env, "ECO2_AUTH_RATE_LIMIT_PER_S": "0"})
    try:
        for p, t in [*procs, (off, off_target)]:
            await wait_serving(t, p)
        target = procs[0][1]
        async with grpc.aio.insecure_channel(target) as ch:
            s = await auth_pb2_grpc.AuthServiceStub(ch).DevSignIn(auth_pb2.DevSignInRequest(display_name="bench-load"))
        request = check_request(s.tokens.access_token)
        await verify_allowed(target, request)
        await verify_allowed(off_target, request)
        cpu = ServerCpu(procs[0][0].pid)
        out["check_ratelimit_on"] = await unary_load(target, CHECK, request, seconds=seconds, concurrency=concurrency)
        out["check_ratelimit_on"]["server_cpu_us_per_call"] = cpu.per(out["check_ratelimit_on"]["calls"])
        cpu = ServerCpu(off.pid)
        out["check_ratelimit_off"] = await unary_load(
            off_target, CHECK, request, seconds=seconds, concurrency=concurrency
        )
        out["check_ratelimit_off"]["server_cpu_us_per_call"] = cpu.per(out["check_ratelimit_off"]["calls"])
        out["paced_2000"] = await unary_load(target, CHECK, request, seconds=seconds, concurrency=32, rate=2000)
        out["revocation"] = await revocation_propagation([t for _, t in procs], rounds)
    finally:
        for p, _ in [*procs, (off, off_target)]:
            stop_process(p)
    ceiling = out["noop_ceiling"]["rps"]
    out["ratio_on_vs_ceiling"] = round(out["check_ratelimit_on"]["rps"] / ceiling, 3)
    out["ratio_off_vs_ceiling"] = round(out["check_ratelimit_off"]["rps"] / ceiling, 3)
    # CPU per call of the server process: robust to a machine shared with other work.
    noop_cpu = out["noop_ceiling"]["server_cpu_us_per_call"]
    for mode in ("on", "off"):
        check_cpu = out[f"check_ratelimit_{mode}"]["server_cpu_us_per_call"]
        out[f"cpu_ratio_{mode}_vs_ceiling"] = round(noop_cpu / check_cpu, 3) if check_cpu else None
        out[f"one_core_capacity_{mode}_per_s"] = round(1e6 / check_cpu) if check_cpu else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--revocations", type=int, default=40)
    args = parser.parse_args()
    os.environ.setdefault("LC_ALL", "C.UTF-8")
    from eco2.services.dataplane.embedded import EmbeddedDataPlane

    tmp = Path(tempfile.mkdtemp(prefix="eco2-bench-authz-", dir="/tmp"))
    tmp.chmod(0o755)
    plane = EmbeddedDataPlane(tmp / "data")
    try:
        info = plane.start()
        env = {
            "DATABASE_URL": info.database_url,
            "REDIS_URL": info.redis_url,
            "ECO2_DEPLOYMENT": "embedded",
            "ECO2_DATA_DIR": str(tmp / "data"),
        }
        result = {
            "bench": "ext_authz",
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()} {os.cpu_count()} cpu, {platform.python_implementation()} {platform.python_version()}",
            "grpcio": grpc.__version__,
            "seconds": args.seconds,
            "concurrency": args.concurrency,
        }
        result.update(asyncio.run(measure(env, args.seconds, args.concurrency, args.revocations)))
    finally:
        plane.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
