"""`eco2 up` and `eco2 serve` as a user runs them: real processes, real ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eco2.character.v1 import character_pb2, character_pb2_grpc
from eco2.services.registry import SERVICES
from support.fake_llm import png


def _eco2(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "eco2.services.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"eco2 up exited {proc.returncode}: {proc.stderr.read()}")
        if path.exists():
            return json.loads(path.read_text())
        time.sleep(0.1)
    raise AssertionError("eco2 up did not write endpoints.json in time")


def _tree(pid: int) -> list[int]:
    try:
        return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.fixture()
def data_dir(session_dir, request) -> Path:
    path = session_dir / f"up-{request.node.name}"
    path.mkdir()
    return path


def test_up_serves_every_service_and_stops_without_leftovers(data_dir):
    proc = _eco2("up", "--data-dir", str(data_dir))
    try:
        endpoints = _wait_for(data_dir / "endpoints.json", proc)
        assert set(SERVICES) <= set(endpoints)
        for name in SERVICES:
            host, port = endpoints[name].split(":")
            assert host == "127.0.0.1" and int(port) > 0
            with grpc.insecure_channel(endpoints[name]) as ch:
                status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status
                assert status == health_pb2.HealthCheckResponse.SERVING
            body = urllib.request.urlopen(endpoints["metrics"][name], timeout=5).read().decode()
            assert "eco2_grpc_server_handled_total" in body or "python_info" in body
        with grpc.insecure_channel(endpoints["character"]) as ch:
            reply = character_pb2_grpc.CharacterServiceStub(ch).ListCharacters(character_pb2.ListCharactersRequest(), timeout=5)
            assert len(reply.characters) == 13
        # a service port answers a user's call only with a wristband, as a developer gets one
        printed = subprocess.run([sys.executable, "-m", "eco2.services.cli", "identity", "--data-dir", str(data_dir), "--name", "up-dev"], capture_output=True, text=True, timeout=60)
        assert printed.returncode == 0, printed.stderr
        wristband = printed.stdout.strip()
        with grpc.insecure_channel(endpoints["character"]) as ch:
            stub = character_pb2_grpc.CharacterServiceStub(ch)
            stub.ListCollection(character_pb2.ListCollectionRequest(), metadata=(("x-eco2-identity", wristband),), timeout=5)
            with pytest.raises(grpc.RpcError) as refused:
                stub.ListCollection(character_pb2.ListCollectionRequest(), metadata=(("x-eco2-user-id", "anyone"),), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # the same endpoints, for scripts
        shown = subprocess.run([sys.executable, "-m", "eco2.services.cli", "endpoints", "--data-dir", str(data_dir)], capture_output=True, text=True)
        assert json.loads(shown.stdout)["character"] == endpoints["character"]

        # the terminal client answers from the running stack: tokens, then the citations
        asked = subprocess.run(
            [sys.executable, "-m", "eco2.services.cli", "chat", "--data-dir", str(data_dir), "--near", "37.5665,126.9780",
             "이 페트병 어떻게 분리해? 근처 수거함도 알려줘"],
            capture_output=True, text=True, timeout=120,
        )
        assert asked.returncode == 0, asked.stderr
        assert "라벨" in asked.stdout and "[출처]" in asked.stdout and "[샘플]" in asked.stdout, asked.stdout

        # eco2 scan: a photo and a hint that names it → the rules and the character; the exit codes
        photo, text = data_dir / "pet.png", data_dir / "notes.txt"
        photo.write_bytes(png(b"eco2 scan from the terminal"))
        text.write_text("사진이 아니에요")
        scanned = _scan(data_dir, "--hint", "투명 생수병", str(photo))
        assert scanned.returncode == 0, scanned.stderr
        assert "라벨" in scanned.stdout and "[규정] 무색페트병 (재활용폐기물_무색페트병)" in scanned.stdout and "[보상] '페티' 캐릭터를 획득했어요!" in scanned.stdout, scanned.stdout
        assert "사진 인식 모델이 설정되어 있지 않아" in scanned.stdout and "· 분리배출 규정을 찾고 있어요" in scanned.stderr
        asking = _scan(data_dir, str(photo))  # no hint, no terminal to answer in
        assert asking.returncode == 3 and "사진 속 물건이 무엇인가요?" in asking.stderr and "  3. 무색페트병" in asking.stderr, asking.stderr
        for bad, message in ((text, "is not a PNG, JPEG, GIF or WebP image"), (data_dir / "missing.png", "cannot read")):
            refused_scan = _scan(data_dir, str(bad))
            assert refused_scan.returncode == 2 and message in refused_scan.stderr, refused_scan.stderr

        # a second stack on the same data dir fails fast and clearly, and harms nothing
        second = _eco2("up", "--data-dir", str(data_dir))
        assert second.wait(timeout=30) != 0
        message = second.stderr.read()
        assert "already in use" in message and str(data_dir) in message
        with grpc.insecure_channel(endpoints["character"]) as ch:
            character_pb2_grpc.CharacterServiceStub(ch).GetCharacter(character_pb2.GetCharacterRequest(code="char-eco"), timeout=5)

        pids = _tree(proc.pid) + [endpoints["dataplane"]["postgres_pid"], endpoints["dataplane"]["valkey_pid"]]
        assert len(set(pids)) >= 1 + len(SERVICES) + 2  # up, services, postgres, valkey
        assert all(psutil.pid_exists(p) for p in pids)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
        time.sleep(0.5)
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert alive == [], f"left behind: {alive}"
        assert not (data_dir / "endpoints.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_up_restarts_warm_on_the_same_data_dir(data_dir):
    for _ in range(2):
        proc = _eco2("up", "--data-dir", str(data_dir))
        try:
            endpoints = _wait_for(data_dir / "endpoints.json", proc)
            with grpc.insecure_channel(endpoints["character"]) as ch:
                reply = character_pb2_grpc.CharacterServiceStub(ch).ListCharacters(character_pb2.ListCharactersRequest(), timeout=5)
                assert len(reply.characters) == 13  # migrations applied once, seed not duplicated
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def _scan(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eco2.services.cli", "scan", "--data-dir", str(data_dir), *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_scan_without_a_stack_fails_clearly(data_dir):
    photo = data_dir / "photo.png"
    photo.write_bytes(png(b"no stack"))
    scanned = _scan(data_dir, str(photo))
    assert scanned.returncode == 1 and "no stack is running" in scanned.stderr


def test_chat_without_a_stack_fails_clearly(data_dir):
    proc = _eco2("chat", "--data-dir", str(data_dir), "페트병 어떻게 버려?")
    assert proc.wait(timeout=30) == 1
    assert "no stack is running" in proc.stderr.read()
    proc = _eco2("chat", "--data-dir", str(data_dir), "--near", "91,0", "페트병 어떻게 버려?")
    assert proc.wait(timeout=30) == 1
    assert "out of range" in proc.stderr.read()


def test_serve_rejects_an_unknown_service():
    proc = _eco2("serve", "nope")
    assert proc.wait(timeout=30) != 0
    assert "unknown service" in proc.stderr.read()


def test_serve_fails_clearly_when_the_port_is_taken(service_env):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = _eco2("serve", "character", env={**os.environ, **service_env, "ECO2_GRPC_PORT": str(port)})
        try:
            assert proc.wait(timeout=30) != 0
            assert "cannot listen" in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
