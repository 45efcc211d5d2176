"""Image rules: accepted formats, magic-byte sniffing, completeness, file names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from eco2.images.v1 import images_pb2 as pb

#: Declared content type → format name (ImageFormat without prefix).
CONTENT_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP"}
SNIFF_BYTES = 12
MAX_FILENAME = 255
_BAD_FILENAME = re.compile(r"[\x00-\x1f\x7f/\\]")


def sniff(head: bytes) -> str | None:
    """The format the first bytes announce (PNG, JPEG, GIF, WEBP), or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def is_complete(fmt: str, data: bytes) -> bool:
    """Whether the bytes reach the format's end marker: a stream cut short is refused."""
    if fmt == "PNG":  # the last chunk is IEND (length 0, type, CRC)
        return data.endswith(b"\x00\x00\x00\x00IEND\xae\x42\x60\x82")
    if fmt == "JPEG":  # EOI marker
        return data.rstrip(b"\x00").endswith(b"\xff\xd9")
    if fmt == "GIF":  # trailer
        return data.endswith(b"\x3b")
    if fmt == "WEBP":  # RIFF size covers the rest of the file
        return len(data) >= 12 and int.from_bytes(data[4:8], "little") + 8 <= len(data)
    return False


def filename_problem(name: str) -> str | None:
    """Why a client file name is refused (None = fine). Names are kept for display only."""
    if len(name) > MAX_FILENAME:
        return f"must be at most {MAX_FILENAME} characters"
    if _BAD_FILENAME.search(name):
        return "must be a plain file name: no path separators or control characters"
    if name == "." or ".." in name:
        return "must not be a relative path"
    return None


@dataclass(frozen=True, slots=True)
class ImageRecord:
    sha256: str
    format: str
    content_type: str
    size_bytes: int
    channel: str
    filename: str
    created_at: datetime

    @property
    def key(self) -> str:
        return f"sha256:{self.sha256}"

    def to_proto(self) -> pb.Image:
        ts = Timestamp()
        ts.FromDatetime(self.created_at)
        return pb.Image(
            key=self.key,
            sha256=self.sha256,
            format=pb.ImageFormat.Value(f"IMAGE_FORMAT_{self.format}"),
            content_type=self.content_type,
            size_bytes=self.size_bytes,
            channel=pb.ImageChannel.Value(f"IMAGE_CHANNEL_{self.channel}"),
            filename=self.filename,
            created_at=ts,
        )
