"""Settings from the environment: one settings object per service, all named `ECO2_*`.

`DATABASE_URL` and `REDIS_URL` keep their conventional unprefixed names. Every field is
documented in the README's settings table (tests/test_docs.py keeps them in sync).
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Deployment(StrEnum):
    EMBEDDED = "embedded"
    PRODUCTION = "production"


def default_data_dir() -> Path:
    """Where `eco2 up` keeps its data when no --data-dir / ECO2_DATA_DIR is given.

    Root gets /var/lib/eco2 (embedded PostgreSQL refuses data under private folders such
    as /root); other users get $XDG_DATA_HOME/eco2 (~/.local/share/eco2).
    """
    if os.geteuid() == 0:
        return Path("/var/lib/eco2")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "eco2"


class RuntimeSettings(BaseSettings):
    """What every service process reads."""

    model_config = SettingsConfigDict(env_prefix="ECO2_", extra="ignore", frozen=True, populate_by_name=True)

    deployment: Deployment = Field(Deployment.EMBEDDED, description="embedded (one machine, dev sign-in allowed) or production")
    data_dir: Path = Field(default_factory=default_data_dir, description="data directory of the embedded stack")
    grpc_host: str = Field("127.0.0.1", description="address the gRPC server binds")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 = any free port)")
    metrics_host: str = Field("127.0.0.1", description="address of the Prometheus /metrics endpoint")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus port (0 = any free port)")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: str = Field("json", pattern="^(json|text)$", description="json (one object per line) or text")
    shutdown_grace_s: float = Field(10.0, ge=0, description="seconds in-flight RPCs get to finish after SIGTERM")
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="largest gRPC message accepted or sent")
    grpc_min_ping_interval_s: float = Field(10.0, gt=0, description="the shortest interval between a client's keepalive pings the server accepts while it sends nothing (the mesh's clients ping every 30 s); a ping sooner is a strike")
    grpc_max_ping_strikes: int = Field(2, ge=0, description="too-early pings a client may send before the server ends the connection with GOAWAY too_many_pings (0 = no limit)")
    stream_reject_drain_s: float = Field(2.0, ge=0, description="the most time a refused client stream is drained (until the client pauses 100 ms) so the client gets the refusal intact")
    downstream_timeout_s: float = Field(5.0, gt=0, description="deadline of calls to other services when the caller set none")
    otel_traces_exporter: str = Field("none", pattern="^(none|console|otlp)$", description="where spans go (otlp needs opentelemetry-exporter-otlp)")
    database_url: str = Field("", validation_alias=AliasChoices("DATABASE_URL", "ECO2_DATABASE_URL"), description="PostgreSQL URL")
    redis_url: str = Field("", validation_alias=AliasChoices("REDIS_URL", "ECO2_REDIS_URL"), description="Redis/Valkey URL")
    db_pool_max: int = Field(10, ge=1, description="max PostgreSQL connections per process")
    gc_gen0_threshold: int = Field(20_000, ge=0, description="`eco2 serve` freezes its start-up objects (gc.freeze) once serving and collects the youngest generation every this many allocations (Python: 700); 0 = leave the collector alone")
    event_loop: str = Field("uvloop", pattern="^(asyncio|uvloop)$", description="event loop of `eco2 serve` processes: asyncio, or uvloop (when installed)")


class Endpoints(BaseSettings):
    """Addresses of the other services, for clients (host:port)."""

    model_config = SettingsConfigDict(env_prefix="ECO2_", extra="ignore", frozen=True)

    auth_addr: str = Field("127.0.0.1:50051", description="auth service address")
    character_addr: str = Field("127.0.0.1:50052", description="character service address")
    location_addr: str = Field("127.0.0.1:50053", description="location service address")
    images_addr: str = Field("127.0.0.1:50054", description="images service address")
    chat_addr: str = Field("127.0.0.1:50055", description="chat service address")
    scan_addr: str = Field("127.0.0.1:50056", description="scan service address")
    events_addr: str = Field("127.0.0.1:50057", description="events service address")

    def address_of(self, service: str) -> str:
        return getattr(self, f"{service}_addr")
