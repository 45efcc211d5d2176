"""Composition root of the images service: settings → storage + repository → servicer."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import grpc
from pydantic import Field

from eco2.images.v1 import images_pb2, images_pb2_grpc
from eco2.services.dataplane.migrations import apply_migrations
from eco2.services.dataplane.urls import create_pg_pool
from eco2.services.runtime.dependencies import postgres_check
from eco2.services.runtime.image_urls import resolve_secret
from eco2.services.runtime.settings import Deployment, RuntimeSettings

from .postgres import PostgresImageRepository
from .service import ImageLimits, ImageServicer
from .storage import LocalDiskStorage, S3Storage

log = logging.getLogger("eco2.images")


class ImagesSettings(RuntimeSettings):
    images_max_bytes: int = Field(10 * 1024 * 1024, ge=1, description="largest image accepted by Upload (bytes)")
    images_read_chunk_bytes: int = Field(256 * 1024, ge=1024, le=4 * 1024 * 1024, description="chunk size of ReadImage")
    images_url_secret: str = Field(
        "", description="HMAC secret of signed image URLs (embedded: generated under the data dir when unset)"
    )
    images_url_ttl_s: int = Field(900, ge=1, le=7 * 24 * 3600, description="lifetime of a signed image URL")
    images_url_prefix: str = Field(
        "/images", pattern=r"^/[A-Za-z0-9/_\-]*$", description="path prefix of signed URLs at the edge"
    )
    images_storage: str = Field("local", pattern="^(local|s3)$", description="local (disk under the data dir) or s3")
    images_dir: Path | None = Field(
        None, description="directory of the local storage (default: <data dir>/images/blobs)"
    )
    images_s3_bucket: str = Field("", description="bucket of the s3 storage")
    images_s3_prefix: str = Field("images/", description="key prefix inside the bucket")
    images_s3_endpoint_url: str = Field("", description="S3-compatible endpoint (empty = AWS)")
    images_s3_region: str = Field("us-east-1", description="S3 region")
    images_s3_timeout_s: float = Field(10.0, gt=0, description="connect/read timeout of S3 calls")


class ImagesApp:
    name = "images"

    def __init__(self, settings: ImagesSettings) -> None:
        self.settings = settings
        self.pool = None
        self.storage = None

    def service_names(self) -> list[str]:
        return [images_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name]

    def dependency_checks(self):
        return {"postgres": postgres_check(self.pool)}

    async def migrate(self) -> list[str]:
        """Apply the pending schema migrations; the names of the files applied."""
        return await apply_migrations(self.settings.database_url, "images", resources.files(__package__) / "migrations")

    async def start(self, server: grpc.aio.Server) -> None:
        s = self.settings
        secret = resolve_secret(s.images_url_secret, s.data_dir, embedded=s.deployment == Deployment.EMBEDDED)
        if s.images_storage == "s3":
            if not s.images_s3_bucket:
                raise ValueError("ECO2_IMAGES_S3_BUCKET is required when ECO2_IMAGES_STORAGE=s3")
            self.storage = await S3Storage(
                s.images_s3_bucket,
                prefix=s.images_s3_prefix,
                endpoint_url=s.images_s3_endpoint_url or None,
                region=s.images_s3_region,
                timeout_s=s.images_s3_timeout_s,
            ).open()
        else:
            self.storage = LocalDiskStorage(s.images_dir or s.data_dir / "images" / "blobs")
        if s.migrate_on_start:
            await self.migrate()
        self.pool = await create_pg_pool(s.database_url, max_size=s.db_pool_max, application_name="eco2-images")
        limits = ImageLimits(s.images_max_bytes, s.images_read_chunk_bytes, s.images_url_ttl_s, s.images_url_prefix)
        servicer = ImageServicer(PostgresImageRepository(self.pool), self.storage, secret, limits)
        images_pb2_grpc.add_ImageServiceServicer_to_server(servicer, server)

    async def stop(self) -> None:
        if self.storage is not None:
            await self.storage.aclose()
        if self.pool is not None:
            await self.pool.close()


def create() -> ImagesApp:
    return ImagesApp(ImagesSettings())
