"""Length-prefixed frames of gRPC-Web and Connect streaming, and the text (base64) mode.

A frame is 1 flag byte, a 4-byte big-endian length and the payload. gRPC-Web flags:
0x00 message, 0x01 compressed message, 0x80 trailers. Connect streaming: 0x01 compressed,
0x02 end of stream.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Iterable, Mapping
from urllib.parse import quote

HEADER = struct.Struct(">BI")
TRAILERS_FLAG = 0x80
COMPRESSED_FLAG = 0x01
CONNECT_END_FLAG = 0x02


class FrameError(ValueError):
    """The request body is not a well-formed sequence of frames."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class FrameTooLarge(FrameError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"message of {size} bytes exceeds the limit of {limit} bytes (ECO2_GATEWAY_MAX_MESSAGE_BYTES)",
            "MESSAGE_TOO_LARGE",
        )
        self.size = size
        self.limit = limit


def frame(payload: bytes, flags: int = 0) -> bytes:
    return HEADER.pack(flags, len(payload)) + payload


def parse_frames(body: bytes, max_message_bytes: int) -> list[tuple[int, bytes]]:
    """Split a complete body into (flags, payload) frames; raise FrameError when malformed."""
    frames: list[tuple[int, bytes]] = []
    pos, end = 0, len(body)
    while pos < end:
        if end - pos < HEADER.size:
            raise FrameError(f"truncated frame header: {end - pos} byte(s) where 5 are needed", "TRUNCATED_FRAME")
        flags, length = HEADER.unpack_from(body, pos)
        if length > max_message_bytes:
            raise FrameTooLarge(length, max_message_bytes)
        pos += HEADER.size
        if end - pos < length:
            raise FrameError(
                f"truncated frame: header announces {length} bytes, body has {end - pos}", "TRUNCATED_FRAME"
            )
        frames.append((flags, body[pos : pos + length]))
        pos += length
    return frames


_B64_CHUNK = re.compile(rb"[A-Za-z0-9+/]*={0,2}")


def decode_text(body: bytes) -> bytes:
    """Decode grpc-web-text: base64, possibly several padded chunks one after another."""
    data = b"".join(body.split())  # line breaks and spaces are not data
    out = bytearray()
    pos = 0
    while pos < len(data):
        m = _B64_CHUNK.match(data, pos)
        chunk = m.group(0) if m else b""
        if not chunk:
            raise FrameError(f"invalid base64 at byte {pos} of the grpc-web-text body", "INVALID_BASE64")
        if len(chunk) % 4:
            if chunk.endswith(b"=") or m.end() < len(data):
                raise FrameError(
                    f"invalid base64 in the grpc-web-text body: a chunk of {len(chunk)} characters", "INVALID_BASE64"
                )
            chunk += b"=" * (-len(chunk) % 4)  # unpadded final chunk
        try:
            out += base64.b64decode(chunk, validate=True)
        except binascii.Error as exc:
            raise FrameError(f"invalid base64 in the grpc-web-text body: {exc}", "INVALID_BASE64") from None
        pos = m.end()
    return bytes(out)


def encode_text(data: bytes) -> bytes:
    return base64.b64encode(data)


# --- trailers ----------------------------------------------------------------------------

_SAFE_MESSAGE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def encode_grpc_message(message: str) -> str:
    """grpc-message is percent-encoded (gRPC spec): never a raw CR/LF or non-ASCII byte."""
    return quote(message, safe=_SAFE_MESSAGE)


def header_value(key: str, value: str | bytes) -> str:
    """Metadata value as a header value: `-bin` values base64, text values printable only."""
    if key.endswith("-bin"):
        raw = value if isinstance(value, bytes) else value.encode()
        return base64.b64encode(raw).decode()
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return quote(text, safe="".join(chr(c) for c in range(0x20, 0x7F)))
    return text


def trailer_block(status: int, message: str, metadata: Iterable[tuple[str, str | bytes]] = ()) -> bytes:
    lines = [f"grpc-status: {status}", f"grpc-message: {encode_grpc_message(message)}"]
    for key, value in metadata:
        if key in ("grpc-status", "grpc-message"):
            continue
        lines.append(f"{key}: {header_value(key, value)}")
    return ("\r\n".join(lines) + "\r\n").encode("ascii", "replace")


def status_headers(
    status: int, message: str, metadata: Mapping[str, str] | Iterable[tuple[str, str | bytes]] = ()
) -> list[tuple[bytes, bytes]]:
    items = metadata.items() if isinstance(metadata, Mapping) else metadata
    out = [(b"grpc-status", str(status).encode()), (b"grpc-message", encode_grpc_message(message).encode())]
    for key, value in items:
        if key in ("grpc-status", "grpc-message"):
            continue
        out.append((key.encode(), header_value(key, value).encode("ascii", "replace")))
    return out


_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_TIMEOUT = re.compile(r"^([0-9]{1,8})([HMSmun])$")


def parse_grpc_timeout(value: str) -> float:
    """`grpc-timeout` ("100m", "5S", ...) in seconds; ValueError when malformed."""
    m = _TIMEOUT.match(value.strip())
    if not m:
        raise ValueError(f"malformed grpc-timeout {value!r}: want 1-8 digits and a unit of H, M, S, m, u, n")
    return int(m.group(1)) * _UNITS[m.group(2)]
