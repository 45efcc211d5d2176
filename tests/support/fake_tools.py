"""Fake outside tool APIs on loopback, in their real wire formats: Open-Meteo (`GET /v1/forecast`)
and Tavily (`POST /search`). `delay_s` holds each reply (slow tools); `hold`, when set, is an
asyncio.Event each search waits for after it arrived (`arrived`): a tool call kept in flight
until the test lets it answer. Requests are recorded."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from .http_fake import LocalHttpFake


class FakeTools(LocalHttpFake):
    def __init__(self, *, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls: list[tuple[str, float, float]] = []  # (path, start, end) monotonic
        self.hold: asyncio.Event | None = None
        self.arrived = asyncio.Event()

    async def forecast(self, request: web.Request) -> web.Response:
        start = time.monotonic()
        float(request.query["latitude"]), float(request.query["longitude"])  # required, as the real API
        await asyncio.sleep(self.delay_s)
        self.calls.append((request.path, start, time.monotonic()))
        return web.json_response(
            {
                "latitude": 37.56,
                "longitude": 126.98,
                "current_units": {"temperature_2m": "°C", "precipitation": "mm"},
                "current": {
                    "time": "2026-01-01T12:00",
                    "interval": 900,
                    "temperature_2m": 21.5,
                    "precipitation": 1.2,
                    "weather_code": 61,
                },
            }
        )

    async def search(self, request: web.Request) -> web.Response:
        start = time.monotonic()
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return web.json_response({"detail": {"error": "Unauthorized"}}, status=401)
        body = await request.json()
        self.arrived.set()
        if self.hold is not None:
            await self.hold.wait()
        await asyncio.sleep(self.delay_s)
        self.calls.append((request.path, start, time.monotonic()))
        results = [
            {
                "title": f"재활용 뉴스 {i}",
                "url": f"https://news.example/{i}",
                "content": f"{body['query']} 관련 기사 {i}",
                "score": 0.9,
            }
            for i in range(body.get("max_results", 3))
        ]
        return web.json_response({"query": body["query"], "results": results, "response_time": self.delay_s})

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/forecast", self.forecast)
        app.router.add_post("/search", self.search)
