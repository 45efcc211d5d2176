"""`GET {ECO2_IMAGES_URL_PREFIX}/{sha256}?exp=&sig=`: the signed image links of `ImageService.GetImage`.

The signature and expiry are checked here, with the helper the images service signs with
(`eco2.services.runtime.image_urls.verify_path`) and the same secret (ECO2_IMAGES_URL_SECRET, or in
embedded mode the one persisted under the data dir), before anything else is called: a bad or
expired link is 403. The caller must still be signed in (ext-authz; a browser's `<img>` sends
the `eco2_access` cookie): `ImageService.ReadImage` only serves the owner's images, so someone
else's (or an unknown) image is 404, the same answer. The bytes are streamed as they come;
the first ReadImage message carries the metadata (content type, size) that makes the headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time

import grpc

from eco2.images.v1 import images_pb2
from eco2.services.runtime import image_urls
from eco2.services.runtime.validation import ascii_digits

from .bridge import CONNECT_CODES, CONNECT_HTTP, connect_error
from .http import ClientGone, Headers, HttpError, Request

READ = "/eco2.images.v1.ImageService/ReadImage"
#: what an image may be served as (the images service only stores these, sniffed by magic bytes)
_SAFE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}


class SignedImages:
    def __init__(self, settings, upstreams) -> None:
        self.settings = settings
        self.upstreams = upstreams
        self.prefix = settings.images_url_prefix.rstrip("/") + "/"
        self.pattern = re.compile(re.escape(self.prefix))  # the gateway's route: every path under the prefix
        self._secret: bytes | None = None
        self._read = None

    def secret(self) -> bytes:
        if self._secret is None:
            from eco2.services.runtime.settings import Deployment

            s = self.settings
            try:
                self._secret = image_urls.resolve_secret(
                    s.images_url_secret, s.data_dir, embedded=s.deployment == Deployment.EMBEDDED
                )
            except ValueError as exc:
                raise HttpError(503, f"signed image links are not configured: {exc}", "IMAGES_NOT_CONFIGURED") from None
        return self._secret

    def verify(self, req: Request) -> tuple[str, int]:
        """(sha256 hex, expiry) of a link that verifies; else 403 (bad, tampered or expired)."""
        if req.method not in ("GET", "HEAD"):
            raise HttpError(405, "use GET", "METHOD_NOT_ALLOWED", headers=[(b"allow", b"GET, HEAD")])
        query = req.scope.get("query_string", b"").decode("latin-1")
        sha = image_urls.verify_path(self.secret(), f"{req.path}?{query}", prefix=self.prefix)
        if sha is None:
            expired = False
            exp = req.query_value("exp") or ""
            if ascii_digits(exp) and int(exp) < time.time():
                expired = True
            raise HttpError(
                403,
                "the image link has expired: ask for a new one (GET /v1/images/meta/{key})"
                if expired
                else "the image link's signature is not valid",
                "LINK_EXPIRED" if expired else "BAD_SIGNATURE",
            )
        return sha, int(req.query_value("exp") or 0)

    def _stub(self):
        if self._read is None:
            self._read = self.upstreams.channel(self.settings.images_addr).unary_stream(
                READ,
                request_serializer=images_pb2.ReadImageRequest.SerializeToString,
                response_deserializer=images_pb2.ReadImageResponse.FromString,
            )
        return self._read

    async def handle(
        self, req: Request, sha: str, expires_at: int, metadata: list[tuple[str, str]], extra: Headers
    ) -> None:
        etag = f'"sha256:{sha}"'.encode()
        max_age = max(0, expires_at - int(time.time()))
        common = [
            (b"cache-control", f"private, max-age={max_age}, immutable".encode()),
            (b"etag", etag),
            (b"x-content-type-options", b"nosniff"),
            (b"content-security-policy", b"default-src 'none'; sandbox"),
            *extra,
        ]
        call = self._stub()(
            images_pb2.ReadImageRequest(key=f"sha256:{sha}"),
            timeout=self.settings.gateway_default_timeout_s,
            metadata=metadata,
        )
        try:
            try:
                first = await call.read()
            except grpc.aio.AioRpcError as exc:
                code = exc.code().value[0]
                status = CONNECT_HTTP.get(code, 502)
                err = connect_error(code, exc.details() or "", exc.trailing_metadata())
                await req.respond_json(
                    status,
                    {"error": {"code": status, "reason": CONNECT_CODES.get(code, "unknown").upper(), **err}},
                    extra,
                )
                return
            if first is grpc.aio.EOF:
                raise HttpError(502, "the images service sent no image", "EMPTY_IMAGE")
            image = first.image
            ctype = image.content_type if image.content_type in _SAFE_TYPES else "application/octet-stream"
            if req.headers.get("if-none-match", "").strip() in (
                etag.decode(),
                "*",
            ):  # content-addressed: same key, same bytes
                await req.start(304, common)
                await req.write(b"", more=False)
                return
            await req.start(
                200, [(b"content-type", ctype.encode()), (b"content-length", str(image.size_bytes).encode()), *common]
            )
            if req.method == "HEAD":
                await req.write(b"", more=False)
                return
            sent = 0
            chunk = first.chunk
            while True:
                if chunk:
                    sent += len(chunk)
                    await req.write(chunk)
                try:
                    message = await call.read()
                except grpc.aio.AioRpcError:
                    # headers are out: the only honest thing left is to cut the response short
                    raise ClientGone() from None
                if message is grpc.aio.EOF:
                    break
                chunk = message.chunk
            if sent != image.size_bytes:
                raise ClientGone()  # a short body would be a corrupt image: end without completing it
            await req.write(b"", more=False)
        except (ClientGone, asyncio.CancelledError):
            call.cancel()
            raise
        finally:
            if not call.done():
                call.cancel()
                with contextlib.suppress(BaseException):
                    await call.code()
