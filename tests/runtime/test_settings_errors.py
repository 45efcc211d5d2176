"""A bad or missing environment value stops `eco2 serve` with one line that names the variable
and says what it must be (exit 2), never a traceback naming a settings field."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def serve(name: str, session_dir, **values: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("ECO2_")}
    env.update(
        {
            "ECO2_DATA_DIR": str(session_dir / "settings-errors"),
            "ECO2_GRPC_PORT": "0",
            "ECO2_METRICS_PORT": "0",
            "LC_ALL": "C.UTF-8",
        }
    )
    env.update(values)
    return subprocess.run(
        [sys.executable, "-m", "eco2.services.cli", "serve", name], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "name,values,variable,says",
    [
        ("character", {"ECO2_GRPC_PORT": "abc"}, "ECO2_GRPC_PORT", "integer"),
        ("character", {"ECO2_GRPC_PORT": "70000"}, "ECO2_GRPC_PORT", "65535"),
        ("character", {"ECO2_LOG_LEVEL": "LOUD"}, "ECO2_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR"),
        ("events", {"ECO2_EVENTS_SHARDS": "0"}, "ECO2_EVENTS_SHARDS", "greater than or equal to 1"),
        ("gateway", {"ECO2_GATEWAY_ROUTES": "{not json"}, "ECO2_GATEWAY_ROUTES", "JSON"),
        ("character", {}, "DATABASE_URL", "PostgreSQL URL"),  # not set, and the service needs it
        ("events", {}, "REDIS_URL", "Redis URL"),
    ],
)
def test_a_bad_environment_value_is_one_line_naming_the_variable(session_dir, name, values, variable, says):
    proc = serve(name, session_dir, **values)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    line = lines[0]
    assert variable in line and says in line, line
    assert "Traceback" not in proc.stderr and "validation error" not in line
    assert variable.removeprefix("ECO2_").lower() not in line, f"names the settings field, not the variable: {line}"
