"""Composition root of `eco2 serve events`: settings → Redis clients → router and/or
EventService (ECO2_EVENTS_ROLE)."""

from __future__ import annotations

import grpc
import redis.asyncio

from eco2.services.bus.jobs import QueueSampler
from eco2.services.bus.settings import EventsRole, EventsSettings
from eco2.services.dataplane.resp import RespClient
from eco2.services.runtime.dependencies import redis_check
from eco2.services.runtime.settings import REDIS_URL, require_url

from .hub import Hub
from .router import Router
from .service import SERVICE, EventServicer, add_to_server
from .valkey import ValkeyReplayStore


class EventsApp:
    name = "events"

    def __init__(self, settings: EventsSettings) -> None:
        self.settings = settings
        self.redis: redis.asyncio.Redis | None = None
        self.router: Router | None = None
        self.hub: Hub | None = None
        self.sampler: QueueSampler | None = None
        self.store: ValkeyReplayStore | None = None

    @property
    def serves_api(self) -> bool:
        return self.settings.events_role in (EventsRole.ALL, EventsRole.SERVICE)

    def service_names(self) -> list[str]:
        return [SERVICE] if self.serves_api else []

    def dependency_checks(self):
        return {"redis": redis_check(self.redis)}

    async def start(self, server: grpc.aio.Server) -> None:
        s = self.settings
        require_url(s.redis_url, "REDIS_URL", REDIS_URL)
        # Command connections are bounded: 10,000 streams share ECO2_EVENTS_REDIS_POOL of them,
        # the lean connections (dataplane/resp.py) of the router and of the replay store included.
        routes = s.events_role in (EventsRole.ALL, EventsRole.ROUTER)
        pool = max(1, s.events_redis_pool - routes - self.serves_api)
        self.redis = redis.asyncio.Redis.from_pool(
            redis.asyncio.BlockingConnectionPool.from_url(s.redis_url, max_connections=pool, timeout=30)
        )
        await self.redis.ping()
        if routes:
            self.router = Router(self.redis, s)
            await self.router.start()
            if s.events_queue_sample_s:
                self.sampler = QueueSampler(self.redis, s.events_queue_sample_s)
                self.sampler.start()
        if self.serves_api:
            self.hub = Hub(  # one Pub/Sub connection per shard, to the server `redis` names
                self.redis,
                s.events_shards,
                buffer=s.events_subscriber_buffer,
                max_subscribers=s.events_max_subscribers,
                retry_s=s.events_redis_retry_s,
            )
            await self.hub.start()
            self.store = ValkeyReplayStore(RespClient.like(self.redis), s.events_shards)
            add_to_server(EventServicer(self.store, self.hub, s), server)

    async def stop(self) -> None:
        if self.sampler is not None:
            await self.sampler.stop()
        if self.router is not None:
            await self.router.stop()
        if self.hub is not None:
            await self.hub.stop()
        if self.store is not None:
            await self.store.aclose()
        if self.redis is not None:
            await self.redis.aclose()


def create() -> EventsApp:
    return EventsApp(EventsSettings())
