"""`eco2 chat [--data-dir D] "질문"`: stream an answer in the terminal from the stack `eco2 up` runs."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import grpc

from eco2.chat.v1 import chat_pb2, chat_pb2_grpc
from eco2.events.v1 import events_pb2
from eco2.location.v1 import location_pb2
from eco2.services.runtime.errors import describe


async def _chat(addr: str, auth_addr: str, question: str, user: str, near: location_pb2.GeoPoint | None) -> int:
    from eco2.services.runtime.dev_identity import NoIdentity, dev_wristband
    from eco2.services.runtime.identity import IDENTITY_KEY

    try:
        identity = await dev_wristband(auth_addr, user)
    except NoIdentity as exc:
        print(f"eco2 chat: {exc}", file=sys.stderr)
        return 1
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = chat_pb2_grpc.ChatServiceStub(ch)
        request = chat_pb2.StreamChatRequest(message=question, location=near)
        try:
            async for e in stub.StreamChat(request, metadata=((IDENTITY_KEY, identity),)):
                if (
                    e.kind == events_pb2.EVENT_KIND_STAGE
                    and e.stage_info.phase == events_pb2.STAGE_PHASE_STARTED
                    and e.stage_info.message
                ):
                    print(f"· {e.stage_info.message}", file=sys.stderr)
                elif e.kind == events_pb2.EVENT_KIND_TOKEN:
                    print(e.delta, end="", flush=True)
                elif e.kind == events_pb2.EVENT_KIND_NEEDS_INPUT:
                    print(f"\n? {e.needs_input.prompt} (share one with --near LAT,LNG)", file=sys.stderr)
                    return 3
                elif e.kind == events_pb2.EVENT_KIND_DONE:
                    result = chat_pb2.ChatResult()
                    e.done.result.Unpack(result)
                    print()
                    for c in result.citations:
                        print(f"  [출처] {c.title} ({c.source_id})")
                    return 0
                elif e.kind == events_pb2.EVENT_KIND_ERROR:
                    print(f"\neco2 chat: {e.error.reason}: {e.error.message}", file=sys.stderr)
                    return 1
        except grpc.aio.AioRpcError as exc:
            print(f"eco2 chat: {describe(exc)}", file=sys.stderr)
            return 1
    print("eco2 chat: the stream ended without an answer", file=sys.stderr)
    return 1


def parse_near(text: str | None) -> location_pb2.GeoPoint | None:
    """'37.5665,126.9780' → GeoPoint; ValueError with a clear message otherwise."""
    if not text:
        return None
    try:
        lat, lng = (float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--near takes LAT,LNG in degrees, e.g. 37.5665,126.9780 (got {text!r})") from None
    if not (-90 <= lat <= 90 and -180 <= lng <= 180):
        raise ValueError(f"--near is out of range: latitude -90..90, longitude -180..180 (got {text!r})")
    return location_pb2.GeoPoint(latitude=lat, longitude=lng)


def main(data_dir: str | None, question: str, near: str | None = None) -> int:
    """Exit 0 on DONE, 1 on ERROR or when no stack runs, 3 when the answer needs a location."""
    from eco2.services.runtime.endpoints import read_endpoints

    try:
        point = parse_near(near)
        endpoints = read_endpoints(Path(data_dir) if data_dir else None)
    except (ValueError, FileNotFoundError) as exc:
        print(f"eco2: {exc}", file=sys.stderr)
        return 1
    addr, auth_addr = endpoints.get("chat"), endpoints.get("auth")
    if not isinstance(addr, str) or not isinstance(auth_addr, str):
        print("eco2: the running stack has no chat or auth service", file=sys.stderr)
        return 1
    return asyncio.run(_chat(addr, auth_addr, question, os.environ.get("ECO2_CHAT_USER", "cli-user"), point))
