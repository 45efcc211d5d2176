"""What the chat agent needs from outside the process (adapters in grpc_clients.py, tools/),
and the values those ports hand back.

The values are TypedDicts of plain fields: they travel through the graph's checkpoints as they
are (LangGraph's serializer stores dicts, lists, strings and numbers natively), and the result
mapping (result.py) turns them into the contract's messages.
"""

from __future__ import annotations

from typing import Any, Protocol, TypedDict


class Place(TypedDict):
    """A place a nearby search found: eco2.location.v1.PlaceHit's fields, flat."""

    id: str
    name: str
    address: str
    road_address: str
    phone: str
    latitude: float
    longitude: float
    store_category: int  # eco2.location.v1.StoreCategory
    pickup_categories: list[int]  # eco2.location.v1.PickupCategory
    source: int  # eco2.location.v1.PlaceSource
    opening_hours: str
    url: str
    updated_at: str  # RFC 3339, "" when the place has none
    distance_m: float
    distance_text: str


class Character(TypedDict):
    """An Eco² character as CharacterService serves it: eco2.character.v1.Character's fields."""

    code: str
    name: str
    aliases: list[str]
    category: int  # eco2.character.v1.WasteCategory
    match_label: str
    image_code: str
    description: str
    is_default: bool


class Sight(TypedDict):
    """What a vision model saw in a photo (ScanService.ClassifyPhoto)."""

    item: str
    rule_file: str  # the knowledge base's rule file of its category, "" when it knows none (미분류)
    confidence: float
    situation_tags: list[str]
    model: str


class Photos(Protocol):
    """ScanService's vision stage: the product's one way of seeing a photo."""

    async def classify(self, image_key: str, text: str) -> Sight | None:
        """What the photo shows, read as the current caller, with the user's words as their
        question; None when no vision model is configured. NotFound / ResourceExhausted for a
        photo that cannot be used, VisionFailed when the model failed (already retried)."""
        ...


class VisionFailed(Exception):
    """The vision model did not classify the photo, after ScanService's own retries: asking again
    would repeat them."""

    retryable = False


class Places(Protocol):
    async def nearby(
        self, latitude: float, longitude: float, *, radius_m: int, limit: int, collection_points: bool
    ) -> list[Place]:
        """Places near a point, nearest first."""
        ...


class Characters(Protocol):
    """CharacterService: the catalog and its category → character matching are its own."""

    async def cast(self) -> list[Character]:
        """The whole catalog, the default character first."""
        ...

    async def match(self, category: int) -> Character | None:
        """The character of an eco2.character.v1.WasteCategory; None when the category has none
        of its own (CharacterService then answers with the default character, unmatched)."""
        ...


class Images(Protocol):
    async def check_owned(self, image_key: str) -> None:
        """NotFound / PermissionDenied when the caller may not use the image."""
        ...

    async def read(self, image_key: str, *, max_bytes: int) -> tuple[bytes, str]:
        """The image's bytes and content type, read as the current caller (NotFound /
        PermissionDenied as check_owned; ResourceExhausted over `max_bytes`)."""
        ...

    async def store(self, data: bytes, content_type: str, *, filename: str) -> str:
        """Upload a generated image owned by the current caller; its content-addressed key."""
        ...


class Weather(Protocol):
    async def current(self, latitude: float, longitude: float) -> dict[str, Any]:
        """{"temperature_c", "precipitation_mm", "summary"}."""
        ...


class WebSearch(Protocol):
    async def search(self, query: str, *, limit: int) -> list[dict[str, str]]:
        """[{"title", "url", "snippet"}]."""
        ...


class BulkWasteFees(Protocol):
    """Bulk-waste (대형폐기물) fee tables of the 시·군·구 (adapter: tools/bulk_waste.py)."""

    async def search_fee(
        self, sigungu: str, item: str, *, sido: str = "", aliases: tuple[str, ...] = ()
    ) -> list[dict[str, Any]]:
        """Fee rows of the item in that region: dicts with sido, sigungu, item, category, spec,
        fee (원, None if not a number), free, fee_text, agency (관리기관), date (기준일)."""
        ...

    async def collection_info(self, sigungu: str, *, sido: str = "") -> dict[str, Any]:
        """How the region collects bulk waste: {"found", "sido", "sigungu", "agency", "date", "items", "categories"}."""
        ...
