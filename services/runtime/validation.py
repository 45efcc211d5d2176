"""Request validation: collect every field violation, then raise one INVALID_ARGUMENT."""

from __future__ import annotations

import math
import re
from typing import Self

from google.protobuf.message import Message

from .errors import FieldViolation, InvalidArgument

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def ascii_digits(text: str) -> bool:
    """True when `text` is one or more ASCII digits 0-9, the only digits a number on the wire
    may have. `str.isdigit()` alone also accepts other scripts' digits ('٣', '３'), which int()
    reads as numbers, and superscripts ('²'), on which int() raises ValueError."""
    return text.isascii() and text.isdigit()


class Validator:
    """Usage:

    v = Validator()
    v.text("message", req.message, min_len=1, max_len=1000)
    v.check(req.limit <= 50, "limit", "must be at most 50")
    v.raise_if_invalid()
    """

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def add(self, field: str, description: str) -> Self:
        self.violations.append(FieldViolation(field, description))
        return self

    def check(self, ok: bool, field: str, description: str) -> bool:
        if not ok:
            self.add(field, description)
        return ok

    def text(
        self, field: str, value: str, *, min_len: int = 0, max_len: int | None = None, single_line: bool = False
    ) -> bool:
        n = len(value)
        if n < min_len:
            return self.check(False, field, "is required" if min_len == 1 else f"must be at least {min_len} characters")
        if max_len is not None and n > max_len:
            return self.check(False, field, f"must be at most {max_len} characters (got {n})")
        if _CONTROL.search(value):
            return self.check(False, field, "must not contain control characters")
        if single_line and ("\n" in value or "\r" in value):
            return self.check(False, field, "must be a single line")
        return True

    def number(self, field: str, value: float, *, low: float | None = None, high: float | None = None) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return self.check(False, field, "must be a finite number")
        if low is not None and value < low:
            return self.check(False, field, f"must be >= {low} (got {value})")
        if high is not None and value > high:
            return self.check(False, field, f"must be <= {high} (got {value})")
        return True

    def enum(self, field: str, value: int, enum_type, *, allow_unspecified: bool = False) -> bool:
        """`enum_type` is the generated EnumTypeWrapper, e.g. character_pb2.WasteCategory."""
        if value not in enum_type.values():
            return self.check(False, field, f"unknown value {value}; expected one of {', '.join(enum_type.keys()[1:])}")
        if value == 0 and not allow_unspecified:
            return self.check(False, field, f"is required; one of {', '.join(enum_type.keys()[1:])}")
        return True

    def raise_if_invalid(self, message: str = "invalid request") -> None:
        if self.violations:
            fields = ", ".join(sorted({v.field for v in self.violations}))
            raise InvalidArgument(f"{message}: {fields}", violations=self.violations)


def require_set(msg: Message, field: str, v: Validator) -> bool:
    """A message field must be present."""
    return v.check(msg.HasField(field), field, "is required")
