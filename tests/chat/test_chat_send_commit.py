"""A worker that claims a new job before its SendMessage transaction committed (SendMessage
queues the job inside it) waits for the commit instead of failing the attempt: the turn is not
delayed by a retry, and the job does not spend one of its attempts. Found by tests/system/test_faults.py:
more than half the turns of a busy stack met it and took ECO2_JOBS_RETRY_DELAY_S (1 s) longer."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import grpc

from eco2.chat.v1 import chat_pb2, chat_pb2_grpc
from eco2.events.v1 import events_pb2, events_pb2_grpc
from support.identity import as_user
from support.servers import env, running

RETRY_DELAY_S = 8.0
COMMIT_LAG_S = 0.4


async def test_a_job_claimed_before_its_message_committed_runs_at_once(service_env, monkeypatch, caplog):
    from eco2.services.chat import postgres
    from eco2.services.chat.app import create as create_chat
    from eco2.services.events.app import create as create_events

    adding = postgres.ConversationStore.adding_user_message

    @contextlib.asynccontextmanager
    async def slow_commit(self, **kwargs):  # the job is queued at the end of the block: commit COMMIT_LAG_S later
        async with adding(self, **kwargs) as sent:
            yield sent
            await asyncio.sleep(COMMIT_LAG_S)

    monkeypatch.setattr(postgres.ConversationStore, "adding_user_message", slow_commit)
    kind = f"chat-commit-{uuid.uuid4().hex[:6]}"
    with env(service_env):
        events_app = create_events()
    async with running(events_app, metrics=False) as events:
        with env(
            {
                **service_env,
                "ECO2_EVENTS_ADDR": f"127.0.0.1:{events.port}",
                "ECO2_CHARACTER_ADDR": "127.0.0.1:1",
                "ECO2_LOCATION_ADDR": "127.0.0.1:1",
                "ECO2_IMAGES_ADDR": "127.0.0.1:1",
                "ECO2_CHAT_JOB_KIND": kind,
                "ECO2_CHAT_CLAIM_BLOCK_MS": "50",
                "ECO2_JOBS_RETRY_DELAY_S": str(RETRY_DELAY_S),
            }
        ):
            chat_app = create_chat()
        async with (
            running(chat_app, metrics=False) as chat,
            grpc.aio.insecure_channel(f"127.0.0.1:{chat.port}") as ch,
            grpc.aio.insecure_channel(f"127.0.0.1:{events.port}") as ech,
        ):
            user = f"u-commit-{uuid.uuid4().hex[:6]}"
            started = time.monotonic()
            sent = await chat_pb2_grpc.ChatServiceStub(ch).SendMessage(
                chat_pb2.SendMessageRequest(message="페트병 어떻게 버려?"), metadata=as_user(user), timeout=20
            )
            kinds = [
                e.kind
                async for e in events_pb2_grpc.EventServiceStub(ech).Subscribe(
                    events_pb2.SubscribeRequest(job_id=sent.job_id), metadata=as_user(user), timeout=30
                )
            ]
            took = time.monotonic() - started
    assert kinds[-1] == events_pb2.EVENT_KIND_DONE
    assert took < RETRY_DELAY_S, f"the turn waited for a retry: {took:.1f} s"
    assert not [r for r in caplog.records if r.getMessage() == "chat job failed"]  # no attempt spent


async def test_a_job_that_fails_while_valkey_is_down_is_left_for_a_re_claim(service_env, caplog):
    """A job that fails when Valkey is gone cannot be marked failed either; that second error
    escaped the worker's task ("Task exception was never retrieved", an ERROR log) instead of
    leaving the unacked job to be claimed again (found by tests/system/test_faults.py)."""
    from eco2.services.bus.jobs import JobQueue
    from eco2.services.chat.settings import ChatSettings
    from eco2.services.chat.worker import ChatWorkers
    from eco2.services.dataplane.urls import create_redis

    with env(service_env):
        settings = ChatSettings()
    live, gone = create_redis(service_env["REDIS_URL"]), create_redis("redis://127.0.0.1:1/0")
    kind = f"chat-gone-{uuid.uuid4().hex[:6]}"
    try:
        queue = JobQueue(live, kind, settings)
        await queue.enqueue(f"job-{kind}", b"{}")
        job = await queue.claim("worker-1", block_ms=1000)
        queue.redis = gone  # Valkey went away after the claim

        class Failing(ChatWorkers):
            async def handle(self, job):
                raise ConnectionError("valkey-server is gone")

        workers = Failing(queue=queue, redis=gone, sink=None, graph=None, deps=None, store=None, settings=settings)
        await workers._slots.acquire()  # as the claim loop does before running a job
        await workers._run(job)  # returns: nothing escapes the task
        assert "claimed again after the visibility timeout" in caplog.text
    finally:
        await live.aclose()
        await gone.aclose()
