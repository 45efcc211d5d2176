"""Image upload/read over real gRPC streams, real Postgres, real local disk and a real
S3-compatible server (moto) on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import time
import uuid

import grpc
import pytest

from eco2.images.v1 import images_pb2 as pb
from eco2.images.v1 import images_pb2_grpc
from eco2.services.runtime import image_urls
from eco2.services.runtime.errors import status_details, unpack_details
from support.identity import as_user
from support.images import png
from support.servers import env, running

LIMIT = 64 * 1024


def jpeg(payload: bytes) -> bytes:
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + payload + b"\xff\xd9"


GIF = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"


def webp(payload: bytes) -> bytes:
    body = b"WEBP" + b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def user():
    return as_user(f"u-{uuid.uuid4()}")


def stream(
    data: bytes,
    content_type="image/png",
    filename="photo.png",
    channel=pb.IMAGE_CHANNEL_SCAN,
    chunk=16 * 1024,
    meta=True,
):
    async def gen():
        if meta:
            yield pb.UploadRequest(
                metadata=pb.UploadMetadata(channel=channel, content_type=content_type, filename=filename)
            )
        for i in range(0, len(data), chunk):
            yield pb.UploadRequest(chunk=data[i : i + chunk])

    return gen()


@pytest.fixture(scope="module")
def images_env(service_env, session_dir):
    data_dir = session_dir / f"images-{uuid.uuid4().hex[:6]}"
    data_dir.mkdir()
    return {
        **service_env,
        "ECO2_DATA_DIR": str(data_dir),
        "ECO2_IMAGES_MAX_BYTES": str(LIMIT),
        "ECO2_IMAGES_READ_CHUNK_BYTES": "4096",
    }


@pytest.fixture(scope="module")
async def images(images_env):
    from eco2.services.images.app import create

    with env(images_env):
        app = create()
    async with running(app) as server:
        yield server


@pytest.fixture(scope="module")
async def stub(images):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{images.port}") as ch:
        yield images_pb2_grpc.ImageServiceStub(ch)


def blob_path(images, sha: str):
    return images.app.storage.path(sha)


async def read_all(stub, key, md) -> tuple[pb.Image, bytes, int]:
    image, parts = None, []
    async for msg in stub.ReadImage(pb.ReadImageRequest(key=key), metadata=md):
        if image is None:
            assert msg.HasField("image")
            image = msg.image
        else:
            assert not msg.HasField("image")
        parts.append(msg.chunk)
    return image, b"".join(parts), len(parts)


async def expect(call, code, reason=None, field=None):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    details = unpack_details(status_details(err.value))
    if reason:
        assert details["ErrorInfo"].reason == reason
    if field:
        assert field in [v.field for v in details["BadRequest"].field_violations]
    return err.value


# -- happy paths -----------------------------------------------------------------------
async def test_upload_stores_content_addressed_bytes(images, stub):
    data = png(os.urandom(20_000))
    md = user()
    reply = await stub.Upload(stream(data, filename="페트병.png"), metadata=md)
    sha = hashlib.sha256(data).hexdigest()
    img = reply.image
    assert (img.key, img.sha256, img.size_bytes) == (f"sha256:{sha}", sha, len(data))
    assert (img.format, img.content_type, img.channel, img.filename) == (
        pb.IMAGE_FORMAT_PNG,
        "image/png",
        pb.IMAGE_CHANNEL_SCAN,
        "페트병.png",
    )
    assert not reply.deduplicated
    assert blob_path(images, sha).read_bytes() == data

    image, back, n = await read_all(stub, img.key, md)
    assert back == data and image.sha256 == sha and n == -(-len(data) // 4096)


@pytest.mark.parametrize(
    "data,content_type,fmt",
    [
        (jpeg(os.urandom(3000)), "image/jpeg", pb.IMAGE_FORMAT_JPEG),
        (GIF, "image/gif", pb.IMAGE_FORMAT_GIF),
        (webp(os.urandom(999)), "image/webp", pb.IMAGE_FORMAT_WEBP),
    ],
)
async def test_each_accepted_format(stub, data, content_type, fmt):
    reply = await stub.Upload(stream(data, content_type=content_type, filename="x"), metadata=user())
    assert reply.image.format == fmt and reply.image.content_type == content_type


async def test_identical_bytes_are_stored_once(images, stub):
    data = png(os.urandom(5000))
    a, b = user(), user()
    first = await stub.Upload(stream(data), metadata=a)
    again = await stub.Upload(stream(data, chunk=999), metadata=a)
    other = await stub.Upload(stream(data, channel=pb.IMAGE_CHANNEL_CHAT, filename="other.png"), metadata=b)
    assert not first.deduplicated and again.deduplicated and other.deduplicated
    assert first.image.key == again.image.key == other.image.key
    assert other.image.channel == pb.IMAGE_CHANNEL_CHAT and other.image.filename == "other.png"
    sha = first.image.sha256
    assert [p.name for p in blob_path(images, sha).parent.iterdir() if p.name.startswith(sha)] == [sha]


async def test_get_image_gives_an_expiring_signed_url(images, images_env, stub):
    md = user()
    up = await stub.Upload(stream(png(os.urandom(100))), metadata=md)
    before = time.time()
    reply = await stub.GetImage(pb.GetImageRequest(key=up.image.key), metadata=md)
    assert reply.image == up.image
    assert before + 890 <= reply.url_expires_at.seconds <= time.time() + 901
    secret = image_urls.resolve_secret("", images.settings.data_dir, embedded=True)  # the persisted one
    assert (images.settings.data_dir / image_urls.SECRET_FILE).stat().st_mode & 0o777 == 0o600
    url = reply.signed_url
    assert url.startswith(f"/images/{up.image.sha256}?exp=")
    assert image_urls.verify_path(secret, url) == up.image.sha256
    assert image_urls.verify_path(secret, url, now=reply.url_expires_at.seconds + 1) is None  # expired
    assert image_urls.verify_path(b"another secret!!", url) is None
    tampered = url.replace(up.image.sha256, "0" * 64)
    assert image_urls.verify_path(secret, tampered) is None
    later = url.replace(f"exp={reply.url_expires_at.seconds}", f"exp={reply.url_expires_at.seconds + 3600}")
    assert image_urls.verify_path(secret, later) is None


async def test_images_are_private_to_their_owners(stub):
    up = await stub.Upload(stream(png(os.urandom(100))), metadata=user())
    stranger = user()
    await expect(
        stub.GetImage(pb.GetImageRequest(key=up.image.key), metadata=stranger),
        grpc.StatusCode.NOT_FOUND,
        "IMAGE_NOT_FOUND",
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await read_all(stub, up.image.key, stranger)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_settings_default_limit_is_10_mb():
    from eco2.services.images.app import ImagesSettings

    assert ImagesSettings().images_max_bytes == 10 * 1024 * 1024


def test_secret_is_required_outside_embedded_mode(tmp_path):
    with pytest.raises(ValueError, match="required"):
        image_urls.resolve_secret("", tmp_path, embedded=False)
    with pytest.raises(ValueError, match="at least"):
        image_urls.resolve_secret("short", tmp_path, embedded=False)
    assert image_urls.resolve_secret("x" * 32, tmp_path, embedded=False) == b"x" * 32


# -- bad input -------------------------------------------------------------------------
async def test_bytes_that_do_not_match_the_declared_type(images, stub):
    data = jpeg(os.urandom(500))
    err = await expect(
        stub.Upload(stream(data, content_type="image/png"), metadata=user()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "CONTENT_TYPE_MISMATCH",
        "metadata.content_type",
    )
    assert "JPEG" in err.details()
    assert not blob_path(images, hashlib.sha256(data).hexdigest()).exists()


async def test_bytes_that_are_no_image_at_all(stub):
    await expect(
        stub.Upload(stream(b"MZ\x90\x00" + os.urandom(100), content_type="image/gif"), metadata=user()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "CONTENT_TYPE_MISMATCH",
    )
    await expect(
        stub.Upload(stream(b"GIF", content_type="image/gif"), metadata=user()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "CONTENT_TYPE_MISMATCH",
    )


async def test_exactly_the_limit_is_accepted_one_byte_over_is_not(images, stub):
    exact = jpeg(os.urandom(LIMIT - len(jpeg(b""))))
    assert len(exact) == LIMIT
    ok = await stub.Upload(stream(exact, content_type="image/jpeg"), metadata=user())
    assert ok.image.size_bytes == LIMIT
    over = jpeg(os.urandom(LIMIT + 1 - len(jpeg(b""))))
    err = await expect(
        stub.Upload(stream(over, content_type="image/jpeg"), metadata=user()),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "IMAGE_TOO_LARGE",
        "chunk",
    )
    assert unpack_details(status_details(err))["ErrorInfo"].metadata["limit_bytes"] == str(LIMIT)
    assert not blob_path(images, hashlib.sha256(over).hexdigest()).exists()


@pytest.mark.parametrize(
    "data,content_type",
    [
        (png(os.urandom(3000))[:-12], "image/png"),
        (jpeg(os.urandom(3000))[:-2], "image/jpeg"),
        (GIF[:-1], "image/gif"),
        (webp(os.urandom(3000))[:-10], "image/webp"),
    ],
)
async def test_a_truncated_image(images, stub, data, content_type):
    await expect(
        stub.Upload(stream(data, content_type=content_type, filename="t"), metadata=user()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "TRUNCATED_IMAGE",
    )
    assert not blob_path(images, hashlib.sha256(data).hexdigest()).exists()


async def test_a_stream_cut_by_the_client_stores_nothing(images, stub, dataplane):
    import asyncpg

    data = png(os.urandom(40_000))
    sent = asyncio.Event()

    async def gen():
        yield pb.UploadRequest(
            metadata=pb.UploadMetadata(channel=pb.IMAGE_CHANNEL_SCAN, content_type="image/png", filename="cut.png")
        )
        yield pb.UploadRequest(chunk=data[:20_000])
        sent.set()
        await asyncio.sleep(30)  # the client goes away before sending the rest
        yield pb.UploadRequest(chunk=data[20_000:])

    call = stub.Upload(gen(), metadata=user())
    await sent.wait()
    await asyncio.sleep(0.2)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.sleep(0.2)
    sha = hashlib.sha256(data).hexdigest()
    assert not blob_path(images, sha).exists()
    conn = await asyncpg.connect(dataplane.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM image_blob WHERE sha256 = $1", sha) == 0
    finally:
        await conn.close()
    ok = await stub.Upload(stream(data), metadata=user())  # the server is fine afterwards
    assert ok.image.sha256 == sha


async def test_zero_bytes(stub):
    await expect(stub.Upload(stream(b""), metadata=user()), grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_IMAGE", "chunk")


async def test_an_empty_stream(stub):
    await expect(
        stub.Upload(stream(b"", meta=False), metadata=user()), grpc.StatusCode.INVALID_ARGUMENT, "METADATA_FIRST"
    )


async def test_chunks_before_metadata(stub):
    await expect(
        stub.Upload(stream(GIF, meta=False), metadata=user()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "METADATA_FIRST",
        "metadata",
    )


async def test_metadata_twice(stub):
    async def gen():
        m = pb.UploadMetadata(channel=pb.IMAGE_CHANNEL_SCAN, content_type="image/gif")
        yield pb.UploadRequest(metadata=m)
        yield pb.UploadRequest(metadata=m)

    await expect(stub.Upload(gen(), metadata=user()), grpc.StatusCode.INVALID_ARGUMENT, "UNEXPECTED_MESSAGE")


@pytest.mark.parametrize("filename", ["../etc/passwd", "..", "a/b.png", "..\\x.png", "x\x00.png", "n" * 256])
async def test_a_filename_with_a_path(stub, filename):
    await expect(
        stub.Upload(stream(GIF, content_type="image/gif", filename=filename), metadata=user()),
        grpc.StatusCode.INVALID_ARGUMENT,
        field="metadata.filename",
    )


@pytest.mark.parametrize(
    "content_type,channel,field",
    [
        ("image/bmp", pb.IMAGE_CHANNEL_SCAN, "metadata.content_type"),
        ("image/gif", 0, "metadata.channel"),
        ("image/gif", 99, "metadata.channel"),
    ],
)
async def test_bad_metadata(stub, content_type, channel, field):
    await expect(
        stub.Upload(stream(GIF, content_type=content_type, channel=channel), metadata=user()),
        grpc.StatusCode.INVALID_ARGUMENT,
        field=field,
    )


async def test_identity_is_required(stub):
    await expect(stub.Upload(stream(GIF, content_type="image/gif")), grpc.StatusCode.UNAUTHENTICATED)
    await expect(stub.GetImage(pb.GetImageRequest(key="sha256:" + "0" * 64)), grpc.StatusCode.UNAUTHENTICATED)


@pytest.mark.parametrize("key", ["", "0" * 64, "sha256:" + "0" * 63, "sha256:../../etc/passwd", "sha256:" + "A" * 64])
async def test_bad_keys(stub, key):
    await expect(
        stub.GetImage(pb.GetImageRequest(key=key), metadata=user()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_KEY",
        "key",
    )


# -- S3-compatible storage -------------------------------------------------------------
@pytest.fixture(scope="module")
def moto_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


async def test_s3_storage_against_a_local_s3_server(service_env, session_dir, moto_server):
    from aiobotocore.session import get_session

    from eco2.services.images.app import create

    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    bucket = f"eco2-{uuid.uuid4().hex[:8]}"
    with env(creds):
        async with get_session().create_client("s3", endpoint_url=moto_server, region_name="us-east-1") as s3:
            await s3.create_bucket(Bucket=bucket)
            settings = {
                **service_env,
                **creds,
                "ECO2_DATA_DIR": str(session_dir),
                "ECO2_IMAGES_STORAGE": "s3",
                "ECO2_IMAGES_S3_BUCKET": bucket,
                "ECO2_IMAGES_S3_ENDPOINT_URL": moto_server,
                "ECO2_IMAGES_URL_SECRET": "s" * 32,
            }
            with env(settings):
                app = create()
            async with (
                running(app, metrics=False) as server,
                grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch,
            ):
                stub = images_pb2_grpc.ImageServiceStub(ch)
                data, md = png(os.urandom(300_000)), user()
                up = await stub.Upload(stream(data, chunk=64 * 1024), metadata=md)
                obj = await s3.get_object(Bucket=bucket, Key=f"images/{up.image.sha256}")
                async with obj["Body"] as body:
                    assert await body.read() == data
                assert obj["ContentType"] == "image/png"
                again = await stub.Upload(stream(data), metadata=user())
                assert again.deduplicated
                image, back, _ = await read_all(stub, up.image.key, md)
                assert back == data and image.size_bytes == len(data)
                listed = await s3.list_objects_v2(Bucket=bucket)
                assert [o["Key"] for o in listed["Contents"]] == [f"images/{up.image.sha256}"]
