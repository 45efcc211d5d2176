"""`eco2 serve gateway` and `eco2 up` with the gateway: real processes, real ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request

import pytest

from eco2.character.v1 import character_pb2
from eco2.services.registry import HTTP_APPS, SERVICES, create


def _post(url: str, body: bytes, headers: dict) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, dict(r.headers), r.read()


def test_registry_knows_the_gateway_as_an_http_app():
    assert "gateway" in HTTP_APPS and "gateway" not in SERVICES
    app = create("gateway")
    assert app.name == "gateway" and app.protocol == "http" and callable(app.serve)


def test_eco2_up_serves_the_gateway(session_dir):
    """With ECO2_INGRESS=none: no Envoy, the gateway checks every call itself (edge mode)."""
    data_dir = session_dir / "up-gateway"
    data_dir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "eco2.services.cli", "up", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "ECO2_INGRESS": "none"},
    )
    try:
        path = data_dir / "endpoints.json"
        deadline = time.monotonic() + 90
        while not path.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "eco2 up did not write endpoints.json"
            time.sleep(0.1)
        endpoints = json.loads(path.read_text())
        assert "ingress" not in endpoints and not (data_dir / "envoy").exists()
        base = endpoints["gateway"]
        assert base.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(base + "/healthz", timeout=5) as r:
            assert json.loads(r.read()) == {"status": "SERVING"}
        with urllib.request.urlopen(base + "/", timeout=5) as r:
            assert r.headers["content-type"].startswith("text/html") and "Eco²" in r.read().decode()
        with urllib.request.urlopen(endpoints["metrics"]["gateway"], timeout=5) as r:
            assert b"eco2_gateway_requests_total" in r.read()
        status, _, body = _post(
            base + "/v1/auth/dev-sign-in",
            json.dumps({"displayName": "up-user"}).encode(),
            {"content-type": "application/json"},
        )
        token = json.loads(body)["tokens"]["accessToken"]
        msg = character_pb2.GetCharacterRequest(code="char-eco").SerializeToString()
        status, headers, body = _post(
            base + "/eco2.character.v1.CharacterService/GetCharacter",
            struct.pack(">BI", 0, len(msg)) + msg,
            {"content-type": "application/grpc-web+proto", "authorization": f"Bearer {token}"},
        )
        n = struct.unpack(">I", body[1:5])[0]
        assert character_pb2.GetCharacterResponse.FromString(body[5 : 5 + n]).character.name == "이코"
        assert b"grpc-status: 0" in body[5 + n :]
        status, headers, body = _post(
            base + "/eco2.character.v1.CharacterService/GetCharacter",
            struct.pack(">BI", 0, len(msg)) + msg,
            {"content-type": "application/grpc-web+proto"},
        )
        assert {k.lower(): v for k, v in headers.items()}[
            "grpc-status"
        ] == "16"  # edge mode: the gateway called Check itself
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_gateway_fails_clearly_when_the_port_is_taken(service_env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = {**os.environ, **service_env, "ECO2_HTTP_PORT": str(port)}
        proc = subprocess.run(
            [sys.executable, "-m", "eco2.services.cli", "serve", "gateway"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode != 0 and "cannot listen" in proc.stderr and "ECO2_HTTP_PORT" in proc.stderr


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_event_loop_setting_picks_the_loop_of_eco2_serve(service_env, loop):
    """ECO2_EVENT_LOOP: `eco2 serve` runs on uvloop (the default) or asyncio's own loop; the
    `serving` log line says which."""
    env = {**os.environ, **service_env, "ECO2_EVENT_LOOP": loop, "ECO2_LOG_LEVEL": "INFO", "ECO2_LOG_FORMAT": "json"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "eco2.services.cli", "serve", "character"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        serving = None
        deadline = time.monotonic() + 60
        while serving is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("{") and json.loads(line).get("msg") == "serving":
                serving = json.loads(line)
        assert serving is not None, "no serving line"
        assert serving["loop"] == loop
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


async def test_the_gateway_speaks_http1_and_h2c_and_stops_within_the_grace(monkeypatch):
    """The gateway serves HTTP/1.1 and h2c (prior knowledge), and a stop with a response still
    streaming returns after the shutdown grace (the stream is cut)."""
    import asyncio

    import httpx

    from eco2.gateway.app import create

    for k, v in {"ECO2_HTTP_PORT": "0", "ECO2_METRICS_PORT": "0", "ECO2_GATEWAY_SHUTDOWN_GRACE_S": "0.5"}.items():
        monkeypatch.setenv(k, v)
    app = create()
    gateway = app.asgi

    class Endless:  # the real app, plus one route that never ends
        upstreams = gateway.upstreams

        async def __call__(self, scope, receive, send):
            if scope["type"] == "http" and scope["path"] == "/endless":
                await send(
                    {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
                )
                while True:
                    await send({"type": "http.response.body", "body": b": tick\n\n", "more_body": True})
                    await asyncio.sleep(0.05)
            await gateway(scope, receive, send)

    app.asgi = Endless()
    port = await app.start()
    base = f"http://127.0.0.1:{port}"
    try:
        async with (
            httpx.AsyncClient(base_url=base, timeout=5) as h1,
            httpx.AsyncClient(base_url=base, http1=False, http2=True, timeout=5) as h2,
        ):
            r1, r2 = await h1.get("/healthz"), await h2.get("/healthz")
            assert (r1.http_version, r1.json()) == ("HTTP/1.1", {"status": "SERVING"})
            assert (r2.http_version, r2.json()) == ("HTTP/2", {"status": "SERVING"})
            async with h1.stream("GET", "/endless") as stream:
                chunks = stream.aiter_bytes()
                assert (await chunks.__anext__()).startswith(b": tick")
                t0 = time.monotonic()
                await asyncio.wait_for(app.stop(), 10)
                assert time.monotonic() - t0 < 6
    finally:
        await app.stop()
