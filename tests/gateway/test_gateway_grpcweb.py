"""gRPC-Web and Connect through the gateway, byte-level, over real HTTP/1.1 and h2c.

The upstreams are real services on real ports (auth for ext-authz, character, events) and a
test-only byte service (`eco2test.Pump`, tests/support/gateway.py); the client is httpx.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import uuid

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2

from eco2.auth.v1 import auth_pb2
from eco2.character.v1 import character_pb2
from support.gateway import ALLOWED_ORIGIN, PUMP_STATS, gateway, upstreams

GW = "application/grpc-web+proto"
GWT = "application/grpc-web-text+proto"


def frame(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def unframe(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    messages, trailers, pos = [], {}, 0
    while pos < len(body):
        flags, n = struct.unpack_from(">BI", body, pos)
        payload = body[pos + 5 : pos + 5 + n]
        assert len(payload) == n, "truncated frame in response"
        pos += 5 + n
        if flags & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    k, _, v = line.partition(":")
                    trailers[k.strip()] = v.strip()
        else:
            messages.append(payload)
    return messages, trailers


def status_of(resp: httpx.Response) -> tuple[int, str, dict]:
    """grpc-status from trailers frame or (trailers-only) headers."""
    messages, trailers = unframe(resp.content) if resp.content else ([], {})
    source = trailers or resp.headers
    return int(source["grpc-status"]), source.get("grpc-message", ""), source


@pytest.fixture(scope="module")
async def stack(service_env):
    async with upstreams(service_env) as addrs:
        async with gateway(addrs) as (app, port):
            yield {"addrs": addrs, "url": f"http://127.0.0.1:{port}", "app": app, "redis_url": service_env["REDIS_URL"]}


@pytest.fixture(scope="module")
async def client(stack):
    async with httpx.AsyncClient(base_url=stack["url"], timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
async def token(client) -> str:
    r = await client.post("/v1/auth/dev-sign-in", json={"displayName": "gw-grpcweb"})
    assert r.status_code == 200, r.text
    return r.json()["tokens"]["accessToken"]


def auth(token: str, ctype: str = GW, **extra) -> dict:
    return {"content-type": ctype, "authorization": f"Bearer {token}", "x-grpc-web": "1", **extra}


async def test_unary_binary_through_real_character_service(client, token):
    req = character_pb2.GetCharacterRequest(code="char-eco").SerializeToString()
    r = await client.post("/eco2.character.v1.CharacterService/GetCharacter", content=frame(req), headers=auth(token))
    assert r.status_code == 200 and r.headers["content-type"] == GW
    messages, trailers = unframe(r.content)
    assert trailers["grpc-status"] == "0"
    reply = character_pb2.GetCharacterResponse.FromString(messages[0])
    assert reply.character.name == "이코"


async def test_unary_text_mode_with_padding_mid_stream(client, token):
    # Two base64 chunks, each padded: the frame header and the message encoded separately.
    msg = character_pb2.GetCharacterRequest(code="char-eco").SerializeToString()
    f = frame(msg)
    body = base64.b64encode(f[:5]) + base64.b64encode(f[5:])
    assert b"=" in body[:-2]  # padding really is mid-stream
    r = await client.post("/eco2.character.v1.CharacterService/GetCharacter", content=body, headers=auth(token, GWT))
    assert r.status_code == 200 and r.headers["content-type"] == GWT
    messages, trailers = unframe(base64.b64decode(r.content) if r.content.count(b"=") <= 2 else _b64_chunks(r.content))
    assert trailers["grpc-status"] == "0"
    assert character_pb2.GetCharacterResponse.FromString(messages[0]).character.code == "char-eco"


def _b64_chunks(data: bytes) -> bytes:
    out = b""
    import re

    for chunk in re.findall(rb"[A-Za-z0-9+/]*={0,2}", data):
        if chunk:
            out += base64.b64decode(chunk)
    return out


async def test_server_stream_passes_bytes_and_trailers(client, token):
    spec = {"n": 5, "size": 100, "id": uuid.uuid4().hex}
    r = await client.post("/eco2test.Pump/Stream", content=frame(json.dumps(spec).encode()), headers=auth(token))
    messages, trailers = unframe(r.content)
    assert [int.from_bytes(m[:8], "big") for m in messages] == [0, 1, 2, 3, 4]
    assert all(len(m) == 100 for m in messages)
    assert trailers["grpc-status"] == "0"


async def test_server_stream_text_mode(client, token):
    spec = {"n": 3, "size": 10, "id": uuid.uuid4().hex}
    r = await client.post(
        "/eco2test.Pump/Stream",
        content=base64.b64encode(frame(json.dumps(spec).encode())),
        headers=auth(token, "application/grpc-web-text"),
    )
    messages, trailers = unframe(_b64_chunks(r.content))
    assert len(messages) == 3 and trailers["grpc-status"] == "0"


async def test_stream_error_after_messages_is_in_the_trailers_frame(client, token):
    spec = {"n": 2, "code": 8, "message": "pump ran dry", "id": uuid.uuid4().hex}
    r = await client.post("/eco2test.Pump/Stream", content=frame(json.dumps(spec).encode()), headers=auth(token))
    messages, trailers = unframe(r.content)
    assert len(messages) == 2
    assert trailers["grpc-status"] == "8" and trailers["grpc-message"] == "pump ran dry"


async def test_upstream_error_is_trailers_only_with_details_and_no_header_injection(client, token):
    r = await client.post("/eco2test.Pump/Fail", content=frame(b""), headers=auth(token))
    assert r.status_code == 200 and r.content == b""
    assert r.headers["grpc-status"] == "5"
    # the upstream's CR/LF is percent-encoded, never a new header
    assert "injected" not in r.headers and "%0D%0A" in r.headers["grpc-message"]
    status = status_pb2.Status.FromString(base64.b64decode(r.headers["grpc-status-details-bin"] + "=="))
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert info.reason == "PUMP_NOT_FOUND" and info.metadata["id"] == "7"


async def test_metadata_allowlist_identity_from_ext_authz_and_timeout(client, token):
    headers = auth(
        token,
        **{
            "grpc-timeout": "3S",
            "x-request-id": "req-1",
            "x-secret": "no",
            "x-eco2-user-id": "someone-else",
            "x-eco2-roles": "admin",
        },
    )
    r = await client.post("/eco2test.Pump/Echo", content=frame(b"hi"), headers=headers)
    messages, trailers = unframe(r.content)
    assert trailers["grpc-status"] == "0" and trailers["x-pump-trailer"] == "bye"
    assert base64.b64decode(trailers["x-pump-bin"] + "==") == b"\x00\x01\xff"
    assert r.headers["x-pump"] == "hello"
    echo = json.loads(messages[0])
    md = echo["metadata"]
    assert echo["body"] == "hi"
    assert md["x-request-id"] == "req-1" and "x-secret" not in md
    assert md["x-eco2-user-id"] != "someone-else" and md["x-eco2-user-id"]  # injected by ext-authz
    assert "x-eco2-roles" not in md  # the client's is removed; roles travel inside the wristband
    assert md["x-eco2-identity"].count(".") == 2  # the wristband ext-authz injected
    assert 2.0 < echo["remaining"] <= 3.1


async def test_deadline_exceeded_from_grpc_timeout(client, token):
    spec = {"n": 10, "delay": 0.2, "id": uuid.uuid4().hex}
    r = await client.post(
        "/eco2test.Pump/Stream",
        content=frame(json.dumps(spec).encode()),
        headers=auth(token, **{"grpc-timeout": "300m"}),
    )
    assert status_of(r)[0] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


async def test_without_a_token_ext_authz_denies(client):
    r = await client.post(
        "/eco2.character.v1.CharacterService/ListCharacters", content=frame(b""), headers={"content-type": GW}
    )
    assert r.status_code == 200 and r.headers["grpc-status"] == "16"
    r = await client.post(
        "/eco2.character.v1.CharacterService/ListCharacters",
        content=b"{}",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"


async def test_public_method_passes_ext_authz_without_a_token(client):
    req = auth_pb2.DevSignInRequest(display_name="grpc-web-user").SerializeToString()
    r = await client.post("/eco2.auth.v1.AuthService/DevSignIn", content=frame(req), headers={"content-type": GW})
    messages, trailers = unframe(r.content)
    assert trailers["grpc-status"] == "0", trailers
    assert auth_pb2.DevSignInResponse.FromString(messages[0]).tokens.access_token


# --- Connect ---------------------------------------------------------------------------------


async def test_connect_unary_json_via_descriptors(client, token):
    r = await client.post(
        "/eco2.character.v1.CharacterService/GetCharacter",
        json={"code": "char-eco"},
        headers={"authorization": f"Bearer {token}", "connect-protocol-version": "1"},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json()["character"]["name"] == "이코"


async def test_connect_unary_proto(client, token):
    r = await client.post(
        "/eco2.character.v1.CharacterService/ListCharacters",
        content=character_pb2.ListCharactersRequest(page_size=2).SerializeToString(),
        headers={"authorization": f"Bearer {token}", "content-type": "application/proto"},
    )
    assert r.status_code == 200
    assert len(character_pb2.ListCharactersResponse.FromString(r.content).characters) == 2


async def test_connect_errors_map_to_http_status_with_details(client, token):
    r = await client.post(
        "/eco2.character.v1.CharacterService/ListCharacters",
        json={"pageSize": 1000},
        headers={"authorization": f"Bearer {token}"},
    )
    assert r.status_code == 400
    err = r.json()
    assert err["code"] == "invalid_argument"
    types = [d["type"] for d in err["details"]]
    assert "google.rpc.BadRequest" in types
    bad = error_details_pb2.BadRequest.FromString(
        base64.b64decode(next(d["value"] for d in err["details"] if d["type"] == "google.rpc.BadRequest") + "==")
    )
    assert bad.field_violations[0].field == "page_size"


async def test_connect_error_details_also_come_decoded_in_debug(client, token):
    r = await client.post(
        "/eco2.character.v1.CharacterService/ListCharacters",
        json={"pageSize": 1000},
        headers={"authorization": f"Bearer {token}"},
    )
    details = {d["type"]: d for d in r.json()["details"]}
    bad = details["google.rpc.BadRequest"]
    assert bad["debug"] == {
        "fieldViolations": [{"field": "page_size", "description": bad["debug"]["fieldViolations"][0]["description"]}]
    }
    assert "at most" in bad["debug"]["fieldViolations"][0]["description"]
    # the wire form stays: `value` is the detail's bytes, `debug` the same message as JSON
    assert (
        error_details_pb2.BadRequest.FromString(base64.b64decode(bad["value"] + "==")).field_violations[0].field
        == "page_size"
    )
    assert details["google.rpc.ErrorInfo"]["debug"]["reason"] == "INVALID_ARGUMENT"
    # the JSON routes carry the same decoded details
    r = await client.post("/v1/auth/dev-sign-in", json={"displayName": "x" * 500})
    assert r.status_code == 400, r.text
    routed = {d["type"]: d for d in r.json()["error"]["details"]}
    assert routed["google.rpc.BadRequest"]["debug"]["fieldViolations"][0]["field"] == "display_name"


def test_connect_error_decodes_retry_info_and_keeps_unknown_details_opaque():
    from google.protobuf import any_pb2, duration_pb2

    from eco2.gateway.bridge import connect_error

    retry, other = any_pb2.Any(), any_pb2.Any()
    retry.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1, nanos=500_000_000)))
    other.Pack(character_pb2.GetCharacterRequest(code="char-eco"))  # not a google.rpc detail
    status = status_pb2.Status(code=14, message="down", details=[retry, other])
    err = connect_error(14, "down", [("grpc-status-details-bin", status.SerializeToString())])
    assert err["details"][0] == {
        "type": "google.rpc.RetryInfo",
        "value": base64.b64encode(retry.value).decode().rstrip("="),
        "debug": {"retryDelay": "1.500s"},
    }
    assert "debug" not in err["details"][1] and err["details"][1]["type"] == "eco2.character.v1.GetCharacterRequest"


async def test_connect_bad_json_is_invalid_argument(client, token):
    r = await client.post(
        "/eco2.character.v1.CharacterService/GetCharacter",
        content=b'{"code": 12',
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument"
    r = await client.post(
        "/eco2.character.v1.CharacterService/GetCharacter",
        json={"nope": 1},
        headers={"authorization": f"Bearer {token}"},
    )
    assert r.status_code == 400 and "nope" in r.json()["message"]


@pytest.mark.parametrize("value", ["٣", "３", "²", "1_0", "+3"])
async def test_connect_json_numbers_in_strings_are_ascii_digits_only(client, token, value):
    # protobuf's JSON parser reads such strings with int(): "٣" would be 3, "²" a ValueError
    r = await client.post(
        "/eco2.character.v1.CharacterService/ListCharacters",
        json={"pageSize": value},
        headers={"authorization": f"Bearer {token}"},
    )
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument", r.text
    bad = error_details_pb2.BadRequest.FromString(
        base64.b64decode(next(d["value"] for d in r.json()["details"] if d["type"] == "google.rpc.BadRequest") + "==")
    )
    assert [v.field for v in bad.field_violations] == ["page_size"]
    r = await client.post(
        "/eco2.character.v1.CharacterService/ListCharacters",
        json={"pageSize": "2"},
        headers={"authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200 and len(r.json()["characters"]) == 2  # ASCII digits in a string stay valid proto3 JSON


@pytest.mark.parametrize(
    "value", [b"\xb2", b"3\xb3", "٣٠٠٠".encode()]
)  # headers arrive as latin-1: ² and ³ are digits to str.isdigit()
async def test_connect_timeout_in_non_ascii_digits_is_invalid_argument(client, token, value):
    r = await client.post(
        "/eco2.character.v1.CharacterService/GetCharacter",
        json={"code": "char-eco"},
        headers={"authorization": f"Bearer {token}", "connect-timeout-ms": value},
    )
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument", r.text


@pytest.mark.parametrize("value", [b"\xb2", b"1\xb9", "٣".encode()])
async def test_content_length_in_non_ascii_digits_is_refused_not_500(stack, token, value):
    reader, writer = await asyncio.open_connection("127.0.0.1", int(stack["url"].rsplit(":", 1)[1]))
    try:
        writer.write(
            f"POST /eco2test.Pump/Echo HTTP/1.1\r\nhost: x\r\ncontent-type: {GW}\r\nauthorization: Bearer {token}\r\n".encode()
            + b"content-length: "
            + value
            + b"\r\n\r\n"
            + frame(b"hi")
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.read(4096), 5)
    finally:
        writer.close()
    status = int(head.split(b" ", 2)[1])
    assert 400 <= status < 500, head[:200]


async def test_page_size_in_non_ascii_digits_is_400(client, token):
    r = await client.get("/v1/conversations", params={"page_size": "٣"}, headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 400 and r.json()["error"]["reason"] == "BAD_QUERY", r.text


async def test_connect_server_stream_json(client, token, stack):
    from eco2.events.v1 import events_pb2
    from eco2.services.bus.producer import EventPublisher
    from eco2.services.dataplane.urls import create_redis

    job = f"job-{uuid.uuid4().hex[:12]}"
    redis = create_redis(stack["redis_url"])
    pub = EventPublisher(redis)
    me = (await client.get("/v1/me", headers={"authorization": f"Bearer {token}"})).json()["user"]["id"]
    await pub.set_owner(job, me)  # the signed-in user's job: streams are their owner's only
    await pub.publish(events_pb2.Event(job_id=job, seq=1, kind=events_pb2.EVENT_KIND_TOKEN, delta="안녕"))
    await pub.publish(events_pb2.Event(job_id=job, seq=2, kind=events_pb2.EVENT_KIND_DONE))
    await redis.aclose()
    body = frame(json.dumps({"jobId": job}).encode())
    r = await client.post(
        "/eco2.events.v1.EventService/Subscribe",
        content=body,
        headers={"authorization": f"Bearer {token}", "content-type": "application/connect+json"},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/connect+json"
    pos, frames = 0, []
    while pos < len(r.content):
        flags, n = struct.unpack_from(">BI", r.content, pos)
        frames.append((flags, json.loads(r.content[pos + 5 : pos + 5 + n])))
        pos += 5 + n
    assert [f[1].get("delta") for f in frames[:-1]] == ["안녕", None]
    assert frames[-1][0] == 0x02 and "error" not in frames[-1][1]


# --- bad input ------------------------------------------------------------------------------


async def test_wrong_content_type_is_415(client, token):
    r = await client.post(
        "/eco2.character.v1.CharacterService/GetCharacter",
        content=b"hi",
        headers={"content-type": "text/plain", "authorization": f"Bearer {token}"},
    )
    assert r.status_code == 415 and r.json()["error"]["reason"] == "UNSUPPORTED_MEDIA_TYPE"


async def test_a_path_no_route_serves_is_checked_then_404_and_a_wrong_method_405(client, token):
    """The route table's last route: ext-authz first (edge mode), as the ingress Envoy would."""
    assert (await client.get("/v1/nothing-here")).status_code == 401
    r = await client.get("/v1/nothing-here", headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 404 and r.json()["error"]["reason"] == "NOT_FOUND"
    r = await client.get("/v1/chat/messages", headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["error"]["reason"] == "METHOD_NOT_ALLOWED"
    r = await client.post("/healthz")  # public: no token needed to learn the methods
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"


async def test_unknown_service_is_unimplemented_or_404(client, token):
    r = await client.post("/nope.v1.Nothing/Call", content=frame(b""), headers=auth(token))
    assert r.status_code == 200 and r.headers["grpc-status"] == "12"
    r = await client.post("/eco2.character.v1.CharacterService/NoSuchMethod", content=frame(b""), headers=auth(token))
    assert r.headers["grpc-status"] == "12"
    r = await client.post(
        "/nope.v1.Nothing/Call",
        content=b"{}",
        headers={"content-type": "application/json", "authorization": f"Bearer {token}"},
    )
    assert r.status_code == 404 and r.json()["code"] == "unimplemented"
    # the edge's own authorisation API is never reachable from outside
    r = await client.post("/envoy.service.auth.v3.Authorization/Check", content=frame(b""), headers=auth(token))
    assert r.headers["grpc-status"] == "12"


@pytest.mark.parametrize(
    "body,reason",
    [
        (b"\x00\x00\x00", "TRUNCATED_FRAME"),
        (b"\x00\x00\x00\x00\x10abc", "TRUNCATED_FRAME"),
        (frame(b"a") + frame(b"b"), "MESSAGE_COUNT"),
        (b"", "MESSAGE_COUNT"),
        (frame(b"x", 0x80), "BAD_FRAME_FLAGS"),
    ],
)
async def test_malformed_frames_are_invalid_argument(client, token, body, reason):
    r = await client.post("/eco2test.Pump/Echo", content=body, headers=auth(token))
    assert r.status_code == 200 and r.headers["grpc-status"] == "3", r.headers
    status = status_pb2.Status.FromString(base64.b64decode(r.headers["grpc-status-details-bin"] + "=="))
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert info.reason == reason


async def test_compressed_frame_is_unimplemented(client, token):
    r = await client.post("/eco2test.Pump/Echo", content=frame(b"x", 0x01), headers=auth(token))
    assert r.headers["grpc-status"] == "12"


async def _partial(stack, token, path: str, first: bytes, declared: int) -> bytes:
    """Send headers and the first bytes of a body, then stall; return what the gateway answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", int(stack["url"].rsplit(":", 1)[1]))
    writer.write(
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {GW}\r\nauthorization: Bearer {token}\r\ncontent-length: {declared}\r\n\r\n".encode()
        + first
    )
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(4096), 5)
    finally:
        writer.close()


async def test_oversized_frame_is_resource_exhausted_before_the_body_arrives(stack, token):
    # the frame header announces 10 MB; only its 5 bytes are sent
    head = await _partial(stack, token, "/eco2test.Pump/Echo", struct.pack(">BI", 0, 10 * 1024 * 1024), 60 * 1024)
    assert head.startswith(b"HTTP/1.1 200") and b"grpc-status: 8" in head and b"65536" in head


async def test_oversized_body_by_content_length(client, token):
    big = frame(b"x" * (70 * 1024))
    r = await client.post("/eco2test.Pump/Echo", content=big, headers=auth(token))
    assert r.headers["grpc-status"] == "8"
    # the body is left unread, so the connection closes and the client is told not to reuse it
    assert r.headers.get("connection") == "close"


@pytest.mark.parametrize("body", [b"!!!!", b"AAAA=AAA", b"AAAAA"])
async def test_invalid_base64_in_text_mode(client, token, body):
    r = await client.post("/eco2test.Pump/Echo", content=body, headers=auth(token, GWT))
    assert r.headers["grpc-status"] == "3" and "base64" in r.headers["grpc-message"]


@pytest.mark.parametrize("value", ["soon", "12", "123456789S", "-1S"])
async def test_malformed_grpc_timeout(client, token, value):
    r = await client.post("/eco2test.Pump/Echo", content=frame(b""), headers=auth(token, **{"grpc-timeout": value}))
    assert r.headers["grpc-status"] == "3" and "grpc-timeout" in r.headers["grpc-message"]


async def test_slow_request_body_times_out(stack, token):
    started = asyncio.get_running_loop().time()
    head = await _partial(stack, token, "/eco2test.Pump/Echo", b"\x00\x00\x00", 8)
    assert b"grpc-status: 4" in head and b"1.5 s" in head
    assert 1.4 < asyncio.get_running_loop().time() - started < 4


async def test_cors_preflight_and_origins(client, token):
    pre = {
        "origin": ALLOWED_ORIGIN,
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type,x-grpc-web,authorization,grpc-timeout",
    }
    r = await client.options("/eco2test.Pump/Echo", headers=pre)
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "x-grpc-web" in r.headers["access-control-allow-headers"]
    r = await client.post("/eco2test.Pump/Echo", content=frame(b"x"), headers=auth(token, origin=ALLOWED_ORIGIN))
    assert r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert (
        "grpc-status" in r.headers["access-control-expose-headers"]
        and "grpc-message" in r.headers["access-control-expose-headers"]
    )
    # a foreign origin gets neither a preflight nor a call
    stats_id = uuid.uuid4().hex
    r = await client.options("/eco2test.Pump/Echo", headers={**pre, "origin": "http://evil.example"})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    r = await client.post(
        "/eco2test.Pump/Stream",
        content=frame(json.dumps({"id": stats_id}).encode()),
        headers=auth(token, origin="http://evil.example"),
    )
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    assert stats_id not in PUMP_STATS


async def test_client_sent_identity_headers_never_reach_upstream_on_public_paths(client):
    # DevSignIn is public: no token, and the x-eco2-* the client sent must still be dropped
    r = await client.post(
        "/eco2test.Pump/Echo", content=frame(b""), headers={"content-type": GW, "x-eco2-user-id": "admin"}
    )
    assert r.headers.get("grpc-status") == "16"  # not public: denied, never forwarded


async def test_h2c_prior_knowledge_works(stack, token):
    async with httpx.AsyncClient(base_url=stack["url"], http1=False, http2=True, timeout=10) as c:
        req = character_pb2.GetCharacterRequest(code="char-eco").SerializeToString()
        r = await c.post("/eco2.character.v1.CharacterService/GetCharacter", content=frame(req), headers=auth(token))
        assert r.http_version == "HTTP/2"
        messages, trailers = unframe(r.content)
        assert (
            trailers["grpc-status"] == "0"
            and character_pb2.GetCharacterResponse.FromString(messages[0]).character.code == "char-eco"
        )


async def test_client_disconnect_cancels_the_upstream_stream(stack, token):
    stats_id = uuid.uuid4().hex
    spec = {"n": 100000, "size": 64, "delay": 0.01, "id": stats_id}
    reader, writer = await asyncio.open_connection("127.0.0.1", int(stack["url"].rsplit(":", 1)[1]))
    body = frame(json.dumps(spec).encode())
    writer.write(
        b"POST /eco2test.Pump/Stream HTTP/1.1\r\nhost: x\r\ncontent-type: application/grpc-web+proto\r\n"
        + f"authorization: Bearer {token}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    await asyncio.sleep(0.3)
    writer.close()
    for _ in range(50):
        if PUMP_STATS.get(stats_id, {}).get("cancelled"):
            break
        await asyncio.sleep(0.05)
    stats = PUMP_STATS[stats_id]
    assert stats["done"] and stats["produced"] < 1000, stats


async def test_a_client_that_never_reads_is_bounded_and_cut_off(stack, token):
    stats_id = uuid.uuid4().hex
    spec = {"n": 200000, "size": 16 * 1024, "id": stats_id}  # 3.2 GB if nothing pushed back
    reader, writer = await asyncio.open_connection("127.0.0.1", int(stack["url"].rsplit(":", 1)[1]))
    import socket

    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    body = frame(json.dumps(spec).encode())
    writer.write(
        b"POST /eco2test.Pump/Stream HTTP/1.1\r\nhost: x\r\ncontent-type: application/grpc-web+proto\r\n"
        + f"authorization: Bearer {token}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    reader._transport.pause_reading()  # never read
    for _ in range(100):  # send timeout is 2 s: the gateway gives up and cancels upstream
        if PUMP_STATS.get(stats_id, {}).get("done"):
            break
        await asyncio.sleep(0.1)
    stats = PUMP_STATS[stats_id]
    assert stats["done"], stats  # the upstream call ended: the gateway gave up on the client
    assert stats["produced"] * 16 * 1024 < 64 * 1024 * 1024, stats  # bounded by flow control, not the stream's size
    writer.close()


async def test_header_injection_is_refused(stack, token):
    port = int(stack["url"].rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = frame(b"")
    writer.write(
        b"POST /eco2test.Pump/Echo HTTP/1.1\r\nhost: x\r\ncontent-type: application/grpc-web+proto\r\n"
        + f"x-request-id: a\rx-eco2-user-id: evil\r\nauthorization: Bearer {token}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 400")
