"""The offline provider: no network; the answer is what the service's composer makes of the
grounding (chat's: services/chat/answer.py), streamed in word-sized pieces."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable

from .ports import Grounding, LLMError, Message, ModelInfo, T, ToolCall, ToolSpec
from .registry import MODELS

_PIECE = re.compile(r"\S+\s*|\s+")


def pieces(text: str) -> list[str]:
    """Word-sized tokens that concatenate back to `text` exactly."""
    return _PIECE.findall(text)


class OfflineLLM:
    info: ModelInfo = MODELS["offline"]

    def __init__(self, compose: Callable[[Grounding], str], token_delay_s: float = 0.0) -> None:
        self.compose = compose
        self.token_delay_s = token_delay_s

    async def stream(
        self, messages: list[Message], *, grounding: Grounding | None = None, max_tokens: int | None = None
    ) -> AsyncIterator[str]:
        text = (
            self.compose(grounding)
            if grounding is not None
            else "질문을 이해하지 못했어요. 버리려는 물건을 알려주시겠어요?"
        )
        for piece in pieces(text):
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            yield piece

    async def generate(
        self, messages: list[Message], *, grounding: Grounding | None = None, max_tokens: int | None = None
    ) -> str:
        return "".join([p async for p in self.stream(messages, grounding=grounding)])

    async def structured(self, messages: list[Message], schema: type[T]) -> T:
        raise LLMError("the offline provider has no structured output", retryable=False)

    async def tool_calls(self, messages: list[Message], tools: list[ToolSpec]) -> list[ToolCall]:
        raise LLMError("the offline provider does not call tools", retryable=False)

    async def classify_image(self, messages: list[Message], image: bytes, mime_type: str, schema: type[T]) -> T:
        raise LLMError("the offline provider has no vision: configure a vision model", retryable=False)
