"""`eco2 scan PHOTO [--hint TEXT]`: scan a photo with the stack `eco2 up` runs, in the terminal.

The photo is uploaded through ImageService and scanned by ScanService.StreamScan as a dev user
(dev sign-in + ext-authz Check, as the edge does); the stages go to stderr, the answer streams to
stdout. When the scan asks which item it is, a terminal gets the question (a number picks a
choice, words name the item); without one the command ends with exit 3.

Exit codes: 0 the scan is done, 1 an error (or no stack runs), 2 bad input (no such file, not an
image, refused by a service), 3 the scan waits for an answer it could not get.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path

import grpc

from eco2.character.v1 import character_pb2
from eco2.events.v1 import events_pb2
from eco2.images.v1 import images_pb2, images_pb2_grpc
from eco2.scan.v1 import scan_pb2, scan_pb2_grpc

DONE, ERROR, BAD_INPUT, UNANSWERED = 0, 1, 2, 3
CHUNK = 64 * 1024
#: Refusals that are the input's fault (exit 2); anything else is an error of the stack (exit 1).
BAD_INPUT_CODES = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
)


def content_type(data: bytes) -> str | None:
    """The image type the magic bytes announce (what ImageService accepts), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _refused(exc: grpc.aio.AioRpcError) -> int:
    _say(f"eco2 scan: {exc.code().name}: {exc.details()}")
    return BAD_INPUT if exc.code() in BAD_INPUT_CODES else ERROR


async def _upload(channel: grpc.aio.Channel, metadata, data: bytes, mime: str, name: str) -> str:
    async def parts():
        yield images_pb2.UploadRequest(
            metadata=images_pb2.UploadMetadata(channel=images_pb2.IMAGE_CHANNEL_SCAN, content_type=mime, filename=name)
        )
        for i in range(0, len(data), CHUNK):
            yield images_pb2.UploadRequest(chunk=data[i : i + CHUNK])

    return (await images_pb2_grpc.ImageServiceStub(channel).Upload(parts(), metadata=metadata)).image.key


async def _answer(question: events_pb2.InputRequest) -> scan_pb2.ProvideScanInputRequest | None:
    """Ask in the terminal; None without one (or on an empty reply)."""
    _say(f"\n? {question.prompt}")
    for i, choice in enumerate(question.choices, 1):
        _say(f"  {i}. {choice.label}")
    if not sys.stdin.isatty():
        _say("eco2 scan: the scan needs an answer: run it in a terminal, or name the item with --hint")
        return None
    reply = (await asyncio.to_thread(input, "> ")).strip()
    if not reply:
        return None
    request = scan_pb2.ProvideScanInputRequest(input_id=question.input_id)
    if reply.isdigit() and 1 <= int(reply) <= len(question.choices):
        request.category = character_pb2.WasteCategory.Value(question.choices[int(reply) - 1].value)
    else:
        request.text = reply
    return request


def _print_result(result: scan_pb2.ScanResult) -> None:
    print()
    for rule in result.rules:
        print(f"  [규정] {rule.title} ({rule.document_id})")
    if result.reward.reason:
        print(f"  [보상] {result.reward.reason}")


async def _scan(endpoints: dict, photo: Path, hint: str, user: str) -> int:
    from eco2.services.runtime.dev_identity import NoIdentity, dev_wristband
    from eco2.services.runtime.identity import IDENTITY_KEY

    try:
        data = photo.read_bytes()
    except OSError as exc:
        _say(f"eco2 scan: cannot read {photo}: {exc.strerror}")
        return BAD_INPUT
    mime = content_type(data)
    if mime is None:
        _say(f"eco2 scan: {photo} is not a PNG, JPEG, GIF or WebP image")
        return BAD_INPUT
    try:
        metadata = ((IDENTITY_KEY, await dev_wristband(endpoints["auth"], user)),)
    except NoIdentity as exc:
        _say(f"eco2 scan: {exc}")
        return ERROR
    async with (
        grpc.aio.insecure_channel(endpoints["images"]) as ich,
        grpc.aio.insecure_channel(endpoints["scan"]) as sch,
    ):
        try:
            key = await _upload(ich, metadata, data, mime, photo.name[-255:])
        except grpc.aio.AioRpcError as exc:
            return _refused(exc)
        stub = scan_pb2_grpc.ScanServiceStub(sch)
        request = scan_pb2.StreamScanRequest(image_key=key, hint=hint, client_scan_id=f"cli-{uuid.uuid4().hex}")
        try:
            async for e in stub.StreamScan(request, metadata=metadata):
                if e.kind == events_pb2.EVENT_KIND_STAGE and e.stage_info.message:
                    _say(f"· {e.stage_info.message}")
                elif e.kind == events_pb2.EVENT_KIND_TOKEN:
                    print(e.delta, end="", flush=True)
                elif e.kind == events_pb2.EVENT_KIND_NEEDS_INPUT:
                    answer = await _answer(e.needs_input)
                    if answer is None:
                        return UNANSWERED
                    answer.job_id = e.job_id
                    await stub.ProvideScanInput(answer, metadata=metadata)  # the scan goes on in this stream
                elif e.kind == events_pb2.EVENT_KIND_DONE:
                    result = scan_pb2.ScanResult()
                    e.done.result.Unpack(result)
                    _print_result(result)
                    return DONE
                elif e.kind == events_pb2.EVENT_KIND_ERROR:
                    _say(f"\neco2 scan: {e.error.reason}: {e.error.message}")
                    return ERROR
        except grpc.aio.AioRpcError as exc:
            return _refused(exc)
    _say("eco2 scan: the stream ended without a result")
    return ERROR


def main(data_dir: str | None, photo: str, hint: str = "") -> int:
    from eco2.services.runtime.endpoints import read_endpoints

    try:
        endpoints = read_endpoints(Path(data_dir) if data_dir else None)
    except (ValueError, FileNotFoundError) as exc:
        _say(f"eco2: {exc}")
        return ERROR
    if not all(isinstance(endpoints.get(name), str) for name in ("scan", "images", "auth")):
        _say("eco2: the running stack has no scan, images or auth service")
        return ERROR
    return asyncio.run(_scan(endpoints, Path(photo), hint, os.environ.get("ECO2_SCAN_USER", "cli-user")))
