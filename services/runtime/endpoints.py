"""`<data dir>/endpoints.json`: the addresses of the stack `eco2 up` runs, for the command-line tools.

`eco2 up` writes the file once every child is ready and removes it when it stops; a file left
by a crashed run names a pid that is gone (or reused by a later process), so it counts as no stack.
"""

from __future__ import annotations

import json
from pathlib import Path

import psutil

from .settings import RuntimeSettings

ENDPOINTS_FILE = "endpoints.json"


class NoStack(FileNotFoundError):
    """No stack runs on the data dir (no endpoints.json, or one left by a dead `eco2 up`)."""


def read_endpoints(data_dir: Path | None) -> dict:
    """The endpoints of the stack on `data_dir` (default: ECO2_DATA_DIR); NoStack when none runs."""
    data_dir = data_dir or RuntimeSettings().data_dir
    path = data_dir / ENDPOINTS_FILE
    start = f"start one with `eco2 up --data-dir {data_dir}`"
    try:
        endpoints = json.loads(path.read_text())
        written = path.stat().st_mtime
    except FileNotFoundError:
        raise NoStack(f"no stack is running on {data_dir} ({path} missing): {start}") from None
    if not _is_running_since(endpoints.get("pid"), written):
        raise NoStack(
            f"no stack is running on {data_dir} ({path} was left by `eco2 up` pid {endpoints.get('pid')}, which is gone): {start}"
        )
    return endpoints


def _is_running_since(pid: object, written: float) -> bool:
    """Whether `pid` is a live process that already ran when endpoints.json was written (a pid
    reused by a later process is not the stack's)."""
    if not isinstance(pid, int):
        return False
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= written + 1
    except psutil.NoSuchProcess:
        return False
