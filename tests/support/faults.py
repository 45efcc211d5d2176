"""Kill parts of a running `eco2 up` under chat load, and account for every message sent.

Used by tests/system/test_faults.py (assertions) and bench/faults.py (figures).

    async with UpStack(data_dir) as stack:          # a private `eco2 up`: its own data plane
        async with Load(stack, clients=4) as load:  # concurrent chat turns, streaming
            recovery = await fault(stack, load, "postgres")
        audit = await account(stack, load.turns)    # exactly once, no orphans

A load client sends a message (SendMessage, retried with the same client_message_id while the
mesh answers UNAVAILABLE), follows its job on EventService.Subscribe (resuming after the last
seq it saw whenever the stream breaks) to DONE or ERROR, and starts the next turn. `fault`
SIGKILLs one part while turns are streaming (PostgreSQL, Valkey, or an `eco2 serve NAME`
child), which `eco2 up` brings back, and measures the time to SERVING and to the first chat
turn sent after the kill that completes. `account` then reads each job's whole event history
and the stored messages: every message sent ends in exactly one DONE or ERROR, no seq twice,
none missing, no stored user message without its job's end.

Waits are on conditions (polled), never fixed sleeps; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eco2.chat.v1 import chat_pb2, chat_pb2_grpc
from eco2.events.v1 import events_pb2, events_pb2_grpc

from .identity import TEST_JWKS
from .identity import as_user as _sign


@functools.cache
def as_user(user: str):
    """One wristband per user for the whole run (as the edge reuses one), so services verify it once."""
    return _sign(user, ttl_s=3600)


#: what `eco2 up` runs with here: quick restarts and re-claims, dependency checks often, no Envoy
STACK_ENV = {
    "ECO2_INGRESS": "none",
    "ECO2_UP_RESTART_BACKOFF_S": "0.1",
    "ECO2_UP_CRASH_LOOP_RESTARTS": "20",
    "ECO2_HEALTH_CHECK_INTERVAL_S": "0.5",
    "ECO2_JOBS_VISIBILITY_TIMEOUT_S": "3",  # a job whose worker was killed is re-claimed after this
    "ECO2_CHAT_CLAIM_BLOCK_MS": "200",
    "ECO2_CHAT_WORKERS": "8",
    "ECO2_LOG_LEVEL": "WARNING",
    "ECO2_IDENTITY_JWKS": TEST_JWKS,  # the load's wristbands (support.identity) are trusted
}
DATA_PLANE = ("postgres", "valkey")
#: every gRPC service of the stack (health checked after each fault)
SERVICES = ("auth", "character", "location", "images", "chat", "events")
#: a send that meets these is retried (same client_message_id); anything else ends the turn
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
TERMINAL = {events_pb2.EVENT_KIND_DONE: "DONE", events_pb2.EVENT_KIND_ERROR: "ERROR"}
QUESTIONS = [
    "페트병 어떻게 버려?",
    "캔은 어떻게 분리배출해?",
    "유리병은 어디에 버려?",
    "종이팩은 어떻게 버려?",
    "스티로폼은 어떻게 버려?",
]


async def until(condition, *, timeout: float, what: str, every: float = 0.05):
    """Poll `condition` (sync or async) until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
        except (OSError, LookupError, psutil.Error, grpc.RpcError, json.JSONDecodeError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(every)


class UpStack:
    """`eco2 up` on its own data dir (its own PostgreSQL and Valkey), as a process."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = {**os.environ, **STACK_ENV, **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None
        self.endpoints: dict = {}
        self.channels: dict[str, grpc.aio.Channel] = {}

    async def __aenter__(self) -> UpStack:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "up.log").open("ab")  # a file, not a pipe: nobody has to read it for up to go on
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "eco2.services.cli",
            "up",
            "--data-dir",
            str(self.data_dir),
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        try:
            self.endpoints = await until(
                self._endpoints, timeout=180, what=f"eco2 up to serve (log: {self.data_dir / 'up.log'})", every=0.1
            )
        except BaseException:
            await self.__aexit__()
            raise
        self.channels = {name: grpc.aio.insecure_channel(self.endpoints[name]) for name in SERVICES}
        return self

    def _endpoints(self) -> dict | None:
        if self.proc.returncode is not None:
            raise AssertionError(f"eco2 up exited {self.proc.returncode}: {self.log_tail()}")
        path = self.data_dir / "endpoints.json"
        return json.loads(path.read_text()) if path.exists() else None

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join((self.data_dir / "up.log").read_text(errors="replace").splitlines()[-lines:])

    async def __aexit__(self, *exc) -> None:
        for ch in self.channels.values():
            await ch.close()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 60)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    @property
    def database_url(self) -> str:
        return self.endpoints["dataplane"]["database_url"]

    def pids(self) -> dict[str, int]:
        """The live pid of each part: data plane servers (from endpoints.json) and services."""
        current = json.loads((self.data_dir / "endpoints.json").read_text())["dataplane"]
        out = {"postgres": current["postgres_pid"], "valkey": current["valkey_pid"]}
        for proc in psutil.Process(self.proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                cmd = proc.cmdline()
                if proc.status() != psutil.STATUS_ZOMBIE and cmd[-2:-1] == ["serve"]:
                    out[cmd[-1]] = proc.pid
        return out

    async def serving(self, name: str) -> bool:
        reply = await health_pb2_grpc.HealthStub(self.channels[name]).Check(health_pb2.HealthCheckRequest(), timeout=1)
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def all_serving(self) -> bool:
        return all(await asyncio.gather(*(self.serving(n) for n in SERVICES)))


@dataclass
class Turn:
    """One message sent and followed to its end."""

    user: str
    client_message_id: str
    started: float
    job_id: str = ""
    send_attempts: int = 0
    send_error: str = ""  # the code that ended a send for good (not retried)
    seqs: list[int] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)
    terminal: str = ""  # DONE or ERROR
    error_reason: str = ""
    ended: float | None = None
    resubscribes: int = 0

    @property
    def streaming(self) -> bool:
        """Tokens arrived, the end did not yet."""
        return events_pb2.EVENT_KIND_TOKEN in self.kinds and not self.terminal


class Load:
    """`clients` concurrent users, each sending a message and following it to its end, again
    and again, until stopped. Every turn is kept in `turns`."""

    def __init__(self, stack: UpStack, clients: int = 4, turn_timeout_s: float = 120.0) -> None:
        self.stack = stack
        self.clients = clients
        self.turn_timeout_s = turn_timeout_s
        self.turns: list[Turn] = []
        self.users = [f"faults-{uuid.uuid4().hex[:8]}-{i}" for i in range(clients + 1)]  # +1: the probe's
        self.chat = chat_pb2_grpc.ChatServiceStub(stack.channels["chat"])
        self.events = events_pb2_grpc.EventServiceStub(stack.channels["events"])
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> Load:
        self._tasks = [asyncio.create_task(self._client(u)) for u in self.users[: self.clients]]
        return self

    async def __aexit__(self, *exc) -> None:
        """Stop starting turns; let the ones under way end (each is bounded by turn_timeout_s)."""
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _client(self, user: str) -> None:
        n = 0
        while not self._stop.is_set():
            await self.turn(user, QUESTIONS[n % len(QUESTIONS)])
            n += 1

    async def turn(self, user: str, question: str = QUESTIONS[0]) -> Turn:
        t = Turn(user, uuid.uuid4().hex, time.monotonic())
        self.turns.append(t)
        deadline = t.started + self.turn_timeout_s
        request = chat_pb2.SendMessageRequest(message=question, client_message_id=t.client_message_id)
        while not t.job_id:
            t.send_attempts += 1
            try:
                t.job_id = (await self.chat.SendMessage(request, metadata=as_user(user), timeout=10)).job_id
            except grpc.aio.AioRpcError as err:
                if err.code() not in RETRYABLE or time.monotonic() > deadline:
                    t.send_error = f"{err.code().name}: {err.details()}"
                    t.ended = time.monotonic()
                    return t
                await asyncio.sleep(0.1)
        while time.monotonic() < deadline:
            try:
                stream = self.events.Subscribe(
                    events_pb2.SubscribeRequest(job_id=t.job_id, after_seq=t.seqs[-1] if t.seqs else 0),
                    metadata=as_user(user),
                    timeout=deadline - time.monotonic(),
                )
                async for event in stream:
                    t.seqs.append(event.seq)
                    t.kinds.append(event.kind)
                    if event.kind in TERMINAL:
                        t.terminal = TERMINAL[event.kind]
                        t.error_reason = event.error.reason
                        t.ended = time.monotonic()
                        return t
            except grpc.aio.AioRpcError:
                pass  # the events service or Valkey went away, or the job is not known there yet: again
            t.resubscribes += 1
            await asyncio.sleep(0.1)
        t.ended = time.monotonic()
        return t


@dataclass
class Recovery:
    victim: str
    killed_pid: int
    to_serving_s: float
    to_first_done_s: float
    #: turns under way when it was killed (streaming: tokens arrived, not the end yet)
    in_flight: int
    streaming: int
    probe_errors: list[str]


async def fault(stack: UpStack, load: Load, victim: str, *, timeout: float = 90.0) -> Recovery:
    """SIGKILL `victim` (postgres, valkey, or a service name) while turns stream; wait until
    it is back and every service SERVING, and until a turn sent after the kill completes."""
    await until(lambda: any(t.streaming for t in load.turns), timeout=60, what="a turn streaming tokens")
    pid = stack.pids()[victim]
    in_flight = [t for t in load.turns if not t.ended]
    streaming = sum(t.streaming for t in in_flight)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    probe = asyncio.create_task(_first_done(load, timeout))
    await until(lambda: stack.pids().get(victim) not in (None, pid), timeout=timeout, what=f"a new {victim}")
    await until(stack.all_serving, timeout=timeout, what=f"every service SERVING after {victim} was killed")
    to_serving = time.monotonic() - killed
    done_at, errors = await probe
    return Recovery(victim, pid, round(to_serving, 3), round(done_at - killed, 3), len(in_flight), streaming, errors)


async def _first_done(load: Load, timeout: float) -> tuple[float, list[str]]:
    """Send turns (one at a time, as the probe user) until one ends in DONE; when it did, and the
    ends of the ones before it (an ERROR, or a send that failed for good)."""
    errors: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = await load.turn(load.users[-1])
        if t.terminal == "DONE":
            return t.ended, errors
        errors.append(t.terminal and f"{t.terminal} {t.error_reason}" or t.send_error or "no end")
    raise TimeoutError(f"no chat turn completed within {timeout:.0f} s of the kill: {errors}")


@dataclass
class Audit:
    turns: int
    done: int
    errors: int
    send_failed: list[str]  # how sends failed for good (not retried)
    unfinished: list[str]  # job ids (or client message ids) without an end
    duplicated: int  # events a client got twice
    lost: int  # events of a job's history a client never got
    gaps: int  # seqs missing in a job's own history
    terminals_not_one: list[str]  # jobs whose history has no end or more than one
    orphans: list[str]  # stored user messages whose job has no end
    messages_not_one: list[str]  # client message ids stored other than once (for a sent job)
    error_reasons: dict[str, int]
    #: log lines of the stack's services that are bugs, not faults: an RPC answered INTERNAL
    #: ("unhandled error"), an exception nobody handled ("never retrieved")
    bugs_logged: list[str]


#: what a service logs only for a bug (an unhandled exception), never for a dependency down
BUG_MARKS = ('"msg": "unhandled error"', "Task exception was never retrieved")


def bugs_logged(stack: UpStack) -> list[str]:
    """The log lines of the stack's services that mark a bug (BUG_MARKS), shortened."""
    found = []
    for path in sorted((stack.data_dir / "logs").glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if any(mark in line for mark in BUG_MARKS):
                found.append(f"{path.name}: {line[:600]}")
    return found


async def account(stack: UpStack, turns: list[Turn]) -> Audit:
    """Every turn against the job histories of the events service and the stored messages."""
    import asyncpg

    events = events_pb2_grpc.EventServiceStub(stack.channels["events"])
    histories: dict[str, list[events_pb2.Event]] = {}

    async def history(job_id: str, user: str) -> list[events_pb2.Event]:
        if job_id not in histories:
            histories[job_id] = [
                e
                async for e in events.Subscribe(
                    events_pb2.SubscribeRequest(job_id=job_id), metadata=as_user(user), timeout=30
                )
            ]
        return histories[job_id]

    duplicated = lost = gaps = 0
    terminals_not_one, unfinished = [], []
    for t in turns:
        if not t.job_id:
            continue
        if not t.terminal:
            unfinished.append(t.job_id)
            continue
        full = [e.seq for e in await history(t.job_id, t.user)]
        duplicated += len(t.seqs) - len(set(t.seqs))
        lost += len(set(full) - set(t.seqs))
        gaps += (full[-1] - full[0] + 1 - len(full)) if full else 0
        if sum(e.kind in TERMINAL for e in histories[t.job_id]) != 1:
            terminals_not_one.append(t.job_id)
    users = sorted({t.user for t in turns})
    conn = await asyncpg.connect(stack.database_url, timeout=30)
    try:
        stored = await conn.fetch(
            "SELECT user_id, job_id, client_message_id FROM chat_messages WHERE role = $1 AND user_id = ANY($2::text[])",
            chat_pb2.MESSAGE_ROLE_USER,
            users,
        )
    finally:
        await conn.close()
    counts: dict[str, int] = {}
    for row in stored:
        counts[row["client_message_id"]] = counts.get(row["client_message_id"], 0) + 1
    orphans = []
    for row in stored:
        ended = [e for e in await history(row["job_id"], row["user_id"]) if e.kind in TERMINAL] if row["job_id"] else []
        if not ended:
            orphans.append(row["job_id"] or f"message {row['client_message_id']} without a job")
    messages_not_one = [t.client_message_id for t in turns if t.job_id and counts.get(t.client_message_id) != 1]
    reasons: dict[str, int] = {}
    for t in turns:
        if t.terminal == "ERROR":
            reasons[t.error_reason] = reasons.get(t.error_reason, 0) + 1
    return Audit(
        turns=len(turns),
        done=sum(t.terminal == "DONE" for t in turns),
        errors=sum(t.terminal == "ERROR" for t in turns),
        send_failed=[t.send_error for t in turns if t.send_error],
        unfinished=unfinished,
        duplicated=duplicated,
        lost=lost,
        gaps=gaps,
        terminals_not_one=terminals_not_one,
        orphans=orphans,
        messages_not_one=messages_not_one,
        error_reasons=reasons,
        bugs_logged=bugs_logged(stack),
    )
