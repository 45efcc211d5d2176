"""`eco2 migrate`: the schema migrations of every service applied once, before the pods start (the
Helm chart's hook Job), and ECO2_MIGRATE_ON_START=false keeping a starting service from migrating."""

from __future__ import annotations

import json
import os
import subprocess
from importlib import resources

import asyncpg
import pytest

from eco2.services.images.app import ImagesApp, ImagesSettings
from eco2.services.registry import MIGRATIONS, SERVICES
from support.servers import running


async def _fresh_database(admin_url: str, name: str) -> str:
    """An empty database beside the session's (migrations of other tests do not reach it)."""
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name}")
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return admin_url.rsplit("/", 1)[0] + "/" + name


def _migrate(python: str, env: dict[str, str], *names: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, "-m", "eco2.services.cli", "migrate", *names],
        env={**os.environ, **env},
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _sql_files(service: str) -> list[str]:
    folder = resources.files(f"eco2.services.{service}") / "migrations"
    return sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))


def test_every_service_with_migrations_is_listed():
    with_sql = sorted(name for name in SERVICES if (resources.files(f"eco2.services.{name}") / "migrations").is_dir())
    assert sorted(MIGRATIONS) == with_sql


async def test_eco2_migrate_applies_everything_once(dataplane, service_env, python):
    url = await _fresh_database(dataplane.database_url, f"eco2_migrate_{os.getpid()}")
    env = {**service_env, "DATABASE_URL": url}

    first = _migrate(python, env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {name: _sql_files(name) for name in MIGRATIONS}

    again = _migrate(python, env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {name: [] for name in MIGRATIONS}

    conn = await asyncpg.connect(url)
    try:
        recorded = await conn.fetch("SELECT service, name FROM eco2_schema_migrations ORDER BY service, name")
        # the LangGraph checkpoint tables are chat's too: pods no longer create them at start
        checkpoints = await conn.fetchval("SELECT to_regclass('public.checkpoints') IS NOT NULL")
    finally:
        await conn.close()
    assert sorted((r["service"], r["name"]) for r in recorded) == sorted(
        (s, f) for s in MIGRATIONS for f in _sql_files(s)
    )
    assert checkpoints


def test_eco2_migrate_refuses_a_service_without_migrations(service_env, python):
    result = _migrate(python, service_env, "events")
    assert result.returncode == 2
    assert "no migrations for events" in result.stderr


def test_eco2_migrate_needs_a_database_url(service_env, python):
    result = _migrate(python, {**service_env, "DATABASE_URL": ""}, "auth")
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr


@pytest.mark.parametrize("migrate_on_start", [False, True])
async def test_migrate_on_start(dataplane, session_dir, migrate_on_start):
    url = await _fresh_database(dataplane.database_url, f"eco2_on_start_{str(migrate_on_start).lower()}_{os.getpid()}")
    settings = ImagesSettings(
        database_url=url,
        deployment="embedded",
        data_dir=session_dir / "on-start",
        grpc_port=0,
        metrics_port=0,
        migrate_on_start=migrate_on_start,
    )
    async with running(ImagesApp(settings), metrics=False):
        pass
    conn = await asyncpg.connect(url)
    try:
        table = await conn.fetchval("SELECT to_regclass('public.eco2_schema_migrations') IS NOT NULL")
    finally:
        await conn.close()
    assert table is migrate_on_start
