"""Composition root of the scan service: settings → adapters → pipeline, workers, servicer."""

from __future__ import annotations

from dataclasses import replace
from importlib import resources

import grpc
from pydantic import Field

from eco2.events.v1 import events_pb2
from eco2.scan.v1 import scan_pb2, scan_pb2_grpc
from eco2.services.bus.jobs import JobQueue, ends_stream_on_dead
from eco2.services.bus.producer import EventPublisher
from eco2.services.bus.settings import EventsSettings
from eco2.services.dataplane.migrations import apply_migrations
from eco2.services.dataplane.urls import create_pg_pool, create_redis
from eco2.services.knowledge import kb
from eco2.services.llm import create_llm
from eco2.services.llm.ports import LLM
from eco2.services.llm.registry import provider_of
from eco2.services.runtime.clients import channel
from eco2.services.runtime.dependencies import postgres_check, redis_check
from eco2.services.runtime.identity import JobIdentities
from eco2.services.runtime.settings import Endpoints

from .grpc_clients import GrpcImages, GrpcRewards
from .pipeline import ScanDeps, ScanLimits, ScanPipeline
from .policy import POLICIES
from .postgres import ScanStore
from .service import ScanServicer
from .worker import ScanWorkers

KIND = r"^[a-z][a-z0-9_-]{0,24}$"


class ScanSettings(EventsSettings):
    scan_vision_model: str = Field(
        "",
        description="model that classifies photos: gpt-* (OpenAI), gemini-* (Gemini) or provider/model; empty or offline = none (a scan is classified by the user's hint or answer)",
    )
    openai_api_key: str = Field("", description="OpenAI API key (for gpt-* models)")
    openai_base_url: str = Field("", description="OpenAI-compatible base URL (empty = api.openai.com)")
    gemini_api_key: str = Field("", description="Gemini API key (for gemini-* models)")
    gemini_base_url: str = Field("", description="Gemini API base URL (empty = the public endpoint)")
    scan_vision_timeout_s: float = Field(
        20.0,
        gt=0,
        le=300,
        description="longest vision model call (the vision stage's timeout in the policy table, and the HTTP timeout)",
    )
    scan_min_confidence: float = Field(
        0.6, ge=0, le=1, description="below this vision confidence the answer says it is a guess and no reward is given"
    )
    scan_hint_min_share: float = Field(
        0.7,
        gt=0,
        le=1,
        description="a hint names the item when its best category has at least this share of the retrieval score; else the scan asks",
    )
    scan_max_hint_chars: int = Field(200, ge=1, le=2000, description="longest hint (and text answer) accepted")
    scan_image_max_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1024,
        le=20 * 1024 * 1024,
        description="largest photo a scan takes (SubmitScan refuses larger ones)",
    )
    scan_max_questions: int = Field(
        3, ge=1, le=10, description="answers that name no category before the scan ends unclassified"
    )
    scan_workers: int = Field(
        64, ge=0, le=10_000, description="scans run concurrently by this process (0 = API only, workers elsewhere)"
    )
    scan_claimers: int = Field(2, ge=1, le=64, description="loops claiming scan jobs from the queue")
    scan_claim_block_ms: int = Field(500, ge=1, description="how long one claim waits for a job")
    scan_job_kind: str = Field(
        "scan",
        pattern=KIND,
        description="job queue the API enqueues scans to and the workers claim from; rewards retry on <kind>-reward",
    )
    scan_tokens_per_event: int = Field(
        4,
        ge=1,
        le=64,
        description="answer words per TOKEN event, after a first event with the first word alone (fixed: a re-run emits the same seqs)",
    )
    scan_stream_timeout_s: float = Field(
        300.0, gt=0, description="longest StreamScan stream (a question waits for its answer within it)"
    )
    scan_reward_retry_delay_s: float = Field(
        30.0, ge=0, description="delay between retries of a reward GrantReward could not take"
    )
    scan_reward_max_attempts: int = Field(
        20,
        ge=1,
        le=1000,
        description="GrantReward attempts of a postponed reward before the scan reports it as not given",
    )


def create_vision_llm(s: ScanSettings) -> LLM | None:
    """ECO2_SCAN_VISION_MODEL through the shared LLM adapters; None = no vision (offline)."""
    if not s.scan_vision_model or provider_of(s.scan_vision_model) == "offline":
        return None
    llm = create_llm(
        s.scan_vision_model,
        openai_api_key=s.openai_api_key,
        openai_base_url=s.openai_base_url,
        gemini_api_key=s.gemini_api_key,
        gemini_base_url=s.gemini_base_url,
        timeout_s=s.scan_vision_timeout_s,
    )
    if "vision" not in llm.info.capabilities:
        raise ValueError(f"ECO2_SCAN_VISION_MODEL={s.scan_vision_model!r} has no vision capability (model registry)")
    return llm


def job_queues(redis, s: ScanSettings, *, on_dead=None) -> tuple[JobQueue, JobQueue]:
    """The queue the API enqueues scans to and the workers claim from (ECO2_SCAN_JOB_KIND), and
    the queue of postponed rewards beside it, "<kind>-reward", with its slower retries."""
    queue = JobQueue(redis, s.scan_job_kind, s, on_dead=on_dead)
    rewards = JobQueue(
        redis,
        f"{s.scan_job_kind}-reward",
        s.model_copy(
            update={"jobs_retry_delay_s": s.scan_reward_retry_delay_s, "jobs_max_attempts": s.scan_reward_max_attempts}
        ),
    )
    return queue, rewards


class ScanApp:
    name = "scan"

    def __init__(self, settings: ScanSettings, endpoints: Endpoints | None = None) -> None:
        self.settings = settings
        self.endpoints = endpoints or Endpoints()
        self.pool = self.redis = self.sink = self.workers = self.vision_llm = None
        self.channels: list[grpc.aio.Channel] = []

    def service_names(self) -> list[str]:
        return [scan_pb2.DESCRIPTOR.services_by_name["ScanService"].full_name]

    def dependency_checks(self):
        return {"postgres": postgres_check(self.pool), "redis": redis_check(self.redis)}

    async def migrate(self) -> list[str]:
        """Apply the pending schema migrations; the names of the files applied."""
        return await apply_migrations(self.settings.database_url, "scan", resources.files(__package__) / "migrations")

    def _channel(self, service: str) -> grpc.aio.Channel:
        ch = channel(self.endpoints.address_of(service), default_timeout_s=self.settings.downstream_timeout_s)
        self.channels.append(ch)
        return ch

    async def start(self, server: grpc.aio.Server) -> None:
        s = self.settings
        self.vision_llm = create_vision_llm(s)
        if s.migrate_on_start:
            await self.migrate()
        self.pool = await create_pg_pool(s.database_url, max_size=s.db_pool_max, application_name="eco2-scan")
        self.redis = create_redis(s.redis_url)
        self.sink = EventPublisher(self.redis, s)
        # A scan that runs out of attempts ends its stream with ERROR (a resume job "<job>:input:<n>"
        # streams on its scan's job); the reward queue's jobs come after DONE and end nothing.
        dead = ends_stream_on_dead(
            self.sink,
            job_kind=events_pb2.JOB_KIND_SCAN,
            message="사진을 확인하지 못했어요. 잠시 후 다시 시도해 주세요.",
            stream_of=lambda job: job.job_id.split(":", 1)[0],
        )
        queue, reward_queue = job_queues(self.redis, s, on_dead=dead)
        store = ScanStore(self.pool)
        images = GrpcImages(self._channel("images"))
        policies = {**POLICIES, "vision": replace(POLICIES["vision"], timeout_s=s.scan_vision_timeout_s)}
        limits = ScanLimits(
            s.scan_min_confidence,
            s.scan_hint_min_share,
            s.scan_image_max_bytes,
            s.scan_max_questions,
            s.scan_tokens_per_event,
        )
        deps = ScanDeps(
            kb=kb.load(),
            store=store,
            images=images,
            rewards=GrpcRewards(self._channel("character")),
            vision_llm=self.vision_llm,
            policies=policies,
            limits=limits,
        )
        pipeline = ScanPipeline(deps)
        self.workers = ScanWorkers(
            queue=queue, reward_queue=reward_queue, sink=self.sink, pipeline=pipeline, store=store, settings=s
        )
        self.workers.start()
        servicer = ScanServicer(
            store=store,
            queue=queue,
            sink=self.sink,
            images=images,
            job_identities=JobIdentities(self._channel("auth")),
            events_channel=self._channel("events"),
            settings=s,
            pipeline=pipeline,
        )
        scan_pb2_grpc.add_ScanServiceServicer_to_server(servicer, server)

    async def stop(self) -> None:
        if self.workers is not None:
            await self.workers.stop(self.settings.shutdown_grace_s / 2)
        for ch in self.channels:
            await ch.close()
        if self.vision_llm is not None and hasattr(self.vision_llm, "aclose"):
            await self.vision_llm.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        if self.sink is not None:
            await self.sink.aclose()
        if self.pool is not None:
            await self.pool.close()


def create() -> ScanApp:
    return ScanApp(ScanSettings())
