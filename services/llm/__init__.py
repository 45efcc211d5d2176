"""The one LLM port, its adapters (OpenAI, Gemini, offline) and the model registry, shared by the
services that use models (chat, scan); `create_llm` picks the adapter from a model name."""

from __future__ import annotations

from collections.abc import Callable

from .ports import LLM, Grounding
from .registry import info, provider_of


def create_llm(
    model: str,
    *,
    openai_api_key: str = "",
    openai_base_url: str = "",
    gemini_api_key: str = "",
    gemini_base_url: str = "",
    timeout_s: float = 60.0,
    compose: Callable[[Grounding], str] | None = None,
    offline_token_delay_s: float = 0.0,
) -> LLM:
    """`compose` is the offline provider's voice: the service's composer of a grounded answer."""
    provider = provider_of(model)
    meta = info(model)
    if provider == "offline":
        from .offline import OfflineLLM

        if compose is None:
            raise ValueError("the offline provider answers with the service's composer: pass compose=")
        return OfflineLLM(compose, offline_token_delay_s)
    if provider == "openai":
        from .openai_adapter import OpenAILLM

        if not openai_api_key:
            raise ValueError(f"model {model!r} needs ECO2_OPENAI_API_KEY")
        return OpenAILLM(meta, api_key=openai_api_key, base_url=openai_base_url or None, timeout_s=timeout_s)
    if provider == "google":
        from .gemini_adapter import GeminiLLM

        if not gemini_api_key:
            raise ValueError(f"model {model!r} needs ECO2_GEMINI_API_KEY")
        return GeminiLLM(meta, api_key=gemini_api_key, base_url=gemini_base_url or None, timeout_s=timeout_s)
    raise ValueError(f"unknown provider {provider!r} for model {model!r}")
