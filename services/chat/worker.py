"""Chat-agent workers: claim chat jobs, run the graph, publish events, store the answer."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from google.protobuf import any_pb2
from langgraph.types import Command

from eco2.chat.v1 import chat_pb2
from eco2.events.v1 import events_pb2
from eco2.services.bus.jobs import Job, JobQueue, ends_stream_on_dead
from eco2.services.runtime.context import act_as
from eco2.services.runtime.errors import FailedPrecondition
from eco2.services.runtime.telemetry import current_traceparent, recording_enabled, span

from . import metrics
from . import postgres as pg
from .deps import ChatDeps, JobContext
from .emitter import Emitter
from .keys import input_key
from .outbox import EventOutbox
from .pii import mask
from .policy import NodeFailed
from .postgres import ConversationStore, RunCancelled, RunStart
from .result import result_of
from .runs import CancelWatch, cancel_error

log = logging.getLogger("eco2.chat.worker")


class MessageNotStored(Exception):
    """The job's user message is not committed, ECO2_CHAT_COMMIT_WAIT_S after the claim:
    SendMessage queues the job inside the message's transaction, so a worker can claim it first
    (it waits for the commit). Failing the job retries it after ECO2_JOBS_RETRY_DELAY_S; a send
    that rolled back never commits, and the job is dead-lettered."""


@dataclass
class WorkerStats:
    done: int = 0
    errors: int = 0
    waiting: int = 0


class ChatWorkers:
    def __init__(
        self,
        *,
        queue: JobQueue,
        redis,
        sink,
        graph,
        deps: ChatDeps,
        store: ConversationStore,
        settings,
        outbox: EventOutbox | None = None,
    ) -> None:
        self.queue, self.redis, self.sink, self.graph, self.deps, self.store, self.settings = (
            queue,
            redis,
            sink,
            graph,
            deps,
            store,
            settings,
        )
        self.outbox = outbox if outbox is not None else EventOutbox(sink)
        self.stats = WorkerStats()
        self.watch = CancelWatch(redis, store, settings.chat_job_kind, poll_s=settings.chat_cancel_poll_s)
        self._slots = asyncio.Semaphore(max(1, settings.chat_workers))
        self._tasks: set[asyncio.Task] = set()
        self._loops: list[asyncio.Task] = []
        self._stopping = asyncio.Event()
        self.consumer = f"chat-{socket.gethostname()}-{os.getpid()}"

    def start(self) -> None:
        if self.settings.chat_workers == 0:
            return
        self.watch.start()
        self._loops = [
            asyncio.create_task(self._claim_loop(i), name=f"chat-claim-{i}") for i in range(self.settings.chat_claimers)
        ]

    async def stop(self, grace_s: float = 5.0) -> None:
        self._stopping.set()
        for t in self._loops:
            t.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=grace_s)
            for t in pending:  # not acked: another worker re-claims them after the visibility timeout
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.watch.stop()

    async def _claim_loop(self, i: int) -> None:
        while not self._stopping.is_set():
            await self._slots.acquire()
            try:
                job = await self.queue.claim(f"{self.consumer}-{i}", block_ms=self.settings.chat_claim_block_ms)
            except asyncio.CancelledError:
                self._slots.release()
                raise
            except Exception:  # noqa: BLE001 — Redis hiccup: back off and retry
                self._slots.release()
                log.warning("claim failed", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            if job is None:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, job: Job) -> None:
        try:
            async with self.queue.holding(job):  # an answer longer than the visibility timeout keeps its claim
                await self.handle(job)
            await self.queue.ack(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            log.error("chat job failed", extra={"job_id": job.job_id, "error": mask(str(exc))[:300]}, exc_info=True)
            try:
                await self.queue.fail(job, type(exc).__name__)
            except Exception:  # noqa: BLE001 — Valkey is down too: the unacked job is claimed again after the visibility timeout
                log.warning(
                    "could not record the failure of a chat job; it is claimed again after the visibility timeout",
                    extra={"job_id": job.job_id},
                    exc_info=True,
                )
        finally:
            self._slots.release()

    async def handle(self, job: Job) -> None:
        """Run one turn of a job: acting for its user, in its request's trace, timed from the
        moment the message was queued (the job's stream entry id is that time in ms)."""
        p: dict[str, Any] = json.loads(job.payload)
        started = time.monotonic()
        waited = max(0.0, time.time() - int(job.entry_id.split("-")[0]) / 1000)
        # Every downstream call of this job carries its user's wristband, and its logs, events and
        # calls continue the trace of the request that queued it (a re-claimed job too: the
        # traceparent is in the payload). With spans on, that trace goes on in the turn's span.
        recording = recording_enabled()
        act_as(p.get("identity"), p.get("traceparent"), light_tracing=not recording)
        outcome, first_token_at = "failed", None
        metrics.TURNS_ACTIVE.inc()
        try:
            with span(
                "chat.turn",
                traceparent=p.get("traceparent"),
                attributes={"eco2.job_id": p["job_id"], "eco2.attempt": job.attempt},
            ):
                outcome, first_token_at = await self._turn(job, p)
        finally:
            metrics.TURNS_ACTIVE.dec()
            metrics.turn_finished(outcome, waited + time.monotonic() - started)
            # one line per turn, in the trace of the request that queued it (logs name its trace id)
            log.info(
                "turn finished",
                extra={
                    "job_id": p["job_id"],
                    "outcome": outcome,
                    "attempt": job.attempt,
                    "seconds": round(waited + time.monotonic() - started, 3),
                },
            )
            if first_token_at is not None:
                metrics.TIME_TO_FIRST_TOKEN.observe(waited + first_token_at - started)

    async def _turn(self, job: Job, p: dict[str, Any]) -> tuple[str, float | None]:
        """The turn's graph run and its events; (outcome, monotonic time of the first token)."""
        job_id = p["job_id"]
        resume = p.get("resume") is not None
        run = await self._start_run(job_id, fresh=not resume and not p.get("cancel"))
        if run is None:
            raise MessageNotStored(f"the message of job {job_id} is not stored")
        if run.status in (pg.CANCELLED, pg.ROLLED_BACK):  # carried out already: the stream's end may still be missing
            await self._publish_cancel_end(job_id, pg.INTERRUPT if run.status == pg.CANCELLED else pg.ROLLBACK)
            return "cancelled", None
        if run.status == pg.FAILED:  # ended before: nothing to run
            return "failed", None
        config = {"configurable": {"thread_id": job_id}}
        # A first attempt of a new message has no checkpoint yet: skip the read (a query and
        # LangGraph's state assembly per conversation). Re-claims and resumes read it.
        fresh = job.attempt <= 1 and not resume and not p.get("cancel")
        snapshot = None if fresh else await self.graph.aget_state(config)
        checkpoint_seq = int((snapshot.values or {}).get("seq") or 0) if snapshot is not None else 0
        emitter = Emitter(
            self.sink,
            job_id,
            max(int(p.get("seq_base", 0)), checkpoint_seq),
            traceparent=current_traceparent(),
            tokens_per_event=self.settings.chat_tokens_per_event,
            outbox=self.outbox,
        )
        if run.cancel_mode:  # cancelled before this worker got to it: the graph does not run again
            return await self._carry_out_cancel(p, run, emitter, config, mode=run.cancel_mode)
        ctx = JobContext(self.deps, emitter)
        # The graph runs in a task of its own, which a cancel (CancelWatch) cancels where it awaits.
        work = asyncio.create_task(self._run_graph(job, p, run, snapshot, ctx, config), name=f"chat-graph-{job_id}")

        signalled = 0  # the mode the cancel signal carried

        def on_cancel(mode: int) -> None:
            nonlocal signalled
            signalled = mode
            ctx.cancelled.set()
            work.cancel()

        self.watch.register(job_id, on_cancel)
        try:
            state = await work
        except NodeFailed as failed:
            if mode := await self.store.fail_run(job_id, "NODE_FAILED"):
                return await self._carry_out_cancel(p, run, emitter, config, mode=mode)
            self.stats.errors += 1
            await self._error(
                emitter, 14, "NODE_FAILED", f"{failed.node} 단계가 실패했어요. 잠시 후 다시 시도해 주세요.", True
            )
            return "error", emitter.first_token_at
        except asyncio.CancelledError as exc:
            if not ctx.cancelled.is_set() or asyncio.current_task().cancelling():  # the process is stopping
                raise
            await _langgraph_exit(exc)
            return await self._carry_out_cancel(p, run, emitter, config, mode=signalled)
        except BaseException:
            await self._drain_quietly(emitter)  # what the failed run emitted still goes out, in order
            raise
        finally:
            self.watch.unregister(job_id)
        interrupts = state.get("__interrupt__") or []
        if interrupts:
            first = interrupts[0].value
            # The question is open for ProvideInput, and the run says it waits, before its
            # NEEDS_INPUT event goes out: a client answering at once finds it, and a cancel that
            # finds the run waiting finds the question to take back (service.py).
            seq = emitter.seq + 1  # the seq the NEEDS_INPUT event gets
            pending = {
                "user_id": p["user_id"],
                "input_id": first["input_id"],
                "interrupt_ids": [i.id for i in interrupts],
                "seq": seq,
                "payload": p,
            }
            await self.redis.set(input_key(job_id), json.dumps(pending), ex=self.settings.chat_input_ttl_s)
            if not await self.store.set_waiting(job_id):  # cancelled meanwhile
                await self.redis.delete(input_key(job_id))
                return await self._carry_out_cancel(p, run, emitter, config, state=state)
            emitter.put(
                events_pb2.EVENT_KIND_NEEDS_INPUT,
                stage=events_pb2.STAGE_SUBAGENT,
                node="location",
                needs_input=events_pb2.InputRequest(
                    input_id=first["input_id"], kind=events_pb2.INPUT_KIND_LOCATION, prompt=first["prompt"]
                ),
            )
            try:
                await emitter.drain()
            except FailedPrecondition as exc:  # a cancel took the question back and ended the stream first
                if exc.reason != "JOB_CLOSED":
                    raise
            self.stats.waiting += 1
            return "needs_input", emitter.first_token_at
        result = result_of(state, message_id="")
        try:
            message_id = await self.store.add_assistant_message(
                conversation_id=p["conversation_id"],
                user_id=p["user_id"],
                job_id=job_id,
                text=result.answer,
                intents=list(result.intents),
                citations=[c.SerializeToString() for c in result.citations],
                summary=state.get("new_summary"),
                image_key=result.image_key,
                result=result.SerializeToString(),
                summary_upto=int(state.get("summary_upto") or 0),
            )
        except RunCancelled as cancelled:  # the cancel came after the graph's last step: it still wins
            if not cancelled.mode:
                return "failed", emitter.first_token_at
            return await self._carry_out_cancel(p, run, emitter, config, state=state, mode=cancelled.mode)
        result.message_id = message_id
        packed = any_pb2.Any()
        packed.Pack(result)
        summary_line = result.answer.splitlines()[0][:120] if result.answer else ""
        await emitter.emit(
            events_pb2.EVENT_KIND_DONE,
            stage=events_pb2.STAGE_PERSIST,
            node="done",
            done=events_pb2.JobResult(result=packed, summary=summary_line),
        )
        await emitter.drain()  # acked only once DONE is stored
        self.stats.done += 1
        return "done", emitter.first_token_at

    async def _run_graph(
        self, job: Job, p: dict[str, Any], run: RunStart, snapshot, ctx: JobContext, config: dict
    ) -> dict:
        """Wait for the conversation's earlier runs, then run the graph (the cancellable part of a turn)."""
        job_id = p["job_id"]
        history = run.history  # read with the run's start when it had nothing to wait for
        if run.blocker is not None:
            history = await self._wait_for_earlier_runs(job_id, fresh=p.get("resume") is None)
        if p.get("resume") is not None:
            ids = p.get("interrupt_ids") or []
            graph_input: Any = Command(resume=p["resume"] if len(ids) <= 1 else {iid: p["resume"] for iid in ids})
        elif continues_from(snapshot):  # re-claimed after a crash: continue from the last checkpoint
            graph_input = None
        else:
            summary, messages = history or await self.store.history(
                p["conversation_id"], before_job=job_id, limit=self.settings.chat_history_messages
            )
            graph_input = {
                "job_id": job_id,
                "user_id": p["user_id"],
                "conversation_id": p["conversation_id"],
                "message": p["message"],
                "image_key": p.get("image_key", ""),
                "location": p.get("location"),
                "history": messages,
                "summary": summary,
            }
        return await self.graph.ainvoke(
            graph_input, config, context=ctx, durability=self.settings.chat_checkpoint_durability
        )

    async def _wait_for_earlier_runs(self, job_id: str, *, fresh: bool) -> tuple[str, list[dict]] | None:
        """A message sent while its conversation had a run going (double-text enqueue, or the
        run an interrupt / rollback is stopping) runs once that run ended, with its answer in its
        history; at most ECO2_CHAT_QUEUE_WAIT_S. The job keeps its claim while it waits. A new
        message's question then moves after that answer: its summary and history, read with the move."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.chat_queue_wait_s
        pause = 0.01
        while await self.store.blocker_of(job_id, stale_s=self.settings.chat_run_stale_s) is not None:
            if loop.time() >= deadline:
                log.warning("a turn stopped waiting for its conversation's earlier run", extra={"job_id": job_id})
                break
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 0.25)
        if not fresh:
            return None
        return await self.store.move_to_end(job_id, history_limit=self.settings.chat_history_messages)

    async def _carry_out_cancel(
        self,
        p: dict[str, Any],
        run: RunStart,
        emitter: Emitter,
        config: dict,
        *,
        state: dict | None = None,
        mode: int = 0,
    ) -> tuple[str, float | None]:
        """Carry out the cancel recorded on the run: INTERRUPT keeps what was answered so far as
        the assistant message (ChatResult.cancelled), ROLLBACK deletes the turn's messages and
        checkpoints; then the stream ends with ERROR CANCELLED. Idempotent: a worker that dies
        half-way leaves the job to be re-claimed, and the next one does it again."""
        job_id = p["job_id"]
        if not mode:  # a transition found the cancel: its mode is on the run
            mode = (await self.store.run_state(job_id) or (0, pg.INTERRUPT))[1] or pg.INTERRUPT
        if mode == pg.ROLLBACK:  # the checkpoints first: the run's status says it is all done
            await self.graph.checkpointer.adelete_thread(job_id)
            await self.store.finish_cancelled(
                job_id=job_id, conversation_id=run.conversation_id, user_id=run.user_id, mode=mode, text=""
            )
        else:
            values, streamed = await asyncio.gather(self._checkpointed(config, state), self._streamed(emitter))
            text = str(values.get("answer") or "") if streamed is None else streamed
            result = result_of({**values, "conversation_id": run.conversation_id, "answer": text}, message_id="")
            result.ClearField("grade")  # an answer cut short is not graded
            result.cancelled = True
            await self.store.finish_cancelled(
                job_id=job_id,
                conversation_id=run.conversation_id,
                user_id=run.user_id,
                mode=mode,
                text=text,
                result=result.SerializeToString(),
                intents=list(result.intents),
                citations=[c.SerializeToString() for c in result.citations],
            )
        # The terminal event goes after whatever the job's stream holds: a re-claimed attempt's
        # emitter restarts from its checkpoint's seq, below what the dead worker published.
        await self._drain_quietly(emitter)
        if not await self.sink.publish_next(cancel_error(mode, job_id)):
            log.info("the cancelled job's stream was already closed", extra={"job_id": job_id})
        log.info("run cancelled", extra={"job_id": job_id, "mode": chat_pb2.CancelMode.Name(mode)})
        return "cancelled", emitter.first_token_at

    async def _streamed(self, emitter: Emitter) -> str | None:
        """What the run answered so far as its followers saw it: the TOKEN text of its stream
        (every attempt's and, after a NEEDS_INPUT, both parts), once this attempt's events are
        out. None when the stream cannot be read (the checkpoint's answer is kept instead)."""
        try:
            await emitter.drain()
            events = await self.sink.published(emitter.job_id)
        except Exception:  # noqa: BLE001 — Valkey hiccup: keep what the checkpoint holds
            log.warning("reading a cancelled run's stream failed", extra={"job_id": emitter.job_id}, exc_info=True)
            return None
        return "".join(e.delta for e in events if e.kind == events_pb2.EVENT_KIND_TOKEN)

    async def _checkpointed(self, config: dict, state: dict | None = None) -> dict:
        """The run's state: the graph's last result when there is one, else its last checkpoint."""
        if state is not None:
            return dict(state)
        try:
            snapshot = await self.graph.aget_state(config)
        except Exception:  # noqa: BLE001 — no state to keep: the streamed text is the answer
            log.warning("reading a cancelled run's state failed", exc_info=True)
            return {}
        return dict(snapshot.values or {}) if snapshot is not None else {}

    async def _publish_cancel_end(self, job_id: str, mode: int) -> None:
        """End a cancelled run's stream if nobody did (no-op on a closed stream)."""
        await self.sink.publish_next(cancel_error(mode, job_id))

    async def _start_run(self, job_id: str, *, fresh: bool) -> RunStart | None:
        """The run's row as this worker starts it (ConversationStore.start_run), waiting up to
        ECO2_CHAT_COMMIT_WAIT_S for it. SendMessage queues the job just before its transaction
        commits, so a worker that claims at once (the usual case: more than half the turns of a
        busy stack) finds the message a few milliseconds later; failing the attempt instead cost
        such a turn ECO2_JOBS_RETRY_DELAY_S (1 s) and one of its attempts. A send that rolled
        back never commits: the attempt fails after the wait."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.chat_commit_wait_s
        pause = 0.005
        s = self.settings
        while (
            run := await self.store.start_run(
                job_id, fresh=fresh, stale_s=s.chat_run_stale_s, history_limit=s.chat_history_messages
            )
        ) is None:
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)
        return run

    async def _error(self, emitter: Emitter, code: int, reason: str, message: str, retryable: bool) -> None:
        await emitter.emit(
            events_pb2.EVENT_KIND_ERROR,
            node="error",
            error=events_pb2.JobError(code=code, reason=reason, message=message, retryable=retryable),
        )
        await emitter.drain()

    @staticmethod
    async def _drain_quietly(emitter: Emitter) -> None:
        try:
            await emitter.drain()
        except Exception:  # noqa: BLE001 — the job's own error is the one to report
            pass


def end_dead_job(sink, store: ConversationStore | None = None):
    """The chat queue's `on_dead`: a dead-lettered job ends its stream with ERROR and its run
    FAILED; a resume job ("<job>:input:<seq>") streams on its job's events."""
    stream_of = lambda job: json.loads(job.payload).get("job_id", job.job_id)  # noqa: E731
    end = ends_stream_on_dead(
        sink,
        job_kind=events_pb2.JOB_KIND_CHAT,
        message="답변을 만들지 못했어요. 잠시 후 다시 시도해 주세요.",
        stream_of=stream_of,
    )
    if store is None:
        return end

    async def on_dead(job: Job, error: str) -> None:
        await store.fail_run(stream_of(job), "JOB_FAILED", despite_cancel=True)
        await end(job, error)

    return on_dead


def continues_from(snapshot) -> bool:
    """A re-claimed job's checkpoint has work left: a task to run, or tasks whose stored writes
    are not applied yet (every branch of a fan-out finished, the step's checkpoint was not
    stored). The graph then continues from it; a new input would start the turn again on top of
    its channels (the reducers' lists twice)."""
    return snapshot is not None and bool(snapshot.next or snapshot.tasks)


async def _langgraph_exit(exc: asyncio.CancelledError) -> None:
    """LangGraph hands its loop's exit (pending checkpoint writes) along with a CancelledError
    that interrupted it: wait for it before touching the run's checkpoints."""
    for arg in exc.args:
        if isinstance(arg, asyncio.Task) and not arg.done():
            await asyncio.gather(arg, return_exceptions=True)
