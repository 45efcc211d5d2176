"""A scan from a browser's point of view: the gateway's JSON routes and SSE in front of the real
scan, images, character, events and auth services — sign in, upload a photo (channel scan),
submit, follow the stages over SSE, answer the scan's question, read the result and the
collection. The same flow in the browser's page is tests/gateway/test_gateway_browser.py's (the phone user)."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from support.fake_llm import png
from support.gateway import gateway, parse, upstreams
from support.servers import env, running


@pytest.fixture(scope="module")
async def edge(service_env, session_dir):
    from eco2.services.images.app import create as create_images
    from eco2.services.scan.app import create as create_scan

    data_dir = session_dir / f"gw-scan-{uuid.uuid4().hex[:6]}"
    data_dir.mkdir()
    async with upstreams(service_env) as addrs:
        with env({**service_env, "ECO2_DATA_DIR": str(data_dir)}):
            images_app = create_images()
        async with running(images_app, metrics=False) as images:
            with env(
                {
                    **service_env,
                    "ECO2_AUTH_ADDR": addrs["auth"],
                    "ECO2_EVENTS_ADDR": addrs["events"],
                    "ECO2_CHARACTER_ADDR": addrs["character"],
                    "ECO2_IMAGES_ADDR": f"127.0.0.1:{images.port}",
                    "ECO2_SCAN_JOB_KIND": f"scan-gw-{uuid.uuid4().hex[:6]}",
                    "ECO2_SCAN_CLAIM_BLOCK_MS": "100",
                }
            ):
                scan_app = create_scan()
            async with running(scan_app, metrics=False) as scan:
                async with gateway(
                    addrs, ECO2_IMAGES_ADDR=f"127.0.0.1:{images.port}", ECO2_SCAN_ADDR=f"127.0.0.1:{scan.port}"
                ) as (_app, port):
                    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
                        yield c, port


@pytest.fixture()
def client(edge):
    return edge[0]


async def sign_in(client) -> dict:
    r = await client.post("/v1/auth/dev-sign-in", json={"displayName": f"gw-scan-{uuid.uuid4().hex[:6]}"})
    assert r.status_code == 200, r.text
    return {"authorization": f"Bearer {r.json()['tokens']['accessToken']}"}


async def events_until(client, who, url: str, kinds: tuple[str, ...], after: int = 0) -> list[dict]:
    """The job's SSE events (parsed data) from `after` up to the first of `kinds`."""
    out = []
    async with client.stream("GET", url, headers={**who, "last-event-id": str(after)}) as r:
        assert r.status_code == 200
        buffer = ""
        async for chunk in r.aiter_text():
            buffer += chunk
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                for e in parse(block + "\n\n"):
                    if "data" in e:
                        out.append({"event": e["event"], "id": int(e["id"]), **json.loads(e["data"])})
                        if e["event"] in kinds:
                            return out
    return out


async def test_a_photo_scanned_through_the_gateway_earns_its_character(client):
    who = await sign_in(client)
    up = await client.post(
        "/v1/images?channel=scan", headers=who, files={"file": ("bottle.png", png(uuid.uuid4().bytes), "image/png")}
    )
    assert up.status_code == 200 and up.json()["image"]["channel"] == "IMAGE_CHANNEL_SCAN", up.text
    key = up.json()["image"]["key"]
    sent = await client.post(
        "/v1/scans", headers=who, json={"imageKey": key, "hint": "투명 생수병", "clientScanId": "gw-1"}
    )
    assert sent.status_code == 200, sent.text
    reply = sent.json()
    assert reply["eventsUrl"] == f"/v1/jobs/{reply['jobId']}/events"
    events = await events_until(client, who, reply["eventsUrl"], ("done", "error"))
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert [
        e["stage"] for e in events if e["event"] == "stage" and e["stageInfo"]["phase"] == "STAGE_PHASE_STARTED"
    ] == ["STAGE_QUEUED", "STAGE_VISION", "STAGE_RULE", "STAGE_ANSWER", "STAGE_REWARD"]
    result = events[-1]["done"]["result"]
    assert result["@type"] == "type.googleapis.com/eco2.scan.v1.ScanResult" and result["basis"] == "SCAN_BASIS_HINT"
    assert (
        result["reward"]["outcome"] == "REWARD_OUTCOME_RECEIVED"
        and result["reward"]["character"]["code"] == "char-petty"
    )
    assert result["explanation"] == "".join(e.get("delta", "") for e in events if e["event"] == "token")

    got = await client.get(f"/v1/scans/{result['scanId']}", headers=who)
    assert (
        got.status_code == 200
        and got.json()["status"] == "SCAN_STATUS_DONE"
        and got.json()["result"]["scanId"] == result["scanId"]
    )
    collection = await client.get("/v1/collection", headers=who)
    assert collection.status_code == 200 and "char-petty" in [
        o["character"]["code"] for o in collection.json()["characters"]
    ]
    # the same client id with another hint: refused with the reason
    again = await client.post(
        "/v1/scans", headers=who, json={"imageKey": key, "hint": "콜라 캔", "clientScanId": "gw-1"}
    )
    assert (
        again.status_code == 400
        and again.json()["error"]["code"] == "failed_precondition"
        and "client_scan_id" in again.json()["error"]["message"]
    )
    # another user's scan is not found, a bad request names its field
    other = await sign_in(client)
    assert (await client.get(f"/v1/scans/{result['scanId']}", headers=other)).status_code == 404
    bad = await client.post("/v1/scans", headers=who, json={})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_argument"


async def test_the_scans_question_is_answered_through_the_gateway(client):
    who = await sign_in(client)
    reply = (await client.post("/v1/scans", headers=who, json={"hint": "음료수 병"})).json()
    events = await events_until(client, who, reply["eventsUrl"], ("needs_input",))
    ask = events[-1]["needsInput"]
    assert ask["kind"] == "INPUT_KIND_CHOICE" and [c["label"] for c in ask["choices"]] == ["무색페트병", "유리병"]
    answered = await client.post(
        "/v1/scans/input",
        headers=who,
        json={"jobId": reply["jobId"], "inputId": ask["inputId"], "category": ask["choices"][1]["value"]},
    )
    assert answered.status_code == 200, answered.text
    rest = await events_until(client, who, reply["eventsUrl"], ("done", "error"), after=events[-1]["id"])
    assert rest[0]["id"] == events[-1]["id"] + 1
    result = rest[-1]["done"]["result"]
    assert result["basis"] == "SCAN_BASIS_ANSWER" and result["reward"]["character"]["code"] == "char-glassy"
