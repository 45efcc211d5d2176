"""Places and the little logic around them: categories, distances and their human text."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from eco2.location.v1 import location_pb2 as pb

EARTH_RADIUS_M = 6_371_000.0
#: Coordinates are searched to 1e-7 degree (about 1 cm): finer digits mean nothing for a place
#: search, and a tiny non-zero value (a subnormal such as 5e-324) makes PostgreSQL's float8
#: trigonometry fail with "value out of range: underflow".
COORDINATE_DECIMALS = 7


def coordinate(degrees: float) -> float:
    """A latitude or longitude as searched: rounded to COORDINATE_DECIMALS (-0.0 becomes 0.0)."""
    return round(degrees, COORDINATE_DECIMALS) + 0.0


@dataclass(frozen=True, slots=True)
class Place:
    id: str
    source: str  # PlaceSource name without prefix: SAMPLE, PUBLIC_DATA, KAKAO
    name: str
    latitude: float
    longitude: float
    store_category: str  # StoreCategory name without prefix
    pickup_categories: tuple[str, ...] = ()
    address: str = ""
    road_address: str = ""
    phone: str = ""
    opening_hours: str = ""
    url: str = ""
    updated_at: datetime | None = None

    def to_proto(self) -> pb.Place:
        place = pb.Place(
            id=self.id,
            name=self.name,
            address=self.address,
            road_address=self.road_address,
            phone=self.phone,
            location=pb.GeoPoint(latitude=self.latitude, longitude=self.longitude),
            store_category=pb.StoreCategory.Value(f"STORE_CATEGORY_{self.store_category}"),
            pickup_categories=[pb.PickupCategory.Value(f"PICKUP_CATEGORY_{c}") for c in self.pickup_categories],
            source=pb.PlaceSource.Value(f"PLACE_SOURCE_{self.source}"),
            opening_hours=self.opening_hours,
            url=self.url,
        )
        if self.updated_at is not None:
            ts = Timestamp()
            ts.FromDatetime(self.updated_at)
            place.updated_at.CopyFrom(ts)
        return place


@dataclass(frozen=True, slots=True)
class Hit:
    place: Place
    distance_m: float | None = None  # None when the search had no point
    score: float = 0.0

    def to_proto(self) -> pb.PlaceHit:
        if self.distance_m is None:
            return pb.PlaceHit(place=self.place.to_proto())
        return pb.PlaceHit(
            place=self.place.to_proto(), distance_m=self.distance_m, distance_text=distance_text(self.distance_m)
        )


def distance_text(metres: float) -> str:
    """'350m' under a kilometre (rounded to 10 m), else '1.2km' (one decimal)."""
    if metres < 995:
        return f"{int(round(metres, -1)) if metres >= 10 else int(round(metres))}m"
    return f"{metres / 1000:.1f}km"


def haversine_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Great-circle distance on the same sphere earthdistance uses (for non-DB places)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lng2 - lng1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def store_name(value: int) -> str:
    return pb.StoreCategory.Name(value).removeprefix("STORE_CATEGORY_")


def pickup_name(value: int) -> str:
    return pb.PickupCategory.Name(value).removeprefix("PICKUP_CATEGORY_")


@dataclass(frozen=True, slots=True)
class NearbyQuery:
    latitude: float
    longitude: float
    radius_m: float
    limit: int
    store_categories: tuple[str, ...] = field(default=())
    pickup_categories: tuple[str, ...] = field(default=())
