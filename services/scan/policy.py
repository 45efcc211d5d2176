"""The per-stage policy table of the scan pipeline: timeout, retries and fail mode of each stage.

Fail modes: FALLBACK — the stage's result is replaced by a weaker one and the scan goes on
(vision: the user's hint or a question; rule: no rules), with no reward; FAIL_OPEN — the scan
completes without the stage's result (reward: retried later by its own job); FAIL_CLOSE — the
scan cannot be answered: ERROR. Times follow the seed (002: vision ~4.5 s, up to 10 s).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from prometheus_client import Histogram

log = logging.getLogger("eco2.scan.policy")

STAGE_SECONDS = Histogram(
    "eco2_scan_stage_seconds",
    "Time a scan stage took, its retries included, by outcome (ok or failed)",
    ["stage", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40),
)


class FailMode(StrEnum):
    FALLBACK = "FALLBACK"
    FAIL_OPEN = "FAIL_OPEN"
    FAIL_CLOSE = "FAIL_CLOSE"


@dataclass(frozen=True, slots=True)
class StagePolicy:
    timeout_s: float
    retries: int
    fail_mode: FailMode
    backoff_s: float = 0.2  # before retry n: backoff_s * 2**(n-1)


#: stage → policy. vision's timeout is ECO2_SCAN_VISION_TIMEOUT_S (app.py).
POLICIES: dict[str, StagePolicy] = {
    "vision": StagePolicy(20.0, 1, FailMode.FALLBACK),
    "rule": StagePolicy(1.0, 0, FailMode.FALLBACK),
    "answer": StagePolicy(5.0, 0, FailMode.FAIL_CLOSE),
    "reward": StagePolicy(5.0, 2, FailMode.FAIL_OPEN),
}


class StageFailed(Exception):
    def __init__(self, stage: str, mode: FailMode, cause: str) -> None:
        super().__init__(f"{stage} failed ({mode}): {cause}")
        self.stage, self.mode, self.cause = stage, mode, cause


def _retryable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retryable", True))


async def run_stage(policies: dict[str, StagePolicy], stage: str, body: Callable[[], Awaitable[Any]]) -> Any:
    """`body()` under the stage's timeout, retried (unless the error says it is not retryable);
    StageFailed with the cause ("timeout", or the error) when every attempt failed."""
    policy = policies[stage]
    last: BaseException | None = None
    started = time.monotonic()
    for attempt in range(policy.retries + 1):
        if attempt:
            await asyncio.sleep(policy.backoff_s * 2 ** (attempt - 1))
        try:
            async with asyncio.timeout(policy.timeout_s):
                result = await body()
            STAGE_SECONDS.labels(stage, "ok").observe(time.monotonic() - started)
            return result
        except TimeoutError as exc:
            last = exc
        except Exception as exc:  # a stage's failure is handled by its fail mode
            last = exc
            if not _retryable(exc):
                break
        log.warning(
            "stage attempt failed", extra={"stage": stage, "attempt": attempt + 1, "error": type(last).__name__}
        )
    STAGE_SECONDS.labels(stage, "failed").observe(time.monotonic() - started)
    cause = "timeout" if isinstance(last, TimeoutError) else f"{type(last).__name__}: {last}"
    raise StageFailed(stage, policy.fail_mode, cause) from last
