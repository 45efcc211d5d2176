"""OpenAI adapter (Chat Completions through the official `openai` SDK)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import httpx
import httpx2
import openai

from .ports import Grounding, LLMError, Message, ModelInfo, T, ToolCall, ToolSpec
from .prompt import json_schema, render

#: What a request that breaks mid-way raises (openai 3.x sends through httpx2).
_HTTP_ERRORS = (httpx.HTTPError, httpx2.HTTPError)
#: The request options `chat.completions.create` sends: the API key as a bearer token.
_BEARER: openai.RequestOptions = {"security": {"bearer_auth": True}}


def _error(exc: Exception) -> LLMError:
    if isinstance(exc, openai.APITimeoutError | openai.APIConnectionError):
        return LLMError(f"openai: {type(exc).__name__}", retryable=True)
    if isinstance(exc, openai.APIStatusError):
        return LLMError(
            f"openai: HTTP {exc.status_code}",
            retryable=exc.status_code in (408, 409, 429) or exc.status_code >= 500,
            status=exc.status_code,
        )
    return LLMError(f"openai: {type(exc).__name__}: {exc}", retryable=False)


def _http_client(timeout_s: float):
    """The SDK's own aiohttp-backed client (`openai.DefaultAioHttpClient`): aiohttp parses HTTP in
    C, where the default httpx client runs h11 and anyio per streamed chunk — the largest CPU cost
    left on a token's path (ADR 0063). Limits sized for one process streaming ~1,000 answers."""
    limits = httpx2.Limits(max_connections=4096, max_keepalive_connections=1024, keepalive_expiry=30)
    try:
        return openai.DefaultAioHttpClient(timeout=timeout_s, limits=limits)
    except RuntimeError:  # pragma: no cover — openai installed without its aiohttp extra
        return openai.DefaultAsyncHttpxClient(timeout=timeout_s, limits=limits)


class OpenAILLM:
    def __init__(self, info: ModelInfo, *, api_key: str, base_url: str | None = None, timeout_s: float = 60.0) -> None:
        self.info = info
        # Retries belong to the node policy table, not to the SDK.
        self.client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url or None,
            max_retries=0,
            timeout=timeout_s,
            http_client=_http_client(timeout_s),
        )

    async def aclose(self) -> None:
        await self.client.close()

    @staticmethod
    def _messages(messages: list[Message], grounding: Grounding | None) -> list[dict]:
        out: list[dict] = []
        for m in render(messages, grounding):
            if (
                m.tool_calls
            ):  # Chat Completions' own tool turns: the assistant's calls, then one "tool" message per call
                calls = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {
                            "name": c.name,
                            "arguments": json.dumps(c.arguments, ensure_ascii=False, default=str),
                        },
                    }
                    for c in m.tool_calls
                ]
                out.append({"role": "assistant", "content": m.content or None, "tool_calls": calls})
            elif m.role == "tool":
                out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content})
            else:
                out.append({"role": m.role, "content": m.content})
        return out

    async def _post(self, body: dict, *, stream: bool = False) -> httpx2.Response:
        """POST /chat/completions through the SDK's own request path (auth, headers, timeout, HTTP
        status → typed errors), with `body` sent as built: it is plain JSON already, and
        `chat.completions.create` walks every field of every message through its typed transform
        on each call. The reply is read with json.loads rather than into the SDK's pydantic models."""
        return await self.client.post(
            "/chat/completions", cast_to=httpx2.Response, body=body, options=_BEARER, stream=stream
        )

    def _body(self, messages: list[dict], **fields) -> dict:
        return {"model": self.info.name, "messages": messages, **{k: v for k, v in fields.items() if v is not None}}

    async def _reply(self, body: dict) -> dict:
        """The first choice's message of a non-streamed call."""
        try:
            response = await self._post(body)
            return response.json()["choices"][0]["message"] or {}
        except openai.OpenAIError as exc:
            raise _error(exc) from exc
        except (*_HTTP_ERRORS, ValueError, LookupError, TypeError) as exc:
            raise LLMError(f"openai: malformed reply: {type(exc).__name__}", retryable=True) from exc

    async def stream(
        self, messages: list[Message], *, grounding: Grounding | None = None, max_tokens: int | None = None
    ) -> AsyncIterator[str]:
        # The SSE lines are parsed here with json.loads: building the SDK's pydantic chunk objects
        # cost more CPU per token than the rest of the token's path (ADR 0063).
        body = self._body(self._messages(messages, grounding), stream=True, max_completion_tokens=max_tokens)
        try:
            response = await self._post(body, stream=True)
            try:
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if chunk.get("error"):
                        raise LLMError(
                            f"openai: stream error {chunk['error'].get('message', '')[:200]}", retryable=True
                        )
                    choices = chunk.get("choices") or ()
                    content = choices[0].get("delta", {}).get("content") if choices else None
                    if content:
                        yield content
            finally:
                await response.aclose()
        except openai.OpenAIError as exc:
            raise _error(exc) from exc
        except (*_HTTP_ERRORS, json.JSONDecodeError) as exc:
            raise LLMError(f"openai: stream broke: {type(exc).__name__}", retryable=True) from exc

    async def generate(
        self, messages: list[Message], *, grounding: Grounding | None = None, max_tokens: int | None = None
    ) -> str:
        reply = await self._reply(self._body(self._messages(messages, grounding), max_completion_tokens=max_tokens))
        return reply.get("content") or ""

    async def structured(self, messages: list[Message], schema: type[T]) -> T:
        return await self._json_reply(self._messages(messages, None), schema)

    async def _json_reply(self, messages: list[dict], schema: type[T]) -> T:
        """One Chat Completions call with a JSON-schema response format, validated into `schema`."""
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": schema.__name__, "schema": json_schema(schema), "strict": False},
        }
        reply = await self._reply(self._body(messages, response_format=response_format))
        try:
            return schema.model_validate_json(reply.get("content") or "")
        except ValueError as exc:
            raise LLMError(f"openai: reply does not match {schema.__name__}", retryable=True) from exc

    async def classify_image(self, messages: list[Message], image: bytes, mime_type: str, schema: type[T]) -> T:
        # The image travels as a data URI content part of the last user turn (no upload, no URL fetch).
        out: list[dict] = [{"role": m.role, "content": m.content} for m in messages]
        last = max((i for i, m in enumerate(out) if m["role"] == "user"), default=None)
        part = {
            "type": "image_url",
            "image_url": {"url": f"data:{mime_type};base64,{base64.b64encode(image).decode()}"},
        }
        if last is None:
            out.append({"role": "user", "content": [part]})
        else:
            out[last]["content"] = [{"type": "text", "text": out[last]["content"]}, part]
        return await self._json_reply(out, schema)

    async def tool_calls(self, messages: list[Message], tools: list[ToolSpec]) -> list[ToolCall]:
        specs = [
            {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
            for t in tools
        ]
        reply = await self._reply(self._body(self._messages(messages, None), tools=specs, tool_choice="auto"))
        try:
            return [
                ToolCall(c["id"], c["function"]["name"], json.loads(c["function"].get("arguments") or "{}"))
                for c in reply.get("tool_calls") or ()
            ]
        except (json.JSONDecodeError, LookupError, TypeError) as exc:
            raise LLMError("openai: tool arguments are not JSON", retryable=True) from exc
