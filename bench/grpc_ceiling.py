"""The gRPC transport ceiling on this machine.

One server process (no-op unary + a server stream) and the load in this process:
  - unary: no-op RPCs/s with p50/p99 latency, against a bare grpc.aio server and against
    the same handlers behind the eco2 runtime (interceptors: OpenTelemetry, errors, metrics);
  - stream: server-stream messages/s;
  - `eco2 up` to all-SERVING, cold (fresh data dir) and warm (second start).
Later benchmarks state their figures as ratios to this ceiling and import
`spawn_noop_server` / `unary_load` to measure it in the same run.

    python bench/grpc_ceiling.py [--seconds 10] [--concurrency 64] [--skip-up]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

UNARY = "/eco2bench.Noop/Unary"
STREAM = "/eco2bench.Noop/Stream"


# --------------------------------------------------------------------------- server side
def _handlers():
    async def unary(request: bytes, context) -> bytes:
        return request

    async def stream(request: bytes, context):
        n = int(request or b"0")
        payload = b"x" * 64
        for _ in range(n):
            yield payload

    return grpc.method_handlers_generic_handler(
        "eco2bench.Noop",
        {"Unary": grpc.unary_unary_rpc_method_handler(unary), "Stream": grpc.unary_stream_rpc_method_handler(stream)},
    )


async def _serve(port: int, mode: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if mode == "raw":
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((_handlers(),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("ready", flush=True)
        await stop.wait()
        await server.stop(0)
        return
    from eco2.services.runtime.server import start
    from eco2.services.runtime.settings import RuntimeSettings

    class NoopApp:
        name = "noop"
        settings = RuntimeSettings(grpc_port=port, metrics_port=0, log_level="WARNING")

        def service_names(self):
            return ["eco2bench.Noop"]

        async def start(self, server):
            server.add_generic_rpc_handlers((_handlers(),))

        async def stop(self):
            return None

    running = await start(NoopApp(), NoopApp.settings)
    print("ready", flush=True)
    await stop.wait()
    await running.stop(grace=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_noop_server(mode: str = "runtime") -> tuple[subprocess.Popen, str]:
    """Start the no-op server in its own process; returns (process, "127.0.0.1:port")."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode, "--port", str(port)], stdout=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"no-op server did not start: {line!r}")
    return proc, f"127.0.0.1:{port}"


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM (a graceful stop), SIGKILL after `timeout` s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def wait_serving(port: int, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    """Until the gRPC health check on 127.0.0.1:port says SERVING; fails early when `proc` exits."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server on {port} exited with {proc.returncode}")
            try:
                r = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"server on {port} not ready")


# --------------------------------------------------------------------------- load side
def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def unary_load(
    target: str,
    method: str,
    request: bytes | list[bytes],
    *,
    seconds: float,
    concurrency: int,
    channels: int = 4,
    rate: float | None = None,
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> dict:
    """Closed-loop (or, with `rate`, open-loop paced) unary load; returns rps and latency ms.

    `request` is one serialized request, or a list the callers cycle through."""
    requests = [request] if isinstance(request, bytes) else list(request)
    chans = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    calls = [c.unary_unary(method) for c in chans]
    latencies: list[float] = []
    errors = 0
    # warm up the connections
    for call in calls:
        await call(requests[0], metadata=metadata)
    end = time.perf_counter() + seconds
    interval = None if rate is None else concurrency / rate

    async def worker(i: int) -> None:
        nonlocal errors
        call = calls[i % channels]
        k = i
        next_at = time.perf_counter()
        while True:
            now = time.perf_counter()
            if now >= end:
                return
            if interval is not None:
                if now < next_at:
                    await asyncio.sleep(next_at - now)
                next_at += interval
            k += concurrency
            t0 = time.perf_counter()
            try:
                await call(requests[k % len(requests)], metadata=metadata)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    for c in chans:
        await c.close()
    return {
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
        "calls": len(latencies),
        "errors": errors,
    }


async def stream_load(target: str, *, seconds: float, streams: int, per_stream: int = 10_000) -> dict:
    """Messages/s received over `streams` concurrent server streams."""
    received = 0
    end = time.perf_counter() + seconds
    async with grpc.aio.insecure_channel(target) as ch:
        call = ch.unary_stream(STREAM)

        async def one() -> None:
            nonlocal received
            while time.perf_counter() < end:
                async for _ in call(str(per_stream).encode()):
                    received += 1
                    if time.perf_counter() >= end:
                        return

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(streams)))
        elapsed = time.perf_counter() - started
    return {"msgs_per_s": round(received / elapsed, 1), "streams": streams, "received": received}


class ServerCpu:
    """CPU seconds a server process spends, per unit of work: robust to a busy machine."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.start = self._total()

    def _total(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system

    def per(self, units: int) -> float:
        return round((self._total() - self.start) / max(units, 1) * 1e6, 1)


def time_up(data_dir: Path) -> float:
    """Seconds from `eco2 up` to endpoints.json (written once every service is SERVING)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "eco2.services.cli", "up", "--data-dir", str(data_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not (data_dir / "endpoints.json").exists():
            if proc.poll() is not None:
                raise RuntimeError(f"eco2 up failed: {proc.stderr.read()}")
            time.sleep(0.02)
        return round(time.perf_counter() - started, 2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


async def measure(seconds: float, concurrency: int) -> dict:
    out: dict = {}
    for mode in ("raw", "runtime"):
        proc, target = spawn_noop_server(mode)
        try:
            cpu = ServerCpu(proc.pid)
            out[f"unary_{mode}"] = await unary_load(target, UNARY, b"", seconds=seconds, concurrency=concurrency)
            out[f"unary_{mode}"]["server_cpu_us_per_call"] = cpu.per(out[f"unary_{mode}"]["calls"])
            cpu = ServerCpu(proc.pid)
            out[f"stream_{mode}"] = await stream_load(target, seconds=seconds, streams=8)
            out[f"stream_{mode}"]["server_cpu_us_per_msg"] = cpu.per(out[f"stream_{mode}"]["received"])
        finally:
            stop_process(proc)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--skip-up", action="store_true")
    parser.add_argument("--serve", choices=["raw", "runtime"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.port, args.serve))
        return
    result = {
        "bench": "grpc_ceiling",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, {platform.python_implementation()} {platform.python_version()}",
        "grpcio": grpc.__version__,
    }
    result.update(asyncio.run(measure(args.seconds, args.concurrency)))
    if not args.skip_up:
        tmp = Path(tempfile.mkdtemp(prefix="eco2-bench-up-", dir="/tmp"))
        tmp.chmod(0o755)
        try:
            result["up_cold_s"] = time_up(tmp / "data")
            result["up_warm_s"] = time_up(tmp / "data")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
