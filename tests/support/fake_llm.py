"""Fake OpenAI and Gemini HTTP APIs on loopback, speaking their real wire formats, for the real
`openai` and `google-genai` SDKs (base_url pointed here). Also used by bench/chat.py:

    python tests/support/fake_llm.py --port P --first-token-ms 200 --token-ms 20 --tokens 100

OpenAI:  POST /v1/chat/completions   (stream → `data: {chat.completion.chunk}` SSE lines + `data: [DONE]`;
         `tools` → a tool_calls reply; `response_format: json_schema` → JSON content; an
         `image_url` data-URI part → the vision reply chosen by the sha256 of the decoded bytes)
         POST /v1/images/generations   (→ `data[0].b64_json`, the PNG `script.image`)
Gemini:  POST /v1[beta]/models/{model}:generateContent and :streamGenerateContent?alt=sse
         (functionDeclarations → functionCall parts; responseJsonSchema → JSON text; an
         `inlineData` part → the vision reply by sha256; responseModalities IMAGE → an inlineData PNG)

Vision: `script.vision` maps sha256(image bytes) → the structured reply (a str is sent verbatim:
malformed replies); other bytes get
`script.vision_unknown`. Every image received is kept in `server.images_seen` (provider, mime, data).

Faults: `server.faults` is a list consumed one per request: an int HTTP status (429, 500, ...)
answered with the provider's error body, or ("delay", seconds) to hold the request (timeouts).
Every request is recorded (`server.requests`), with its timing under the marker `#id` found in
the prompt (`server.timings[marker]`: list of {start, first, end} monotonic seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import re
import struct
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MARKER = re.compile(r"#([A-Za-z0-9_-]{3,64})")
DATA_URI = re.compile(r"^data:([\w/+.-]+);base64,(.*)$", re.S)


def b64decode(text: str) -> bytes:
    """proto3 JSON bytes: standard or URL-safe base64, with or without padding (the Gemini API
    accepts both; google-genai sends URL-safe)."""
    text = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def png(payload: bytes, width: int = 64) -> bytes:
    """A real PNG (grey, 8-bit) whose pixel rows carry `payload`: distinct payloads, distinct images."""
    rows = [payload[i : i + width].ljust(width, b"\0") for i in range(0, max(len(payload), 1), width)]
    raw = b"".join(b"\0" + r for r in rows)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, len(rows), 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@dataclass
class Script:
    tokens: list[str] = field(default_factory=lambda: [f"토큰{i} " for i in range(20)])
    first_token_s: float = 0.0
    token_s: float = 0.0
    tool_args: dict[str, Any] = field(default_factory=lambda: {"query": "투명 페트병"})
    structured: dict[str, Any] = field(default_factory=lambda: {"score": 0.9, "reasons": ["근거에 맞음"]})
    text: str = "요약: 페트병 이야기"  # non-streaming text replies
    # Tool loops: one round of calls ({"name", "arguments"}) per request with tools, in order; an
    # empty round (or the plan used up) = a text reply, no calls. None: one call of the first tool with tool_args.
    tool_plan: list[list[dict[str, Any]]] | None = None
    structured_by_title: dict[str, Any] = field(
        default_factory=dict
    )  # JSON schema title → its reply (a str is sent as is)
    vision: dict[str, dict[str, Any]] = field(default_factory=dict)  # sha256 hex of the image → structured reply
    vision_unknown: dict[str, Any] = field(
        default_factory=lambda: {
            "item": "알 수 없는 물건",
            "category": "미분류",
            "confidence": 0.05,
            "situation_tags": [],
        }
    )
    image: bytes = field(
        default_factory=lambda: png(b"fake image model: a recycling cat")
    )  # what the image endpoints draw


class FakeModelServer:
    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.faults: list[Any] = []
        self.requests: list[dict] = []
        self.images_seen: list[dict] = []
        self.timings: dict[str, list[dict]] = {}
        self.in_flight = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    # ---------------------------------------------------------------- lifecycle

    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.openai)
        app.router.add_post("/v1/images/generations", self.openai_images)
        app.router.add_post("/v1beta/models/{call}", self.gemini)
        app.router.add_post("/v1/models/{call}", self.gemini)  # google-genai 3.x defaults to v1
        app.router.add_get("/_timings", self.dump_timings)
        return app

    async def start(self, port: int = 0) -> FakeModelServer:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, backlog=4096)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeModelServer:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    @property
    def openai_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def gemini_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def dump_timings(self, request: web.Request) -> web.Response:
        return web.json_response(self.timings)

    # ---------------------------------------------------------------- helpers

    def _timing(self, body: dict) -> dict:
        marker = MARKER.search(json.dumps(body, ensure_ascii=False))
        t = {"start": time.monotonic(), "first": None, "end": None}
        if marker:
            self.timings.setdefault(marker.group(1), []).append(t)
        return t

    async def _fault(self, provider: str) -> web.Response | None:
        if not self.faults:
            return None
        fault = self.faults.pop(0)
        if isinstance(fault, tuple) and fault[0] == "delay":
            await asyncio.sleep(fault[1])
            return None
        status = int(fault)
        if provider == "openai":
            kind = {429: "rate_limit_exceeded", 500: "server_error", 503: "server_error"}.get(
                status, "invalid_request_error"
            )
            return web.json_response(
                {"error": {"message": f"fake error {status}", "type": kind, "param": None, "code": kind}}, status=status
            )
        name = {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 400: "INVALID_ARGUMENT"}.get(
            status, "UNKNOWN"
        )
        return web.json_response(
            {"error": {"code": status, "message": f"fake error {status}", "status": name}}, status=status
        )

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        return resp

    # ---------------------------------------------------------------- OpenAI

    async def openai(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(
            {"provider": "openai", "path": request.path, "body": body, "headers": dict(request.headers)}
        )
        if (fault := await self._fault("openai")) is not None:
            return fault
        t = self._timing(body)
        self.in_flight += 1
        try:
            model, cid, created = body.get("model", "gpt"), f"chatcmpl-{uuid.uuid4().hex[:12]}", int(time.time())
            if body.get("tools"):
                calls = self._tool_round([tool["function"]["name"] for tool in body["tools"]])
                if not calls:
                    return self._openai_reply(
                        cid, created, model, {"role": "assistant", "content": self.script.text}, "stop", t
                    )
                message = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": f"call_{uuid.uuid4().hex[:8]}",
                            "type": "function",
                            "function": {
                                "name": c["name"],
                                "arguments": json.dumps(c["arguments"], ensure_ascii=False),
                            },
                        }
                        for c in calls
                    ],
                }
                return self._openai_reply(cid, created, model, message, "tool_calls", t)
            rf = body.get("response_format") or {}
            image = self._openai_image(body)
            if image is not None and rf.get("type") == "json_schema":
                return self._openai_reply(
                    cid, created, model, {"role": "assistant", "content": self._see(image)}, "stop", t
                )
            if rf.get("type") == "json_schema":
                return self._openai_reply(
                    cid,
                    created,
                    model,
                    {
                        "role": "assistant",
                        "content": self._structured_text((rf.get("json_schema") or {}).get("schema")),
                    },
                    "stop",
                    t,
                )
            if not body.get("stream"):
                return self._openai_reply(
                    cid, created, model, {"role": "assistant", "content": self.script.text}, "stop", t
                )
            resp = await self._sse(request)

            async def chunk(delta: dict, finish: str | None) -> None:
                data = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                }
                await resp.write(f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode())

            await chunk({"role": "assistant", "content": ""}, None)
            await self._pace(t, lambda tok: chunk({"content": tok}, None))
            await chunk({}, "stop")
            await resp.write(b"data: [DONE]\n\n")
            t["end"] = time.monotonic()
            await resp.write_eof()
            return resp
        finally:
            self.in_flight -= 1

    def _openai_image(self, body: dict) -> dict | None:
        """The image_url data-URI part of the last user turn, decoded (None: no image)."""
        for m in reversed(body.get("messages") or []):
            if m.get("role") == "user" and isinstance(m.get("content"), list):
                for part in m["content"]:
                    if part.get("type") == "image_url":
                        found = DATA_URI.match(part["image_url"]["url"])
                        assert found, "the image must arrive as a base64 data URI"
                        return {
                            "provider": "openai",
                            "mime": found.group(1),
                            "data": base64.b64decode(found.group(2), validate=True),
                        }
        return None

    def _see(self, image: dict) -> str:
        """The vision reply's text: the scripted dict as JSON, a scripted str as is (malformed replies)."""
        self.images_seen.append(image)
        reply = self.script.vision.get(hashlib.sha256(image["data"]).hexdigest(), self.script.vision_unknown)
        return reply if isinstance(reply, str) else json.dumps(reply, ensure_ascii=False)

    async def openai_images(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(
            {"provider": "openai", "path": request.path, "body": body, "headers": dict(request.headers)}
        )
        if (fault := await self._fault("openai")) is not None:
            return fault
        if body.get("response_format") not in (None, "b64_json"):
            return web.json_response(
                {
                    "error": {
                        "message": "this fake only answers b64_json",
                        "type": "invalid_request_error",
                        "param": "response_format",
                        "code": None,
                    }
                },
                status=400,
            )
        return web.json_response(
            {
                "created": int(time.time()),
                "data": [{"b64_json": base64.b64encode(self.script.image).decode(), "revised_prompt": None}],
                "output_format": "png",
                "size": body.get("size", "1024x1024"),
                "quality": "medium",
                "usage": {
                    "input_tokens": 10,
                    "output_tokens": 100,
                    "total_tokens": 110,
                    "input_tokens_details": {"text_tokens": 10, "image_tokens": 0},
                },
            }
        )

    def _openai_reply(self, cid: str, created: int, model: str, message: dict, finish: str, t: dict) -> web.Response:
        t["first"] = t["end"] = time.monotonic()
        return web.json_response(
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            }
        )

    async def _pace(self, t: dict, send) -> None:
        s = self.script
        start = t["start"]
        for i, tok in enumerate(s.tokens):
            # absolute schedule: token i is due at first_token_s + i * token_s after the request
            delay = start + s.first_token_s + i * s.token_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await send(tok)
            if t["first"] is None:
                t["first"] = time.monotonic()

    # ---------------------------------------------------------------- Gemini

    async def gemini(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["call"].partition(":")
        body = await request.json()
        self.requests.append(
            {
                "provider": "gemini",
                "path": request.path,
                "query": dict(request.query),
                "body": body,
                "headers": dict(request.headers),
            }
        )
        if method not in ("generateContent", "streamGenerateContent"):
            return web.json_response(
                {"error": {"code": 404, "message": f"unknown method {method}", "status": "NOT_FOUND"}}, status=404
            )
        if (fault := await self._fault("gemini")) is not None:
            return fault
        t = self._timing(body)
        self.in_flight += 1
        try:
            if method == "streamGenerateContent":
                resp = await self._sse(request)

                async def send(tok: str) -> None:
                    await resp.write(
                        f"data: {json.dumps(self._candidate(model, [{'text': tok}], None), ensure_ascii=False)}\r\n\r\n".encode()
                    )

                await self._pace(t, send)
                await resp.write(f"data: {json.dumps(self._candidate(model, [{'text': ''}], 'STOP'))}\r\n\r\n".encode())
                t["end"] = time.monotonic()
                await resp.write_eof()
                return resp
            config = body.get("generationConfig") or {}
            inline = [
                p.get("inlineData") or p.get("inline_data")
                for c in body.get("contents") or []
                for p in c.get("parts") or []
                if p.get("inlineData") or p.get("inline_data")
            ]
            if "IMAGE" in (config.get("responseModalities") or config.get("response_modalities") or []):
                parts = [
                    {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(self.script.image).decode()}}
                ]
            elif inline:
                blob = inline[-1]
                image = {
                    "provider": "gemini",
                    "mime": blob.get("mimeType") or blob.get("mime_type"),
                    "data": b64decode(blob["data"]),
                }
                parts = [{"text": self._see(image)}]
            elif any(tool.get("functionDeclarations") for tool in body.get("tools") or []):
                calls = self._tool_round(
                    [d["name"] for tool in body["tools"] for d in tool.get("functionDeclarations") or []]
                )
                parts = [
                    {"functionCall": {"id": f"fc-{uuid.uuid4().hex[:6]}", "name": c["name"], "args": c["arguments"]}}
                    for c in calls
                ] or [{"text": self.script.text}]
            elif (config.get("responseMimeType") or config.get("response_mime_type")) == "application/json":
                parts = [
                    {
                        "text": self._structured_text(
                            config.get("responseJsonSchema") or config.get("response_json_schema")
                        )
                    }
                ]
            else:
                parts = [{"text": self.script.text}]
            t["first"] = t["end"] = time.monotonic()
            return web.json_response(self._candidate(model, parts, "STOP"))
        finally:
            self.in_flight -= 1

    # ---------------------------------------------------------------- tool loops, per-schema structured replies

    def _tool_round(self, offered: list[str]) -> list[dict[str, Any]]:
        """The calls of this request: the next round of `script.tool_plan` (or the default single call)."""
        if self.script.tool_plan is None:
            return [{"name": offered[0], "arguments": self.script.tool_args}]
        return self.script.tool_plan.pop(0) if self.script.tool_plan else []

    def _structured_text(self, schema: dict | None) -> str:
        reply = self.script.structured_by_title.get((schema or {}).get("title", ""), self.script.structured)
        return reply if isinstance(reply, str) else json.dumps(reply, ensure_ascii=False)

    @staticmethod
    def _candidate(model: str, parts: list[dict], finish: str | None) -> dict:
        cand: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if finish:
            cand["finishReason"] = finish
        return {
            "candidates": [cand],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15},
            "modelVersion": model,
        }


async def _main(args: argparse.Namespace) -> None:
    script = Script(
        tokens=[f"토큰{i} " for i in range(args.tokens)],
        first_token_s=args.first_token_ms / 1000,
        token_s=args.token_ms / 1000,
    )
    server = await FakeModelServer(script).start(args.port)
    print(json.dumps({"port": server.port}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--first-token-ms", type=float, default=200)
    p.add_argument("--token-ms", type=float, default=20)
    p.add_argument("--tokens", type=int, default=100)
    try:
        asyncio.run(_main(p.parse_args()))
    except KeyboardInterrupt:
        pass
