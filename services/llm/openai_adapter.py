"""OpenAI adapter (Chat Completions through the official `openai` SDK)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import httpx
import openai

try:  # openai 3.x sends through httpx2; a stream that breaks mid-way raises its errors
    import httpx2

    _HTTP_ERRORS: tuple = (httpx.HTTPError, httpx2.HTTPError)
except ImportError:  # pragma: no cover
    _HTTP_ERRORS = (httpx.HTTPError,)

from .ports import Grounding, LLMError, Message, ModelInfo, T, ToolCall, ToolSpec
from .prompt import json_schema, render


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

    async def stream(
        self, messages: list[Message], *, grounding: Grounding | None = None, max_tokens: int | None = None
    ) -> AsyncIterator[str]:
        # The SDK does the request (auth, headers, status → typed errors); the SSE lines are parsed
        # here with json.loads: building the SDK's pydantic chunk objects cost more CPU per token
        # than the rest of the token's path (bench/chat.py, ADR 0063).
        try:
            async with self.client.chat.completions.with_streaming_response.create(
                model=self.info.name,
                messages=self._messages(messages, grounding),
                stream=True,
                max_completion_tokens=max_tokens,
            ) as response:
                async for line in response.iter_lines():
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
        except openai.OpenAIError as exc:
            raise _error(exc) from exc
        except (*_HTTP_ERRORS, json.JSONDecodeError) as exc:
            raise LLMError(f"openai: stream broke: {type(exc).__name__}", retryable=True) from exc

    async def generate(
        self, messages: list[Message], *, grounding: Grounding | None = None, max_tokens: int | None = None
    ) -> str:
        try:
            reply = await self.client.chat.completions.create(
                model=self.info.name, messages=self._messages(messages, grounding), max_completion_tokens=max_tokens
            )
        except openai.OpenAIError as exc:
            raise _error(exc) from exc
        return reply.choices[0].message.content or ""

    async def structured(self, messages: list[Message], schema: type[T]) -> T:
        return await self._json_reply(self._messages(messages, None), schema)

    async def _json_reply(self, messages: list[dict], schema: type[T]) -> T:
        """One Chat Completions call with a JSON-schema response format, validated into `schema`."""
        try:
            reply = await self.client.chat.completions.create(
                model=self.info.name,
                messages=messages,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": schema.__name__, "schema": json_schema(schema), "strict": False},
                },
            )
        except openai.OpenAIError as exc:
            raise _error(exc) from exc
        try:
            return schema.model_validate_json(reply.choices[0].message.content or "")
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
        try:
            reply = await self.client.chat.completions.create(
                model=self.info.name,
                messages=self._messages(messages, None),
                tools=[
                    {
                        "type": "function",
                        "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                    }
                    for t in tools
                ],
                tool_choice="auto",
            )
        except openai.OpenAIError as exc:
            raise _error(exc) from exc
        calls = reply.choices[0].message.tool_calls or []
        try:
            return [ToolCall(c.id, c.function.name, json.loads(c.function.arguments or "{}")) for c in calls]
        except json.JSONDecodeError as exc:
            raise LLMError("openai: tool arguments are not JSON", retryable=True) from exc
