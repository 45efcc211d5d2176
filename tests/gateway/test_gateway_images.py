"""Images through the gateway: multipart upload → `ImageService.Upload`, the meta route, and the
signed links of `GetImage` read back through the edge (`ImageService.ReadImage`), against the
real images service (real Postgres, real disk) and real auth (ext-authz)."""

from __future__ import annotations

import os
import time
import uuid
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from eco2.services.runtime import image_urls
from support.gateway import gateway, upstreams
from support.images import png
from support.servers import env, running

SECRET = "gateway-test-url-secret-0123456789"
IMAGE_LIMIT = 64 * 1024  # the images service's ECO2_IMAGES_MAX_BYTES
BODY_LIMIT = 160 * 1024  # the gateway's ECO2_GATEWAY_MAX_BODY_BYTES


@pytest.fixture(scope="module")
async def stack(service_env, session_dir):
    from eco2.services.images.app import create as create_images

    data_dir = session_dir / f"gw-images-{uuid.uuid4().hex[:6]}"
    data_dir.mkdir()
    images_env = {
        **service_env,
        "ECO2_DATA_DIR": str(data_dir),
        "ECO2_IMAGES_URL_SECRET": SECRET,
        "ECO2_IMAGES_MAX_BYTES": str(IMAGE_LIMIT),
        "ECO2_IMAGES_READ_CHUNK_BYTES": "4096",
        "ECO2_IMAGES_URL_TTL_S": "600",
    }
    with env(images_env):
        images_app = create_images()
    async with upstreams(service_env) as addrs, running(images_app, metrics=False) as images:
        async with gateway(
            addrs,
            ECO2_IMAGES_ADDR=f"127.0.0.1:{images.port}",
            ECO2_IMAGES_URL_SECRET=SECRET,
            ECO2_GATEWAY_MAX_BODY_BYTES=str(BODY_LIMIT),
            ECO2_GATEWAY_UPLOAD_CHUNK_BYTES="8192",
        ) as (app, port):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                yield client


async def sign_in(client, name: str) -> dict:
    r = await client.post("/v1/auth/dev-sign-in", json={"displayName": name})
    assert r.status_code == 200, r.text
    return {"authorization": f"Bearer {r.json()['tokens']['accessToken']}"}


@pytest.fixture(scope="module")
async def who(stack):
    return await sign_in(stack, f"gw-images-{uuid.uuid4().hex[:6]}")


async def upload(
    client, who, data: bytes, ctype: str = "image/png", name: str = "페트병.png", query: str = ""
) -> httpx.Response:
    return await client.post(f"/v1/images{query}", headers=who, files={"file": (name, data, ctype)})


@pytest.fixture(scope="module")
async def stored(stack, who):
    data = png(os.urandom(20_000))  # several ReadImage chunks (4 KiB) and upload chunks (8 KiB)
    r = await upload(stack, who, data)
    assert r.status_code == 200, r.text
    image = r.json()["image"]
    meta = await stack.get(f"/v1/images/meta/{image['key']}", headers=who)
    assert meta.status_code == 200, meta.text
    return {"data": data, "image": image, "url": meta.json()["signedUrl"], "meta": meta.json()}


async def test_upload_is_streamed_to_the_images_service(stored):
    image, data = stored["image"], stored["data"]
    assert image["contentType"] == "image/png" and int(image["sizeBytes"]) == len(data)
    assert image["channel"] == "IMAGE_CHANNEL_CHAT" and image["filename"] == "페트병.png"
    assert image["key"].startswith("sha256:")


async def test_upload_channel_from_the_query(stack, who):
    r = await upload(stack, who, png(os.urandom(300)), query="?channel=scan")
    assert r.status_code == 200, r.text
    assert r.json()["image"]["channel"] == "IMAGE_CHANNEL_SCAN"
    bad = await upload(stack, who, png(b"x"), query="?channel=generated")
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "channel"


async def test_meta_route_gives_a_signed_link_under_the_prefix(stored):
    url = urlsplit(stored["url"])
    sha = stored["image"]["key"].removeprefix("sha256:")
    assert url.path == f"/images/{sha}"
    assert int(parse_qs(url.query)["exp"][0]) > time.time()
    assert stored["meta"]["image"]["key"] == stored["image"]["key"]


async def test_signed_read_streams_the_bytes_with_safe_headers(stack, stored, who):
    r = await stack.get(stored["url"], headers=who)
    assert r.status_code == 200, r.text
    assert r.content == stored["data"]
    assert r.headers["content-type"] == "image/png"
    assert r.headers["content-length"] == str(len(stored["data"]))
    assert r.headers["x-content-type-options"] == "nosniff"
    cache = r.headers["cache-control"]
    assert cache.startswith("private, max-age=") and 0 < int(cache.split("max-age=")[1].split(",")[0]) <= 600
    assert r.headers["etag"] == f'"{stored["image"]["key"]}"'
    # content-addressed: a revalidation is a 304, a HEAD has the headers and no body
    again = await stack.get(stored["url"], headers={**who, "if-none-match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    head = await stack.head(stored["url"], headers=who)
    assert (
        head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(len(stored["data"]))
    )


async def test_the_session_cookie_is_enough_for_an_img_tag(stack, stored, who):
    token = who["authorization"].removeprefix("Bearer ")
    r = await stack.get(stored["url"], headers={"cookie": f"eco2_access={token}"})
    assert r.status_code == 200 and r.content == stored["data"]


@pytest.mark.parametrize(
    "mangle", ["sig", "sha", "exp", "nosig", "wrong-secret", "exp-arabic-indic", "exp-superscript"]
)
async def test_a_bad_signature_is_403_without_reading(stack, stored, who, mangle):
    url = urlsplit(stored["url"])
    sha = url.path.rsplit("/", 1)[1]
    q = {k: v[0] for k, v in parse_qs(url.query).items()}
    if mangle == "sig":
        q["sig"] = ("A" if q["sig"][0] != "A" else "B") + q["sig"][1:]
    elif mangle == "sha":
        sha = ("0" if sha[0] != "0" else "1") + sha[1:]
    elif mangle == "exp":
        q["exp"] = str(int(q["exp"]) + 3600)  # a longer life than was signed
    elif mangle == "exp-arabic-indic":  # the same number in other digits is not what was signed
        q["exp"] = quote(q["exp"].translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")))
    elif mangle == "exp-superscript":
        q["exp"] = quote("²" * 10)
    elif mangle == "nosig":
        q.pop("sig")
    else:
        q["sig"] = image_urls.sign(b"another-secret-of-enough-bytes", sha, int(q["exp"]))
    target = f"/images/{sha}?" + "&".join(f"{k}={v}" for k, v in q.items())
    r = await stack.get(target, headers=who)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["reason"] == "BAD_SIGNATURE"
    assert "x-content-type-options" not in r.headers or r.headers["content-type"] == "application/json"


async def test_an_expired_link_is_403(stack, stored, who):
    sha = stored["image"]["key"].removeprefix("sha256:")
    exp = int(time.time()) - 5
    r = await stack.get(image_urls.signed_path(SECRET.encode(), sha, exp), headers=who)
    assert r.status_code == 403 and r.json()["error"]["reason"] == "LINK_EXPIRED"


async def test_unknown_or_someone_elses_image_is_404(stack, stored):
    other = await sign_in(stack, f"gw-images-other-{uuid.uuid4().hex[:6]}")
    r = await stack.get(stored["url"], headers=other)  # a valid link, but not theirs: the same answer as unknown
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    unknown = image_urls.signed_path(SECRET.encode(), os.urandom(32).hex(), int(time.time()) + 60)
    r = await stack.get(unknown, headers=other)
    assert r.status_code == 404


async def test_a_signed_link_still_needs_a_signed_in_caller(stack, stored):
    r = await stack.get(stored["url"])
    assert r.status_code == 401


async def test_upload_bad_input(stack, who):
    # not multipart
    r = await stack.post("/v1/images", headers={**who, "content-type": "application/json"}, content=b"{}")
    assert r.status_code == 415
    # declared PNG, but the bytes are text: sniffed by the images service
    r = await upload(stack, who, b"hello, this is not an image at all" * 10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_argument", r.text
    # declared a type the service does not take
    r = await upload(stack, who, b"%PDF-1.4 ...", ctype="application/pdf", name="a.pdf")
    assert r.status_code == 400, r.text
    # no `file` part
    r = await stack.post("/v1/images", headers=who, files={"other": ("x.png", png(b"x"), "image/png")})
    assert r.status_code == 400 and r.json()["error"]["reason"] == "NO_FILE"


async def test_upload_too_big(stack, who):
    # over the images service's limit: refused by it mid-stream
    r = await upload(stack, who, png(os.urandom(IMAGE_LIMIT + 1000)))
    assert r.status_code == 429 and r.json()["error"]["code"] == "resource_exhausted", r.text
    # over the gateway's body limit: refused at the edge (by Content-Length)
    r = await upload(stack, who, png(os.urandom(BODY_LIMIT + 1000)))
    assert r.status_code == 413 and r.json()["error"]["reason"] == "BODY_TOO_LARGE"

    # and without a Content-Length (chunked), once the bytes pass the limit
    async def chunks():
        boundary = b"b0undary"
        yield (
            b"--"
            + boundary
            + b'\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\nContent-Type: image/png\r\n\r\n'
        )
        data = png(os.urandom(BODY_LIMIT + 30_000))
        for i in range(0, len(data), 8192):
            yield data[i : i + 8192]
        yield b"\r\n--" + boundary + b"--\r\n"

    r = await stack.post(
        "/v1/images", headers={**who, "content-type": "multipart/form-data; boundary=b0undary"}, content=chunks()
    )
    assert r.status_code in (413, 429), r.text
