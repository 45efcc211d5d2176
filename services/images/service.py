"""gRPC surface of the images service."""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from eco2.images.v1 import images_pb2 as pb
from eco2.images.v1 import images_pb2_grpc
from eco2.services.runtime import image_urls
from eco2.services.runtime.context import caller_id
from eco2.services.runtime.errors import FieldViolation, InvalidArgument, NotFound, ResourceExhausted
from eco2.services.runtime.validation import Validator

from .domain import CONTENT_TYPES, SNIFF_BYTES, filename_problem, is_complete, sniff
from .ports import BlobStorage, ImageRepository

_KEY = re.compile(r"^sha256:([0-9a-f]{64})$")


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    read_chunk_bytes: int
    url_ttl_s: int
    url_prefix: str


def _invalid(field: str, description: str, reason: str, message: str | None = None) -> InvalidArgument:
    return InvalidArgument(
        message or f"{field} {description}", reason=reason, violations=[FieldViolation(field, description)]
    )


class ImageServicer(images_pb2_grpc.ImageServiceServicer):
    def __init__(self, repository: ImageRepository, storage: BlobStorage, secret: bytes, limits: ImageLimits) -> None:
        self.repository = repository
        self.storage = storage
        self.secret = secret
        self.limits = limits

    async def Upload(self, request_iterator, context):
        user_id = caller_id(context)
        limit = self.limits.max_bytes
        meta: pb.UploadMetadata | None = None
        digest = hashlib.sha256()
        chunks: list[bytes] = []
        head = b""
        size = 0
        fmt: str | None = None
        async for message in request_iterator:
            part = message.WhichOneof("part")
            if meta is None:
                if part != "metadata":
                    raise _invalid("metadata", "must be the first message of the stream", "METADATA_FIRST")
                meta = message.metadata
                self._check_metadata(meta)
                continue
            if part != "chunk":
                raise _invalid(
                    "metadata",
                    "may only be sent once, first"
                    if part == "metadata"
                    else "a message carries neither metadata nor chunk",
                    "UNEXPECTED_MESSAGE",
                )
            data = message.chunk
            size += len(data)
            if size > limit:
                raise ResourceExhausted(
                    f"image is larger than the limit of {limit} bytes",
                    reason="IMAGE_TOO_LARGE",
                    metadata={"limit_bytes": str(limit)},
                    violations=[FieldViolation("chunk", f"total size must be at most {limit} bytes")],
                )
            if fmt is None:
                head += data[: SNIFF_BYTES - len(head)]
                if len(head) >= SNIFF_BYTES:
                    fmt = self._check_type(meta, head)
            digest.update(data)
            chunks.append(data)
        if meta is None:
            raise _invalid("metadata", "is required: the stream was empty", "METADATA_FIRST")
        if size == 0:
            raise _invalid("chunk", "no image bytes were sent", "EMPTY_IMAGE")
        if fmt is None:
            fmt = self._check_type(meta, head)
        data = b"".join(chunks)
        if not is_complete(fmt, data):
            raise _invalid("chunk", f"the {fmt} data ends before the image does (truncated upload)", "TRUNCATED_IMAGE")
        sha = digest.hexdigest()
        content_type = CONTENT_TYPES_BY_FORMAT[fmt]
        if not await self.repository.blob_exists(sha):
            await self.storage.put(sha, data, content_type)
        record, deduplicated = await self.repository.record(
            user_id,
            sha,
            fmt,
            content_type,
            size,
            pb.ImageChannel.Name(meta.channel).removeprefix("IMAGE_CHANNEL_"),
            meta.filename,
        )
        return pb.UploadResponse(image=record.to_proto(), deduplicated=deduplicated)

    @staticmethod
    def _check_metadata(meta: pb.UploadMetadata) -> None:
        v = Validator()
        v.enum("metadata.channel", meta.channel, pb.ImageChannel)
        v.check(
            meta.content_type in CONTENT_TYPES, "metadata.content_type", f"must be one of {', '.join(CONTENT_TYPES)}"
        )
        problem = filename_problem(meta.filename)
        if problem:
            v.add("metadata.filename", problem)
        v.raise_if_invalid("invalid upload metadata")

    @staticmethod
    def _check_type(meta: pb.UploadMetadata, head: bytes) -> str:
        declared = CONTENT_TYPES[meta.content_type]
        found = sniff(head)
        if found != declared:
            raise InvalidArgument(
                f"the bytes are {found or 'not a supported image'} but {meta.content_type} was declared",
                reason="CONTENT_TYPE_MISMATCH",
                metadata={"declared": meta.content_type, "sniffed": found or "unknown"},
                violations=[FieldViolation("metadata.content_type", "does not match the image bytes")],
            )
        return found

    def _key(self, key: str) -> str:
        m = _KEY.match(key)
        if not m:
            raise _invalid(
                "key", 'must be "sha256:" followed by 64 lowercase hex digits', "INVALID_KEY", "invalid request: key"
            )
        return m.group(1)

    async def _owned(self, user_id: str, key: str):
        sha = self._key(key)
        record = await self.repository.get(user_id, sha)
        if record is None:  # not stored, or not the caller's: the same answer
            raise NotFound(f"no image {key}", reason="IMAGE_NOT_FOUND", metadata={"key": key})
        return record

    async def GetImage(self, request, context):
        record = await self._owned(caller_id(context), request.key)
        expires = int(time.time()) + self.limits.url_ttl_s
        ts = Timestamp(seconds=expires)
        return pb.GetImageResponse(
            image=record.to_proto(),
            signed_url=image_urls.signed_path(self.secret, record.sha256, expires, self.limits.url_prefix),
            url_expires_at=ts,
        )

    async def ReadImage(self, request, context):
        """Written with context.write(), not yielded: a shutdown that finds the stream blocked on a
        slow reader then cancels it inside the runtime's wrapper (UNAVAILABLE + RetryInfo), with
        OpenTelemetry's interceptor in front too (docs/adr/0003)."""
        record = await self._owned(caller_id(context), request.key)
        first = True
        async for chunk in self.storage.read(record.sha256, self.limits.read_chunk_bytes):
            if first:
                await context.write(pb.ReadImageResponse(image=record.to_proto(), chunk=chunk))
                first = False
            else:
                await context.write(pb.ReadImageResponse(chunk=chunk))


CONTENT_TYPES_BY_FORMAT = {v: k for k, v in CONTENT_TYPES.items()}
