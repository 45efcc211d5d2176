"""Adapters of the external tool ports over their real HTTP APIs (httpx)."""

from __future__ import annotations

import httpx

from eco2.services.llm.ports import LLMError

# WMO weather codes → Korean (Open-Meteo reports these).
_WMO = {
    0: "맑음",
    1: "대체로 맑음",
    2: "구름 조금",
    3: "흐림",
    45: "안개",
    51: "이슬비",
    61: "비",
    63: "비",
    65: "강한 비",
    71: "눈",
    80: "소나기",
    95: "뇌우",
}


class OpenMeteoWeather:
    """GET {base}/v1/forecast?latitude&longitude&current=temperature_2m,precipitation,weather_code"""

    def __init__(self, base_url: str, timeout_s: float = 5.0) -> None:
        self.client = httpx.AsyncClient(base_url=base_url, timeout=timeout_s)

    async def current(self, latitude: float, longitude: float) -> dict:
        try:
            r = await self.client.get(
                "/v1/forecast",
                params={
                    "latitude": latitude,
                    "longitude": longitude,
                    "current": "temperature_2m,precipitation,weather_code",
                },
            )
        except httpx.HTTPError as exc:
            raise LLMError(f"weather: {type(exc).__name__}", retryable=True) from exc
        if r.status_code != 200:
            raise LLMError(
                f"weather: HTTP {r.status_code}",
                retryable=r.status_code == 429 or r.status_code >= 500,
                status=r.status_code,
            )
        cur = r.json()["current"]
        t, p, code = cur["temperature_2m"], cur.get("precipitation", 0.0), int(cur.get("weather_code", 0))
        return {
            "temperature_c": t,
            "precipitation_mm": p,
            "summary": f"{_WMO.get(code, '알 수 없음')}, {t}°C, 강수 {p}mm",
        }

    async def aclose(self) -> None:
        await self.client.aclose()


class TavilySearch:
    """POST {base}/search {"query", "max_results"} with a Bearer key → {"results": [{title, url, content}]}"""

    def __init__(self, base_url: str, api_key: str, timeout_s: float = 10.0) -> None:
        self.client = httpx.AsyncClient(
            base_url=base_url, timeout=timeout_s, headers={"Authorization": f"Bearer {api_key}"}
        )

    async def search(self, query: str, *, limit: int) -> list[dict]:
        try:
            r = await self.client.post("/search", json={"query": query, "max_results": limit})
        except httpx.HTTPError as exc:
            raise LLMError(f"web search: {type(exc).__name__}", retryable=True) from exc
        if r.status_code != 200:
            raise LLMError(
                f"web search: HTTP {r.status_code}",
                retryable=r.status_code == 429 or r.status_code >= 500,
                status=r.status_code,
            )
        return [
            {"title": x.get("title", ""), "url": x.get("url", ""), "snippet": x.get("content", "")}
            for x in r.json().get("results", [])[:limit]
        ]

    async def aclose(self) -> None:
        await self.client.aclose()
