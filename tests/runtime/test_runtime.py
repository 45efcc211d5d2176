"""The shared runtime on real servers and real ports: status codes, details, deadlines,
propagation, metrics, JSON logs with trace ids, and SIGTERM during a stream."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.protobuf import wrappers_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eco2.services.runtime.errors import status_details, unpack_details
from eco2.services.runtime.settings import RuntimeSettings
from support.identity import TEST_JWKS, as_user
from support.probe import ProbeApp
from support.servers import running

HERE = Path(__file__).resolve().parents[1]  # tests/, where support/ lives


def _settings(**kw) -> RuntimeSettings:
    return RuntimeSettings(grpc_port=0, metrics_port=0, identity_jwks=TEST_JWKS, **kw)


@pytest.fixture(scope="module")
async def probe():
    async with running(ProbeApp(_settings())) as server:
        yield server


@pytest.fixture(scope="module")
async def probe_ch(probe):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{probe.port}") as ch:
        yield ch


async def test_health_and_reflection_are_served(probe_ch):
    reply = await health_pb2_grpc.HealthStub(probe_ch).Check(health_pb2.HealthCheckRequest(service="eco2test.Probe"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_unknown_method_is_unimplemented(probe_ch):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await probe_ch.unary_unary("/eco2test.Probe/NoSuchMethod")(b"")
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_domain_error_has_google_rpc_details(probe_ch):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await probe_ch.unary_unary("/eco2test.Probe/Missing")(b"")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    details = unpack_details(status_details(err.value))
    assert details["ErrorInfo"].reason == "THING_NOT_FOUND"
    assert dict(details["ErrorInfo"].metadata) == {"id": "42"}


async def test_unexpected_error_is_internal_without_leaking(probe_ch):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await probe_ch.unary_unary("/eco2test.Probe/Boom")(b"")
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in err.value.details() and "Traceback" not in err.value.details()
    assert "/etc/passwd" not in err.value.details()


async def test_deadline_is_honoured(probe_ch):
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await probe_ch.unary_unary("/eco2test.Probe/Sleep")(b"5", timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2


async def test_missing_deadline_means_no_deadline(probe_ch):
    reply = json.loads(await probe_ch.unary_unary("/eco2test.Probe/Echo")(b""))
    assert reply["remaining"] is None


async def test_deadline_and_identity_propagate_downstream(probe):
    async with running(ProbeApp(_settings(), downstream=f"127.0.0.1:{probe.port}"), metrics=False) as front:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{front.port}") as ch:
            trace_id = "0af7651916cd43dd8448eb211c80319c"
            reply = json.loads(
                await ch.unary_unary("/eco2test.Probe/Forward")(
                    b"", timeout=1.5, metadata=(*as_user("u-1"), ("traceparent", f"00-{trace_id}-b7ad6b7169203331-01"))
                )
            )
            assert reply["user"] == "u-1"
            # W3C trace context crossed two hops: same trace, new parent span
            assert reply["traceparent"].split("-")[1] == trace_id
            assert reply["traceparent"].split("-")[2] != "b7ad6b7169203331"
            assert reply["current_trace"].split("-")[1] == trace_id
            assert reply["remaining"] is not None and 0 < reply["remaining"] <= 1.55
            # without a caller deadline the downstream call gets the default (5 s), never none
            reply = json.loads(await ch.unary_unary("/eco2test.Probe/Forward")(b""))
            assert reply["remaining"] is not None and 4 < reply["remaining"] <= 5.1  # grpc-timeout rounds up


async def test_metrics_endpoint_counts_rpcs(probe, probe_ch):
    await probe_ch.unary_unary("/eco2test.Probe/Echo")(b"")
    body = urllib.request.urlopen(f"http://127.0.0.1:{probe.metrics_port}/metrics", timeout=5).read().decode()
    assert 'eco2_grpc_server_handled_total{grpc_code="OK",grpc_method="/eco2test.Probe/Echo"}' in body
    assert "eco2_grpc_server_handling_seconds_bucket" in body


async def test_client_cancelling_a_stream_is_cancelled_not_an_error(probe, probe_ch, caplog):
    call = probe_ch.unary_stream("/eco2test.Probe/Ticks")(b"")
    got = 0
    async for _ in call:
        got += 1
        if got == 3:
            call.cancel()
            break
    await asyncio.sleep(0.3)
    body = urllib.request.urlopen(f"http://127.0.0.1:{probe.metrics_port}/metrics", timeout=5).read().decode()
    assert 'eco2_grpc_server_handled_total{grpc_code="CANCELLED",grpc_method="/eco2test.Probe/Ticks"}' in body
    assert not [r for r in caplog.records if r.name == "eco2.rpc" and r.levelname == "ERROR"]


async def test_a_writer_stream_maps_errors_and_counts_cancels(probe, probe_ch, caplog):
    """A handler that writes with context.write() runs behind a coroutine wrapper (no async
    generator per stream, docs/adr/0003) with the same error mapping and metrics."""
    got, err = await _read_all(probe_ch.unary_stream("/eco2test.Probe/Writes")(b"3"))
    assert got == [b"1", b"2", b"3"] and err.code() == grpc.StatusCode.NOT_FOUND
    assert unpack_details(status_details(err))["ErrorInfo"].reason == "NO_MORE_TICKS"
    call = probe_ch.unary_stream("/eco2test.Probe/Writes")(b"")
    got = 0
    async for _ in call:
        got += 1
        if got == 3:
            call.cancel()
            break
    await asyncio.sleep(0.3)
    body = urllib.request.urlopen(f"http://127.0.0.1:{probe.metrics_port}/metrics", timeout=5).read().decode()
    for code in ("NOT_FOUND", "CANCELLED"):
        assert f'eco2_grpc_server_handled_total{{grpc_code="{code}",grpc_method="/eco2test.Probe/Writes"}} 1.0' in body
    assert 'eco2_grpc_server_streams_active{grpc_method="/eco2test.Probe/Writes"} 0.0' in body
    assert not [r for r in caplog.records if r.name == "eco2.rpc" and r.levelname == "ERROR"]


async def _read_all(call) -> tuple[list[bytes], grpc.aio.AioRpcError | None]:
    """The messages of a server stream and the error that ended it (None: ended OK)."""
    got = []
    try:
        while (m := await call.read()) is not grpc.aio.EOF:
            got.append(m)
    except grpc.aio.AioRpcError as err:
        return got, err
    return got, None


async def test_a_client_stream_refused_mid_write_gets_the_refusal(probe_ch):
    """grpc core can turn an early refusal into INTERNAL while the client still writes;
    the runtime drains the stream briefly so the client always sees the real status."""
    seen = {}
    for _ in range(25):
        queue: asyncio.Queue = asyncio.Queue(maxsize=4)

        async def requests():
            while (item := await queue.get()) is not None:  # noqa: B023 - consumed within this iteration
                yield item

        outcome = asyncio.ensure_future(probe_ch.stream_unary("/eco2test.Probe/Collect")(requests()))
        for _ in range(100):
            put = asyncio.ensure_future(queue.put(b"x" * 8192))
            await asyncio.wait([put, outcome], return_when=asyncio.FIRST_COMPLETED)
            if outcome.done():
                put.cancel()
                break
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await outcome
        seen[err.value.code()] = seen.get(err.value.code(), 0) + 1
        while not queue.empty():  # end the request generator, so grpc's writer task ends too
            queue.get_nowait()
        queue.put_nowait(None)
    assert seen == {grpc.StatusCode.RESOURCE_EXHAUSTED: 25}


async def test_a_client_stream_refused_before_a_malformed_message_still_gets_the_refusal(probe_ch):
    """The drain before a refusal reads past a message that is not valid protobuf: stopping at
    it refused the stream while the client was still writing, which grpc core turned into
    INTERNAL ("Internal error from Core") on the client (found by tests/system/test_fuzz_rpc.py)."""
    big = wrappers_pb2.BytesValue(value=b"x" * (2 * 1024 * 1024)).SerializeToString()
    seen = {}
    for _ in range(20):

        async def requests():
            yield b"\xff\xff not protobuf"
            for _ in range(3):
                yield big

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await probe_ch.stream_unary("/eco2test.Probe/Refuse")(requests(), timeout=30)
        seen[err.value.code()] = seen.get(err.value.code(), 0) + 1
    assert seen == {grpc.StatusCode.PERMISSION_DENIED: 20}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_probe(port: int, **extra_env: str) -> subprocess.Popen:
    env = dict(
        os.environ,
        ECO2_GRPC_PORT=str(port),
        ECO2_METRICS_PORT="0",
        ECO2_LOG_FORMAT="json",
        ECO2_SHUTDOWN_GRACE_S="4",
        **extra_env,
    )
    env["PYTHONPATH"] = str(HERE) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, str(HERE / "support" / "probe.py")],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


async def _wait_serving(target: str, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if (
                    await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                ).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)
    raise AssertionError("probe did not serve")


async def test_sigterm_ends_streams_with_a_status_and_logs_are_json_with_trace_ids():
    port = _free_port()
    proc = _spawn_probe(port)
    try:
        await _wait_serving(f"127.0.0.1:{port}", proc)
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            await ch.unary_unary("/eco2test.Probe/Echo")(
                b"", metadata=(("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),)
            )
            stream = ch.unary_stream("/eco2test.Probe/Ticks")(b"")
            writer = ch.unary_stream("/eco2test.Probe/Writes")(b"")  # context.write() handler
            await writer.read()
            # a generator stream whose reader stopped reading: the server is blocked in the
            # write when the shutdown cancel comes, and still ends it with the status
            flood = ch.unary_stream("/eco2test.Probe/FloodWrites")(b"")
            await flood.read()
            got = 0
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stream:
                    got += 1
                    if got == 5:
                        proc.send_signal(signal.SIGTERM)
            # the stream ended with a status, not a reset
            assert got > 5
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            details = unpack_details(status_details(err.value))
            assert details["ErrorInfo"].reason == "SERVER_SHUTTING_DOWN"
            assert "RetryInfo" in details
            got, werr = await _read_all(writer)
            assert got and werr.code() == grpc.StatusCode.UNAVAILABLE  # it kept writing until the shutdown
            assert unpack_details(status_details(werr))["ErrorInfo"].reason == "SERVER_SHUTTING_DOWN"
            got, ferr = await _read_all(flood)
            assert got and ferr.code() == grpc.StatusCode.UNAVAILABLE, ferr
            assert unpack_details(status_details(ferr))["ErrorInfo"].reason == "SERVER_SHUTTING_DOWN"
        assert proc.wait(timeout=15) == 0
        lines = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
        handled = [entry for entry in lines if entry["msg"] == "probe handled"]
        assert handled and handled[0]["trace_id"] == trace_id, lines
        assert any(entry["msg"] == "serving" for entry in lines)
        assert any(entry["msg"] == "stopped" for entry in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_with_an_exporter_spans_are_recorded_in_the_callers_trace():
    port = _free_port()
    proc = _spawn_probe(port, ECO2_OTEL_TRACES_EXPORTER="console")
    try:
        await _wait_serving(f"127.0.0.1:{port}", proc)
        trace_id = "5bf92f3577b34da6a3ce929d0e0e4737"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            await ch.unary_unary("/eco2test.Probe/Echo")(
                b"", metadata=(("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),)
            )
            # OpenTelemetry's interceptor iterates stream handlers with `async for`: a writer
            # stream behind it stays a generator and still works, errors mapped
            got, err = await _read_all(ch.unary_stream("/eco2test.Probe/Writes")(b"2"))
            assert got == [b"1", b"2"] and err.code() == grpc.StatusCode.NOT_FOUND
            # a writer stream blocked on a reader that stopped reading: SIGTERM's cancel lands in
            # the runtime's wrapper even behind OpenTelemetry's, so the status comes with the
            # shutdown details (the product's stream handlers all write this way)
            flood = ch.unary_stream("/eco2test.Probe/FloodWrites")(b"")
            await flood.read()
            await asyncio.sleep(0.3)  # the server fills the flow-control window and blocks
            proc.send_signal(signal.SIGTERM)
            got, ferr = await _read_all(flood)
            assert got and ferr.code() == grpc.StatusCode.UNAVAILABLE, ferr
            assert unpack_details(status_details(ferr))["ErrorInfo"].reason == "SERVER_SHUTTING_DOWN"
            assert "RetryInfo" in unpack_details(status_details(ferr))
        out, _ = proc.communicate(timeout=20)
        assert f'"trace_id": "0x{trace_id}"' in out, out[-2000:]
        assert "/eco2test.Probe/Echo" in out
        assert "/eco2test.Probe/Writes" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
