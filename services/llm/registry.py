"""Model registry: context windows, capabilities and the provider of each model name."""

from __future__ import annotations

from .ports import ModelInfo

_ALL = frozenset({"stream", "tools", "structured", "vision"})

MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo("offline", "offline", 8_000, 2_000, 3_000, frozenset({"stream"})),
        # Thresholds follow the seed's table: trigger = window - max output, summary ≈ 15 %.
        ModelInfo("gpt-5.2", "openai", 400_000, 128_000, 272_000, _ALL),
        ModelInfo("gpt-5-mini", "openai", 400_000, 128_000, 272_000, _ALL),
        ModelInfo("gpt-4.1-mini", "openai", 1_047_576, 32_768, 1_000_000, _ALL),
        ModelInfo("gemini-3-flash-preview", "google", 1_000_000, 64_000, 936_000, _ALL),
        ModelInfo("gemini-2.5-flash", "google", 1_048_576, 65_536, 983_040, _ALL),
        ModelInfo("gemini-3-pro-image", "google", 65_536, 32_768, 32_768, frozenset({"image_generation"})),
    )
}

_PREFIXES = (
    ("gpt-", "openai"),
    ("o1", "openai"),
    ("o3", "openai"),
    ("o4", "openai"),
    ("gemini-", "google"),
    ("offline", "offline"),
)


def provider_of(model: str) -> str:
    """ "openai/gpt-5.2" or "gpt-5.2" → openai; "gemini-*" → google; "offline" → offline."""
    if "/" in model:
        head = model.split("/", 1)[0]
        return {"openai": "openai", "google": "google", "gemini": "google", "offline": "offline"}.get(head, head)
    for prefix, provider in _PREFIXES:
        if model.startswith(prefix):
            return provider
    raise ValueError(f"cannot tell the provider of model {model!r}: use a provider/model name")


def info(model: str) -> ModelInfo:
    name = model.split("/", 1)[1] if "/" in model else model
    known = MODELS.get(name)
    if known is not None:
        return known
    # An unknown model of a known provider: conservative defaults.
    return ModelInfo(name, provider_of(model), 128_000, 16_000, 96_000, _ALL)
