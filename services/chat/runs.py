"""Run control: how a cancel reaches the worker that runs the job, and what a run's state reads.

A run is one turn (a user message and the job answering it); its row in `chat_runs` is the
source of truth (postgres.py). CancelRun, or a send whose double-text policy cancels the
conversation's current run, records the cancel on that row, then PUBLISHes the job id on the
channel `chat:{<kind>}:cancel`. Every chat process that runs workers keeps one subscription to it
(`CancelWatch`) and, when the job is one of its own, cancels the asyncio task running the job's
graph: the node in flight (a model stream, a tool call) is cancelled where it awaits, LangGraph
cancels the superstep's other tasks and drops their results, and the worker carries out the
cancel (worker.py). Pub/Sub costs nothing while nobody cancels and delivers in about a
millisecond; what it does not guarantee is covered by PostgreSQL: a message missed while the
subscription was down is found by a read of the cancels among the process's running jobs at
every (re)subscription and every ECO2_CHAT_CANCEL_POLL_S, and at the latest when the worker
stores the answer (the same row lock decides between the cancel and the answer). A job whose
worker died is re-claimed by another worker, which finds the cancel when it starts the run and
never runs the graph again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from eco2.chat.v1 import chat_pb2
from eco2.events.v1 import events_pb2
from eco2.services.bus import domain

log = logging.getLogger("eco2.chat.runs")

#: the terminal event of a cancelled run: (reason, message) by CancelMode
CANCEL_ERRORS = {
    chat_pb2.CANCEL_MODE_INTERRUPT: ("RUN_CANCELLED", "답변을 멈췄어요."),
    chat_pb2.CANCEL_MODE_ROLLBACK: ("RUN_ROLLED_BACK", "질문을 취소했어요."),
}


def cancel_channel(kind: str) -> str:
    return f"chat:{{{kind}}}:cancel"


def cancel_error(mode: int, job_id: str) -> events_pb2.Event:
    """The ERROR event that ends a cancelled run's stream (its seq is the publisher's to set)."""
    reason, message = CANCEL_ERRORS[mode]
    return events_pb2.Event(
        job_id=job_id,
        kind=events_pb2.EVENT_KIND_ERROR,
        job_kind=events_pb2.JOB_KIND_CHAT,
        node="cancel",
        error=events_pb2.JobError(code=domain.CANCELLED_CODE, reason=reason, message=message, retryable=False),
    )


async def signal_cancel(redis, kind: str, cancels: list[tuple[str, int]]) -> None:
    """Tell the workers (every chat process) that these jobs were cancelled: "<job id> <mode>"."""
    for job_id, mode in cancels:
        await redis.publish(cancel_channel(kind), f"{job_id} {mode}")


class CancelWatch:
    """One per chat process that runs workers: the jobs it runs, and a subscription to the cancel
    channel that calls a running job's `on_cancel` when it is cancelled."""

    def __init__(self, redis, store, kind: str, *, poll_s: float) -> None:
        self.redis, self.store, self.channel, self.poll_s = redis, store, cancel_channel(kind), poll_s
        self._running: dict[str, Callable[[int], None]] = {}
        self._tasks: list[asyncio.Task] = []
        self.subscribed = asyncio.Event()

    def register(self, job_id: str, on_cancel: Callable[[int], None]) -> None:
        """`on_cancel(mode)` is called once if the job is cancelled while it is registered."""
        self._running[job_id] = on_cancel

    def unregister(self, job_id: str) -> None:
        self._running.pop(job_id, None)

    def fire(self, job_id: str, mode: int) -> None:
        on_cancel = self._running.pop(job_id, None)
        if on_cancel is not None:
            on_cancel(mode)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._listen(), name="chat-cancel-listen")]
        if self.poll_s > 0:
            self._tasks.append(asyncio.create_task(self._poll(), name="chat-cancel-poll"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def check(self) -> None:
        """Fire the running jobs that have a cancel recorded (what a missed message would have said)."""
        if self._running:
            for job_id, mode in await self.store.cancels_among(list(self._running)):
                self.fire(job_id, mode)

    async def _listen(self) -> None:
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.subscribed.set()
                await self.check()
                async for message in pubsub.listen():
                    data = message.get("data")
                    if isinstance(data, bytes):
                        job_id, _, mode = data.decode(errors="replace").partition(" ")
                        self.fire(job_id, int(mode) if mode.isdigit() else 0)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 — Valkey hiccup: subscribe again; check() covers the gap
                self.subscribed.clear()
                log.warning("the cancel subscription failed; subscribing again", exc_info=True)
                await asyncio.sleep(1.0)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:  # noqa: BLE001 — closing a broken connection
                    pass

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 — PostgreSQL hiccup: the next round tries again
                log.warning("reading the cancels of running jobs failed", exc_info=True)


def _timestamp(msg, field: str, value) -> None:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return
    if isinstance(value, datetime):
        getattr(msg, field).FromDatetime(value)


def intents_of(names) -> list[int]:
    out = []
    for name in names or []:
        try:
            out.append(chat_pb2.Intent.Value(f"INTENT_{str(name).upper()}"))
        except ValueError:
            continue
    return out


def run_of(row, *, snapshot=None, history=None, result_of=None) -> chat_pb2.Run:
    """A Run from its row (postgres.ConversationStore.conversation_runs), its latest LangGraph
    state `snapshot` and its checkpoints `history` (newest first, as LangGraph lists them)."""
    run = chat_pb2.Run(
        job_id=row["job_id"],
        status=row["status"],
        cancel_mode=row["cancel_mode"],
        user_message_id=str(row["q_id"] or ""),
        question=row["q_text"] or "",
        assistant_message_id=str(row["a_id"] or ""),
        answer=row["a_text"] or "",
        error_reason=row["error_reason"] or "",
    )
    _timestamp(run, "created_at", row["created_at"])
    _timestamp(run, "updated_at", row["updated_at"])
    if row["a_result"] is not None:
        stored = chat_pb2.ChatResult.FromString(bytes(row["a_result"]))
        run.intents.extend(stored.intents)
        run.facts.extend(stored.citations)
    elif row["a_id"] is not None:
        run.intents.extend(row["a_intents"] or [])
        run.facts.extend(chat_pb2.Citation.FromString(bytes(c)) for c in row["a_citations"] or [])
    values = dict(snapshot.values or {}) if snapshot is not None else {}
    if values and not run.assistant_message_id and result_of is not None:
        result = result_of({"conversation_id": str(row["conversation_id"]), **values}, message_id="")
        run.answer = result.answer
        run.intents.extend(result.intents)
        run.facts.extend(result.citations)
    if snapshot is not None and row["status"] == chat_pb2.RUN_STATUS_WAITING_INPUT:
        for pending in getattr(snapshot, "interrupts", ()) or ():
            value = pending.value if isinstance(pending.value, dict) else {}
            run.pending_input.CopyFrom(
                events_pb2.InputRequest(
                    input_id=str(value.get("input_id", "")),
                    kind=events_pb2.INPUT_KIND_LOCATION,
                    prompt=str(value.get("prompt", "")),
                )
            )
            break
    previous_next: tuple = ()
    previous_spans: dict = {}
    for snap in reversed(history or []):
        meta = snap.metadata or {}
        # The step's nodes, and those that ran inside them (the aggregator answers and grades in
        # its own step): the names the step added to the state's spans.
        spans = (snap.values or {}).get("spans") or {}
        nodes = [*previous_next, *(n for n in spans if n not in previous_spans and n not in previous_next)]
        previous_spans = spans
        cp = chat_pb2.Checkpoint(
            checkpoint_id=str((snap.config or {}).get("configurable", {}).get("checkpoint_id", "")),
            step=int(meta.get("step", 0)),
            nodes=nodes if meta.get("step", 0) >= 0 else [],
            next=list(snap.next or ()),
            intents=intents_of((snap.values or {}).get("intents")),
        )
        _timestamp(cp, "created_at", snap.created_at)
        run.checkpoints.append(cp)
        previous_next = tuple(snap.next or ())
    return run
