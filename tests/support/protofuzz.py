"""Random and extreme gRPC requests, generated from the message descriptors (hypothesis).

`requests(descriptor)` draws the serialized bytes of one request of any message type: every
field may be set or not, to a random value or to an edge case of its type (huge, empty, NUL,
control and bidi characters, emoji; 0, negative, NaN, ±inf, subnormal, int64/uint64 limits;
long repeated fields; enum numbers no value names; nested messages a few levels deep), or the
request is not a message of that type at all: random bytes, or a string field carrying bytes
that are not UTF-8 (protobuf refuses to build such a message, but a client can send it).

`calls()` lists every method of every service the registry runs, from the services each app
registers (`service_names()`), looked up in the descriptor pool: no hand-written list.
`invoke()` sends one request with raw bytes on a channel and returns the status code.
"""

from __future__ import annotations

import asyncio
import math
import struct
from dataclasses import dataclass
from functools import cache

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from hypothesis import strategies as st

F = FieldDescriptor

#: How deep nested messages go (envoy's CheckRequest reaches its headers at depth 4).
MAX_DEPTH = 4
#: Larger than the servers' ECO2_MAX_MESSAGE_BYTES default (4 MiB): RESOURCE_EXHAUSTED, not a crash.
OVERSIZED = 4 * 1024 * 1024 + 1

EDGE_STRINGS = [
    "",
    " ",
    "\u3000",
    "\x00",
    "a\x00b",
    "\x01\x02\x1b[31m\x7f",
    "line\nbreak\r\n",
    "\t",
    "\u202eevil\u202c",
    "\u200f\u0645\u0631\u062d\u0628\u0627",
    "\u200b\u200d\ufeff",
    "e\u0301\u0301\u0301",
    "🧴♻️👨‍👩‍👧‍👦",
    "\U0010ffff\uffff\ufffd",
    "²",
    "٣٤",
    "１２",
    "-1",
    "9" * 40,
    "1e309",
    "NaN",
    "페트병 어떻게 버려?",
    "../../etc/passwd",
    "' OR 1=1 --",
    "%s%n%x",
    "{{7*7}}${7*7}",
    "<script>alert(1)</script>",
    "00000000-0000-0000-0000-000000000000",
    "chat-" + "0" * 32,
    "char-eco",
    "a" * 129,
    "가" * 1001,
]
HUGE_STRINGS = ["x" * 70_000, "가" * 40_000]
EDGE_BYTES = [
    b"",
    b"\x00",
    b"\xff" * 16,
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 16,
    b"\xff\xd8\xff\xe0",
    b"GIF89a",
    b"RIFF\x00\x00\x00\x00WEBP",
]
EDGE_FLOATS = [
    0.0,
    -0.0,
    math.nan,
    math.inf,
    -math.inf,
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    1.7976931348623157e308,
    1e-300,
    37.5665,
    126.978,
    91.0,
    -181.0,
]
INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}


#: values a real client sends, so that requests also get past validation to the code behind it
PLAUSIBLE_STRINGS = [
    "페트병 어떻게 버려?",
    "캔은 어떻게 버려? 근처 수거함도 알려줘",
    "hello",
    "char-eco",
    "plastic",
    "dev",
    "kakao",
    "google",
    "user",
    "image/png",
    "image/jpeg",
    "ko",
    "http://localhost:8080/callback",
    "서울",
    "강남구",
    "chat-" + "ab" * 16,
    "location",
    "sha256:" + "0" * 64,
]
#: ids of things that exist (a conversation, a job, an image), added by the test before it draws:
#: a request naming one gets past "not found" to the owner checks and what lies behind them
KNOWN: list[str] = []


def _strings() -> st.SearchStrategy[str]:
    common = st.one_of(
        st.sampled_from(EDGE_STRINGS),
        st.text(max_size=40),  # any code point but lone surrogates (protobuf strings are UTF-8)
        st.text(alphabet=st.characters(codec="ascii"), max_size=20),
    )
    rare = st.one_of(st.sampled_from(HUGE_STRINGS), st.just("x" * OVERSIZED))
    return st.one_of(common, common, common, rare)  # one string in eight is huge


def _scalar(field: FieldDescriptor) -> st.SearchStrategy:
    """Half plausible values (the request may pass validation), half edge cases and noise."""
    return st.one_of(_plausible(field), _extreme(field))


def _plausible(field: FieldDescriptor) -> st.SearchStrategy:
    t = field.type
    if t == F.TYPE_STRING:
        known = st.deferred(lambda: st.sampled_from(KNOWN) if KNOWN else st.nothing())
        return st.one_of(st.sampled_from(PLAUSIBLE_STRINGS), st.uuids().map(str), known)
    if t == F.TYPE_BYTES:
        return st.sampled_from(EDGE_BYTES[3:])  # image magic numbers
    if t == F.TYPE_BOOL:
        return st.booleans()
    if t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return st.one_of(st.floats(37.4, 37.7), st.floats(126.8, 127.2), st.floats(0, 100))  # around Seoul, or small
    if t == F.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values])
    return st.integers(0, 100)


def _extreme(field: FieldDescriptor) -> st.SearchStrategy:
    t = field.type
    if t == F.TYPE_STRING:
        return _strings()
    if t == F.TYPE_BYTES:
        return st.one_of(st.sampled_from(EDGE_BYTES), st.binary(max_size=64), st.just(b"\x00" * 70_000))
    if t == F.TYPE_BOOL:
        return st.booleans()
    if t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        width = 64 if t == F.TYPE_DOUBLE else 32
        edges = EDGE_FLOATS if width == 64 else [x for x in EDGE_FLOATS if _fits_float32(x)]
        return st.one_of(st.sampled_from(edges), st.floats(width=width))
    if t == F.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        # proto3 enums are open: any int32 goes on the wire, and a server must refuse it
        return st.one_of(st.sampled_from([-1, max(known) + 1, 2**31 - 1, -(2**31)]), st.integers(-(2**31), 2**31 - 1))
    low, high = INT_RANGES[t]
    return st.one_of(
        st.sampled_from(sorted({0, -1 if low < 0 else 2, low, high, high // 2, low + 1, high - 1})),
        st.integers(low, high),
    )


def _fits_float32(x: float) -> bool:
    try:
        struct.pack("f", x)
    except OverflowError:
        return False
    return True


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


@cache
def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy:
    """Messages of `descriptor`'s type: a random subset of its fields set (none, some, all)."""
    cls = message_factory.GetMessageClass(descriptor)
    fields = [f for f in descriptor.fields if depth < MAX_DEPTH or f.type != F.TYPE_MESSAGE]
    if not fields:
        return st.builds(cls)
    values = {f.name: _field(f, depth) for f in fields}

    @st.composite
    def build(draw):
        msg = cls()
        for name in draw(st.lists(st.sampled_from(sorted(values)), unique=True, max_size=len(values))):
            _assign(msg, descriptor.fields_by_name[name], draw(values[name]))
        return msg

    return build()


def _field(field: FieldDescriptor, depth: int) -> st.SearchStrategy:
    if _is_map(field):
        key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        return st.dictionaries(_scalar(key), _single(value, depth + 1), max_size=4)
    one = _single(field, depth)
    if not field.is_repeated:
        return one
    return st.one_of(st.lists(one, max_size=5), _small(field).map(lambda v: [v] * 5000))  # long repeated fields


def _small(field: FieldDescriptor) -> st.SearchStrategy:
    """One short element of a long repeated field (5000 huge strings would be 20 GB)."""
    if field.type == F.TYPE_MESSAGE:
        return st.builds(message_factory.GetMessageClass(field.message_type))
    if field.type == F.TYPE_STRING:
        return st.sampled_from([s for s in EDGE_STRINGS if len(s) < 50])
    if field.type == F.TYPE_BYTES:
        return st.binary(max_size=8)
    return _scalar(field)


def _single(field: FieldDescriptor, depth: int) -> st.SearchStrategy:
    if field.type == F.TYPE_MESSAGE:
        return st.deferred(lambda: messages(field.message_type, depth + 1))
    return _scalar(field)


def _assign(msg, field: FieldDescriptor, value) -> None:
    target = getattr(msg, field.name)
    if _is_map(field):
        for k, v in value.items():
            if field.message_type.fields_by_name["value"].type == F.TYPE_MESSAGE:
                target[k].CopyFrom(v)
            else:
                target[k] = v
    elif field.is_repeated:
        target.extend(value)
    elif field.type == F.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(msg, field.name, value)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _not_utf8(descriptor: Descriptor) -> st.SearchStrategy[bytes] | None:
    """A request whose string field carries bytes that are not UTF-8 (a lone surrogate encoded
    as UTF-8, a stray continuation byte, 0xFF): no protobuf library builds it, a client may send it."""
    strings = [f for f in descriptor.fields if f.type == F.TYPE_STRING]
    if not strings:
        return None
    bad = st.sampled_from([b"\xed\xa0\x80", b"\x80", b"\xff\xfe", b"ok\xc3", b"\xf4\x90\x80\x80"])
    return st.builds(lambda f, b: _varint(f.number << 3 | 2) + _varint(len(b)) + b, st.sampled_from(strings), bad)


def requests(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """Serialized requests of `descriptor`'s type, or bytes that are not one."""
    message = messages(descriptor).map(lambda m: m.SerializeToString())
    noise = (
        st.binary(max_size=256) if (bad := _not_utf8(descriptor)) is None else st.one_of(st.binary(max_size=256), bad)
    )
    return st.one_of(message, message, message, noise)  # one request in four is not a message


@dataclass(frozen=True)
class Call:
    """One method of the mesh."""

    app: str  # the registry name of the service that serves it
    service: str  # e.g. eco2.chat.v1.ChatService
    method: MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method.name}"

    def __str__(self) -> str:
        return f"{self.service.rpartition('.')[2]}/{self.method.name}"


def calls(apps: dict) -> list[Call]:
    """Every method of every service the apps (registry name → ServiceApp) register."""
    pool = descriptor_pool.Default()
    return [
        Call(name, service, method)
        for name, app in apps.items()
        for service in app.service_names()
        for method in pool.FindServiceByName(service).methods
    ]


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str
    #: the status carries google.rpc.Status details (grpc-status-details-bin: BadRequest, ErrorInfo...)
    rich: bool = False
    #: a stream sent a first message within the deadline (then the client cancelled it)
    streamed: bool = False


def _outcome(err: grpc.aio.AioRpcError) -> Outcome:
    rich = any(key == "grpc-status-details-bin" for key, _ in err.trailing_metadata() or ())
    return Outcome(err.code(), err.details() or "", rich)


async def invoke(channel: grpc.aio.Channel, call: Call, payloads: list[bytes], metadata, timeout: float) -> Outcome:
    """Send `payloads` (one request, or the messages of a client stream) to `call` as raw bytes.
    A server stream is read up to its first message, then cancelled: it answered."""
    m = call.method
    try:
        if m.client_streaming:

            async def stream():
                for p in payloads:
                    yield p

            if m.server_streaming:
                rpc = channel.stream_stream(call.path)(stream(), metadata=metadata, timeout=timeout)
            else:
                await channel.stream_unary(call.path)(stream(), metadata=metadata, timeout=timeout)
                return Outcome(grpc.StatusCode.OK, "")
        elif m.server_streaming:
            rpc = channel.unary_stream(call.path)(payloads[0], metadata=metadata, timeout=timeout)
        else:
            await channel.unary_unary(call.path)(payloads[0], metadata=metadata, timeout=timeout)
            return Outcome(grpc.StatusCode.OK, "")
        first = await rpc.read()
        if first is grpc.aio.EOF:
            return Outcome(await rpc.code(), await rpc.details())
        rpc.cancel()
        return Outcome(grpc.StatusCode.OK, "", streamed=True)
    except grpc.aio.AioRpcError as err:
        return _outcome(err)
    except asyncio.CancelledError:
        raise


#: The extremes every field is tried at, one field at a time (`edge_requests`), by type.
EXTREME_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\x1b[31m\x7f\r\n",
    "\u202eevil\u202c",
    "🧴♻️👨‍👩‍👧‍👦",
    "²٣１",
    "x" * 70_000,
]
EXTREME_DOUBLES = [math.nan, math.inf, -math.inf, 5e-324, -5e-324, 1.7976931348623157e308, -0.0]
EXTREME_FLOATS = [math.nan, math.inf, -math.inf, 1e-45, 3.4e38]


def _extremes(field: FieldDescriptor) -> list:
    t = field.type
    if t == F.TYPE_STRING:
        return EXTREME_STRINGS
    if t == F.TYPE_BYTES:
        return [b"", b"\xff" * 16, b"\x00" * 70_000]
    if t == F.TYPE_BOOL:
        return [True]
    if t == F.TYPE_DOUBLE:
        return EXTREME_DOUBLES
    if t == F.TYPE_FLOAT:
        return EXTREME_FLOATS
    if t == F.TYPE_ENUM:
        return [-1, max(v.number for v in field.enum_type.values) + 1, 2**31 - 1]
    if t == F.TYPE_MESSAGE:
        return [message_factory.GetMessageClass(field.message_type)()]  # present, every field unset
    low, high = INT_RANGES[t]
    return sorted({low, high, 0, -1 if low < 0 else 1})


def _paths(descriptor: Descriptor, depth: int, prefix: tuple = ()) -> list[tuple[FieldDescriptor, ...]]:
    """Field paths from the request down to `depth` levels of nested messages (maps left to the
    random cases)."""
    out = []
    for f in descriptor.fields:
        if _is_map(f):
            continue
        out.append((*prefix, f))
        if f.type == F.TYPE_MESSAGE and depth > 0:
            out += _paths(f.message_type, depth - 1, (*prefix, f))
    return out


def edge_requests(
    descriptor: Descriptor, base: bytes = b"", *, depth: int = 2, max_paths: int = 40
) -> list[tuple[str, bytes]]:
    """Deterministic requests: `base` (a serialized request, e.g. one the service accepted, so
    that the extreme gets past validation of the other fields) with one field (at most
    `max_paths` of them, nested ones included) at one of its extremes; a repeated field also as
    5000 copies of one element. Plus one request over the message size limit. Random search
    finds such values by luck only."""
    cls = message_factory.GetMessageClass(descriptor)
    cases: list[tuple[str, bytes]] = []
    for path in _paths(descriptor, depth)[:max_paths]:
        name = ".".join(f.name for f in path)
        field = path[-1]
        values = (
            [[v] for v in _extremes(field)] + [[_extremes(field)[0]] * 5000] if field.is_repeated else _extremes(field)
        )
        for value in values:
            msg = cls.FromString(base)
            target = msg
            for step in path[:-1]:
                target = getattr(target, step.name).add() if step.is_repeated else getattr(target, step.name)
            if field.is_repeated:
                target.ClearField(field.name)
            _assign(target, field, value)
            cases.append((f"{name}={_label(value)}", msg.SerializeToString()))
    strings = [p for p in _paths(descriptor, 0) if p[-1].type == F.TYPE_STRING and not p[-1].is_repeated]
    if strings:
        msg = cls.FromString(base)
        setattr(msg, strings[0][-1].name, "x" * OVERSIZED)
        cases.append((f"{strings[0][-1].name}=<{OVERSIZED} bytes>", msg.SerializeToString()))
    return cases


def _label(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:30]}…<{len(text)}>"
