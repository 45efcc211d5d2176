"""Images for tests: real PNG files built from bytes."""

from __future__ import annotations

import struct
import zlib


def png(payload: bytes) -> bytes:
    """A real PNG (grey, 8-bit) whose pixel rows carry `payload`, stored uncompressed."""
    width = 256
    rows = [payload[i : i + width].ljust(width, b"\0") for i in range(0, max(len(payload), 1), width)]
    raw = b"".join(b"\0" + r for r in rows)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, len(rows), 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 0)) + chunk(b"IEND", b"")
