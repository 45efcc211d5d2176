"""Settings of the event bus (producer library, router, EventService, job queue).

Every process that publishes, routes or serves events must agree on `events_shards`.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from eco2.services.runtime.settings import RuntimeSettings


class EventsRole(StrEnum):
    ALL = "all"
    ROUTER = "router"
    SERVICE = "service"


class EventsSettings(RuntimeSettings):
    events_shards: int = Field(4, ge=1, le=1024, description="shard streams events:{0..N-1}; the same in every process")
    events_role: EventsRole = Field(EventsRole.ALL, description="what `eco2 serve events` runs: all, router or service")
    events_max_event_bytes: int = Field(
        1024 * 1024, ge=256, description="largest serialized Event a producer may publish"
    )
    events_replay_maxlen: int = Field(
        10_000, ge=10, description="events kept per job in its replay stream (older ones are trimmed)"
    )
    events_replay_ttl_s: int = Field(
        86_400,
        ge=1,
        description="seconds a job's replay stream and state live at least after its last event (at most 1/16 longer)",
    )
    events_shard_maxlen: int = Field(
        1_000_000,
        ge=1000,
        description="approximate cap of each shard stream (entries not yet routed beyond it are lost to live delivery)",
    )
    events_router_batch: int = Field(512, ge=1, le=10_000, description="entries the router reads per XREADGROUP")
    events_router_block_ms: int = Field(1000, ge=1, description="how long one XREADGROUP waits for new entries")
    events_router_linger_ms: float = Field(
        0.0,
        ge=0,
        le=100,
        description="after a read that was not full, wait this long before the next one so a steady flow is routed in batches (adds up to this much latency)",
    )
    events_reclaim_idle_ms: int = Field(
        30_000, ge=1, description="a routed-but-unacked entry idle this long is taken over by another router"
    )
    events_reclaim_interval_s: float = Field(
        5.0, gt=0, description="how often the router runs XAUTOCLAIM and refreshes its lag/pending metrics"
    )
    events_subscriber_buffer: int = Field(
        256, ge=1, description="live events buffered per subscriber; on overflow it catches up from the replay stream"
    )
    events_replay_batch: int = Field(500, ge=1, le=10_000, description="events read per replay XRANGE")
    events_batch_max_events: int = Field(
        500, ge=1, le=100_000, description="most events in one SubscribeBatches message (a request may ask for fewer)"
    )
    events_batch_max_bytes: int = Field(
        256 * 1024,
        ge=1024,
        le=4_000_000,
        description="most bytes of events in one SubscribeBatches message (a larger single event is sent alone; gRPC clients accept 4 MiB by default)",
    )
    events_unknown_job_grace_s: float = Field(
        10.0, ge=0, description="Subscribe waits this long for an unknown job's first event before NOT_FOUND"
    )
    events_redis_pool: int = Field(
        4, ge=1, description="command connections to Redis per process (Pub/Sub adds one per shard)"
    )
    events_max_subscribers: int = Field(
        50_000, ge=1, description="concurrent Subscribe streams per process (RESOURCE_EXHAUSTED beyond)"
    )
    events_redis_retry_s: float = Field(
        1.0, gt=0, description="retry hint and reconnect back-off when Redis is unreachable"
    )
    events_queue_sample_s: float = Field(
        5.0,
        ge=0,
        description="how often the router samples the job queues' depth, ages and dead letters (the eco2_jobs_* gauges; 0 = never)",
    )
    jobs_visibility_timeout_s: float = Field(
        60.0, gt=0, description="a claimed job not acked within this is re-claimed by another worker"
    )
    jobs_max_attempts: int = Field(
        3, ge=1, description="attempts before a job goes to its dead-letter stream jobs:{kind}:dead"
    )
    jobs_retry_delay_s: float = Field(1.0, ge=0, description="delay before a failed job may be claimed again")
    jobs_retry_backoff: float = Field(
        2.0, ge=1, description="each further failure of a job multiplies its retry delay by this"
    )
    jobs_retry_max_delay_s: float = Field(
        30.0, ge=0, description="longest retry delay (a failed job is never held past the visibility timeout)"
    )
    jobs_retry_jitter: float = Field(
        0.2,
        ge=0,
        le=1,
        description="a retry delay is lengthened by up to this fraction at random, so the jobs an outage failed do not all return at once",
    )
    jobs_dedupe_ttl_s: int = Field(
        86_400, ge=1, description="how long an enqueued job id is remembered (enqueue is idempotent within it)"
    )
    jobs_dead_maxlen: int = Field(100_000, ge=100, description="approximate cap of each dead-letter stream")
