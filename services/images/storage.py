"""Storage adapters: local disk (embedded) and S3-compatible object storage (production)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import ClientError


class LocalDiskStorage:
    """Objects under ``root/ab/<sha256>``; written to a temp file, fsynced, then renamed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    async def exists(self, sha256: str) -> bool:
        return await asyncio.to_thread(self.path(sha256).is_file)

    def _write(self, sha256: str, data: bytes) -> None:
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    async def put(self, sha256: str, data: bytes, content_type: str) -> None:
        await asyncio.to_thread(self._write, sha256, data)

    async def read(self, sha256: str, chunk_bytes: int) -> AsyncIterator[bytes]:
        f = await asyncio.to_thread(open, self.path(sha256), "rb")
        try:
            while chunk := await asyncio.to_thread(f.read, chunk_bytes):
                yield chunk
        finally:
            f.close()

    async def aclose(self) -> None:
        return None


class S3Storage:
    """Objects at ``s3://bucket/prefix<sha256>`` through aiobotocore (any S3-compatible store).
    Credentials come from the usual AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a role...)."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "images/",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        timeout_s: float = 10.0,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self._session = get_session()
        self._endpoint_url = endpoint_url or None
        self._region = region
        self._config = Config(
            connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 3, "mode": "standard"}
        )
        self._stack = contextlib.AsyncExitStack()
        self._client = None

    async def open(self) -> S3Storage:
        self._client = await self._stack.enter_async_context(
            self._session.create_client(
                "s3", endpoint_url=self._endpoint_url, region_name=self._region, config=self._config
            )
        )
        return self

    def key(self, sha256: str) -> str:
        return f"{self.prefix}{sha256}"

    async def exists(self, sha256: str) -> bool:
        try:
            await self._client.head_object(Bucket=self.bucket, Key=self.key(sha256))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    async def put(self, sha256: str, data: bytes, content_type: str) -> None:
        await self._client.put_object(Bucket=self.bucket, Key=self.key(sha256), Body=data, ContentType=content_type)

    async def read(self, sha256: str, chunk_bytes: int) -> AsyncIterator[bytes]:
        response = await self._client.get_object(Bucket=self.bucket, Key=self.key(sha256))
        async with response["Body"] as body:
            while chunk := await body.read(chunk_bytes):
                yield chunk

    async def aclose(self) -> None:
        await self._stack.aclose()
