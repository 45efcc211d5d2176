"""Composition root of the chat service: settings → adapters → graph, workers, servicer."""

from __future__ import annotations

from importlib import resources

import grpc
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from eco2.chat.v1 import chat_pb2, chat_pb2_grpc
from eco2.services.dataplane.migrations import apply_migrations
from eco2.services.dataplane.urls import create_pg_pool, create_redis
from eco2.services.events.jobs import JobQueue
from eco2.services.events.producer import EventPublisher
from eco2.services.events.valkey import fast_redis
from eco2.services.runtime.clients import channel
from eco2.services.runtime.settings import Endpoints

from . import kb, pii
from .graph import ChatDeps, build_graph
from .grpc_clients import GrpcCharacters, GrpcImages, GrpcPlaces
from .llm import create_llm
from .outbox import EventOutbox
from .postgres import ConversationStore
from .service import ChatServicer
from .settings import ChatSettings
from .tools.http import OpenMeteoWeather, TavilySearch
from .policy import PolicyRunner
from .worker import ChatWorkers


class ChatApp:
    name = "chat"

    def __init__(self, settings: ChatSettings, endpoints: Endpoints | None = None) -> None:
        self.settings = settings
        self.endpoints = endpoints or Endpoints()
        self.pool = self.pg = self.redis = self.events_redis = self.workers = None
        self.channels: list[grpc.aio.Channel] = []
        self.closers: list = []

    def service_names(self) -> list[str]:
        return [chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name]

    def _channel(self, service: str) -> grpc.aio.Channel:
        ch = channel(self.endpoints.address_of(service), default_timeout_s=self.settings.downstream_timeout_s)
        self.channels.append(ch)
        return ch

    async def start(self, server: grpc.aio.Server) -> None:
        s = self.settings
        pii.install()
        await apply_migrations(s.database_url, "chat", resources.files(__package__) / "migrations")
        self.pool = await create_pg_pool(s.database_url, max_size=s.db_pool_max, application_name="eco2-chat")
        self.pg = AsyncConnectionPool(s.database_url, max_size=s.chat_pg_pool_max, open=False, kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row})
        await self.pg.open(wait=True, timeout=30)
        saver = AsyncPostgresSaver(self.pg)
        await saver.setup()
        self.redis = create_redis(s.redis_url)
        # The publisher gets its own connections, packed by hiredis (valkey.fast_redis): its Lua
        # calls carry four arguments per event.
        self.events_redis = fast_redis(s.redis_url)
        sink = EventPublisher(self.events_redis, s)
        outbox = EventOutbox(sink)
        queue = JobQueue(self.redis, s.chat_job_kind, s)
        llm = create_llm(
            s.chat_model, openai_api_key=s.openai_api_key, openai_base_url=s.openai_base_url, gemini_api_key=s.gemini_api_key,
            gemini_base_url=s.gemini_base_url, timeout_s=s.chat_model_timeout_s,
        )
        if hasattr(llm, "aclose"):
            self.closers.append(llm)
        weather = OpenMeteoWeather(s.weather_base_url) if s.weather_base_url else None
        search = TavilySearch(s.web_search_base_url, s.web_search_api_key) if s.web_search_base_url else None
        self.closers += [x for x in (weather, search) if x is not None]
        deps = ChatDeps(
            kb=kb.load(), llm=llm, policy=PolicyRunner(), places=GrpcPlaces(self._channel("location")), characters=GrpcCharacters(self._channel("character")),
            weather=weather, web_search=search, search_radius_m=s.chat_search_radius_m, places_limit=s.chat_places_limit,
            summary_threshold_tokens=s.chat_summary_threshold_tokens,
        )
        store = ConversationStore(self.pool)
        graph = build_graph().compile(checkpointer=saver)
        self.workers = ChatWorkers(queue=queue, redis=self.redis, sink=sink, graph=graph, deps=deps, store=store, settings=s, outbox=outbox)
        self.workers.start()
        servicer = ChatServicer(store=store, queue=queue, sink=sink, redis=self.redis, images=GrpcImages(self._channel("images")), events_channel=self._channel("events"), settings=s, outbox=outbox)
        chat_pb2_grpc.add_ChatServiceServicer_to_server(servicer, server)

    async def stop(self) -> None:
        if self.workers is not None:
            await self.workers.stop(self.settings.shutdown_grace_s / 2)
        for ch in self.channels:
            await ch.close()
        for c in self.closers:
            await c.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        if self.events_redis is not None:
            await self.events_redis.aclose()
        if self.pg is not None:
            await self.pg.close()
        if self.pool is not None:
            await self.pool.close()


def create() -> ChatApp:
    return ChatApp(ChatSettings())
