"""Start real gRPC servers for tests: in-process on the test loop, on free ports."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import grpc

from eco2.services.runtime.server import RunningServer, start


@contextlib.asynccontextmanager
async def running(app, *, metrics: bool = True) -> AsyncIterator[RunningServer]:
    server = await start(app, app.settings, metrics=metrics)
    try:
        yield server
    finally:
        await server.stop(grace=1.0)


@contextlib.contextmanager
def env(values: dict[str, str]):
    """Temporarily set environment variables (settings objects read them at construction)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def channel(server: RunningServer) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
