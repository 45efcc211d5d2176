"""The per-node policy table: timeout, retries, circuit breaker and fail mode of every graph node.

Fail modes: FAIL_OPEN — the node's context is optional, the graph goes on without it;
FALLBACK — required context is missing, the aggregator starts the fallback chain;
FAIL_CLOSE — the job cannot be answered: ERROR. The table starts from the seed's (002).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from langgraph.errors import GraphBubbleUp

log = logging.getLogger("eco2.chat.policy")


class FailMode(StrEnum):
    FAIL_OPEN = "FAIL_OPEN"
    FALLBACK = "FALLBACK"
    FAIL_CLOSE = "FAIL_CLOSE"


@dataclass(frozen=True, slots=True)
class NodePolicy:
    timeout_s: float
    retries: int
    cb_threshold: int  # consecutive failures that open the breaker
    fail_mode: FailMode
    cb_reset_s: float = 30.0  # how long the breaker stays open before a trial call


#: node → policy. Times are the seed's, except waste_rag (in-process n-gram search: 1 s is generous).
POLICIES: dict[str, NodePolicy] = {
    "intent": NodePolicy(10.0, 1, 5, FailMode.FAIL_CLOSE),
    "vision": NodePolicy(15.0, 1, 5, FailMode.FAIL_OPEN),
    "waste_rag": NodePolicy(1.0, 1, 5, FailMode.FALLBACK),
    "character": NodePolicy(3.0, 1, 3, FailMode.FAIL_OPEN),
    "location": NodePolicy(3.0, 2, 5, FailMode.FALLBACK),
    "collection_point": NodePolicy(10.0, 2, 5, FailMode.FALLBACK),
    "bulk_waste": NodePolicy(10.0, 2, 5, FailMode.FALLBACK),
    "recyclable_price": NodePolicy(10.0, 2, 5, FailMode.FALLBACK),
    "weather": NodePolicy(5.0, 1, 3, FailMode.FAIL_OPEN),
    "web_search": NodePolicy(10.0, 2, 5, FailMode.FALLBACK),
    "image_generation": NodePolicy(30.0, 1, 3, FailMode.FAIL_OPEN),
    "general": NodePolicy(30.0, 2, 3, FailMode.FAIL_CLOSE),
    "router": NodePolicy(1.0, 0, 5, FailMode.FAIL_CLOSE),
    "aggregator": NodePolicy(30.0, 0, 5, FailMode.FAIL_CLOSE),
    "answer": NodePolicy(60.0, 2, 3, FailMode.FAIL_CLOSE),
    "evaluate": NodePolicy(10.0, 1, 3, FailMode.FAIL_OPEN),
    "summarize": NodePolicy(10.0, 1, 3, FailMode.FAIL_OPEN),
}


class NodeFailed(Exception):
    def __init__(self, node: str, mode: FailMode, cause: str) -> None:
        super().__init__(f"{node} failed ({mode}): {cause}")
        self.node, self.mode, self.cause = node, mode, cause


class CircuitOpen(Exception):
    pass


class CircuitBreaker:
    def __init__(self, threshold: int, reset_s: float) -> None:
        self.threshold, self.reset_s = threshold, reset_s
        self.failures = 0
        self.opened_at: float | None = None

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if time.monotonic() - self.opened_at >= self.reset_s else "open"

    def before(self) -> None:
        if self.state == "open":
            raise CircuitOpen()

    def success(self) -> None:
        self.failures, self.opened_at = 0, None

    def failure(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold or self.state == "half_open":
            self.opened_at = time.monotonic()


def _retryable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retryable", True))


class PolicyRunner:
    """Runs node bodies under their policy; one breaker per node per process."""

    def __init__(self, policies: dict[str, NodePolicy] | None = None, *, backoff_s: float = 0.05) -> None:
        self.policies = dict(policies or POLICIES)
        self.backoff_s = backoff_s
        self.breakers = {name: CircuitBreaker(p.cb_threshold, p.cb_reset_s) for name, p in self.policies.items()}

    async def run(self, node: str, body: Callable[[], Awaitable[Any]], *, timeout_s: float | None = None) -> Any:
        policy = self.policies[node]
        breaker = self.breakers[node]
        try:
            breaker.before()
        except CircuitOpen:
            raise NodeFailed(node, policy.fail_mode, "circuit open") from None
        last: BaseException | None = None
        for attempt in range(policy.retries + 1):
            try:
                async with asyncio.timeout(timeout_s or policy.timeout_s):
                    result = await body()
                breaker.success()
                return result
            except GraphBubbleUp:
                raise  # interrupt(): not a failure
            except TimeoutError as exc:
                last = exc
            except Exception as exc:  # noqa: BLE001 — a node's failure is handled by its fail mode
                last = exc
                if not _retryable(exc):
                    break
            log.warning(
                "node attempt failed", extra={"node": node, "attempt": attempt + 1, "error": type(last).__name__}
            )
            if attempt < policy.retries:
                await asyncio.sleep(self.backoff_s * (2**attempt))
        breaker.failure()
        cause = "timeout" if isinstance(last, TimeoutError) else f"{type(last).__name__}: {last}"
        raise NodeFailed(node, policy.fail_mode, cause) from last
