"""The lock that makes one process the owner of a data dir for the data plane's lifetime."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from .processes import DataPlaneError, read_pid

LOCK_FILE = ".lock"


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


class DataDirLock:
    """An fcntl lock on ``<data dir>/.lock``, which holds the owner's pid while it is held.

    The kernel releases the lock when the owner's descriptor closes, so a crashed owner never
    leaves the data dir locked.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise DataDirInUseError naming the process that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DataPlaneError(f"cannot lock {self.path}: {exc}") from exc
            raise DataDirInUseError(self.data_dir, read_pid(self.path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
