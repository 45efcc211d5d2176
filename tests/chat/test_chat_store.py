"""The conversation store's statements against the real PostgreSQL: each step of a turn is one
statement (the send's transaction holds one), and what the single statements replaced still
holds: the history read with a run's start, one assistant message per job, a cancel recorded
first winning over the answer, concurrent sends numbered in the order they held their
conversation, and a send racing its own retry leaving one message."""

from __future__ import annotations

import asyncio
import uuid
from importlib import resources

import asyncpg
import pytest

from eco2.chat.v1 import chat_pb2
from eco2.services.dataplane.migrations import apply_migrations
from eco2.services.dataplane.urls import create_pg_pool
from eco2.services.runtime.errors import NotFound

STALE_S, LIMIT = 900.0, 40
#: what asyncpg sends on its own: transaction control, the pool's reset, type introspection
_OWN = ("BEGIN", "COMMIT", "ROLLBACK", "SELECT pg_advisory_unlock_all", "WITH RECURSIVE typeinfo_tree")


class Statements:
    """The statements the store's pool runs (asyncpg's query loggers), without asyncpg's own."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, record) -> None:
        query = record.query.strip()
        if not query.startswith(_OWN) and "'jit'" not in query:
            self.seen.append(query)

    def take(self) -> list[str]:
        seen, self.seen = self.seen, []
        return seen


@pytest.fixture(scope="module")
async def db(dataplane):
    from eco2.services.chat import postgres

    await apply_migrations(dataplane.database_url, "chat", resources.files(postgres.__package__) / "migrations")
    statements = Statements()

    async def init(conn) -> None:
        conn.add_query_logger(statements)

    pool = await create_pg_pool(dataplane.database_url, min_size=1, max_size=4, init=init)
    yield postgres.ConversationStore(pool), statements
    await pool.close()


@pytest.fixture
def store(db):
    return db[0]


def user() -> str:
    return f"store-{uuid.uuid4().hex[:8]}"


def job() -> str:
    return f"chat-{uuid.uuid4().hex}"


async def send(store, user_id: str, text: str, *, conversation_id: str = "", client_id: str = "", job_id: str = ""):
    async with store.adding_user_message(
        user_id=user_id,
        conversation_id=conversation_id,
        text=text,
        image_key="",
        client_message_id=client_id,
        job_id=job_id or job(),
        stale_s=STALE_S,
    ) as sent:
        return sent


async def answer(store, sent, user_id: str, text: str, **kwargs) -> str:
    return await store.add_assistant_message(
        conversation_id=sent.conversation_id,
        user_id=user_id,
        job_id=sent.job_id,
        text=text,
        intents=[1],
        citations=[],
        summary=kwargs.pop("summary", None),
        **kwargs,
    )


async def turn(store, user_id: str, question: str, reply: str, *, conversation_id: str = ""):
    sent = await send(store, user_id, question, conversation_id=conversation_id)
    await store.start_run(sent.job_id, fresh=True, stale_s=STALE_S, history_limit=LIMIT)
    await answer(store, sent, user_id, reply)
    return sent


async def conversation(store, cid: str) -> asyncpg.Record:
    return await store.pool.fetchrow("SELECT * FROM chat_conversations WHERE id = $1", uuid.UUID(cid))


async def until_waiting_on_a_lock(store, n: int = 1) -> None:
    """`n` backends of this database wait on a row or transaction lock."""

    async def waiting() -> None:
        while (
            await store.pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            < n
        ):
            await asyncio.sleep(0.01)

    await asyncio.wait_for(waiting(), 10)


async def test_each_step_of_a_turn_is_one_statement(db):
    store, statements = db
    u = user()
    first = await turn(
        store, u, "캔은 어떻게 버려?", "캔은 비우고 캔류로 배출해요."
    )  # the pool's connections prepare their statements
    await turn(store, u, "페트병은?", "라벨을 떼고 배출해요.", conversation_id=first.conversation_id)
    statements.take()

    sent = await send(store, u, "유리병은?", conversation_id=first.conversation_id)
    assert len(statements.take()) == 1
    run = await store.start_run(sent.job_id, fresh=True, stale_s=STALE_S, history_limit=LIMIT)
    assert len(statements.take()) == 1
    assert run.status == chat_pb2.RUN_STATUS_RUNNING and run.blocker is None
    summary, history = run.history
    assert summary == "" and [m["text"] for m in history] == [
        "캔은 어떻게 버려?",
        "캔은 비우고 캔류로 배출해요.",
        "페트병은?",
        "라벨을 떼고 배출해요.",
    ]
    await answer(store, sent, u, "유리병은 유리병류로 배출해요.")
    assert len(statements.take()) == 1

    new = await send(store, u, "종이팩은?")
    assert len(statements.take()) == 1
    assert (await conversation(store, new.conversation_id))["message_count"] == 1
    row = await conversation(store, first.conversation_id)
    assert (
        row["message_count"] == 6
        and row["last_preview"] == "유리병은 유리병류로 배출해요."
        and row["title"] == "캔은 어떻게 버려?"
    )


async def test_the_history_read_with_the_start_is_what_history_reads(store):
    u = user()
    first = await turn(store, u, "우유팩 어떻게 버려?", "종이팩으로 배출해요.")
    cid = first.conversation_id
    second = await turn(store, u, "건전지는?", "전용 수거함에 넣어요.", conversation_id=cid)
    n = await store.pool.fetchval("SELECT n FROM chat_messages WHERE job_id = $1 AND role = 2", second.job_id)
    # a summary covers the first two turns; a third turn is asked, and a fourth queued behind it
    third_sent = await send(store, u, "형광등은?", conversation_id=cid)
    await store.pool.execute(
        "UPDATE chat_conversations SET summary = '앞의 대화', summary_upto = $2 WHERE id = $1", uuid.UUID(cid), n - 1
    )
    queued = await send(store, u, "그럼 스티로폼은?", conversation_id=cid)
    for limit in (LIMIT, 1, 0):
        await store.pool.execute("UPDATE chat_runs SET status = 1 WHERE job_id = $1", third_sent.job_id)
        run = await store.start_run(third_sent.job_id, fresh=True, stale_s=STALE_S, history_limit=limit)
        assert run.history is not None
        assert run.history == await store.history(cid, before_job=third_sent.job_id, limit=limit)
    assert run.history[0] == "앞의 대화" and [m["text"] for m in run.history[1]] == []
    summary, history = (
        await store.start_run(third_sent.job_id, fresh=True, stale_s=STALE_S, history_limit=LIMIT)
    ).history
    assert [m["text"] for m in history] == ["전용 수거함에 넣어요."]  # not the queued question
    # the queued run waits for the third; once that is answered it moves after the answer
    run = await store.start_run(queued.job_id, fresh=True, stale_s=STALE_S, history_limit=LIMIT)
    assert run.blocker == third_sent.job_id and run.history is None
    await answer(store, third_sent, u, "형광등은 전용 수거함에.")
    assert await store.blocker_of(queued.job_id, stale_s=STALE_S) is None
    moved = await store.move_to_end(queued.job_id, history_limit=LIMIT)
    assert moved == await store.history(cid, before_job=queued.job_id, limit=LIMIT)
    assert [m["text"] for m in moved[1]] == ["전용 수거함에 넣어요.", "형광등은?", "형광등은 전용 수거함에."]
    last = await store.pool.fetchval("SELECT max(n) FROM chat_messages WHERE conversation_id = $1", uuid.UUID(cid))
    assert (
        await store.pool.fetchval("SELECT n FROM chat_messages WHERE job_id = $1 AND role = 1", queued.job_id) == last
    )  # the question is now the conversation's latest message


async def test_a_rerun_job_stores_one_assistant_message(store):
    u = user()
    sent = await send(store, u, "캔은?")
    await store.start_run(sent.job_id, fresh=True, stale_s=STALE_S, history_limit=LIMIT)
    first = await answer(store, sent, u, "캔류로 배출해요.", summary="요약", summary_upto=1)
    again = await answer(store, sent, u, "다시 만든 답", summary="다른 요약", summary_upto=99)
    together = await asyncio.gather(*(answer(store, sent, u, "동시에 만든 답") for _ in range(3)))
    assert first and again == first and set(together) == {first}
    texts = await store.pool.fetch("SELECT text FROM chat_messages WHERE job_id = $1 AND role = 2", sent.job_id)
    assert [r["text"] for r in texts] == ["캔류로 배출해요."]
    row = await conversation(store, sent.conversation_id)
    assert (row["message_count"], row["last_preview"], row["summary"], row["summary_upto"]) == (
        2,
        "캔류로 배출해요.",
        "요약",
        1,
    )


async def test_answers_that_race_for_one_job_store_one_message(store):
    """Two workers finishing one job at once (a re-claim while the first still ran): the second
    waits on the run's row lock and finds the first's message."""
    u = user()
    sent = await send(store, u, "병뚜껑은?")
    await store.start_run(sent.job_id, fresh=True, stale_s=STALE_S, history_limit=LIMIT)
    async with store.pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM chat_runs WHERE job_id = $1 FOR UPDATE", sent.job_id)
        racing = [asyncio.ensure_future(answer(store, sent, u, f"답 {i}")) for i in range(2)]
        await until_waiting_on_a_lock(store, 2)
    ids = await asyncio.gather(*racing)
    assert ids[0] and ids[0] == ids[1]
    assert (await conversation(store, sent.conversation_id))["message_count"] == 2


async def test_a_cancel_recorded_first_wins_over_the_answer(store):
    from eco2.services.chat.postgres import RunCancelled

    u = user()
    sent = await send(store, u, "건전지는?")
    await store.start_run(sent.job_id, fresh=True, stale_s=STALE_S, history_limit=LIMIT)
    cancel = await store.cancel_run(sent.job_id, u, chat_pb2.CANCEL_MODE_INTERRUPT)
    assert cancel.status == chat_pb2.RUN_STATUS_RUNNING
    before = await store.pool.fetchrow("SELECT * FROM chat_runs WHERE job_id = $1", sent.job_id)
    with pytest.raises(RunCancelled) as raised:
        await answer(store, sent, u, "늦게 온 답")
    assert raised.value.mode == chat_pb2.CANCEL_MODE_INTERRUPT
    assert await store.pool.fetchrow("SELECT * FROM chat_runs WHERE job_id = $1", sent.job_id) == before
    assert not await store.pool.fetchval(
        "SELECT count(*) FROM chat_messages WHERE job_id = $1 AND role = 2", sent.job_id
    )
    # the worker carries the cancel out: what was answered so far is kept, once
    kept = await store.finish_cancelled(
        job_id=sent.job_id, conversation_id=sent.conversation_id, user_id=u, mode=cancel.mode, text="지금까지"
    )
    again = await store.finish_cancelled(
        job_id=sent.job_id, conversation_id=sent.conversation_id, user_id=u, mode=cancel.mode, text="지금까지"
    )
    assert kept and again == kept
    assert await store.run_state(sent.job_id) == (chat_pb2.RUN_STATUS_CANCELLED, chat_pb2.CANCEL_MODE_INTERRUPT)
    assert (await conversation(store, sent.conversation_id))["message_count"] == 2


async def test_concurrent_sends_are_numbered_in_the_order_they_held_the_conversation(store):
    u = user()
    first = await turn(store, u, "캔은?", "캔류로.")
    cid = first.conversation_id
    a_job, b_job = job(), job()
    async with store.adding_user_message(
        user_id=u, conversation_id=cid, text="A", image_key="", client_message_id="", job_id=a_job
    ):
        b = asyncio.ensure_future(send(store, u, "B", conversation_id=cid, job_id=b_job))
        await until_waiting_on_a_lock(store)
    await b
    runs = await store.pool.fetch("SELECT job_id FROM chat_runs WHERE conversation_id = $1 ORDER BY n", uuid.UUID(cid))
    questions = await store.pool.fetch(
        "SELECT text FROM chat_messages WHERE conversation_id = $1 AND role = 1 ORDER BY n", uuid.UUID(cid)
    )
    assert [r["job_id"] for r in runs] == [first.job_id, a_job, b_job]
    assert [r["text"] for r in questions] == ["캔은?", "A", "B"]
    row = await conversation(store, cid)
    assert (row["message_count"], row["last_preview"]) == (4, "B")
    # a send numbers its turn once it holds the conversation, not when its statement starts
    async with store.pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM chat_conversations WHERE id = $1 FOR UPDATE", uuid.UUID(cid))
        c = asyncio.ensure_future(send(store, u, "C", conversation_id=cid))
        await until_waiting_on_a_lock(store)
        held = [
            await conn.fetchval(f"SELECT nextval(pg_get_serial_sequence('{table}', 'n'))")
            for table in ("chat_runs", "chat_messages")
        ]
    c = await c
    numbered = await store.pool.fetchrow(
        "SELECT r.n AS run, m.n AS message FROM chat_runs r JOIN chat_messages m ON m.job_id = r.job_id WHERE r.job_id = $1",
        c.job_id,
    )
    assert numbered["run"] > held[0] and numbered["message"] > held[1]


async def test_a_send_racing_its_retry_leaves_one_message_and_one_conversation(store):
    u = user()
    client_id = uuid.uuid4().hex
    async with store.adding_user_message(
        user_id=u, conversation_id="", text="첫 전송", image_key="", client_message_id=client_id, job_id=job()
    ) as won:
        retry = asyncio.ensure_future(send(store, u, "첫 전송", client_id=client_id))
        await until_waiting_on_a_lock(store)  # on the first send's uncommitted message
    lost = await retry
    assert lost.deduplicated and (lost.conversation_id, lost.message_id, lost.job_id) == (
        won.conversation_id,
        won.message_id,
        won.job_id,
    )
    assert await store.pool.fetchval("SELECT count(*) FROM chat_conversations WHERE user_id = $1", u) == 1
    assert (await conversation(store, won.conversation_id))["message_count"] == 1
    again = await send(store, u, "첫 전송", client_id=client_id, conversation_id=won.conversation_id)
    assert again.deduplicated and again.message_id == won.message_id


async def test_a_send_to_someone_elses_conversation_stores_nothing(store):
    owner = await turn(store, user(), "캔은?", "캔류로.")
    stranger = user()
    with pytest.raises(NotFound):
        await send(store, stranger, "남의 대화", conversation_id=owner.conversation_id)
    assert not await store.pool.fetchval("SELECT count(*) FROM chat_messages WHERE user_id = $1", stranger)
    assert (await conversation(store, owner.conversation_id))["message_count"] == 2


async def test_the_cancel_poll_reads_the_cancelled_runs_only(store):
    """CancelWatch's read of the cancels among a process's running jobs finds them through the
    index of cancelled runs (migration 0005), not a row per running job."""
    u = user()
    running = [await send(store, u, f"질문 {i}") for i in range(3)]
    await store.cancel_run(running[1].job_id, u, chat_pb2.CANCEL_MODE_ROLLBACK)
    # a busy process's running jobs (the table as big as a stack's, for the planner's statistics)
    busy = await store.pool.fetch(
        "INSERT INTO chat_runs (job_id, conversation_id, user_id, status)"
        " SELECT $1 || i, $2, $3, 2 FROM generate_series(1, 5000) AS i RETURNING job_id",
        f"{job()}-",
        uuid.UUID(running[0].conversation_id),
        u,
    )
    ids = [s.job_id for s in running] + [r["job_id"] for r in busy]
    assert await store.cancels_among(ids) == [(running[1].job_id, chat_pb2.CANCEL_MODE_ROLLBACK)]
    await store.pool.execute("ANALYZE chat_runs")
    plan = await store.pool.fetch(
        "EXPLAIN SELECT job_id, cancel_mode FROM chat_runs WHERE job_id = ANY($1::text[]) AND cancel_mode <> 0", ids
    )
    assert "chat_runs_cancelled" in "\n".join(r[0] for r in plan)
