"""Run control end to end: CancelRun (interrupt / rollback), double-texting policies and the
conversation state, against a real API-only ChatService and EventService in this process, chat
workers as separate `eco2 serve chat` processes (a cancel travels to another process), real
PostgreSQL and Valkey, and the OpenAI SDK against tests/support/fake_llm.py streaming slowly
enough to be stopped mid-answer."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid

import grpc
import pytest

from eco2.chat.v1 import chat_pb2, chat_pb2_grpc
from eco2.events.v1 import events_pb2, events_pb2_grpc
from eco2.services.runtime.errors import status_details, unpack_details
from support.fake_llm import FakeModelServer, Script
from support.fake_tools import FakeTools
from support.identity import as_user
from support.servers import env, running

TOKENS = [f"조각{i:02d} " for i in range(30)]
TERMINAL = (events_pb2.EVENT_KIND_DONE, events_pb2.EVENT_KIND_ERROR)
ENQUEUE, REJECT = chat_pb2.DOUBLE_TEXT_POLICY_ENQUEUE, chat_pb2.DOUBLE_TEXT_POLICY_REJECT
INTERRUPT_POLICY, ROLLBACK_POLICY = chat_pb2.DOUBLE_TEXT_POLICY_INTERRUPT, chat_pb2.DOUBLE_TEXT_POLICY_ROLLBACK
INTERRUPT, ROLLBACK = chat_pb2.CANCEL_MODE_INTERRUPT, chat_pb2.CANCEL_MODE_ROLLBACK


class Workers:
    """`eco2 serve chat` worker processes of the stack, started and killed by the tests."""

    def __init__(self, worker_env: dict[str, str]) -> None:
        self.env = worker_env
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self) -> asyncio.subprocess.Process:
        penv = {**os.environ, **self.env, "ECO2_CHAT_WORKERS": "8", "ECO2_CHAT_CLAIMERS": "2"}
        log = os.environ.get("ECO2_TEST_WORKER_LOG")  # a file for the workers' logs (INFO), when debugging
        if log:
            penv["ECO2_LOG_LEVEL"] = "INFO"
        with open(log or os.devnull, "ab") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "eco2.services.cli",
                "serve",
                "chat",
                env=penv,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
            )
        self.procs.append(proc)
        return proc

    async def kill(self, proc: asyncio.subprocess.Process) -> None:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 20)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


@pytest.fixture(scope="module")
async def stack(service_env):
    from eco2.services.chat.app import create as create_chat
    from eco2.services.events.app import create as create_events

    async with FakeModelServer(Script(tokens=TOKENS, first_token_s=0.05, token_s=0.08)) as fake, FakeTools() as tools:
        with env({**service_env, "ECO2_EVENTS_UNKNOWN_JOB_GRACE_S": "1"}):
            events_app = create_events()
        async with running(events_app, metrics=False) as events:
            worker_env = {
                **service_env,
                "ECO2_EVENTS_ADDR": f"127.0.0.1:{events.port}",
                "ECO2_CHARACTER_ADDR": "127.0.0.1:1",
                "ECO2_LOCATION_ADDR": "127.0.0.1:1",
                "ECO2_IMAGES_ADDR": "127.0.0.1:1",
                "ECO2_CHAT_MODEL": "gpt-5-mini",
                "ECO2_OPENAI_API_KEY": "sk-test",
                "ECO2_OPENAI_BASE_URL": fake.openai_base_url,
                "ECO2_CHAT_INTENT_MODE": "rules",
                "ECO2_WEB_SEARCH_BASE_URL": tools.base_url,
                "ECO2_WEB_SEARCH_API_KEY": "tvly-test",
                "ECO2_CHAT_JOB_KIND": f"chat-runs-{uuid.uuid4().hex[:6]}",
                "ECO2_JOBS_VISIBILITY_TIMEOUT_S": "3",
                "ECO2_CHAT_CLAIM_BLOCK_MS": "200",
                "ECO2_CHAT_TOKENS_PER_EVENT": "2",
            }
            with env({**worker_env, "ECO2_CHAT_WORKERS": "0", "ECO2_CHAT_CANCEL_WAIT_S": "10"}):
                api = create_chat()
            workers = Workers(worker_env)
            async with running(api, metrics=False) as chat:
                try:
                    await workers.start()
                    async with (
                        grpc.aio.insecure_channel(f"127.0.0.1:{chat.port}") as one,
                        grpc.aio.insecure_channel(f"127.0.0.1:{chat.port}") as two,
                        grpc.aio.insecure_channel(f"127.0.0.1:{events.port}") as ech,
                    ):
                        st = {
                            "chat": chat_pb2_grpc.ChatServiceStub(one),
                            "chat2": chat_pb2_grpc.ChatServiceStub(two),
                            "events": events_pb2_grpc.EventServiceStub(ech),
                            "app": api,
                            "fake": fake,
                            "tools": tools,
                            "workers": workers,
                            "kind": worker_env["ECO2_CHAT_JOB_KIND"],
                            "env": worker_env,
                        }
                        # the worker process is up (and has warmed up) once a first turn is answered
                        user = who()
                        sent = await st["chat"].SendMessage(
                            chat_pb2.SendMessageRequest(message="캔은 어떻게 버려?"), metadata=user
                        )
                        await asyncio.wait_for(Follower(st, sent.job_id, user).end(), 150)
                        yield st
                finally:
                    await workers.stop()


def who() -> tuple:
    return as_user(f"u-{uuid.uuid4().hex[:8]}")


def marker() -> str:
    return f"#runs{uuid.uuid4().hex[:8]}"


class Follower:
    """Follows a job's events (EventService.Subscribe) in the background until its terminal event."""

    def __init__(self, st: dict, job_id: str, user: tuple) -> None:
        self.events: list[events_pb2.Event] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.ensure_future(self._follow(st["events"], job_id, user))

    async def _follow(self, stub, job_id: str, user: tuple) -> None:
        async for e in stub.Subscribe(events_pb2.SubscribeRequest(job_id=job_id), metadata=user, timeout=150):
            async with self._changed:
                self.events.append(e)
                self._changed.notify_all()
            if e.kind in TERMINAL:
                return

    @property
    def tokens(self) -> list[str]:
        return [e.delta for e in self.events if e.kind == events_pb2.EVENT_KIND_TOKEN]

    async def until(self, predicate, timeout: float = 120) -> None:
        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self) or self._task.done())

        await asyncio.wait_for(wait(), timeout)
        assert predicate(self), self.events[-3:]

    async def until_tokens(self, n: int) -> None:
        await self.until(lambda f: len(f.tokens) >= n)

    async def end(self, timeout: float = 120) -> list[events_pb2.Event]:
        await asyncio.wait_for(asyncio.shield(self._task), timeout)
        return self.events


def terminal(events: list[events_pb2.Event]) -> events_pb2.Event:
    last = events[-1]
    assert last.kind in TERMINAL, last
    assert [e.kind for e in events].count(last.kind) == 1 and not [e for e in events[:-1] if e.kind in TERMINAL]
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs)), seqs
    return last


def assert_cancelled(events: list[events_pb2.Event], reason: str) -> None:
    last = terminal(events)
    assert (
        last.kind == events_pb2.EVENT_KIND_ERROR
        and last.error.code == 1
        and last.error.reason == reason
        and not last.error.retryable
    ), last


async def messages(st: dict, cid: str, user: tuple) -> list[chat_pb2.Message]:
    page = await st["chat"].GetConversation(
        chat_pb2.GetConversationRequest(conversation_id=cid, order=chat_pb2.MESSAGE_ORDER_OLDEST_FIRST), metadata=user
    )
    return list(page.messages)


async def run_status(st: dict, job_id: str) -> int:
    return await st["app"].pool.fetchval("SELECT status FROM chat_runs WHERE job_id = $1", job_id)


async def checkpoint_rows(st: dict, job_id: str) -> int:
    pool = st["app"].pool
    return sum(
        [
            await pool.fetchval(f"SELECT count(*) FROM {table} WHERE thread_id = $1", job_id)
            for table in ("checkpoints", "checkpoint_writes", "checkpoint_blobs")
        ]
    )


async def until_acked(st: dict, job_id: str, timeout: float = 60) -> None:
    """The job has left the queue (acknowledged): no worker can claim it again."""
    stream = f"jobs:{{{st['kind']}}}"

    async def left() -> None:
        while any(
            fields.get(b"j", b"").decode().startswith(job_id) for _id, fields in await st["app"].redis.xrange(stream)
        ):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(left(), timeout)


def model_streams(st: dict, mark: str) -> list[dict]:
    return [
        r for r in st["fake"].requests if r["body"].get("stream") and mark in json.dumps(r["body"], ensure_ascii=False)
    ]


def error_info(err: grpc.aio.AioRpcError):
    return unpack_details(status_details(err))


# ------------------------------------------------------------------ CancelRun


async def test_interrupt_stops_the_answer_keeps_what_was_streamed_and_the_job_is_not_run_again(stack):
    user, mark = who(), marker()
    sent = await stack["chat"].SendMessage(
        chat_pb2.SendMessageRequest(message=f"투명 페트병은 어떻게 버려? {mark}"), metadata=user
    )
    follow = Follower(stack, sent.job_id, user)
    await follow.until_tokens(3)
    reply = await stack["chat"].CancelRun(chat_pb2.CancelRunRequest(job_id=sent.job_id, mode=INTERRUPT), metadata=user)
    assert reply.status == chat_pb2.RUN_STATUS_CANCELLED and reply.mode == INTERRUPT and not reply.already_cancelled
    events = await follow.end()
    assert_cancelled(events, "RUN_CANCELLED")
    streamed = "".join(follow.tokens)
    assert 0 < len(streamed) < len("".join(TOKENS)), "stopped mid-answer"
    kept = await messages(stack, sent.conversation_id, user)
    assert [m.role for m in kept] == [chat_pb2.MESSAGE_ROLE_USER, chat_pb2.MESSAGE_ROLE_ASSISTANT]
    assert kept[1].text == streamed and kept[1].result.cancelled and kept[1].result.answer == streamed
    await until_acked(stack, sent.job_id)
    assert len(model_streams(stack, mark)) == 1, "the graph ran once"
    assert await run_status(stack, sent.job_id) == chat_pb2.RUN_STATUS_CANCELLED


async def test_rollback_removes_the_turn_and_its_checkpoints(stack):
    user = who()
    first = await stack["chat"].SendMessage(chat_pb2.SendMessageRequest(message="우유팩은 어떻게 버려?"), metadata=user)
    assert terminal(await Follower(stack, first.job_id, user).end()).kind == events_pb2.EVENT_KIND_DONE
    before = await messages(stack, first.conversation_id, user)
    sent = await stack["chat"].SendMessage(
        chat_pb2.SendMessageRequest(message="유리병은?", conversation_id=first.conversation_id), metadata=user
    )
    follow = Follower(stack, sent.job_id, user)
    await follow.until_tokens(2)
    assert await checkpoint_rows(stack, sent.job_id) > 0
    reply = await stack["chat"].CancelRun(chat_pb2.CancelRunRequest(job_id=sent.job_id, mode=ROLLBACK), metadata=user)
    assert reply.status == chat_pb2.RUN_STATUS_ROLLED_BACK
    assert_cancelled(await follow.end(), "RUN_ROLLED_BACK")
    assert [m.id for m in await messages(stack, first.conversation_id, user)] == [m.id for m in before]
    listed = await stack["chat"].ListConversations(chat_pb2.ListConversationsRequest(), metadata=user)
    assert (
        listed.conversations[0].message_count == 2
        and listed.conversations[0].last_message_preview == before[-1].text[:80]
    )
    await until_acked(stack, sent.job_id)
    assert await checkpoint_rows(stack, sent.job_id) == 0


async def test_a_cancel_whose_signal_was_lost_is_found_by_the_workers_poll(stack):
    """The cancel is recorded but its Pub/Sub message never sent (as if the API died right after
    its commit, or the subscription was down): the worker's read of PostgreSQL finds it
    (ECO2_CHAT_CANCEL_POLL_S) and stops the run."""
    user = who()
    sent = await stack["chat"].SendMessage(
        chat_pb2.SendMessageRequest(message="택배 상자는 어떻게 버려?"), metadata=user
    )
    follow = Follower(stack, sent.job_id, user)
    await follow.until_tokens(2)
    assert await stack["app"].pool.fetchval(
        "UPDATE chat_runs SET cancel_mode = $2 WHERE job_id = $1 AND status = 2 RETURNING 1", sent.job_id, INTERRUPT
    )
    assert_cancelled(await follow.end(), "RUN_CANCELLED")
    assert (
        len("".join(follow.tokens)) < len("".join(TOKENS))
        and await run_status(stack, sent.job_id) == chat_pb2.RUN_STATUS_CANCELLED
    )


async def test_cancel_of_another_users_job_is_not_found(stack):
    user = who()
    sent = await stack["chat"].SendMessage(chat_pb2.SendMessageRequest(message="건전지는 어디에 버려?"), metadata=user)
    follow = Follower(stack, sent.job_id, user)
    for job_id in (sent.job_id, "chat-0000000000"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stack["chat"].CancelRun(chat_pb2.CancelRunRequest(job_id=job_id), metadata=who())
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_info(err.value)["ErrorInfo"].reason == "JOB_NOT_FOUND"
    assert terminal(await follow.end()).kind == events_pb2.EVENT_KIND_DONE  # untouched


async def test_cancel_of_a_finished_job_fails_and_changes_nothing(stack):
    user = who()
    sent = await stack["chat"].SendMessage(chat_pb2.SendMessageRequest(message="형광등은 어떻게 버려?"), metadata=user)
    events = await Follower(stack, sent.job_id, user).end()
    assert terminal(events).kind == events_pb2.EVENT_KIND_DONE
    before = await messages(stack, sent.conversation_id, user)
    for mode in (INTERRUPT, ROLLBACK):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stack["chat"].CancelRun(chat_pb2.CancelRunRequest(job_id=sent.job_id, mode=mode), metadata=user)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        info = error_info(err.value)["ErrorInfo"]
        assert info.reason == "RUN_FINISHED" and info.metadata["status"] == "RUN_STATUS_SUCCEEDED"
    assert await messages(stack, sent.conversation_id, user) == before
    assert await run_status(stack, sent.job_id) == chat_pb2.RUN_STATUS_SUCCEEDED
    state = await stack["events"].GetJobState(events_pb2.GetJobStateRequest(job_id=sent.job_id), metadata=user)
    assert state.state.last_seq == events[-1].seq  # no event after DONE


async def test_cancel_twice_is_idempotent(stack):
    user = who()
    sent = await stack["chat"].SendMessage(
        chat_pb2.SendMessageRequest(message="스티로폼은 어떻게 버려?"), metadata=user
    )
    follow = Follower(stack, sent.job_id, user)
    await follow.until_tokens(2)
    calls = [
        stack["chat"].CancelRun(chat_pb2.CancelRunRequest(job_id=sent.job_id, mode=INTERRUPT), metadata=user),
        stack["chat2"].CancelRun(chat_pb2.CancelRunRequest(job_id=sent.job_id, mode=INTERRUPT), metadata=user),
    ]
    replies = await asyncio.gather(*calls)
    assert sorted(r.already_cancelled for r in replies) == [False, True]
    assert {r.status for r in replies} == {chat_pb2.RUN_STATUS_CANCELLED}
    events = await follow.end()
    assert_cancelled(events, "RUN_CANCELLED")
    kept = await messages(stack, sent.conversation_id, user)
    # once more, with another mode: the first cancel's outcome stands
    again = await stack["chat"].CancelRun(chat_pb2.CancelRunRequest(job_id=sent.job_id, mode=ROLLBACK), metadata=user)
    assert again.already_cancelled and again.mode == INTERRUPT and again.status == chat_pb2.RUN_STATUS_CANCELLED
    assert await messages(stack, sent.conversation_id, user) == kept
    state = await stack["events"].GetJobState(events_pb2.GetJobStateRequest(job_id=sent.job_id), metadata=user)
    assert state.state.last_seq == events[-1].seq
    assert (state.state.status, state.state.terminal) == (events_pb2.JOB_STATUS_CANCELLED, True)


async def test_rollback_while_a_tool_call_is_in_flight_drops_its_late_result(stack):
    tools = stack["tools"]
    tools.hold, tools.arrived = asyncio.Event(), asyncio.Event()
    calls_before = len(tools.calls)
    user = who()
    try:
        sent = await stack["chat"].SendMessage(
            chat_pb2.SendMessageRequest(message="재활용 최신 뉴스 검색해줘"), metadata=user
        )
        follow = Follower(stack, sent.job_id, user)
        await asyncio.wait_for(tools.arrived.wait(), 60)  # the web search is in flight, held by the fake
        reply = await stack["chat"].CancelRun(
            chat_pb2.CancelRunRequest(job_id=sent.job_id, mode=ROLLBACK), metadata=user
        )
        assert reply.status == chat_pb2.RUN_STATUS_ROLLED_BACK
        events = await follow.end()
        assert_cancelled(events, "RUN_ROLLED_BACK")
        assert not [
            e for e in events if e.node == "web_search" and e.stage_info.phase == events_pb2.STAGE_PHASE_FINISHED
        ]
    finally:
        tools.hold.set()  # the tool answers now, late

    async def answered() -> None:
        while len(tools.calls) == calls_before:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(answered(), 30)
    await until_acked(stack, sent.job_id)
    assert await checkpoint_rows(stack, sent.job_id) == 0
    assert await stack["app"].pool.fetchval("SELECT count(*) FROM chat_messages WHERE job_id = $1", sent.job_id) == 0
    assert await run_status(stack, sent.job_id) == chat_pb2.RUN_STATUS_ROLLED_BACK
    state = await stack["events"].GetJobState(events_pb2.GetJobStateRequest(job_id=sent.job_id), metadata=user)
    assert state.state.last_seq == events[-1].seq  # nothing after the terminal event
    tools.hold = None


async def test_interrupt_of_a_run_waiting_for_input_keeps_its_first_part(stack):
    user = who()
    sent = await stack["chat"].SendMessage(
        chat_pb2.SendMessageRequest(message="이 페트병 어떻게 분리해? 근처 수거함도 알려줘"), metadata=user
    )
    follow = Follower(stack, sent.job_id, user)
    await follow.until(lambda f: any(e.kind == events_pb2.EVENT_KIND_NEEDS_INPUT for e in f.events))
    state = await stack["chat"].GetConversationState(
        chat_pb2.GetConversationStateRequest(conversation_id=sent.conversation_id), metadata=user
    )
    assert state.active_run.job_id == sent.job_id and state.active_run.status == chat_pb2.RUN_STATUS_WAITING_INPUT
    assert state.active_run.pending_input.input_id == "location" and state.active_run.pending_input.prompt
    assert chat_pb2.INTENT_COLLECTION_POINT in state.active_run.intents and state.active_run.answer == "".join(
        follow.tokens
    )
    reply = await stack["chat"].CancelRun(chat_pb2.CancelRunRequest(job_id=sent.job_id), metadata=user)
    assert reply.status == chat_pb2.RUN_STATUS_CANCELLED and reply.mode == INTERRUPT
    assert_cancelled(await follow.end(), "RUN_CANCELLED")
    kept = await messages(stack, sent.conversation_id, user)
    assert (
        kept[-1].role == chat_pb2.MESSAGE_ROLE_ASSISTANT
        and kept[-1].text == "".join(follow.tokens)
        and kept[-1].result.cancelled
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:  # the question was taken back
        await stack["chat"].ProvideInput(
            chat_pb2.ProvideInputRequest(job_id=sent.job_id, input_id="location", declined=True), metadata=user
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    state = await stack["chat"].GetConversationState(
        chat_pb2.GetConversationStateRequest(conversation_id=sent.conversation_id), metadata=user
    )
    assert not state.HasField("active_run") and [r.status for r in state.runs] == [chat_pb2.RUN_STATUS_CANCELLED]


async def test_a_stream_chat_client_that_leaves_cancels_its_job_when_so_configured(stack):
    """ECO2_CHAT_CANCEL_ON_DISCONNECT: the StreamChat client goes away mid-answer; the job is
    cancelled as CancelRun's interrupt does, and what was answered until then is kept."""
    from eco2.services.chat.app import create as create_chat

    with env({**stack["env"], "ECO2_CHAT_WORKERS": "0", "ECO2_CHAT_CANCEL_ON_DISCONNECT": "true"}):
        api = create_chat()
    user = who()
    async with running(api, metrics=False) as chat, grpc.aio.insecure_channel(f"127.0.0.1:{chat.port}") as ch:
        job_id, tokens = "", 0
        call = chat_pb2_grpc.ChatServiceStub(ch).StreamChat(
            chat_pb2.StreamChatRequest(message="종이 상자는 어떻게 버려?"), metadata=user, timeout=120
        )
        async for e in call:
            job_id = e.job_id
            tokens += e.kind == events_pb2.EVENT_KIND_TOKEN
            if tokens == 2:
                call.cancel()  # the client leaves
                break
        events = await Follower(stack, job_id, user).end()
    assert_cancelled(events, "RUN_CANCELLED")
    streamed = "".join(e.delta for e in events if e.kind == events_pb2.EVENT_KIND_TOKEN)
    assert 0 < len(streamed) < len("".join(TOKENS))
    cid = await stack["app"].pool.fetchval("SELECT conversation_id FROM chat_runs WHERE job_id = $1", job_id)
    kept = await messages(stack, str(cid), user)
    assert kept[-1].role == chat_pb2.MESSAGE_ROLE_ASSISTANT and kept[-1].text == streamed and kept[-1].result.cancelled


async def test_cancel_checks_its_input(stack):
    for request, field in [
        (chat_pb2.CancelRunRequest(), "job_id"),
        (chat_pb2.CancelRunRequest(job_id="chat-x", mode=9), "mode"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stack["chat"].CancelRun(request, metadata=who())
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in [v.field for v in error_info(err.value)["BadRequest"].field_violations]


# ------------------------------------------------------------------ double-texting


async def test_reject_names_the_running_job_and_stores_nothing(stack):
    user = who()
    first = await stack["chat"].SendMessage(chat_pb2.SendMessageRequest(message="종이컵은 어떻게 버려?"), metadata=user)
    follow = Follower(stack, first.job_id, user)
    await follow.until_tokens(1)
    with pytest.raises(grpc.aio.AioRpcError) as err:  # from the second client
        await stack["chat2"].SendMessage(
            chat_pb2.SendMessageRequest(
                message="컵라면 용기는?", conversation_id=first.conversation_id, double_text_policy=REJECT
            ),
            metadata=user,
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(err.value)["ErrorInfo"]
    assert info.reason == "RUN_IN_PROGRESS" and info.metadata["job_id"] == first.job_id
    assert terminal(await follow.end()).kind == events_pb2.EVENT_KIND_DONE
    assert [m.text for m in await messages(stack, first.conversation_id, user)][0] == "종이컵은 어떻게 버려?"
    assert len(await messages(stack, first.conversation_id, user)) == 2
    # once the run is done the conversation takes the message
    again = await stack["chat2"].SendMessage(
        chat_pb2.SendMessageRequest(
            message="컵라면 용기는?", conversation_id=first.conversation_id, double_text_policy=REJECT
        ),
        metadata=user,
    )
    assert terminal(await Follower(stack, again.job_id, user).end()).kind == events_pb2.EVENT_KIND_DONE


async def test_concurrent_sends_from_two_clients_with_reject_let_exactly_one_in(stack):
    user = who()
    first = await stack["chat"].SendMessage(
        chat_pb2.SendMessageRequest(message="비닐봉지는 어떻게 버려?"), metadata=user
    )
    await Follower(stack, first.job_id, user).end()
    cid = first.conversation_id
    sends = [
        client.SendMessage(
            chat_pb2.SendMessageRequest(message=text, conversation_id=cid, double_text_policy=REJECT), metadata=user
        )
        for client, text in ((stack["chat"], "병뚜껑은?"), (stack["chat2"], "빨대는?"))
    ]
    results = await asyncio.gather(*sends, return_exceptions=True)
    ok = [r for r in results if isinstance(r, chat_pb2.SendMessageResponse)]
    rejected = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 1 and len(rejected) == 1, results
    assert (
        rejected[0].code() == grpc.StatusCode.FAILED_PRECONDITION
        and error_info(rejected[0])["ErrorInfo"].metadata["job_id"] == ok[0].job_id
    )
    assert terminal(await Follower(stack, ok[0].job_id, user).end()).kind == events_pb2.EVENT_KIND_DONE
    assert len(await messages(stack, cid, user)) == 4


async def test_enqueue_runs_the_second_message_after_the_first_with_its_answer_in_context(stack):
    user, mark_a, mark_b = who(), marker(), marker()
    first = await stack["chat"].SendMessage(
        chat_pb2.SendMessageRequest(message=f"알루미늄 캔은 어떻게 버려? {mark_a}"), metadata=user
    )
    follow_a = Follower(stack, first.job_id, user)
    await follow_a.until_tokens(1)
    second = await stack["chat2"].SendMessage(
        chat_pb2.SendMessageRequest(message=f"그럼 참치캔은? {mark_b}", conversation_id=first.conversation_id),
        metadata=user,
    )  # default: enqueue
    follow_b = Follower(stack, second.job_id, user)
    assert terminal(await follow_a.end()).kind == events_pb2.EVENT_KIND_DONE
    assert terminal(await follow_b.end()).kind == events_pb2.EVENT_KIND_DONE
    a_end = max(t["end"] or t["start"] for t in stack["fake"].timings[mark_a[1:]])
    assert min(t["start"] for t in stack["fake"].timings[mark_b[1:]]) >= a_end, "the second turn ran after the first"
    answer_a = "".join(follow_a.tokens)
    assert answer_a in json.dumps(model_streams(stack, mark_b)[0]["body"], ensure_ascii=False), (
        "the first answer is in the second turn's history"
    )
    kept = await messages(stack, first.conversation_id, user)
    assert [(m.role, m.job_id) for m in kept] == [
        (chat_pb2.MESSAGE_ROLE_USER, first.job_id),
        (chat_pb2.MESSAGE_ROLE_ASSISTANT, first.job_id),
        (chat_pb2.MESSAGE_ROLE_USER, second.job_id),
        (chat_pb2.MESSAGE_ROLE_ASSISTANT, second.job_id),
    ]


async def test_questions_waiting_behind_a_turn_are_listed_after_its_answer(stack):
    """Two messages enqueued behind a running turn: while it answers they follow its question;
    once its answer is stored they follow the answer, in the order they were sent, before either
    of their turns starts (the second waits for the first's whole answer)."""
    user = who()
    first = await stack["chat"].SendMessage(
        chat_pb2.SendMessageRequest(message="알루미늄 캔은 어떻게 버려?"), metadata=user
    )
    cid = first.conversation_id
    follow_a = Follower(stack, first.job_id, user)
    await follow_a.until_tokens(1)
    second, third = [
        await stack["chat2"].SendMessage(chat_pb2.SendMessageRequest(message=text, conversation_id=cid), metadata=user)
        for text in ("그럼 참치캔은?", "부탄가스는?")
    ]
    USER, ASSISTANT = chat_pb2.MESSAGE_ROLE_USER, chat_pb2.MESSAGE_ROLE_ASSISTANT
    while_answering = [(m.role, m.job_id) for m in await messages(stack, cid, user)]
    assert while_answering == [(USER, first.job_id), (USER, second.job_id), (USER, third.job_id)]
    assert terminal(await follow_a.end()).kind == events_pb2.EVENT_KIND_DONE
    after_answer = [(m.role, m.job_id) for m in await messages(stack, cid, user)]
    assert after_answer[:4] == [
        (USER, first.job_id),
        (ASSISTANT, first.job_id),
        (USER, second.job_id),
        (USER, third.job_id),
    ], after_answer
    for sent in (second, third):
        assert terminal(await Follower(stack, sent.job_id, user).end()).kind == events_pb2.EVENT_KIND_DONE
    assert [(m.role, m.job_id) for m in await messages(stack, cid, user)] == [
        (role, sent.job_id) for sent in (first, second, third) for role in (USER, ASSISTANT)
    ]


async def test_interrupt_policy_stops_the_current_run_and_answers_with_it_in_context(stack):
    user, mark_b = who(), marker()
    first = await stack["chat"].SendMessage(
        chat_pb2.SendMessageRequest(message="깨진 유리는 어떻게 버려?"), metadata=user
    )
    follow_a = Follower(stack, first.job_id, user)
    await follow_a.until_tokens(3)
    second = await stack["chat2"].SendMessage(
        chat_pb2.SendMessageRequest(
            message=f"거울은? {mark_b}", conversation_id=first.conversation_id, double_text_policy=INTERRUPT_POLICY
        ),
        metadata=user,
    )
    follow_b = Follower(stack, second.job_id, user)
    assert_cancelled(await follow_a.end(), "RUN_CANCELLED")
    assert terminal(await follow_b.end()).kind == events_pb2.EVENT_KIND_DONE
    partial = "".join(follow_a.tokens)
    assert 0 < len(partial) < len("".join(TOKENS))
    assert partial in json.dumps(model_streams(stack, mark_b)[0]["body"], ensure_ascii=False)
    kept = await messages(stack, first.conversation_id, user)
    assert [m.job_id for m in kept] == [first.job_id, first.job_id, second.job_id, second.job_id]
    assert kept[1].text == partial and kept[1].result.cancelled and kept[3].text == "".join(TOKENS)


async def test_rollback_policy_discards_the_current_run(stack):
    user, mark_b = who(), marker()
    first = await stack["chat"].SendMessage(chat_pb2.SendMessageRequest(message="폐건전지 어디에 버려?"), metadata=user)
    follow_a = Follower(stack, first.job_id, user)
    await follow_a.until_tokens(2)
    second = await stack["chat2"].SendMessage(
        chat_pb2.SendMessageRequest(
            message=f"보조배터리는? {mark_b}", conversation_id=first.conversation_id, double_text_policy=ROLLBACK_POLICY
        ),
        metadata=user,
    )
    follow_b = Follower(stack, second.job_id, user)
    assert_cancelled(await follow_a.end(), "RUN_ROLLED_BACK")
    assert terminal(await follow_b.end()).kind == events_pb2.EVENT_KIND_DONE
    assert "폐건전지" not in json.dumps(model_streams(stack, mark_b)[0]["body"], ensure_ascii=False), (
        "the discarded turn is not in the history"
    )
    assert [m.job_id for m in await messages(stack, first.conversation_id, user)] == [second.job_id, second.job_id]
    await until_acked(stack, first.job_id)
    assert await checkpoint_rows(stack, first.job_id) == 0


async def test_two_clients_interrupting_at_once_leave_one_answer(stack):
    user = who()
    first = await stack["chat"].SendMessage(
        chat_pb2.SendMessageRequest(message="플라스틱 용기 어떻게 버려?"), metadata=user
    )
    follow_a = Follower(stack, first.job_id, user)
    await follow_a.until_tokens(1)
    sends = [
        client.SendMessage(
            chat_pb2.SendMessageRequest(
                message=text, conversation_id=first.conversation_id, double_text_policy=INTERRUPT_POLICY
            ),
            metadata=user,
        )
        for client, text in ((stack["chat"], "페트병은?"), (stack["chat2"], "유리병은?"))
    ]
    b, c = await asyncio.gather(*sends)
    assert_cancelled(await follow_a.end(), "RUN_CANCELLED")
    ends = {job: terminal(await Follower(stack, job, user).end()) for job in (b.job_id, c.job_id)}
    kinds = sorted((e.kind, e.error.reason) for e in ends.values())
    assert kinds == [(events_pb2.EVENT_KIND_DONE, ""), (events_pb2.EVENT_KIND_ERROR, "RUN_CANCELLED")], kinds
    statuses = sorted([await run_status(stack, b.job_id), await run_status(stack, c.job_id)])
    assert statuses == [chat_pb2.RUN_STATUS_SUCCEEDED, chat_pb2.RUN_STATUS_CANCELLED]


async def test_an_unknown_policy_is_invalid(stack):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack["chat"].SendMessage(
            chat_pb2.SendMessageRequest(message="캔은?", double_text_policy=17), metadata=who()
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "double_text_policy" in [v.field for v in error_info(err.value)["BadRequest"].field_violations]


# ------------------------------------------------------------------ conversation state and paging


async def test_conversation_state_lists_runs_with_intents_facts_and_checkpoints(stack):
    user = who()
    first = await stack["chat"].SendMessage(
        chat_pb2.SendMessageRequest(message="투명 페트병은 어떻게 버려?"), metadata=user
    )
    await Follower(stack, first.job_id, user).end()
    second = await stack["chat"].SendMessage(
        chat_pb2.SendMessageRequest(message="종이팩은?", conversation_id=first.conversation_id), metadata=user
    )
    await Follower(stack, second.job_id, user).end()
    req = chat_pb2.GetConversationStateRequest(
        conversation_id=first.conversation_id, include_checkpoints=True, page_size=1
    )
    page1 = await stack["chat"].GetConversationState(req, metadata=user)
    assert (
        [r.job_id for r in page1.runs] == [first.job_id] and page1.next_page_token and not page1.HasField("active_run")
    )
    run = page1.runs[0]
    assert (
        run.status == chat_pb2.RUN_STATUS_SUCCEEDED
        and run.question == "투명 페트병은 어떻게 버려?"
        and run.answer == "".join(TOKENS)
    )
    assert list(run.intents) == [chat_pb2.INTENT_WASTE] and "rule:재활용폐기물_무색페트병#배출방법_공통" in [
        f.source_id for f in run.facts
    ]
    steps = [c.step for c in run.checkpoints]
    # the first checkpoint stored is the one after the first node (checkpoints.py)
    assert steps == sorted(steps) and steps[0] == 1 and not run.checkpoints[-1].next
    assert (
        "answer" in [n for c in run.checkpoints for n in c.nodes]
        and chat_pb2.INTENT_WASTE in run.checkpoints[-1].intents
    )
    page2 = await stack["chat"].GetConversationState(
        chat_pb2.GetConversationStateRequest(
            conversation_id=first.conversation_id, page_token=page1.next_page_token, page_size=1
        ),
        metadata=user,
    )
    assert (
        [r.job_id for r in page2.runs] == [second.job_id]
        and not page2.next_page_token
        and not page2.runs[0].checkpoints
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:  # the owner's only
        await stack["chat"].GetConversationState(
            chat_pb2.GetConversationStateRequest(conversation_id=first.conversation_id), metadata=who()
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_get_conversation_pages_oldest_first_as_it_is_read(stack):
    user = who()
    cid = ""
    for question in ("캔은?", "병은?", "종이는?"):
        sent = await stack["chat"].SendMessage(
            chat_pb2.SendMessageRequest(message=question, conversation_id=cid), metadata=user
        )
        cid = sent.conversation_id
        await Follower(stack, sent.job_id, user).end()
    pages, token = [], ""
    while True:
        page = await stack["chat"].GetConversation(
            chat_pb2.GetConversationRequest(
                conversation_id=cid, page_size=2, page_token=token, order=chat_pb2.MESSAGE_ORDER_OLDEST_FIRST
            ),
            metadata=user,
        )
        pages.append([m.text for m in page.messages])
        token = page.next_page_token
        if not token:
            break
    assert pages == [["캔은?", "".join(TOKENS)], ["병은?", "".join(TOKENS)], ["종이는?", "".join(TOKENS)]]
    newest = await stack["chat"].GetConversation(
        chat_pb2.GetConversationRequest(conversation_id=cid, page_size=2), metadata=user
    )  # the default stays newest first
    assert [m.text for m in newest.messages] == ["".join(TOKENS), "종이는?"]
    with pytest.raises(grpc.aio.AioRpcError) as err:  # a token keeps its order
        await stack["chat"].GetConversation(
            chat_pb2.GetConversationRequest(
                conversation_id=cid, page_token=newest.next_page_token, order=chat_pb2.MESSAGE_ORDER_OLDEST_FIRST
            ),
            metadata=user,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# ------------------------------------------------------------------ workers that die


async def test_a_cancelled_job_whose_worker_died_is_not_run_again(stack):
    """The worker is killed mid-answer and the job cancelled while no worker runs it: the next
    worker re-claims it, finds the cancel and carries it out without running the graph. A job
    still queued when it is cancelled ends at once and is never run."""
    workers = stack["workers"]
    user, mark, mark_q = who(), marker(), marker()
    sent = await stack["chat"].SendMessage(
        chat_pb2.SendMessageRequest(message=f"헌 옷은 어떻게 버려? {mark}"), metadata=user
    )
    follow = Follower(stack, sent.job_id, user)
    await follow.until_tokens(3)
    for proc in list(workers.procs):
        if proc.returncode is None:
            await workers.kill(proc)
    queued = await stack["chat"].SendMessage(
        chat_pb2.SendMessageRequest(message=f"신발은? {mark_q}"), metadata=user
    )  # nobody claims it now
    follow_q = Follower(stack, queued.job_id, user)
    reply_q = await stack["chat"].CancelRun(
        chat_pb2.CancelRunRequest(job_id=queued.job_id, mode=ROLLBACK), metadata=user
    )
    assert reply_q.status == chat_pb2.RUN_STATUS_ROLLED_BACK  # carried out at once: it had not started
    assert_cancelled(await follow_q.end(), "RUN_ROLLED_BACK")
    # no worker carries the cancel out until one is started: the reply waits up to ECO2_CHAT_CANCEL_WAIT_S
    cancel = asyncio.ensure_future(
        stack["chat"].CancelRun(chat_pb2.CancelRunRequest(job_id=sent.job_id, mode=INTERRUPT), metadata=user)
    )
    await workers.start()
    events = await follow.end(150)
    assert (await cancel).status in (chat_pb2.RUN_STATUS_CANCELLED, chat_pb2.RUN_STATUS_RUNNING)
    assert_cancelled(events, "RUN_CANCELLED")
    await until_acked(stack, sent.job_id, 150)
    await until_acked(stack, queued.job_id, 150)
    assert len(model_streams(stack, mark)) == 1, "the graph did not run again"
    assert (
        not model_streams(stack, mark_q) and await run_status(stack, queued.job_id) == chat_pb2.RUN_STATUS_ROLLED_BACK
    )
    kept = await messages(stack, sent.conversation_id, user)
    assert kept[-1].role == chat_pb2.MESSAGE_ROLE_ASSISTANT and kept[-1].result.cancelled
    assert kept[-1].text == "".join(follow.tokens), "what was streamed before the worker died is kept"
