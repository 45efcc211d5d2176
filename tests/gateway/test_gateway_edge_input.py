"""The HTTP edge under bad input, byte by byte on a raw socket (no HTTP client would send
these): malformed chunked bodies, bodies cut short, huge and slow headers, connections that send
nothing. Never a 500, the edge keeps serving, and a client that sends nothing useful is cut off
in bounded time. Two edges: the gateway on its own, and the ingress Envoy of `eco2 up` in front
of it."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request

import pytest

from support.gateway import gateway, upstreams
from support.ingress import running_envoy

#: the ingress's limits in these tests (mesh/envoy.py IngressSettings)
INGRESS = {
    "ingress_request_headers_timeout_s": 1.0,
    "ingress_max_request_headers_kb": 16,
    "ingress_max_connections": 40,
}

HEADER_TIMEOUT_S = 1.0
#: the running ingress's admin address (host:port), set by the `edge` fixture
ADMIN: dict[str, str] = {}
MAX_HEADER_BYTES = 16 * 1024


@pytest.fixture(scope="module")
async def addrs(service_env):
    async with upstreams(service_env) as addrs:
        yield addrs


@pytest.fixture(scope="module", params=["gateway", "ingress"])
async def edge(addrs, request, session_dir):
    extra = {"ECO2_GATEWAY_AUTH_MODE": "mesh"} if request.param == "ingress" else {}
    async with gateway(
        addrs,
        ECO2_GATEWAY_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        ECO2_GATEWAY_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
        **extra,
    ) as (app, port):
        if request.param != "ingress":
            yield request.param, port
            return
        routed = {
            "auth": addrs["auth"],
            "character": addrs["character"],
            "events": addrs["events"],
            "gateway": f"127.0.0.1:{port}",
        }
        async with running_envoy(session_dir / "edge-input-envoy", routed, **INGRESS) as envoy:
            ADMIN["ingress"] = envoy.admin
            yield "ingress", envoy.port


@pytest.fixture(scope="module")
async def token(edge) -> str:
    reply = await exchange(edge[1], json_post("/v1/auth/dev-sign-in", b'{"displayName": "edge-input"}'))
    assert reply.startswith(b"HTTP/1.1 200"), reply
    return reply.split(b'"accessToken":"')[1].split(b'"')[0].decode()


def json_post(path: str, body: bytes) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
        % (path.encode(), len(body), body)
    )


async def exchange(port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send `data` on a new connection and read until the server closes it or pauses."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = b""
    try:
        writer.write(data)
        await writer.drain()
        while chunk := await asyncio.wait_for(reader.read(65536), timeout if not out else 0.5):
            out += chunk
    except (TimeoutError, ConnectionResetError):  # a pause, or the server reset the connection
        pass
    finally:
        writer.close()
    return out


async def still_serves(port: int) -> None:
    assert (await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).startswith(
        b"HTTP/1.1 200"
    )


def assert_answered(reply: bytes, edge: str) -> None:
    """An HTTP answer that is no server error: a 4xx, or a gRPC-Web status other than INTERNAL/UNKNOWN.

    Envoy refuses an HTTP message its codec cannot parse with 400 and closes the connection;
    for a gRPC-Web content type its grpc_web filter adds the grpc-status HTTP 400 stands for
    in gRPC's mapping (13, INTERNAL), which no local-reply mapper rewrites. No gRPC-Web client
    sends such a body (browsers' fetch cannot), so at the ingress the HTTP 400 is the answer."""
    status = reply.split(b"\r\n", 1)[0]
    assert status.startswith((b"HTTP/1.1 2", b"HTTP/1.1 4")), reply[:300]
    if edge == "ingress" and status.startswith(b"HTTP/1.1 400") and b"connection: close" in reply.lower():
        return
    grpc_status = [line for line in reply.lower().split(b"\r\n") if line.startswith(b"grpc-status:")]
    assert not grpc_status or grpc_status[0].split(b":")[1].strip() not in (b"2", b"13"), reply[:300]
    assert status.startswith(b"HTTP/1.1 4") or grpc_status, reply[:300]


def chunked(path: str, content_type: str, body: bytes, headers: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n{headers}\r\n"
    ).encode() + body


BAD_CHUNKS = {
    "size not hex": b"zz\r\nabc\r\n0\r\n\r\n",
    "size larger than the data": b"5\r\nabc\r\n0\r\n\r\n",
    "size overflows": b"ffffffffffffffffffff\r\nabc\r\n",
    "no CRLF after the data": b"3\r\nabcXY0\r\n\r\n",
}
ROUTES = {
    "json": ("/v1/auth/dev-sign-in", "application/json"),
    "grpc-web": ("/eco2.character.v1.CharacterService/ListCharacters", "application/grpc-web+proto"),
    "upload": ("/v1/images", "multipart/form-data; boundary=b"),
}


@pytest.mark.parametrize("signed_in", [True, False], ids=["signed-in", "anonymous"])
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("chunks", BAD_CHUNKS)
async def test_a_malformed_chunked_body_is_a_400_never_a_500(edge, token, route, chunks, signed_in):
    """Granian reports a body that does not parse as the client's disconnect: the gateway still
    answers (a 400, http.BodyIncomplete), so Granian never sends its bare 500."""
    server, port = edge
    path, content_type = ROUTES[route]
    headers = f"Authorization: Bearer {token}\r\n" if signed_in else ""
    reply = await exchange(port, chunked(path, content_type, BAD_CHUNKS[chunks], headers))
    assert_answered(reply, server)
    await still_serves(port)


@pytest.mark.parametrize("route", ROUTES)
async def test_a_client_that_leaves_mid_body_leaves_no_error_behind(edge, token, route, caplog):
    _server, port = edge
    path, content_type = ROUTES[route]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nAuthorization: Bearer {token}\r\nContent-Length: 1000\r\n\r\n"
        "0123456789".encode()
    )
    await writer.drain()
    writer.close()
    with caplog.at_level(logging.WARNING):
        await still_serves(port)
        await asyncio.sleep(0.2)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


async def test_headers_larger_than_the_limit_are_refused(edge):
    _server, port = edge
    reply = await exchange(
        port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 128 * 1024) + b"\r\n\r\n"
    )
    assert reply.split(b"\r\n", 1)[0] in (
        b"HTTP/1.1 431 Request Header Fields Too Large",
        b"HTTP/1.1 431 ",
        b"HTTP/1.1 400 Bad Request",
        b"HTTP/1.1 400 ",
    ), reply[:200]
    reply = await exchange(
        port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(15000)) + b"\r\n"
    )
    assert reply.split(b" ", 2)[1] in (b"431", b"400"), reply[:200]
    await still_serves(port)


async def test_headers_sent_slowly_are_cut_off_after_the_header_timeout(edge):
    """A slowloris client dribbling a header line every 0.2 s holds the connection no longer
    than ECO2_GATEWAY_HEADER_TIMEOUT_S (not the keep-alive's 75 s), or at the ingress
    ECO2_INGRESS_REQUEST_HEADERS_TIMEOUT_S."""
    _edge, port = edge
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    try:
        async with asyncio.timeout(HEADER_TIMEOUT_S + 10):
            while True:
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
                try:
                    await asyncio.wait_for(reader.read(100), 0.2)
                    break  # the server answered (408) or closed the connection
                except TimeoutError:
                    continue
    except (ConnectionError, BrokenPipeError):
        pass
    finally:
        writer.close()
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 5
    await still_serves(port)


def _active_downstream(admin: str) -> int:
    """Downstream connections the ingress listener holds now (Envoy's own gauge)."""
    with urllib.request.urlopen(
        f"http://{admin}/stats?format=json&filter=^listener\\..*downstream_cx_active$", timeout=2
    ) as reply:
        stats = json.loads(reply.read())["stats"]
    # one gauge per listener and one per worker: the listener's own, not the admin's
    return sum(
        s["value"]
        for s in stats
        if not s["name"].startswith("listener.admin.")
        and ".worker_" not in s["name"]
        and ".main_thread." not in s["name"]
    )


async def test_connections_that_send_nothing_are_bounded_in_number_at_the_ingress(edge):
    """Granian holds a connection that sends no byte at all (its HTTP version sniffing has no
    timeout), so in front of it the ingress bounds them: past ECO2_INGRESS_MAX_CONNECTIONS a new
    connection is refused, and once they are gone the edge serves again."""
    server, port = edge
    if server != "ingress":
        pytest.skip("the gateway does not bound silent connections: the ingress does")
    silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(INGRESS["ingress_max_connections"])]
    try:
        # the kernel completes a handshake before Envoy's worker accepts it: wait until Envoy
        # counts all of them, else the probe can be accepted while some still wait in a backlog
        async with asyncio.timeout(10):
            while await asyncio.to_thread(_active_downstream, ADMIN["ingress"]) < len(silent):
                await asyncio.sleep(0.05)
        reply = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=5)
        assert reply == b"", reply[:200]  # refused: closed without an answer
    finally:
        for _reader, writer in silent:
            writer.close()
    async with asyncio.timeout(10):
        while True:  # Envoy counts a connection gone once it saw it close
            try:
                await still_serves(port)
                return
            except AssertionError:
                await asyncio.sleep(0.1)
