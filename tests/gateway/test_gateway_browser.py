"""The browser UI in headless Chromium (Debian `chromium` + playwright-core) against the real
services, as two users at once — a 1280 px desktop and a 390 px phone (tests/node/ui.mjs drives
both; this file judges what they saw):

- signed out, nothing of the chat shows; sign-in; "페트병 어떻게 버려?" streamed with a typing
  indicator first and the text growing in many small steps (paced in the page), reloaded and cut
  off mid-answer (a TCP proxy drops every connection), resumed with Last-Event-ID and complete
  exactly once; its sources (one line per rule, expandable to the rule's lines), the character
  card once, the stages folded; a question that needs a location (shared on the desktop,
  declined on the phone) with the places once, as a compact list linking to OpenStreetMap; an
  answer stopped mid-way with 멈추기 (the phone), its text kept and marked, the same reopened; a
  photo with its thumbnail; reload → the same conversation in order with its cards; the page
  opened offline from the service worker's shell, saying so; the PWA manifest and its icons;
- on the phone, a scan (photo → stages → the scan's question → result → the character earned)
  and the collection page (13 characters, owned and not yet owned);
- no horizontal overflow, no console error, no serious axe-core violation on any view.

The answers are the real chat agent's and scan pipeline's (offline provider) through the real
events, images, location and character services and the gateway's SSE. The offline provider
answers at once; the test slows it (the provider's own `token_delay_s`) so that there is a
"mid-answer" to reload in. Screenshots are kept in test-artifacts/ui/ — look at them when you
change the page."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import uuid
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
NODE_DIR = Path(__file__).parents[1] / "node"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
TOKEN_DELAY_S = 0.1

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (apt-get install chromium; .ci/run installs it)"
)


@contextlib.asynccontextmanager
async def services(service_env, monkeypatch, data_dir: Path):
    """auth, character, events, images, location, scan and chat (offline provider, slowed down),
    in-process, with the gateway in front: (gateway port, addresses)."""
    from eco2.services.chat import app as chat_app_module
    from eco2.services.images.app import create as create_images
    from eco2.services.llm import create_llm
    from eco2.services.location.app import create as create_location
    from eco2.services.scan.app import create as create_scan

    monkeypatch.setattr(
        chat_app_module, "create_llm", lambda *a, **k: create_llm(*a, **{**k, "offline_token_delay_s": TOKEN_DELAY_S})
    )
    suffix = uuid.uuid4().hex[:6]
    async with contextlib.AsyncExitStack() as stack:
        addrs = dict(await stack.enter_async_context(upstreams(service_env)))
        with env({**service_env, "ECO2_DATA_DIR": str(data_dir)}):
            images, location = create_images(), create_location()
        for name, app in (("images", images), ("location", location)):
            addrs[name] = f"127.0.0.1:{(await stack.enter_async_context(running(app, metrics=False))).port}"
        mesh = {
            **service_env,
            "ECO2_DATA_DIR": str(data_dir),
            **{f"ECO2_{n.upper()}_ADDR": a for n, a in addrs.items() if n != "pump"},
        }
        with env({**mesh, "ECO2_SCAN_JOB_KIND": f"scan-ui-{suffix}", "ECO2_SCAN_CLAIM_BLOCK_MS": "100"}):
            scan = create_scan()
        addrs["scan"] = f"127.0.0.1:{(await stack.enter_async_context(running(scan, metrics=False))).port}"
        with env(
            {
                **mesh,
                "ECO2_SCAN_ADDR": addrs["scan"],
                "ECO2_CHAT_JOB_KIND": f"chat-ui-{suffix}",
                "ECO2_CHAT_WORKERS": "4",
            }
        ):  # chat's photos go to scan
            chat = chat_app_module.create()
        addrs["chat"] = f"127.0.0.1:{(await stack.enter_async_context(running(chat, metrics=False))).port}"
        # the gateway checks signed image links with the images service's secret, kept in the data dir
        _app, port = await stack.enter_async_context(
            gateway(
                addrs,
                ECO2_DEPLOYMENT="embedded",
                ECO2_DATA_DIR=str(data_dir),
                **{f"ECO2_{n.upper()}_ADDR": addrs[n] for n in ("images", "scan", "chat")},
            )
        )
        yield port, addrs


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
        owner = await conn.fetchval(
            "SELECT user_id FROM chat_messages WHERE job_id = $1 AND role = $2", job_id, chat_pb2.MESSAGE_ROLE_USER
        )
    finally:
        await conn.close()
    async with grpc.aio.insecure_channel(events_addr) as ch:
        call = events_pb2_grpc.EventServiceStub(ch).Subscribe(
            events_pb2.SubscribeRequest(job_id=job_id), metadata=as_user(owner), timeout=30
        )
        return [e async for e in call]


async def drive(url: str, drop_url: str, phone_url: str, photo: Path) -> dict:
    proc = await asyncio.create_subprocess_exec(
        "node",
        "ui.mjs",
        json.dumps(
            {
                "url": url,
                "dropUrl": drop_url,
                "phoneUrl": phone_url,
                "photo": str(photo),
                "artifacts": str(ARTIFACTS),
                "chromium": str(CHROMIUM),
            }
        ),
        cwd=NODE_DIR,
        env={**os.environ, "NODE_NO_WARNINGS": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 150)
    assert proc.returncode == 0, err.decode()[-3000:]
    return json.loads(out)


def words(text: str) -> str:
    """Text without whitespace and list markers: what must be on the screen, in order."""
    return re.sub(r"\s+", "", text)


def shows_in_order(full_answer: str, shown: str, *, except_lines: tuple[str, ...]) -> bool:
    """Every line of the answer (but those a card shows instead) is on the screen, in order."""
    screen, at = words(shown), 0
    for line in full_answer.splitlines():
        line = re.sub(r"^(- |\d+\. )", "", line.strip()).strip("[]")
        if not line or any(x in line for x in except_lines):
            continue
        found = screen.find(words(line), at)
        if found < 0:
            return False
        at = found + len(words(line))
    return True


def serious(violations: list[dict]) -> list[dict]:
    return [v for v in violations if v["impact"] in ("serious", "critical")]


def test_the_icons_are_what_gateway_icons_draws():
    checked = subprocess.run(
        [sys.executable, "-m", "eco2.gateway.icons", "--check"], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stderr


async def test_desktop_and_phone_users_ask_scan_reload_and_go_offline(service_env, monkeypatch, session_dir):
    if not (NODE_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.fail("tests/node/node_modules is missing: run `npm ci --prefix tests/node` (CI does)")
    from eco2.gateway.icons import png

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    photo = session_dir / f"ui-photo-{uuid.uuid4().hex[:6]}.png"
    photo.write_bytes(png(160, 0.0))
    data_dir = session_dir / f"ui-{uuid.uuid4().hex[:6]}"
    data_dir.mkdir()
    async with services(service_env, monkeypatch, data_dir) as (port, addrs):
        link = DroppableLink(port)
        async with link.serve() as (proxy_port, control_port):
            # the desktop goes through the droppable link, the phone straight to the gateway
            seen = await drive(
                f"http://127.0.0.1:{proxy_port}/",
                f"http://127.0.0.1:{control_port}/drop",
                f"http://127.0.0.1:{port}/",
                photo,
            )
        (ARTIFACTS / "ui.json").write_text(
            json.dumps(seen, ensure_ascii=False, indent=1)
        )  # what the browsers saw, next to the screenshots
        desk, phone = seen["desktop"], seen["phone"]
        assert "error" not in desk, json.dumps(desk, ensure_ascii=False, indent=1)[-5000:]
        assert "error" not in phone, json.dumps(phone, ensure_ascii=False, indent=1)[-5000:]
        assert link.drops == 1
        events = await job_events(addrs["events"], desk["jobId"], service_env["DATABASE_URL"])

    for who in (desk, phone):
        # signed out: the sign-in only, nothing of the chat, no serious accessibility violation
        assert who["title"].startswith("Eco²") and who["signInVisible"]
        assert not any(who["chatControlsVisible"].values()), who["chatControlsVisible"]
        assert serious(who["axeSignedOut"]) == [], who["axeSignedOut"]
        # a dropped network makes the browser log failed fetches, the expired token below its 401s;
        # nothing else may be an error
        expected = ("net::ERR_", "Failed to fetch", "the server responded with a status of 401")
        assert [e for e in who["consoleErrors"] if not any(x in e for x in expected)] == []
    for key in ("overflowSignedOut", "overflowChat"):
        assert desk[key] <= 0 and phone[key] <= 0, (key, desk[key], phone[key])

    # what the agent produced: the tokens, and the final answer in the DONE event
    assert events[-1].kind == events_pb2.EVENT_KIND_DONE, events[-1]
    done = chat_pb2.ChatResult()
    assert events[-1].done.result.Unpack(done)
    full = done.answer
    assert "".join(e.delta for e in events if e.kind == events_pb2.EVENT_KIND_TOKEN).strip() == full.strip()
    assert all(fact in full for fact in ("내용물", "라벨", "압착", "뚜껑"))  # the golden answer for 무색페트병

    # desktop: signed in, focus in the message box, the photo picker in Korean
    assert desk["who"] == "브라우저 님" and desk["focusAfterSignIn"] == "message"
    assert desk["photoPicker"]["label"] == "사진" and desk["photoPicker"]["inputWidth"] <= 1
    # the typing indicator came before the first token; the text then grew in many small steps
    assert desk["typingBeforeFirstToken"]
    assert desk["growthSteps"] >= 15, desk["growthSteps"]
    # reloaded mid-answer: the page showed what it had at once and resumed after its last seq
    before = desk["beforeReload"]
    assert 0 < len(before["answer"]) < len(full) and full.startswith(before["answer"])
    assert desk["afterReloadVisible"].strip(), "the reloaded page showed nothing of the answer it had"
    cursors = [int(r["lastEventId"]) for r in desk["eventRequests"] if r["lastEventId"] not in (None, "")]
    assert len(desk["eventRequests"]) >= 3 and max(cursors) >= before["lastSeq"] > 0, desk["eventRequests"]
    # cut off mid-answer: the page said it was offline, kept what it had, and got the rest exactly once
    assert not desk["finishedWhileOffline"], "the answer finished before the network drop: slow the provider down"
    assert full.startswith(desk["atOffline"]) and "오프라인" in desk["offlineBanner"] and not desk["offlineBannerAfter"]
    assert desk["record"]["answer"] == full and desk["record"]["lastSeq"] == events[-1].seq
    # on the screen: every line of the answer in order, the character once (its card, not a line)
    assert done.character.name == "페티" and desk["card"] == ["페티"]
    assert shows_in_order(full, desk["answerText"], except_lines=("Eco² 캐릭터",)), desk["answerText"]
    assert desk["turnText"].count("페티") == 1, desk["turnText"]
    # the stages folded into one line; one source line per rule, opening to the rule's lines
    assert not desk["stagesOpen"] and "단계" in desk["stagesSummary"], desk["stagesSummary"]
    rules = [c.title for c in done.citations if c.kind == chat_pb2.CITATION_KIND_RULE]
    assert (
        rules and len(desk["sourceTitles"]) == len(rules) and all(t in s for t, s in zip(rules, desk["sourceTitles"]))
    )
    assert desk["sourceLines"] and desk["sourceLines"][0] in done.citations[0].snippet
    # the location question, shared: the places once, a compact list with distances and map links
    assert desk["placeNames"] and len(desk["placeNames"]) == len(desk["placeDistances"])
    assert all(link.startswith("https://www.openstreetmap.org/?mlat=") for link in desk["placeLinks"])
    assert all(desk["placesTurnText"].count(name) == 1 for name in desk["placeNames"]), desk["placesTurnText"]
    # the photo: offline there is no vision model, and the answer says so
    assert "비전 모델" in desk["photoAnswer"], desk["photoAnswer"]
    # reload: the same conversation in order, with its cards and the photo's thumbnail
    roles = [t["role"] for t in desk["reopened"]]
    assert roles == ["user", "assistant"] * 3, desk["reopened"]
    q1, a1, q2, a2, q3, _a3 = desk["reopened"]
    assert (
        q1["text"] == "페트병 어떻게 버려?" and q2["text"] == "근처 수거함 알려줘" and q3["text"] == "이거 어떻게 버려?"
    )
    assert (
        (a1["characters"], a1["sources"]) == (1, len(rules))
        and a2["places"] == len(desk["placeNames"])
        and q3["thumbLoaded"]
    )
    assert a1["text"].startswith(desk["answerText"][:40])
    assert len(desk["reopenedStages"]) >= 3 and any("답변" in s for s in desk["reopenedStages"]), desk["reopenedStages"]
    assert serious(desk["axeChat"]) == [], desk["axeChat"]
    assert desk["overflowReopened"] <= 0
    # installable and offline: the manifest and its icons, the shell from the service worker
    assert desk["serviceWorker"] and desk["manifest"]["display"] == "standalone" and desk["manifest"]["startUrl"] == "/"
    assert {"192x192 200 image/png", "512x512 200 image/png"} <= set(desk["manifest"]["icons"]), desk["manifest"]
    shell = desk["offlineShell"]
    assert shell["title"].startswith("Eco²") and "오프라인" in shell["banner"] and shell["turns"] == 6, shell

    # phone: the header above the page (not over it), 보내기 on one line
    layout = phone["layout"]
    assert layout["headerBottom"] <= layout["mainTop"] + 1 and not layout["sendWraps"] and layout["sendHeight"] < 56, (
        layout
    )
    # the location question, declined: the answer says so, and no places
    assert "위치를 알려주지 않으셔서" in phone["declinedAnswer"] and phone["declinedPlaces"] == 0
    # 멈추기: in 보내기's place while the answer streams; what was streamed stays, marked stopped, not
    # an error; 보내기 is back and the focus in the message box; reopened, the same text and mark
    stopped, reopened = phone["stopped"], phone["stoppedReopened"]
    assert phone["sendHiddenWhileAnswering"] and not stopped["stopVisible"] and stopped["sendVisible"], stopped
    assert (
        stopped["note"] == ["답변을 멈췄어요."]
        and stopped["errors"] == 0
        and stopped["cards"] == 0
        and stopped["focus"] == "message"
    ), stopped
    assert stopped["record"]["stopped"] and stopped["record"]["finished"] and len(words(stopped["answer"])) >= 3
    assert words(stopped["record"]["answer"]) == words(stopped["answer"]) and len(words(stopped["answer"])) < len(
        words(full)
    ), "stopped before the end"
    assert (
        words(reopened["answer"]) == words(stopped["answer"])
        and reopened["note"] == ["답변을 멈췄어요."]
        and reopened["cards"] == 0
    ), reopened
    # the scan: photo → stages → the question (18 categories) → result → the character earned
    assert phone["scanPicker"] == "사진 고르기"
    assert "무엇인가요" in phone["scanPrompt"] and phone["scanChoices"] == 18
    assert phone["scanStepsWhileAsking"] == [
        "사진 분석:asking",
        "배출 규칙:waiting",
        "답변 쓰기:waiting",
        "보상:waiting",
    ], phone["scanStepsWhileAsking"]
    assert phone["scanSteps"] == ["사진 분석:done", "배출 규칙:done", "답변 쓰기:done", "보상:done"], phone["scanSteps"]
    assert (
        "사진은 보지 못했어요" in phone["scanAnswer"]
        and "'무색페트병'(으)로 분류했어요" in phone["scanAnswer"]
        and "라벨" in phone["scanAnswer"]
    )
    assert phone["scanCard"] == ["페티"] and len(phone["scanReward"]) == 1 and "획득했어요" in phone["scanReward"][0], (
        phone["scanReward"]
    )
    # the collection: 13 characters, the two owned (the default 이코 and 페티) and 11 to meet
    assert (
        sorted(phone["owned"]) == ["이코", "페티"]
        and phone["locked"] == 11
        and "13개 중 2개" in phone["collectionSummary"]
    )
    for key in ("axeChat", "axeScanAsking", "axeCharacters"):
        assert serious(phone[key]) == [], (key, phone[key])
    for key in ("overflowScan", "overflowCharacters"):
        assert phone[key] <= 0, (key, phone[key])
    # an expired access token is renewed once (the two calls that met it waited for one refresh)
    assert phone["tokenRenewed"] and phone["failedRequests"], phone["failedRequests"]
    assert all(re.match(r"401 /v1/(characters|collection) ", f) for f in phone["failedRequests"]), phone[
        "failedRequests"
    ]
    assert desk["failedRequests"] == [], desk["failedRequests"]
    assert phone["afterSignOut"] == {"composer": False, "token": None, "turns": 0}, phone["afterSignOut"]
    assert len(list(ARTIFACTS.glob("*.png"))) >= 9
