"""Domain errors and their mapping to gRPC status codes with `google.rpc` details.

Handlers raise these; the runtime's server interceptor turns them into a status with
`ErrorInfo` (always), `BadRequest` (field violations) and `RetryInfo` (when a retry may
help) in the `grpc-status-details-bin` trailer. A dependency that is down (PostgreSQL or Redis
refusing or dropping connections, `dependency_down`) becomes UNAVAILABLE + RetryInfo. Anything
else a handler raises becomes INTERNAL with a generic message: stack traces go to the log,
never to the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "eco2.mesh"
#: Bounds of what an error sends back, so the status always reaches the client: its details
#: travel in one trailer, and gRPC clients drop a call whose metadata passes 8 KiB (soft
#: limit, at random) or 16 KiB (hard limit) with RESOURCE_EXHAUSTED "Stream removed" instead
#: of the error. A request with thousands of bad fields would otherwise get as many violations.
MAX_VIOLATIONS = 20
MAX_TEXT_CHARS = 300


def _bounded(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class DomainError(Exception):
    """Base of every error a handler may raise on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason = "ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})
        self.violations = list(violations)
        self.retry_after_s = retry_after_s

    def to_status(self) -> status_pb2.Status:
        details: list[any_pb2.Any] = []
        info = any_pb2.Any()
        metadata = {_bounded(k, 64): _bounded(v) for k, v in list(self.metadata.items())[:MAX_VIOLATIONS]}
        info.Pack(error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=metadata))
        details.append(info)
        if self.violations:
            shown = self.violations[:MAX_VIOLATIONS]
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=_bounded(v.field, 100), description=_bounded(v.description)
                    )
                    for v in shown
                ]
            )
            if len(self.violations) > len(shown):
                bad.field_violations.add(
                    field="…", description=f"and {len(self.violations) - len(shown)} more violations"
                )
            packed = any_pb2.Any()
            packed.Pack(bad)
            details.append(packed)
        if self.retry_after_s is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after_s * 1e9))
            packed = any_pb2.Any()
            packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
            details.append(packed)
        return status_pb2.Status(code=self.code.value[0], message=_bounded(self.message, 1000), details=details)

    def to_grpc_status(self) -> grpc.Status:
        return rpc_status.to_status(self.to_status())


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(DomainError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


#: How long a caller is told to wait before retrying a call that found a dependency down.
DEPENDENCY_RETRY_S = 1.0
#: Libraries of the data plane, by module prefix: an OSError raised inside one of them is that
#: dependency's network failing (refused, reset, timed out, unresolvable).
_DATA_PLANE_MODULES = (("asyncpg", "postgres"), ("psycopg", "postgres"), ("redis", "redis"))


def dependency_down(exc: BaseException) -> Unavailable | None:
    """UNAVAILABLE + RetryInfo when `exc`, or an exception that caused it, says that PostgreSQL
    or Redis could not be reached or dropped the connection mid-call; None for any other error
    (those stay INTERNAL: a bug, not a dependency to wait for)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        dependency = _down_dependency(cause)
        if dependency is not None:
            return Unavailable(
                f"{dependency} is unavailable ({type(cause).__name__}); retry shortly",
                reason="DEPENDENCY_UNAVAILABLE",
                metadata={"dependency": dependency},
                retry_after_s=DEPENDENCY_RETRY_S,
            )
        cause = cause.__cause__ or cause.__context__
    return None


def _down_dependency(exc: BaseException) -> str | None:
    import asyncpg
    import psycopg
    import redis.exceptions

    if isinstance(
        exc,
        (
            asyncpg.PostgresConnectionError,
            asyncpg.CannotConnectNowError,
            asyncpg.AdminShutdownError,
            asyncpg.CrashShutdownError,
            asyncpg.TooManyConnectionsError,
            psycopg.OperationalError,
        ),
    ):
        return "postgres"  # psycopg's OperationalError: connection lost or refused, pool timeout
    if isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc):
        # asyncpg saw the connection drop before the next use (a transaction's COMMIT after the
        # server died mid-block): not a subclass of its own, only this message
        return "postgres"
    if isinstance(exc, asyncpg.InternalClientError) and str(exc).startswith("cannot switch to state"):
        # the protocol of a connection the server dropped mid-operation, e.g. the pool's reset
        # query when the connection is released after the server died (asyncpg then discards it)
        return "postgres"
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return "redis"
    if isinstance(exc, OSError):
        return _raised_in(exc)
    return None


def _raised_in(exc: BaseException) -> str | None:
    """The data-plane dependency whose library the exception was raised in, if any."""
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        for prefix, dependency in _DATA_PLANE_MODULES:
            if module == prefix or module.startswith(prefix + "."):
                return dependency
        tb = tb.tb_next
    return None


def status_details(call_or_error: grpc.aio.AioRpcError | grpc.Call) -> status_pb2.Status | None:
    """Client side: the `google.rpc.Status` carried by a failed call, if any."""
    metadata = call_or_error.trailing_metadata() or ()
    for key, value in metadata:
        if key == "grpc-status-details-bin":
            status = status_pb2.Status()
            status.ParseFromString(value)
            return status
    return None


def unpack_details(status: status_pb2.Status) -> dict[str, object]:
    """Client side: {'ErrorInfo': ..., 'BadRequest': ..., 'RetryInfo': ...} of a Status."""
    out: dict[str, object] = {}
    for detail in status.details:
        for cls in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if detail.Is(cls.DESCRIPTOR):
                msg = cls()
                detail.Unpack(msg)
                out[cls.DESCRIPTOR.name] = msg
    return out


def describe(error: grpc.aio.AioRpcError) -> str:
    """Client side: a failed call in one line for a person to read: the code, then what the
    server said about each field (BadRequest: "message: must be at most 1000 characters (got
    5000)") or else its message, and when to retry if it sent RetryInfo."""
    text = error.details() or ""
    retry = ""
    status = status_details(error)
    if status is not None:
        details = unpack_details(status)
        bad = details.get("BadRequest")
        if bad is not None and bad.field_violations:
            text = "; ".join(f"{v.field}: {v.description}" for v in bad.field_violations)
        info = details.get("RetryInfo")
        if info is not None:
            retry = f" (retry in {info.retry_delay.ToTimedelta().total_seconds():g} s)"
    return " ".join(f"{error.code().name}: {text}{retry}".split())
