"""Shared fixtures: one real embedded PostgreSQL + Valkey per test session, and real gRPC
servers on free ports (in-process, or as `eco2 serve` / `eco2 up` processes)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from support.identity import TEST_JWKS

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
os.environ.setdefault("LC_ALL", "C.UTF-8")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"../shared not present at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def session_dir():
    """A world-traversable temp dir: as root, PostgreSQL runs as an unprivileged user that
    must reach its data dir (pytest's own tmp dirs are mode 0700)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="eco2-test-", dir=os.environ.get("ECO2_TEST_TMP", "/tmp")))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def dataplane(session_dir):
    """Real PostgreSQL and Valkey for the whole test session."""
    from eco2.services.dataplane.embedded import EmbeddedDataPlane

    plane = EmbeddedDataPlane(session_dir / "data")
    info = plane.start()
    yield info
    plane.stop()


@pytest.fixture(scope="session")
async def session_auth(dataplane):
    """One real auth server for the session: what ECO2_AUTH_ADDR points services at, so chat can
    get job wristbands (MeshIdentityService) and every service trusts auth's keys (GetJwks)."""
    from eco2.services.auth.app import create
    from support.servers import env, running

    base = {
        "DATABASE_URL": dataplane.database_url,
        "REDIS_URL": dataplane.redis_url,
        "ECO2_DEPLOYMENT": "embedded",
        "ECO2_GRPC_PORT": "0",
        "ECO2_LOG_LEVEL": "WARNING",
        "ECO2_IDENTITY_JWKS": TEST_JWKS,
    }
    with env(base):
        app = create()
    async with running(app, metrics=False) as server:
        yield f"127.0.0.1:{server.port}"


@pytest.fixture(scope="session")
def service_env(dataplane, session_auth) -> dict[str, str]:
    """Environment for a service process or settings object pointed at the session data plane."""
    return {
        "ECO2_AUTH_ADDR": session_auth,
        "DATABASE_URL": dataplane.database_url,
        "REDIS_URL": dataplane.redis_url,
        "ECO2_DEPLOYMENT": "embedded",
        "ECO2_GRPC_PORT": "0",
        "ECO2_METRICS_PORT": "0",
        "ECO2_LOG_LEVEL": "WARNING",
        "ECO2_IDENTITY_JWKS": TEST_JWKS,
    }


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable
