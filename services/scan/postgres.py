"""Scans in PostgreSQL (asyncpg): the request, each stage's stored outcome, the result."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import asyncpg

QUEUED, RUNNING, WAITING_INPUT, DONE, FAILED = "QUEUED", "RUNNING", "WAITING_INPUT", "DONE", "FAILED"


@dataclass(frozen=True, slots=True)
class ScanRecord:
    id: str
    user_id: str
    client_scan_id: str
    job_id: str
    image_key: str
    hint: str
    status: str
    vision: dict | None
    answers: list[dict]
    pending_input: str
    reward: bytes | None
    reward_pending: bool
    result: bytes | None

    @classmethod
    def of(cls, r: asyncpg.Record) -> ScanRecord:
        return cls(
            str(r["id"]),
            r["user_id"],
            r["client_scan_id"] or "",
            r["job_id"],
            r["image_key"],
            r["hint"],
            r["status"],
            json.loads(r["vision"]) if r["vision"] is not None else None,
            json.loads(r["answers"]),
            r["pending_input"],
            bytes(r["reward"]) if r["reward"] is not None else None,
            r["reward_pending"],
            bytes(r["result"]) if r["result"] is not None else None,
        )


def _uuid(scan_id: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(scan_id)
    except ValueError:
        return None


class ScanStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create(
        self, *, scan_id: str, user_id: str, client_scan_id: str, image_key: str, hint: str, job_id: str
    ) -> tuple[ScanRecord, bool]:
        """A new scan, or (with a client_scan_id the user already used) the existing one: (record, deduplicated)."""
        sid = uuid.UUID(scan_id)
        row = await self.pool.fetchrow(
            "INSERT INTO scan_scans (id, user_id, client_scan_id, job_id, image_key, hint) VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (user_id, client_scan_id) WHERE client_scan_id IS NOT NULL DO NOTHING RETURNING *",
            sid,
            user_id,
            client_scan_id or None,
            job_id,
            image_key,
            hint,
        )
        if row is not None:
            return ScanRecord.of(row), False
        return await self.by_client_id(user_id, client_scan_id), True

    async def by_client_id(self, user_id: str, client_scan_id: str) -> ScanRecord | None:
        row = await self.pool.fetchrow(
            "SELECT * FROM scan_scans WHERE user_id = $1 AND client_scan_id = $2", user_id, client_scan_id
        )
        return ScanRecord.of(row) if row is not None else None

    async def get(self, scan_id: str) -> ScanRecord | None:
        sid = _uuid(scan_id)
        row = await self.pool.fetchrow("SELECT * FROM scan_scans WHERE id = $1", sid) if sid else None
        return ScanRecord.of(row) if row is not None else None

    async def owned(self, user_id: str, scan_id: str) -> ScanRecord | None:
        """The user's scan; None for an unknown id or someone else's (the same answer)."""
        found = await self.get(scan_id)
        return found if found is not None and found.user_id == user_id else None

    async def by_job(self, user_id: str, job_id: str) -> ScanRecord | None:
        row = await self.pool.fetchrow("SELECT * FROM scan_scans WHERE job_id = $1 AND user_id = $2", job_id, user_id)
        return ScanRecord.of(row) if row is not None else None

    async def started(self, scan_id: str) -> None:
        """A worker took the scan: RUNNING, unless it waits for an answer or is finished (a
        reclaimed job re-running it must not close an open question)."""
        await self.pool.execute(
            "UPDATE scan_scans SET status = 'RUNNING', updated_at = now() WHERE id = $1 AND status = 'QUEUED'",
            uuid.UUID(scan_id),
        )

    async def set_status(self, scan_id: str, status: str, *, pending_input: str = "", error: str = "") -> None:
        await self.pool.execute(
            "UPDATE scan_scans SET status = $2, pending_input = $3, error = $4, updated_at = now() WHERE id = $1 AND status <> 'DONE'",
            uuid.UUID(scan_id),
            status,
            pending_input,
            error,
        )

    async def save_vision(self, scan_id: str, outcome: dict) -> dict:
        """Store the vision stage's outcome unless one is stored; the stored one (a concurrent
        re-run of the same scan uses the first outcome, so both emit the same events)."""
        stored = await self.pool.fetchval(
            "UPDATE scan_scans SET vision = COALESCE(vision, $2::jsonb), updated_at = now() WHERE id = $1 RETURNING vision::text",
            uuid.UUID(scan_id),
            json.dumps(outcome, ensure_ascii=False),
        )
        return json.loads(stored)

    async def add_answer(self, *, user_id: str, job_id: str, input_id: str, answer: dict) -> ScanRecord | None:
        """Append the answer to the question waiting as `input_id`; None when no such question
        waits (only the first answer to a question counts)."""
        row = await self.pool.fetchrow(
            "UPDATE scan_scans SET answers = answers || jsonb_build_array($4::jsonb), pending_input = '', status = 'QUEUED', updated_at = now()"
            " WHERE job_id = $1 AND user_id = $2 AND status = 'WAITING_INPUT' AND pending_input = $3 RETURNING *",
            job_id,
            user_id,
            input_id,
            json.dumps(answer, ensure_ascii=False),
        )
        return ScanRecord.of(row) if row is not None else None

    async def save_reward(self, scan_id: str, reward: bytes | None, *, pending: bool) -> None:
        """GrantReward's answer (pending=False), or that it must be retried (reward None, pending=True).
        A granted reward is never replaced by a pending mark; the result follows the reward."""
        await self.pool.execute(
            "UPDATE scan_scans SET reward = COALESCE(reward, $2), reward_pending = (reward IS NULL AND $2::bytea IS NULL AND $3), updated_at = now() WHERE id = $1",
            uuid.UUID(scan_id),
            reward,
            pending,
        )

    async def finish(self, scan_id: str, result: bytes) -> bytes:
        """Store the result once (DONE); the stored one."""
        return bytes(
            await self.pool.fetchval(
                "UPDATE scan_scans SET result = COALESCE(result, $2), status = 'DONE', pending_input = '', updated_at = now() WHERE id = $1 RETURNING result",
                uuid.UUID(scan_id),
                result,
            )
        )

    async def update_result(self, scan_id: str, result: bytes) -> None:
        """Replace a DONE scan's result (its reward arrived after a retry)."""
        await self.pool.execute(
            "UPDATE scan_scans SET result = $2, updated_at = now() WHERE id = $1 AND status = 'DONE'",
            uuid.UUID(scan_id),
            result,
        )
