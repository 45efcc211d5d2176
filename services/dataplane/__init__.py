"""Data plane: embedded PostgreSQL + Valkey, SQL migrations, and URL-based clients."""

from eco2.services.dataplane.embedded import (
    DataDirInUseError,
    DataPlaneError,
    DataPlaneInfo,
    EmbeddedDataPlane,
)
from eco2.services.dataplane.migrations import MigrationError, apply_migrations
from eco2.services.dataplane.urls import create_pg_pool, create_redis, redact_url

__all__ = [
    "DataDirInUseError",
    "DataPlaneError",
    "DataPlaneInfo",
    "EmbeddedDataPlane",
    "MigrationError",
    "apply_migrations",
    "create_pg_pool",
    "create_redis",
    "redact_url",
]
