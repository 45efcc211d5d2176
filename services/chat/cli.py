"""`eco2 chat [--data-dir D] "질문"`: stream an answer in the terminal from the stack `eco2 up` runs."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import grpc

from eco2.chat.v1 import chat_pb2, chat_pb2_grpc
from eco2.events.v1 import events_pb2


async def _chat(addr: str, question: str, user: str) -> int:
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = chat_pb2_grpc.ChatServiceStub(ch)
        try:
            async for e in stub.StreamChat(chat_pb2.StreamChatRequest(message=question), metadata=(("x-eco2-user-id", user),)):
                if e.kind == events_pb2.EVENT_KIND_STAGE and e.stage_info.phase == events_pb2.STAGE_PHASE_STARTED and e.stage_info.message:
                    print(f"· {e.stage_info.message}", file=sys.stderr)
                elif e.kind == events_pb2.EVENT_KIND_TOKEN:
                    print(e.delta, end="", flush=True)
                elif e.kind == events_pb2.EVENT_KIND_NEEDS_INPUT:
                    print(f"\n? {e.needs_input.prompt} (the terminal client cannot share a location)", file=sys.stderr)
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
            print(f"eco2 chat: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print("eco2 chat: the stream ended without an answer", file=sys.stderr)
    return 1


def main(data_dir: str | None, question: str) -> int:
    from eco2.services.up import read_endpoints

    try:
        endpoints = read_endpoints(Path(data_dir) if data_dir else None)
    except FileNotFoundError as exc:
        print(f"eco2: {exc}", file=sys.stderr)
        return 1
    addr = endpoints.get("chat") if isinstance(endpoints.get("chat"), str) else (endpoints.get("chat") or {}).get("grpc") or (endpoints.get("services", {}).get("chat") or {}).get("grpc")
    if not addr:
        print("eco2: the running stack has no chat service", file=sys.stderr)
        return 1
    return asyncio.run(_chat(addr, question, os.environ.get("ECO2_CHAT_USER", "cli-user")))
