"""The browser UI's app icons, drawn without any image library or download: a white leaf on the
Eco² green. `icon.svg` (hand-written, in gateway/static/) and the PNGs drawn here share the
geometry below; the PNGs are committed, and `python -m eco2.gateway.icons --check` (a test runs
it) fails when they are not what this file draws.

    python -m eco2.gateway.icons          # writes gateway/static/icon-192.png, icon-512.png, icon-maskable-512.png

Drawing: every shape is a signed distance function in the 512-unit box of icon.svg (negative
inside); a pixel's coverage is 0.5 - distance (in pixels), clamped to 0..1, which anti-aliases
the edges without supersampling.
"""

from __future__ import annotations

import argparse
import math
import struct
import sys
import zlib
from pathlib import Path

STATIC = Path(__file__).parent / "static"
GREEN = (0x2F, 0x7D, 0x32)
WHITE = (0xFF, 0xFF, 0xFF)
#: the leaf: a lens between two circles (icon.svg's path), its tips where they intersect
LEAF_R = 174.85
LEAF_CENTRES = ((319.53, 319.53), (192.47, 192.47))
#: the midrib (green) and the stem (white): round-capped segments (icon.svg's lines)
MIDRIB = ((176.0, 336.0), (330.0, 182.0), 7.0)
STEM = ((150.0, 362.0), (112.0, 400.0), 9.0)
#: (file, size in px, corner radius in icon units: 0 = full bleed, what a maskable icon needs)
ICONS = (("icon-192.png", 192, 112.0), ("icon-512.png", 512, 112.0), ("icon-maskable-512.png", 512, 0.0))


def _segment(x: float, y: float, seg) -> float:
    (ax, ay), (bx, by), half_width = seg
    dx, dy, px, py = bx - ax, by - ay, x - ax, y - ay
    t = max(0.0, min(1.0, (px * dx + py * dy) / (dx * dx + dy * dy)))
    return math.hypot(px - t * dx, py - t * dy) - half_width


def _rounded_square(x: float, y: float, radius: float) -> float:
    if radius <= 0:
        return -1e9  # full bleed: everywhere inside
    qx, qy = abs(x - 256.0) - (256.0 - radius), abs(y - 256.0) - (256.0 - radius)
    return math.hypot(max(qx, 0.0), max(qy, 0.0)) + min(max(qx, qy), 0.0) - radius


def _leaf(x: float, y: float) -> float:
    return max(math.hypot(x - cx, y - cy) - LEAF_R for cx, cy in LEAF_CENTRES)


def draw(size: int, radius: float) -> bytes:
    """The icon as RGBA rows (a PNG's filter byte 0 first on each row)."""
    unit = 512.0 / size  # icon units per pixel

    def cover(distance: float) -> float:  # a distance in icon units → how much of the pixel is inside
        return max(0.0, min(1.0, 0.5 - distance / unit))

    rows = bytearray()
    for j in range(size):
        rows.append(0)
        y = (j + 0.5) * unit
        for i in range(size):
            x = (i + 0.5) * unit
            background = cover(_rounded_square(x, y, radius))
            white = max(cover(_leaf(x, y)), cover(_segment(x, y, STEM)))
            white *= 1.0 - cover(_segment(x, y, MIDRIB))
            rgb = [round(g + (w - g) * white) for g, w in zip(GREEN, WHITE)]
            alpha = max(background, white)
            rows += bytes((*rgb, round(255 * alpha)))
    return bytes(rows)


def png(size: int, radius: float) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(draw(size, radius), 9))
        + chunk(b"IEND", b"")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eco2.gateway.icons", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="fail when a committed icon differs from what is drawn here"
    )
    args = parser.parse_args(argv)
    stale = []
    for name, size, radius in ICONS:
        data, path = png(size, radius), STATIC / name
        if args.check:
            if not path.exists() or path.read_bytes() != data:
                stale.append(name)
        else:
            path.write_bytes(data)
    if stale:
        print(f"stale icons: {', '.join(stale)} — run python -m eco2.gateway.icons", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
