"""Every RPC of the mesh over random and extreme input: never INTERNAL or UNKNOWN, never a hang,
every error with its google.rpc details, and the service SERVING afterwards.

The methods come from the descriptors of the services each app of the registry registers
(support/protofuzz.py `calls`), so a new method is fuzzed the day it lands. Each runs on a real
in-process server on the session data plane, with requests drawn from its message descriptor
(or bytes that are not a request at all), as a signed-in user, as nobody, and with a forged
wristband. Deterministic: hypothesis is derandomized (the same cases each run, no example
database), so a failure reproduces and CI does not flake.

ECO2_FUZZ_EXAMPLES sets the cases per method (default 40: the file runs in ~20 s on a loaded
2-core machine); ECO2_FUZZ_REPORT=path writes the status codes seen per method as JSON.
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eco2.services.registry import SERVICES
from support import protofuzz
from support.identity import as_user, wristband
from support.protofuzz import Call, calls, edge_requests, invoke, requests
from support.servers import env, running

EXAMPLES = int(os.environ.get("ECO2_FUZZ_EXAMPLES", "40"))
#: a call that takes longer hangs (a server stream counts once it sent its first message)
DEADLINE_S = 10.0
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
#: the users calls act for: few, so a wristband is signed once each and reused (as the edge does)
USERS = [f"fuzz-{uuid.uuid4().hex[:8]}" for _ in range(3)]
IDENTITIES = {
    "nobody": (),
    **{f"user{i}": as_user(u) for i, u in enumerate(USERS)},
    "forged": (("x-eco2-identity", wristband(USERS[0])[:-8] + "AAAAAAAA"),),
    "garbage": (("x-eco2-identity", "not a jwt"),),
    "bare user id": (("x-eco2-user-id", USERS[0]),),
}
#: who calls: a signed-in user two times in three (most handlers need one to get past the door)
WHO = [*[f"user{i}" for i in range(len(USERS))] * 4, "nobody", "nobody", "forged", "garbage", "bare user id", "nobody"]


@pytest.fixture(scope="module")
async def mesh(service_env, session_dir):
    """Every service of the registry, in-process on free ports, wired to each other as `eco2 up`
    wires them. Chat runs no workers (its queue kind is this module's own, so no other test's
    workers take its jobs): the fuzz is of the RPCs; test_faults runs turns to the end."""
    base = {
        **service_env,
        "ECO2_DATA_DIR": str(session_dir / "fuzz"),
        "ECO2_EVENTS_UNKNOWN_JOB_GRACE_S": "0.2",
        "ECO2_CHAT_WORKERS": "0",
        "ECO2_CHAT_JOB_KIND": "fuzz",
    }
    from eco2.services import registry

    # what others call first (a service reads its peers' addresses when it is created), chat last
    first, last = ["auth", "events"], ["chat"]
    order = [*first, *(n for n in SERVICES if n not in first + last), *last]
    servers, addresses = {}, {}
    async with AsyncExitStack() as stack:
        for name in order:
            with env({**base, **{f"ECO2_{n.upper()}_ADDR": a for n, a in addresses.items()}}):
                app = registry.create(name)
            servers[name] = await stack.enter_async_context(running(app, metrics=False))
            addresses[name] = f"127.0.0.1:{servers[name].port}"
        channels = {
            name: await stack.enter_async_context(
                grpc.aio.insecure_channel(a, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
            )
            for name, a in addresses.items()
        }
        protofuzz.KNOWN[:] = await _things_of(USERS[0], servers, channels)
        yield servers, channels
        protofuzz.KNOWN.clear()


def _png() -> bytes:
    """A real 1x1 grey PNG."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00\x00"))
        + chunk(b"IEND", b"")
    )


async def _things_of(user: str, servers, channels) -> list[str]:
    """A conversation, its job (done) and message, and an image of `user`: ids the fuzz may name."""
    from eco2.chat.v1 import chat_pb2, chat_pb2_grpc
    from eco2.events.v1 import events_pb2
    from eco2.images.v1 import images_pb2, images_pb2_grpc
    from eco2.services.bus.producer import EventPublisher
    from eco2.services.dataplane.urls import create_redis

    sent = await chat_pb2_grpc.ChatServiceStub(channels["chat"]).SendMessage(
        chat_pb2.SendMessageRequest(message="페트병 어떻게 버려?"), metadata=as_user(user), timeout=DEADLINE_S
    )
    # ended, as a worker ends it: a stream of it ends too (one of a job still running stays open)
    redis = create_redis(servers["events"].app.settings.redis_url)
    try:
        await EventPublisher(redis, servers["events"].app.settings).publish(
            events_pb2.Event(job_id=sent.job_id, seq=2, kind=events_pb2.EVENT_KIND_DONE)
        )
    finally:
        await redis.aclose()
    png = _png()

    async def upload():
        yield images_pb2.UploadRequest(
            metadata=images_pb2.UploadMetadata(
                channel=images_pb2.IMAGE_CHANNEL_CHAT, content_type="image/png", filename="a.png"
            )
        )
        yield images_pb2.UploadRequest(chunk=png)

    image = await images_pb2_grpc.ImageServiceStub(channels["images"]).Upload(
        upload(), metadata=as_user(user), timeout=DEADLINE_S
    )
    return [sent.conversation_id, sent.job_id, sent.message_id, image.image.key]


def _calls() -> list[Call]:
    from eco2.services import registry

    with env({"DATABASE_URL": "postgresql://unused@127.0.0.1/unused", "REDIS_URL": "redis://127.0.0.1:1"}):
        return calls({name: registry.create(name) for name in SERVICES})  # constructing an app opens nothing


CALLS = _calls()


def test_every_method_of_every_service_is_fuzzed():
    """Every method of the `eco2.<svc>.v1` contracts of the services the registry runs is in the
    list, and the methods those apps serve besides (auth's ext-authz Check)."""
    import importlib

    fuzzed = {c.path for c in CALLS}
    for name in SERVICES:
        contract = importlib.import_module(f"eco2.{name}.v1.{name}_pb2").DESCRIPTOR
        for service in contract.services_by_name.values():
            assert {f"/{service.full_name}/{m.name}" for m in service.methods} <= fuzzed
    assert "/envoy.service.auth.v3.Authorization/Check" in fuzzed


async def _serving(channel: grpc.aio.Channel, service: str) -> int:
    return (
        await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=DEADLINE_S
        )
    ).status


#: status codes seen per method; written to ECO2_FUZZ_REPORT (JSON) when set, for bench/faults.py
SEEN: dict[str, dict[str, int]] = {}
#: per method, a request of the random cases that the service accepted (OK): the base of the extremes
ACCEPTED: dict[str, bytes] = {}


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    if path := os.environ.get("ECO2_FUZZ_REPORT"):
        Path(path).write_text(json.dumps({"examples_per_method": EXAMPLES, "codes": SEEN}, indent=1, sort_keys=True))


@pytest.mark.parametrize("call", CALLS, ids=str)
@FUZZ
@given(data=st.data())
async def test_random_and_extreme_requests_never_fail_internally_nor_hang(mesh, call, data):
    servers, channels = mesh
    channel = channels[call.app]
    payloads = data.draw(
        st.lists(requests(call.method.input_type), min_size=1, max_size=4 if call.method.client_streaming else 1),
        label="payloads",
    )
    who = data.draw(st.sampled_from(WHO), label="identity")
    outcome = await invoke(channel, call, payloads, IDENTITIES[who], DEADLINE_S)
    count(call, outcome)
    if outcome.code == grpc.StatusCode.OK and who == "user0" and not call.method.client_streaming:
        ACCEPTED.setdefault(str(call), payloads[0])
    # never INTERNAL/UNKNOWN/a hang, and an error a client can act on: google.rpc.Status details
    # (ErrorInfo, BadRequest...), which also shows the status came from the service, not from a
    # transport that gave up on it
    check(call, who, outcome)
    assert await _serving(channel, call.service) == health_pb2.HealthCheckResponse.SERVING
    assert await _serving(channel, "") == health_pb2.HealthCheckResponse.SERVING


def count(call: Call, outcome) -> None:
    seen = SEEN.setdefault(str(call), {})
    seen[outcome.code.name] = seen.get(outcome.code.name, 0) + 1


def check(call: Call, who: str, outcome, case: str = "") -> None:
    assert outcome.code not in NEVER, f"{call} {case} as {who}: {outcome.code.name}: {outcome.details[:300]}"
    # grpc core itself refuses a request over ECO2_MAX_MESSAGE_BYTES, before any handler: no details
    too_large = (
        outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "Received message larger than max" in outcome.details
    )
    assert outcome.code == grpc.StatusCode.OK or outcome.rich or too_large, (
        f"{call} {case} as {who}: {outcome.code.name} without details: {outcome.details[:300]}"
    )


@pytest.mark.parametrize("call", CALLS, ids=str)
async def test_every_field_at_its_extremes(mesh, call):
    """One field at a time at each extreme of its type, on an empty request and on one the
    service accepted in the random cases above (so the value gets past the other fields'
    validation), as a signed-in user. A client stream sends the request as its one message."""
    servers, channels = mesh
    channel = channels[call.app]
    bases = [b"", *([ACCEPTED[str(call)]] if str(call) in ACCEPTED else [])]
    for base in bases:
        for case, payload in edge_requests(call.method.input_type, base):
            outcome = await invoke(channel, call, [payload], IDENTITIES["user0"], DEADLINE_S)
            count(call, outcome)
            check(call, "user0", outcome, case)
    assert await _serving(channel, call.service) == health_pb2.HealthCheckResponse.SERVING
