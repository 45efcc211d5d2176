"""SSE at the edge: GET /v1/jobs/{job_id}/events over the real EventService, resume by
Last-Event-ID / ?after_seq=, keepalives, terminal event, errors."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest

from eco2.events.v1 import events_pb2 as E
from support.gateway import gateway, upstreams


@pytest.fixture(scope="module")
async def stack(service_env):
    from eco2.services.dataplane.urls import create_redis
    from eco2.services.events.producer import EventPublisher

    async with upstreams(service_env) as addrs:
        async with gateway(addrs) as (app, port):
            redis = create_redis(service_env["REDIS_URL"])
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
                token = (await c.post("/v1/auth/dev-sign-in", json={"displayName": "sse-tests"})).json()["tokens"]["accessToken"]
                c.headers["authorization"] = f"Bearer {token}"
                yield {"client": c, "pub": EventPublisher(redis), "port": port, "token": token}
            await redis.aclose()


def parse(text: str) -> list[dict]:
    events = []
    for block in text.split("\n\n"):
        fields: dict = {}
        for line in block.split("\n"):
            if line.startswith(":") or not line:
                fields.setdefault("comments", []).append(line) if line else None
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
        if fields:
            events.append(fields)
    return events


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


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "99999999999999999999999", "1; drop"])
async def test_a_cursor_that_is_not_a_number_is_400(stack, value):
    r = await stack["client"].get("/v1/jobs/job-x/events", headers={"last-event-id": value})
    assert r.status_code == 400 and r.json()["error"]["reason"] == "BAD_CURSOR"
    r = await stack["client"].get("/v1/jobs/job-x/events", params={"after_seq": value})
    assert r.status_code == 400


async def test_unknown_job_is_404_and_bad_job_id_is_404_route(stack):
    r = await stack["client"].get(f"/v1/jobs/job-{uuid.uuid4().hex[:12]}/events")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await stack["client"].get("/v1/jobs/bad%20id/events")
    assert r.status_code == 404


async def test_without_a_token_it_is_401(stack):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack['port']}") as anon:
        r = await anon.get("/v1/jobs/job-x/events")
    assert r.status_code == 401
