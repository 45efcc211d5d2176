"""What the images service needs from outside the process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from .domain import ImageRecord


class BlobStorage(Protocol):
    """Content-addressed bytes: one object per sha256."""

    async def exists(self, sha256: str) -> bool: ...

    async def put(self, sha256: str, data: bytes, content_type: str) -> None:
        """Store durably (atomic: a reader never sees a partial object)."""
        ...

    def read(self, sha256: str, chunk_bytes: int) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class ImageRepository(Protocol):
    async def blob_exists(self, sha256: str) -> bool: ...

    async def record(
        self, user_id: str, sha256: str, fmt: str, content_type: str, size: int, channel: str, filename: str
    ) -> tuple[ImageRecord, bool]:
        """Record the blob (once) and the user's ownership; returns the user's record and
        whether the blob was already known (deduplicated)."""
        ...

    async def get(self, user_id: str, sha256: str) -> ImageRecord | None:
        """The image as owned by this user, else None."""
        ...
