"""A tiny test-only service on the real runtime, for the runtime's own behaviour:
deadlines, propagation, error mapping, logs and shutdown of streams.

Methods take and return raw bytes (JSON) so no contract is needed:
  /eco2test.Probe/Echo     -> {"remaining": s|None, "user": the verified caller's id|None}
  /eco2test.Probe/WhoAmI   -> {"user": ..., "roles": [...]}; UNAUTHENTICATED without a wristband
  /eco2test.Probe/Sleep    body = seconds to sleep
  /eco2test.Probe/Forward  calls Echo on `downstream` with no explicit timeout
  /eco2test.Probe/Boom     raises an unexpected exception
  /eco2test.Probe/Missing  raises NotFound
  /eco2test.Probe/Ticks    server stream, one message every 20 ms, forever
  /eco2test.Probe/Flood    server stream of 256 KB messages as fast as the reader takes them
  /eco2test.Probe/Writes   the same written with context.write() (a coroutine handler); body = n:
                           NOT_FOUND after n messages
  /eco2test.Probe/FloodWrites  Flood written with context.write()
  /eco2test.Probe/Collect  client stream, refused with RESOURCE_EXHAUSTED past 100,000 bytes
  /eco2test.Probe/Refuse   client stream of google.protobuf.BytesValue, refused with PERMISSION_DENIED
                           before reading any
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import grpc
from google.protobuf import wrappers_pb2

from eco2.services.runtime import context as ctx
from eco2.services.runtime.clients import channel
from eco2.services.runtime.errors import NotFound, PermissionDenied, ResourceExhausted
from eco2.services.runtime.settings import RuntimeSettings
from eco2.services.runtime.telemetry import current_traceparent

log = logging.getLogger("eco2.probe")


class ProbeApp:
    name = "probe"

    def __init__(self, settings: RuntimeSettings, downstream: str | None = None) -> None:
        self.settings = settings
        self.downstream = downstream

    def service_names(self):
        return ["eco2test.Probe"]

    async def start(self, server: grpc.aio.Server) -> None:
        async def echo(request: bytes, context) -> bytes:
            log.warning("probe handled")
            return json.dumps(
                {
                    "remaining": ctx.time_remaining(),
                    "user": (identity := ctx.verified_identity()) and identity.user_id,
                    "traceparent": ctx.metadata_value(context, ctx.TRACEPARENT_KEY),
                    "current_trace": current_traceparent(),
                }
            ).encode()

        async def whoami(request: bytes, context) -> bytes:
            who = ctx.caller(context)
            return json.dumps(
                {"user": who.user_id, "roles": list(who.roles), "provider": who.provider, "job": who.job}
            ).encode()

        async def sleep(request: bytes, context) -> bytes:
            await asyncio.sleep(float(request or b"0"))
            return b"{}"

        async def forward(request: bytes, context) -> bytes:
            async with channel(self.downstream) as ch:
                return await ch.unary_unary("/eco2test.Probe/Echo")(b"")

        async def boom(request: bytes, context) -> bytes:
            raise ValueError("secret internal detail /etc/passwd")

        async def missing(request: bytes, context) -> bytes:
            raise NotFound("no such thing", reason="THING_NOT_FOUND", metadata={"id": "42"})

        async def ticks(request: bytes, context):
            n = 0
            while True:
                n += 1
                yield str(n).encode()
                await asyncio.sleep(0.02)

        async def flood(request: bytes, context):
            chunk = b"x" * 262_144
            while True:
                yield chunk

        async def flood_writes(request: bytes, context) -> None:
            chunk = b"x" * 262_144
            while True:
                await context.write(chunk)

        async def writes(request: bytes, context) -> None:
            n = 0
            while True:
                if request and n == int(request):
                    raise NotFound("no more", reason="NO_MORE_TICKS")
                n += 1
                await context.write(str(n).encode())
                await asyncio.sleep(0.02)

        async def collect(requests, context) -> bytes:
            size = 0
            async for chunk in requests:
                size += len(chunk)
                if size > 100_000:
                    raise ResourceExhausted("too much", reason="TOO_MUCH")
            return str(size).encode()

        async def refuse(requests, context) -> wrappers_pb2.BytesValue:
            raise PermissionDenied("not yours", reason="NOT_YOURS")

        handlers = {
            "Collect": grpc.stream_unary_rpc_method_handler(collect),
            "Refuse": grpc.stream_unary_rpc_method_handler(
                refuse, wrappers_pb2.BytesValue.FromString, wrappers_pb2.BytesValue.SerializeToString
            ),
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "WhoAmI": grpc.unary_unary_rpc_method_handler(whoami),
            "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
            "Forward": grpc.unary_unary_rpc_method_handler(forward),
            "Boom": grpc.unary_unary_rpc_method_handler(boom),
            "Missing": grpc.unary_unary_rpc_method_handler(missing),
            "Ticks": grpc.unary_stream_rpc_method_handler(ticks),
            "Flood": grpc.unary_stream_rpc_method_handler(flood),
            "Writes": grpc.unary_stream_rpc_method_handler(writes),
            "FloodWrites": grpc.unary_stream_rpc_method_handler(flood_writes),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("eco2test.Probe", handlers),))

    async def stop(self) -> None:
        return None


if __name__ == "__main__":  # run as its own process: python tests/support/probe.py
    from eco2.services.runtime.server import run

    settings = RuntimeSettings()
    asyncio.run(run(ProbeApp(settings, downstream=sys.argv[1] if len(sys.argv) > 1 else None), settings))
