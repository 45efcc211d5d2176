"""The checks .ci/run makes before the tests, so that a local `python -m pytest` makes them too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_the_import_contracts_of_pyproject_are_kept():
    """Services independent of each other, the edge and the shared packages knowing no service."""
    result = _run(str(Path(sys.executable).with_name("lint-imports")), "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_finds_nothing():
    """The rules of pyproject.toml [tool.ruff.lint] (pyflakes, pycodestyle, bugbear, isort, pyupgrade)."""
    result = _run(sys.executable, "-m", "ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_tree_is_formatted():
    """`ruff format` (pyproject.toml [tool.ruff], 120 columns) leaves every file as it is."""
    result = _run(sys.executable, "-m", "ruff", "format", "--check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr
