"""gRPC surface of the location service."""

from __future__ import annotations

import asyncio
import logging
import re

from eco2.location.v1 import location_pb2 as pb
from eco2.location.v1 import location_pb2_grpc
from eco2.services.runtime.errors import DomainError, NotFound
from eco2.services.runtime.validation import Validator

from .domain import Hit, NearbyQuery, coordinate, pickup_name, store_name
from .ports import KeywordSearch, PlaceRepository

log = logging.getLogger("eco2.location")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,99}$")


class Limits:
    def __init__(
        self,
        *,
        max_radius_m: int,
        default_radius_m: int,
        max_limit: int,
        default_limit: int,
        max_query_chars: int,
        max_filters: int,
    ) -> None:
        self.max_radius_m = max_radius_m
        self.default_radius_m = default_radius_m
        self.max_limit = max_limit
        self.default_limit = default_limit
        self.max_query_chars = max_query_chars
        self.max_filters = max_filters


def _point(v: Validator, field: str, point: pb.GeoPoint) -> tuple[float, float]:
    """The point as searched (see domain.coordinate); range violations go to `v`."""
    v.number(f"{field}.latitude", point.latitude, low=-90.0, high=90.0)
    v.number(f"{field}.longitude", point.longitude, low=-180.0, high=180.0)
    return coordinate(point.latitude), coordinate(point.longitude)


class LocationServicer(location_pb2_grpc.LocationServiceServicer):
    def __init__(self, places: PlaceRepository, limits: Limits, keyword: KeywordSearch | None = None) -> None:
        self.places = places
        self.limits = limits
        self.keyword = keyword

    def _limit(self, v: Validator, value: int) -> int:
        v.check(value <= self.limits.max_limit, "limit", f"must be at most {self.limits.max_limit} (got {value})")
        return value or self.limits.default_limit

    async def SearchNearby(self, request, context):
        L = self.limits
        v = Validator()
        if v.check(request.HasField("center"), "center", "is required"):
            lat, lng = _point(v, "center", request.center)
        radius = request.radius_m or L.default_radius_m
        v.check(
            request.radius_m <= L.max_radius_m, "radius_m", f"must be at most {L.max_radius_m} (got {request.radius_m})"
        )
        limit = self._limit(v, request.limit)
        for name, values, enum in (
            ("store_categories", request.store_categories, pb.StoreCategory),
            ("pickup_categories", request.pickup_categories, pb.PickupCategory),
        ):
            if v.check(len(values) <= L.max_filters, name, f"at most {L.max_filters} entries (got {len(values)})"):
                for i, value in enumerate(values):
                    v.enum(f"{name}[{i}]", value, enum)
        v.raise_if_invalid()
        hits = await self.places.nearby(
            NearbyQuery(
                latitude=lat,
                longitude=lng,
                radius_m=radius,
                limit=limit,
                store_categories=tuple(sorted({store_name(c) for c in request.store_categories})),
                pickup_categories=tuple(sorted({pickup_name(c) for c in request.pickup_categories})),
            )
        )
        return pb.SearchNearbyResponse(places=[h.to_proto() for h in hits])

    async def SearchText(self, request, context):
        v = Validator()
        text = request.query.strip()
        v.text("query", request.query, max_len=self.limits.max_query_chars, single_line=True)
        v.check(bool(text), "query", "is required")
        near = _point(v, "near", request.near) if request.HasField("near") else None
        limit = self._limit(v, request.limit)
        v.raise_if_invalid()
        local = self.places.search_text(text, near, limit)
        if self.keyword is None:
            hits = await local
        else:
            local_hits, remote = await asyncio.gather(local, self._keyword(text, near, limit))
            hits = _merge(local_hits, remote, near is not None, limit)
        return pb.SearchTextResponse(places=[h.to_proto() for h in hits])

    async def _keyword(self, text: str, near, limit: int) -> list[Hit]:
        try:
            return await self.keyword.search(text, near, limit)
        except DomainError as exc:  # degrade to local results: Kakao is an extra, not a dependency
            log.warning("keyword search unavailable; serving local results", extra={"error": exc.message})
            return []

    async def GetPlace(self, request, context):
        v = Validator()
        if v.text("id", request.id, min_len=1, max_len=100, single_line=True):
            v.check(bool(_ID.match(request.id)), "id", "is not a place id (letters, digits, '-' and '_')")
        v.raise_if_invalid()
        place = await self.places.get(request.id)
        if place is None:
            raise NotFound(f"no place with id {request.id!r}", reason="PLACE_NOT_FOUND", metadata={"id": request.id})
        return pb.GetPlaceResponse(place=place.to_proto())


def _merge(local: list[Hit], remote: list[Hit], by_distance: bool, limit: int) -> list[Hit]:
    if by_distance:
        merged = sorted(local + remote, key=lambda h: h.distance_m if h.distance_m is not None else float("inf"))
    else:
        merged = local + remote
    return merged[:limit]
