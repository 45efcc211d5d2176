"""SSE at the edge: GET /v1/jobs/{job_id}/events over the real EventService, resume by
Last-Event-ID / ?after_seq=, keepalives, terminal event, errors."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest

from eco2.events.v1 import events_pb2 as E
from eco2.services.bus.settings import EventsSettings
from support.gateway import gateway, parse, upstreams

DEFAULT_GRACE_S = EventsSettings.model_fields["events_unknown_job_grace_s"].default


@pytest.fixture(scope="module")
async def stack(service_env):
    from eco2.services.bus.producer import EventPublisher
    from eco2.services.dataplane.urls import create_redis

    # the default header wait and unknown-job grace: an unknown job must still be a 404
    async with upstreams(service_env, ECO2_EVENTS_UNKNOWN_JOB_GRACE_S=str(DEFAULT_GRACE_S)) as addrs:
        async with gateway(addrs, ECO2_GATEWAY_SSE_FEED_BUFFER_EVENTS="16") as (app, port):
            redis = create_redis(service_env["REDIS_URL"])
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
                signed_in = (await c.post("/v1/auth/dev-sign-in", json={"displayName": "sse-tests"})).json()
                token = signed_in["tokens"]["accessToken"]
                c.headers["authorization"] = f"Bearer {token}"
                pub = OwnedJobs(EventPublisher(redis), signed_in["user"]["id"])
                yield {
                    "client": c,
                    "pub": pub,
                    "port": port,
                    "token": token,
                    "app": app,
                    "events_addr": addrs["events"],
                    "user": signed_in["user"]["id"],
                }
            await redis.aclose()


class OwnedJobs:
    """The real publisher, recording the signed-in test user as the owner of each job it first
    publishes to, as the chat service does (a job streams to its owner only)."""

    def __init__(self, publisher, owner: str) -> None:
        self.publisher, self.owner = publisher, owner
        self.owned: set[str] = set()

    async def _own(self, job_id: str) -> None:
        if job_id not in self.owned:
            await self.publisher.set_owner(job_id, self.owner)
            self.owned.add(job_id)

    async def publish(self, event):
        await self._own(event.job_id)
        return await self.publisher.publish(event)

    async def publish_many(self, events):
        for job_id in dict.fromkeys(e.job_id for e in events):
            await self._own(job_id)
        return await self.publisher.publish_many(events)


async def publish_job(pub, n_tokens: int = 3, terminal: bool = True) -> str:
    job = f"job-{uuid.uuid4().hex[:12]}"
    await pub.publish(E.Event(job_id=job, seq=1, kind=E.EVENT_KIND_STAGE, stage=E.STAGE_ANSWER))
    for i in range(n_tokens):
        await pub.publish(E.Event(job_id=job, seq=2 + i, kind=E.EVENT_KIND_TOKEN, delta=f"토큰{i} "))
    if terminal:
        await pub.publish(E.Event(job_id=job, seq=2 + n_tokens, kind=E.EVENT_KIND_DONE))
    return job


async def test_a_finished_job_streams_every_event_then_ends(stack):
    job = await publish_job(stack["pub"])
    r = await stack["client"].get(f"/v1/jobs/{job}/events")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
    events = [e for e in parse(r.text) if "id" in e]
    assert [e["id"] for e in events] == ["1", "2", "3", "4", "5"]
    assert [e["event"] for e in events] == ["stage", "token", "token", "token", "done"]
    data = [json.loads(e["data"]) for e in events]
    assert data[1]["delta"] == "토큰0 " and data[1]["jobId"] == job and data[1]["seq"] == "2"


async def test_the_router_subscribe_and_sse_pass_each_events_traceparent_through(stack):
    """Event.traceparent as the producer set it, live and replayed: the router's fan-out, the
    EventService (Subscribe, SubscribeBatches under SSE) and the SSE JSON never touch it."""
    import grpc

    from eco2.events.v1 import events_pb2_grpc
    from support.identity import as_user

    job = f"job-{uuid.uuid4().hex[:12]}"
    parents = [f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-0{i % 2}" for i in range(4)]
    kinds = [E.EVENT_KIND_STAGE, E.EVENT_KIND_TOKEN, E.EVENT_KIND_TOKEN, E.EVENT_KIND_DONE]
    await stack["pub"].publish(E.Event(job_id=job, seq=1, kind=kinds[0], traceparent=parents[0]))  # replayed
    async with grpc.aio.insecure_channel(stack["events_addr"]) as ch:
        grpc_stream = events_pb2_grpc.EventServiceStub(ch).Subscribe(
            E.SubscribeRequest(job_id=job), metadata=as_user(stack["user"])
        )
        sse = asyncio.create_task(stack["client"].get(f"/v1/jobs/{job}/events"))
        first = await grpc_stream.read()  # subscribed: the rest arrive live, through the router
        for seq in (2, 3, 4):
            await stack["pub"].publish(E.Event(job_id=job, seq=seq, kind=kinds[seq - 1], traceparent=parents[seq - 1]))
        over_grpc = [first]
        while (e := await grpc_stream.read()) is not grpc.aio.EOF:
            over_grpc.append(e)
        r = await sse
    assert [e.traceparent for e in over_grpc] == parents
    assert [json.loads(e["data"])["traceparent"] for e in parse(r.text) if "id" in e] == parents


@pytest.mark.parametrize("how", ["header", "query"])
async def test_resume_after_a_seq_gets_the_rest_exactly_once(stack, how):
    job = await publish_job(stack["pub"])
    if how == "header":
        r = await stack["client"].get(f"/v1/jobs/{job}/events", headers={"last-event-id": "3"})
    else:
        r = await stack["client"].get(f"/v1/jobs/{job}/events", params={"after_seq": "3"})
    assert [e["id"] for e in parse(r.text) if "id" in e] == ["4", "5"]


async def test_live_events_keepalives_and_the_terminal_event(stack):
    job = await publish_job(stack["pub"], n_tokens=1, terminal=False)
    chunks: list[str] = []

    async def read():
        async with stack["client"].stream("GET", f"/v1/jobs/{job}/events") as r:
            assert r.status_code == 200
            async for text in r.aiter_text():
                chunks.append(text)

    reader = asyncio.create_task(read())
    await asyncio.sleep(1.3)  # keepalive every 0.5 s in the tests
    assert ": keepalive" in "".join(chunks)
    assert not reader.done()
    await stack["pub"].publish(E.Event(job_id=job, seq=3, kind=E.EVENT_KIND_TOKEN, delta="live"))
    await stack["pub"].publish(E.Event(job_id=job, seq=4, kind=E.EVENT_KIND_DONE))
    await asyncio.wait_for(reader, 5)  # the stream ends after DONE
    events = [e for e in parse("".join(chunks)) if "id" in e]
    assert [e["id"] for e in events] == ["1", "2", "3", "4"]
    assert json.loads(events[2]["data"])["delta"] == "live"


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "99999999999999999999999", "1; drop", "1_000", "+3"])
async def test_a_cursor_that_is_not_a_number_is_400(stack, value):
    r = await stack["client"].get("/v1/jobs/job-x/events", headers={"last-event-id": value})
    assert r.status_code == 400 and r.json()["error"]["reason"] == "BAD_CURSOR"
    r = await stack["client"].get("/v1/jobs/job-x/events", params={"after_seq": value})
    assert r.status_code == 400


#: digits to str.isdigit(), not to the SSE spec: headers arrive as latin-1 (where ² and ³ are
#: single bytes); a query string is percent-decoded as UTF-8, so any script's digits get through
@pytest.mark.parametrize("header,query", [(b"\xb2", "²"), (b"1\xb3", "٣"), ("٣".encode(), "３"), (b"\xb9\xb2", "۱۲")])
async def test_a_cursor_in_non_ascii_digits_is_400_not_500_nor_a_number(stack, header, query):
    job = await publish_job(stack["pub"])
    r = await stack["client"].get(f"/v1/jobs/{job}/events", headers={"last-event-id": header})
    assert r.status_code == 400 and r.json()["error"]["reason"] == "BAD_CURSOR", r.text
    assert r.json()["error"]["field"] == "Last-Event-ID"
    r = await stack["client"].get(f"/v1/jobs/{job}/events", params={"after_seq": query})
    assert r.status_code == 400 and r.json()["error"]["field"] == "after_seq", r.text


async def test_unknown_job_is_404_and_bad_job_id_is_404_route(stack):
    # with the defaults (header wait 1 s, unknown-job grace 10 s): a 404 at once, not 200 and an error later
    started = asyncio.get_running_loop().time()
    r = await stack["client"].get(f"/v1/jobs/job-{uuid.uuid4().hex[:12]}/events", timeout=2 * DEFAULT_GRACE_S)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
    assert asyncio.get_running_loop().time() - started < DEFAULT_GRACE_S
    r = await stack["client"].get("/v1/jobs/bad%20id/events")  # an escape: not a canonical path, refused by Check
    assert r.status_code == 400 and r.json()["error"]["reason"] == "NON_CANONICAL_PATH"
    r = await stack["client"].get("/v1/jobs/bad!id/events")
    assert r.status_code == 404


async def test_without_a_token_it_is_401(stack):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack['port']}") as anon:
        r = await anon.get("/v1/jobs/job-x/events")
    assert r.status_code == 401


async def _follow(stack, job: str, cursor: int, out: list[str], token: str | None = None) -> None:
    headers = {"last-event-id": str(cursor)}
    if token:
        headers["authorization"] = f"Bearer {token}"
    async with stack["client"].stream("GET", f"/v1/jobs/{job}/events", headers=headers) as r:
        assert r.status_code == 200
        async for text in r.aiter_text():
            out.append(text)


def _ids(chunks: list[str]) -> list[int]:
    return [int(e["id"]) for e in parse("".join(chunks)) if "id" in e]


async def _until(cond, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_clients_of_one_job_share_one_upstream_subscription(stack):
    feeds = stack["app"].asgi.events._feeds
    job = await publish_job(stack["pub"], n_tokens=2, terminal=False)  # seqs 1..3
    a, b = [], []
    ta = asyncio.create_task(_follow(stack, job, 0, a))
    await _until(lambda: _ids(a) == [1, 2, 3])
    tb = asyncio.create_task(_follow(stack, job, 2, b))  # joins late, from its own cursor
    await _until(lambda: _ids(b) == [3])
    shared = [f for f in feeds.values() if f.key[0] == job]
    assert len(shared) == 1 and shared[0].clients == 2
    await stack["pub"].publish(E.Event(job_id=job, seq=4, kind=E.EVENT_KIND_TOKEN, delta="x"))
    await stack["pub"].publish(E.Event(job_id=job, seq=5, kind=E.EVENT_KIND_DONE))
    await asyncio.wait_for(asyncio.gather(ta, tb), 5)
    assert _ids(a) == [1, 2, 3, 4, 5] and _ids(b) == [3, 4, 5]  # each exactly once, from its cursor
    await _until(lambda: not any(f.key[0] == job for f in feeds.values()))  # ended: forgotten
    c = []
    await asyncio.wait_for(_follow(stack, job, 0, c), 5)  # after the end: a fresh call replays it all
    assert _ids(c) == [1, 2, 3, 4, 5]


async def test_a_client_leaving_keeps_the_others_and_the_last_one_cancels(stack):
    feeds = stack["app"].asgi.events._feeds
    job = await publish_job(stack["pub"], n_tokens=1, terminal=False)
    a, b = [], []
    ta = asyncio.create_task(_follow(stack, job, 0, a))
    tb = asyncio.create_task(_follow(stack, job, 0, b))
    await _until(lambda: _ids(a) == [1, 2] and _ids(b) == [1, 2])
    feed = next(f for f in feeds.values() if f.key[0] == job)
    ta.cancel()
    await _until(lambda: feed.clients == 1)
    await stack["pub"].publish(E.Event(job_id=job, seq=3, kind=E.EVENT_KIND_TOKEN, delta="y"))
    await _until(lambda: _ids(b) == [1, 2, 3])
    tb.cancel()
    await _until(lambda: feed.clients == 0 and feed.ended and feed.call.cancelled())
    assert not any(f.key[0] == job for f in feeds.values())


async def test_another_users_job_is_404_and_shares_nothing(stack):
    feeds = stack["app"].asgi.events._feeds
    other = (await stack["client"].post("/v1/auth/dev-sign-in", json={"displayName": "sse-other"})).json()["tokens"][
        "accessToken"
    ]
    job = await publish_job(stack["pub"], n_tokens=1, terminal=False)
    a = []
    ta = asyncio.create_task(_follow(stack, job, 0, a))
    await _until(lambda: _ids(a) == [1, 2])
    for cursor in ("0", "1"):  # someone else's job: the answer of an unknown job, whatever the cursor
        r = await stack["client"].get(
            f"/v1/jobs/{job}/events", headers={"authorization": f"Bearer {other}", "last-event-id": cursor}
        )
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
    mine = [f for f in feeds.values() if f.key[0] == job]
    assert len(mine) == 1 and mine[0].clients == 1  # the owner's feed only; nothing was opened for the other user
    await stack["pub"].publish(E.Event(job_id=job, seq=3, kind=E.EVENT_KIND_DONE))
    await asyncio.wait_for(ta, 5)
    assert _ids(a) == [1, 2, 3]


async def test_a_late_client_older_than_the_feed_buffer_gets_its_own_call(stack):
    feeds = stack["app"].asgi.events._feeds
    job = await publish_job(stack["pub"], n_tokens=30, terminal=False)  # 31 events; feed buffer: 16
    a = []
    ta = asyncio.create_task(_follow(stack, job, 0, a))
    await _until(lambda: _ids(a) == list(range(1, 32)))
    feed = next(f for f in feeds.values() if f.key[0] == job)
    assert feed.start > 0 and len(feed.events) <= 16  # the oldest events were dropped
    b = []
    tb = asyncio.create_task(_follow(stack, job, 0, b))
    await _until(lambda: _ids(b) == list(range(1, 32)))  # everything, from its own upstream call
    # (b's own call is not shared; once b has caught up it may join the feed that covers its cursor)
    assert feed.clients in (1, 2)
    await stack["pub"].publish(E.Event(job_id=job, seq=32, kind=E.EVENT_KIND_DONE))
    await asyncio.wait_for(asyncio.gather(ta, tb), 5)
    assert _ids(a)[-1] == 32 and _ids(b)[-1] == 32


async def test_a_client_behind_the_feed_buffer_goes_on_without_a_gap_or_a_repeat(stack):
    """A shared feed keeps ECO2_GATEWAY_SSE_FEED_BUFFER_EVENTS events (16 here) and reads up to
    half of that per upstream message; a client that falls behind what it keeps continues from its
    own cursor over a call of its own (eco2_gateway_sse_catch_ups_total), in the same response."""
    from eco2.gateway.sse import CATCH_UPS

    job = f"job-{uuid.uuid4().hex[:12]}"
    n = 300
    await stack["pub"].publish_many(
        [E.Event(job_id=job, seq=q, kind=E.EVENT_KIND_TOKEN, delta=f"{q} ") for q in range(1, n + 1)]
    )
    await stack["pub"].publish(E.Event(job_id=job, seq=n + 1, kind=E.EVENT_KIND_DONE))
    before = CATCH_UPS._value.get()
    clients = [[] for _ in range(3)]
    await asyncio.wait_for(asyncio.gather(*(_follow(stack, job, 0, out) for out in clients)), 20)
    for out in clients:  # each stream complete (ended after DONE), every event once, in order
        assert _ids(out) == list(range(1, n + 2)), (len(_ids(out)), CATCH_UPS._value.get() - before)


async def test_behind_envoy_a_shared_feed_serves_only_its_own_wristband(service_env):
    """Mesh mode forwards x-eco2-* as sent (the Envoy in front stripped the client's): a client
    that skips the Envoy and names another user in x-eco2-user-id must not join that user's
    shared feed; its own wristband opens its own Subscribe, which EventService refuses."""
    from eco2.services.bus.producer import EventPublisher
    from eco2.services.dataplane.urls import create_redis
    from support.identity import wristband

    async with upstreams(service_env) as addrs, gateway(addrs, ECO2_GATEWAY_AUTH_MODE="mesh") as (_app, port):
        redis = create_redis(service_env["REDIS_URL"])
        owner, other = f"u-{uuid.uuid4().hex[:8]}", f"u-{uuid.uuid4().hex[:8]}"
        pub = OwnedJobs(EventPublisher(redis), owner)
        job = await publish_job(pub, n_tokens=2, terminal=False)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
                async with c.stream(
                    "GET",
                    f"/v1/jobs/{job}/events",
                    headers={"x-eco2-identity": wristband(owner), "x-eco2-user-id": owner},
                ) as mine:
                    assert mine.status_code == 200
                    async for line in mine.aiter_lines():
                        if line.startswith("id: "):
                            break  # the owner's feed is open and serving
                    spoofed = await c.get(
                        f"/v1/jobs/{job}/events", headers={"x-eco2-identity": wristband(other), "x-eco2-user-id": owner}
                    )
                    assert spoofed.status_code == 404, spoofed.text
        finally:
            await redis.aclose()
