"""The browser UI in headless Chromium (Debian `chromium` + playwright-core) against the real
services: sign in (dev sign-in through the gateway), ask "페트병 어떻게 버려?", watch tokens
arrive, reload mid-answer, drop the network mid-answer and bring it back, and get the rest
exactly once. The answer is the real chat agent's (LangGraph, offline provider) through the real
events service and the gateway's SSE. A screenshot is kept in test-artifacts/gateway-ui.png.

The offline provider answers instantly; the test slows it to a readable pace (the provider's
own `token_delay_s`) so that there is a "mid-answer" to reload in."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

import asyncpg
import grpc
import pytest

from eco2.chat.v1 import chat_pb2
from eco2.events.v1 import events_pb2, events_pb2_grpc
from support.gateway import gateway, upstreams
from support.identity import as_user
from support.servers import env, running

CHROMIUM = Path("/usr/bin/chromium")
NODE_DIR = Path(__file__).parent / "node"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TOKEN_DELAY_S = 0.15

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (apt-get install chromium; .ci/run installs it)")


@contextlib.asynccontextmanager
async def real_chat(service_env, addrs, monkeypatch):
    """location + the real chat service (offline provider, slowed down), in-process."""
    from eco2.services.chat import app as chat_app_module
    from eco2.services.llm import create_llm
    from eco2.services.location.app import create as create_location

    monkeypatch.setattr(chat_app_module, "create_llm", lambda *a, **k: create_llm(*a, **{**k, "offline_token_delay_s": TOKEN_DELAY_S}))
    with env(service_env):
        location = create_location()
    async with running(location, metrics=False) as loc:
        chat_env = {**service_env, "ECO2_EVENTS_ADDR": addrs["events"], "ECO2_CHARACTER_ADDR": addrs["character"],
                    "ECO2_LOCATION_ADDR": f"127.0.0.1:{loc.port}", "ECO2_IMAGES_ADDR": "127.0.0.1:1", "ECO2_CHAT_WORKERS": "4"}
        with env(chat_env):
            chat = chat_app_module.create()
        async with running(chat, metrics=False) as server:
            yield f"127.0.0.1:{server.port}"


class DroppableLink:
    """A TCP proxy between the browser and the gateway whose connections can be cut: a real
    network drop (Chromium's offline emulation leaves an open stream alone). `GET /drop` on the
    control port cuts every connection and refuses new ones for `down_s` seconds."""

    def __init__(self, target_port: int, down_s: float = 2.5) -> None:
        self.target_port = target_port
        self.down_s = down_s
        self.down_until = 0.0
        self.writers: set[asyncio.StreamWriter] = set()
        self.drops = 0

    async def _pipe(self, reader, writer) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _client(self, reader, writer) -> None:
        if asyncio.get_running_loop().time() < self.down_until:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self.writers -= {writer, up_writer}

    async def _control(self, reader, writer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.drops += 1
        self.down_until = asyncio.get_running_loop().time() + self.down_s
        for w in list(self.writers):
            w.transport.abort()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    @contextlib.asynccontextmanager
    async def serve(self):
        proxy = await asyncio.start_server(self._client, "127.0.0.1", 0)
        control = await asyncio.start_server(self._control, "127.0.0.1", 0)
        try:
            yield proxy.sockets[0].getsockname()[1], control.sockets[0].getsockname()[1]
        finally:
            for w in list(self.writers):
                w.transport.abort()
            proxy.close()
            control.close()


async def job_events(events_addr: str, job_id: str, database_url: str) -> list[events_pb2.Event]:
    """The job's events, read as the user who sent its message (a job streams to its owner only)."""
    conn = await asyncpg.connect(database_url)
    try:
        owner = await conn.fetchval("SELECT user_id FROM chat_messages WHERE job_id = $1 AND role = $2", job_id, chat_pb2.MESSAGE_ROLE_USER)
    finally:
        await conn.close()
    async with grpc.aio.insecure_channel(events_addr) as ch:
        call = events_pb2_grpc.EventServiceStub(ch).Subscribe(events_pb2.SubscribeRequest(job_id=job_id), metadata=as_user(owner), timeout=30)
        return [e async for e in call]


async def drive(url: str, shot: Path, drop_url: str | None) -> dict:
    proc = await asyncio.create_subprocess_exec(
        "node", "ui.mjs", json.dumps({"url": url, "screenshot": str(shot), "chromium": str(CHROMIUM), "dropUrl": drop_url}),
        cwd=NODE_DIR, env={**os.environ, "NODE_NO_WARNINGS": "1"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 150)
    assert proc.returncode == 0, err.decode()[-3000:]
    result = json.loads(out)
    assert "error" not in result, json.dumps(result, ensure_ascii=False, indent=1)[-4000:]
    return result


async def test_ask_reload_and_network_drop_mid_answer_get_the_rest_exactly_once(service_env, monkeypatch):
    if not (NODE_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.fail("tests/node/node_modules is missing: run `npm ci --prefix tests/node` (CI does)")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "gateway-ui.png"
    shot.unlink(missing_ok=True)
    async with upstreams(service_env) as addrs, real_chat(service_env, addrs, monkeypatch) as chat_addr:
        async with gateway(addrs, ECO2_CHAT_ADDR=chat_addr) as (app, port):
            link = DroppableLink(port)
            async with link.serve() as (proxy_port, control_port):
                result = await drive(f"http://127.0.0.1:{proxy_port}/", shot, f"http://127.0.0.1:{control_port}/drop")
            assert link.drops == 1
            assert result.get("jobId"), result
            events = await job_events(addrs["events"], result["jobId"], service_env["DATABASE_URL"])

    # what the agent produced: the tokens, and the final answer in the DONE event
    assert events[-1].kind == events_pb2.EVENT_KIND_DONE, events[-1]
    done = chat_pb2.ChatResult()
    assert events[-1].done.result.Unpack(done)
    streamed = "".join(e.delta for e in events if e.kind == events_pb2.EVENT_KIND_TOKEN)
    full = done.answer
    assert streamed.strip() == full.strip()
    for fact in ("내용물", "라벨", "압착", "뚜껑"):  # the golden answer for 무색페트병 (tests/test_chat_agent.py)
        assert fact in full, full

    assert result["title"].startswith("Eco²")
    assert result["who"] == "브라우저 님"
    assert result["userBubble"] == "페트병 어떻게 버려?"
    # tokens arrived one by one: the page showed part of the answer before the reload
    assert 0 < len(result["beforeReload"]) < len(full) and full.startswith(result["beforeReload"])
    assert full.startswith(result["afterReloadStart"])  # restored from the page's own record
    # the network went away mid-answer; the page kept what it had and resumed from its last seq
    assert not result["finishedWhileOffline"], "the answer finished before the network drop: slow the provider down"
    assert full.startswith(result["atOffline"]) and full.startswith(result["duringOffline"])
    cursors = [int(r["lastEventId"]) for r in result["eventRequests"] if r["lastEventId"] not in (None, "")]
    assert len(result["eventRequests"]) >= 3, result["eventRequests"]  # first, after the reload, after the drop
    assert cursors and max(cursors) > 0, result["eventRequests"]
    assert result["answer"].strip() == full.strip()  # the rest arrived exactly once: no gap, no repeat
    # the card shows the character of the item's category: 페티 for a PET bottle
    assert done.character.name == "페티" and result["card"] == done.character.name
    assert "답변 작성" in result["stages"] or "의도 파악" in result["stages"]
    # a dropped network makes the browser log failed fetches; nothing else may be an error
    assert [e for e in result["consoleErrors"] if "net::ERR_" not in e and "Failed to fetch" not in e] == []
    assert shot.stat().st_size > 1000
