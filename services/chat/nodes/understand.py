"""The graph's first superstep: summarize (only when the history passes the threshold), intent,
and — without a photo — the router's stage, and the waste_rag branch when it is the turn's only
branch. One superstep, so one checkpoint (checkpoints.py) for what four nodes would each have
stored."""

from __future__ import annotations

from langgraph.runtime import Runtime

from eco2.events.v1 import events_pb2
from eco2.services.knowledge import turn

from .. import english as E
from .. import intents as I
from .. import metrics
from .. import question as Q
from ..deps import JobContext
from ..state import ChatState
from .route import inline_branch, router
from .run import combine, run_node
from .summarize import earlier_questions, earlier_user_turns, summarize
from .waste import waste_rag


async def understand(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    with turn.one_turn():  # intent, router and waste_rag read the same message: analysed once
        return await _understand(state, runtime)


async def _understand(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    update = await summarize(state, runtime)
    if update:
        state = {
            **state,
            **{k: v for k, v in update.items() if k in ("summary", "history")},
        }  # intent reads the shorter history
    update = combine(update, await intent(state, runtime))
    if not state.get("image_key"):
        update = combine(update, await router(state, runtime))
        if (send := inline_branch(combine(dict(state), update))) is not None:
            update = combine(update, await waste_rag(send.arg, runtime))
    return update


async def intent(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    deps = runtime.context.deps
    em = runtime.context.emitter
    remote = deps.llm.info.provider != "offline" and "structured" in deps.llm.info.capabilities
    use_model = remote and deps.intent_mode in ("model", "auto")  # "rules": never; offline: always the rules

    async def body() -> dict:
        text = state["message"]
        c = None
        if use_model:  # the model's decomposition; the rules answer when it fails (intents.py)
            previous = next(iter(earlier_user_turns(state)), "")
            c, why = await I.classify_with_model(
                deps.llm, text, deps.kb, timeout_s=deps.intent_timeout_s, previous=previous
            )
            if c is None:
                metrics.fallback_taken("intent_rules")
            note = f"모델 분류: {', '.join(c.intents)}" if c else f"모델 분류 실패({why}): 규칙으로 분류했어요"
            await em.stage("intent", events_pb2.STAGE_PHASE_PROGRESS, message=note[:200])
        language = None
        if c is None and Q.language(text) == "en":  # read as the Korean question it asks (english.py)
            t = E.translate(text)
            language = {"language": "en", "terms": [list(pair) for pair in t.terms], "understood": bool(t.korean)}
            text = t.korean or text
        c = c or I.classify(text, deps.kb, previous=next(iter(earlier_questions(state)), ""))
        intents, queries = list(c.intents), dict(c.queries)
        if language is not None:
            return {"intents": intents, "queries": queries, "contexts": {"language_context": language}}
        # Multi-turn: a follow-up without its own subject ("그럼 뚜껑은?") inherits the last user turn's topic.
        if intents == [I.GENERAL] and state.get("history"):
            last_user = next(iter(earlier_user_turns(state)), "")
            if last_user:
                c2 = I.classify(f"{last_user} {text}", deps.kb)
                if c2.intents != (I.GENERAL,):
                    intents, queries = list(c2.intents), {k: f"{last_user} {text}" for k in c2.intents}
        return {"intents": intents, "queries": queries}

    return await run_node("intent", runtime, body)
