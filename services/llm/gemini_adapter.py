"""Gemini adapter (the official `google-genai` SDK)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from google import genai
from google.genai import errors, types

from .ports import Grounding, LLMError, Message, ModelInfo, T, ToolCall, ToolSpec
from .prompt import json_schema, render


def _error(exc: Exception) -> LLMError:
    if isinstance(exc, errors.APIError):
        code = int(exc.code or 0)
        return LLMError(f"gemini: HTTP {code}", retryable=code in (408, 429) or code >= 500, status=code)
    return LLMError(f"gemini: {type(exc).__name__}", retryable=True)


def _json_or_text(content: str):
    try:
        return json.loads(content)
    except ValueError:
        return content


class GeminiLLM:
    def __init__(self, info: ModelInfo, *, api_key: str, base_url: str | None = None, timeout_s: float = 60.0) -> None:
        self.info = info
        options = types.HttpOptions(
            base_url=base_url or None, timeout=int(timeout_s * 1000), retry_options=types.HttpRetryOptions(attempts=1)
        )
        self.client = genai.Client(api_key=api_key, http_options=options)

    @staticmethod
    def _contents(messages: list[Message], grounding: Grounding | None) -> tuple[str | None, list[types.Content]]:
        rendered = render(messages, grounding)
        system = "\n\n".join(m.content for m in rendered if m.role == "system") or None
        contents: list[types.Content] = []
        for m in rendered:
            if m.role == "system":
                continue
            if m.tool_calls:  # Gemini's own tool turns: functionCall parts from the model, functionResponse parts back
                contents.append(
                    types.Content(
                        role="model",
                        parts=[
                            types.Part(function_call=types.FunctionCall(id=c.id, name=c.name, args=c.arguments))
                            for c in m.tool_calls
                        ],
                    )
                )
            elif m.role == "tool":
                part = types.Part(
                    function_response=types.FunctionResponse(
                        id=m.tool_call_id, name=m.name, response={"result": _json_or_text(m.content)}
                    )
                )
                if (
                    contents
                    and contents[-1].role == "user"
                    and contents[-1].parts
                    and contents[-1].parts[0].function_response
                ):
                    contents[-1].parts.append(part)  # the results of one round go back in one turn
                else:
                    contents.append(types.Content(role="user", parts=[part]))
            else:
                contents.append(
                    types.Content(role="model" if m.role == "assistant" else "user", parts=[types.Part(text=m.content)])
                )
        return system, contents

    async def stream(
        self, messages: list[Message], *, grounding: Grounding | None = None, max_tokens: int | None = None
    ) -> AsyncIterator[str]:
        system, contents = self._contents(messages, grounding)
        config = types.GenerateContentConfig(system_instruction=system, max_output_tokens=max_tokens)
        try:
            async for chunk in await self.client.aio.models.generate_content_stream(
                model=self.info.name, contents=contents, config=config
            ):
                if chunk.text:
                    yield chunk.text
        except (errors.APIError, OSError) as exc:
            raise _error(exc) from exc

    async def generate(
        self, messages: list[Message], *, grounding: Grounding | None = None, max_tokens: int | None = None
    ) -> str:
        system, contents = self._contents(messages, grounding)
        try:
            reply = await self.client.aio.models.generate_content(
                model=self.info.name,
                contents=contents,
                config=types.GenerateContentConfig(system_instruction=system, max_output_tokens=max_tokens),
            )
        except (errors.APIError, OSError) as exc:
            raise _error(exc) from exc
        return reply.text or ""

    async def structured(self, messages: list[Message], schema: type[T]) -> T:
        system, contents = self._contents(messages, None)
        return await self._json_reply(system, contents, schema)

    async def _json_reply(self, system: str | None, contents: list[types.Content], schema: type[T]) -> T:
        """One generate_content call with a JSON response schema, validated into `schema`."""
        config = types.GenerateContentConfig(
            system_instruction=system, response_mime_type="application/json", response_json_schema=json_schema(schema)
        )
        try:
            reply = await self.client.aio.models.generate_content(
                model=self.info.name, contents=contents, config=config
            )
        except (errors.APIError, OSError) as exc:
            raise _error(exc) from exc
        try:
            return schema.model_validate_json(reply.text or "")
        except ValueError as exc:
            raise LLMError(f"gemini: reply does not match {schema.__name__}", retryable=True) from exc

    async def classify_image(self, messages: list[Message], image: bytes, mime_type: str, schema: type[T]) -> T:
        # The image travels inline (an inline_data part of the last user turn), the schema as response_json_schema.
        system = "\n\n".join(m.content for m in messages if m.role == "system") or None
        contents = [
            types.Content(role="model" if m.role == "assistant" else "user", parts=[types.Part(text=m.content)])
            for m in messages
            if m.role != "system"
        ]
        if not contents or contents[-1].role != "user":
            contents.append(types.Content(role="user", parts=[]))
        contents[-1].parts.append(types.Part(inline_data=types.Blob(data=image, mime_type=mime_type)))
        return await self._json_reply(system, contents, schema)

    async def tool_calls(self, messages: list[Message], tools: list[ToolSpec]) -> list[ToolCall]:
        system, contents = self._contents(messages, None)
        declarations = [
            types.FunctionDeclaration(name=t.name, description=t.description, parameters_json_schema=t.parameters)
            for t in tools
        ]
        config = types.GenerateContentConfig(
            system_instruction=system,
            tools=[types.Tool(function_declarations=declarations)],
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )
        try:
            reply = await self.client.aio.models.generate_content(
                model=self.info.name, contents=contents, config=config
            )
        except (errors.APIError, OSError) as exc:
            raise _error(exc) from exc
        return [
            ToolCall(c.id or f"call-{i}", c.name or "", dict(c.args or {}))
            for i, c in enumerate(reply.function_calls or [])
        ]
