"""The pure core of the event bus: job ids, shards, key names, job status rules and the
subscriber cursor that makes every event arrive exactly once, in order.

Key layout (the `{N}` hash tag keeps a shard's keys in one Redis Cluster slot, so every Lua
script touches keys of one slot only):

    events:{N}                    shard stream: every event of the jobs hashed to shard N
    events:{N}:r:<job_id>         replay stream of one job; entry id = "<seq>-0"
    events:{N}:p:<job_id>         producer state of one job: last seq, closed, owner
    events:{N}:s:<job_id>         router state of one job (GetJobState)
    fanout:{N}                    Pub/Sub channel of shard N
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from eco2.events.v1 import events_pb2

JOB_ID_MAX = 128
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")
JOB_ID_RULE = "1-128 characters: letters, digits and . _ : - (starting with a letter or digit)"
#: Lua numbers are doubles: seqs above 2**53 - 1 would lose precision in the scripts.
MAX_SEQ = 2**53 - 1
ROUTER_GROUP = "router"

TERMINAL_KINDS = frozenset({events_pb2.EVENT_KIND_DONE, events_pb2.EVENT_KIND_ERROR})


def valid_job_id(job_id: str) -> bool:
    return bool(JOB_ID_RE.match(job_id))


def shard_of(job_id: str, shards: int) -> int:
    """Stable across processes and languages: CRC-32 (IEEE) of the UTF-8 job id, mod N."""
    return zlib.crc32(job_id.encode()) % shards


def shard_stream(shard: int) -> str:
    return f"events:{{{shard}}}"


def replay_key(shard: int, job_id: str) -> str:
    return f"events:{{{shard}}}:r:{job_id}"


def producer_key(shard: int, job_id: str) -> str:
    return f"events:{{{shard}}}:p:{job_id}"


def state_key(shard: int, job_id: str) -> str:
    return f"events:{{{shard}}}:s:{job_id}"


def fanout_channel(shard: int) -> str:
    return f"fanout:{{{shard}}}"


#: google.rpc.Code CANCELLED: the code of the ERROR event that ends a cancelled job.
CANCELLED_CODE = 1


def status_after(kind: int, stage: int, error_code: int = 0) -> int:
    """The job status an event of `kind` (an ERROR's `error.code`) leaves the job in."""
    if kind == events_pb2.EVENT_KIND_DONE:
        return events_pb2.JOB_STATUS_SUCCEEDED
    if kind == events_pb2.EVENT_KIND_ERROR:
        return events_pb2.JOB_STATUS_CANCELLED if error_code == CANCELLED_CODE else events_pb2.JOB_STATUS_FAILED
    if kind == events_pb2.EVENT_KIND_NEEDS_INPUT:
        return events_pb2.JOB_STATUS_WAITING_INPUT
    if kind == events_pb2.EVENT_KIND_STAGE and stage == events_pb2.STAGE_QUEUED:
        return events_pb2.JOB_STATUS_QUEUED
    return events_pb2.JOB_STATUS_RUNNING


# -- live message framing ---------------------------------------------------------------
# A Pub/Sub message carries one or more routed events of one shard (the router publishes each
# batch as few messages as possible): records b"<prev> <seq> <terminal> <job_id> <len>\n"
# followed by <len> bytes of serialized Event. `prev` is the seq the producer published before
# this one (0 for the first), so a subscriber can tell a gap from the next event without
# assuming seqs are contiguous.


def iter_live(message: bytes):
    """(prev, seq, terminal, job_id, data) of each event in a fan-out message, in order.
    Raises ValueError on a malformed message."""
    pos, end = 0, len(message)
    find = message.find
    while pos < end:
        nl = find(b"\n", pos)
        if nl < 0:
            raise ValueError("truncated fan-out record")
        prev, seq, terminal, job, size = message[pos:nl].split(b" ")
        pos = nl + 1 + int(size)
        if pos > end:
            raise ValueError("truncated fan-out record")
        yield int(prev), int(seq), terminal == b"1", job.decode(), message[nl + 1 : pos]


def frame_live(prev: int, seq: int, terminal: bool, job_id: str, data: bytes) -> bytes:
    """One fan-out record (what the router's Lua writes; for tests and tools)."""
    return b"%d %d %d %s %d\n" % (prev, seq, terminal, job_id.encode(), len(data)) + data


# -- SubscribeBatches framing -------------------------------------------------------------
# A SubscribeBatchesResponse is `repeated Event events = 1`: on the wire each event is the tag
# byte 0x0a, its length as a varint, then the Event bytes. The stored events are already
# serialized, so a message is their concatenation with those headers: nothing is decoded.

_HEADS = [b"\n" + bytes((n,)) for n in range(128)]


def _head(n: int) -> bytes:
    if n < 128:
        return _HEADS[n]
    out = bytearray(b"\n")
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def batch_messages(events: list[bytes], max_events: int, max_bytes: int) -> list[bytes]:
    """Serialized SubscribeBatchesResponse messages carrying `events` (serialized Events) in
    order: each at most `max_events` events and `max_bytes` bytes, except that an event larger
    than `max_bytes` travels alone."""
    out: list[bytes] = []
    parts: list[bytes] = []
    n = size = 0
    for data in events:
        head = _head(len(data))
        add = len(head) + len(data)
        if n and (n >= max_events or size + add > max_bytes):
            out.append(b"".join(parts))
            parts = []
            n = size = 0
        parts.append(head)
        parts.append(data)
        n += 1
        size += add
    if n:
        out.append(b"".join(parts))
    return out


class Step:
    """What a subscriber does with a live event."""

    SKIP = 0  # already sent (replayed or duplicate)
    SEND = 1  # the next event: send it
    GAP = 2  # something between the last sent and this one is missing: read the replay stream


@dataclass(slots=True)
class Cursor:
    """Where one subscriber is: the last seq sent and whether the terminal event was sent."""

    last: int
    done: bool = False

    def step(self, prev: int, seq: int) -> int:
        if seq <= self.last:
            return Step.SKIP
        if prev == self.last or prev < self.last:
            # prev < last < seq cannot happen for one producer sequence except when the client
            # resumed from a seq that was never published (after_seq inside a gap): nothing
            # between prev and seq exists, so this event is the next one.
            return Step.SEND
        return Step.GAP
