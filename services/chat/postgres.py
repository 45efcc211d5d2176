"""Conversation history in PostgreSQL (asyncpg)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from eco2.chat.v1 import chat_pb2
from eco2.services.runtime.errors import NotFound

USER, ASSISTANT = chat_pb2.MESSAGE_ROLE_USER, chat_pb2.MESSAGE_ROLE_ASSISTANT


@dataclass(frozen=True, slots=True)
class Sent:
    conversation_id: str
    message_id: str
    job_id: str
    deduplicated: bool


def _ts(msg, field: str, value: datetime) -> None:
    getattr(msg, field).FromDatetime(value)


class ConversationStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def _owned(self, conn, conversation_id: str, user_id: str) -> asyncpg.Record:
        try:
            cid = uuid.UUID(conversation_id)
        except ValueError:
            raise NotFound(f"no conversation {conversation_id!r}", reason="CONVERSATION_NOT_FOUND") from None
        row = await conn.fetchrow("SELECT * FROM chat_conversations WHERE id = $1 AND user_id = $2", cid, user_id)
        if row is None:  # someone else's conversation is NOT_FOUND too: ids are not disclosed
            raise NotFound(f"no conversation {conversation_id!r}", reason="CONVERSATION_NOT_FOUND", metadata={"conversation_id": conversation_id})
        return row

    @contextlib.asynccontextmanager
    async def adding_user_message(self, *, user_id: str, conversation_id: str, text: str, image_key: str, client_message_id: str, job_id: str) -> AsyncIterator[Sent]:
        """Stores the user's message in a transaction that commits when the block exits without
        an error: the message and what the block does with it (queue its job) are kept together
        or not at all. A retry with the same client_message_id yields the stored one
        (`deduplicated`). Until the commit the message is invisible: see `has_user_message`."""
        async with self.pool.acquire() as conn, conn.transaction():
            yield await self._add_user_message(conn, user_id, conversation_id, text, image_key, client_message_id, job_id)

    async def has_user_message(self, job_id: str) -> bool:
        """Whether the user message of job `job_id` is stored (committed)."""
        return bool(await self.pool.fetchval("SELECT 1 FROM chat_messages WHERE job_id = $1 AND role = $2", job_id, USER))

    async def _add_user_message(self, conn, user_id: str, conversation_id: str, text: str, image_key: str, client_message_id: str, job_id: str) -> Sent:
        if client_message_id:
            row = await conn.fetchrow(
                "SELECT id, conversation_id, job_id FROM chat_messages WHERE user_id = $1 AND client_message_id = $2", user_id, client_message_id
            )
            if row is not None:
                return Sent(str(row["conversation_id"]), str(row["id"]), row["job_id"], True)
        if conversation_id:
            cid = (await self._owned(conn, conversation_id, user_id))["id"]
        else:
            cid = uuid.uuid4()
            await conn.execute("INSERT INTO chat_conversations (id, user_id, title) VALUES ($1, $2, $3)", cid, user_id, text[:40])
        mid = uuid.uuid4()
        inserted = await conn.fetchval(
            "INSERT INTO chat_messages (id, conversation_id, user_id, role, text, image_key, job_id, client_message_id)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING RETURNING id",
            mid, cid, user_id, USER, text, image_key, job_id, client_message_id or None,
        )
        if inserted is None:  # a concurrent retry with the same client id won the race
            row = await conn.fetchrow("SELECT id, conversation_id, job_id FROM chat_messages WHERE user_id = $1 AND client_message_id = $2", user_id, client_message_id)
            return Sent(str(row["conversation_id"]), str(row["id"]), row["job_id"], True)
        await conn.execute(
            "UPDATE chat_conversations SET message_count = message_count + 1, last_preview = $2, updated_at = now() WHERE id = $1", cid, text[:80]
        )
        return Sent(str(cid), str(mid), job_id, False)

    async def add_assistant_message(self, *, conversation_id: str, user_id: str, job_id: str, text: str, intents: list[int], citations: list[bytes], summary: str | None, image_key: str = "", result: bytes = b"", summary_upto: int = 0) -> str:
        """Idempotent per job: a re-run job returns the message stored the first time. `result` is the
        serialized ChatResult, which GetConversation gives back with the message. A new `summary`
        covers the messages up to `summary_upto` (their n)."""
        async with self.pool.acquire() as conn, conn.transaction():
            cid = uuid.UUID(conversation_id)
            existing = await conn.fetchval("SELECT id FROM chat_messages WHERE job_id = $1 AND role = $2", job_id, ASSISTANT)
            if existing is not None:
                return str(existing)
            mid = uuid.uuid4()
            exists = await conn.fetchval("SELECT 1 FROM chat_conversations WHERE id = $1", cid)
            if not exists:  # deleted while the answer was being written
                return ""
            await conn.execute(
                "INSERT INTO chat_messages (id, conversation_id, user_id, role, text, intents, citations, job_id, image_key, result)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                mid, cid, user_id, ASSISTANT, text, intents, citations, job_id, image_key, result or None,
            )
            await conn.execute(
                "UPDATE chat_conversations SET message_count = message_count + 1, last_preview = $2, updated_at = now(),"
                " summary = COALESCE($3, summary), summary_upto = GREATEST(summary_upto, $4) WHERE id = $1",
                cid, text[:80], summary, summary_upto if summary else 0,
            )
            return str(mid)

    async def history(self, conversation_id: str, *, before_job: str, limit: int) -> tuple[str, list[dict]]:
        """The summary and the messages after what it covers, before the message of job
        `before_job` (the last `limit` of them), each with its n."""
        cid = uuid.UUID(conversation_id)
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT summary, summary_upto FROM chat_conversations WHERE id = $1", cid)
            summary, upto = (row["summary"] or "", row["summary_upto"]) if row is not None else ("", 0)
            rows = await conn.fetch(
                "SELECT n, role, text FROM chat_messages WHERE conversation_id = $1 AND n > $4"
                " AND n < COALESCE((SELECT min(n) FROM chat_messages WHERE job_id = $2), 9223372036854775807) ORDER BY n DESC LIMIT $3",
                cid, before_job, limit, upto,
            )
        return summary, [{"role": "user" if r["role"] == USER else "assistant", "text": r["text"], "n": r["n"]} for r in reversed(rows)]

    async def list_conversations(self, user_id: str, *, after: tuple[datetime, str] | None, limit: int) -> list[chat_pb2.Conversation]:
        if after is None:
            rows = await self.pool.fetch("SELECT * FROM chat_conversations WHERE user_id = $1 ORDER BY updated_at DESC, id DESC LIMIT $2", user_id, limit)
        else:
            rows = await self.pool.fetch(
                "SELECT * FROM chat_conversations WHERE user_id = $1 AND (updated_at, id) < ($2, $3) ORDER BY updated_at DESC, id DESC LIMIT $4",
                user_id, after[0], uuid.UUID(after[1]), limit,
            )
        return [self._conversation(r) for r in rows]

    @staticmethod
    def _conversation(r) -> chat_pb2.Conversation:
        c = chat_pb2.Conversation(id=str(r["id"]), title=r["title"], message_count=r["message_count"], last_message_preview=r["last_preview"])
        _ts(c, "created_at", r["created_at"])
        _ts(c, "updated_at", r["updated_at"])
        return c

    async def get_conversation(self, user_id: str, conversation_id: str, *, before_n: int | None, limit: int) -> tuple[chat_pb2.Conversation, list[chat_pb2.Message], int | None]:
        async with self.pool.acquire() as conn:
            row = await self._owned(conn, conversation_id, user_id)
            rows = await conn.fetch(
                "SELECT * FROM chat_messages WHERE conversation_id = $1 AND n < $2 ORDER BY n DESC LIMIT $3",
                row["id"], before_n if before_n is not None else 2**63 - 1, limit + 1,
            )
        more = len(rows) > limit
        rows = rows[:limit]
        messages = []
        for r in rows:
            m = chat_pb2.Message(id=str(r["id"]), role=r["role"], text=r["text"], image_key=r["image_key"], intents=list(r["intents"]), job_id=r["job_id"])
            m.citations.extend(chat_pb2.Citation.FromString(bytes(c)) for c in r["citations"])
            if r["result"] is not None:
                m.result.ParseFromString(bytes(r["result"]))
                m.result.message_id = m.id  # stored before the message had its id
            _ts(m, "created_at", r["created_at"])
            messages.append(m)
        return self._conversation(row), messages, (rows[-1]["n"] if more and rows else None)

    async def delete(self, user_id: str, conversation_id: str) -> None:
        async with self.pool.acquire() as conn:
            row = await self._owned(conn, conversation_id, user_id)
            await conn.execute("DELETE FROM chat_conversations WHERE id = $1", row["id"])
