"""Scan workers: claim scan jobs (JobQueue "scan"), run the pipeline as the scan's user, and retry
postponed rewards (their own queue, "scan-reward", with slower retries).

A scan job's payload: {"scan_id", "identity"} — the identity is the job wristband auth issued
for the scan (docs/identity.md), so ImageService and CharacterService see the scan's user however
late the job runs. A job re-claimed after a worker died re-runs the scan: what its stages stored
is reused and its events are re-emitted with the same seqs (pipeline.py), so nothing is granted
or shown twice. A continuation after ProvideScanInput is the same: a new job that re-runs the
scan, which now finds the answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket

from prometheus_client import Counter

from eco2.events.v1 import events_pb2
from eco2.services.bus.jobs import Job, JobQueue
from eco2.services.runtime.context import act_as

from .emitter import Emitter
from .pipeline import REWARD_PENDING, ScanPipeline
from .postgres import FAILED, ScanStore

log = logging.getLogger("eco2.scan.worker")
RUNS = Counter("eco2_scan_runs_total", "Scan job runs by how they ended", ["outcome"])

REWARD_FAILED = "보상 서비스에 연결하지 못해 이번 스캔의 보상은 지급되지 않았어요."


def reward_job(job_id: str, scan_id: str, identity: str) -> tuple[str, bytes]:
    return f"{job_id}:reward", json.dumps({"scan_id": scan_id, "identity": identity}).encode()


class ScanWorkers:
    def __init__(
        self, *, queue: JobQueue, reward_queue: JobQueue, sink, pipeline: ScanPipeline, store: ScanStore, settings
    ) -> None:
        self.queue, self.reward_queue, self.sink, self.pipeline, self.store, self.settings = (
            queue,
            reward_queue,
            sink,
            pipeline,
            store,
            settings,
        )
        self._slots = asyncio.Semaphore(max(1, settings.scan_workers))
        self._tasks: set[asyncio.Task] = set()
        self._loops: list[asyncio.Task] = []
        self._stopping = asyncio.Event()
        self.consumer = f"scan-{socket.gethostname()}-{os.getpid()}"

    def start(self) -> None:
        if self.settings.scan_workers == 0:
            return
        self._loops = [
            asyncio.create_task(self._claim_loop(self.queue, self.handle, i), name=f"scan-claim-{i}")
            for i in range(self.settings.scan_claimers)
        ]
        self._loops.append(
            asyncio.create_task(self._claim_loop(self.reward_queue, self.handle_reward, 0), name="scan-reward-claim")
        )

    async def stop(self, grace_s: float = 5.0) -> None:
        self._stopping.set()
        for t in self._loops:
            t.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=grace_s)
            for t in pending:  # not acked: another worker re-claims them after the visibility timeout
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _claim_loop(self, queue: JobQueue, handler, i: int) -> None:
        while not self._stopping.is_set():
            await self._slots.acquire()
            try:
                job = await queue.claim(f"{self.consumer}-{queue.kind}-{i}", block_ms=self.settings.scan_claim_block_ms)
            except asyncio.CancelledError:
                self._slots.release()
                raise
            except Exception:  # a Redis hiccup: back off and retry
                self._slots.release()
                log.warning("claim failed", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            if job is None:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run(queue, handler, job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, queue: JobQueue, handler, job: Job) -> None:
        try:
            async with queue.holding(job):  # a scan slower than the visibility timeout keeps its claim
                await handler(job)
            await queue.ack(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the queue retries it (or dead-letters it after its attempts)
            log.exception(
                "scan job failed", extra={"job_id": job.job_id, "attempt": job.attempt, "error": str(exc)[:300]}
            )
            RUNS.labels("failed").inc()
            await queue.fail(job, type(exc).__name__)
        finally:
            self._slots.release()

    async def handle(self, job: Job) -> None:
        p = json.loads(job.payload)
        act_as(p["identity"])  # every downstream call of this job carries its user's wristband
        scan = await self.store.get(p["scan_id"])
        if scan is None:
            log.warning("scan job for an unknown scan", extra={"job_id": job.job_id})
            return
        em = Emitter(self.sink, scan.job_id, tokens_per_event=self.settings.scan_tokens_per_event)
        try:
            outcome = await self.pipeline.run(scan, em)
        except Exception:
            if job.attempt >= self.queue.settings.jobs_max_attempts:
                await self._give_up(scan.id, em)
            raise
        RUNS.labels(outcome).inc()
        if outcome == REWARD_PENDING:
            await self.reward_queue.enqueue(*reward_job(scan.job_id, scan.id, p["identity"]))

    async def _give_up(self, scan_id: str, em: Emitter) -> None:
        """The last attempt failed: tell the client (ERROR after whatever the run emitted), best effort."""
        em.put(
            events_pb2.EVENT_KIND_ERROR,
            stage=events_pb2.STAGE_UNSPECIFIED,
            node="error",
            error=events_pb2.JobError(
                code=14,
                reason="SCAN_FAILED",
                message="스캔을 처리하지 못했어요. 잠시 후 다시 시도해 주세요.",
                retryable=True,
            ),
        )
        try:
            await self.store.set_status(scan_id, FAILED, error="attempts exhausted")
            await em.flush()
        except Exception:  # the job's own error is the one to report
            log.warning("could not report a failed scan", extra={"scan_id": scan_id}, exc_info=True)

    async def handle_reward(self, job: Job) -> None:
        p = json.loads(job.payload)
        act_as(p["identity"])
        scan = await self.store.get(p["scan_id"])
        if scan is None:
            return
        try:
            await self.pipeline.retry_reward(scan)
        except Exception:
            if job.attempt < self.reward_queue.settings.jobs_max_attempts:
                raise
            log.exception("scan reward given up", extra={"scan_id": scan.id, "attempts": job.attempt})
            await self.pipeline.give_up_reward(scan, REWARD_FAILED)
