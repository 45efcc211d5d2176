"""The runtime's server interceptor: error mapping, malformed input, metrics, context,
and shutdown of long streams with a status instead of a connection reset."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from . import context as ctx
from .errors import DomainError, InvalidArgument, Unauthenticated, dependency_down
from .identity import IdentityVerifier
from .metrics import MALFORMED, RPC_HANDLED, RPC_SECONDS, STREAMS_ACTIVE
from .telemetry import current_traceparent

log = logging.getLogger("eco2.rpc")


class _Malformed:
    """Stands in for a request whose bytes did not parse, so the handler can reject it."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


def _safe_deserializer(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:  # DecodeError and friends: any unparsable input
            return _Malformed(len(data))

    return parse


def _malformed_error(method: str, size: int) -> InvalidArgument:
    MALFORMED.labels(method).inc()
    return InvalidArgument(
        f"request is not a valid protobuf message for {method} ({size} bytes)", reason="MALFORMED_REQUEST"
    )


class ShutdownCoordinator:
    """Knows the streams in flight and ends them with UNAVAILABLE when the server stops."""

    def __init__(self) -> None:
        self.stopping = False
        self._streams: set[asyncio.Task] = set()

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    def track(self, task: asyncio.Task) -> None:
        self._streams.add(task)

    def untrack(self, task: asyncio.Task) -> None:
        self._streams.discard(task)

    async def drain_streams(self, timeout: float) -> None:
        """Let streams finish for `timeout` seconds, then end the rest with a status."""
        self.stopping = True
        deadline = time.monotonic() + timeout
        while self._streams and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in list(self._streams):
            task.cancel()


def _set_shutdown_status(context) -> None:
    status = _shutdown_status()
    context.set_code(status.code)
    context.set_details(status.details)
    context.set_trailing_metadata(status.trailing_metadata)


def _shutdown_status() -> grpc.Status:
    delay = duration_pb2.Duration(seconds=1)
    retry = any_pb2.Any()
    retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason="SERVER_SHUTTING_DOWN", domain="eco2.mesh"))
    return rpc_status.to_status(
        status_pb2.Status(
            code=grpc.StatusCode.UNAVAILABLE.value[0],
            message="server is shutting down; retry (streams resume from the last seq)",
            details=[info, retry],
        )
    )


class CoreServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        shutdown: ShutdownCoordinator,
        *,
        identities: IdentityVerifier | None = None,
        light_tracing: bool = True,
        reject_drain_s: float = 2.0,
        bare_methods: frozenset[str] = frozenset(),
    ) -> None:
        self.shutdown = shutdown
        #: Methods served as registered, without this wrapper (see ServiceApp.bare_methods).
        self.bare_methods = bare_methods
        #: Verifies the caller's wristband; None = no call carries an identity (caller_id refuses).
        self.identities = identities
        #: How long a client stream is drained before a refusal is sent (see _drain).
        self.reject_drain_s = reject_drain_s
        #: False when the OpenTelemetry interceptor runs in front and owns the trace context.
        self.light_tracing = light_tracing
        # Handlers are registered once per method, so each is wrapped once, not per call.
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None  # grpc answers UNIMPLEMENTED
            wrapped = self._wrapped[method] = handler if method in self.bare_methods else self._wrap(method, handler)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        deser = _safe_deserializer(handler.request_deserializer)
        ser = handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(self._unary(method, handler.unary_unary, False), deser, ser)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(self._unary(method, handler.stream_unary, True), deser, ser)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(self._stream(method, handler.unary_stream, False), deser, ser)
        return grpc.stream_stream_rpc_method_handler(self._stream(method, handler.stream_stream, True), deser, ser)

    # -- helpers -----------------------------------------------------------------------
    async def _identify(self, token: str) -> None:
        """Verify the call's wristband: a forged, expired or foreign one is refused with
        UNAUTHENTICATED whether or not the method needs a caller."""
        if self.identities is None:
            raise Unauthenticated("this server verifies no identities", reason="IDENTITY_NOT_CONFIGURED")
        ctx.set_identity(await self.identities.verify(token))

    @staticmethod
    def _checked_requests(method: str, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async def gen():
            async for item in requests:
                if isinstance(item, _Malformed):
                    raise _malformed_error(method, item.size)
                yield item

        return gen()

    async def _fail(self, method: str, context, exc: BaseException) -> grpc.StatusCode:
        """Turn an exception into a status on the wire; returns the code sent."""
        if isinstance(exc, DomainError):
            status = exc.to_grpc_status()
            if exc.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                log.error("rpc failed", extra={"grpc_method": method, "reason": exc.reason})
            await context.abort(status.code, status.details, status.trailing_metadata)
        if isinstance(exc, grpc.aio.AioRpcError):
            # A downstream call failed: pass its code through with context, never UNKNOWN.
            code = exc.code()
            if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED):
                code = grpc.StatusCode.INTERNAL
            log.warning("downstream call failed", extra={"grpc_method": method, "downstream_code": exc.code().name})
            await context.abort(code, f"dependency call failed: {exc.code().name}: {exc.details()}")
        down = dependency_down(exc)
        if down is not None:  # PostgreSQL or Redis unreachable: the caller retries, nothing to debug here
            log.warning(
                "dependency unavailable",
                extra={"grpc_method": method, "dependency": down.metadata["dependency"], "error": repr(exc)[:300]},
            )
            status = down.to_grpc_status()
            await context.abort(status.code, status.details, status.trailing_metadata)
        log.exception("unhandled error", extra={"grpc_method": method, "traceparent": current_traceparent()})
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error (trace {current_traceparent() or 'n/a'})")
        return grpc.StatusCode.INTERNAL  # not reached: abort raises

    def _unary(self, method: str, behavior, client_streaming: bool):
        seconds = RPC_SECONDS.labels(method)
        handled = _HandledCounter(method)

        async def call(request, context):
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            token = ctx.enter(context, light_tracing=self.light_tracing)
            try:
                if token is not None:
                    await self._identify(token)
                if client_streaming:
                    return await behavior(self._checked_requests(method, request), context)
                if isinstance(request, _Malformed):
                    raise _malformed_error(method, request.size)
                return await behavior(request, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = _code_of(context)
                raise
            except Exception as exc:  # mapped to a status, never leaked
                code = _status_of(exc)
                if client_streaming and isinstance(exc, DomainError):
                    # the raw stream, not the checked one: that one ends at a malformed message
                    # (the client still writing), the drain reads past it and drops it
                    await _drain(request, self.reject_drain_s)
                await self._fail(method, context, exc)
            finally:
                handled.inc(code)
                seconds.observe(time.perf_counter() - started)

        return call

    def _request(self, method: str, request, client_streaming: bool):
        if client_streaming:
            return self._checked_requests(method, request)
        if isinstance(request, _Malformed):
            raise _malformed_error(method, request.size)
        return request

    def _stream_outcome(self, context, exc: BaseException) -> tuple[grpc.StatusCode, str]:
        """How a stream handler's exception ends the call, shared by both stream wrappers: the
        status it is counted as, and "raise" (propagate), "fail" (map to a status with `_fail`)
        or "end" (the stream ends here)."""
        if isinstance(exc, asyncio.CancelledError):
            if self.shutdown.stopping:  # SIGTERM: the stream ends with UNAVAILABLE + RetryInfo, not a reset
                _set_shutdown_status(context)
                return grpc.StatusCode.UNAVAILABLE, "end"
            return grpc.StatusCode.CANCELLED, "raise"
        if isinstance(exc, GeneratorExit):  # the client went away: grpc closes the generator
            return grpc.StatusCode.CANCELLED, "raise"
        if isinstance(exc, grpc.aio.AbortError):
            return _code_of(context), "raise"
        if isinstance(exc, Exception):  # mapped to a status, never leaked
            return _status_of(exc), "fail"
        return grpc.StatusCode.OK, "raise"  # KeyboardInterrupt, SystemExit: not ours to map

    def _stream(self, method: str, behavior, client_streaming: bool):
        # Every stream is served as a writer coroutine (`_writer_stream`), generator handlers
        # included, so a shutdown cancel always lands inside the wrapper. OpenTelemetry's
        # interceptor, when in front (not light_tracing), iterates the stream handler it wraps
        # with `async for`: then the stream stays an async generator, and a SIGTERM that finds
        # it blocked in grpc's write (a slow reader) ends it with grpc's own UNAVAILABLE.
        if self.light_tracing:
            return self._writer_stream(method, behavior, client_streaming)
        shutdown = self.shutdown
        seconds = RPC_SECONDS.labels(method)
        handled = _HandledCounter(method)
        active = STREAMS_ACTIVE.labels(method)

        async def call(request, context):
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            token = ctx.enter(context, light_tracing=self.light_tracing)
            task = asyncio.current_task()
            shutdown.track(task)
            active.inc()
            try:
                if token is not None:
                    await self._identify(token)
                result = behavior(self._request(method, request, client_streaming), context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                else:  # handler writes with context.write()
                    await result
            except BaseException as exc:
                code, then = self._stream_outcome(context, exc)
                if then == "fail":
                    await self._fail(method, context, exc)
                elif then == "raise":
                    raise
            finally:
                shutdown.untrack(task)
                active.dec()
                handled.inc(code)
                seconds.observe(time.perf_counter() - started)

        return call

    def _writer_stream(self, method: str, behavior, client_streaming: bool):
        """A stream served as a coroutine writing with context.write(), not an async generator,
        so grpc awaits it directly (its reader/writer path). A coroutine handler is awaited; a
        generator handler's items are written here. Two gains: an idle stream holds one frame
        instead of a generator and its asend object (docs/adr/0003, 0040), and the write happens
        inside this wrapper, so a shutdown cancel that finds the stream blocked on a slow
        reader still ends it with UNAVAILABLE + RetryInfo (a cancel inside grpc's own generator
        loop would leave the client only grpc's status-less cancellation at the end of the grace).
        Same metrics, error mapping and shutdown status as `_stream`."""
        shutdown = self.shutdown
        seconds = RPC_SECONDS.labels(method)
        handled = _HandledCounter(method)
        active = STREAMS_ACTIVE.labels(method)

        async def call(request, context):
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            token = ctx.enter(context, light_tracing=self.light_tracing)
            task = asyncio.current_task()
            shutdown.track(task)
            active.inc()
            try:
                if token is not None:
                    await self._identify(token)
                result = behavior(self._request(method, request, client_streaming), context)
                if inspect.isasyncgen(result):
                    try:
                        async for item in result:
                            await context.write(item)
                    finally:  # cancelled in write(): the handler's own finally still runs now
                        await result.aclose()
                else:
                    await result
            except BaseException as exc:
                code, then = self._stream_outcome(context, exc)
                if then == "fail":
                    await self._fail(method, context, exc)
                elif then == "raise":
                    raise
            finally:
                shutdown.untrack(task)
                active.dec()
                handled.inc(code)
                seconds.observe(time.perf_counter() - started)

        return call


#: A refused client stream is read until the client pauses this long (or the budget ends).
DRAIN_QUIET_S = 0.1


async def _drain(requests: AsyncIterator[Any], budget_s: float, quiet_s: float = DRAIN_QUIET_S) -> None:
    """Read (and drop) what the client is still sending before refusing its stream.

    Refusing a client stream while the client is mid-write races in grpc's client: a write
    that fails because the call ended sets the call's status to INTERNAL ("Internal error
    from Core") when it lands before the real status (grpcio 1.85, `_call.py` `_write`; about
    half the refusals of a client that never stops writing). So the refusal waits until the
    client half-closes or pauses for `quiet_s`, for at most `budget_s`; a client that keeps
    sending longer is refused anyway.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget_s
    items = aiter(requests)
    try:
        while (left := deadline - loop.time()) > 0:
            await asyncio.wait_for(anext(items), min(quiet_s, left))
    except Exception:  # end of stream, a pause, the budget, or an error in the rest: refuse now
        return


class _HandledCounter:
    """RPC_HANDLED children of one method, looked up once per status code."""

    __slots__ = ("method", "children")

    def __init__(self, method: str) -> None:
        self.method = method
        self.children: dict[grpc.StatusCode, Any] = {}

    def inc(self, code: grpc.StatusCode) -> None:
        child = self.children.get(code)
        if child is None:
            child = self.children[code] = RPC_HANDLED.labels(self.method, code.name)
        child.inc()


def _status_of(exc: Exception) -> grpc.StatusCode:
    """The status `_fail` sends for `exc` (for the RPC metrics)."""
    code = getattr(exc, "code", None)
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code()
    return grpc.StatusCode.UNAVAILABLE if dependency_down(exc) is not None else grpc.StatusCode.INTERNAL


def _code_of(context) -> grpc.StatusCode:
    try:
        code = context.code()
    except Exception:
        return grpc.StatusCode.UNKNOWN
    if isinstance(code, grpc.StatusCode):
        return code
    for sc in grpc.StatusCode:
        if sc.value[0] == code:
            return sc
    return grpc.StatusCode.UNKNOWN
