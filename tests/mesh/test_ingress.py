"""Through the real Envoy of the embedded ingress (mesh/envoy.py) in front of real servers:
ext-authz decisions as grpcio, gRPC-Web and plain HTTP clients see them, path tricks, spoofed
identity headers, streams event by event, deadlines, auth down, CORS preflights. The servers
run in-process on free ports; Envoy binds its own ports and reports them through its admin.
Waits are on conditions (an event seen, a deny observed), never fixed sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

import grpc
import httpx
import jwt
import psutil
import pytest
from envoy.service.auth.v3 import external_auth_pb2
from google.rpc import status_pb2
from prometheus_client import REGISTRY

from eco2.auth.v1 import auth_pb2, auth_pb2_grpc
from eco2.character.v1 import character_pb2, character_pb2_grpc
from eco2.chat.v1 import chat_pb2, chat_pb2_grpc
from eco2.events.v1 import events_pb2, events_pb2_grpc
from eco2.mesh import envoy
from eco2.mesh.routes import load
from eco2.services.auth import extauthz as envoy_authz
from eco2.services.bus.producer import EventPublisher
from eco2.services.dataplane.urls import create_redis
from eco2.services.runtime.settings import RuntimeSettings
from support.gateway import ALLOWED_ORIGIN, PumpApp, gateway
from support.ingress import envoy_or_skip, running_envoy
from support.servers import env, running

pytestmark = [pytest.mark.timeout(240), pytest.mark.filterwarnings("ignore::DeprecationWarning:envoy_data_plane")]
E = events_pb2
CHAT_LIST = "/eco2.chat.v1.ChatService/ListConversations"
GRPC_WEB = "application/grpc-web+proto"


class GatedChat:
    """A stand-in ChatService on the real runtime. ListConversations records the metadata it
    was called with. StreamChat(message=KEY) sends its first event, then waits until the test
    opens gate KEY before it sends the rest: a stream buffered on the way never shows its
    first event, so the test waiting for it fails instead of passing late."""

    name = "chat-gated"

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.seen: list[dict[str, str]] = []
        self.gates: dict[str, asyncio.Event] = {}

    def gate(self, key: str) -> asyncio.Event:
        return self.gates.setdefault(key, asyncio.Event())

    def service_names(self):
        return ["eco2.chat.v1.ChatService"]

    async def start(self, server: grpc.aio.Server) -> None:
        app = self

        class Servicer(chat_pb2_grpc.ChatServiceServicer):
            async def ListConversations(self, request, context):
                app.seen.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
                return chat_pb2.ListConversationsResponse()

            async def StreamChat(self, request, context):
                job = request.message
                yield E.Event(job_id=job, seq=1, kind=E.EVENT_KIND_STAGE, stage=E.STAGE_INTENT)
                await app.gate(job).wait()
                yield E.Event(job_id=job, seq=2, kind=E.EVENT_KIND_TOKEN, delta="done")
                yield E.Event(job_id=job, seq=3, kind=E.EVENT_KIND_DONE)

        chat_pb2_grpc.add_ChatServiceServicer_to_server(Servicer(), server)

    async def stop(self) -> None:
        return None


def _auth(service_env, **extra):
    from eco2.services.auth.app import create

    with env(
        {
            **service_env,
            "ECO2_AUTH_RATE_LIMIT_PER_S": "0",
            "ECO2_AUTH_CORS_ORIGINS": json.dumps([ALLOWED_ORIGIN]),
            **extra,
        }
    ):
        return create()


@pytest.fixture(scope="module")
async def stack(service_env, session_dir):
    envoy_or_skip()
    from eco2.services.character.app import create as create_character
    from eco2.services.events.app import create as create_events

    with env(service_env):
        apps = {
            "auth": _auth(service_env),
            "character": create_character(),
            "events": create_events(),
            "chat": GatedChat(RuntimeSettings()),
            "pump": PumpApp(RuntimeSettings()),
        }
    async with contextlib.AsyncExitStack() as stack:
        servers = {name: await stack.enter_async_context(running(app, metrics=False)) for name, app in apps.items()}
        addrs = {name: f"127.0.0.1:{s.port}" for name, s in servers.items()}
        _, gw_port = await stack.enter_async_context(
            gateway(addrs, ECO2_GATEWAY_AUTH_MODE="mesh", ECO2_CHAT_ADDR=addrs["chat"])
        )
        addrs["gateway"] = f"127.0.0.1:{gw_port}"
        proxy = await stack.enter_async_context(
            running_envoy(session_dir / "ingress", addrs, cors_origins=(ALLOWED_ORIGIN,))
        )
        redis = create_redis(service_env["REDIS_URL"])
        stack.push_async_callback(redis.aclose)
        yield {
            "envoy": proxy,
            "addrs": addrs,
            "apps": apps,
            "url": proxy.url,
            "target": f"127.0.0.1:{proxy.port}",
            "publisher": EventPublisher(redis),
        }


@pytest.fixture(scope="module")
async def session(stack) -> auth_pb2.DevSignInResponse:
    return await sign_in(stack["target"])


@pytest.fixture(scope="module")
async def limited(stack, service_env, session_dir):
    """A second auth (same keys and revocations) allowing a burst of 2 calls per user, behind a
    second Envoy in front of the same services."""
    app = _auth(service_env, ECO2_AUTH_RATE_LIMIT_PER_S="0.001", ECO2_AUTH_RATE_LIMIT_BURST="2")
    async with running(app, metrics=False) as server:
        addrs = {**stack["addrs"], "auth": f"127.0.0.1:{server.port}"}
        async with running_envoy(session_dir / "ingress-limited", addrs) as proxy:
            yield proxy


async def sign_in(target: str) -> auth_pb2.DevSignInResponse:
    async with grpc.aio.insecure_channel(target) as ch:
        return await auth_pb2_grpc.AuthServiceStub(ch).DevSignIn(
            auth_pb2.DevSignInRequest(display_name=f"ingress-{uuid.uuid4().hex[:6]}")
        )


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def owned_job(stack, user_id: str) -> str:
    """A new job id whose events stream to `user_id` (a job streams to its owner only)."""
    job = f"job-{uuid.uuid4().hex[:12]}"
    await stack["publisher"].set_owner(job, user_id)
    return job


def frame(message: bytes) -> bytes:
    return struct.pack(">BI", 0, len(message)) + message


def grpc_web_status(response: httpx.Response) -> tuple[int, str]:
    """(grpc-status, grpc-message) of a gRPC-Web response: in its headers (trailers-only) or
    in the trailer frame at the end of its body."""
    headers = response.headers
    if "grpc-status" in headers:
        return int(headers["grpc-status"]), urllib.parse.unquote(headers.get("grpc-message", ""))
    body, trailers = response.content, {}
    while body:
        flag, size = struct.unpack(">BI", body[:5])
        if flag & 0x80:
            for line in body[5 : 5 + size].decode().split("\r\n"):
                if line:
                    key, _, value = line.partition(":")
                    trailers[key.strip().lower()] = value.strip()
        body = body[5 + size :]
    return int(trailers["grpc-status"]), urllib.parse.unquote(trailers.get("grpc-message", ""))


async def list_characters(target: str, metadata=()) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(target) as ch:
        try:
            await character_pb2_grpc.CharacterServiceStub(ch).ListCharacters(
                character_pb2.ListCharactersRequest(), metadata=metadata, timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            return exc
    return grpc.StatusCode.OK


async def grpc_web_list(url: str, token: str | None) -> httpx.Response:
    headers = {"content-type": GRPC_WEB, "x-grpc-web": "1"} | ({"authorization": f"Bearer {token}"} if token else {})
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        return await c.post("/eco2.character.v1.CharacterService/ListCharacters", content=frame(b""), headers=headers)


# --------------------------------------------------------------------------- the config


def _types(node):
    if isinstance(node, dict):
        if "@type" in node:
            yield node["@type"]
        for value in node.values():
            yield from _types(value)
    elif isinstance(node, list):
        for value in node:
            yield from _types(value)


def test_the_bootstrap_is_typed_and_envoy_accepts_it(tmp_path):
    """Every field name and typed config checked by envoy-data-plane's classes (unknown
    fields and unregistered types raise), then by the envoy binary itself."""
    addrs = {
        name: f"127.0.0.1:{20000 + i}"
        for i, name in enumerate(["auth", "character", "location", "images", "chat", "events", "gateway"])
    }
    config = envoy.bootstrap(
        load(), envoy.Ingress(port=18080, admin_port=18081, addresses=addrs, cors_origins=(ALLOWED_ORIGIN,))
    )
    for url in set(_types(config)):
        importlib.import_module("envoy_data_plane." + url.rpartition("/")[2].rpartition(".")[0])
    from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap

    typed = Bootstrap.from_dict(config)
    assert typed.admin.address.socket_address.address == "127.0.0.1"
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(config))
    checked = subprocess.run(
        [envoy_or_skip(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=120
    )
    assert checked.returncode == 0 and "OK" in checked.stdout, checked.stdout + checked.stderr


def test_no_route_times_out_and_internal_or_absent_services_are_not_routed():
    addrs = {
        name: f"127.0.0.1:{20000 + i}" for i, name in enumerate(["auth", "character", "chat", "events", "gateway"])
    }
    config = envoy.bootstrap(load(), envoy.Ingress(port=0, admin_port=0, addresses=addrs))
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    forwarded = [r for r in routes if "route" in r]
    # Envoy's default route timeout (15 s) would cut every longer server stream.
    assert forwarded and all(r["route"]["timeout"] == "0s" for r in forwarded)
    assert {r["route"]["cluster"] for r in forwarded} == {"character", "chat", "events", "auth", "gateway"}
    refused = {r["match"]["prefix"] for r in routes if r.get("direct_response", {}).get("status") == 404}
    assert "/envoy.service.auth.v3.Authorization/" in refused  # ext-authz itself: mesh only
    assert "/eco2.location.v1.LocationService/" in refused  # in the table, not running here
    assert [f["name"].rpartition(".")[2] for f in hcm["http_filters"]] == [
        "header_mutation",
        "grpc_web",
        "ext_authz",
        "cors",
        "router",
    ]


# --------------------------------------------------------------------------- decisions


async def test_an_allowed_call_reaches_the_service(stack, session):
    assert await list_characters(stack["target"], bearer(session.tokens.access_token)) == grpc.StatusCode.OK
    reply = await grpc_web_list(stack["url"], session.tokens.access_token)
    assert reply.status_code == 200 and grpc_web_status(reply)[0] == 0
    size = struct.unpack(">I", reply.content[1:5])[0]
    assert len(character_pb2.ListCharactersResponse.FromString(reply.content[5 : 5 + size]).characters) == 13


async def test_no_token_is_unauthenticated(stack):
    error = await list_characters(stack["target"])
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED, "sign in: no access token")
    reply = await grpc_web_list(stack["url"], None)
    assert reply.status_code == 200 and grpc_web_status(reply) == (
        grpc.StatusCode.UNAUTHENTICATED.value[0],
        "sign in: no access token",
    )
    async with httpx.AsyncClient(base_url=stack["url"]) as c:
        assert (await c.get("/v1/me")).status_code == 401


async def test_a_revoked_token_is_permission_denied(stack):
    session = await sign_in(stack["target"])
    token = session.tokens.access_token
    async with grpc.aio.insecure_channel(stack["target"]) as ch:
        await auth_pb2_grpc.AuthServiceStub(ch).SignOut(
            auth_pb2.SignOutRequest(refresh_token=session.tokens.refresh_token), metadata=bearer(token), timeout=10
        )
    async with asyncio.timeout(10):  # the revocation reaches Check's cache by broadcast
        while (error := await list_characters(stack["target"], bearer(token))) == grpc.StatusCode.OK:
            await asyncio.sleep(0.02)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    reply = await grpc_web_list(stack["url"], token)
    assert reply.status_code == 200 and grpc_web_status(reply)[0] == grpc.StatusCode.PERMISSION_DENIED.value[0]


async def test_a_rate_limited_call_is_resource_exhausted_not_unavailable(stack, limited):
    token = (await sign_in(stack["target"])).tokens.access_token
    target = f"127.0.0.1:{limited.port}"
    assert await list_characters(target, bearer(token)) == grpc.StatusCode.OK
    assert await list_characters(target, bearer(token)) == grpc.StatusCode.OK  # the burst of 2
    error = await list_characters(target, bearer(token))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    assert dict(error.trailing_metadata())["retry-after"].isdigit()
    assert error.details().startswith("too many requests; retry in"), error.details()  # the message, not the JSON body
    reply = await grpc_web_list(limited.url, token)
    assert reply.status_code == 200 and reply.headers["retry-after"].isdigit()
    code, message = grpc_web_status(reply)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and message.startswith("too many requests; retry in")
    async with httpx.AsyncClient(base_url=limited.url) as c:
        plain = await c.get("/v1/me", headers={"authorization": f"Bearer {token}"})
    assert plain.status_code == 429 and plain.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize("path", ["/envoy.service.auth.v3.Authorization/Check", "/eco2test.Pump/Echo"])
async def test_grpc_for_an_internal_or_unknown_service_is_unimplemented(stack, session, path):
    async with grpc.aio.insecure_channel(stack["target"]) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await ch.unary_unary(path)(b"", metadata=bearer(session.tokens.access_token), timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


# --------------------------------------------------------------------------- paths and headers

PATH_TRICKS = [
    "/static/../eco2.chat.v1.ChatService/ListConversations",
    "/static/%2e%2e/eco2.chat.v1.ChatService/ListConversations",
    "/static/%2E%2E/eco2.chat.v1.ChatService/ListConversations",
    "/static/.%2e/eco2.chat.v1.ChatService/ListConversations",
    "/.well-known/../eco2.chat.v1.ChatService/ListConversations",
    "/grpc.health.v1.Health/../../eco2.chat.v1.ChatService/ListConversations",
    "//eco2.chat.v1.ChatService/ListConversations",
    "/static//../eco2.chat.v1.ChatService/ListConversations",
    "/static;/../eco2.chat.v1.ChatService/ListConversations",
    "/healthz;/eco2.chat.v1.ChatService/ListConversations",
    "/static/%00/../eco2.chat.v1.ChatService/ListConversations",
    "/static%00/../eco2.chat.v1.ChatService/ListConversations",
    "/static/..%2Feco2.chat.v1.ChatService/ListConversations",
    "/static%2F..%2Feco2.chat.v1.ChatService/ListConversations",
    "/static\\..\\eco2.chat.v1.ChatService/ListConversations",
]


@pytest.mark.parametrize("content_type", [GRPC_WEB, "application/json"])
@pytest.mark.parametrize("path", PATH_TRICKS)
async def test_a_path_trick_never_reaches_a_service_without_identity(stack, path, content_type):
    chat = stack["apps"]["chat"]
    before = len(chat.seen)
    body = frame(b"") if content_type == GRPC_WEB else b"{}"
    async with httpx.AsyncClient(base_url=stack["url"], timeout=10) as c:
        reply = await c.post(path, content=body, headers={"content-type": content_type})
    assert len(chat.seen) == before, f"{path} reached ChatService: {chat.seen[-1]}"
    if reply.status_code == 200:  # a gRPC-Web answer: its status says what happened
        assert grpc_web_status(reply)[0] in (3, 12, 16), (reply.headers, reply.content)
    else:
        assert 400 <= reply.status_code < 500, (reply.status_code, reply.text)


SPOOFED = {
    "x-eco2-user-id": "someone-else",
    "x-eco2-roles": "admin",
    "x-eco2-provider": "root",
    "x-eco2-identity": "forged",
    "x-eco2-anything": "1",
}


def _identity(metadata: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in metadata.items() if k.startswith("x-eco2-")}


def assert_only_checks_identity(seen: dict[str, str], user_id: str) -> None:
    """Upstream got exactly what `Check` injects (the caller's wristband and id), nothing sent."""
    assert set(seen) == {"x-eco2-identity", "x-eco2-user-id"}, seen
    assert seen["x-eco2-user-id"] == user_id
    assert jwt.decode(seen["x-eco2-identity"], options={"verify_signature": False})["sub"] == user_id


async def test_spoofed_identity_headers_are_stripped_on_a_grpc_route(stack, session):
    chat = stack["apps"]["chat"]
    async with grpc.aio.insecure_channel(stack["target"]) as ch:
        await chat_pb2_grpc.ChatServiceStub(ch).ListConversations(
            chat_pb2.ListConversationsRequest(),
            metadata=(*bearer(session.tokens.access_token), *SPOOFED.items()),
            timeout=10,
        )
    assert_only_checks_identity(_identity(chat.seen[-1]), session.user.id)
    async with httpx.AsyncClient(base_url=stack["url"], timeout=10) as c:  # gRPC-Web, converted by Envoy
        reply = await c.post(
            CHAT_LIST,
            content=frame(b""),
            headers={"content-type": GRPC_WEB, "authorization": f"Bearer {session.tokens.access_token}", **SPOOFED},
        )
    assert grpc_web_status(reply)[0] == 0
    assert_only_checks_identity(_identity(chat.seen[-1]), session.user.id)


async def test_spoofed_identity_headers_are_stripped_on_the_gateway_route(stack, session):
    """A Connect call of eco2test.Pump (not in the route table, so Envoy hands it to the
    gateway, which in mesh mode forwards the x-eco2-* headers it got as they are)."""
    headers = {"content-type": "application/proto", "authorization": f"Bearer {session.tokens.access_token}", **SPOOFED}
    async with httpx.AsyncClient(base_url=stack["url"], timeout=10) as c:
        reply = await c.post("/eco2test.Pump/Echo", content=b"hi", headers=headers)
    assert reply.status_code == 200, reply.text
    assert_only_checks_identity(_identity(json.loads(reply.content)["metadata"]), session.user.id)


class AllowAll:
    """An ext-authz that allows every call and touches no header: whatever reaches upstream as
    x-eco2-* then came through Envoy itself."""

    name = "allow-all"
    settings = RuntimeSettings()

    def service_names(self):
        return [envoy_authz.SERVICE_NAME]

    async def start(self, server: grpc.aio.Server) -> None:
        async def check(request, context):
            return external_auth_pb2.CheckResponse(
                status=status_pb2.Status(code=0), ok_response=external_auth_pb2.OkHttpResponse()
            )

        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    envoy_authz.SERVICE_NAME,
                    {
                        "Check": grpc.unary_unary_rpc_method_handler(
                            check,
                            request_deserializer=external_auth_pb2.CheckRequest.FromString,
                            response_serializer=external_auth_pb2.CheckResponse.SerializeToString,
                        )
                    },
                ),
            )
        )

    async def stop(self) -> None:
        return None


async def test_envoy_itself_drops_client_identity_headers(stack, session_dir):
    """Behind an authorizer that removes nothing, no client x-eco2-* header reaches a service."""
    chat = stack["apps"]["chat"]
    async with running(AllowAll(), metrics=False) as authz:
        addrs = {**stack["addrs"], "auth": f"127.0.0.1:{authz.port}"}
        async with running_envoy(session_dir / "ingress-allow-all", addrs) as proxy:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as ch:
                await chat_pb2_grpc.ChatServiceStub(ch).ListConversations(
                    chat_pb2.ListConversationsRequest(), metadata=tuple(SPOOFED.items()), timeout=10
                )
            assert _identity(chat.seen[-1]) == {}
            async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as c:
                reply = await c.post(
                    "/eco2test.Pump/Echo", content=b"hi", headers={"content-type": "application/proto", **SPOOFED}
                )
            assert reply.status_code == 200 and _identity(json.loads(reply.content)["metadata"]) == {}


async def test_spoofed_identity_headers_on_a_public_path_never_reach_upstream_as_identity(stack):
    """Anonymous (public) calls get no identity at all: a client's x-eco2-user-id is dropped."""
    async with httpx.AsyncClient(base_url=stack["url"], timeout=10) as c:
        reply = await c.post(
            "/eco2test.Pump/Echo", content=b'"hi"', headers={"content-type": "application/json", **SPOOFED}
        )
    assert reply.status_code == 401  # not public: no token is a deny, whatever it claims to be


# --------------------------------------------------------------------------- streams and deadlines


async def test_events_subscribe_arrives_event_by_event(stack, session):
    job = await owned_job(stack, session.user.id)
    publisher = stack["publisher"]
    await publisher.publish(E.Event(job_id=job, seq=1, kind=E.EVENT_KIND_STAGE, stage=E.STAGE_QUEUED))
    seen = []
    async with grpc.aio.insecure_channel(stack["target"]) as ch:
        stream = events_pb2_grpc.EventServiceStub(ch).Subscribe(
            E.SubscribeRequest(job_id=job), metadata=bearer(session.tokens.access_token), timeout=30
        )
        async for event in stream:
            seen.append(event.seq)
            if event.seq == 1:  # only now does the producer send the rest
                await publisher.publish(E.Event(job_id=job, seq=2, kind=E.EVENT_KIND_TOKEN, delta="a"))
                await publisher.publish(E.Event(job_id=job, seq=3, kind=E.EVENT_KIND_DONE))
    assert seen == [1, 2, 3]


async def test_grpc_web_streams_arrive_event_by_event(stack, session):
    """StreamChat (gated stand-in) and Subscribe as gRPC-Web over HTTP/1.1, read as they come."""
    chat, publisher = stack["apps"]["chat"], stack["publisher"]
    job = await owned_job(stack, session.user.id)
    await publisher.publish(E.Event(job_id=job, seq=1, kind=E.EVENT_KIND_STAGE, stage=E.STAGE_QUEUED))
    calls = {
        "/eco2.chat.v1.ChatService/StreamChat": (chat_pb2.StreamChatRequest(message=job), lambda: chat.gate(job).set()),
        "/eco2.events.v1.EventService/Subscribe": (E.SubscribeRequest(job_id=job), None),
    }
    headers = {"content-type": GRPC_WEB, "authorization": f"Bearer {session.tokens.access_token}"}
    async with httpx.AsyncClient(base_url=stack["url"], timeout=30) as c:
        for path, (request, release) in calls.items():
            seqs, buffer = [], b""
            async with c.stream("POST", path, content=frame(request.SerializeToString()), headers=headers) as reply:
                async for chunk in reply.aiter_raw():
                    buffer += chunk
                    while len(buffer) >= 5 and len(buffer) >= 5 + (size := struct.unpack(">I", buffer[1:5])[0]):
                        if not buffer[0] & 0x80:
                            seqs.append(E.Event.FromString(buffer[5 : 5 + size]).seq)
                            if seqs == [1]:
                                if release:
                                    release()
                                else:
                                    await publisher.publish(
                                        E.Event(job_id=job, seq=2, kind=E.EVENT_KIND_TOKEN, delta="a")
                                    )
                                    await publisher.publish(E.Event(job_id=job, seq=3, kind=E.EVENT_KIND_DONE))
                        buffer = buffer[5 + size :]
            assert seqs == [1, 2, 3], path


async def test_sse_through_envoy_arrives_event_by_event(stack, session):
    job = await owned_job(stack, session.user.id)
    publisher = stack["publisher"]
    await publisher.publish(E.Event(job_id=job, seq=1, kind=E.EVENT_KIND_STAGE, stage=E.STAGE_QUEUED))
    ids = []
    async with httpx.AsyncClient(base_url=stack["url"], timeout=30) as c:
        async with c.stream(
            "GET", f"/v1/jobs/{job}/events", headers={"authorization": f"Bearer {session.tokens.access_token}"}
        ) as reply:
            assert reply.status_code == 200
            async for line in reply.aiter_lines():
                if line.startswith("id: "):
                    ids.append(int(line[4:]))
                    if ids == [1]:
                        await publisher.publish(E.Event(job_id=job, seq=2, kind=E.EVENT_KIND_DONE))
    assert ids == [1, 2]


async def test_a_deadline_through_envoy_is_deadline_exceeded(stack, session):
    """grpcio (its own timer and the server's), and gRPC-Web with only a grpc-timeout header
    (no client-side timer): before the first event and after it."""
    token = session.tokens.access_token
    open_job = await owned_job(stack, session.user.id)
    async with grpc.aio.insecure_channel(stack["target"]) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in events_pb2_grpc.EventServiceStub(ch).Subscribe(
                E.SubscribeRequest(job_id=open_job), metadata=bearer(token), timeout=0.5
            ):
                pass
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    started = await owned_job(stack, session.user.id)
    await stack["publisher"].publish(E.Event(job_id=started, seq=1, kind=E.EVENT_KIND_STAGE, stage=E.STAGE_QUEUED))
    async with httpx.AsyncClient(base_url=stack["url"], timeout=30) as c:
        for job in (open_job, started):
            reply = await c.post(
                "/eco2.events.v1.EventService/Subscribe",
                content=frame(E.SubscribeRequest(job_id=job).SerializeToString()),
                headers={"content-type": GRPC_WEB, "grpc-timeout": "500m", "authorization": f"Bearer {token}"},
            )
            assert (
                reply.status_code == 200 and grpc_web_status(reply)[0] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
            ), (job, reply.headers, reply.content)


# --------------------------------------------------------------------------- failures and CORS


async def test_auth_down_fails_closed_with_unavailable(stack, session, session_dir):
    chat = stack["apps"]["chat"]
    with socket.socket() as dead:  # bound, never listening: connections are refused
        dead.bind(("127.0.0.1", 0))
        addrs = {**stack["addrs"], "auth": f"127.0.0.1:{dead.getsockname()[1]}"}
        async with running_envoy(session_dir / "ingress-no-auth", addrs, ingress_authz_timeout_s=1.0) as proxy:
            target = f"127.0.0.1:{proxy.port}"
            before = len(chat.seen)
            async with grpc.aio.insecure_channel(target) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await chat_pb2_grpc.ChatServiceStub(ch).ListConversations(
                        chat_pb2.ListConversationsRequest(), metadata=bearer(session.tokens.access_token), timeout=10
                    )
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as c:
                web = await c.post(
                    CHAT_LIST,
                    content=frame(b""),
                    headers={"content-type": GRPC_WEB, "authorization": f"Bearer {session.tokens.access_token}"},
                )
                connect = await c.post(
                    "/eco2.character.v1.CharacterService/ListCharacters",
                    content=b"{}",
                    headers={"content-type": "application/json", "connect-protocol-version": "1"},
                )
                plain = await c.get("/healthz")  # even a public path: nothing passes unchecked
            assert web.status_code == 200 and grpc_web_status(web)[0] == grpc.StatusCode.UNAVAILABLE.value[0]
            assert connect.status_code == 503 and connect.json()["code"] == "unavailable"
            assert plain.status_code == 503
            assert len(chat.seen) == before


def _gateway_requests() -> float:
    return sum(
        s.value
        for m in REGISTRY.collect()
        if m.name == "eco2_gateway_requests"
        for s in m.samples
        if s.name.endswith("_total")
    )


async def test_a_preflight_from_an_unlisted_origin_never_reaches_a_service(stack):
    chat = stack["apps"]["chat"]
    before_chat, before_gateway = len(chat.seen), _gateway_requests()
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type,authorization",
    }
    async with httpx.AsyncClient(base_url=stack["url"], timeout=10) as c:
        for path in (CHAT_LIST, "/v1/chat/messages"):
            evil = await c.options(path, headers={"origin": "http://evil.example", **preflight})
            assert "access-control-allow-origin" not in evil.headers, (path, evil.headers)
        good = await c.options(CHAT_LIST, headers={"origin": ALLOWED_ORIGIN, **preflight})
    assert good.status_code == 200 and good.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "authorization" in good.headers["access-control-allow-headers"]
    assert len(chat.seen) == before_chat and _gateway_requests() == before_gateway


async def test_an_allowed_origin_reads_the_grpc_status(stack, session):
    async with httpx.AsyncClient(base_url=stack["url"], timeout=10) as c:
        reply = await c.post(
            CHAT_LIST,
            content=frame(b""),
            headers={
                "content-type": GRPC_WEB,
                "origin": ALLOWED_ORIGIN,
                "authorization": f"Bearer {session.tokens.access_token}",
            },
        )
    assert reply.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "grpc-status" in reply.headers["access-control-expose-headers"]


# --------------------------------------------------------------------------- a real gRPC-Web client

NODE_DIR = Path(__file__).parents[1] / "node"


async def test_connect_node_grpc_web_through_envoy(stack, limited):
    """@connectrpc/connect-node over HTTP/1.1 and HTTP/2: the codes a browser app would see."""
    if not (NODE_DIR / "node_modules" / "@connectrpc" / "connect-node").is_dir():
        pytest.fail("tests/node/node_modules is missing: run `npm ci --prefix tests/node` (CI does)")
    buf = shutil.which("buf") or str(Path(sys.executable).parent / "buf")
    generated = await asyncio.create_subprocess_exec(
        buf, "generate", cwd=NODE_DIR, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert await generated.wait() == 0, (await generated.stdout.read()).decode()
    user = await sign_in(stack["target"])
    token = user.tokens.access_token
    revoked = await sign_in(stack["target"])
    async with grpc.aio.insecure_channel(stack["target"]) as ch:
        await auth_pb2_grpc.AuthServiceStub(ch).SignOut(
            auth_pb2.SignOutRequest(), metadata=bearer(revoked.tokens.access_token), timeout=10
        )
    async with asyncio.timeout(10):
        while await list_characters(stack["target"], bearer(revoked.tokens.access_token)) == grpc.StatusCode.OK:
            await asyncio.sleep(0.02)
    job, open_job = await owned_job(stack, user.user.id), await owned_job(stack, user.user.id)
    for seq, kind in ((1, E.EVENT_KIND_STAGE), (2, E.EVENT_KIND_TOKEN), (3, E.EVENT_KIND_DONE)):
        await stack["publisher"].publish(E.Event(job_id=job, seq=seq, kind=kind, stage=E.STAGE_ANSWER, delta="x"))
    args = {
        "url": stack["url"],
        "limitedUrl": limited.url,
        "token": token,
        "revokedToken": revoked.tokens.access_token,
        "limitedToken": {
            name: (await sign_in(stack["target"])).tokens.access_token for name in ("limited", "limited_connect")
        },
        "jobId": job,
        "openJobId": open_job,
    }
    proc = await asyncio.create_subprocess_exec(
        "node",
        "ingress.mjs",
        json.dumps(args),
        cwd=NODE_DIR,
        env={**os.environ, "NODE_NO_WARNINGS": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    results = json.loads(out)
    for h in ("h1.1", "h2"):
        assert results[f"{h}.allowed"] == {"ok": 13}
        assert results[f"{h}.no_token"]["error"]["code"] == "Unauthenticated"
        assert results[f"{h}.revoked"]["error"]["code"] == "PermissionDenied"
        assert results[f"{h}.stream"] == {"ok": [1, 2, 3]}
        assert results[f"{h}.deadline"]["error"]["code"] == "DeadlineExceeded"
    assert results["connect.allowed"] == {"ok": 13}
    assert results["connect.no_token"]["error"] == {"code": "Unauthenticated", "message": "sign in: no access token"}
    for name in ("limited", "limited_connect"):
        assert results[f"{name}.1"] == results[f"{name}.2"] == {"ok": 13}
        assert results[f"{name}.3"]["error"]["code"] == "ResourceExhausted", results[f"{name}.3"]
        assert results[f"{name}.3"]["error"]["message"].startswith("too many requests; retry in")


# --------------------------------------------------------------------------- eco2 up


def test_eco2_up_fronts_the_stack_with_envoy(session_dir):
    """`eco2 up` runs Envoy as a child: endpoints.json's "ingress" URL, printed as the address
    to open, serves the UI (through the gateway, which behind Envoy trusts its headers) and gRPC
    straight to the services, with Check in front; config and log in the data dir, admin on
    loopback; stopped with the stack."""
    envoy_or_skip()
    data_dir = session_dir / "up-ingress"
    data_dir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "eco2.services.cli", "up", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        path = data_dir / "endpoints.json"
        deadline = time.monotonic() + 120
        while not path.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "eco2 up did not write endpoints.json"
            time.sleep(0.1)
        endpoints = json.loads(path.read_text())
        url = endpoints["ingress"]
        assert url.startswith("http://127.0.0.1:")
        target = url.removeprefix("http://")
        ui = httpx.get(url + "/", timeout=10)
        assert ui.status_code == 200 and ui.headers["server"] == "envoy" and "Eco²" in ui.text
        signed_in = httpx.post(
            url + "/v1/auth/dev-sign-in", json={"displayName": "up-ingress"}, timeout=10
        )  # the browser's way in
        assert signed_in.status_code == 200, signed_in.text
        with grpc.insecure_channel(target) as ch:
            session = auth_pb2_grpc.AuthServiceStub(ch).DevSignIn(
                auth_pb2.DevSignInRequest(display_name="up-ingress"), timeout=10
            )
            stub = character_pb2_grpc.CharacterServiceStub(ch)
            assert (
                len(
                    stub.ListCharacters(
                        character_pb2.ListCharactersRequest(), metadata=bearer(session.tokens.access_token), timeout=10
                    ).characters
                )
                == 13
            )
            with pytest.raises(grpc.RpcError) as raised:
                stub.ListCharacters(character_pb2.ListCharactersRequest(), timeout=10)
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        me = httpx.get(
            url + "/v1/me",
            headers={"authorization": f"Bearer {session.tokens.access_token}", "x-eco2-user-id": "someone-else"},
            timeout=10,
        )
        assert me.status_code == 200 and me.json()["user"]["id"] == session.user.id
        config = json.loads((data_dir / "envoy" / "envoy.json").read_text())
        assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
        assert (data_dir / "envoy" / "admin.address").read_text().startswith("127.0.0.1:")
        assert (data_dir / "logs" / "envoy.log").exists()
        envoy_pids = [
            p.pid for p in psutil.Process(proc.pid).children(recursive=True) if "--admin-address-path" in p.cmdline()
        ]
        assert envoy_pids
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert proc.stdout.read() == f"open {url}/\n"  # one line to open: no JSON, no database password
        assert not [
            p for p in envoy_pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_without_an_envoy_binary_eco2_up_says_so_in_one_line(monkeypatch, capsys, tmp_path):
    from eco2.services.up import Stack, UpSettings

    monkeypatch.setattr(envoy, "envoy_binary", lambda: None)
    assert Stack(UpSettings(data_dir=tmp_path))._envoy_binary() is None
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "no envoy binary" in lines[0] and "without the ingress" in lines[0]
