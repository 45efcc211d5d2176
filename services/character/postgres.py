"""PostgreSQL adapters of the character service."""

from __future__ import annotations

import asyncpg

from eco2.character.v1 import character_pb2

from .domain import (
    ALREADY_OWNED,
    NOT_ELIGIBLE,
    RECEIVED,
    Character,
    GrantRecord,
    Ownership,
    RewardDecision,
    outcome_reason,
)


class PostgresCatalogRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def load_catalog(self) -> list[Character]:
        rows = await self.pool.fetch(
            "SELECT code, name, aliases, category, match_label, image_code, description, is_default, sort_order"
            " FROM character_catalog ORDER BY sort_order, code"
        )
        return [
            Character(
                code=r["code"],
                name=r["name"],
                aliases=tuple(r["aliases"]),
                category=character_pb2.WasteCategory.Value(f"WASTE_CATEGORY_{r['category']}"),
                match_label=r["match_label"],
                image_code=r["image_code"],
                description=r["description"],
                is_default=r["is_default"],
                sort_order=r["sort_order"],
            )
            for r in rows
        ]


class PostgresRewardRepository:
    """Ownership and idempotent grants, made safe by constraints rather than locks in the app."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def find_grant(self, user_id: str, idempotency_key: str) -> GrantRecord | None:
        row = await self.pool.fetchrow(
            "SELECT request_sha256, outcome, character_code, reason FROM character_reward_grant"
            " WHERE user_id = $1 AND idempotency_key = $2",
            user_id,
            idempotency_key,
        )
        return (
            None
            if row is None
            else GrantRecord(row["request_sha256"], row["outcome"], row["character_code"], row["reason"])
        )

    async def grant(
        self, user_id: str, idempotency_key: str, request_sha256: str, source: str, decision: RewardDecision
    ) -> tuple[GrantRecord, bool]:
        code = decision.character.code if decision.character is not None else None
        async with self.pool.acquire() as conn, conn.transaction():
            # Claim the key first. A concurrent transaction with the same key blocks on the
            # primary key here until this one commits, then finds the row and replays it.
            claimed = await conn.fetchval(
                "INSERT INTO character_reward_grant (user_id, idempotency_key, request_sha256, outcome, character_code, reason)"
                " VALUES ($1, $2, $3, 'PENDING', $4, '') ON CONFLICT (user_id, idempotency_key) DO NOTHING RETURNING true",
                user_id,
                idempotency_key,
                request_sha256,
                code,
            )
            if not claimed:
                row = await conn.fetchrow(
                    "SELECT request_sha256, outcome, character_code, reason FROM character_reward_grant"
                    " WHERE user_id = $1 AND idempotency_key = $2",
                    user_id,
                    idempotency_key,
                )
                return GrantRecord(row["request_sha256"], row["outcome"], row["character_code"], row["reason"]), False
            if decision.eligible and decision.character is not None:
                added = await conn.fetchval(
                    "INSERT INTO character_ownership (user_id, character_code, source) VALUES ($1, $2, $3)"
                    " ON CONFLICT (user_id, character_code) DO NOTHING RETURNING true",
                    user_id,
                    decision.character.code,
                    source,
                )
                outcome = RECEIVED if added else ALREADY_OWNED
            else:
                outcome = NOT_ELIGIBLE
            reason = outcome_reason(outcome, decision.character, decision.reason)
            await conn.execute(
                "UPDATE character_reward_grant SET outcome = $3, reason = $4 WHERE user_id = $1 AND idempotency_key = $2",
                user_id,
                idempotency_key,
                outcome,
                reason,
            )
            return GrantRecord(request_sha256, outcome, code, reason), True

    async def collection(self, user_id: str, default_code: str, offset: int, limit: int) -> tuple[list[Ownership], int]:
        async with self.pool.acquire() as conn:
            has_default = await conn.fetchval(
                "SELECT true FROM character_ownership WHERE user_id = $1 AND character_code = $2", user_id, default_code
            )
            if not has_default:
                await conn.execute(
                    "INSERT INTO character_ownership (user_id, character_code, source) VALUES ($1, $2, 'DEFAULT')"
                    " ON CONFLICT (user_id, character_code) DO NOTHING",
                    user_id,
                    default_code,
                )
            rows = await conn.fetch(
                "SELECT character_code, source, acquired_at, count(*) OVER () AS total FROM character_ownership"
                " WHERE user_id = $1 ORDER BY (character_code = $2) DESC, acquired_at, character_code OFFSET $3 LIMIT $4",
                user_id,
                default_code,
                offset,
                limit,
            )
            total = (
                rows[0]["total"]
                if rows
                else await conn.fetchval("SELECT count(*) FROM character_ownership WHERE user_id = $1", user_id)
            )
        return [Ownership(r["character_code"], r["source"], r["acquired_at"]) for r in rows], total
