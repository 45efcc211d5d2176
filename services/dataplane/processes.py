"""The server processes of the embedded data plane: how they are found, run, watched and stopped.

Each server is a child of the owning process in its own session (a Ctrl-C in the terminal
reaches only the owner). Orphans of a crashed owner are recognised by name and working
directory, asked to shut down gracefully, and killed only when they ignore it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import shutil
import signal
import threading
import time
from pathlib import Path

import psutil

LOG = logging.getLogger("eco2.dataplane")

STOP_TIMEOUT_S = 30.0
_LOG_ROTATE_BYTES = 10 * 1024 * 1024


class DataPlaneError(RuntimeError):
    """The embedded data plane could not be started or stopped."""


def package_dir(name: str) -> Path:
    """Where an installed package lives, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def child_env() -> dict[str, str]:
    """Environment for server processes: C.UTF-8 locale, no stray libpq variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C.UTF-8"
    env["LANG"] = "C.UTF-8"
    return env


def death_signal(sig: int, *, wanted: bool) -> list[str]:
    """A command prefix arming ``PR_SET_PDEATHSIG`` in the child, when possible and wanted.

    util-linux ``setpriv --pdeathsig`` sets it after fork, in C: a Python ``preexec_fn`` would
    run interpreter code in a forked child of a multi-threaded process (grpc, asyncio
    executors), which can deadlock or crash. The signal follows the forking *thread*, so it
    is only armed from the main thread.
    """
    setpriv = shutil.which("setpriv")
    if (
        not wanted
        or platform.system() != "Linux"
        or threading.current_thread() is not threading.main_thread()
        or setpriv is None
    ):
        return []
    return [setpriv, "--pdeathsig", signal.Signals(sig).name, "--"]


def read_pid(path: Path) -> int | None:
    """The pid on the first line of a pid or lock file, None when there is none."""
    try:
        first = path.read_text().split("\n", 1)[0].strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(first) if first.isdigit() else None


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def is_ours(pid: int, name: str, directory: Path) -> bool:
    """True when ``pid`` is a live ``name`` process working in ``directory``."""
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.name() == name and Path(proc.cwd()) == directory
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def processes_in(directory: Path, name: str) -> list[psutil.Process]:
    """Live processes called ``name`` whose working directory is ``directory``."""
    found = []
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] != name:
            continue
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and Path(proc.cwd()) == directory:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def kill_quietly(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        pass


def terminate(pid: int, sig: int) -> None:
    """Send ``sig`` (a graceful shutdown request), then SIGKILL after the stop timeout."""
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    kill_quietly(proc, sig)
    try:
        wait_gone([pid], STOP_TIMEOUT_S)
    except DataPlaneError:
        LOG.error("pid %d ignored %s for %.0fs; killing it", pid, signal.Signals(sig).name, STOP_TIMEOUT_S)
        kill_quietly(proc, signal.SIGKILL)
        wait_gone([pid], 5.0)


def wait_gone(pids: list[int], timeout: float) -> None:
    """Wait until no pid runs (a zombie counts as gone: it holds no memory or sockets)."""
    deadline = time.monotonic() + timeout
    while True:
        running = [pid for pid in pids if alive(pid)]
        if not running:
            return
        if time.monotonic() > deadline:
            raise DataPlaneError(f"pids {running} still running {timeout:.0f}s after being stopped")
        time.sleep(0.01)


def rotate(log: Path) -> None:
    """Keep one previous generation of a server log once it outgrows the limit."""
    try:
        if log.stat().st_size > _LOG_ROTATE_BYTES:
            os.replace(log, log.with_name(log.name + ".1"))
    except FileNotFoundError:
        pass


def tail(path: Path, limit: int = 4000) -> str:
    """The end of a server log, for an error message."""
    try:
        data = path.read_bytes()[-limit:]
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return f"--- last lines of {path} ---\n" + data.decode(errors="replace")
