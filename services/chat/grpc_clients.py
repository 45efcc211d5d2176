"""Adapters of the domain ports over gRPC (LocationService, CharacterService, ImageService)."""

from __future__ import annotations

import base64

import grpc

from eco2.character.v1 import character_pb2, character_pb2_grpc
from eco2.images.v1 import images_pb2, images_pb2_grpc
from eco2.location.v1 import location_pb2, location_pb2_grpc
from eco2.services.runtime.errors import NotFound, PermissionDenied, Unavailable


class GrpcPlaces:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = location_pb2_grpc.LocationServiceStub(channel)

    async def nearby(self, latitude: float, longitude: float, *, radius_m: int, limit: int, collection_points: bool) -> list[dict]:
        request = location_pb2.SearchNearbyRequest(center=location_pb2.GeoPoint(latitude=latitude, longitude=longitude), radius_m=radius_m, limit=limit)
        if collection_points:
            request.pickup_categories.extend(v for k, v in location_pb2.PickupCategory.items() if v != 0)
        reply = await self.stub.SearchNearby(request)
        return [
            {"id": h.place.id, "name": h.place.name, "address": h.place.road_address or h.place.address, "distance_m": h.distance_m, "distance_text": h.distance_text, "pb": base64.b64encode(h.SerializeToString()).decode()}
            for h in reply.places
        ]


class GrpcCharacters:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = character_pb2_grpc.CharacterServiceStub(channel)

    async def get(self, code: str) -> dict | None:
        try:
            reply = await self.stub.GetCharacter(character_pb2.GetCharacterRequest(code=code))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        c = reply.character
        return {"code": c.code, "name": c.name, "description": c.description, "match_label": c.match_label, "pb": base64.b64encode(c.SerializeToString()).decode()}


class GrpcImages:
    """The caller's identity travels in forwarded metadata (runtime.clients): ImageService checks the owner."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = images_pb2_grpc.ImageServiceStub(channel)

    async def check_owned(self, image_key: str) -> None:
        try:
            await self.stub.GetImage(images_pb2.GetImageRequest(key=image_key))
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise NotFound(f"no image {image_key!r}", reason="IMAGE_NOT_FOUND", metadata={"image_key": image_key}) from None
            if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                raise PermissionDenied("the image belongs to another user", reason="IMAGE_NOT_OWNED", metadata={"image_key": image_key}) from None
            raise Unavailable("the image service is unavailable", reason="IMAGES_UNAVAILABLE", retry_after_s=1.0) from None
