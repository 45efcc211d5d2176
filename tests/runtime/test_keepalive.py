"""HTTP/2 keepalive pings on a real server: a client that pings at the rate the server allows
keeps an idle stream open for as long as it likes; a client that pings faster is sent GOAWAY.

The client is a raw HTTP/2 connection (h2) so the test decides exactly when each PING goes
out and sees exactly what the server answers; the idle stream is `grpc.health.v1.Health/Watch`,
which sends the current status once and then stays silent. The server's minimum interval is
shortened (ECO2_GRPC_MIN_PING_INTERVAL_S) so many pings fit in a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

import h2.config
import h2.connection
import h2.errors
import h2.events
from grpc_health.v1 import health_pb2

from eco2.services.runtime.server import server_options
from eco2.services.runtime.settings import RuntimeSettings
from support.probe import ProbeApp
from support.servers import running

#: The keepalive interval of every channel the mesh opens (services/runtime/clients.py).
CLIENT_KEEPALIVE_MS = 30_000


class RawH2Client:
    """One HTTP/2 connection with one open Watch stream; pings sent and answers read by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.stream_ended = False
        self.messages = 0
        self.acks = 0
        self.buffer = b""

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, port: int):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        try:
            client.conn.initiate_connection()
            await client.flush()
            yield client
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())
        await self.writer.drain()

    async def watch_health(self) -> None:
        """Open Health/Watch and read until its first message (the current status) arrived."""
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/grpc.health.v1.Health/Watch"),
                (":authority", "127.0.0.1"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        body = health_pb2.HealthCheckRequest(service="").SerializeToString()
        self.conn.send_data(stream_id, struct.pack(">BI", 0, len(body)) + body, end_stream=True)
        await self.flush()
        await self.read_until(lambda: self.messages >= 1)

    async def ping(self) -> None:
        """Send one PING and wait for its ACK (or for the connection to end)."""
        acks = self.acks
        self.conn.ping(b"eco2ping")
        await self.flush()
        await self.read_until(lambda: self.acks > acks)

    async def read_until(self, done, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not done() and self.goaway is None:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("the server closed the connection")
                self.buffer += data
                self.receive_frames()
                if self.goaway is None:
                    await self.flush()

    def receive_frames(self) -> None:
        """Feed h2 one whole frame at a time and stop at GOAWAY: what the server sends after it
        (the streams' trailers) is no input h2 takes on a terminated connection."""
        while self.goaway is None and len(self.buffer) >= 9:
            size = 9 + int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < size:
                return
            frame, self.buffer = self.buffer[:size], self.buffer[size:]
            for event in self.conn.receive_data(frame):
                if isinstance(event, h2.events.DataReceived):
                    self.messages += 1
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.PingAckReceived):
                    self.acks += 1
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.goaway = event
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    self.stream_ended = True


async def test_the_default_accepts_the_mesh_clients_pings():
    options = dict(server_options(RuntimeSettings()))
    assert "grpc.http2.min_recv_ping_interval_without_data_ms" not in options  # not an argument gRPC reads
    assert options["grpc.http2.min_ping_interval_without_data_ms"] < CLIENT_KEEPALIVE_MS
    assert options["grpc.keepalive_permit_without_calls"] == 1


async def test_an_idle_stream_survives_pings_at_the_allowed_rate():
    settings = RuntimeSettings(grpc_port=0, metrics_port=0, grpc_min_ping_interval_s=0.2, grpc_max_ping_strikes=2)
    async with running(ProbeApp(settings), metrics=False) as server, RawH2Client.connect(server.port) as client:
        await client.watch_health()
        pings = 4 * (settings.grpc_max_ping_strikes + 1)  # far more than the strikes a too-early ping gets
        for _ in range(pings):
            # the interval only grows on a loaded machine, so every ping stays within the rate
            await asyncio.sleep(settings.grpc_min_ping_interval_s * 1.5)
            await client.ping()
            assert client.goaway is None, f"GOAWAY after {client.acks} pings: {client.goaway}"
        assert client.acks == pings and not client.stream_ended


async def test_pings_faster_than_allowed_get_goaway_too_many_pings():
    # a long minimum interval: back-to-back pings are too early however slow the machine is
    settings = RuntimeSettings(grpc_port=0, metrics_port=0, grpc_min_ping_interval_s=60, grpc_max_ping_strikes=2)
    async with running(ProbeApp(settings), metrics=False) as server, RawH2Client.connect(server.port) as client:
        await client.watch_health()
        sent = 0
        while client.goaway is None and sent < 10:
            await client.ping()
            sent += 1
        assert client.goaway is not None, "the server accepted pings faster than its minimum interval"
        assert client.goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        assert client.goaway.additional_data == b"too_many_pings"
        # the first ping is free and each early one is a strike: GOAWAY on the one past max strikes
        assert sent == 1 + settings.grpc_max_ping_strikes + 1
