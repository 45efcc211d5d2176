"""Conversation history in PostgreSQL (asyncpg)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from eco2.chat.v1 import chat_pb2
from eco2.services.runtime.errors import FailedPrecondition, NotFound

USER, ASSISTANT = chat_pb2.MESSAGE_ROLE_USER, chat_pb2.MESSAGE_ROLE_ASSISTANT
QUEUED, RUNNING, WAITING = chat_pb2.RUN_STATUS_QUEUED, chat_pb2.RUN_STATUS_RUNNING, chat_pb2.RUN_STATUS_WAITING_INPUT
SUCCEEDED, FAILED = chat_pb2.RUN_STATUS_SUCCEEDED, chat_pb2.RUN_STATUS_FAILED
CANCELLED, ROLLED_BACK = chat_pb2.RUN_STATUS_CANCELLED, chat_pb2.RUN_STATUS_ROLLED_BACK
INTERRUPT, ROLLBACK = chat_pb2.CANCEL_MODE_INTERRUPT, chat_pb2.CANCEL_MODE_ROLLBACK
ACTIVE = (QUEUED, RUNNING, WAITING)
#: the run status a cancel of each mode ends in
CANCELLED_AS = {INTERRUPT: CANCELLED, ROLLBACK: ROLLED_BACK}
#: A run that holds its conversation: queued or running, or waiting for input with a cancel to
#: carry out, and heard of within $STALE seconds (a run whose job was lost stops counting).
_HOLDS = "(o.status IN (1, 2) OR (o.status = 3 AND o.cancel_mode <> 0)) AND o.updated_at > now() - make_interval(secs => {stale})"


#: SendMessage's turn in one statement: the message stored before with the send's client id, if
#: any (`dup_*`; nothing else happens), else the conversation (`{conversation}`: created, or the
#: caller's, locked), the user message, the run and, for a conversation that existed, its count
#: and preview. The inserts take their rows from the conversation's, so the lock comes before
#: the message's and the run's n: concurrent sends to a conversation number their turns in the
#: order they held it. `mid` is NULL when a concurrent send with the same client id stored its
#: message first; `cid` is NULL when the conversation is not the caller's.
_ADD_TURN = (
    "WITH dup AS (SELECT id, conversation_id, job_id FROM chat_messages WHERE user_id = $3 AND client_message_id = $7),"
    " conv AS ({conversation}),"
    " msg AS ("
    "  INSERT INTO chat_messages (id, conversation_id, user_id, role, text, image_key, job_id, client_message_id)"
    "  SELECT $1, conv.id, $3, 1, $4, $5, $6, $7 FROM conv ON CONFLICT DO NOTHING RETURNING id, conversation_id),"
    " run AS (INSERT INTO chat_runs (job_id, conversation_id, user_id, status) SELECT $6, conversation_id, $3, 1 FROM msg)"
    "{counted}"
    " SELECT (SELECT id FROM conv) AS cid, (SELECT id FROM msg) AS mid,"
    "  dup.id AS dup_id, dup.conversation_id AS dup_conversation_id, dup.job_id AS dup_job_id"
    " FROM (SELECT 1) AS one LEFT JOIN dup ON true"
)
_NEW_CONVERSATION = _ADD_TURN.format(
    conversation="INSERT INTO chat_conversations (id, user_id, title, message_count, last_preview)"
    " SELECT $2, $3, left($4, 40), 1, left($4, 80) WHERE NOT EXISTS (SELECT 1 FROM dup) RETURNING id",
    counted="",
)
_IN_CONVERSATION = _ADD_TURN.format(
    conversation="SELECT id FROM chat_conversations WHERE id = $2 AND user_id = $3 AND NOT EXISTS (SELECT 1 FROM dup) FOR UPDATE",
    counted=", counted AS (UPDATE chat_conversations c SET message_count = c.message_count + 1, last_preview = left($4, 80),"
    " updated_at = now() FROM msg WHERE c.id = msg.conversation_id)",
)


#: Moves the question of job $1 after its conversation's latest message when an answer was
#: stored after it (and `_MOVE_WAITING` did not move it), for a run ({run}) to start.
_MOVE_QUESTION = (
    " moved AS (UPDATE chat_messages m SET n = nextval(pg_get_serial_sequence('chat_messages', 'n')) FROM {run}"
    "  WHERE m.job_id = $1 AND m.role = 1"
    "   AND EXISTS (SELECT 1 FROM chat_messages l WHERE l.conversation_id = m.conversation_id AND l.n > m.n AND l.role = 2))"
)
#: The summary and history of the turn of job $1 whose question `_MOVE_QUESTION` moves in the
#: same statement ({run}: its run's conversation_id and n): the last {limit} messages after what
#: the summary covers, other than the turn's own, of no run or of a run before it (the questions
#: of runs queued behind it are not history yet). The statement reads the messages as they were
#: before the move: once it is moved (or when nothing is after it), every message but the turn's
#: own is before its question, which is what `history` reads.
_HISTORY = (
    " conv AS (SELECT c.summary, c.summary_upto FROM chat_conversations c JOIN {run} ON c.id = {run}.conversation_id),"
    " hist AS (SELECT m.n, m.role, m.text FROM {run} JOIN conv ON true"
    "  JOIN chat_messages m ON m.conversation_id = {run}.conversation_id AND m.n > conv.summary_upto AND m.job_id <> $1"
    "  LEFT JOIN chat_runs h ON h.job_id = m.job_id"
    "  WHERE h.n IS NULL OR h.n < {run}.n ORDER BY m.n DESC LIMIT {limit})"
)
#: `_HISTORY`'s rows, oldest first, joined to the rows before it ({rows}: one row): the
#: conversation's summary (NULL without it) and a message (NULL without any) on each.
_WITH_HISTORY = (
    "conv.summary, hist.n AS h_n, hist.role AS h_role, hist.text AS h_text"
    " FROM {rows} LEFT JOIN conv ON true LEFT JOIN hist ON true ORDER BY hist.n"
)

#: Stores job $1's assistant message ($2..$9) and counts it in its conversation $3 (a new summary
#: $10 covers the messages up to $11), in one statement with the run's transition ({run}: an
#: UPDATE of the run RETURNING its status, its cancel_mode and whether the message is stored).
#: The transition takes the run's row lock, the one a cancel takes: a cancel recorded first
#: wins, and the message is not stored. A message stored before (a re-run job) stays as it is
#: (`mid` NULL), as it does when the conversation was deleted.
_STORE_ANSWER = (
    "WITH run AS ({run}),"
    " msg AS ("
    "  INSERT INTO chat_messages (id, conversation_id, user_id, role, text, intents, citations, job_id, image_key, result)"
    "  SELECT $2, c.id, $4, 2, $5, $6, $7, $1, $8, $9 FROM chat_conversations c"
    "   WHERE c.id = $3 AND NOT EXISTS (SELECT 1 FROM run WHERE NOT run.stores)"
    "  ON CONFLICT (job_id, role) DO NOTHING RETURNING id, conversation_id),"
    " counted AS ("
    "  UPDATE chat_conversations c SET message_count = c.message_count + 1, last_preview = left($5, 80), updated_at = now(),"
    "   summary = COALESCE($10, c.summary), summary_upto = GREATEST(c.summary_upto, $11)"
    "  FROM msg WHERE c.id = msg.conversation_id)"
    " SELECT run.status, run.cancel_mode, (SELECT id FROM msg) AS mid,"
    "  EXISTS (SELECT 1 FROM msg JOIN chat_messages q ON q.job_id = $1 AND q.role = 1"
    "   JOIN chat_messages w ON w.conversation_id = msg.conversation_id AND w.role = 1 AND w.n > q.n) AS behind"
    " FROM (SELECT 1) AS one LEFT JOIN run ON true"
)
#: Moves the questions sent after job $1's question, whose turns have no answer yet, after its
#: answer (stored just before), keeping their order: a question that waits behind a running
#: turn is listed after that turn's answer as soon as the answer is there.
_MOVE_WAITING = (
    "UPDATE chat_messages m SET n = moved.n FROM ("
    "  SELECT id, nextval(pg_get_serial_sequence('chat_messages', 'n')) AS n FROM ("
    "   SELECT w.id FROM chat_messages q"
    "    JOIN chat_messages w ON w.conversation_id = q.conversation_id AND w.role = 1 AND w.n > q.n"
    "   WHERE q.job_id = $1 AND q.role = 1"
    "    AND NOT EXISTS (SELECT 1 FROM chat_messages a WHERE a.job_id = w.job_id AND a.role = 2)"
    "   ORDER BY w.n) AS waiting) AS moved"
    " WHERE m.id = moved.id"
)
#: The answer of a run: an active run without a cancel succeeds (a run without a row, stored
#: before runs existed, stores its answer too).
_ANSWER = _STORE_ANSWER.format(
    run="UPDATE chat_runs SET status = CASE WHEN status IN (1, 2, 3) AND cancel_mode = 0 THEN 4 ELSE status END,"
    " updated_at = CASE WHEN (status IN (1, 2, 3) AND cancel_mode = 0) OR status = 4 THEN now() ELSE updated_at END"
    " WHERE job_id = $1 RETURNING status, cancel_mode, status = 4 AS stores"
)
#: What an interrupted run answered so far: the run ends in status $12 (CANCELLED).
_CANCELLED_ANSWER = _STORE_ANSWER.format(
    run="UPDATE chat_runs SET status = $12, updated_at = now() WHERE job_id = $1 RETURNING status, cancel_mode, true AS stores"
)


def _turn(n: int, role: int, text: str) -> dict:
    """A history message as the graph takes it."""
    return {"role": "user" if role == USER else "assistant", "text": text, "n": n}


def _history_of(rows: list) -> tuple[str, list[dict]] | None:
    """(summary, history) from the rows of a `_WITH_HISTORY`; None without the conversation."""
    if not rows or rows[0]["summary"] is None:
        return None
    return rows[0]["summary"], [_turn(r["h_n"], r["h_role"], r["h_text"]) for r in rows if r["h_n"] is not None]


@dataclass(frozen=True, slots=True)
class Cancel:
    """What a cancel recorded on a run: `finished` when the run was only queued and the cancel
    was carried out at once (nothing ran), else the run's worker carries it out."""

    job_id: str
    conversation_id: str
    mode: int
    status: int  # the run's status after the cancel was recorded
    already: bool = False

    @property
    def finished(self) -> bool:
        return self.status in (CANCELLED, ROLLED_BACK)


@dataclass(frozen=True, slots=True)
class Sent:
    conversation_id: str
    message_id: str
    job_id: str
    deduplicated: bool
    #: runs of the conversation this send cancelled (double-text interrupt / rollback)
    cancelled: tuple[Cancel, ...] = ()


@dataclass(frozen=True, slots=True)
class RunStart:
    """A worker's view of its run when it starts it (ConversationStore.start_run)."""

    status: int
    cancel_mode: int
    conversation_id: str
    user_id: str
    n: int
    #: an earlier run of the conversation that is still going: this one waits for it
    blocker: str | None
    #: (summary, history) as `ConversationStore.history` gives them, read with the start of a
    #: new message that has no run to wait for; None otherwise
    history: tuple[str, list[dict]] | None = None


class RunCancelled(Exception):
    """The run was cancelled before its answer could be stored: the worker carries out the cancel
    (`mode`), or, with mode 0, the run already ended otherwise and nothing is stored."""

    def __init__(self, mode: int) -> None:
        super().__init__(f"run cancelled (mode {mode})")
        self.mode = mode


def _ts(msg, field: str, value: datetime) -> None:
    getattr(msg, field).FromDatetime(value)


class ConversationStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def _owned(self, conn, conversation_id: str, user_id: str, *, lock: bool = False) -> asyncpg.Record:
        try:
            cid = uuid.UUID(conversation_id)
        except ValueError:
            raise self._not_found(conversation_id) from None
        row = await conn.fetchrow(
            "SELECT * FROM chat_conversations WHERE id = $1 AND user_id = $2" + (" FOR UPDATE" if lock else ""),
            cid,
            user_id,
        )
        if row is None:
            raise self._not_found(conversation_id)
        return row

    @staticmethod
    def _not_found(conversation_id: str) -> NotFound:
        """Someone else's conversation is NOT_FOUND too: ids are not disclosed."""
        return NotFound(
            f"no conversation {conversation_id!r}",
            reason="CONVERSATION_NOT_FOUND",
            metadata={"conversation_id": conversation_id},
        )

    @contextlib.asynccontextmanager
    async def adding_user_message(
        self,
        *,
        user_id: str,
        conversation_id: str,
        text: str,
        image_key: str,
        client_message_id: str,
        job_id: str,
        policy: int = chat_pb2.DOUBLE_TEXT_POLICY_ENQUEUE,
        stale_s: float = 900.0,
    ) -> AsyncIterator[Sent]:
        """Stores the user's message and its run in a transaction that commits when the block
        exits without an error: the message and what the block does with it (queue its job) are
        kept together or not at all. A retry with the same client_message_id yields the stored one
        (`deduplicated`, no policy applied). Until the commit the message is invisible (a worker
        that claims the job first waits: `start_run`).

        `policy` (DoubleTextPolicy) decides about the conversation's active runs, read under the
        conversation's row lock so that concurrent sends see each other: REJECT raises
        FailedPrecondition RUN_IN_PROGRESS naming the run, INTERRUPT / ROLLBACK record a cancel
        on each (`Sent.cancelled`: the caller signals their workers after the commit), ENQUEUE
        leaves them: the new run's worker waits for them (`start_run`)."""
        async with self.pool.acquire() as conn, conn.transaction():
            yield await self._add_user_message(
                conn, user_id, conversation_id, text, image_key, client_message_id, job_id, policy, stale_s
            )

    async def _add_user_message(
        self,
        conn,
        user_id: str,
        conversation_id: str,
        text: str,
        image_key: str,
        client_message_id: str,
        job_id: str,
        policy: int,
        stale_s: float,
    ) -> Sent:
        cancelled: list[Cancel] = []
        cid = None
        if conversation_id:
            try:
                cid = uuid.UUID(conversation_id)
            except ValueError:
                raise self._not_found(conversation_id) from None
            if policy != chat_pb2.DOUBLE_TEXT_POLICY_ENQUEUE:
                # The policy reads the active runs in a statement after the one that takes the
                # conversation's row lock, so that it sees the runs of the sends that held it.
                if client_message_id and (sent := await self._sent_before(conn, user_id, client_message_id)):
                    return sent
                await self._owned(conn, conversation_id, user_id, lock=True)
                cancelled = await self._apply_policy(conn, cid, policy, stale_s)
        mid = uuid.uuid4()
        row = await conn.fetchrow(
            _NEW_CONVERSATION if cid is None else _IN_CONVERSATION,
            mid,
            cid or uuid.uuid4(),
            user_id,
            text,
            image_key,
            job_id,
            client_message_id or None,
        )
        if row["dup_id"] is not None:
            return Sent(str(row["dup_conversation_id"]), str(row["dup_id"]), row["dup_job_id"], True)
        if row["cid"] is None:  # not the caller's conversation (or deleted)
            raise self._not_found(conversation_id)
        if row["mid"] is None:  # a concurrent retry with the same client id won the race
            if cid is None:  # the conversation this statement created holds nothing
                await conn.execute("DELETE FROM chat_conversations WHERE id = $1", row["cid"])
            return await self._sent_before(conn, user_id, client_message_id)
        return Sent(str(row["cid"]), str(mid), job_id, False, tuple(cancelled))

    @staticmethod
    async def _sent_before(conn, user_id: str, client_message_id: str) -> Sent | None:
        """The message stored with this client id, as a deduplicated send."""
        row = await conn.fetchrow(
            "SELECT id, conversation_id, job_id FROM chat_messages WHERE user_id = $1 AND client_message_id = $2",
            user_id,
            client_message_id,
        )
        return Sent(str(row["conversation_id"]), str(row["id"]), row["job_id"], True) if row is not None else None

    async def _apply_policy(self, conn, cid: uuid.UUID, policy: int, stale_s: float) -> list[Cancel]:
        """The double-text policy against the conversation's active runs (its row is locked).
        A run with a cancel already recorded is ending: it neither rejects nor is cancelled again."""
        rows = await conn.fetch(
            "SELECT * FROM chat_runs o WHERE o.conversation_id = $1 AND o.status IN (1, 2, 3) AND o.cancel_mode = 0"
            " AND o.updated_at > now() - make_interval(secs => $2) ORDER BY o.n FOR UPDATE",
            cid,
            float(stale_s),
        )
        if not rows:
            return []
        if policy == chat_pb2.DOUBLE_TEXT_POLICY_REJECT:
            running = rows[-1]
            raise FailedPrecondition(
                f"the conversation has a run in progress (job {running['job_id']}); send it again when it is done, or choose another double_text_policy",
                reason="RUN_IN_PROGRESS",
                metadata={"job_id": running["job_id"], "status": chat_pb2.RunStatus.Name(running["status"])},
            )
        mode = INTERRUPT if policy == chat_pb2.DOUBLE_TEXT_POLICY_INTERRUPT else ROLLBACK
        return [await self._cancel(conn, row, mode) for row in rows]

    # -- runs ---------------------------------------------------------------------------------

    async def cancel_run(self, job_id: str, user_id: str, mode: int) -> Cancel:
        """Record a cancel of the caller's run `job_id` (or find the one recorded before:
        `already`, with the first cancel's mode). NotFound for another user's or an unknown job;
        FailedPrecondition RUN_FINISHED for a run that ended otherwise (nothing changes)."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT * FROM chat_runs WHERE job_id = $1 AND user_id = $2 FOR UPDATE", job_id, user_id
            )
            if row is None:  # someone else's job is NOT_FOUND too: job ids are not disclosed
                raise NotFound(f"no job {job_id!r}", reason="JOB_NOT_FOUND", metadata={"job_id": job_id})
            if row["cancel_mode"]:
                return Cancel(job_id, str(row["conversation_id"]), row["cancel_mode"], row["status"], already=True)
            if row["status"] not in ACTIVE:
                status = chat_pb2.RunStatus.Name(row["status"])
                raise FailedPrecondition(
                    f"job {job_id!r} has already ended ({status})",
                    reason="RUN_FINISHED",
                    metadata={"job_id": job_id, "status": status},
                )
            return await self._cancel(conn, row, mode)

    async def _cancel(self, conn, row, mode: int) -> Cancel:
        """Record `mode` on an active run (its row locked). A queued run has not started: the
        cancel is carried out here (rollback removes its message) and its worker, when it claims
        the job, finds it ended. A running or waiting run's worker carries it out."""
        job_id, cid = row["job_id"], row["conversation_id"]
        if row["status"] == QUEUED:
            status = CANCELLED_AS[mode]
            if mode == ROLLBACK:
                await self._remove_turn(conn, job_id, cid)
        else:
            status = row["status"]
        await conn.execute(
            "UPDATE chat_runs SET cancel_mode = $2, status = $3, updated_at = now() WHERE job_id = $1",
            job_id,
            mode,
            status,
        )
        return Cancel(job_id, str(cid), mode, status)

    @staticmethod
    async def _remove_turn(conn, job_id: str, cid: uuid.UUID) -> None:
        """Delete a run's messages (its question and any answer) and keep the conversation's
        count, preview and title true to what is left."""
        removed = await conn.fetch("DELETE FROM chat_messages WHERE job_id = $1 RETURNING role, text", job_id)
        if not removed:
            return
        question = next((r["text"] for r in removed if r["role"] == USER), None)
        await conn.execute(
            "UPDATE chat_conversations SET message_count = GREATEST(0, message_count - $2), updated_at = now(),"
            " last_preview = COALESCE((SELECT left(text, 80) FROM chat_messages WHERE conversation_id = $1 ORDER BY n DESC LIMIT 1), ''),"
            " title = CASE WHEN $3::text IS NOT NULL AND title = left($3::text, 40)"
            "   THEN COALESCE((SELECT left(text, 40) FROM chat_messages WHERE conversation_id = $1 AND role = 1 ORDER BY n LIMIT 1), '') ELSE title END"
            " WHERE id = $1",
            cid,
            len(removed),
            question,
        )

    async def start_run(self, job_id: str, *, fresh: bool, stale_s: float, history_limit: int) -> RunStart | None:
        """A worker starts (or resumes, or re-claims) the run of job `job_id`: an active run
        without a cancel becomes RUNNING. One statement also names an earlier run of the
        conversation that still holds it (`blocker`: the worker waits for it), and, for a new
        message with no blocker, moves its question after an answer stored after it that did not
        move it (`_MOVE_QUESTION`; storing an answer moves the questions waiting behind it:
        `_MOVE_WAITING`), so that the messages' order (n) is the order the turns ran in; and reads
        the turn's summary and history (the last `history_limit` messages: `RunStart.history`).
        None while the send that queued the job has not committed.

        A run stored before runs existed (a job queued during an upgrade) gets its row here."""
        rows = await self.pool.fetch(
            "WITH run AS ("
            "  UPDATE chat_runs r SET status = CASE WHEN r.status IN (1, 3) AND r.cancel_mode = 0 THEN 2 ELSE r.status END, updated_at = now()"
            "   WHERE r.job_id = $1"
            "  RETURNING r.status, r.cancel_mode, r.conversation_id, r.user_id, r.n,"
            "   (SELECT o.job_id FROM chat_runs o WHERE o.conversation_id = r.conversation_id AND o.n < r.n AND "
            + _HOLDS.format(stale="$3")
            + "     ORDER BY o.n DESC LIMIT 1) AS blocker),"
            " go AS (SELECT * FROM run WHERE $2 AND run.status = 2 AND run.cancel_mode = 0 AND run.blocker IS NULL),"
            + _MOVE_QUESTION.format(run="go")
            + ","
            + _HISTORY.format(run="go", limit="$4")
            + " SELECT run.*, "
            + _WITH_HISTORY.format(rows="run"),
            job_id,
            fresh,
            float(stale_s),
            history_limit,
        )
        if not rows:
            row = await self.pool.fetchrow(
                "INSERT INTO chat_runs (job_id, conversation_id, user_id, status)"
                " SELECT job_id, conversation_id, user_id, 2 FROM chat_messages WHERE job_id = $1 AND role = 1"
                " ON CONFLICT (job_id) DO NOTHING RETURNING status, cancel_mode, conversation_id, user_id, n, NULL::text AS blocker",
                job_id,
            )
            if row is None:
                return None
            return RunStart(
                row["status"], row["cancel_mode"], str(row["conversation_id"]), row["user_id"], row["n"], None
            )
        run = rows[0]
        return RunStart(
            run["status"],
            run["cancel_mode"],
            str(run["conversation_id"]),
            run["user_id"],
            run["n"],
            run["blocker"],
            _history_of(rows),
        )

    async def blocker_of(self, job_id: str, *, stale_s: float) -> str | None:
        """The earlier run of the conversation that still holds it, if any."""
        return await self.pool.fetchval(
            "SELECT o.job_id FROM chat_runs r JOIN chat_runs o ON o.conversation_id = r.conversation_id AND o.n < r.n"
            " WHERE r.job_id = $1 AND " + _HOLDS.format(stale="$2") + " ORDER BY o.n DESC LIMIT 1",
            job_id,
            float(stale_s),
        )

    async def move_to_end(self, job_id: str, *, history_limit: int) -> tuple[str, list[dict]]:
        """Move the run's question after an answer stored after it (see `start_run`) and read the
        turn's summary and history (as `history` gives them), in one statement."""
        rows = await self.pool.fetch(
            "WITH run AS (SELECT conversation_id, n FROM chat_runs WHERE job_id = $1),"
            + _MOVE_QUESTION.format(run="run")
            + ","
            + _HISTORY.format(run="run", limit="$2")
            + " SELECT "
            + _WITH_HISTORY.format(rows="(SELECT 1) AS one"),
            job_id,
            history_limit,
        )
        return _history_of(rows) or ("", [])

    async def run_state(self, job_id: str) -> tuple[int, int] | None:
        """(status, cancel_mode) of a run."""
        row = await self.pool.fetchrow("SELECT status, cancel_mode FROM chat_runs WHERE job_id = $1", job_id)
        return (row["status"], row["cancel_mode"]) if row is not None else None

    async def cancels_among(self, job_ids: list[str]) -> list[tuple[str, int]]:
        """The runs among `job_ids` that have a cancel recorded: (job id, mode)."""
        rows = await self.pool.fetch(
            "SELECT job_id, cancel_mode FROM chat_runs WHERE job_id = ANY($1::text[]) AND cancel_mode <> 0", job_ids
        )
        return [(r["job_id"], r["cancel_mode"]) for r in rows]

    async def set_waiting(self, job_id: str) -> bool:
        """The run waits for input now; False when a cancel was recorded first (the worker carries it out)."""
        return bool(
            await self.pool.fetchval(
                "UPDATE chat_runs SET status = 3, updated_at = now() WHERE job_id = $1 AND status = 2 AND cancel_mode = 0 RETURNING 1",
                job_id,
            )
        )

    async def fail_run(self, job_id: str, reason: str, *, despite_cancel: bool = False) -> int:
        """The run ended with ERROR `reason` (a failed node, or its job ran out of attempts): 0.
        The mode of the cancel recorded on it, if any (and not `despite_cancel`): the worker
        carries that out instead."""
        cancel_mode = await self.pool.fetchval(
            "UPDATE chat_runs SET status = CASE WHEN cancel_mode = 0 OR $3 THEN 5 ELSE status END, error_reason = $2, updated_at = now()"
            " WHERE job_id = $1 AND status IN (1, 2, 3) RETURNING cancel_mode",
            job_id,
            reason[:200],
            despite_cancel,
        )
        return 0 if despite_cancel else int(cancel_mode or 0)

    async def finish_cancelled(
        self,
        *,
        job_id: str,
        conversation_id: str,
        user_id: str,
        mode: int,
        text: str,
        result: bytes = b"",
        intents: list[int] | None = None,
        citations: list[bytes] | None = None,
    ) -> str:
        """Carry out a recorded cancel: INTERRUPT stores `text` (what was answered so far, when
        there is any) as the assistant message, ROLLBACK removes the turn; the run ends
        CANCELLED / ROLLED_BACK. Idempotent (a re-claimed job carries it out again). The
        assistant message id, or ""."""
        status = CANCELLED_AS[mode]
        if mode == ROLLBACK:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "UPDATE chat_runs SET status = $2, updated_at = now() WHERE job_id = $1", job_id, status
                )
                await self._remove_turn(conn, job_id, uuid.UUID(conversation_id))
            return ""
        if not text:
            await self.pool.execute(
                "UPDATE chat_runs SET status = $2, updated_at = now() WHERE job_id = $1", job_id, status
            )
            return ""
        row = await self.pool.fetchrow(
            _CANCELLED_ANSWER,
            job_id,
            uuid.uuid4(),
            uuid.UUID(conversation_id),
            user_id,
            text,
            intents or [],
            citations or [],
            "",
            result or None,
            None,
            0,
            status,
        )
        return await self._answer_id(job_id, row)

    async def add_assistant_message(
        self,
        *,
        conversation_id: str,
        user_id: str,
        job_id: str,
        text: str,
        intents: list[int],
        citations: list[bytes],
        summary: str | None,
        image_key: str = "",
        result: bytes = b"",
        summary_upto: int = 0,
    ) -> str:
        """Idempotent per job: a re-run job returns the message stored the first time. `result` is the
        serialized ChatResult, which GetConversation gives back with the message. A new `summary`
        covers the messages up to `summary_upto` (their n). RunCancelled when a cancel was
        recorded first, or the run ended otherwise (nothing is stored)."""
        row = await self.pool.fetchrow(
            _ANSWER,
            job_id,
            uuid.uuid4(),
            uuid.UUID(conversation_id),
            user_id,
            text,
            intents,
            citations,
            image_key,
            result or None,
            summary,
            summary_upto if summary else 0,
        )
        if row["status"] is not None and row["status"] != SUCCEEDED:  # cancelled, or ended otherwise (mode 0)
            raise RunCancelled(row["cancel_mode"])
        return await self._answer_id(job_id, row)

    async def _answer_id(self, job_id: str, row) -> str:
        """The id of the assistant message `_STORE_ANSWER` stored (with the questions sent while
        its turn ran moved after it), else of the one stored before (a re-run job); "" when there
        is none (the conversation was deleted)."""
        stored = row["mid"]
        if stored is not None and row["behind"]:
            await self.pool.execute(_MOVE_WAITING, job_id)
        if stored is None:
            stored = await self.pool.fetchval(
                "SELECT id FROM chat_messages WHERE job_id = $1 AND role = $2", job_id, ASSISTANT
            )
        return str(stored) if stored is not None else ""

    async def history(self, conversation_id: str, *, before_job: str, limit: int) -> tuple[str, list[dict]]:
        """The summary and the messages after what it covers, before the message of job
        `before_job` (the last `limit` of them), each with its n. The questions of runs sent
        after it (queued behind it) are not history yet."""
        cid = uuid.UUID(conversation_id)
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT summary, summary_upto FROM chat_conversations WHERE id = $1", cid)
            summary, upto = (row["summary"] or "", row["summary_upto"]) if row is not None else ("", 0)
            rows = await conn.fetch(
                "SELECT m.n, m.role, m.text FROM chat_messages m LEFT JOIN chat_runs r ON r.job_id = m.job_id"
                " WHERE m.conversation_id = $1 AND m.n > $4"
                " AND m.n < COALESCE((SELECT min(n) FROM chat_messages WHERE job_id = $2), 9223372036854775807)"
                " AND (r.n IS NULL OR r.n < COALESCE((SELECT n FROM chat_runs WHERE job_id = $2), 9223372036854775807))"
                " ORDER BY m.n DESC LIMIT $3",
                cid,
                before_job,
                limit,
                upto,
            )
        return summary, [_turn(r["n"], r["role"], r["text"]) for r in reversed(rows)]

    async def list_conversations(
        self, user_id: str, *, after: tuple[datetime, str] | None, limit: int
    ) -> list[chat_pb2.Conversation]:
        if after is None:
            rows = await self.pool.fetch(
                "SELECT * FROM chat_conversations WHERE user_id = $1 ORDER BY updated_at DESC, id DESC LIMIT $2",
                user_id,
                limit,
            )
        else:
            rows = await self.pool.fetch(
                "SELECT * FROM chat_conversations WHERE user_id = $1 AND (updated_at, id) < ($2, $3) ORDER BY updated_at DESC, id DESC LIMIT $4",
                user_id,
                after[0],
                uuid.UUID(after[1]),
                limit,
            )
        return [self._conversation(r) for r in rows]

    @staticmethod
    def _conversation(r) -> chat_pb2.Conversation:
        c = chat_pb2.Conversation(
            id=str(r["id"]), title=r["title"], message_count=r["message_count"], last_message_preview=r["last_preview"]
        )
        _ts(c, "created_at", r["created_at"])
        _ts(c, "updated_at", r["updated_at"])
        return c

    async def get_conversation(
        self, user_id: str, conversation_id: str, *, cursor_n: int | None, limit: int, oldest_first: bool = False
    ) -> tuple[chat_pb2.Conversation, list[chat_pb2.Message], int | None]:
        """A page of the conversation's messages: newest first from before `cursor_n`, or
        oldest first from after it; with the cursor of the next page (None on the last)."""
        async with self.pool.acquire() as conn:
            row = await self._owned(conn, conversation_id, user_id)
            if oldest_first:
                rows = await conn.fetch(
                    "SELECT * FROM chat_messages WHERE conversation_id = $1 AND n > $2 ORDER BY n LIMIT $3",
                    row["id"],
                    cursor_n or 0,
                    limit + 1,
                )
            else:
                rows = await conn.fetch(
                    "SELECT * FROM chat_messages WHERE conversation_id = $1 AND n < $2 ORDER BY n DESC LIMIT $3",
                    row["id"],
                    cursor_n if cursor_n is not None else 2**63 - 1,
                    limit + 1,
                )
        more = len(rows) > limit
        rows = rows[:limit]
        return self._conversation(row), [self._message(r) for r in rows], (rows[-1]["n"] if more and rows else None)

    @staticmethod
    def _message(r) -> chat_pb2.Message:
        m = chat_pb2.Message(
            id=str(r["id"]),
            role=r["role"],
            text=r["text"],
            image_key=r["image_key"],
            intents=list(r["intents"]),
            job_id=r["job_id"],
        )
        m.citations.extend(chat_pb2.Citation.FromString(bytes(c)) for c in r["citations"])
        if r["result"] is not None:
            m.result.ParseFromString(bytes(r["result"]))
            m.result.message_id = m.id  # stored before the message had its id
        _ts(m, "created_at", r["created_at"])
        return m

    async def conversation_runs(self, user_id: str, conversation_id: str, *, after_n: int, limit: int, stale_s: float):
        """The conversation, its summary, its run in progress and a page of its runs (oldest
        first, rolled-back ones left out) with their messages: (conversation, summary, active,
        runs, next cursor). Each run is a dict of the run's row, `question` and `answer` (the
        messages' rows or None)."""
        async with self.pool.acquire() as conn:
            conv = await self._owned(conn, conversation_id, user_id)
            runs = await conn.fetch(
                "SELECT r.*, q.id AS q_id, q.text AS q_text, a.id AS a_id, a.text AS a_text, a.result AS a_result, a.intents AS a_intents, a.citations AS a_citations"
                " FROM chat_runs r LEFT JOIN chat_messages q ON q.job_id = r.job_id AND q.role = 1"
                " LEFT JOIN chat_messages a ON a.job_id = r.job_id AND a.role = 2"
                " WHERE r.conversation_id = $1 AND r.n > $2 AND r.status <> 7 ORDER BY r.n LIMIT $3",
                conv["id"],
                after_n,
                limit + 1,
            )
            active = await conn.fetchval(
                "SELECT o.job_id FROM chat_runs o WHERE o.conversation_id = $1 AND o.status IN (1, 2, 3)"
                " AND o.updated_at > now() - make_interval(secs => $2) ORDER BY o.n DESC LIMIT 1",
                conv["id"],
                float(stale_s),
            )
        more = len(runs) > limit
        runs = runs[:limit]
        return self._conversation(conv), conv["summary"] or "", active, runs, (runs[-1]["n"] if more and runs else None)

    async def run_row(self, job_id: str):
        return await self.pool.fetchrow(
            "SELECT r.*, q.id AS q_id, q.text AS q_text, a.id AS a_id, a.text AS a_text, a.result AS a_result, a.intents AS a_intents, a.citations AS a_citations"
            " FROM chat_runs r LEFT JOIN chat_messages q ON q.job_id = r.job_id AND q.role = 1"
            " LEFT JOIN chat_messages a ON a.job_id = r.job_id AND a.role = 2 WHERE r.job_id = $1",
            job_id,
        )

    async def delete(self, user_id: str, conversation_id: str) -> None:
        async with self.pool.acquire() as conn:
            row = await self._owned(conn, conversation_id, user_id)
            await conn.execute("DELETE FROM chat_conversations WHERE id = $1", row["id"])
