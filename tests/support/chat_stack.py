"""The chat stack the answer evaluation runs on: real ChatService, EventService,
CharacterService and LocationService (its SAMPLE places) on real ports, against a session's
PostgreSQL and Valkey, with the offline model (tests/chat/test_chat_answers.py, bench/answers.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from eco2.chat.v1 import chat_pb2_grpc
from eco2.events.v1 import events_pb2_grpc

from .servers import env, running


@contextlib.asynccontextmanager
async def chat_stack(service_env: dict[str, str]) -> AsyncIterator[dict]:
    from eco2.services.character.app import create as create_character
    from eco2.services.chat.app import create as create_chat
    from eco2.services.events.app import create as create_events
    from eco2.services.location.app import create as create_location

    with env(service_env):
        events_app, character_app, location_app = create_events(), create_character(), create_location()
    async with (
        running(events_app, metrics=False) as events,
        running(character_app, metrics=False) as character,
        running(location_app, metrics=False) as location,
    ):
        chat_env = {
            **service_env,
            "ECO2_EVENTS_ADDR": f"127.0.0.1:{events.port}",
            "ECO2_CHARACTER_ADDR": f"127.0.0.1:{character.port}",
            "ECO2_LOCATION_ADDR": f"127.0.0.1:{location.port}",
            "ECO2_IMAGES_ADDR": "127.0.0.1:1",
            "ECO2_CHAT_MODEL": "offline",
            "ECO2_CHAT_JOB_KIND": "answers-eval",
            "ECO2_BULK_WASTE_API_KEY": "",
        }
        with env(chat_env):
            chat_app = create_chat()
        async with running(chat_app, metrics=False) as chat:
            async with (
                grpc.aio.insecure_channel(f"127.0.0.1:{chat.port}") as ch,
                grpc.aio.insecure_channel(f"127.0.0.1:{events.port}") as ech,
            ):
                yield {
                    "chat": chat_pb2_grpc.ChatServiceStub(ch),
                    "events": events_pb2_grpc.EventServiceStub(ech),
                    "app": chat_app,
                }
