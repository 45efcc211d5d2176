"""summarize: past the model's threshold, the older messages of the history fold into the
conversation's summary; the newest `keep_recent_messages` stay as they are."""

from __future__ import annotations

import re

from langgraph.runtime import Runtime

from eco2.services.llm.ports import Message

from ..deps import JobContext
from ..state import ChatState, HistoryMessage
from .run import run_node

_ASKED = re.compile(r"^- 물음: (.*?) → ", re.M)


def estimate_tokens(text: str) -> int:
    # Korean runs ~1 token per 1.5 characters in current tokenizers; a cheap, conservative estimate.
    return max(1, int(len(text) / 1.5))


async def summarize(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    deps = runtime.context.deps
    history = state.get("history") or []
    threshold = deps.summary_threshold_tokens or deps.llm.info.summary_threshold
    total = estimate_tokens(state.get("summary", "")) + sum(estimate_tokens(m["text"]) for m in history)
    if total <= threshold or len(history) <= deps.keep_recent_messages:
        return {}

    async def body() -> dict:
        old, recent = history[: -deps.keep_recent_messages], history[-deps.keep_recent_messages :]
        if deps.llm.info.provider == "offline":
            summary = offline_summary(state.get("summary", ""), old, limit=deps.summary_max_chars)
        else:
            prompt = [
                Message(
                    "user",
                    "다음 대화를 핵심만 한국어로 요약해 주세요. 사용자가 물은 물건과 그 답(어디에, 어떻게 버리는지)은 빠뜨리지 마세요:\n"
                    + (f"이전 요약: {state['summary']}\n" if state.get("summary") else "")
                    + "\n".join(f"{m['role']}: {m['text']}" for m in old),
                )
            ]
            summary = await deps.llm.generate(prompt, max_tokens=1024)
        upto = max((int(m.get("n") or 0) for m in old), default=0)
        return {"summary": summary, "new_summary": summary, "history": recent, "summary_upto": upto}

    return await run_node("summarize", runtime, body)


def offline_summary(previous: str, messages: list[HistoryMessage], *, limit: int = 4000) -> str:
    """The offline model's summary: each question with the answer's direct answer (its first
    line, whole: "치킨뼈는 … 일반종량제폐기물로 배출해요."), after the previous summary; the oldest
    pairs are dropped past `limit` characters. The questions stay readable for follow-ups
    (`asked_in_summary`)."""
    pairs: list[str] = []
    question = ""
    for m in messages:
        if m["role"] == "user":
            if question:
                pairs.append(f"- 물음: {question} → (답 없음)")
            question = " ".join(m["text"].split())[:200]
        else:
            lead = next((line.strip() for line in m["text"].splitlines() if line.strip()), "")[:300]
            pairs.append(f"- 물음: {question or '(앞선 대화)'} → {lead}")
            question = ""
    if question:
        pairs.append(f"- 물음: {question} → (답 없음)")
    lines = [line for line in previous.splitlines() if line.startswith("- 물음: ")] + pairs
    while lines and sum(len(line) + 1 for line in lines) > limit:
        lines.pop(0)
    return "\n".join(["이전 대화 요약:", *lines]) if lines else ""


def asked_in_summary(summary: str) -> list[str]:
    """The questions an offline summary keeps, newest first."""
    return list(reversed(_ASKED.findall(summary or "")))


def earlier_user_turns(state: ChatState) -> list[str]:
    """The user's earlier messages in the history, newest first."""
    return [m["text"] for m in reversed(state.get("history") or []) if m["role"] == "user"]


def earlier_questions(state: ChatState) -> list[str]:
    """The user's earlier messages, newest first, then those the summary keeps (a follow-up's
    subject is in them)."""
    return earlier_user_turns(state) + asked_in_summary(state.get("summary", ""))
