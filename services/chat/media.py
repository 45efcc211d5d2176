"""Photos in, pictures out: the bodies of the graph's `vision` and `image_generation` nodes.

vision: ScanService classifies the attached photo (its vision stage, ClassifyPhoto: the photo read
through ImageService as the asking user, a vision model's structured output over the project's
taxonomy: item, disposal category, confidence, situation tags), and the result becomes the waste
branch's retrieval query; a low confidence makes the answer ask the user to confirm.
image_generation: an image model draws the request, the bytes are stored through ImageService
(owner = the asking user, channel GENERATED) and the key is the result. See docs/services/chat.md
and ADR 0064.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eco2.events.v1 import events_pb2
from eco2.services.llm.prompt import neutralise
from eco2.services.llm.vision import UNKNOWN
from eco2.services.runtime.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted

from . import intents as I
from .ports import VisionFailed

STARTED, RESULT = events_pb2.TOOL_PHASE_STARTED, events_pb2.TOOL_PHASE_RESULT


@dataclass(frozen=True, slots=True)
class MediaLimits:
    vision_min_confidence: float = 0.6
    image_size: str = "1024x1024"
    image_prompt_max_chars: int = 800
    image_max_bytes: int = 10 * 1024 * 1024


class MediaError(Exception):
    """An image that cannot be used (too large, gone): not retried, the node's fail mode applies."""

    retryable = False


# ---------------------------------------------------------------- vision


async def classify_photo(state: dict, deps: Any, emitter: Any) -> dict:
    """Ask ScanService what the attached photo shows, and aim the waste branch at the result."""
    key, limits = state["image_key"], deps.media
    await emitter.tool("vision", "scan.classify_photo", "vision-classify", STARTED, message=key)
    try:
        found = await deps.photos.classify(key, state["message"])
    except (
        NotFound,
        PermissionDenied,
        ResourceExhausted,
        VisionFailed,
    ) as exc:  # gone, not theirs, too large, or already retried
        raise MediaError(str(exc)) from exc
    if found is None:  # ScanService has no vision model: say so, never guess (answer.py)
        await emitter.tool("vision", "scan.classify_photo", "vision-classify", RESULT, message="no vision model")
        return {"contexts": {"vision_context": {"configured": False}}}
    rule = next((r for r in deps.kb.rules if r.file == found["rule_file"]), None)
    category = rule.key if rule else UNKNOWN
    confidence = found["confidence"]
    unsure = confidence < limits.vision_min_confidence
    await emitter.tool(
        "vision",
        "scan.classify_photo",
        "vision-classify",
        RESULT,
        message=f"{found['item']} / {category} ({confidence:.2f})",
    )
    ctx = {
        "configured": True,
        "model": found["model"],
        "item": found["item"],
        "category": category,
        "category_name": rule.name if rule else "",
        "confidence": confidence,
        "situation_tags": list(found["situation_tags"]),
        "unsure": unsure,
    }
    if unsure:
        ctx["note"] = "사진 판별이 확실하지 않음: 답변 첫머리에서 추정한 물건이 맞는지 사용자에게 확인을 요청할 것"
    # The photo drives retrieval: the category's name and the item lead the waste branch's query,
    # the user's words follow (they may name a detail, "뚜껑은?").
    query = " ".join(x for x in (rule.name if rule else "", found["item"], state["message"]) if x)
    intents = list(state.get("intents") or [])
    if I.WASTE not in intents:
        intents = [I.WASTE, *(i for i in intents if i != I.GENERAL)]
    return {
        "contexts": {"vision_context": ctx},
        "intents": intents,
        "queries": {**(state.get("queries") or {}), I.WASTE: query},
    }


# ---------------------------------------------------------------- image generation


IMAGE_FRAME = "분리배출·재활용 도우미 '이코'의 밝고 친근한 일러스트. 글자는 넣지 않음. 그림 설명: "


def image_prompt(text: str, max_chars: int) -> str:
    """The user's words, fenced into a picture description, cut at the limit."""
    return IMAGE_FRAME + " ".join(neutralise(text).split())[:max_chars]


async def generate_and_store(request: str, deps: Any, emitter: Any, made: dict) -> dict:
    """Draw what `request` asks for, then store it through ImageService as the asking user. `made`
    keeps the bytes across the policy's retries: an upload retried after a failure sends the same
    bytes, so the same key."""
    limits = deps.media
    if "image" not in made:
        prompt = image_prompt(request, limits.image_prompt_max_chars)
        await emitter.tool(
            "image_generation",
            "image.generate",
            "image-generate",
            STARTED,
            message=f"{deps.image_model.name}, {limits.image_size}",
        )
        image = await deps.image_model.generate(prompt, size=limits.image_size)
        if len(image.data) > limits.image_max_bytes:
            raise MediaError(
                f"the generated image has {len(image.data)} bytes, over ECO2_CHAT_IMAGE_MAX_BYTES={limits.image_max_bytes}"
            )
        made["image"] = image
        await emitter.tool(
            "image_generation",
            "image.generate",
            "image-generate",
            RESULT,
            message=f"{image.content_type}, {len(image.data)} bytes",
        )
    image = made["image"]
    await emitter.tool("image_generation", "images.upload", "image-upload", STARTED)
    ext = image.content_type.split("/", 1)[1].replace("jpeg", "jpg")
    try:
        key = await deps.images.store(image.data, image.content_type, filename=f"eco2-generated.{ext}")
    except InvalidArgument as exc:  # ImageService refused the bytes: the same bytes would be refused again
        raise MediaError(str(exc)) from exc
    await emitter.tool("image_generation", "images.upload", "image-upload", RESULT, message=key)
    return {
        "contexts": {
            "image_generation_context": {
                "configured": True,
                "image_key": key,
                "content_type": image.content_type,
                "size_bytes": len(image.data),
                "model": deps.image_model.name,
            }
        }
    }
