"""The gateway under test, in front of real upstreams: auth (ext-authz), character, events,
and `eco2test.Pump`, a tiny test-only gRPC service that takes and returns raw bytes.

  /eco2test.Pump/Echo    → JSON {"body": <request as text>, "metadata": {...}, "remaining": s|None}
  /eco2test.Pump/Stream  request JSON {"n", "size", "delay", "code", "id"}: n messages of `size`
                         bytes (first 8 bytes: the index), then status `code` (0 = OK);
                         PUMP_STATS[id] counts what it produced and whether it was cancelled
  /eco2test.Pump/Fail    NOT_FOUND with ErrorInfo + a trailing metadata entry
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass

import grpc

from eco2.services.runtime.errors import NotFound
from eco2.services.runtime.settings import RuntimeSettings

from .servers import env, running

PUMP_STATS: dict[str, dict] = {}


class PumpApp:
    name = "pump"

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings

    def service_names(self):
        return ["eco2test.Pump"]

    async def start(self, server: grpc.aio.Server) -> None:
        async def echo(request: bytes, context) -> bytes:
            md = {k: (v.decode("latin-1") if isinstance(v, bytes) else v) for k, v in context.invocation_metadata()}
            await context.send_initial_metadata((("x-pump", "hello"),))
            context.set_trailing_metadata((("x-pump-trailer", "bye"), ("x-pump-bin", b"\x00\x01\xff")))
            return json.dumps(
                {"body": request.decode("utf-8", "replace"), "metadata": md, "remaining": context.time_remaining()}
            ).encode()

        async def stream(request: bytes, context):
            spec = json.loads(request or b"{}")
            stats = PUMP_STATS.setdefault(spec.get("id", "-"), {"produced": 0, "cancelled": False, "done": False})

            def ended(_ctx) -> None:  # however the call ended: the client cancelling shows here
                stats["cancelled"] = stats["cancelled"] or context.cancelled()
                stats["done"] = True

            context.add_done_callback(ended)
            pad = b"x" * max(0, spec.get("size", 16) - 8)
            try:
                for i in range(spec.get("n", 3)):
                    if spec.get("delay"):
                        await asyncio.sleep(spec["delay"])
                    stats["produced"] += 1
                    yield i.to_bytes(8, "big") + pad
                if spec.get("code"):
                    await context.abort(
                        grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == spec["code"])),
                        spec.get("message", "pump failed"),
                    )
            except asyncio.CancelledError:
                stats["cancelled"] = True
                raise
            finally:
                stats["done"] = True

        async def fail(request: bytes, context) -> bytes:
            context.set_trailing_metadata((("x-pump-trailer", "sorry"),))
            raise NotFound("no such pump\r\ninjected: header", reason="PUMP_NOT_FOUND", metadata={"id": "7"})

        handlers = {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("eco2test.Pump", handlers),))

    async def stop(self) -> None:
        return None


@dataclass
class Stack:
    url: str
    port: int
    addrs: dict[str, str]
    redis_url: str
    gateway: object


ALLOWED_ORIGIN = "http://allowed.example"


def gateway_env(addrs: dict[str, str], **extra: str) -> dict[str, str]:
    values = {
        "ECO2_HTTP_PORT": "0",
        "ECO2_AUTH_ADDR": addrs["auth"],
        "ECO2_CHARACTER_ADDR": addrs["character"],
        "ECO2_EVENTS_ADDR": addrs["events"],
        "ECO2_GATEWAY_ROUTES": json.dumps({"eco2test": addrs["pump"]}),
        "ECO2_GATEWAY_CORS_ORIGINS": json.dumps([ALLOWED_ORIGIN]),
        "ECO2_GATEWAY_MAX_MESSAGE_BYTES": str(64 * 1024),
        "ECO2_GATEWAY_BODY_TIMEOUT_S": "1.5",
        "ECO2_GATEWAY_SEND_TIMEOUT_S": "2",
        "ECO2_GATEWAY_SSE_KEEPALIVE_S": "0.5",
    }
    values.update(extra)
    return values


@contextlib.asynccontextmanager
async def upstreams(service_env: dict[str, str], **overrides: str):
    """auth, character, events and pump, in-process on free ports; `overrides`: more env."""
    from eco2.services.auth.app import create as create_auth
    from eco2.services.character.app import create as create_character
    from eco2.services.events.app import create as create_events

    base = {**service_env, "ECO2_AUTH_RATE_LIMIT_PER_S": "0", "ECO2_EVENTS_UNKNOWN_JOB_GRACE_S": "0.3", **overrides}
    with env(base):
        apps = {
            "auth": create_auth(),
            "character": create_character(),
            "events": create_events(),
            "pump": PumpApp(RuntimeSettings()),
        }
    async with contextlib.AsyncExitStack() as stack:
        servers = {name: await stack.enter_async_context(running(app, metrics=False)) for name, app in apps.items()}
        yield {name: f"127.0.0.1:{s.port}" for name, s in servers.items()}


@contextlib.asynccontextmanager
async def gateway(addrs: dict[str, str], **extra: str):
    from eco2.gateway.app import create

    with env(gateway_env(addrs, **extra)):
        app = create()
    port = await app.start()
    try:
        yield app, port
    finally:
        await app.stop()


def node_env() -> dict[str, str]:
    return {**os.environ, "NODE_NO_WARNINGS": "1"}


ANSWER_TOKENS = [
    "페트병은 ",
    "내용물을 ",
    "비우고 ",
    "물로 ",
    "헹군 ",
    "뒤 ",
    "라벨을 ",
    "떼어 ",
    "투명 ",
    "페트병 ",
    "전용 ",
    "수거함에 ",
    "버려요.",
]


class StandInChatApp:
    """A test-only stand-in for ChatService (until the real chat service runs in these tests):
    SendMessage returns a job id and publishes the answer token by token through the real
    EventPublisher, so the real events service, gateway and browser carry it."""

    name = "chat-standin"

    def __init__(self, settings: RuntimeSettings, redis_url: str, token_delay_s: float = 0.25) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.token_delay_s = token_delay_s
        self.tasks: set[asyncio.Task] = set()
        self.redis = None

    def service_names(self):
        return ["eco2.chat.v1.ChatService"]

    async def start(self, server: grpc.aio.Server) -> None:
        import uuid as _uuid

        from eco2.character.v1 import character_pb2
        from eco2.chat.v1 import chat_pb2, chat_pb2_grpc
        from eco2.events.v1 import events_pb2 as E
        from eco2.services.bus.producer import EventPublisher
        from eco2.services.dataplane.urls import create_redis
        from eco2.services.runtime.context import caller_id

        self.redis = create_redis(self.redis_url)
        publisher = EventPublisher(self.redis)
        app = self

        async def produce(job: str, conversation: str) -> None:
            seq = 1
            await publisher.publish(
                E.Event(job_id=job, seq=seq, kind=E.EVENT_KIND_STAGE, stage=E.STAGE_INTENT, job_kind=E.JOB_KIND_CHAT)
            )
            for tok in ANSWER_TOKENS:
                await asyncio.sleep(app.token_delay_s)
                seq += 1
                await publisher.publish(
                    E.Event(
                        job_id=job,
                        seq=seq,
                        kind=E.EVENT_KIND_TOKEN,
                        stage=E.STAGE_ANSWER,
                        delta=tok,
                        job_kind=E.JOB_KIND_CHAT,
                    )
                )
            result = chat_pb2.ChatResult(
                conversation_id=conversation,
                answer="".join(ANSWER_TOKENS),
                character=character_pb2.Character(code="char-petty", name="페티", match_label="무색페트병"),
            )
            done = E.Event(job_id=job, seq=seq + 1, kind=E.EVENT_KIND_DONE, job_kind=E.JOB_KIND_CHAT)
            done.done.result.Pack(result)
            done.done.summary = "answered"
            await publisher.publish(done)

        class Servicer(chat_pb2_grpc.ChatServiceServicer):
            async def SendMessage(self, request, context):
                job = f"job-{_uuid.uuid4().hex[:16]}"
                conversation = request.conversation_id or f"conv-{_uuid.uuid4().hex[:12]}"
                await publisher.set_owner(
                    job, caller_id(context)
                )  # as the real chat does: the job streams to its sender only
                task = asyncio.ensure_future(produce(job, conversation))
                app.tasks.add(task)
                task.add_done_callback(app.tasks.discard)
                return chat_pb2.SendMessageResponse(job_id=job, conversation_id=conversation, message_id=f"msg-{job}")

            async def ListConversations(self, request, context):
                return chat_pb2.ListConversationsResponse()

        chat_pb2_grpc.add_ChatServiceServicer_to_server(Servicer(), server)

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.redis is not None:
            await self.redis.aclose()


def parse(text: str) -> list[dict]:
    """The events of an SSE body: each block's fields, comments under "comments"."""
    events = []
    for block in text.split("\n\n"):
        fields: dict = {}
        for line in block.split("\n"):
            if line.startswith(":") or not line:
                fields.setdefault("comments", []).append(line) if line else None
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
        if fields:
            events.append(fields)
    return events
