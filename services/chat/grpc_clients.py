"""Adapters of the domain ports over gRPC (LocationService, CharacterService, ImageService,
ScanService)."""

from __future__ import annotations

import asyncio
import time

import grpc

from eco2.character.v1 import character_pb2, character_pb2_grpc
from eco2.images.v1 import images_pb2, images_pb2_grpc
from eco2.location.v1 import location_pb2, location_pb2_grpc
from eco2.scan.v1 import scan_pb2, scan_pb2_grpc
from eco2.services.knowledge.categories import RULE_OF_CATEGORY
from eco2.services.runtime.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
    status_details,
    unpack_details,
)

from .ports import Character, Place, Sight, VisionFailed


def place_of(hit: location_pb2.PlaceHit) -> Place:
    p = hit.place
    return Place(
        id=p.id,
        name=p.name,
        address=p.address,
        road_address=p.road_address,
        phone=p.phone,
        latitude=p.location.latitude,
        longitude=p.location.longitude,
        store_category=p.store_category,
        pickup_categories=list(p.pickup_categories),
        source=p.source,
        opening_hours=p.opening_hours,
        url=p.url,
        updated_at=p.updated_at.ToJsonString() if p.HasField("updated_at") else "",
        distance_m=hit.distance_m,
        distance_text=hit.distance_text,
    )


def character_of(c: character_pb2.Character) -> Character:
    return Character(
        code=c.code,
        name=c.name,
        aliases=list(c.aliases),
        category=c.category,
        match_label=c.match_label,
        image_code=c.image_code,
        description=c.description,
        is_default=c.is_default,
    )


class GrpcPlaces:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = location_pb2_grpc.LocationServiceStub(channel)

    async def nearby(
        self, latitude: float, longitude: float, *, radius_m: int, limit: int, collection_points: bool
    ) -> list[Place]:
        request = location_pb2.SearchNearbyRequest(
            center=location_pb2.GeoPoint(latitude=latitude, longitude=longitude), radius_m=radius_m, limit=limit
        )
        if collection_points:
            request.pickup_categories.extend(v for k, v in location_pb2.PickupCategory.items() if v != 0)
        reply = await self.stub.SearchNearby(request)
        return [place_of(h) for h in reply.places]


class GrpcCharacters:
    """CharacterService.ListCharacters and MatchCharacter, each answer reused for `cache_s`
    seconds: a waste answer carries its category's character and every character question reads
    the catalog, so without the cache each would cost a call for 13 entries that change rarely."""

    def __init__(self, channel: grpc.aio.Channel, *, cache_s: float = 0.0) -> None:
        self.stub = character_pb2_grpc.CharacterServiceStub(channel)
        self.cache_s = cache_s
        self._cache: dict[object, tuple[float, object]] = {}
        self._inflight: dict[object, asyncio.Task] = {}

    async def cast(self) -> list[Character]:
        return await self._read("cast", self._list)

    async def match(self, category: int) -> Character | None:
        return await self._read(("match", category), lambda: self._match(category))

    async def _list(self) -> list[Character]:
        found: list[Character] = []
        token = ""
        while True:
            reply = await self.stub.ListCharacters(character_pb2.ListCharactersRequest(page_token=token))
            found += [character_of(c) for c in reply.characters]
            token = reply.next_page_token
            if not token:
                return found

    async def _match(self, category: int) -> Character | None:
        reply = await self.stub.MatchCharacter(character_pb2.MatchCharacterRequest(category=category))
        return character_of(reply.character) if reply.matched else None

    async def _read(self, key: object, fetch):
        hit = self._cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        if self.cache_s <= 0:
            return await fetch()
        # one call per key at a time: answers that start together (a burst after a cold start)
        # share it instead of each asking CharacterService
        task = self._inflight.get(key)
        if task is None:
            task = self._inflight[key] = asyncio.ensure_future(self._fetch(key, fetch))
            task.add_done_callback(lambda t: self._settled(key, t))
        return await asyncio.shield(task)  # a caller that gives up does not cancel the others' call

    async def _fetch(self, key: object, fetch):
        now = time.monotonic()
        found = await fetch()  # an error is not cached: the next answer asks again
        self._cache[key] = (now + self.cache_s, found)
        return found

    def _settled(self, key: object, task: asyncio.Task) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have given up (their shield was cancelled)


class GrpcImages:
    """The caller's identity travels in forwarded metadata (runtime.clients): ImageService checks the
    owner. A worker acts with its job's wristband (runtime.context.act_as)."""

    def __init__(self, channel: grpc.aio.Channel, *, chunk_bytes: int = 64 * 1024) -> None:
        self.stub = images_pb2_grpc.ImageServiceStub(channel)
        self.chunk_bytes = chunk_bytes

    @staticmethod
    def _error(exc: grpc.aio.AioRpcError, image_key: str) -> Exception:
        if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            return NotFound(f"no image {image_key!r}", reason="IMAGE_NOT_FOUND", metadata={"image_key": image_key})
        if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
            return PermissionDenied(
                "the image belongs to another user", reason="IMAGE_NOT_OWNED", metadata={"image_key": image_key}
            )
        return Unavailable("the image service is unavailable", reason="IMAGES_UNAVAILABLE", retry_after_s=1.0)

    async def check_owned(self, image_key: str) -> None:
        try:
            await self.stub.GetImage(images_pb2.GetImageRequest(key=image_key))
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, image_key) from None

    async def read(self, image_key: str, *, max_bytes: int) -> tuple[bytes, str]:
        call = self.stub.ReadImage(images_pb2.ReadImageRequest(key=image_key))
        chunks, got, content_type = [], 0, ""
        try:
            async for message in call:
                if message.HasField("image"):
                    content_type = message.image.content_type
                got += len(message.chunk)
                if got > max_bytes or message.image.size_bytes > max_bytes:
                    call.cancel()
                    raise ResourceExhausted(
                        f"image {image_key!r} is larger than {max_bytes} bytes",
                        reason="IMAGE_TOO_LARGE",
                        metadata={"limit_bytes": str(max_bytes)},
                    )
                chunks.append(message.chunk)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, image_key) from None
        return b"".join(chunks), content_type

    async def store(self, data: bytes, content_type: str, *, filename: str) -> str:
        step = self.chunk_bytes

        async def parts():
            yield images_pb2.UploadRequest(
                metadata=images_pb2.UploadMetadata(
                    channel=images_pb2.IMAGE_CHANNEL_GENERATED, content_type=content_type, filename=filename
                )
            )
            for i in range(0, len(data), step):
                yield images_pb2.UploadRequest(chunk=data[i : i + step])

        try:
            reply = await self.stub.Upload(parts())
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
                raise InvalidArgument(
                    f"ImageService refused the generated image: {exc.details()}", reason="GENERATED_IMAGE_REFUSED"
                ) from None
            raise Unavailable(
                "the image service is unavailable", reason="IMAGES_UNAVAILABLE", retry_after_s=1.0
            ) from None
        return reply.image.key


class GrpcScan:
    """ScanService.ClassifyPhoto: the photo is read by the scan service as the current caller (the
    job's wristband travels with the call), classified under its vision stage's policy."""

    #: ScanService's default ECO2_SCAN_MAX_HINT_CHARS: the words sent with the photo are cut to it
    HINT_MAX_CHARS = 200

    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float) -> None:
        self.stub = scan_pb2_grpc.ScanServiceStub(channel)
        self.timeout_s = timeout_s

    async def classify(self, image_key: str, text: str) -> Sight | None:
        request = scan_pb2.ClassifyPhotoRequest(image_key=image_key, hint=text[: self.HINT_MAX_CHARS])
        try:
            reply = await self.stub.ClassifyPhoto(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, image_key) from None
        if not reply.configured:
            return None
        c = reply.classification
        return Sight(
            item=c.item,
            rule_file=RULE_OF_CATEGORY.get(c.category, ""),
            confidence=round(c.confidence, 3),
            situation_tags=list(c.situation_tags),
            model=reply.vision_model,
        )

    @staticmethod
    def _error(exc: grpc.aio.AioRpcError, image_key: str) -> Exception:
        code = exc.code()
        if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT):
            return NotFound(f"no image {image_key!r}", reason="IMAGE_NOT_FOUND", metadata={"image_key": image_key})
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return ResourceExhausted(exc.details() or "the photo is too large", reason="IMAGE_TOO_LARGE")
        status = status_details(exc)
        info = unpack_details(status).get("ErrorInfo") if status is not None else None
        if code == grpc.StatusCode.UNAVAILABLE and info is not None and info.reason == "VISION_FAILED":
            return VisionFailed(exc.details())
        return Unavailable("the scan service is unavailable", reason="SCAN_UNAVAILABLE", retry_after_s=1.0)
