"""The services scan calls, over gRPC: ImageService (the photo), CharacterService (the reward) and
auth's MeshIdentityService (the job's wristband). Every call carries the current caller's
wristband (runtime.clients): the request's in the servicer, the job's in the worker (act_as)."""

from __future__ import annotations

import grpc

from eco2.character.v1 import character_pb2, character_pb2_grpc
from eco2.images.v1 import images_pb2, images_pb2_grpc
from eco2.services.runtime.errors import NotFound, ResourceExhausted, Unavailable

#: Answers that mean "no such image for this caller": unknown, malformed or someone else's key
#: all get the same NOT_FOUND, so a scan never tells whether another user's image exists.
_NOT_THEIRS = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED)


class GrpcImages:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = images_pb2_grpc.ImageServiceStub(channel)

    @staticmethod
    def _error(exc: grpc.aio.AioRpcError, image_key: str) -> Exception:
        if exc.code() in _NOT_THEIRS:
            return NotFound(f"no image {image_key!r}", reason="IMAGE_NOT_FOUND", metadata={"image_key": image_key})
        return Unavailable("the image service is unavailable", reason="IMAGES_UNAVAILABLE", retry_after_s=1.0)

    async def info(self, image_key: str) -> images_pb2.Image:
        """The caller's image record; NotFound when it is not theirs."""
        try:
            return (await self.stub.GetImage(images_pb2.GetImageRequest(key=image_key))).image
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, image_key) from None

    async def read(self, image_key: str, *, max_bytes: int) -> tuple[bytes, str]:
        """The image's bytes and content type, read as the current caller; ResourceExhausted over `max_bytes`."""
        call = self.stub.ReadImage(images_pb2.ReadImageRequest(key=image_key))
        chunks, got, content_type = [], 0, ""
        try:
            async for message in call:
                if message.HasField("image"):
                    content_type = message.image.content_type
                got += len(message.chunk)
                if got > max_bytes or message.image.size_bytes > max_bytes:
                    call.cancel()
                    raise ResourceExhausted(
                        f"image {image_key!r} is larger than {max_bytes} bytes",
                        reason="IMAGE_TOO_LARGE",
                        metadata={"limit_bytes": str(max_bytes)},
                    )
                chunks.append(message.chunk)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, image_key) from None
        return b"".join(chunks), content_type


class RewardUnavailable(Exception):
    """GrantReward did not answer (retryable) or refused the request (not retryable)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class GrpcRewards:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = character_pb2_grpc.CharacterServiceStub(channel)

    async def grant(self, idempotency_key: str, classification: character_pb2.Classification) -> character_pb2.Reward:
        """CharacterService.GrantReward for the current caller; the same key always gets the same answer."""
        request = character_pb2.GrantRewardRequest(
            source=character_pb2.REWARD_SOURCE_SCAN, classification=classification, idempotency_key=idempotency_key
        )
        try:
            return (await self.stub.GrantReward(request)).reward
        except grpc.aio.AioRpcError as exc:
            retryable = exc.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.ABORTED,
            )
            raise RewardUnavailable(f"GrantReward: {exc.code().name}: {exc.details()}", retryable=retryable) from None
