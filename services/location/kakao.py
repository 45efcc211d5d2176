"""Kakao Local keyword search (https://developers.kakao.com/docs/latest/ko/local/dev-guide),
used by SearchText when KAKAO_API_KEY is set.

    GET {base}/v2/local/search/keyword.json?query=..&x=<lng>&y=<lat>&sort=distance&size=<1..15>
    Authorization: KakaoAK <REST API key>
    → {"meta": {...}, "documents": [{"id", "place_name", "category_group_code", "phone",
       "address_name", "road_address_name", "x", "y", "place_url", "distance"}]}
"""

from __future__ import annotations

import logging

import httpx

from eco2.services.runtime.errors import Unavailable

from .domain import Hit, Place, haversine_m

log = logging.getLogger("eco2.location.kakao")

#: Kakao category group codes that map onto our store categories.
_GROUPS = {"CE7": "CAFE", "MT1": "MARKET", "CS2": "MARKET", "AD5": "LODGING"}
MAX_SIZE = 15  # Kakao's limit per page


def _float(value: object) -> float | None:
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f


class KakaoKeywordSearch:
    def __init__(self, api_key: str, *, base_url: str = "https://dapi.kakao.com", timeout_s: float = 3.0) -> None:
        self.client = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout_s,
            headers={"Authorization": f"KakaoAK {api_key}"},
            trust_env=False,
        )

    async def search(self, text: str, near: tuple[float, float] | None, limit: int) -> list[Hit]:
        params: dict[str, object] = {"query": text, "size": max(1, min(limit, MAX_SIZE)), "page": 1}
        if near is not None:
            params.update(y=f"{near[0]:.7f}", x=f"{near[1]:.7f}", sort="distance")
        try:
            response = await self.client.get("/v2/local/search/keyword.json", params=params)
        except httpx.HTTPError as exc:
            raise Unavailable(f"Kakao Local unreachable: {type(exc).__name__}", reason="KAKAO_UNAVAILABLE") from exc
        if response.status_code != 200:
            raise Unavailable(
                f"Kakao Local answered HTTP {response.status_code}",
                reason="KAKAO_UNAVAILABLE",
                metadata={"status": str(response.status_code)},
            )
        try:
            documents = response.json().get("documents", [])
        except ValueError as exc:
            raise Unavailable("Kakao Local answered something that is not JSON", reason="KAKAO_UNAVAILABLE") from exc
        hits: list[Hit] = []
        for doc in documents:
            if not isinstance(doc, dict):
                continue
            lng, lat = _float(doc.get("x")), _float(doc.get("y"))
            if lat is None or lng is None or not (-90 <= lat <= 90 and -180 <= lng <= 180) or not doc.get("id"):
                continue
            place = Place(
                id=f"kakao-{doc['id']}",
                source="KAKAO",
                name=str(doc.get("place_name", "")),
                latitude=lat,
                longitude=lng,
                store_category=_GROUPS.get(str(doc.get("category_group_code", "")), "GENERAL"),
                address=str(doc.get("address_name", "")),
                road_address=str(doc.get("road_address_name", "")),
                phone=str(doc.get("phone", "")),
                url=str(doc.get("place_url", "")),
            )
            distance = None
            if near is not None:
                distance = _float(doc.get("distance")) if doc.get("distance") not in (None, "") else None
                if distance is None:
                    distance = haversine_m(near[0], near[1], lat, lng)
            hits.append(Hit(place, distance))
        return hits[:limit]

    async def aclose(self) -> None:
        await self.client.aclose()
