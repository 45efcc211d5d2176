"""Composition root of the chat service: settings → adapters → graph, workers, servicer."""

from __future__ import annotations

import asyncio
import logging
from importlib import resources

import grpc
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from eco2.chat.v1 import chat_pb2, chat_pb2_grpc
from eco2.services.bus.jobs import JobQueue
from eco2.services.bus.producer import EventPublisher
from eco2.services.dataplane.migrations import apply_migrations
from eco2.services.dataplane.urls import create_pg_pool, create_redis
from eco2.services.knowledge import kb, morph
from eco2.services.llm import create_llm
from eco2.services.llm.images import create_image_model
from eco2.services.runtime.clients import channel
from eco2.services.runtime.dependencies import postgres_check, redis_check
from eco2.services.runtime.identity import JobIdentities
from eco2.services.runtime.settings import Endpoints

from . import media, pii
from .answer import compose
from .checkpoints import TurnCheckpointer, open_pool
from .deps import ChatDeps
from .graph import build_graph
from .grpc_clients import GrpcCharacters, GrpcImages, GrpcPlaces, GrpcScan
from .metrics import MeteredLLM
from .outbox import EventOutbox
from .policy import POLICIES, PolicyRunner
from .ports import Characters
from .postgres import ConversationStore
from .service import ChatServicer
from .settings import ChatSettings
from .state import checkpoint_serializer
from .tools.bulk_waste import DataGoKrBulkWasteFees
from .tools.http import OpenMeteoWeather, TavilySearch
from .worker import ChatWorkers, end_dead_job

log = logging.getLogger("eco2.chat")


class ChatApp:
    name = "chat"

    def __init__(self, settings: ChatSettings, endpoints: Endpoints | None = None) -> None:
        self.settings = settings
        self.endpoints = endpoints or Endpoints()
        self.pool = self.pg = self.redis = self.sink = self.workers = self.learning = None
        self.channels: list[grpc.aio.Channel] = []
        self.closers: list = []

    def service_names(self) -> list[str]:
        return [chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name]

    def dependency_checks(self):
        return {"postgres": postgres_check(self.pool), "redis": redis_check(self.redis)}

    async def migrate(self) -> list[str]:
        """Apply the pending schema migrations and create or upgrade the LangGraph checkpoint
        tables (its own idempotent migrations); the names of the SQL files applied."""
        s = self.settings
        applied = await apply_migrations(s.database_url, "chat", resources.files(__package__) / "migrations")
        async with AsyncPostgresSaver.from_conn_string(s.database_url) as saver:
            await saver.setup()
        return applied

    def _channel(self, service: str) -> grpc.aio.Channel:
        ch = channel(self.endpoints.address_of(service), default_timeout_s=self.settings.downstream_timeout_s)
        self.channels.append(ch)
        return ch

    async def start(self, server: grpc.aio.Server) -> None:
        s = self.settings
        pii.install()
        characters = GrpcCharacters(self._channel("character"), cache_s=s.chat_character_cache_s)
        # The characters' names are words the Korean analyser must know before it loads (one
        # load instead of a rebuild); CharacterService down: they are learnt when it answers.
        if not await learn_character_names(characters):
            self.learning = asyncio.create_task(learn_character_names_later(characters, retry_s=s.downstream_timeout_s))
        # The Korean analyser loads here, once per process (its cost: docs/benchmarks.md "answers"),
        # so that no question pays for it.
        await asyncio.to_thread(morph.warm)
        if s.migrate_on_start:
            await self.migrate()
        self.pool = await create_pg_pool(s.database_url, max_size=s.db_pool_max, application_name="eco2-chat")
        self.pg = await open_pool(s.database_url, max_size=s.chat_pg_pool_max)
        saver = TurnCheckpointer(
            self.pg, serde=checkpoint_serializer(), held_s=s.chat_checkpoint_held_s, held_max=s.chat_checkpoint_held_max
        )
        self.redis = create_redis(s.redis_url)
        # The publisher keeps its own lean connection (dataplane/resp.py, ADR 0045), shared by
        # every job of this process: concurrent publishes are pipelined on it.
        sink = self.sink = EventPublisher(self.redis, s)
        outbox = EventOutbox(sink)
        store = ConversationStore(self.pool)
        queue = JobQueue(self.redis, s.chat_job_kind, s, on_dead=end_dead_job(sink, store))
        llm = create_llm(
            s.chat_model,
            openai_api_key=s.openai_api_key,
            openai_base_url=s.openai_base_url,
            gemini_api_key=s.gemini_api_key,
            gemini_base_url=s.gemini_base_url,
            timeout_s=s.chat_model_timeout_s,
            compose=compose,
        )
        if hasattr(llm, "aclose"):
            self.closers.append(llm)
        image_model = create_image_model(
            s.chat_image_model,
            openai_api_key=s.openai_api_key,
            openai_base_url=s.openai_base_url,
            gemini_api_key=s.gemini_api_key,
            gemini_base_url=s.gemini_base_url,
            timeout_s=s.chat_model_timeout_s,
        )
        if image_model is not None and hasattr(image_model, "aclose"):
            self.closers.append(image_model)
        images = GrpcImages(self._channel("images"))
        weather = OpenMeteoWeather(s.weather_base_url) if s.weather_base_url else None
        search = TavilySearch(s.web_search_base_url, s.web_search_api_key) if s.web_search_base_url else None
        self.closers += [x for x in (weather, search) if x is not None]
        bulk = None
        if s.bulk_waste_api_key and s.bulk_waste_base_url:
            bulk = DataGoKrBulkWasteFees(
                s.bulk_waste_base_url,
                s.bulk_waste_api_key,
                timeout_s=s.bulk_waste_timeout_s,
                rows=s.bulk_waste_rows,
                max_results=s.bulk_waste_max_results,
            )
            self.closers.append(bulk)
        # Every model call the graph makes goes through the metered port (metrics.py).
        llm = MeteredLLM(llm)
        deps = ChatDeps(
            kb=kb.load(),
            llm=llm,
            policy=PolicyRunner(),
            places=GrpcPlaces(self._channel("location")),
            characters=characters,
            weather=weather,
            web_search=search,
            search_radius_m=s.chat_search_radius_m,
            places_limit=s.chat_places_limit,
            summary_threshold_tokens=s.chat_summary_threshold_tokens,
            images=images,
            image_model=image_model,
            photos=GrpcScan(self._channel("scan"), timeout_s=POLICIES["vision"].timeout_s),
            media=media.MediaLimits(
                s.chat_vision_min_confidence, s.chat_image_size, s.chat_image_prompt_max_chars, s.chat_image_max_bytes
            ),
        )
        deps.bulk_waste, deps.bulk_waste_tool_iterations = bulk, s.chat_bulk_waste_tool_iterations
        deps.intent_mode, deps.intent_timeout_s = s.chat_intent_mode, s.chat_intent_timeout_s
        graph = saver.compile(build_graph())
        self.workers = ChatWorkers(
            queue=queue, redis=self.redis, sink=sink, graph=graph, deps=deps, store=store, settings=s, outbox=outbox
        )
        self.workers.start()
        servicer = ChatServicer(
            store=store,
            queue=queue,
            sink=sink,
            redis=self.redis,
            images=images,
            events_channel=self._channel("events"),
            settings=s,
            outbox=outbox,
            job_identities=JobIdentities(self._channel("auth")),
            graph=graph,
        )
        chat_pb2_grpc.add_ChatServiceServicer_to_server(servicer, server)

    async def stop(self) -> None:
        if self.learning is not None:
            self.learning.cancel()
        if self.workers is not None:
            await self.workers.stop(self.settings.shutdown_grace_s / 2)
        for ch in self.channels:
            await ch.close()
        for c in self.closers:
            await c.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        if self.sink is not None:
            await self.sink.aclose()
        if self.pg is not None:
            await self.pg.close()
        if self.pool is not None:
            await self.pool.close()


async def learn_character_names(characters: Characters) -> bool:
    """The Eco² characters' names, as CharacterService lists them, into the Korean analyser
    (morph.add_names): the intent rules see a character named in a message, and the question
    reader never takes a name for an item. False when CharacterService did not answer."""
    try:
        cast = await characters.cast()
    except grpc.aio.AioRpcError as exc:
        log.warning("CharacterService did not list the characters", extra={"code": exc.code().name})
        return False
    morph.add_names([c["name"] for c in cast])
    return True


async def learn_character_names_later(characters: Characters, *, retry_s: float) -> None:
    while not await learn_character_names(characters):
        await asyncio.sleep(retry_s)


def create() -> ChatApp:
    return ChatApp(ChatSettings())
