"""Character rewards and collections over real gRPC, real Postgres and real Valkey Pub/Sub."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import grpc
import pytest

from eco2.character.v1 import character_pb2 as pb
from eco2.character.v1 import character_pb2_grpc
from eco2.services.runtime.errors import status_details, unpack_details
from support.identity import as_user
from support.servers import env, running


@pytest.fixture(scope="module")
async def character(service_env):
    from eco2.services.character.app import create

    with env(service_env):
        app = create()
    async with running(app) as server:
        yield server


@pytest.fixture(scope="module")
async def stub(character):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{character.port}") as ch:
        yield character_pb2_grpc.CharacterServiceStub(ch)


@pytest.fixture(scope="module")
async def db(dataplane):
    conn = await asyncpg.connect(dataplane.database_url)
    yield conn
    await conn.close()


def user() -> tuple[str, tuple[tuple[str, str], ...]]:
    uid = f"u-{uuid.uuid4()}"
    return uid, as_user(uid)


def pet(**overrides) -> pb.Classification:
    fields = dict(
        category=pb.WASTE_CATEGORY_CLEAR_PET, major="재활용폐기물", item="음료PET병", rules_found=True, confidence=0.93
    )
    fields.update(overrides)
    return pb.Classification(**fields)


def grant(classification=None, key=None, source=pb.REWARD_SOURCE_SCAN) -> pb.GrantRewardRequest:
    req = pb.GrantRewardRequest(source=source, idempotency_key=str(uuid.uuid4()) if key is None else key)
    if classification is not None:
        req.classification.CopyFrom(classification)
    return req


def violations(err: grpc.aio.AioRpcError) -> list[str]:
    return [v.field for v in unpack_details(status_details(err))["BadRequest"].field_violations]


async def test_complete_classification_receives_its_character(stub):
    _, md = user()
    reply = await stub.GrantReward(grant(pet()), metadata=md)
    assert reply.reward.outcome == pb.REWARD_OUTCOME_RECEIVED
    assert reply.reward.character.code == "char-petty"
    assert "페티" in reply.reward.reason


async def test_same_key_gives_the_same_answer_and_another_key_already_owned(stub):
    _, md = user()
    req = grant(pet(), key="scan-123")
    first = await stub.GrantReward(req, metadata=md)
    again = await stub.GrantReward(req, metadata=md)
    assert first == again and first.reward.outcome == pb.REWARD_OUTCOME_RECEIVED
    other = await stub.GrantReward(grant(pet(), key="scan-456"), metadata=md)
    assert other.reward.outcome == pb.REWARD_OUTCOME_ALREADY_OWNED
    assert other.reward.character.code == "char-petty"


async def test_keys_are_per_user(stub):
    _, md1 = user()
    _, md2 = user()
    a = await stub.GrantReward(grant(pet(), key="shared-key"), metadata=md1)
    b = await stub.GrantReward(grant(pet(), key="shared-key"), metadata=md2)
    assert a.reward.outcome == b.reward.outcome == pb.REWARD_OUTCOME_RECEIVED


async def test_no_rules_found_is_not_eligible(stub, db):
    uid, md = user()
    reply = await stub.GrantReward(grant(pet(rules_found=False)), metadata=md)
    assert reply.reward.outcome == pb.REWARD_OUTCOME_NOT_ELIGIBLE
    assert reply.reward.character.code == "char-petty"  # matched, but not earned
    assert await db.fetchval("SELECT count(*) FROM character_ownership WHERE user_id = $1", uid) == 0


async def test_an_insufficiency_blocks_the_reward(stub, db):
    uid, md = user()
    reply = await stub.GrantReward(grant(pet(insufficiencies=["라벨_부착"])), metadata=md)
    assert reply.reward.outcome == pb.REWARD_OUTCOME_NOT_ELIGIBLE
    assert "라벨_부착" in reply.reward.reason
    assert await db.fetchval("SELECT count(*) FROM character_ownership WHERE user_id = $1", uid) == 0


async def test_a_category_without_character_is_not_eligible(stub):
    _, md = user()
    reply = await stub.GrantReward(grant(pet(category=pb.WASTE_CATEGORY_FOOD)), metadata=md)
    assert reply.reward.outcome == pb.REWARD_OUTCOME_NOT_ELIGIBLE
    assert not reply.reward.HasField("character")


async def test_reward_without_classification_is_invalid_argument(stub):
    _, md = user()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GrantReward(grant(None), metadata=md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value) == ["classification"]


@pytest.mark.parametrize(
    "request_,field",
    [
        (grant(pet(), key=""), "idempotency_key"),
        (grant(pet(), key="k" * 129), "idempotency_key"),
        (grant(pet(), key="a\nb"), "idempotency_key"),
        (grant(pet(), source=pb.REWARD_SOURCE_UNSPECIFIED), "source"),
        (grant(pet(), source=pb.REWARD_SOURCE_DEFAULT), "source"),
        (grant(pet(category=77)), "classification.category"),
        (grant(pet(confidence=1.5)), "classification.confidence"),
        (grant(pet(confidence=float("nan"))), "classification.confidence"),
        (grant(pet(insufficiencies=["x"] * 33)), "classification.insufficiencies"),
        (grant(pet(item="x" * 201)), "classification.item"),
    ],
)
async def test_bad_reward_requests_are_invalid_argument(stub, request_, field):
    _, md = user()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GrantReward(request_, metadata=md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(err.value)


async def test_identity_comes_from_metadata_only(stub):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GrantReward(grant(pet()))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListCollection(pb.ListCollectionRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_reused_key_with_another_request_is_refused(stub):
    _, md = user()
    await stub.GrantReward(grant(pet(), key="reused"), metadata=md)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GrantReward(grant(pet(category=pb.WASTE_CATEGORY_GLASS), key="reused"), metadata=md)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert unpack_details(status_details(err.value))["ErrorInfo"].reason == "IDEMPOTENCY_KEY_REUSED"


async def test_fifty_concurrent_replays_make_exactly_one_ownership(character, db):
    uid, md = user()
    req = grant(pet(category=pb.WASTE_CATEGORY_GLASS), key="replayed")
    # 50 separate connections, so the replays really race each other on the server.
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{character.port}") for _ in range(50)]
    try:
        stubs = [character_pb2_grpc.CharacterServiceStub(ch) for ch in channels]
        replies = await asyncio.gather(*(s.GrantReward(req, metadata=md) for s in stubs))
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))
    assert {r.reward.outcome for r in replies} == {pb.REWARD_OUTCOME_RECEIVED}
    assert len({r.SerializeToString() for r in replies}) == 1
    assert await db.fetchval("SELECT count(*) FROM character_ownership WHERE user_id = $1", uid) == 1
    assert await db.fetchval("SELECT count(*) FROM character_reward_grant WHERE user_id = $1", uid) == 1


async def test_fifty_concurrent_keys_for_one_character_receive_it_once(stub, db):
    uid, md = user()
    replies = await asyncio.gather(
        *(stub.GrantReward(grant(pet(category=pb.WASTE_CATEGORY_METAL)), metadata=md) for _ in range(50))
    )
    outcomes = sorted(pb.RewardOutcome.Name(r.reward.outcome) for r in replies)
    assert outcomes.count("REWARD_OUTCOME_RECEIVED") == 1
    assert outcomes.count("REWARD_OUTCOME_ALREADY_OWNED") == 49
    assert await db.fetchval("SELECT count(*) FROM character_ownership WHERE user_id = $1", uid) == 1


async def test_first_read_of_a_collection_grants_the_default_character(stub, db):
    uid, md = user()
    first = await asyncio.gather(*(stub.ListCollection(pb.ListCollectionRequest(), metadata=md) for _ in range(10)))
    for reply in first:
        assert [(c.character.code, c.source) for c in reply.characters] == [("char-eco", pb.REWARD_SOURCE_DEFAULT)]
    assert await db.fetchval("SELECT count(*) FROM character_ownership WHERE user_id = $1", uid) == 1
    await stub.GrantReward(grant(pet(), source=pb.REWARD_SOURCE_CHAT), metadata=md)
    reply = await stub.ListCollection(pb.ListCollectionRequest(), metadata=md)
    assert [(c.character.code, c.source) for c in reply.characters] == [
        ("char-eco", pb.REWARD_SOURCE_DEFAULT),
        ("char-petty", pb.REWARD_SOURCE_CHAT),
    ]
    assert reply.characters[1].acquired_at.seconds > 0


async def test_collection_pages(stub):
    _, md = user()
    for category in (
        pb.WASTE_CATEGORY_PAPER,
        pb.WASTE_CATEGORY_GLASS,
        pb.WASTE_CATEGORY_VINYL,
        pb.WASTE_CATEGORY_BATTERY,
    ):
        await stub.GrantReward(grant(pet(category=category)), metadata=md)
    seen, token = [], ""
    while True:
        reply = await stub.ListCollection(pb.ListCollectionRequest(page_size=2, page_token=token), metadata=md)
        seen += [c.character.code for c in reply.characters]
        token = reply.next_page_token
        if not token:
            break
    assert seen[0] == "char-eco" and len(seen) == 5 == len(set(seen))


@pytest.mark.parametrize(
    "request_", [pb.ListCollectionRequest(page_size=101), pb.ListCollectionRequest(page_token="%%%")]
)
async def test_bad_collection_requests_are_invalid_argument(stub, request_):
    _, md = user()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListCollection(request_, metadata=md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _description(stub, code: str) -> str:
    return (await stub.GetCharacter(pb.GetCharacterRequest(code=code))).character.description


async def _eventually(predicate, timeout: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_catalog_cache_is_refreshed_by_the_broadcast(character, stub, db, dataplane):
    from eco2.services.character.valkey import CATALOG_CHANNEL
    from eco2.services.dataplane.urls import create_redis

    code = "char-bini"
    original = await _description(stub, code)
    redis = create_redis(dataplane.redis_url)
    try:
        await db.execute("UPDATE character_catalog SET description = $2 WHERE code = $1", code, "broadcast test v1")
        # Without a broadcast the cache keeps serving its snapshot...
        await asyncio.sleep(0.3)
        assert await _description(stub, code) == original
        # ...the broadcast makes every replica reload.
        assert await redis.publish(CATALOG_CHANNEL, "test") >= 1
        assert await _eventually(lambda: _is(stub, code, "broadcast test v1"))

        # A lost subscription is re-established and reloads (a change may have been missed).
        await db.execute("UPDATE character_catalog SET description = $2 WHERE code = $1", code, "broadcast test v2")
        killed = await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        assert killed >= 1
        assert await _eventually(lambda: _is(stub, code, "broadcast test v2"))
    finally:
        await db.execute("UPDATE character_catalog SET description = $2 WHERE code = $1", code, original)
        await redis.publish(CATALOG_CHANNEL, "restore")
        await _eventually(lambda: _is(stub, code, original))
        await redis.aclose()


async def _is(stub, code: str, text: str) -> bool:
    return await _description(stub, code) == text
