"""The scan pipeline through the whole stack: real ScanService + ImageService + CharacterService +
EventService (+ the session's auth for job wristbands) on the embedded data plane.

Offline (no vision model): a hint that names the item classifies the scan, else the scan asks
which item it is and continues when answered; the photo is never presented as seen. With OpenAI
or Gemini configured: the real SDKs against tests/support/fake_llm.py, which decodes the image it
is sent and answers by its bytes. Every bad input of the issue is here; the failure paths that
need a service down or a worker killed are in test_scan_failures.py."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import asyncpg
import grpc
import pytest

from eco2.character.v1 import character_pb2, character_pb2_grpc
from eco2.events.v1 import events_pb2
from eco2.images.v1 import images_pb2, images_pb2_grpc
from eco2.scan.v1 import scan_pb2, scan_pb2_grpc
from eco2.services.runtime.errors import status_details, unpack_details
from support.fake_llm import FakeModelServer, png
from support.identity import as_user
from support.servers import env, running

E = events_pb2
PET = character_pb2.WASTE_CATEGORY_CLEAR_PET


@pytest.fixture(scope="module")
async def stack(service_env, session_dir):
    """Events, images, character, and three ScanServices (offline, OpenAI vision, Gemini vision),
    each on its own job queue. The offline one takes photos of at most 8 KiB (oversize test)."""
    from eco2.services.character.app import create as create_character
    from eco2.services.events.app import create as create_events
    from eco2.services.images.app import create as create_images
    from eco2.services.scan.app import create as create_scan

    data_dir = session_dir / f"scan-{uuid.uuid4().hex[:6]}"
    data_dir.mkdir()
    async with FakeModelServer() as oa, FakeModelServer() as gm:
        with env(service_env):
            events_app, character_app = create_events(), create_character()
        with env({**service_env, "ECO2_DATA_DIR": str(data_dir)}):
            images_app = create_images()
        async with (
            running(events_app, metrics=False) as events,
            running(images_app, metrics=False) as images,
            running(character_app, metrics=False) as character,
        ):
            base = {
                **service_env,
                "ECO2_EVENTS_ADDR": f"127.0.0.1:{events.port}",
                "ECO2_IMAGES_ADDR": f"127.0.0.1:{images.port}",
                "ECO2_CHARACTER_ADDR": f"127.0.0.1:{character.port}",
                "ECO2_SCAN_WORKERS": "8",
                "ECO2_SCAN_CLAIMERS": "1",
                "ECO2_SCAN_CLAIM_BLOCK_MS": "100",
            }
            configs = {
                "offline": {"ECO2_SCAN_IMAGE_MAX_BYTES": "8192"},
                "openai": {
                    "ECO2_SCAN_VISION_MODEL": "gpt-5-mini",
                    "ECO2_OPENAI_API_KEY": "sk-test",
                    "ECO2_OPENAI_BASE_URL": oa.openai_base_url,
                    "ECO2_SCAN_VISION_TIMEOUT_S": "1.5",
                },
                "gemini": {
                    "ECO2_SCAN_VISION_MODEL": "gemini-2.5-flash",
                    "ECO2_GEMINI_API_KEY": "g-test",
                    "ECO2_GEMINI_BASE_URL": gm.gemini_base_url,
                },
            }
            apps = {}
            for name, extra in configs.items():
                with env({**base, **extra, "ECO2_SCAN_JOB_KIND": f"scan-{name[:2]}-{uuid.uuid4().hex[:6]}"}):
                    apps[name] = create_scan()
            async with (
                running(apps["offline"], metrics=False) as s1,
                running(apps["openai"], metrics=False) as s2,
                running(apps["gemini"], metrics=False) as s3,
            ):
                async with (
                    grpc.aio.insecure_channel(f"127.0.0.1:{s1.port}") as c1,
                    grpc.aio.insecure_channel(f"127.0.0.1:{s2.port}") as c2,
                    grpc.aio.insecure_channel(f"127.0.0.1:{s3.port}") as c3,
                    grpc.aio.insecure_channel(f"127.0.0.1:{images.port}") as ci,
                    grpc.aio.insecure_channel(f"127.0.0.1:{character.port}") as cc,
                ):
                    yield {
                        "offline": (scan_pb2_grpc.ScanServiceStub(c1), None),
                        "openai": (scan_pb2_grpc.ScanServiceStub(c2), oa),
                        "gemini": (scan_pb2_grpc.ScanServiceStub(c3), gm),
                        "images": images_pb2_grpc.ImageServiceStub(ci),
                        "character": character_pb2_grpc.CharacterServiceStub(cc),
                    }


@pytest.fixture(scope="module")
async def db(dataplane):
    conn = await asyncpg.connect(dataplane.database_url)
    yield conn
    await conn.close()


def new_user() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"


async def upload(images, data: bytes, user: str, content_type: str = "image/png") -> str:
    async def parts():
        yield images_pb2.UploadRequest(
            metadata=images_pb2.UploadMetadata(
                channel=images_pb2.IMAGE_CHANNEL_SCAN, content_type=content_type, filename="photo.png"
            )
        )
        yield images_pb2.UploadRequest(chunk=data)

    return (await images.Upload(parts(), metadata=as_user(user))).image.key


def photo(fake: FakeModelServer | None, label: str, reply: dict | str | None = None) -> bytes:
    """A real PNG unique to this test; the fake vision model answers `reply` for it."""
    data = png(f"{label} {uuid.uuid4().hex}".encode())
    if fake is not None and reply is not None:
        fake.script.vision[hashlib.sha256(data).hexdigest()] = reply
    return data


async def stream(stub, user: str, *, until=(E.EVENT_KIND_DONE, E.EVENT_KIND_ERROR), **fields) -> list[events_pb2.Event]:
    """StreamScan's events up to the first of `until` (the stream goes on after NEEDS_INPUT)."""
    out = []
    call = stub.StreamScan(scan_pb2.StreamScanRequest(**fields), metadata=as_user(user))
    live = Live(call, aiter(call))
    async with asyncio.timeout(60):
        async for event in live.events:
            out.append(event)
            if event.kind in until:
                break
    if out[-1].kind not in (E.EVENT_KIND_DONE, E.EVENT_KIND_ERROR):
        out.append(live)  # the stream, for the test to read on
    return out


class Live:
    """A StreamScan stream still open (after a NEEDS_INPUT)."""

    def __init__(self, call, events) -> None:
        self.call, self.events = call, events

    async def next(self) -> events_pb2.Event:
        return await asyncio.wait_for(anext(self.events), 30)

    def cancel(self) -> None:
        self.call.cancel()


async def rest(live: Live) -> list[events_pb2.Event]:
    async with asyncio.timeout(60):
        return [e async for e in live.events]


def result_of(event: events_pb2.Event) -> scan_pb2.ScanResult:
    assert event.kind == E.EVENT_KIND_DONE, event
    result = scan_pb2.ScanResult()
    assert event.done.result.Unpack(result)
    return result


def stages(events) -> list[tuple[str, int]]:
    return [(e.node, e.stage_info.phase) for e in events if e.kind == E.EVENT_KIND_STAGE]


def text_of(events) -> str:
    return "".join(e.delta for e in events if e.kind == E.EVENT_KIND_TOKEN)


def error_of(err: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, list[str]]:
    details = unpack_details(status_details(err))
    bad = details.get("BadRequest")
    return err.code(), details["ErrorInfo"].reason, [v.field for v in bad.field_violations] if bad else []


async def refused(call) -> tuple[grpc.StatusCode, str, list[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return error_of(err.value)


async def owned(db, user: str) -> list[str]:
    rows = await db.fetch(
        "SELECT character_code FROM character_ownership WHERE user_id = $1 AND source = 'SCAN' ORDER BY character_code",
        user,
    )
    return [r["character_code"] for r in rows]


# ------------------------------------------------------------------ offline: the user's words


def _sample(name: str, labels: dict) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_hint_that_names_the_item_gets_the_rules_and_the_character(stack, db):
    stub, _ = stack["offline"]
    user = new_user()
    received = _sample("eco2_scan_rewards_total", {"outcome": "REWARD_OUTCOME_RECEIVED"})
    rules = _sample("eco2_scan_stage_seconds_count", {"stage": "rule", "outcome": "ok"})
    key = await upload(stack["images"], photo(None, "pet"), user)
    events = await stream(stub, user, image_key=key, hint="투명 생수병")

    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # every seq once, in order
    assert [e.job_kind for e in events] == [E.JOB_KIND_SCAN] * len(events)
    assert stages(events) == [
        ("queue", E.STAGE_PHASE_STARTED),
        ("vision", E.STAGE_PHASE_STARTED),
        ("vision", E.STAGE_PHASE_FINISHED),
        ("rule", E.STAGE_PHASE_STARTED),
        ("rule", E.STAGE_PHASE_FINISHED),
        ("answer", E.STAGE_PHASE_STARTED),
        ("answer", E.STAGE_PHASE_FINISHED),
        ("reward", E.STAGE_PHASE_STARTED),
        ("reward", E.STAGE_PHASE_FINISHED),
    ]
    tokens = [e for e in events if e.kind == E.EVENT_KIND_TOKEN]
    assert len(tokens) > 5 and all(e.stage == E.STAGE_ANSWER for e in tokens)
    result = result_of(events[-1])
    assert result.explanation == text_of(events)  # what was streamed is the answer, token by token
    lines = result.explanation.splitlines()
    assert (
        lines[0] == "사진 인식 모델이 설정되어 있지 않아 사진은 보지 못했어요."
        and lines[1] == "알려주신 '투명 생수병'(으)로 분류했어요."
    )
    assert result.basis == scan_pb2.SCAN_BASIS_HINT and result.vision_model == "" and result.image_key == key
    c = result.classification
    assert (c.category, c.major, c.item, c.rules_found) == (
        PET,
        "재활용폐기물",
        "투명 생수병",
        True,
    ) and c.confidence == pytest.approx(1.0)
    assert result.recyclable and [r.document_id for r in result.rules] == ["재활용폐기물_무색페트병"]
    assert (
        result.rules[0].steps == ["라벨과 내용물을 제거하고 물로 헹군 후 압착하여 뚜껑을 닫아 배출"]
        and "유색의 페트병: 플라스틱류로 배출" in result.rules[0].exceptions
    )
    assert result.instructions == result.rules[0].steps and list(result.warnings) == []
    assert (
        result.reward.outcome == character_pb2.REWARD_OUTCOME_RECEIVED and result.reward.character.code == "char-petty"
    )
    # the scan's metrics moved: one reward received, one timed rule lookup
    assert _sample("eco2_scan_rewards_total", {"outcome": "REWARD_OUTCOME_RECEIVED"}) == received + 1
    assert _sample("eco2_scan_stage_seconds_count", {"stage": "rule", "outcome": "ok"}) == rules + 1
    assert "페티" in result.reward.reason and result.completed_at.seconds > 0

    got = await stub.GetScan(scan_pb2.GetScanRequest(scan_id=result.scan_id), metadata=as_user(user))
    assert got.status == scan_pb2.SCAN_STATUS_DONE and got.job_id == events[0].job_id and got.result == result
    assert await owned(db, user) == ["char-petty"]
    collection = await stack["character"].ListCollection(character_pb2.ListCollectionRequest(), metadata=as_user(user))
    assert "char-petty" in [o.character.code for o in collection.characters]

    # a second scan of the same kind of item: the character is already owned, still one ownership
    again = result_of((await stream(stub, user, hint="페트병"))[-1])
    assert again.reward.outcome == character_pb2.REWARD_OUTCOME_ALREADY_OWNED and again.image_key == ""
    assert await owned(db, user) == ["char-petty"]


async def test_a_category_without_a_character_is_answered_without_a_reward(stack, db):
    stub, _ = stack["offline"]
    user = new_user()
    result = result_of((await stream(stub, user, hint="치킨 뼈"))[-1])
    assert result.classification.category == character_pb2.WASTE_CATEGORY_FOOD and not result.recyclable
    assert "재활용품이 아니에요" in result.explanation
    assert (
        result.reward.outcome == character_pb2.REWARD_OUTCOME_NOT_ELIGIBLE
        and result.reward.reason == "이 분류에 해당하는 캐릭터가 없어요."
    )
    assert await owned(db, user) == []


def scan_id_of(job_id: str) -> str:
    return job_id.removeprefix("scan-")  # a scan's job is named after it (docs/services/scan.md)


def provide(stub, user: str, job_id: str, input_id: str = "q1", **answer):
    return stub.ProvideScanInput(
        scan_pb2.ProvideScanInputRequest(job_id=job_id, input_id=input_id, **answer), metadata=as_user(user)
    )


async def test_a_photo_with_no_hint_asks_which_item_and_goes_on_when_answered(stack, db):
    stub, _ = stack["offline"]
    user = new_user()
    key = await upload(stack["images"], photo(None, "battery"), user)
    events = await stream(stub, user, until=(E.EVENT_KIND_NEEDS_INPUT,), image_key=key)
    call = events.pop()
    question = events[-1]
    assert question.kind == E.EVENT_KIND_NEEDS_INPUT and question.stage == E.STAGE_VISION
    ask = question.needs_input
    assert ask.kind == E.INPUT_KIND_CHOICE and ask.input_id == "q1" and "무엇인가요" in ask.prompt
    assert len(ask.choices) == 18 and (ask.choices[0].value, ask.choices[0].label) == ("WASTE_CATEGORY_PAPER", "종이")
    assert {c.value for c in ask.choices} == set(character_pb2.WasteCategory.keys()[1:])
    job_id = question.job_id
    waiting = await stub.GetScan(scan_pb2.GetScanRequest(scan_id=scan_id_of(job_id)), metadata=as_user(user))
    assert (
        waiting.status == scan_pb2.SCAN_STATUS_WAITING_INPUT
        and waiting.job_id == job_id
        and not waiting.HasField("result")
    )

    # a wrong question id, someone else's scan, a bad answer: refused, nothing stored
    assert await refused(provide(stub, user, job_id, "q9", category=character_pb2.WASTE_CATEGORY_BATTERY)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "INPUT_ID_MISMATCH",
        [],
    )
    assert await refused(provide(stub, new_user(), job_id, category=character_pb2.WASTE_CATEGORY_BATTERY)) == (
        grpc.StatusCode.NOT_FOUND,
        "SCAN_NOT_FOUND",
        [],
    )
    for bad, field in (
        ({}, "answer"),
        ({"category": 0}, "category"),
        ({"category": 999}, "category"),
        ({"text": "   "}, "text"),
        ({"text": "가" * 201}, "text"),
    ):
        assert await refused(provide(stub, user, job_id, **bad)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            [field],
        ), bad
    for bad, field in (({"job_id": ""}, "job_id"), ({"input_id": ""}, "input_id")):
        request = scan_pb2.ProvideScanInputRequest(**{"job_id": job_id, "input_id": "q1", "text": "건전지", **bad})
        assert await refused(stub.ProvideScanInput(request, metadata=as_user(user))) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            [field],
        )

    assert (await provide(stub, user, job_id, category=character_pb2.WASTE_CATEGORY_BATTERY)).job_id == job_id
    after = await rest(call)  # the same stream goes on with the continuation's events
    everything = events + after
    assert [e.seq for e in everything] == list(range(1, len(everything) + 1))
    assert [(e.kind, e.node) for e in everything[:4]] == [
        (E.EVENT_KIND_STAGE, "queue"),
        (E.EVENT_KIND_STAGE, "vision"),
        (E.EVENT_KIND_NEEDS_INPUT, "vision"),
        (E.EVENT_KIND_STAGE, "vision"),
    ]
    assert (
        stages(after)[0] == ("vision", E.STAGE_PHASE_FINISHED) and after[0].stage_info.message == "'전지' → 전지 (답변)"
    )
    result = result_of(after[-1])
    assert (
        result.basis == scan_pb2.SCAN_BASIS_ANSWER
        and result.classification.category == character_pb2.WASTE_CATEGORY_BATTERY
    )
    assert "답해 주신 '전지'(으)로 분류했어요." in result.explanation and "전용수거함" in result.explanation
    assert result.reward.character.code == "char-battery" and await owned(db, user) == ["char-battery"]
    # only the first answer counts
    assert await refused(provide(stub, user, job_id, text="건전지")) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SCAN_NOT_WAITING",
        [],
    )


async def test_an_ambiguous_hint_asks_between_its_candidates_and_words_can_answer(stack):
    stub, _ = stack["offline"]
    user = new_user()
    events = await stream(stub, user, until=(E.EVENT_KIND_NEEDS_INPUT,), hint="음료수 병")
    call = events.pop()
    ask = events[-1].needs_input
    assert [c.label for c in ask.choices] == ["무색페트병", "유리병"]  # what the hint matched, best first
    await provide(stub, user, events[-1].job_id, text="소주병")
    result = result_of((await rest(call))[-1])
    assert (
        result.basis == scan_pb2.SCAN_BASIS_ANSWER
        and result.classification.category == character_pb2.WASTE_CATEGORY_GLASS
        and result.classification.item == "소주병"
    )


async def test_answers_that_name_nothing_end_unclassified_without_a_reward(stack, db):
    stub, _ = stack["offline"]
    user = new_user()
    events = await stream(stub, user, until=(E.EVENT_KIND_NEEDS_INPUT,), hint="이거 뭐야")
    call = events.pop()
    job_id = events[-1].job_id
    for n in (1, 2, 3):  # ECO2_SCAN_MAX_QUESTIONS = 3
        await provide(stub, user, job_id, f"q{n}", text="몰라요")
        if n < 3:
            while True:  # the next question, on the same stream
                event = await call.next()
                if event.kind == E.EVENT_KIND_NEEDS_INPUT:
                    assert (
                        event.needs_input.input_id == f"q{n + 1}"
                        and "'몰라요'(으)로는 분류를 정하지 못했어요" in event.needs_input.prompt
                    )
                    break
    tail = await rest(call)
    result = result_of(tail[-1])
    assert (
        result.basis == scan_pb2.SCAN_BASIS_UNCLASSIFIED
        and result.classification.category == 0
        and not result.classification.rules_found
    )
    assert list(result.rules) == [] and "분리배출 방법을 안내하지 못했어요" in result.explanation
    assert (
        result.reward.outcome == character_pb2.REWARD_OUTCOME_NOT_ELIGIBLE
        and result.reward.reason == "어떤 물건인지 알 수 없어 보상을 드릴 수 없어요."
    )
    assert ("rule", E.STAGE_PHASE_SKIPPED) in stages(tail) and ("reward", E.STAGE_PHASE_SKIPPED) in stages(tail)
    assert await owned(db, user) == []


# ------------------------------------------------------------------ client_scan_id


async def test_a_retried_submit_is_the_same_scan_and_another_image_is_refused(stack, db):
    stub, _ = stack["offline"]
    user = new_user()
    first_key = await upload(stack["images"], photo(None, "can"), user)
    other_key = await upload(stack["images"], photo(None, "other"), user)
    request = scan_pb2.SubmitScanRequest(image_key=first_key, hint="콜라 캔", client_scan_id="retry-1")
    replies = await asyncio.gather(*(stub.SubmitScan(request, metadata=as_user(user)) for _ in range(5)))
    assert len({r.scan_id for r in replies}) == 1 and len({r.job_id for r in replies}) == 1
    assert sorted(r.deduplicated for r in replies) == [False, True, True, True, True]
    scan_id = replies[0].scan_id
    assert await db.fetchval("SELECT count(*) FROM scan_scans WHERE user_id = $1", user) == 1
    events = await stream(
        stub, user, image_key=first_key, hint="콜라 캔", client_scan_id="retry-1"
    )  # StreamScan of the same scan: its whole story
    assert events[0].seq == 1 and result_of(events[-1]).scan_id == scan_id
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    again = await stub.SubmitScan(request, metadata=as_user(user))
    assert (again.scan_id, again.deduplicated) == (scan_id, True)
    assert await owned(db, user) == ["char-metally"]
    assert await db.fetchval("SELECT count(*) FROM character_reward_grant WHERE user_id = $1", user) == 1

    for changed in ({"image_key": other_key}, {"hint": "참치캔"}):
        code, reason, _ = await refused(
            stub.SubmitScan(
                scan_pb2.SubmitScanRequest(
                    **{"image_key": first_key, "hint": "콜라 캔", "client_scan_id": "retry-1", **changed}
                ),
                metadata=as_user(user),
            )
        )
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CLIENT_SCAN_ID_REUSED")
    # client ids are per user
    assert not (
        await stub.SubmitScan(
            scan_pb2.SubmitScanRequest(hint="콜라 캔", client_scan_id="retry-1"), metadata=as_user(new_user())
        )
    ).deduplicated


# ------------------------------------------------------------------ bad input


async def test_another_users_image_and_an_unknown_one_are_the_same_not_found(stack):
    stub, _ = stack["offline"]
    owner, stranger = new_user(), new_user()
    key = await upload(stack["images"], photo(None, "private"), owner)
    unknown = "sha256:" + hashlib.sha256(b"never uploaded").hexdigest()
    answers = []
    for k in (key, unknown):
        for call in (
            stub.SubmitScan(scan_pb2.SubmitScanRequest(image_key=k, hint="페트병"), metadata=as_user(stranger)),
            _drain(stub.StreamScan(scan_pb2.StreamScanRequest(image_key=k), metadata=as_user(stranger))),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            code, reason, _ = error_of(err.value)
            answers.append((code, reason, err.value.details().replace(k, "KEY")))
    assert set(answers) == {
        (grpc.StatusCode.NOT_FOUND, "IMAGE_NOT_FOUND", "no image 'KEY'")
    }  # nothing tells the two apart


async def _drain(call) -> None:
    async for _ in call:
        pass


async def test_bad_requests_are_invalid_argument_with_the_fields(stack):
    stub, _ = stack["offline"]
    user = new_user()
    cases = [
        ({}, ["hint", "image_key"]),  # neither a photo nor words
        ({"hint": "   "}, ["hint", "image_key"]),
        ({"image_key": "not-a-key", "hint": "페트병"}, ["image_key"]),
        ({"image_key": "sha256:" + "A" * 64}, ["image_key"]),
        ({"hint": "가" * 201}, ["hint"]),
        ({"hint": "페트\x00병"}, ["hint"]),
        ({"hint": "페트병", "client_scan_id": "x" * 129}, ["client_scan_id"]),
        ({"hint": "페트병", "client_scan_id": "a\nb"}, ["client_scan_id"]),
    ]
    for fields, expected in cases:
        for call in (
            stub.SubmitScan(scan_pb2.SubmitScanRequest(**fields), metadata=as_user(user)),
            _drain(stub.StreamScan(scan_pb2.StreamScanRequest(**fields), metadata=as_user(user))),
        ):
            code, _reason, got = await refused(call)
            assert (code, sorted(set(got))) == (grpc.StatusCode.INVALID_ARGUMENT, expected), fields
    for scan_id in ("", "nope"):
        assert (await refused(stub.GetScan(scan_pb2.GetScanRequest(scan_id=scan_id), metadata=as_user(user))))[::2] == (
            grpc.StatusCode.INVALID_ARGUMENT,
            ["scan_id"],
        )


async def test_an_oversize_image_is_refused_with_the_limit(stack):
    stub, _ = stack["offline"]
    user = new_user()
    seed = uuid.uuid4().bytes
    big = png(
        b"".join(hashlib.sha256(seed + bytes([i, j])).digest() for i in range(4) for j in range(256))
    )  # 32 KiB that do not compress: over this service's 8 KiB
    assert len(big) > 8192
    key = await upload(stack["images"], big, user)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SubmitScan(scan_pb2.SubmitScanRequest(image_key=key), metadata=as_user(user))
    code, reason, fields = error_of(err.value)
    assert (code, reason, fields) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "IMAGE_TOO_LARGE", ["image_key"])
    assert unpack_details(status_details(err.value))["ErrorInfo"].metadata["limit_bytes"] == "8192"


async def test_not_an_image_never_becomes_a_scan(stack):
    """ImageService refuses bytes that are not an image (magic bytes), so no key exists to scan."""
    user = new_user()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await upload(stack["images"], "사진이 아니라 글이에요".encode() * 10, user)
    assert error_of(err.value)[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "CONTENT_TYPE_MISMATCH")


async def test_no_identity_no_scan_and_scans_are_private(stack):
    stub, _ = stack["offline"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SubmitScan(scan_pb2.SubmitScanRequest(hint="페트병"))
    assert error_of(err.value)[:2] == (grpc.StatusCode.UNAUTHENTICATED, "NO_IDENTITY")
    owner = new_user()
    reply = await stub.SubmitScan(scan_pb2.SubmitScanRequest(hint="페트병"), metadata=as_user(owner))
    for who, scan_id in ((new_user(), reply.scan_id), (owner, str(uuid.uuid4()))):
        assert await refused(stub.GetScan(scan_pb2.GetScanRequest(scan_id=scan_id), metadata=as_user(who))) == (
            grpc.StatusCode.NOT_FOUND,
            "SCAN_NOT_FOUND",
            [],
        )


# ------------------------------------------------------------------ vision (OpenAI, Gemini)


def reset(fake: FakeModelServer) -> None:
    fake.requests.clear()
    fake.images_seen.clear()
    fake.faults = []


@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_a_vision_model_classifies_the_photo_and_its_tags_become_warnings(stack, db, provider):
    stub, fake = stack[provider]
    reset(fake)
    user = new_user()
    data = photo(
        fake,
        "pet",
        {
            "item": "투명 생수 페트병",
            "category": "무색페트병",
            "confidence": 0.93,
            "situation_tags": ["비닐_라벨_부착", "내용물_있음", "없는_태그"],
        },
    )
    key = await upload(stack["images"], data, user)
    events = await stream(stub, user, image_key=key, hint="이거 어떻게 버려?")
    assert [(i["mime"], i["data"]) for i in fake.images_seen] == [
        ("image/png", data)
    ]  # read back through ImageService as this user
    body = fake.requests[-1]["body"]
    prompt = body["messages"][0]["content"] if provider == "openai" else body["systemInstruction"]["parts"][0]["text"]
    assert "무색페트병" in prompt and "<user_message>이거 어떻게 버려?</user_message>" in str(body)
    result = result_of(events[-1])
    model = "gpt-5-mini" if provider == "openai" else "gemini-2.5-flash"
    assert result.basis == scan_pb2.SCAN_BASIS_VISION and result.vision_model == model
    c = result.classification
    assert (c.category, c.item, list(c.situation_tags)) == (
        PET,
        "투명 생수 페트병",
        ["비닐_라벨_부착", "내용물_있음"],
    ) and c.confidence == pytest.approx(0.93)
    assert list(result.warnings) == ["내용물을 깨끗이 비우고 배출하세요.", "비닐 라벨을 떼어 내고 배출하세요."]
    assert (
        result.explanation.splitlines()[0] == "사진 속 물건: 투명 생수 페트병 (확신도 93%)"
        and "비닐 라벨을 떼어 내고" in result.explanation
    )
    assert ("vision", E.STAGE_PHASE_FINISHED) in stages(events) and "투명 생수 페트병 → 무색페트병 (확신도 93%)" in [
        e.stage_info.message for e in events
    ]
    assert result.reward.outcome == character_pb2.REWARD_OUTCOME_RECEIVED and await owned(db, user) == ["char-petty"]


async def test_a_low_confidence_is_a_guess_said_so_without_a_reward(stack, db):
    stub, fake = stack["openai"]
    reset(fake)
    user = new_user()
    key = await upload(
        stack["images"],
        photo(fake, "blurry", {"item": "페트병", "category": "무색페트병", "confidence": 0.31, "situation_tags": []}),
        user,
    )
    result = result_of((await stream(stub, user, image_key=key))[-1])
    assert (
        result.basis == scan_pb2.SCAN_BASIS_VISION
        and "확실하지 않아요. 추정: 페트병 (확신도 31%)" in result.explanation.splitlines()[0]
    )
    assert [r.document_id for r in result.rules] == [
        "재활용폐기물_무색페트병"
    ]  # the guess is answered, for the user to check
    assert (
        result.reward.outcome == character_pb2.REWARD_OUTCOME_NOT_ELIGIBLE
        and result.reward.reason == "사진 판별 확신도(31%)가 낮아 보상을 드릴 수 없어요."
    )
    assert await owned(db, user) == []


@pytest.mark.parametrize("fault", ["malformed", "outside", "timeout", "http500"])
async def test_a_vision_failure_falls_back_to_the_hint_honestly_without_a_reward(stack, db, fault):
    stub, fake = stack["openai"]
    reset(fake)
    user = new_user()
    replies = {
        "malformed": '{"item": "페트병", "category":',
        "outside": {"item": "우주선", "category": "우주쓰레기", "confidence": 0.99},
    }
    data = photo(fake, fault, replies.get(fault, {"item": "페트병", "category": "무색페트병", "confidence": 0.9}))
    if fault == "timeout":
        fake.faults = [("delay", 3.0), ("delay", 3.0)]  # both attempts outlast ECO2_SCAN_VISION_TIMEOUT_S=1.5
    elif fault == "http500":
        fake.faults = [500, 500]
    key = await upload(stack["images"], data, user)
    events = await stream(stub, user, image_key=key, hint="생수병")
    result = result_of(events[-1])
    note = {
        "malformed": "사진을 분석하지 못했어요(모델 응답 오류).",
        "outside": "사진에서 분리배출할 물건을 알아보지 못했어요.",
        "timeout": "사진을 분석하지 못했어요(응답 시간 초과).",
        "http500": "사진을 분석하지 못했어요(모델 응답 오류).",
    }[fault]
    assert ("vision", E.STAGE_PHASE_PROGRESS) in stages(events) and note in [e.stage_info.message for e in events]
    assert result.explanation.splitlines()[:2] == [note, "알려주신 '생수병'(으)로 분류했어요."]
    assert (
        result.basis == scan_pb2.SCAN_BASIS_HINT and result.classification.category == PET and result.vision_model == ""
    )
    assert (
        result.reward.outcome == character_pb2.REWARD_OUTCOME_NOT_ELIGIBLE
        and result.reward.reason == "사진으로 확인된 분류가 아니어서 보상을 드릴 수 없어요."
    )
    assert await owned(db, user) == []


async def test_a_vision_failure_without_a_hint_asks(stack):
    stub, fake = stack["gemini"]
    reset(fake)
    user = new_user()
    fake.faults = [500, 500]
    key = await upload(
        stack["images"], photo(fake, "nohint", {"item": "x", "category": "종이", "confidence": 0.9}), user
    )
    events = await stream(stub, user, until=(E.EVENT_KIND_NEEDS_INPUT,), image_key=key)
    events.pop().cancel()
    assert events[-1].kind == E.EVENT_KIND_NEEDS_INPUT and "사진을 분석하지 못했어요(모델 응답 오류)." in [
        e.stage_info.message for e in events
    ]


# ------------------------------------------------------------------ ClassifyPhoto: the vision stage alone (chat's photo path)


async def scans_of(db, user: str) -> int:
    return await db.fetchval("SELECT count(*) FROM scan_scans WHERE user_id = $1", user)


@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_classify_photo_is_the_vision_stage_and_nothing_else(stack, db, provider):
    stub, fake = stack[provider]
    reset(fake)
    user = new_user()
    data = photo(
        fake,
        "classify",
        {
            "item": "투명 생수 페트병",
            "category": "무색페트병",
            "confidence": 0.93,
            "situation_tags": ["비닐_라벨_부착", "없는_태그"],
        },
    )
    key = await upload(stack["images"], data, user)
    reply = await stub.ClassifyPhoto(
        scan_pb2.ClassifyPhotoRequest(image_key=key, hint="이거 어떻게 버려?"), metadata=as_user(user)
    )
    assert reply.configured and reply.vision_model == ("gpt-5-mini" if provider == "openai" else "gemini-2.5-flash")
    c = reply.classification
    assert (c.category, c.major, c.item, list(c.situation_tags), c.rules_found) == (
        PET,
        "재활용폐기물",
        "투명 생수 페트병",
        ["비닐_라벨_부착"],
        True,
    )
    assert c.confidence == pytest.approx(0.93)
    assert [(i["mime"], i["data"]) for i in fake.images_seen] == [
        ("image/png", data)
    ]  # read as this user, the same prompt as a scan's
    assert "<user_message>이거 어떻게 버려?</user_message>" in str(fake.requests[-1]["body"])
    assert await scans_of(db, user) == 0 and await owned(db, user) == []  # no scan, no reward
    # what the model does not know is said as such
    unknown = await upload(
        stack["images"], photo(fake, "rock", {"item": "돌멩이", "category": "미분류", "confidence": 0.8}), user
    )
    c = (
        await stub.ClassifyPhoto(scan_pb2.ClassifyPhotoRequest(image_key=unknown), metadata=as_user(user))
    ).classification
    assert (c.category, c.item, c.rules_found) == (character_pb2.WASTE_CATEGORY_UNSPECIFIED, "돌멩이", False)


async def test_classify_photo_offline_looks_at_nothing(stack):
    stub, _ = stack["offline"]
    user = new_user()
    key = await upload(stack["images"], photo(None, "offline"), user)
    reply = await stub.ClassifyPhoto(
        scan_pb2.ClassifyPhotoRequest(image_key=key, hint="이거 뭐야?"), metadata=as_user(user)
    )
    assert reply == scan_pb2.ClassifyPhotoResponse(configured=False)


async def test_classify_photo_refuses_what_a_scan_refuses(stack):
    stub, fake = stack["openai"]
    reset(fake)
    owner, stranger = new_user(), new_user()
    key = await upload(
        stack["images"], photo(fake, "mine", {"item": "x", "category": "종이", "confidence": 0.9}), owner
    )
    unknown = "sha256:" + hashlib.sha256(b"never uploaded").hexdigest()
    for k in (key, unknown):
        assert (
            await refused(stub.ClassifyPhoto(scan_pb2.ClassifyPhotoRequest(image_key=k), metadata=as_user(stranger)))
        )[:2] == (grpc.StatusCode.NOT_FOUND, "IMAGE_NOT_FOUND")
    for fields, expected in (
        ({}, ["image_key"]),
        ({"image_key": "not-a-key"}, ["image_key"]),
        ({"image_key": key, "hint": "가" * 201}, ["hint"]),
    ):
        code, _reason, got = await refused(
            stub.ClassifyPhoto(scan_pb2.ClassifyPhotoRequest(**fields), metadata=as_user(owner))
        )
        assert (code, got) == (grpc.StatusCode.INVALID_ARGUMENT, expected), fields
    assert (await refused(stub.ClassifyPhoto(scan_pb2.ClassifyPhotoRequest(image_key=key))))[:2] == (
        grpc.StatusCode.UNAUTHENTICATED,
        "NO_IDENTITY",
    )
    assert fake.requests == []  # no model saw anything


async def test_classify_photo_says_when_the_model_failed_after_the_policy(stack):
    stub, fake = stack["openai"]
    reset(fake)
    user = new_user()
    key = await upload(
        stack["images"], photo(fake, "fails", {"item": "x", "category": "종이", "confidence": 0.9}), user
    )
    fake.faults = [500, 500]
    code, reason, _ = await refused(
        stub.ClassifyPhoto(scan_pb2.ClassifyPhotoRequest(image_key=key), metadata=as_user(user))
    )
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "VISION_FAILED")
    assert len(fake.requests) == 2  # the vision stage's policy: one retry
