"""gRPC surface of the chat service."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import datetime

from eco2.chat.v1 import chat_pb2, chat_pb2_grpc
from eco2.events.v1 import events_pb2, events_pb2_grpc
from eco2.services.runtime.context import caller_id
from eco2.services.runtime.errors import FailedPrecondition, NotFound
from eco2.services.runtime.paging import decode_token, encode_token, page_size
from eco2.services.runtime.telemetry import current_traceparent
from eco2.services.runtime.validation import Validator

from . import postgres as pg
from .emitter import publish_queued
from .keys import input_key
from .metrics import STREAMS_ACTIVE
from .pii import mask
from .postgres import Cancel, ConversationStore
from .result import result_of
from .runs import cancel_error, run_of, signal_cancel

log = logging.getLogger("eco2.chat")

POLICIES = {
    "reject": chat_pb2.DOUBLE_TEXT_POLICY_REJECT,
    "enqueue": chat_pb2.DOUBLE_TEXT_POLICY_ENQUEUE,
    "interrupt": chat_pb2.DOUBLE_TEXT_POLICY_INTERRUPT,
    "rollback": chat_pb2.DOUBLE_TEXT_POLICY_ROLLBACK,
}


def _uuid_field(v: Validator, field: str, value: str, *, required: bool) -> None:
    if not value:
        v.check(not required, field, "is required")
        return
    try:
        uuid.UUID(value)
    except ValueError:
        v.add(field, "must be an id returned by this API")


def _location(v: Validator, req, field: str = "location") -> dict | None:
    if not req.HasField(field):
        return None
    loc = getattr(req, field)
    v.number(f"{field}.latitude", loc.latitude, low=-90.0, high=90.0)
    v.number(f"{field}.longitude", loc.longitude, low=-180.0, high=180.0)
    return {"latitude": loc.latitude, "longitude": loc.longitude}


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    def __init__(
        self,
        *,
        store: ConversationStore,
        queue,
        sink,
        redis,
        images,
        events_channel,
        settings,
        job_identities,
        outbox=None,
        graph=None,
    ) -> None:
        self.store, self.queue, self.sink, self.redis, self.images, self.settings = (
            store,
            queue,
            sink,
            redis,
            images,
            settings,
        )
        self.job_identities = job_identities
        self.outbox = outbox
        self.graph = graph  # the compiled graph, for its checkpoints (GetConversationState)
        self.default_policy = POLICIES[settings.chat_double_text_policy]
        self._background: set[asyncio.Task] = set()
        self.events = events_pb2_grpc.EventServiceStub(events_channel) if events_channel is not None else None

    async def _send(self, request, context) -> chat_pb2.SendMessageResponse:
        user_id = caller_id(context)
        s = self.settings
        v = Validator()
        v.text("message", request.message, min_len=1, max_len=s.chat_max_message_chars)
        if request.message and not request.message.strip():
            v.add("message", "must not be blank")
        _uuid_field(v, "conversation_id", request.conversation_id, required=False)
        v.text("client_message_id", request.client_message_id, max_len=128, single_line=True)
        v.text("image_key", request.image_key, max_len=256, single_line=True)
        v.enum("double_text_policy", request.double_text_policy, chat_pb2.DoubleTextPolicy, allow_unspecified=True)
        location = _location(v, request)
        v.raise_if_invalid()
        policy = request.double_text_policy or self.default_policy
        if request.image_key:
            if self.images is None:
                raise FailedPrecondition("images are not enabled on this stack", reason="IMAGES_NOT_CONFIGURED")
            await self.images.check_owned(request.image_key)
        job_id = f"chat-{uuid.uuid4().hex}"
        identity = await self.job_identities.issue(job_id)  # before anything is stored: auth down leaves nothing behind
        # The message and its job, or neither: the job is queued inside the message's transaction,
        # which commits only once the job is queued. Valkey down → the transaction rolls back and
        # the caller gets UNAVAILABLE with nothing stored; a worker quicker than the commit waits
        # for it (worker.MessageNotStored).
        async with self.store.adding_user_message(
            user_id=user_id,
            conversation_id=request.conversation_id,
            text=request.message,
            image_key=request.image_key,
            client_message_id=request.client_message_id,
            job_id=job_id,
            policy=policy,
            stale_s=s.chat_run_stale_s,
        ) as sent:
            payload = {
                "job_id": sent.job_id,
                "conversation_id": sent.conversation_id,
                "user_id": user_id,
                "message": request.message,
                "image_key": request.image_key,
                "location": location,
                "seq_base": 1,
                "identity": identity,
                "traceparent": current_traceparent(),
            }
            # Both are idempotent, so a retried send (deduplicated) also repairs a send that died half-way.
            await publish_queued(self.sink, sent.job_id, user_id, self.outbox, traceparent=payload["traceparent"])
            await self.queue.enqueue(sent.job_id, json.dumps(payload).encode())
        if sent.cancelled:  # double-text interrupt / rollback: the runs it stopped hear of it once it is committed
            await self._after_cancel(list(sent.cancelled))
        log.info(
            "message queued",
            extra={
                "job_id": sent.job_id,
                "conversation_id": sent.conversation_id,
                "chars": len(request.message),
                "preview": mask(request.message[:60]),
                "deduplicated": sent.deduplicated,
            },
        )
        return chat_pb2.SendMessageResponse(
            job_id=sent.job_id,
            conversation_id=sent.conversation_id,
            message_id=sent.message_id,
            deduplicated=sent.deduplicated,
        )

    async def SendMessage(self, request, context):
        return await self._send(request, context)

    async def StreamChat(self, request, context):
        """Written with context.write(), not yielded: a shutdown that finds the stream blocked on a
        slow reader then cancels it inside the runtime's wrapper (UNAVAILABLE + RetryInfo), with
        OpenTelemetry's interceptor in front too (docs/adr/0003)."""
        sent = await self._send(request, context)
        if self.events is None:
            raise FailedPrecondition("no EventService configured (ECO2_EVENTS_ADDR)", reason="EVENTS_NOT_CONFIGURED")
        finished = False
        try:
            async with asyncio.timeout(self.settings.chat_stream_timeout_s):
                with STREAMS_ACTIVE.track_inprogress():
                    async for event in self.events.Subscribe(
                        events_pb2.SubscribeRequest(job_id=sent.job_id, after_seq=0)
                    ):
                        await context.write(event)
                        if event.kind in (events_pb2.EVENT_KIND_DONE, events_pb2.EVENT_KIND_ERROR):
                            finished = True
                            return
        finally:
            if not finished and self.settings.chat_cancel_on_disconnect:
                # in a task of its own: this handler is being cancelled (the client left)
                task = asyncio.ensure_future(self._cancel_quietly(sent.job_id, caller_id(context)))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _cancel_quietly(self, job_id: str, user_id: str) -> None:
        """Cancel (interrupt) a job whose StreamChat client left; a job that ended meanwhile stays as it is."""
        try:
            outcome = await self.store.cancel_run(job_id, user_id, pg.INTERRUPT)
            if not outcome.already:
                await self._after_cancel([outcome])
        except FailedPrecondition:
            pass
        except Exception:  # noqa: BLE001 — the stream is gone; the job finishes and is stored instead
            log.warning(
                "cancelling the job of a StreamChat client that left failed", extra={"job_id": job_id}, exc_info=True
            )

    async def _after_cancel(self, cancels: list[Cancel]) -> None:
        """What follows a recorded cancel, once it is committed: a queued run (ended already)
        gets its stream's terminal event; a running one's worker is signalled; a run waiting for
        input has its question taken back (the first of this and ProvideInput to take it wins)
        and a worker carries the cancel out in a job of its own — unless ProvideInput won, whose
        resume job finds the cancel when it starts."""
        signal = []
        for c in cancels:
            if c.finished:
                await self.sink.publish_next(cancel_error(c.mode, c.job_id))
                continue
            signal.append((c.job_id, c.mode))
            if c.status == pg.WAITING:
                raw = await self.redis.getdel(input_key(c.job_id))
                if raw:
                    pending = json.loads(raw)
                    payload = {
                        **pending["payload"],
                        "seq_base": pending["seq"],
                        "cancel": True,
                        "traceparent": current_traceparent(),
                    }
                    await self.queue.enqueue(f"{c.job_id}:cancel", json.dumps(payload).encode())
        if signal:
            await signal_cancel(self.redis, self.settings.chat_job_kind, signal)

    async def CancelRun(self, request, context):
        user_id = caller_id(context)
        v = Validator()
        v.text("job_id", request.job_id, min_len=1, max_len=128, single_line=True)
        v.enum("mode", request.mode, chat_pb2.CancelMode, allow_unspecified=True)
        v.raise_if_invalid()
        outcome = await self.store.cancel_run(request.job_id, user_id, request.mode or pg.INTERRUPT)
        # again for a repeated cancel too (each step is idempotent): it repairs a first call whose
        # process died between its commit and these steps
        await self._after_cancel([outcome])
        status = outcome.status
        if not outcome.finished:
            status = await self._until_carried_out(request.job_id, status)
        log.info(
            "run cancel",
            extra={
                "job_id": request.job_id,
                "mode": chat_pb2.CancelMode.Name(outcome.mode),
                "status": chat_pb2.RunStatus.Name(status),
                "already": outcome.already,
            },
        )
        return chat_pb2.CancelRunResponse(
            job_id=request.job_id, mode=outcome.mode, status=status, already_cancelled=outcome.already
        )

    async def _until_carried_out(self, job_id: str, status: int) -> int:
        """The run's status once its worker carried out the cancel, or after ECO2_CHAT_CANCEL_WAIT_S."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.chat_cancel_wait_s
        pause = 0.005
        while True:
            state = await self.store.run_state(job_id)
            if state is None:  # the conversation was deleted meanwhile
                return status
            status = state[0]
            if status not in pg.ACTIVE or loop.time() >= deadline:
                return status
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)

    async def ProvideInput(self, request, context):
        user_id = caller_id(context)
        v = Validator()
        v.text("job_id", request.job_id, min_len=1, max_len=128, single_line=True)
        v.text("input_id", request.input_id, min_len=1, max_len=64, single_line=True)
        value = request.WhichOneof("value")
        location = None
        if value == "location":
            location = _location(v, request)
        elif value is None and not request.declined:
            v.add("value", "give a location, text or confirmation, or set declined")
        v.raise_if_invalid()
        raw = await self.redis.get(input_key(request.job_id))
        pending = json.loads(raw) if raw else None
        if pending is None or pending["user_id"] != user_id:
            raise NotFound(
                f"job {request.job_id!r} is not waiting for input",
                reason="NO_PENDING_INPUT",
                metadata={"job_id": request.job_id},
            )
        if pending["input_id"] != request.input_id:
            raise FailedPrecondition(
                f"input {request.input_id!r} is not the one asked for",
                reason="INPUT_ID_MISMATCH",
                metadata={"expected": pending["input_id"]},
            )
        if pending["input_id"] == "location" and value not in ("location", None):
            raise FailedPrecondition("this question needs a location", reason="INPUT_KIND_MISMATCH")
        resume = (
            {"declined": True}
            if request.declined
            else {"location": location, "text": request.text if value == "text" else ""}
        )
        identity = await self.job_identities.issue(request.job_id)
        payload = {
            **pending["payload"],
            "resume": resume,
            "interrupt_ids": pending["interrupt_ids"],
            "seq_base": pending["seq"],
            "identity": identity,
            "traceparent": current_traceparent(),
        }
        # Only the first answer counts: the key is deleted atomically.
        if not await self.redis.delete(input_key(request.job_id)):
            raise NotFound(f"job {request.job_id!r} is not waiting for input", reason="NO_PENDING_INPUT")
        await self.queue.enqueue(f"{request.job_id}:input:{pending['seq']}", json.dumps(payload).encode())
        return chat_pb2.ProvideInputResponse()

    async def ListConversations(self, request, context):
        user_id = caller_id(context)
        v = Validator()
        size = page_size(request.page_size, v, default=20, maximum=self.settings.chat_page_max)
        cursor = decode_token(request.page_token, v)
        after = None
        if cursor:
            try:
                after = (datetime.fromisoformat(str(cursor["t"])), str(uuid.UUID(str(cursor["i"]))))
            except (KeyError, ValueError):
                v.add("page_token", "is not a page token returned by this API")
        v.raise_if_invalid()
        rows = await self.store.list_conversations(user_id, after=after, limit=size)
        token = ""
        if len(rows) == size:
            last = rows[-1]
            token = encode_token(
                t=last.updated_at.ToDatetime(tzinfo=__import__("datetime").timezone.utc).isoformat(), i=last.id
            )
        return chat_pb2.ListConversationsResponse(conversations=rows, next_page_token=token)

    async def GetConversation(self, request, context):
        user_id = caller_id(context)
        v = Validator()
        _uuid_field(v, "conversation_id", request.conversation_id, required=True)
        size = page_size(request.page_size, v, default=50, maximum=self.settings.chat_page_max)
        v.enum("order", request.order, chat_pb2.MessageOrder, allow_unspecified=True)
        oldest_first = request.order == chat_pb2.MESSAGE_ORDER_OLDEST_FIRST
        cursor = decode_token(request.page_token, v)
        at = cursor.get("n")
        if cursor and not (isinstance(at, int) and at > 0):
            v.add("page_token", "is not a page token returned by this API")
        elif cursor and bool(cursor.get("o")) != oldest_first:
            v.add("page_token", "was issued for the other order: send the order it came with")
        v.raise_if_invalid()
        conversation, messages, next_n = await self.store.get_conversation(
            user_id, request.conversation_id, cursor_n=at, limit=size, oldest_first=oldest_first
        )
        token = (encode_token(n=next_n, o=1) if oldest_first else encode_token(n=next_n)) if next_n else ""
        return chat_pb2.GetConversationResponse(conversation=conversation, messages=messages, next_page_token=token)

    async def GetConversationState(self, request, context):
        user_id = caller_id(context)
        v = Validator()
        _uuid_field(v, "conversation_id", request.conversation_id, required=True)
        size = page_size(request.page_size, v, default=20, maximum=self.settings.chat_page_max)
        cursor = decode_token(request.page_token, v)
        after = cursor.get("r", 0)
        if cursor and not (isinstance(after, int) and after > 0):
            v.add("page_token", "is not a page token returned by this API")
        v.raise_if_invalid()
        conversation, summary, active_id, rows, next_n = await self.store.conversation_runs(
            user_id,
            request.conversation_id,
            after_n=after,
            limit=size,
            stale_s=self.settings.chat_run_stale_s,
        )
        runs = [await self._run(row, checkpoints=request.include_checkpoints) for row in rows]
        reply = chat_pb2.GetConversationStateResponse(
            conversation=conversation,
            summary=summary,
            runs=runs,
            next_page_token=encode_token(r=next_n) if next_n else "",
        )
        if active_id:
            listed = next((r for r in runs if r.job_id == active_id), None)
            if listed is None:
                row = await self.store.run_row(active_id)
                listed = await self._run(row, checkpoints=request.include_checkpoints) if row is not None else None
            if listed is not None:
                reply.active_run.CopyFrom(listed)
        return reply

    async def _run(self, row, *, checkpoints: bool) -> chat_pb2.Run:
        """A run with what its checkpoints add: the state of a run without a stored answer (in
        progress, waiting, failed), and its checkpoint history when asked for."""
        snapshot, history = None, None
        if self.graph is not None and (checkpoints or row["a_id"] is None):
            config = {"configurable": {"thread_id": row["job_id"]}}
            snapshot = await self.graph.aget_state(config)
            if checkpoints:
                history = [snap async for snap in self.graph.aget_state_history(config)]
        return run_of(row, snapshot=snapshot, history=history, result_of=result_of)

    async def DeleteConversation(self, request, context):
        user_id = caller_id(context)
        v = Validator()
        _uuid_field(v, "conversation_id", request.conversation_id, required=True)
        v.raise_if_invalid()
        await self.store.delete(user_id, request.conversation_id)
        return chat_pb2.DeleteConversationResponse()
