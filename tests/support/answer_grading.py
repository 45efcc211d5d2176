"""The answer evaluation (tests/data/answers_eval.yaml): one case through the chat stack as a
user would send it, and its grade.

A case passes when the final answer contains every `must` fact (a list entry is a set of
alternatives), none of the `not` strings, cites a section of one of its `file`s, streamed as
TOKEN events that add up to the answer; a case with `ask: location` must also have answered the
rest first (`before` facts streamed before the NEEDS_INPUT), then, given the `reply`, contain the
`then` facts. The time of a case is send → DONE of its first turn (the offline turn the target is
about), only for cases answered without a question back.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from eco2.chat.v1 import chat_pb2
from eco2.events.v1 import events_pb2
from eco2.location.v1 import location_pb2

from .identity import as_user

EVAL = Path(__file__).resolve().parent.parent / "data" / "answers_eval.yaml"
CITY_HALL = location_pb2.GeoPoint(latitude=37.5663, longitude=126.9779)  # the SAMPLE places are around it
TERMINAL = (events_pb2.EVENT_KIND_DONE, events_pb2.EVENT_KIND_ERROR, events_pb2.EVENT_KIND_NEEDS_INPUT)


def cases(*, fast_only: bool = False) -> list[dict]:
    got = yaml.safe_load(EVAL.read_text(encoding="utf-8"))["cases"]
    return [c for c in got if c.get("fast")] if fast_only else got


@dataclass
class Outcome:
    case: dict
    answer: str = ""
    partial: str = ""  # streamed before the NEEDS_INPUT
    asked: bool = False
    citations: list[str] = field(default_factory=list)
    tokens_match: bool = True
    seconds: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def _has(text: str, fact) -> bool:
    return any(str(f) in text for f in fact) if isinstance(fact, list) else str(fact) in text


async def run_case(stack: dict, case: dict) -> Outcome:
    user = as_user(f"eval-{uuid.uuid4().hex[:10]}")
    out = Outcome(case)
    started = time.monotonic()
    events = [
        e
        async for e in _until(
            stack["chat"].StreamChat(chat_pb2.StreamChatRequest(message=case["q"]), metadata=user, timeout=60)
        )
    ]
    last = events[-1] if events else None
    if last is not None and last.kind == events_pb2.EVENT_KIND_NEEDS_INPUT:
        out.asked = True
        out.partial = "".join(e.delta for e in events if e.kind == events_pb2.EVENT_KIND_TOKEN)
        request = chat_pb2.ProvideInputRequest(job_id=last.job_id, input_id=last.needs_input.input_id)
        if case.get("reply") == "cityhall":
            request.location.CopyFrom(CITY_HALL)
        else:
            request.declined = True
        await stack["chat"].ProvideInput(request, metadata=user, timeout=30)
        rest = [
            e
            async for e in _until(
                stack["events"].Subscribe(
                    events_pb2.SubscribeRequest(job_id=last.job_id, after_seq=last.seq), metadata=user, timeout=60
                )
            )
        ]
        events += rest
        last = events[-1]
    elif last is not None and last.kind == events_pb2.EVENT_KIND_DONE:
        out.seconds = time.monotonic() - started
    if last is None or last.kind != events_pb2.EVENT_KIND_DONE:
        out.problems.append(
            f"no DONE ({last.error.reason if last is not None and last.kind == events_pb2.EVENT_KIND_ERROR else 'stream ended'})"
        )
        return out
    result = chat_pb2.ChatResult()
    last.done.result.Unpack(result)
    out.answer, out.citations = result.answer, [c.source_id for c in result.citations]
    out.tokens_match = "".join(e.delta for e in events if e.kind == events_pb2.EVENT_KIND_TOKEN) == result.answer
    grade(out)
    return out


async def _until(stream):
    async for e in stream:
        yield e
        if e.kind in TERMINAL:
            break


def grade(out: Outcome) -> None:
    case, answer = out.case, out.answer
    for fact in case.get("must") or []:
        if not _has(answer, fact):
            out.problems.append(f"missing {fact!r}")
    for bad in case.get("not") or []:
        if str(bad) in answer:
            out.problems.append(f"contains {bad!r}")
    files = case.get("file")
    if files:
        files = [files] if isinstance(files, str) else files
        if not any(c.startswith(f"rule:{f}#") for c in out.citations for f in files):
            out.problems.append(f"cites none of {files} (cites {out.citations[:4]})")
    if not out.tokens_match:
        out.problems.append("TOKEN events do not add up to the answer")
    if case.get("ask") == "location":
        if not out.asked:
            out.problems.append("did not ask for the location")
        for fact in case.get("before") or []:
            if not _has(out.partial, fact):
                out.problems.append(f"not answered before the question: {fact!r}")
        for fact in case.get("then") or []:
            if not _has(answer, fact):
                out.problems.append(f"missing after the reply {fact!r}")
    elif out.asked:
        out.problems.append("asked for the location")
