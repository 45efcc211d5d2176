"""The dependencies a service cannot serve without, checked while it runs; health follows them.

An app lists them in `dependency_checks()` (see server.ServiceApp): a name and a coroutine
function that returns when the dependency answers and raises (or hangs) while it does not:

    def dependency_checks(self):
        return {"postgres": postgres_check(self.pool), "redis": redis_check(self.redis)}

The runtime runs a `DependencyWatcher` over them every ECO2_HEALTH_CHECK_INTERVAL_S: every
service of the process is NOT_SERVING while one check fails (a load balancer, kubelet or
`eco2 up` then sends no new calls to it) and SERVING again once all pass.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

log = logging.getLogger("eco2.dependencies")

Check = Callable[[], Awaitable[object]]


def postgres_check(pool) -> Check:
    """SELECT 1 on a connection of an asyncpg pool (a new one when the pooled ones are dead)."""

    async def check() -> None:
        await pool.fetchval("SELECT 1")

    return check


def redis_check(redis) -> Check:
    """PING on a redis.asyncio client."""

    async def check() -> None:
        await redis.ping()

    return check


class DependencyWatcher:
    """Runs the checks every `interval_s` (each bounded by `timeout_s`) and calls
    `on_change(down)` with the names of the failing dependencies whenever that set changes."""

    def __init__(
        self,
        checks: Mapping[str, Check],
        on_change: Callable[[frozenset[str]], Awaitable[None]],
        *,
        interval_s: float,
        timeout_s: float,
    ) -> None:
        self.checks = dict(checks)
        self.on_change = on_change
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.down: frozenset[str] = frozenset()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self.checks:
            self._task = asyncio.create_task(self._run(), name="eco2-dependency-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def check_once(self) -> frozenset[str]:
        """The names of the dependencies that fail their check now."""
        results = await asyncio.gather(*(self._passes(name, check) for name, check in self.checks.items()))
        return frozenset(name for name, ok in zip(self.checks, results) if not ok)

    async def _passes(self, name: str, check: Check) -> bool:
        try:
            async with asyncio.timeout(self.timeout_s):
                await check()
            return True
        except Exception as exc:  # noqa: BLE001 — any failure of the check means "down"
            if name not in self.down:
                log.warning("dependency down", extra={"dependency": name, "error": repr(exc)[:300]})
            return False

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            down = await self.check_once()
            if down != self.down:
                for name in self.down - down:
                    log.warning("dependency back", extra={"dependency": name})
                self.down = down
                await self.on_change(down)
