"""Domain errors and their mapping to gRPC status codes with `google.rpc` details.

Handlers raise these; the runtime's server interceptor turns them into a status with
`ErrorInfo` (always), `BadRequest` (field violations) and `RetryInfo` (when a retry may
help) in the `grpc-status-details-bin` trailer. Anything else a handler raises becomes
INTERNAL with a generic message: stack traces go to the log, never to the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "eco2.mesh"


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
        info.Pack(error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata))
        details.append(info)
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in self.violations
                ]
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
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=details)

    def to_grpc_status(self) -> grpc.Status:
        return rpc_status.to_status(self.to_status())


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


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


class Aborted(DomainError):
    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class Unavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(DomainError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


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
