"""A chat worker killed mid-answer (SIGKILL, a separate `eco2 serve chat` process): another
worker re-claims the job, resumes from the last LangGraph checkpoint, and the client
(EventService.Subscribe, resuming after the last seq it saw) gets every token exactly once and
DONE. And a StreamChat client that leaves: the job finishes and the history has the answer."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid

import grpc
import pytest

from eco2.chat.v1 import chat_pb2, chat_pb2_grpc
from eco2.events.v1 import events_pb2, events_pb2_grpc
from support.fake_llm import FakeModelServer, Script
from support.identity import as_user
from support.servers import env, running

TOKENS = [f"조각{i:02d} " for i in range(40)]
PER_EVENT = 2  # ECO2_CHAT_TOKENS_PER_EVENT of the workers (coalesced TOKEN events)


def grouped(pieces: list[str], per_event: int) -> list[str]:
    """The TOKEN deltas a worker emits: the first piece alone, then `per_event` pieces per event."""
    rest = pieces[1:]
    return pieces[:1] + ["".join(rest[i : i + per_event]) for i in range(0, len(rest), per_event)]


@pytest.fixture(scope="module")
async def crash_stack(service_env):
    """EventService + an API-only ChatService in-process; workers are started by the tests as processes."""
    from eco2.services.chat.app import create as create_chat
    from eco2.services.events.app import create as create_events

    async with FakeModelServer(Script(tokens=TOKENS, first_token_s=0.05, token_s=0.1)) as fake:
        with env(service_env):
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
                "ECO2_CHAT_JOB_KIND": f"chat-crash-{uuid.uuid4().hex[:6]}",
                "ECO2_JOBS_VISIBILITY_TIMEOUT_S": "2",
                "ECO2_CHAT_CLAIM_BLOCK_MS": "200",
                "ECO2_CHAT_TOKENS_PER_EVENT": str(PER_EVENT),
            }
            with env({**worker_env, "ECO2_CHAT_WORKERS": "0"}):
                api = create_chat()
            async with running(api, metrics=False) as chat:
                async with (
                    grpc.aio.insecure_channel(f"127.0.0.1:{chat.port}") as ch,
                    grpc.aio.insecure_channel(f"127.0.0.1:{events.port}") as ech,
                ):
                    yield {
                        "chat": chat_pb2_grpc.ChatServiceStub(ch),
                        "events": events_pb2_grpc.EventServiceStub(ech),
                        "env": worker_env,
                        "fake": fake,
                    }


async def start_worker(worker_env: dict) -> asyncio.subprocess.Process:
    penv = {**os.environ, **worker_env, "ECO2_CHAT_WORKERS": "4", "ECO2_CHAT_CLAIMERS": "1"}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "eco2.services.cli",
        "serve",
        "chat",
        env=penv,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def stop_worker(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def who() -> tuple:
    return as_user(f"u-{uuid.uuid4().hex[:8]}")


def done_result(event: events_pb2.Event) -> chat_pb2.ChatResult:
    assert event.kind == events_pb2.EVENT_KIND_DONE, event
    result = chat_pb2.ChatResult()
    assert event.done.result.Unpack(result)
    return result


async def test_a_worker_killed_mid_answer_is_replaced_and_the_client_sees_each_token_once(crash_stack):
    first = await start_worker(crash_stack["env"])
    second = None
    try:
        user = who()
        trace_id = uuid.uuid4().hex
        sent = await crash_stack["chat"].SendMessage(
            chat_pb2.SendMessageRequest(message="투명 페트병은 어떻게 버려?"),
            metadata=(*user, ("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01")),
        )
        seen: list[events_pb2.Event] = []

        # 1. watch until the answer is half streamed, then kill the worker (no chance to ack or clean up)
        async def until_tokens(n: int) -> None:
            async for e in crash_stack["events"].Subscribe(
                events_pb2.SubscribeRequest(job_id=sent.job_id, after_seq=0), metadata=user
            ):
                seen.append(e)
                if sum(1 for x in seen if x.kind == events_pb2.EVENT_KIND_TOKEN) >= n:
                    return
                assert e.kind not in (events_pb2.EVENT_KIND_DONE, events_pb2.EVENT_KIND_ERROR), e

        await asyncio.wait_for(until_tokens(10), 150)  # includes the worker process start on a busy machine
        first.send_signal(signal.SIGKILL)
        await first.wait()
        killed_at = sum(1 for x in seen if x.kind == events_pb2.EVENT_KIND_TOKEN)
        before_kill = len(seen)
        assert killed_at < len(grouped(TOKENS, PER_EVENT)), "the answer must not have finished before the kill"
        # 2. another worker takes the job over after the visibility timeout; the client resumes after its last seq
        second = await start_worker(crash_stack["env"])

        async def rest() -> None:
            async for e in crash_stack["events"].Subscribe(
                events_pb2.SubscribeRequest(job_id=sent.job_id, after_seq=seen[-1].seq), metadata=user
            ):
                seen.append(e)
                if e.kind in (events_pb2.EVENT_KIND_DONE, events_pb2.EVENT_KIND_ERROR):
                    return

        await asyncio.wait_for(rest(), 150)
        # the re-claimed job kept its request's trace: the second worker's events name it too
        assert len(seen) > before_kill and {e.traceparent.split("-")[1] for e in seen} == {trace_id}
        seqs = [e.seq for e in seen]
        assert seqs == sorted(set(seqs)), "seqs unique and increasing"
        result = done_result(seen[-1])
        tokens = [e.delta for e in seen if e.kind == events_pb2.EVENT_KIND_TOKEN]
        assert tokens == grouped(TOKENS, PER_EVENT), (
            "every token exactly once, in order, under the same event boundaries after the crash"
        )
        assert result.answer == "".join(TOKENS)
        streams = [
            r
            for r in crash_stack["fake"].requests
            if r["body"].get("stream") and "투명 페트병" in str(r["body"]["messages"])
        ]
        assert len(streams) >= 2, "the second worker asked the model again (the answer node had not been checkpointed)"
        # the earlier nodes were not run again: their STAGE events appear once
        intent_started = [
            e for e in seen if e.node == "intent" and e.stage_info.phase == events_pb2.STAGE_PHASE_STARTED
        ]
        assert len(intent_started) == 1
        # the history has exactly one answer
        page = await crash_stack["chat"].GetConversation(
            chat_pb2.GetConversationRequest(conversation_id=sent.conversation_id), metadata=user
        )
        assert [m.role for m in page.messages] == [chat_pb2.MESSAGE_ROLE_ASSISTANT, chat_pb2.MESSAGE_ROLE_USER]
        assert page.messages[0].text == result.answer
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
        if second is not None:
            await stop_worker(second)


async def test_a_client_that_leaves_does_not_lose_the_answer(crash_stack):
    worker = await start_worker(crash_stack["env"])
    try:
        user = who()
        job_id = ""
        tokens = 0
        async for e in crash_stack["chat"].StreamChat(
            chat_pb2.StreamChatRequest(message="캔은 어떻게 버려?"), metadata=user, timeout=150
        ):
            job_id = e.job_id
            tokens += e.kind == events_pb2.EVENT_KIND_TOKEN
            if tokens == 3:
                break  # the client goes away mid-answer (the stream is cancelled)
        assert job_id
        last = None

        async def until_done() -> None:
            nonlocal last
            async for e in crash_stack["events"].Subscribe(
                events_pb2.SubscribeRequest(job_id=job_id, after_seq=0), metadata=user
            ):
                last = e
                if e.kind in (events_pb2.EVENT_KIND_DONE, events_pb2.EVENT_KIND_ERROR):
                    return

        await asyncio.wait_for(until_done(), 150)
        result = done_result(last)
        assert result.answer == "".join(TOKENS)
        listed = await crash_stack["chat"].ListConversations(chat_pb2.ListConversationsRequest(), metadata=user)
        assert [c.id for c in listed.conversations] == [result.conversation_id]
        page = await crash_stack["chat"].GetConversation(
            chat_pb2.GetConversationRequest(conversation_id=result.conversation_id), metadata=user
        )
        assert page.messages[0].role == chat_pb2.MESSAGE_ROLE_ASSISTANT and page.messages[0].text == result.answer
    finally:
        await stop_worker(worker)
