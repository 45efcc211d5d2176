"""The one LLM port every provider adapter satisfies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

T = TypeVar("T", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Message:
    role: str  # "system" | "user" | "assistant" | "tool"
    content: str
    tool_calls: tuple[
        ToolCall, ...
    ] = ()  # an assistant turn that called tools (each adapter sends its provider's native form)
    tool_call_id: str = ""  # a "tool" turn: the result (content, JSON) of this call
    name: str = ""  # a "tool" turn: the tool's name (Gemini's functionResponse needs it)


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(slots=True)
class Grounding:
    """What the answer may use: the offline provider composes from it, remote models get it rendered in the prompt."""

    question: str
    intents: list[str]
    contexts: dict[str, Any] = field(default_factory=dict)
    history: list[Message] = field(default_factory=list)
    summary: str = ""
    unsure: bool = False
    clarify: bool = False


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    provider: str  # "offline" | "openai" | "google"
    context_window: int
    max_output: int
    summary_threshold: int  # history tokens that trigger summarisation
    capabilities: frozenset[str] = frozenset()  # "stream", "tools", "structured", "vision", "image_generation"


class LLMError(Exception):
    """A model call failed. `retryable` for 429/5xx/timeouts."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class LLM(Protocol):
    info: ModelInfo

    def stream(
        self, messages: list[Message], *, grounding: Grounding | None = None, max_tokens: int | None = None
    ) -> AsyncIterator[str]:
        """The answer, piece by piece."""
        ...

    async def generate(
        self, messages: list[Message], *, grounding: Grounding | None = None, max_tokens: int | None = None
    ) -> str: ...

    async def structured(self, messages: list[Message], schema: type[T]) -> T:
        """A reply parsed into `schema` (JSON schema output)."""
        ...

    async def tool_calls(self, messages: list[Message], tools: list[ToolSpec]) -> list[ToolCall]:
        """The tool calls the model asks for (empty when it answers directly)."""
        ...

    async def classify_image(self, messages: list[Message], image: bytes, mime_type: str, schema: type[T]) -> T:
        """Structured output about an image: `messages` as given (system turns are ours, user text
        already fenced), the image attached to the last user turn. Needs the "vision" capability."""
        ...
