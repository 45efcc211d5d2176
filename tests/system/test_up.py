"""`eco2 up` and `eco2 serve` as a user runs them: real processes, real ports."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
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
    return subprocess.Popen(
        [sys.executable, "-m", "eco2.services.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


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
            reply = character_pb2_grpc.CharacterServiceStub(ch).ListCharacters(
                character_pb2.ListCharactersRequest(), timeout=5
            )
            assert len(reply.characters) == 13
        # a service port answers a user's call only with a wristband, as a developer gets one
        printed = subprocess.run(
            [sys.executable, "-m", "eco2.services.cli", "identity", "--data-dir", str(data_dir), "--name", "up-dev"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert printed.returncode == 0, printed.stderr
        wristband = printed.stdout.strip()
        with grpc.insecure_channel(endpoints["character"]) as ch:
            stub = character_pb2_grpc.CharacterServiceStub(ch)
            stub.ListCollection(
                character_pb2.ListCollectionRequest(), metadata=(("x-eco2-identity", wristband),), timeout=5
            )
            with pytest.raises(grpc.RpcError) as refused:
                stub.ListCollection(
                    character_pb2.ListCollectionRequest(), metadata=(("x-eco2-user-id", "anyone"),), timeout=5
                )
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # the same endpoints, for scripts
        shown = subprocess.run(
            [sys.executable, "-m", "eco2.services.cli", "endpoints", "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
        )
        assert json.loads(shown.stdout)["character"] == endpoints["character"]

        # the terminal client answers from the running stack: tokens, then the citations
        asked = subprocess.run(
            [
                sys.executable,
                "-m",
                "eco2.services.cli",
                "chat",
                "--data-dir",
                str(data_dir),
                "--near",
                "37.5665,126.9780",
                "이 페트병 어떻게 분리해? 근처 수거함도 알려줘",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert asked.returncode == 0, asked.stderr
        assert "라벨" in asked.stdout and "[출처]" in asked.stdout and "[샘플]" in asked.stdout, asked.stdout

        # eco2 scan: a photo and a hint that names it → the rules and the character; the exit codes
        photo, text = data_dir / "pet.png", data_dir / "notes.txt"
        photo.write_bytes(png(b"eco2 scan from the terminal"))
        text.write_text("사진이 아니에요")
        scanned = _scan(data_dir, "--hint", "투명 생수병", str(photo))
        assert scanned.returncode == 0, scanned.stderr
        assert (
            "라벨" in scanned.stdout
            and "[규정] 무색페트병 (재활용폐기물_무색페트병)" in scanned.stdout
            and "[보상] '페티' 캐릭터를 획득했어요!" in scanned.stdout
        ), scanned.stdout
        assert (
            "사진 인식 모델이 설정되어 있지 않아" in scanned.stdout
            and "· 분리배출 규정을 찾고 있어요" in scanned.stderr
        )
        asking = _scan(data_dir, str(photo))  # no hint, no terminal to answer in
        assert (
            asking.returncode == 3
            and "사진 속 물건이 무엇인가요?" in asking.stderr
            and "  3. 무색페트병" in asking.stderr
        ), asking.stderr
        for bad, message in (
            (text, "is not a PNG, JPEG, GIF or WebP image"),
            (data_dir / "missing.png", "cannot read"),
        ):
            refused_scan = _scan(data_dir, str(bad))
            assert refused_scan.returncode == 2 and message in refused_scan.stderr, refused_scan.stderr

        _status_shows_health_streams_and_the_queue(data_dir, endpoints)

        # a second stack on the same data dir fails fast and clearly, and harms nothing
        second = _eco2("up", "--data-dir", str(data_dir))
        assert second.wait(timeout=30) != 0
        message = second.stderr.read()
        assert "already in use" in message and str(data_dir) in message
        with grpc.insecure_channel(endpoints["character"]) as ch:
            character_pb2_grpc.CharacterServiceStub(ch).GetCharacter(
                character_pb2.GetCharacterRequest(code="char-eco"), timeout=5
            )

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


def _eco2_status(data_dir: Path) -> tuple[int, dict[str, list[str]]]:
    """`eco2 status`'s exit code and table: service → [health, streams, queue]."""
    shown = subprocess.run(
        [sys.executable, "-m", "eco2.services.cli", "status", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = shown.stdout.splitlines()
    assert lines and lines[0].split() == ["SERVICE", "HEALTH", "STREAMS", "QUEUE"], shown.stdout + shown.stderr
    return shown.returncode, {
        line.split()[0]: [*line.split(None, 3)[1:3], line.split(None, 3)[3]] for line in lines[1:]
    }


def _status_shows_health_streams_and_the_queue(data_dir: Path, endpoints: dict) -> None:
    """`eco2 status` on the running stack: every service SERVING; a Subscribe stream held open
    shows on the events service; a job no worker can run shows as a dead letter of chat's queue."""
    import asyncio

    import redis.asyncio

    from eco2.events.v1 import events_pb2, events_pb2_grpc
    from eco2.services.bus.jobs import JobQueue
    from eco2.services.bus.producer import EventPublisher

    job = f"status-{os.getpid()}-{time.monotonic_ns()}"

    async def prepare() -> None:
        client = redis.asyncio.Redis.from_url(endpoints["dataplane"]["redis_url"])
        publisher = EventPublisher(client)
        await publisher.publish(events_pb2.Event(job_id=job, seq=1, kind=events_pb2.EVENT_KIND_STAGE))
        await JobQueue(client, "chat").enqueue(
            f"{job}-broken", b"not a chat job"
        )  # the workers fail it, then dead-letter it
        await publisher.aclose()
        await client.aclose()

    asyncio.run(prepare())
    code, rows = _eco2_status(data_dir)
    assert code == 0 and set(rows) == set(endpoints["metrics"]), rows
    assert all(health == "SERVING" for health, _, _ in rows.values()), rows
    assert rows["chat"][2].startswith("chat: ") and rows["character"][2] == "-", rows
    with grpc.insecure_channel(endpoints["events"]) as ch:
        stream = events_pb2_grpc.EventServiceStub(ch).Subscribe(events_pb2.SubscribeRequest(job_id=job), timeout=60)
        assert next(stream).seq == 1  # the stream is open and registered
        code, rows = _eco2_status(data_dir)
        assert int(rows["events"][1]) >= 1, rows
        stream.cancel()
    deadline = time.monotonic() + 60
    while "1 dead" not in rows["chat"][2]:  # three attempts, a second apart (ECO2_JOBS_RETRY_DELAY_S)
        assert time.monotonic() < deadline, rows["chat"]
        time.sleep(0.5)
        code, rows = _eco2_status(data_dir)
    assert rows["chat"][2] == "chat: 0 waiting, 0 running, oldest -, 1 dead", rows["chat"]


def test_up_restarts_warm_on_the_same_data_dir_on_the_same_ports(data_dir):
    """The second `eco2 up` on a data dir finds its data and its ports again (an open tab keeps
    its address), but for one that something else took meanwhile; each prints one line to open."""
    runs, squatter = [], None
    try:
        for attempt in range(2):
            proc = _eco2("up", "--data-dir", str(data_dir))
            try:
                endpoints = _wait_for(data_dir / "endpoints.json", proc)
                with grpc.insecure_channel(endpoints["character"]) as ch:
                    reply = character_pb2_grpc.CharacterServiceStub(ch).ListCharacters(
                        character_pb2.ListCharactersRequest(), timeout=5
                    )
                    assert len(reply.characters) == 13  # migrations applied once, seed not duplicated
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=60)
                assert proc.returncode == 0, err
                runs.append((endpoints, out, err))
            finally:
                if proc.poll() is None:
                    proc.kill()
            if attempt == 0:  # something else listens on location's port before the restart
                squatter = socket.socket()
                squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                squatter.bind(("127.0.0.1", int(endpoints["location"].rpartition(":")[2])))
                squatter.listen()
    finally:
        if squatter is not None:
            squatter.close()
    (first, out1, _), (second, out2, err2) = runs
    for endpoints, out in ((first, out1), (second, out2)):
        where = endpoints.get("ingress") or endpoints["gateway"]
        assert out == f"open {where}/\n", out  # one line: no JSON, no database password
    for name in ("gateway", "character", "chat", "auth"):
        assert second[name] == first[name], (name, first[name], second[name])
    assert second.get("ingress") == first.get("ingress") and second["metrics"] == first["metrics"]
    taken = first["location"].rpartition(":")[2]
    assert second["location"] != first["location"] and f"port {taken} of location (gRPC) is taken now" in err2, err2


def _scan(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "eco2.services.cli", "scan", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_scan_without_a_stack_fails_clearly(data_dir):
    photo = data_dir / "photo.png"
    photo.write_bytes(png(b"no stack"))
    scanned = _scan(data_dir, str(photo))
    assert scanned.returncode == 1 and "no stack is running" in scanned.stderr


def test_chat_and_status_without_a_stack_fail_clearly(data_dir):
    proc = _eco2("status", "--data-dir", str(data_dir))
    assert proc.wait(timeout=30) == 1
    assert "no stack is running" in proc.stderr.read()
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


def test_eco2_alone_prints_its_help():
    proc = subprocess.run([sys.executable, "-m", "eco2.services.cli"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: eco2") and "up" in proc.stdout and "identity" in proc.stdout


def _child(up_pid: int, name: str) -> psutil.Process:
    """The live `eco2 serve NAME` (or envoy) process of the stack run by `up_pid`."""
    for proc in psutil.Process(up_pid).children(recursive=True):
        try:
            cmd = proc.cmdline()
        except psutil.NoSuchProcess:
            continue
        if proc.status() != psutil.STATUS_ZOMBIE and (
            cmd[-2:] == ["serve", name] or (name == "envoy" and "--admin-address-path" in cmd)
        ):
            return proc
    raise LookupError(name)


def _wait_until(condition, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := condition():
                return value
        except (LookupError, psutil.NoSuchProcess, OSError, grpc.RpcError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _serving(target: str) -> bool:
    with grpc.insecure_channel(target) as ch:
        return (
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2).status
            == health_pb2.HealthCheckResponse.SERVING
        )


def _port_taken(port: int) -> bool:
    """Whether an ordinary server (SO_REUSEADDR, as most set) could not bind the port."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def test_up_restarts_killed_children_and_the_data_plane_and_stops_on_sighup(data_dir):
    """kill -9 of a service, of Envoy, of PostgreSQL and of Valkey: each comes back (the service
    on its port, which nobody can take meanwhile; PostgreSQL reaped, not left a zombie). SIGHUP
    (the terminal closed) then stops everything and removes endpoints.json."""
    proc = _eco2("up", "--data-dir", str(data_dir), env={**os.environ, "ECO2_UP_RESTART_BACKOFF_S": "0.2"})
    try:
        endpoints = _wait_for(data_dir / "endpoints.json", proc)
        target = endpoints["character"]
        port = int(target.rpartition(":")[2])
        victim = _child(proc.pid, "character")
        victim.kill()
        victim.wait(10)
        assert _port_taken(port)  # held by `eco2 up` while the service is down
        back = _wait_until(lambda: _child(proc.pid, "character"), what="a new character process")
        assert back.pid != victim.pid
        _wait_until(lambda: _serving(target), what="character SERVING again on its port")

        envoy = _child(proc.pid, "envoy")
        envoy.kill()
        _wait_until(lambda: _child(proc.pid, "envoy").pid != envoy.pid, what="a new envoy")
        ingress = endpoints["ingress"]
        _wait_until(
            lambda: urllib.request.urlopen(ingress + "/", timeout=2).status == 200, what="the ingress answering again"
        )

        postgres = endpoints["dataplane"]["postgres_pid"]
        os.kill(postgres, signal.SIGKILL)
        revived = _wait_until(
            lambda: (
                (e := json.loads((data_dir / "endpoints.json").read_text()))["dataplane"]["postgres_pid"] != postgres
                and e
            ),
            what="endpoints.json naming a new postgres",
        )
        assert not psutil.pid_exists(postgres)  # reaped: no zombie left
        import asyncpg

        async def select_one() -> int:
            conn = await asyncpg.connect(revived["dataplane"]["database_url"], timeout=10)
            try:
                return await conn.fetchval("SELECT 1")
            finally:
                await conn.close()

        assert asyncio.run(select_one()) == 1
        valkey = revived["dataplane"]["valkey_pid"]
        os.kill(valkey, signal.SIGKILL)
        revived = _wait_until(
            lambda: (
                (e := json.loads((data_dir / "endpoints.json").read_text()))["dataplane"]["valkey_pid"] != valkey and e
            ),
            what="endpoints.json naming a new valkey",
        )
        import redis

        assert redis.Redis.from_url(revived["dataplane"]["redis_url"], socket_timeout=5).ping()
        err = proc.stderr
        pids = _tree(proc.pid) + [revived["dataplane"]["postgres_pid"], revived["dataplane"]["valkey_pid"]]
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=60) == 0
        log = err.read()
        assert "service character exited with code -9; restarting it" in log and "service character is back" in log
        assert "postgres started again" in log and "valkey started again" in log
        assert not (data_dir / "endpoints.json").exists()
        _wait_until(
            lambda: (
                not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
            ),
            10,
            "no process left",
        )
    finally:
        if proc.poll() is None:
            proc.kill()


def test_up_stops_when_a_child_crash_loops(data_dir):
    env = {**os.environ, "ECO2_UP_RESTART_BACKOFF_S": "0.1", "ECO2_UP_CRASH_LOOP_RESTARTS": "2", "ECO2_INGRESS": "none"}
    proc = _eco2("up", "--data-dir", str(data_dir), env=env)
    try:
        _wait_for(data_dir / "endpoints.json", proc)
        killed: set[int] = set()
        while proc.poll() is None and len(killed) < 3:
            victim = _wait_until(
                lambda: (c := _child(proc.pid, "location")).pid not in killed and c, what="a location process"
            )
            killed.add(victim.pid)
            victim.kill()
        assert proc.wait(timeout=60) == 1
        assert "location exited 3 times within" in proc.stderr.read()
        assert not (data_dir / "endpoints.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_stale_endpoints_file_means_no_stack_runs(data_dir):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (data_dir / "endpoints.json").write_text(
        json.dumps({"pid": gone.pid, "chat": "127.0.0.1:1", "character": "127.0.0.1:1"})
    )
    for args in (["endpoints"], ["chat", "페트병 어떻게 버려?"]):
        proc = _eco2(*args[:1], "--data-dir", str(data_dir), *args[1:])
        assert proc.wait(timeout=30) == 1
        assert "no stack is running" in proc.stderr.read()


async def test_a_held_port_is_free_only_for_the_child_it_is_held_for():
    """What `eco2 up` does with every port it hands out: nobody else can bind it (nor gets it
    as a free port), the service told ECO2_REUSE_PORT=1 can."""
    from eco2.services.runtime.server import start
    from eco2.services.runtime.settings import RuntimeSettings
    from eco2.services.up import PortHold
    from support.probe import ProbeApp

    hold = PortHold()
    try:
        assert _port_taken(hold.port)
        with socket.socket() as plain:
            with pytest.raises(OSError):
                plain.bind(("127.0.0.1", hold.port))
        settings = RuntimeSettings(grpc_port=hold.port, metrics_port=0, reuse_port=True)
        server = await start(ProbeApp(settings), settings, tracing=False)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{hold.port}") as ch:
                assert json.loads(await ch.unary_unary("/eco2test.Probe/Echo")(b"", timeout=5))["user"] is None
        finally:
            await server.stop(grace=0.5)
        assert _port_taken(hold.port)  # still held after the service stopped
    finally:
        hold.close()
