"""evaluate: the answer's grade — rules (the contract's contexts, quoted rules, certainty), and a
remote model's judgement averaged in when it can give structured output."""

from __future__ import annotations

from langgraph.runtime import Runtime
from pydantic import BaseModel, Field

from eco2.chat.v1 import chat_pb2
from eco2.services.llm.ports import LLMError, Message

from .. import intents as I
from ..deps import JobContext
from ..state import REQUIRED, ChatState
from .run import run_node


class LLMGrade(BaseModel):
    score: float = Field(ge=0, le=1)
    reasons: list[str] = []


def rule_grade(state: ChatState) -> dict:
    answer_text = state.get("answer", "")
    reasons, score = [], 1.0
    contexts = state.get("contexts") or {}
    if not answer_text.strip():
        reasons.append("빈 답변")
        score -= 1.0
    for i in state.get("intents") or []:
        need = REQUIRED.get(i)
        got = contexts.get(need) if need else None
        if need and (not got or (isinstance(got, dict) and got.get("unavailable"))):
            reasons.append(f"{i}: {need} 없음")
            score -= 0.3
    rules = contexts.get("disposal_rules") or []
    if I.WASTE in (state.get("intents") or []) and rules:
        used = sum(1 for d in rules for line in d["lines"] if line in answer_text)
        if used == 0:
            reasons.append("규정이 답변에 인용되지 않음")
            score -= 0.3
    if state.get("unsure") or state.get("clarify"):
        reasons.append("근거 부족: 불확실한 답변")
        score -= 0.3
    score = max(0.0, min(1.0, score))
    level = (
        chat_pb2.GRADE_LEVEL_GOOD
        if score >= 0.8
        else chat_pb2.GRADE_LEVEL_ACCEPTABLE
        if score >= 0.5
        else chat_pb2.GRADE_LEVEL_POOR
    )
    return {"level": level, "score": score, "grader": "rule", "reasons": reasons}


async def evaluate(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    deps = runtime.context.deps

    async def body() -> dict:
        grade = rule_grade(state)
        if deps.llm.info.provider != "offline" and "structured" in deps.llm.info.capabilities:
            prompt = [
                Message(
                    "user",
                    f"질문: {state['message']}\n답변: {state.get('answer', '')}\n근거: {list((state.get('contexts') or {}).keys())}\n답변이 근거에 맞고 질문에 답하는지 0~1 점수와 이유를 주세요.",
                )
            ]
            try:
                llm = await deps.llm.structured(prompt, LLMGrade)
                grade["score"] = round((grade["score"] + llm.score) / 2, 3)
                grade["grader"] = f"rule+llm:{deps.llm.info.name}"
                grade["reasons"] = grade["reasons"] + llm.reasons[:3]
            except LLMError:
                grade["reasons"].append("LLM 평가 실패: 규칙 평가만 사용")
        return {"grade": grade}

    return await run_node("evaluate", runtime, body)
