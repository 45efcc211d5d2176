"""proto3 JSON from browsers: numbers given as JSON strings are checked before protobuf reads them.

The proto3 JSON mapping lets a client send a number as a string ("pageSize": "20", and int64
fields always so), in decimal ASCII digits. protobuf's Python parser reads such strings with
int() and float(), which also take other scripts' digits ("٣" → 3, "３" → 3), '_' separators and
a '+' sign, and raise ValueError on superscripts ("²"). `number_violations` walks the decoded
JSON along the message's descriptor and reports every numeric field whose string is not a
number in the mapping's own syntax; the callers refuse the request with those violations.
"""

from __future__ import annotations

import re

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from eco2.services.runtime.errors import FieldViolation

_F = FieldDescriptor
_INTEGER_TYPES = frozenset(
    {
        _F.TYPE_INT32,
        _F.TYPE_INT64,
        _F.TYPE_UINT32,
        _F.TYPE_UINT64,
        _F.TYPE_SINT32,
        _F.TYPE_SINT64,
        _F.TYPE_FIXED32,
        _F.TYPE_FIXED64,
        _F.TYPE_SFIXED32,
        _F.TYPE_SFIXED64,
    }
)
_FLOAT_TYPES = frozenset({_F.TYPE_FLOAT, _F.TYPE_DOUBLE})
# [0-9] (not \d, which matches every script's digits)
_INTEGER = re.compile(r"-?[0-9]+")
_FLOAT = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|NaN|-?Infinity")


def number_violations(value: object, descriptor: Descriptor, path: str = "") -> list[FieldViolation]:
    """Field violations (proto field paths, e.g. `filters[0].limit`) of numeric fields that `value`,
    the decoded JSON of a `descriptor` message, gives as strings that are not proto3 JSON numbers.
    Anything else is left to json_format, which refuses it with its own message."""
    if not isinstance(value, dict) or descriptor.full_name.startswith("google.protobuf."):
        return []  # not an object, or a well-known type with a JSON form of its own (Timestamp, Duration, ...)
    fields = {f.json_name: f for f in descriptor.fields} | {f.name: f for f in descriptor.fields}
    out: list[FieldViolation] = []
    for key, item in value.items():
        field = fields.get(key)
        if field is None:
            continue
        where = path + field.name
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            if isinstance(item, dict):
                for k, v in item.items():
                    out += _scalar(k, entry.fields_by_name["key"], f"{where}[{k!r}]")
                    out += _item(v, entry.fields_by_name["value"], f"{where}[{k!r}]")
        elif field.is_repeated and isinstance(item, list):
            for i, v in enumerate(item):
                out += _item(v, field, f"{where}[{i}]")
        else:
            out += _item(item, field, where)
    return out


def _item(value: object, field: FieldDescriptor, where: str) -> list[FieldViolation]:
    if field.message_type is not None:
        return number_violations(value, field.message_type, where + ".")
    return _scalar(value, field, where)


def _scalar(value: object, field: FieldDescriptor, where: str) -> list[FieldViolation]:
    if not isinstance(value, str):
        return []
    if field.type in _INTEGER_TYPES and not _INTEGER.fullmatch(value):
        return [
            FieldViolation(
                where, f"must be an integer: a JSON number or a string of ASCII digits 0-9 (got {value[:40]!r})"
            )
        ]
    if field.type in _FLOAT_TYPES and not _FLOAT.fullmatch(value):
        return [
            FieldViolation(
                where, f"must be a number: a JSON number or a string of one in ASCII digits (got {value[:40]!r})"
            )
        ]
    return []
