"""`eco2 up`: the embedded stack on one machine.

Starts PostgreSQL and Valkey under the data dir, then every service of the registry as its
own `eco2 serve NAME` process on 127.0.0.1, waits until each reports SERVING on gRPC
health, writes <data-dir>/endpoints.json and prints it. Ctrl-C or SIGTERM stops the
services (SIGTERM, then SIGKILL after a grace period) and the data plane; children also
get SIGTERM if this process dies (PR_SET_PDEATHSIG), so nothing is left behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .registry import HTTP_APPS, SERVICES
from .runtime.settings import default_data_dir

log = logging.getLogger("eco2.up")
ENDPOINTS_FILE = "endpoints.json"


class UpSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ECO2_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    up_timeout_s: float = Field(60.0, gt=0, description="how long `eco2 up` waits for every service to report SERVING")
    up_stop_timeout_s: float = Field(15.0, gt=0, description="how long `eco2 up` waits for services to exit before SIGKILL")
    up_port_base: int = Field(0, ge=0, le=65000, description="0 = free ports; else service i gets gRPC port base+2i and metrics base+2i+1")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> list[str]:
    """A command prefix that SIGTERMs the child when `eco2 up` dies, however it dies
    (util-linux `setpriv --pdeathsig`, armed in C after fork: no Python runs in the child)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "SIGTERM", "--"] if setpriv else []


def read_endpoints(data_dir: Path | None) -> dict:
    data_dir = data_dir or UpSettings().data_dir
    path = data_dir / ENDPOINTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"no stack is running on {data_dir} ({path} missing): start one with `eco2 up --data-dir {data_dir}`")
    return json.loads(path.read_text())


def _wait_serving(target: str, deadline: float, proc: subprocess.Popen) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"exited with code {proc.returncode} before serving")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"not SERVING on {target} in time")
            time.sleep(0.05)


def _wait_http(target: str, deadline: float, proc: subprocess.Popen) -> None:
    """HTTP apps (the gateway) are ready when GET /healthz answers 200."""
    import urllib.error
    import urllib.request

    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode} before serving")
        try:
            with urllib.request.urlopen(f"http://{target}/healthz", timeout=1.0) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no 200 from http://{target}/healthz in time")
        time.sleep(0.05)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Stack:
    def __init__(self, settings: UpSettings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.dataplane = None

    def start(self) -> dict:
        from .dataplane.embedded import EmbeddedDataPlane

        started = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        dataplane = EmbeddedDataPlane(self.data_dir)
        info = dataplane.start()  # takes the data dir's lock: raises if another stack owns it
        self.dataplane = dataplane
        (self.data_dir / ENDPOINTS_FILE).unlink(missing_ok=True)  # left by a crashed run
        names = [*SERVICES, *HTTP_APPS]
        ports: dict[str, tuple[int, int]] = {}
        for i, name in enumerate(names):
            if self.settings.up_port_base:
                ports[name] = (self.settings.up_port_base + 2 * i, self.settings.up_port_base + 2 * i + 1)
            else:
                ports[name] = (free_port(), free_port())
        env = dict(os.environ)
        env.update(
            DATABASE_URL=info.database_url,
            REDIS_URL=info.redis_url,
            ECO2_DEPLOYMENT="embedded",
            ECO2_DATA_DIR=str(self.data_dir),
            LC_ALL=env.get("LC_ALL") or "C.UTF-8",
        )
        for name, (grpc_port, _) in ports.items():
            env[f"ECO2_{name.upper()}_ADDR"] = f"127.0.0.1:{grpc_port}"
        logs = self.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        for name in names:
            grpc_port, metrics_port = ports[name]
            child_env = dict(env, ECO2_GRPC_PORT=str(grpc_port), ECO2_METRICS_PORT=str(metrics_port))
            if name in HTTP_APPS:
                child_env["ECO2_HTTP_PORT"] = str(grpc_port)
            out = open(logs / f"{name}.log", "ab")
            self.procs[name] = subprocess.Popen(
                [*_die_with_parent(), sys.executable, "-m", "eco2.services.cli", "serve", name],
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            out.close()
        deadline = time.monotonic() + self.settings.up_timeout_s
        for name in names:
            try:
                wait = _wait_http if name in HTTP_APPS else _wait_serving
                wait(f"127.0.0.1:{ports[name][0]}", deadline, self.procs[name])
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"service {name} {exc}; last log lines ({logs / (name + '.log')}):\n{_tail(logs / (name + '.log'))}") from None
        endpoints: dict[str, object] = {name: f"{'http://' if name in HTTP_APPS else ''}127.0.0.1:{ports[name][0]}" for name in names}
        endpoints["metrics"] = {name: f"http://127.0.0.1:{ports[name][1]}/metrics" for name in names}
        endpoints["dataplane"] = {
            "database_url": info.database_url,
            "redis_url": info.redis_url,
            "postgres_pid": info.pg_pid,
            "valkey_pid": info.valkey_pid,
        }
        endpoints["data_dir"] = str(self.data_dir)
        endpoints["pid"] = os.getpid()
        endpoints["started_in_s"] = round(time.monotonic() - started, 3)
        tmp = self.data_dir / (ENDPOINTS_FILE + ".tmp")
        tmp.touch(mode=0o600)  # holds the data plane's passwords
        tmp.write_text(json.dumps(endpoints, indent=2))
        tmp.replace(self.data_dir / ENDPOINTS_FILE)
        return endpoints

    def dead_service(self) -> str | None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                return name
        return None

    def stop(self) -> None:
        if self.dataplane is None:  # never owned the data dir: touch nothing
            return
        (self.data_dir / ENDPOINTS_FILE).unlink(missing_ok=True)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.up_stop_timeout_s
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("service %s did not stop in time; killing it", name)
                proc.kill()
                proc.wait()
        self.dataplane.stop()


def up(data_dir: Path | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s eco2 up: %(message)s", stream=sys.stderr)
    settings = UpSettings(data_dir=data_dir) if data_dir else UpSettings()
    settings.data_dir = settings.data_dir.resolve()
    stack = Stack(settings)
    stopping = {"signal": None}

    def on_signal(signum, _frame):
        stopping["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    from .dataplane.embedded import DataPlaneError

    try:
        endpoints = stack.start()
    except DataPlaneError as exc:
        print(f"eco2 up: {exc}", file=sys.stderr)
        stack.stop()
        return 2
    except RuntimeError as exc:
        print(f"eco2 up: {exc}", file=sys.stderr)
        stack.stop()
        return 1
    print(json.dumps(endpoints, indent=2), flush=True)
    print(f"eco2 up: all services SERVING in {endpoints['started_in_s']} s; endpoints in {settings.data_dir / ENDPOINTS_FILE}; Ctrl-C stops", file=sys.stderr, flush=True)
    code = 0
    while stopping["signal"] is None:
        dead = stack.dead_service()
        if dead:
            print(f"eco2 up: service {dead} exited unexpectedly; stopping the stack. Last log lines:\n"
                  f"{_tail(settings.data_dir / 'logs' / (dead + '.log'))}", file=sys.stderr)
            code = 1
            break
        time.sleep(0.2)
    print("eco2 up: stopping", file=sys.stderr, flush=True)
    stack.stop()
    print("eco2 up: stopped", file=sys.stderr, flush=True)
    return code
