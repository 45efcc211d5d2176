"""Settings from the environment: one settings object per service, all named `ECO2_*`.

`DATABASE_URL` and `REDIS_URL` keep their conventional unprefixed names. Every field is
documented in the README's settings table (tests/system/test_docs.py keeps them in sync).

A value that does not validate raises `SettingsError`: one line naming the environment
variable, what it must be and what it was (`eco2 serve` prints it and exits 2).
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

import pydantic_settings
from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class SettingsError(ValueError):
    """A setting missing from the environment or invalid there; the message names the variable."""


def env_name(settings_class: type[BaseSettings], field: str) -> str:
    """The environment variable of a settings field: its alias (DATABASE_URL), else ECO2_<FIELD>."""
    info = settings_class.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    if isinstance(alias, str):
        return alias
    return f"{settings_class.model_config.get('env_prefix', '')}{field}".upper()


def _field_of(settings_class: type[BaseSettings], key: str) -> str:
    """The field a validation error's location names (a field name, or one of its aliases)."""
    for name, info in settings_class.model_fields.items():
        alias = info.validation_alias
        names = alias.choices if isinstance(alias, AliasChoices) else [alias]
        if key == name or key in names:
            return name
    return key


def explain(settings_class: type[BaseSettings], exc: Exception) -> str:
    """One line per setting that failed: `ECO2_GRPC_PORT='abc': must be ... (gRPC port ...)`."""
    if isinstance(exc, ValidationError):
        lines = []
        for err in exc.errors(include_url=False):
            field = _field_of(settings_class, str(err["loc"][0])) if err["loc"] else ""
            info = settings_class.model_fields.get(field)
            message = err["msg"].removeprefix("Value error, ")
            described = info is not None and info.description and info.description not in message
            what = f" ({info.description})" if described else ""
            lines.append(
                f"{env_name(settings_class, field)}={err.get('input')!r}: {message[:1].lower()}{message[1:]}{what}"
            )
        return "; ".join(lines)
    # pydantic-settings' own error: a complex field (list, dict) whose value is not JSON
    text = str(exc)
    for field, info in settings_class.model_fields.items():
        if f'"{field}"' in text:
            reason = f": {exc.__cause__}" if exc.__cause__ is not None else ""
            return f"{env_name(settings_class, field)} must be JSON ({info.description}){reason}"
    return text


POSTGRES_URL = "a PostgreSQL URL, e.g. postgresql://user:password@host:5432/eco2"
REDIS_URL = "a Redis URL, e.g. redis://host:6379/0"


def require_url(url: str, variable: str, what: str) -> str:
    """`url`, or SettingsError when it is not set: a service that needs `variable` cannot start."""
    if not url:
        raise SettingsError(f"{variable} is not set: this service needs {what}")
    return url


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

    def __init__(self, **values) -> None:
        try:
            super().__init__(**values)
        except (ValidationError, pydantic_settings.SettingsError) as exc:
            raise SettingsError(explain(type(self), exc)) from None

    deployment: Deployment = Field(
        Deployment.EMBEDDED, description="embedded (one machine, dev sign-in allowed) or production"
    )
    data_dir: Path = Field(default_factory=default_data_dir, description="data directory of the embedded stack")
    grpc_host: str = Field("127.0.0.1", description="address the gRPC server binds")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 = any free port)")
    reuse_port: bool = Field(
        False,
        description="bind the gRPC, HTTP and metrics ports with SO_REUSEPORT; `eco2 up` sets it, as it holds each port (a bound socket of its own) from choosing it until the service has bound it",
    )
    metrics_host: str = Field("127.0.0.1", description="address of the Prometheus /metrics endpoint")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus port (0 = any free port)")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: str = Field("json", pattern="^(json|text)$", description="json (one object per line) or text")
    shutdown_grace_s: float = Field(10.0, ge=0, description="seconds in-flight RPCs get to finish after SIGTERM")
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="largest gRPC message accepted or sent")
    health_check_interval_s: float = Field(
        2.0,
        gt=0,
        description="how often a service checks the dependencies it cannot serve without (PostgreSQL, Redis); health is NOT_SERVING while one fails",
    )
    health_check_timeout_s: float = Field(
        1.0, gt=0, description="how long one dependency check may take before it counts as failed"
    )
    grpc_min_ping_interval_s: float = Field(
        10.0,
        gt=0,
        description="the shortest interval between a client's keepalive pings the server accepts while it sends nothing (the mesh's clients ping every 30 s); a ping sooner is a strike",
    )
    grpc_max_ping_strikes: int = Field(
        2,
        ge=0,
        description="too-early pings a client may send before the server ends the connection with GOAWAY too_many_pings (0 = no limit)",
    )
    stream_reject_drain_s: float = Field(
        2.0,
        ge=0,
        description="the most time a refused client stream is drained (until the client pauses 100 ms) so the client gets the refusal intact",
    )
    downstream_timeout_s: float = Field(
        5.0, gt=0, description="deadline of calls to other services when the caller set none"
    )
    otel_traces_exporter: str = Field(
        "none", pattern="^(none|console|otlp)$", description="where spans go (otlp needs opentelemetry-exporter-otlp)"
    )
    database_url: str = Field(
        "", validation_alias=AliasChoices("DATABASE_URL", "ECO2_DATABASE_URL"), description="PostgreSQL URL"
    )
    redis_url: str = Field(
        "", validation_alias=AliasChoices("REDIS_URL", "ECO2_REDIS_URL"), description="Redis/Valkey URL"
    )
    db_pool_max: int = Field(10, ge=1, description="max PostgreSQL connections per process")
    migrate_on_start: bool = Field(
        True,
        description="apply the service's schema migrations when it starts; false where `eco2 migrate` runs them first (the Helm chart's hook Job)",
    )
    gc_gen0_threshold: int = Field(
        20_000,
        ge=0,
        description="`eco2 serve` freezes its start-up objects (gc.freeze) once serving and collects the youngest generation every this many allocations (Python: 700); 0 = leave the collector alone",
    )
    identity_audience: str = Field(
        "eco2-mesh", description="`aud` of the mesh identity tokens (wristbands) auth issues and services verify"
    )
    identity_issuer: str = Field("eco2-auth", description="`iss` of the wristbands: auth's ECO2_AUTH_ISSUER")
    identity_ttl_s: int = Field(
        300,
        ge=10,
        le=3600,
        description="lifetime of a wristband ext-authz injects (auth reuses one per identity for half of it)",
    )
    identity_jwks: str = Field(
        "",
        description="JSON JWKS of wristband keys trusted without asking auth (pinned keys); auth's GetJwks keys are trusted too",
    )
    identity_jwks_from: str = Field(
        default_factory=lambda: os.environ.get("ECO2_AUTH_ADDR", "127.0.0.1:50051"),
        description="address whose AuthService.GetJwks gives the wristband keys (default: ECO2_AUTH_ADDR)",
    )
    identity_jwks_refresh_s: float = Field(
        300.0, gt=0, description="how often the wristband keys are re-fetched from auth"
    )
    identity_jwks_min_refresh_s: float = Field(
        1.0, ge=0, description="least time between two fetches caused by an unknown key id"
    )
    identity_cache_size: int = Field(
        10_000, ge=1, description="verified wristbands kept per process (a token's signature is checked once)"
    )
    event_loop: str = Field(
        "uvloop",
        pattern="^(asyncio|uvloop)$",
        description="event loop of `eco2 serve` processes: asyncio, or uvloop (when installed)",
    )

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"must be {', '.join(LOG_LEVELS[:-1])} or {LOG_LEVELS[-1]}")
        return value.upper()


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
