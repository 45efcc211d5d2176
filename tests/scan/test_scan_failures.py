"""Scans when something fails: CharacterService down (the scan completes, the reward is retried
and granted once, or reported), a dependency down at submit (UNAVAILABLE + RetryInfo, nothing
stored), a worker that dies at any point of a scan (in-process, at every event) and a worker
process killed mid-vision (SIGKILL): the re-run emits no duplicate event and grants no second
reward. Real services on the embedded data plane throughout."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid

import asyncpg
import grpc
import pytest
from test_scan import new_user, photo, result_of, upload

from eco2.character.v1 import character_pb2
from eco2.events.v1 import events_pb2, events_pb2_grpc
from eco2.scan.v1 import scan_pb2, scan_pb2_grpc
from eco2.services.runtime.errors import status_details, unpack_details
from support.fake_llm import FakeModelServer
from support.identity import as_user
from support.servers import env, running

E = events_pb2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
async def base(service_env, session_dir):
    """Events + images + character, and the env a ScanService needs to reach them."""
    from eco2.services.character.app import create as create_character
    from eco2.services.events.app import create as create_events
    from eco2.services.images.app import create as create_images

    data_dir = session_dir / f"scan-f-{uuid.uuid4().hex[:6]}"
    data_dir.mkdir()
    with env(service_env):
        events_app, character_app = create_events(), create_character()
    with env({**service_env, "ECO2_DATA_DIR": str(data_dir)}):
        images_app = create_images()
    async with (
        running(events_app, metrics=False) as events,
        running(images_app, metrics=False) as images,
        running(character_app, metrics=False) as character,
    ):
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{events.port}") as ech,
            grpc.aio.insecure_channel(f"127.0.0.1:{images.port}") as ich,
        ):
            from eco2.images.v1 import images_pb2_grpc

            yield {
                "env": {
                    **service_env,
                    "ECO2_EVENTS_ADDR": f"127.0.0.1:{events.port}",
                    "ECO2_IMAGES_ADDR": f"127.0.0.1:{images.port}",
                    "ECO2_CHARACTER_ADDR": f"127.0.0.1:{character.port}",
                    "ECO2_SCAN_CLAIMERS": "1",
                    "ECO2_SCAN_CLAIM_BLOCK_MS": "100",
                },
                "events": events_pb2_grpc.EventServiceStub(ech),
                "images": images_pb2_grpc.ImageServiceStub(ich),
                "service_env": service_env,
            }


@pytest.fixture(scope="module")
async def db(dataplane):
    conn = await asyncpg.connect(dataplane.database_url)
    yield conn
    await conn.close()


def scan_app(base, **extra):
    from eco2.services.scan.app import create

    with env({**base["env"], "ECO2_SCAN_JOB_KIND": f"scan-{uuid.uuid4().hex[:8]}", **extra}):
        return create()


async def history(events_stub, job_id: str, user: str) -> list[events_pb2.Event]:
    """Every event of a finished job, from the start, read as its owner (EventService.Subscribe)."""
    async with asyncio.timeout(60):
        return [
            e
            async for e in events_stub.Subscribe(E.SubscribeRequest(job_id=job_id, after_seq=0), metadata=as_user(user))
        ]


async def eventually(check, timeout_s: float = 60.0):
    """Poll `check()` until it returns something truthy (a condition, not a fixed sleep)."""
    async with asyncio.timeout(timeout_s):
        while not (found := await check()):
            await asyncio.sleep(0.05)
    return found


async def grants(db, user: str) -> list[tuple[str, str]]:
    rows = await db.fetch(
        "SELECT g.outcome, o.character_code FROM character_reward_grant g LEFT JOIN character_ownership o USING (user_id) WHERE g.user_id = $1",
        user,
    )
    return [(r["outcome"], r["character_code"]) for r in rows]


# ------------------------------------------------------------------ CharacterService down


async def test_a_reward_that_cannot_be_granted_now_is_retried_and_granted_once(base, db):
    port = free_port()  # nothing listens here until the test starts CharacterService on it
    app = scan_app(
        base,
        ECO2_CHARACTER_ADDR=f"127.0.0.1:{port}",
        ECO2_SCAN_WORKERS="4",
        ECO2_SCAN_REWARD_RETRY_DELAY_S="0.2",
        ECO2_SCAN_REWARD_MAX_ATTEMPTS="1000",
    )
    async with running(app, metrics=False) as server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = scan_pb2_grpc.ScanServiceStub(ch)
        user = new_user()
        events = [e async for e in stub.StreamScan(scan_pb2.StreamScanRequest(hint="우유팩"), metadata=as_user(user))]
        result = result_of(events[-1])  # the scan completes without its reward
        assert result.classification.category == character_pb2.WASTE_CATEGORY_PAPER_PACK and result.rules
        assert (
            result.reward.outcome == character_pb2.REWARD_OUTCOME_UNSPECIFIED
            and "자동으로 다시 시도" in result.reward.reason
        )
        assert ("reward", E.STAGE_PHASE_FAILED) in [
            (e.node, e.stage_info.phase) for e in events if e.kind == E.EVENT_KIND_STAGE
        ]

        def read():
            return stub.GetScan(scan_pb2.GetScanRequest(scan_id=result.scan_id), metadata=as_user(user))

        assert (await read()).result.reward.outcome == character_pb2.REWARD_OUTCOME_UNSPECIFIED

        from eco2.services.character.app import create as create_character

        with env({**base["service_env"], "ECO2_GRPC_PORT": str(port)}):
            character = create_character()
        async with running(character, metrics=False):

            async def granted():
                got = (await read()).result.reward
                return got if got.outcome == character_pb2.REWARD_OUTCOME_RECEIVED else None

            reward = await eventually(granted)
        assert reward.character.code == "char-factory" and "팩토리" in reward.reason
        assert await grants(db, user) == [("RECEIVED", "char-factory")]
        # the scan's own events are not rewritten: one terminal DONE, as first published
        assert [e.kind for e in await history(base["events"], events[0].job_id, user)].count(E.EVENT_KIND_DONE) == 1


async def test_a_reward_that_never_gets_through_is_reported(base, db):
    app = scan_app(
        base,
        ECO2_CHARACTER_ADDR=f"127.0.0.1:{free_port()}",
        ECO2_SCAN_WORKERS="4",
        ECO2_SCAN_REWARD_RETRY_DELAY_S="0.05",
        ECO2_SCAN_REWARD_MAX_ATTEMPTS="2",
    )
    async with running(app, metrics=False) as server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = scan_pb2_grpc.ScanServiceStub(ch)
        user = new_user()
        reply = await stub.SubmitScan(scan_pb2.SubmitScanRequest(hint="건전지"), metadata=as_user(user))

        async def reported():
            got = await stub.GetScan(scan_pb2.GetScanRequest(scan_id=reply.scan_id), metadata=as_user(user))
            return got if got.HasField("result") and "지급되지 않았어요" in got.result.reward.reason else None

        got = await eventually(reported)
        assert (
            got.status == scan_pb2.SCAN_STATUS_DONE
            and got.result.reward.outcome == character_pb2.REWARD_OUTCOME_UNSPECIFIED
        )
        assert (
            await db.fetchval("SELECT reward_pending FROM scan_scans WHERE id = $1", uuid.UUID(reply.scan_id)) is False
        )
        assert await grants(db, user) == []


# ------------------------------------------------------------------ a dependency down at submit


@pytest.mark.parametrize("down", ["auth", "images"])
async def test_a_dependency_down_at_submit_is_unavailable_with_retry_info_and_stores_nothing(base, db, down):
    dead = f"127.0.0.1:{free_port()}"
    app = scan_app(base, ECO2_SCAN_WORKERS="0", **{f"ECO2_{down.upper()}_ADDR": dead})
    async with running(app, metrics=False) as server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = scan_pb2_grpc.ScanServiceStub(ch)
        user = new_user()
        key = "sha256:" + uuid.uuid4().hex * 2
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SubmitScan(
                scan_pb2.SubmitScanRequest(
                    image_key=key if down == "images" else "", hint="페트병", client_scan_id="down-1"
                ),
                metadata=as_user(user),
            )
        details = unpack_details(status_details(err.value))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "RetryInfo" in details
        assert details["ErrorInfo"].reason == {"auth": "JOB_IDENTITY_UNAVAILABLE", "images": "IMAGES_UNAVAILABLE"}[down]
        assert await db.fetchval("SELECT count(*) FROM scan_scans WHERE user_id = $1", user) == 0


# ------------------------------------------------------------------ a worker dies at every point


class Crash(Exception):
    """The worker 'dies': nothing after this point of the run happens."""


class DyingSink:
    """The real publisher, until `budget` events went out: then the rest of that batch is lost and the run dies."""

    def __init__(self, sink, budget: int) -> None:
        self.sink, self.budget = sink, budget

    async def publish_many(self, events):
        allowed = events[: self.budget]
        if allowed:
            await self.sink.publish_many(allowed)
        self.budget -= len(allowed)
        if len(allowed) < len(events):
            raise Crash()
        return [True] * len(events)


def shape(events: list[events_pb2.Event]) -> list[tuple]:
    """What a client sees, without times, ids and durations."""
    return [
        (e.seq, e.kind, e.node, e.stage_info.phase, e.stage_info.message, e.delta, e.needs_input.input_id)
        for e in events
    ]


@pytest.mark.parametrize("flow", ["hint", "question"])
async def test_a_worker_that_dies_at_any_event_leaves_no_duplicate_and_one_reward(base, db, flow):
    """API-only service; the test runs the pipeline itself, killing the run after 0, 1, 2, ...
    published events, then once to the end. Each crashed scan ends exactly like one run through."""
    from eco2.services.scan.emitter import Emitter

    app = scan_app(base, ECO2_SCAN_WORKERS="0")
    async with running(app, metrics=False) as server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = scan_pb2_grpc.ScanServiceStub(ch)
        pipeline, store, sink = app.workers.pipeline, app.workers.store, app.sink

        async def submit(user: str) -> scan_pb2.SubmitScanResponse:
            request = (
                scan_pb2.SubmitScanRequest(hint="택배 상자")
                if flow == "hint"
                else scan_pb2.SubmitScanRequest(hint="이거 뭐야")
            )
            return await stub.SubmitScan(request, metadata=as_user(user))

        async def run(scan_id: str, budget: int | None) -> bool:
            """One run; True when it died."""
            record = await store.get(scan_id)
            em = Emitter(sink if budget is None else DyingSink(sink, budget), record.job_id, tokens_per_event=4)
            try:
                await pipeline.run(record, em)
            except Crash:
                return True
            return False

        async def answer(user: str, reply) -> None:
            if flow == "question":  # the continuation is what dies
                await stub.ProvideScanInput(
                    scan_pb2.ProvideScanInputRequest(job_id=reply.job_id, input_id="q1", text="택배 상자"),
                    metadata=as_user(user),
                )

        from eco2.services.runtime.context import act_as
        from support.identity import wristband

        reference_user = new_user()
        act_as(wristband(reference_user))
        reference = await submit(reference_user)
        await run(reference.scan_id, None)
        await answer(reference_user, reference)
        await run(reference.scan_id, None)
        expected = shape(await history(base["events"], reference.job_id, reference_user))
        assert expected[-1][1] == E.EVENT_KIND_DONE and await grants(db, reference_user) == [("RECEIVED", "char-paepy")]

        for budget in range(len(expected) - 1):  # a run publishes every event but QUEUED: it dies before each of them
            user = new_user()
            act_as(wristband(user))
            reply = await submit(user)
            if flow == "question":
                await run(reply.scan_id, None)
                await answer(user, reply)
            assert await run(reply.scan_id, budget)
            await run(reply.scan_id, None)  # the re-run after the crash
            got = shape(await history(base["events"], reply.job_id, user))
            assert got == expected, f"died after {budget} events"
            assert await grants(db, user) == [("RECEIVED", "char-paepy")]


# ------------------------------------------------------------------ a worker process killed mid-vision


async def start_worker(worker_env: dict) -> asyncio.subprocess.Process:
    penv = {**os.environ, **worker_env, "ECO2_SCAN_WORKERS": "4", "ECO2_GRPC_PORT": "0", "ECO2_METRICS_PORT": "0"}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "eco2.services.cli",
        "serve",
        "scan",
        env=penv,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def test_a_worker_killed_mid_vision_is_replaced_without_a_duplicate_event_or_reward(base, db):
    async with FakeModelServer() as fake:
        worker_env = {
            **base["env"],
            "ECO2_SCAN_JOB_KIND": f"scan-kill-{uuid.uuid4().hex[:6]}",
            "ECO2_SCAN_VISION_MODEL": "gpt-5-mini",
            "ECO2_OPENAI_API_KEY": "sk-test",
            "ECO2_OPENAI_BASE_URL": fake.openai_base_url,
            "ECO2_JOBS_VISIBILITY_TIMEOUT_S": "2",
            "ECO2_LOG_LEVEL": "ERROR",
        }
        with env({**worker_env, "ECO2_SCAN_WORKERS": "0"}):
            from eco2.services.scan.app import create

            api = create()
        async with running(api, metrics=False) as server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = scan_pb2_grpc.ScanServiceStub(ch)
            user = new_user()
            key = await upload(
                base["images"],
                photo(
                    fake,
                    "killed",
                    {"item": "유리병", "category": "유리병", "confidence": 0.95, "situation_tags": ["유리병_깨짐"]},
                ),
                user,
            )
            fake.faults = [
                ("delay", 5.0)
            ]  # the first worker's vision call hangs until the worker is killed (well before 5 s)
            reply = await stub.SubmitScan(scan_pb2.SubmitScanRequest(image_key=key), metadata=as_user(user))
            first = await start_worker(worker_env)
            try:
                await eventually(lambda: _true(len(fake.requests) >= 1))  # the scan is in its vision stage
                first.send_signal(signal.SIGKILL)
                await first.wait()
            finally:
                if first.returncode is None:
                    first.kill()
                    await first.wait()
            second = await start_worker(worker_env)
            try:
                events = await history(base["events"], reply.job_id, user)
            finally:
                second.send_signal(signal.SIGTERM)
                await asyncio.wait_for(second.wait(), 30)
        assert len(fake.requests) == 2  # the photo was looked at again by the second worker
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert [(e.node, e.stage_info.phase) for e in events if e.kind == E.EVENT_KIND_STAGE].count(
            ("vision", E.STAGE_PHASE_STARTED)
        ) == 1
        result = result_of(events[-1])
        assert (
            result.basis == scan_pb2.SCAN_BASIS_VISION
            and result.classification.category == character_pb2.WASTE_CATEGORY_GLASS
        )
        assert any("깨진 조각" in w for w in result.warnings)
        assert result.reward.outcome == character_pb2.REWARD_OUTCOME_RECEIVED and await grants(db, user) == [
            ("RECEIVED", "char-glassy")
        ]


async def _true(value: bool) -> bool:
    return value
