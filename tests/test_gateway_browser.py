"""The browser UI in headless Chromium (Debian `chromium` + playwright-core): sign in, ask
"페트병 어떻게 버려?", watch tokens arrive, reload mid-answer, get the rest exactly once.

The answer comes from a test-only ChatService stand-in that publishes through the real
EventPublisher → real events service → gateway SSE → the page. A screenshot is kept in
test-artifacts/gateway-ui.png."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from eco2.services.runtime.settings import RuntimeSettings
from support.gateway import ANSWER_TOKENS, StandInChatApp, gateway, upstreams
from support.servers import running

CHROMIUM = Path("/usr/bin/chromium")
NODE_DIR = Path(__file__).parent / "node"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (apt-get install chromium; .ci/run installs it)")


async def test_ask_reload_mid_answer_and_get_the_rest_exactly_once(service_env):
    if not (NODE_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.fail("tests/node/node_modules is missing: run `npm ci --prefix tests/node` (CI does)")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "gateway-ui.png"
    shot.unlink(missing_ok=True)
    async with upstreams(service_env) as addrs:
        chat = StandInChatApp(RuntimeSettings(grpc_port=0, metrics_port=0), service_env["REDIS_URL"])
        async with running(chat, metrics=False) as chat_server:
            async with gateway(addrs, ECO2_CHAT_ADDR=f"127.0.0.1:{chat_server.port}") as (app, port):
                proc = await asyncio.create_subprocess_exec(
                    "node", "ui.mjs", json.dumps({"url": f"http://127.0.0.1:{port}/", "screenshot": str(shot), "chromium": str(CHROMIUM)}),
                    cwd=NODE_DIR, env={**os.environ, "NODE_NO_WARNINGS": "1"},
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )
                out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()[-3000:]
    result = json.loads(out)
    full = "".join(ANSWER_TOKENS)
    assert result["title"].startswith("Eco²")
    assert result["who"] == "브라우저 님"
    assert result["userBubble"] == "페트병 어떻게 버려?"
    assert 0 < len(result["beforeReload"]) < len(full) and full.startswith(result["beforeReload"])
    assert full.startswith(result["afterReloadStart"])  # restored from the page's own record
    assert result["answer"] == full  # the rest arrived exactly once: no gap, no repeat
    assert result["card"] == "페티"
    assert "답변 작성" in result["stages"] or "의도 파악" in result["stages"]
    assert result["consoleErrors"] == []
    assert shot.stat().st_size > 1000
