"""gRPC surface of the scan service: submit (or stream) a scan, read it, answer its question."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid

from eco2.character.v1 import character_pb2
from eco2.events.v1 import events_pb2, events_pb2_grpc
from eco2.scan.v1 import scan_pb2, scan_pb2_grpc
from eco2.services.runtime.context import caller_id
from eco2.services.runtime.errors import FailedPrecondition, FieldViolation, NotFound, ResourceExhausted
from eco2.services.runtime.validation import Validator

from .emitter import publish_tolerant, queued_event
from .pipeline import ScanPipeline
from .postgres import QUEUED, WAITING_INPUT, ScanRecord, ScanStore

log = logging.getLogger("eco2.scan")

#: ImageService's keys: content addresses.
IMAGE_KEY = re.compile(r"^sha256:[0-9a-f]{64}$")
TERMINAL = (events_pb2.EVENT_KIND_DONE, events_pb2.EVENT_KIND_ERROR)


def job_of(scan_id: str) -> str:
    """A scan's job (its events' stream) is named after it: a client that only streamed (job id in
    every event) can still call GetScan, and the other way round (docs/services/scan.md)."""
    return f"scan-{scan_id}"


def _status(record: ScanRecord) -> int:
    return scan_pb2.ScanStatus.Value(f"SCAN_STATUS_{record.status}")


class ScanServicer(scan_pb2_grpc.ScanServiceServicer):
    def __init__(
        self, *, store: ScanStore, queue, sink, images, job_identities, events_channel, settings, pipeline: ScanPipeline
    ) -> None:
        self.store, self.queue, self.sink, self.images, self.job_identities, self.settings = (
            store,
            queue,
            sink,
            images,
            job_identities,
            settings,
        )
        self.pipeline = pipeline
        self.events = events_pb2_grpc.EventServiceStub(events_channel) if events_channel is not None else None

    def _validate(self, request) -> None:
        s = self.settings
        v = Validator()
        if (
            v.text("image_key", request.image_key, max_len=256, single_line=True)
            and request.image_key
            and not IMAGE_KEY.match(request.image_key)
        ):
            v.add("image_key", 'must be an ImageService key: "sha256:" and 64 lowercase hex digits')
        v.text("hint", request.hint, max_len=s.scan_max_hint_chars)
        v.text("client_scan_id", request.client_scan_id, max_len=128, single_line=True)
        if not request.image_key and not request.hint.strip():
            v.add("image_key", "is required when no hint is given")
            v.add("hint", "is required (not blank) when no image_key is given")
        v.raise_if_invalid()

    async def _usable(self, image_key: str) -> None:
        """NOT_FOUND for an unknown key and for another user's; RESOURCE_EXHAUSTED over the limit."""
        image = await self.images.info(image_key)
        limit = self.settings.scan_image_max_bytes
        if image.size_bytes > limit:
            raise ResourceExhausted(
                f"the image has {image.size_bytes} bytes; scans take at most {limit} (ECO2_SCAN_IMAGE_MAX_BYTES)",
                reason="IMAGE_TOO_LARGE",
                metadata={"limit_bytes": str(limit), "size_bytes": str(image.size_bytes)},
                violations=[FieldViolation("image_key", f"the image must be at most {limit} bytes")],
            )

    async def _submit(self, request, context) -> scan_pb2.SubmitScanResponse:
        user_id = caller_id(context)
        self._validate(request)
        if request.client_scan_id:
            existing = await self.store.by_client_id(user_id, request.client_scan_id)
            if existing is not None:
                return await self._replayed(existing, request)
        if request.image_key:
            await self._usable(request.image_key)
        scan_id = str(uuid.uuid4())
        job_id = job_of(scan_id)
        identity = await self.job_identities.issue(job_id)  # before anything is stored: auth down leaves nothing behind
        scan, deduplicated = await self.store.create(
            scan_id=scan_id,
            user_id=user_id,
            client_scan_id=request.client_scan_id,
            image_key=request.image_key,
            hint=request.hint,
            job_id=job_id,
        )
        if deduplicated:  # a concurrent submit with the same client_scan_id stored it first
            return await self._replayed(scan, request)
        await self._queue(scan, identity)
        log.info(
            "scan queued",
            extra={
                "job_id": job_id,
                "scan_id": scan.id,
                "image": bool(request.image_key),
                "hint_chars": len(request.hint),
            },
        )
        return scan_pb2.SubmitScanResponse(job_id=job_id, scan_id=scan.id)

    async def _queue(self, scan: ScanRecord, identity: str) -> None:
        # All three are idempotent: a retried submit (deduplicated) also repairs one that died
        # half-way. The owner first: from the first event on, the job streams to its user only.
        await self.sink.set_owner(scan.job_id, scan.user_id)
        await publish_tolerant(self.sink, [queued_event(scan.job_id)])
        await self.queue.enqueue(scan.job_id, json.dumps({"scan_id": scan.id, "identity": identity}).encode())

    async def _replayed(self, scan: ScanRecord, request) -> scan_pb2.SubmitScanResponse:
        """The scan a retried submit stands for; a different request with the same id is refused."""
        if (scan.image_key, scan.hint) != (request.image_key, request.hint):
            raise FailedPrecondition(
                "client_scan_id was already used for a different scan (another image or hint)",
                reason="CLIENT_SCAN_ID_REUSED",
                metadata={"client_scan_id": request.client_scan_id, "scan_id": scan.id},
            )
        if scan.status == QUEUED and not scan.answers:
            await self._queue(scan, await self.job_identities.issue(scan.job_id))
        return scan_pb2.SubmitScanResponse(job_id=scan.job_id, scan_id=scan.id, deduplicated=True)

    async def SubmitScan(self, request, context):
        return await self._submit(request, context)

    async def StreamScan(self, request, context):
        """Written with context.write(), not yielded: a shutdown that finds the stream blocked on a
        slow reader then cancels it inside the runtime's wrapper (docs/adr/0003). The stream goes
        on past a NEEDS_INPUT: the answer (ProvideScanInput, another call) continues the same job."""
        sent = await self._submit(request, context)
        if self.events is None:
            raise FailedPrecondition("no EventService configured (ECO2_EVENTS_ADDR)", reason="EVENTS_NOT_CONFIGURED")
        async with asyncio.timeout(self.settings.scan_stream_timeout_s):
            async for event in self.events.Subscribe(events_pb2.SubscribeRequest(job_id=sent.job_id, after_seq=0)):
                await context.write(event)
                if event.kind in TERMINAL:
                    return

    async def GetScan(self, request, context):
        user_id = caller_id(context)
        v = Validator()
        if v.text("scan_id", request.scan_id, min_len=1, max_len=64, single_line=True):
            try:
                uuid.UUID(request.scan_id)
            except ValueError:
                v.add("scan_id", "must be a scan id returned by this API")
        v.raise_if_invalid()
        scan = await self.store.owned(user_id, request.scan_id)
        if scan is None:  # unknown, or another user's: the same answer
            raise NotFound(
                f"no scan {request.scan_id!r}", reason="SCAN_NOT_FOUND", metadata={"scan_id": request.scan_id}
            )
        response = scan_pb2.GetScanResponse(status=_status(scan), job_id=scan.job_id)
        if scan.result is not None:
            response.result.ParseFromString(scan.result)
        return response

    async def ProvideScanInput(self, request, context):
        user_id = caller_id(context)
        s = self.settings
        v = Validator()
        v.text("job_id", request.job_id, min_len=1, max_len=128, single_line=True)
        v.text("input_id", request.input_id, min_len=1, max_len=64, single_line=True)
        which = request.WhichOneof("answer")
        if which == "category":
            v.enum("category", request.category, character_pb2.WasteCategory)
        elif which == "text":
            if v.text("text", request.text, min_len=1, max_len=s.scan_max_hint_chars):
                v.check(bool(request.text.strip()), "text", "must not be blank")
        else:
            v.add("answer", "give a category or text")
        v.raise_if_invalid()
        scan = await self.store.by_job(user_id, request.job_id)
        if scan is None:
            raise NotFound(
                f"no scan with job {request.job_id!r}", reason="SCAN_NOT_FOUND", metadata={"job_id": request.job_id}
            )
        if scan.status != WAITING_INPUT:
            raise FailedPrecondition(
                f"the scan is {scan.status}, not waiting for input",
                reason="SCAN_NOT_WAITING",
                metadata={"status": scan.status},
            )
        if scan.pending_input != request.input_id:
            raise FailedPrecondition(
                f"input {request.input_id!r} is not the question asked",
                reason="INPUT_ID_MISMATCH",
                metadata={"expected": scan.pending_input},
            )
        identity = await self.job_identities.issue(scan.job_id)  # before the answer is stored
        answer = {
            "input_id": request.input_id,
            **({"category": request.category} if which == "category" else {"text": request.text}),
        }
        updated = await self.store.add_answer(
            user_id=user_id, job_id=scan.job_id, input_id=request.input_id, answer=answer
        )
        if updated is None:  # answered meanwhile: only the first answer counts
            raise FailedPrecondition("the question was already answered", reason="SCAN_NOT_WAITING")
        await self.queue.enqueue(
            f"{scan.job_id}:input:{len(updated.answers)}",
            json.dumps({"scan_id": scan.id, "identity": identity}).encode(),
        )
        return scan_pb2.ProvideScanInputResponse(job_id=scan.job_id)

    async def ClassifyPhoto(self, request, context):
        caller_id(context)  # the photo is read as the caller: someone else's is NOT_FOUND
        v = Validator()
        if v.text("image_key", request.image_key, min_len=1, max_len=256, single_line=True) and not IMAGE_KEY.match(
            request.image_key
        ):
            v.add("image_key", 'must be an ImageService key: "sha256:" and 64 lowercase hex digits')
        v.text("hint", request.hint, max_len=self.settings.scan_max_hint_chars)
        v.raise_if_invalid()
        await self._usable(request.image_key)
        return await self.pipeline.classify_photo(request.image_key, request.hint)
