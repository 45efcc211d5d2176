"""Image benchmark: the size of the image the Dockerfile builds, and how long its processes take
from launch to SERVING (cold: a new container each time) and from SIGTERM to exit.

Starts its own embedded data plane in a temp dir on the host; inside the image runs, as the chart
does (uid 10001, HOME=/tmp), `eco2 migrate` once, then `eco2 serve NAME` for each --services on a
free port of the host network, polling gRPC health from the host.

    buildah build -t localhost/eco2-mesh:0.1.0 .      # or podman build (docs/deploy.md#the-image)
    python bench/image.py [--image localhost/eco2-mesh:0.1.0] [--services character,chat]

Containers run with `buildah run --isolation chroot` (no OCI runtime, no cgroups: it works where
podman's runtime cannot, e.g. hybrid cgroups). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eco2.services.dataplane.embedded import EmbeddedDataPlane


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


class Container:
    """A working container of the image; `run` starts a command in it as uid 10001."""

    def __init__(self, image: str) -> None:
        self.name = subprocess.run(
            ["buildah", "from", image], check=True, capture_output=True, text=True
        ).stdout.strip()

    def run(self, env: dict[str, str], *command: str) -> subprocess.Popen:
        assignments = [f"{k}={v}" for k, v in env.items()]
        return subprocess.Popen(
            [
                "buildah",
                "run",
                "--isolation",
                "chroot",
                "--network",
                "host",
                "--user",
                "10001:10001",
                self.name,
                "--",
                "env",
                *assignments,
                *command,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def remove(self) -> None:
        subprocess.run(["buildah", "rm", self.name], check=False, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", default="localhost/eco2-mesh:0.1.0")
    parser.add_argument("--services", default="character,chat")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    if not shutil.which("buildah"):
        print("bench/image.py needs buildah (apt-get install buildah)", file=sys.stderr)
        return 2
    size = int(
        subprocess.run(
            ["podman", "image", "inspect", "--format", "{{.Size}}", args.image],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    tmp = Path(tempfile.mkdtemp(prefix="eco2-bench-image-"))
    tmp.chmod(0o755)
    plane = EmbeddedDataPlane(tmp / "data")
    info = plane.start()
    out: dict = {"bench": "image", "image": args.image, "size_mb": round(size / 1e6), "services": {}}
    base = {
        "DATABASE_URL": info.database_url,
        "REDIS_URL": info.redis_url,
        "HOME": "/tmp",
        "ECO2_DEPLOYMENT": "embedded",
        "ECO2_DATA_DIR": "/tmp/eco2",
        "ECO2_LOG_LEVEL": "WARNING",
        "ECO2_GRPC_HOST": "127.0.0.1",
        "ECO2_METRICS_PORT": "0",
        "ECO2_MIGRATE_ON_START": "false",
    }
    try:
        container = Container(args.image)
        try:
            t0 = time.perf_counter()
            migrate = container.run(base, "eco2", "migrate")
            output, _ = migrate.communicate(timeout=args.timeout)
            if migrate.returncode != 0:
                raise SystemExit(f"eco2 migrate failed in the image:\n{output}")
            out["migrate_s"] = round(time.perf_counter() - t0, 2)
            out["migrated"] = json.loads(output.strip().splitlines()[-1])
            for name in args.services.split(","):
                port = free_port()
                t0 = time.perf_counter()
                proc = container.run({**base, "ECO2_GRPC_PORT": str(port)}, "eco2", "serve", name)
                while not serving(port):
                    if proc.poll() is not None:
                        raise SystemExit(f"eco2 serve {name} exited in the image:\n{proc.stdout.read()}")
                    if time.perf_counter() - t0 > args.timeout:
                        raise SystemExit(f"eco2 serve {name} not SERVING after {args.timeout} s")
                    time.sleep(0.05)
                started = time.perf_counter() - t0
                # SIGTERM to the service itself, as the kubelet sends it (buildah run would not
                # forward a signal sent to it: it ends the container at once)
                (server,) = [
                    p
                    for p in psutil.Process(proc.pid).children(recursive=True)
                    if p.cmdline()[1:3] == ["/opt/eco2/bin/eco2", "serve"]
                ]
                t1 = time.perf_counter()
                server.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
                out["services"][name] = {
                    "to_serving_s": round(started, 2),
                    "sigterm_to_exit_s": round(time.perf_counter() - t1, 2),
                    "exit": proc.returncode,
                }
        finally:
            container.remove()
    finally:
        plane.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    out["load_avg_1m"] = round(os.getloadavg()[0], 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
