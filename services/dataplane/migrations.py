"""Plain-SQL migrations: ``NNNN_description.sql`` files applied in order, once, per service.

Each file runs in its own transaction and is recorded in ``eco2_schema_migrations`` with a
checksum of its text. Concurrent runners (several replicas starting at once) are serialised by a
session-level advisory lock, so each file is applied exactly once. Editing a file that was
already applied is refused: write a new migration instead.
"""

from __future__ import annotations

import hashlib
import logging
import pathlib
import re
from dataclasses import dataclass
from importlib.resources.abc import Traversable

import asyncpg

from eco2.services.runtime.settings import POSTGRES_URL, require_url

LOG = logging.getLogger("eco2.dataplane.migrations")

MIGRATIONS_TABLE = "eco2_schema_migrations"
_FILE_RE = re.compile(r"^(\d{4})_([A-Za-z0-9][A-Za-z0-9_\-]*)\.sql$")
# One advisory lock key for all services: the bookkeeping table is shared.
_LOCK_KEY = int.from_bytes(hashlib.sha256(MIGRATIONS_TABLE.encode()).digest()[:8], "big", signed=True)

_CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
    service    text        NOT NULL,
    version    int         NOT NULL,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service, version)
)
"""


class MigrationError(RuntimeError):
    """A migration could not be applied, or the recorded history disagrees with the files."""


@dataclass(frozen=True)
class Migration:
    """One SQL file."""

    version: int
    name: str
    sql: str
    checksum: str


def load_migrations(directory: pathlib.Path | Traversable) -> list[Migration]:
    """Read and order the ``NNNN_description.sql`` files of ``directory``.

    Other files (``__init__.py``, READMEs) are ignored; a ``.sql`` file with another name or a
    repeated version number is an error, so a typo never silently skips a migration.
    """
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist")
    found: dict[int, Migration] = {}
    for entry in directory.iterdir():
        if not entry.name.endswith(".sql") or not entry.is_file():
            continue
        match = _FILE_RE.match(entry.name)
        if match is None:
            raise MigrationError(f"migration file {entry.name!r} in {directory} is not named NNNN_description.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(
                f"migrations {found[version].name!r} and {entry.name!r} in {directory} share version {version}"
            )
        text = entry.read_bytes().decode("utf-8").replace("\r\n", "\n")
        found[version] = Migration(
            version=version,
            name=entry.name,
            sql=text,
            checksum=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        )
    return [found[v] for v in sorted(found)]


async def apply_migrations(
    dsn: str,
    service: str,
    directory: pathlib.Path | Traversable,
    *,
    lock_timeout_s: float = 120.0,
) -> list[str]:
    """Apply the pending migrations of ``service`` from ``directory``; return their file names.

    Raises ``MigrationError`` when a file fails (its transaction is rolled back, files before it
    stay applied), when an applied file's checksum changed, or when the lock is not obtained in
    ``lock_timeout_s``.
    """
    if not service:
        raise MigrationError("service name must not be empty")
    require_url(dsn, "DATABASE_URL", POSTGRES_URL)  # asyncpg would try libpq's defaults instead
    migrations = load_migrations(directory)
    conn = await asyncpg.connect(dsn, server_settings={"application_name": f"eco2-migrate-{service}"})
    try:
        await _lock(conn, lock_timeout_s)
        try:
            await conn.execute(_CREATE_TABLE)
            return await _apply_pending(conn, service, migrations)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()


async def _lock(conn: asyncpg.Connection, timeout_s: float) -> None:
    await conn.execute(f"SET lock_timeout = {int(timeout_s * 1000)}")
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    except asyncpg.exceptions.LockNotAvailableError as exc:
        raise MigrationError(f"another process held the migration lock for more than {timeout_s:.0f}s") from exc
    finally:
        await conn.execute("RESET lock_timeout")


async def _apply_pending(conn: asyncpg.Connection, service: str, migrations: list[Migration]) -> list[str]:
    rows = await conn.fetch(f"SELECT version, name, checksum FROM {MIGRATIONS_TABLE} WHERE service = $1", service)
    applied = {row["version"]: row for row in rows}
    on_disk = {m.version for m in migrations}
    for version in sorted(set(applied) - on_disk):
        LOG.warning("%s: applied migration %s is no longer on disk", service, applied[version]["name"])

    done: list[str] = []
    newest_applied = max(applied, default=0)
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded is not None:
            if recorded["checksum"] != migration.checksum:
                raise MigrationError(
                    f"{service}: migration {migration.name} was changed after it was applied "
                    f"(recorded as {recorded['name']} with checksum {recorded['checksum'][:12]}, "
                    f"file now has {migration.checksum[:12]}); never edit an applied migration, "
                    "add a new one instead"
                )
            continue
        if migration.version < newest_applied:
            LOG.warning("%s: applying %s after newer migration %04d", service, migration.name, newest_applied)
        try:
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    f"INSERT INTO {MIGRATIONS_TABLE} (service, version, name, checksum) VALUES ($1, $2, $3, $4)",
                    service,
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
        except asyncpg.PostgresError as exc:
            detail = f" ({exc.detail})" if getattr(exc, "detail", None) else ""
            raise MigrationError(
                f"{service}: migration {migration.name} failed and was rolled back: {type(exc).__name__}: {exc}{detail}"
            ) from exc
        LOG.info("%s: applied migration %s", service, migration.name)
        done.append(migration.name)
    return done
