"""What the graph's nodes run with: the process's dependencies (`ChatDeps`, built once by app.py)
and one job's run of the graph (`JobContext`, the LangGraph runtime context)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from langgraph.runtime import Runtime

from eco2.services.knowledge.kb import KnowledgeBase
from eco2.services.llm.images import ImageModel
from eco2.services.llm.ports import LLM

from .emitter import Emitter
from .media import MediaLimits
from .policy import PolicyRunner
from .ports import BulkWasteFees, Characters, Images, Photos, Places, Weather, WebSearch


@dataclass
class ChatDeps:
    kb: KnowledgeBase
    llm: LLM
    policy: PolicyRunner
    places: Places | None = None
    characters: Characters | None = None
    weather: Weather | None = None
    web_search: WebSearch | None = None
    search_radius_m: int = 3000
    places_limit: int = 5
    summary_threshold_tokens: int = 0  # 0 = the model's threshold
    keep_recent_messages: int = 6
    summary_max_chars: int = 4000
    answer_max_tokens: int = 1024
    bulk_waste: BulkWasteFees | None = None  # None: fee lookup not configured (ECO2_BULK_WASTE_API_KEY)
    bulk_waste_tool_iterations: int = 5
    intent_mode: str = "auto"  # rules | model | auto (model when a remote model is configured)
    intent_timeout_s: float = 5.0
    images: Images | None = None  # ImageService: generated pictures to store
    photos: Photos | None = None  # ScanService: what a photo shows
    image_model: ImageModel | None = None  # None: image generation not configured
    media: MediaLimits = field(default_factory=MediaLimits)


@dataclass
class JobContext:
    deps: ChatDeps
    emitter: Emitter
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


def job(runtime: Runtime[JobContext]) -> JobContext:
    return runtime.context
