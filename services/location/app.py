"""Composition root of the location service: settings → adapters → servicer."""

from __future__ import annotations

import logging
from importlib import resources

import grpc
from pydantic import AliasChoices, Field

from eco2.location.v1 import location_pb2, location_pb2_grpc
from eco2.services.dataplane.migrations import apply_migrations
from eco2.services.dataplane.urls import create_pg_pool
from eco2.services.runtime.dependencies import postgres_check
from eco2.services.runtime.settings import Deployment, RuntimeSettings

from .importer import sample_places
from .kakao import KakaoKeywordSearch
from .postgres import PostgresPlaceRepository
from .service import Limits, LocationServicer

log = logging.getLogger("eco2.location")


class LocationSettings(RuntimeSettings):
    location_max_radius_m: int = Field(20_000, ge=1, le=1_000_000, description="largest SearchNearby radius_m accepted")
    location_default_radius_m: int = Field(5_000, ge=1, description="SearchNearby radius when radius_m is 0")
    location_max_limit: int = Field(50, ge=1, le=1000, description="largest limit accepted by SearchNearby/SearchText")
    location_default_limit: int = Field(10, ge=1, description="results when limit is 0")
    location_max_query_chars: int = Field(200, ge=1, le=10_000, description="longest SearchText query")
    location_max_filters: int = Field(16, ge=1, description="most category filters in one SearchNearby")
    location_load_sample: bool | None = Field(
        None, description="load the shipped SAMPLE places at start (default: only when embedded)"
    )
    kakao_api_key: str = Field(
        "",
        validation_alias=AliasChoices("KAKAO_API_KEY", "ECO2_KAKAO_API_KEY"),
        description="Kakao REST API key: enables Kakao Local keyword search in SearchText",
    )
    kakao_local_url: str = Field("https://dapi.kakao.com", description="base URL of Kakao Local")
    kakao_timeout_s: float = Field(3.0, gt=0, description="timeout of one Kakao Local request")


class LocationApp:
    name = "location"

    def __init__(self, settings: LocationSettings) -> None:
        self.settings = settings
        self.pool = None
        self.keyword: KakaoKeywordSearch | None = None

    def service_names(self) -> list[str]:
        return [location_pb2.DESCRIPTOR.services_by_name["LocationService"].full_name]

    def dependency_checks(self):
        return {"postgres": postgres_check(self.pool)}

    async def migrate(self) -> list[str]:
        """Apply the pending schema migrations; the names of the files applied."""
        return await apply_migrations(
            self.settings.database_url, "location", resources.files(__package__) / "migrations"
        )

    async def start(self, server: grpc.aio.Server) -> None:
        s = self.settings
        if s.migrate_on_start:
            await self.migrate()
        self.pool = await create_pg_pool(s.database_url, max_size=s.db_pool_max, application_name="eco2-location")
        places = PostgresPlaceRepository(self.pool)
        load_sample = (
            s.location_load_sample if s.location_load_sample is not None else s.deployment == Deployment.EMBEDDED
        )
        if load_sample:
            await places.upsert(sample_places())
        if s.kakao_api_key:
            self.keyword = KakaoKeywordSearch(s.kakao_api_key, base_url=s.kakao_local_url, timeout_s=s.kakao_timeout_s)
            log.info("Kakao Local keyword search enabled", extra={"url": s.kakao_local_url})
        limits = Limits(
            max_radius_m=s.location_max_radius_m,
            default_radius_m=min(s.location_default_radius_m, s.location_max_radius_m),
            max_limit=s.location_max_limit,
            default_limit=min(s.location_default_limit, s.location_max_limit),
            max_query_chars=s.location_max_query_chars,
            max_filters=s.location_max_filters,
        )
        location_pb2_grpc.add_LocationServiceServicer_to_server(LocationServicer(places, limits, self.keyword), server)

    async def stop(self) -> None:
        if self.keyword is not None:
            await self.keyword.aclose()
        if self.pool is not None:
            await self.pool.close()


def create() -> LocationApp:
    return LocationApp(LocationSettings())
