"""Opaque page tokens for list RPCs (AIP-158 style)."""

from __future__ import annotations

import base64
import json

from .validation import Validator


def encode_token(**cursor: object) -> str:
    raw = json.dumps(cursor, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, v: Validator, field: str = "page_token") -> dict[str, object]:
    """{} for an empty token; a field violation for a token we did not issue."""
    if not token:
        return {}
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        cursor = json.loads(raw)
        if not isinstance(cursor, dict):
            raise ValueError("not an object")
        return cursor
    except (ValueError, UnicodeDecodeError):
        v.add(field, "is not a page token returned by this API")
        return {}


def page_size(value: int, v: Validator, *, default: int, maximum: int, field: str = "page_size") -> int:
    if value < 0:
        v.add(field, "must not be negative")
        return default
    if value > maximum:
        v.add(field, f"must be at most {maximum}")
        return maximum
    return value or default
