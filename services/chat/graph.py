"""The chat agent as a LangGraph StateGraph.

    summarize → intent → (vision) → router ─Send→ {waste_rag, character, location, collection_point,
    bulk_waste, recyclable_price, weather, web_search, image_generation, general} → aggregator
    (required-field contract, support grade, fallback chain) → answer (tokens) → evaluate → END

A question that also asks for something nearby without a location is answered in two parts:
aggregator → answer (everything else, streamed first) → ask_location (`interrupt()`,
NEEDS_INPUT) → the places branches with the reply → aggregator → answer (the places) →
evaluate. Every node body runs under the policy table (policy.py) and reports STAGE
started/finished events; ProvideInput resumes the graph through `Command(resume=...)`.
"""

from __future__ import annotations

import asyncio
import base64
import operator
import re
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, TypedDict

from google.protobuf import duration_pb2
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send, interrupt
from pydantic import BaseModel, Field

from eco2.chat.v1 import chat_pb2
from eco2.events.v1 import events_pb2
from eco2.services.knowledge.kb import KnowledgeBase
from eco2.services.llm.images import ImageModel
from eco2.services.llm.offline import OfflineLLM
from eco2.services.llm.ports import LLM, Grounding, LLMError, Message
from eco2.services.runtime.telemetry import span

from . import bulk_waste as BW
from . import english as E
from . import intents as I
from . import media as M
from . import metrics
from . import question as Q
from . import rules as R
from .answer import compose
from .outbox import EventOutbox, raise_for
from .policy import FailMode, NodeFailed, PolicyRunner
from .ports import Characters, Images, Places, Weather, WebSearch

STAGE_OF = {
    "summarize": events_pb2.STAGE_SUMMARIZE, "intent": events_pb2.STAGE_INTENT, "vision": events_pb2.STAGE_VISION,
    "router": events_pb2.STAGE_ROUTER, "aggregator": events_pb2.STAGE_AGGREGATE, "answer": events_pb2.STAGE_ANSWER,
    "evaluate": events_pb2.STAGE_EVALUATE,
}
SUBAGENTS = I.ALL_INTENTS
NODE_OF = {i: ("waste_rag" if i == I.WASTE else i) for i in SUBAGENTS}
#: The aggregator's contract: the context each intent must deliver (None: nothing required).
REQUIRED: dict[str, str | None] = {
    I.WASTE: "disposal_rules", I.CHARACTER: "character_context", I.LOCATION: "location_context",
    I.COLLECTION_POINT: "collection_point_context", I.BULK_WASTE: "bulk_waste_context", I.RECYCLABLE_PRICE: "price_context",
    I.WEATHER: "weather_context", I.WEB_SEARCH: "web_search_context", I.IMAGE_GENERATION: "image_generation_context", I.GENERAL: None,
}
INTENT_ENUM = {i: chat_pb2.Intent.Value(f"INTENT_{i.upper()}") for i in SUBAGENTS}
STAGE_MESSAGES = {
    "intent": "질문을 이해하고 있어요", "router": "필요한 정보를 모으고 있어요", "waste_rag": "분리배출 규정을 찾고 있어요",
    "collection_point": "가까운 수거함을 찾고 있어요", "location": "가까운 재활용 장소를 찾고 있어요", "answer": "답변을 쓰고 있어요",
    "evaluate": "답변을 점검하고 있어요", "aggregator": "모은 정보를 정리하고 있어요", "summarize": "지난 대화를 요약하고 있어요",
}


def merge(a: dict | None, b: dict | None) -> dict:
    return {**(a or {}), **(b or {})}


def highest(a: int | None, b: int | None) -> int:
    return max(a or 0, b or 0)


def latest(a: Any, b: Any) -> Any:
    return b if b is not None else a


class ChatState(TypedDict, total=False):
    job_id: str
    user_id: str
    conversation_id: str
    message: str
    image_key: str
    location: Annotated[dict | None, latest]  # set by the input, or by a resumed location branch (two may resume in one step)
    history: list[dict]
    summary: str
    new_summary: str
    summary_upto: int  # the n of the last message the new summary covers
    intents: list[str]
    queries: dict[str, str]
    query: str  # set by Send for one branch
    contexts: Annotated[dict, merge]
    citations: Annotated[list, operator.add]
    failed: Annotated[list, operator.add]
    spans: Annotated[dict, merge]  # node → [start, end] (monotonic), for concurrency checks and metrics
    answer: str
    grade: dict
    fallback_used: bool
    unsure: bool
    clarify: bool
    seq: Annotated[int, highest]
    enrichment: bool
    answered: list[str]  # intents the answer already covered (a partial answer before a NEEDS_INPUT)
    located: bool  # the location question was asked this turn (answered or declined)


class Emitter:
    """Assigns the job's seqs in emit order and queues the events on the process's outbox
    (outbox.py), which publishes them in coalesced batches in the same order. `emit` does not wait
    for the network; `drain()` does (before a node's update is checkpointed, and before DONE)."""

    def __init__(self, sink, job_id: str, base_seq: int, *, traceparent: str = "", tokens_per_event: int = 1, outbox: EventOutbox | None = None) -> None:
        self.sink, self.job_id, self.seq, self.traceparent = sink, job_id, base_seq, traceparent
        self.tokens_per_event = tokens_per_event
        self.outbox = outbox if outbox is not None else EventOutbox(sink)
        self._batch: asyncio.Future | None = None
        self.first_token_at: float | None = None

    def put(self, kind: int, *, stage: int = 0, node: str = "", delta: str = "", **payload: Any) -> int:
        """Assign the next seq and queue the event (synchronous: seq order = publish order)."""
        if self._batch is not None and self._batch.done():
            raise_for(self.job_id, self._batch)
        self.seq += 1
        event = events_pb2.Event(job_id=self.job_id, seq=self.seq, kind=kind, job_kind=events_pb2.JOB_KIND_CHAT, stage=stage, node=node, delta=delta, traceparent=self.traceparent, **payload)
        self._batch = self.outbox.submit(event)
        return self.seq

    def token(self, delta: str) -> int:
        return self.put(events_pb2.EVENT_KIND_TOKEN, stage=events_pb2.STAGE_ANSWER, node="answer", delta=delta)

    async def emit(self, kind: int, *, stage: int = 0, node: str = "", delta: str = "", **payload: Any) -> int:
        return self.put(kind, stage=stage, node=node, delta=delta, **payload)

    async def drain(self) -> None:
        """Wait until every event emitted so far is stored (or raise why it was not)."""
        batch = self._batch
        if batch is not None:
            if not batch.done():
                await asyncio.shield(batch)
            raise_for(self.job_id, batch)

    async def stage(self, node: str, phase: int, *, elapsed_s: float | None = None, message: str = "") -> None:
        info = events_pb2.StageInfo(phase=phase, message=message or STAGE_MESSAGES.get(node, ""))
        if elapsed_s is not None:
            info.elapsed.CopyFrom(duration_pb2.Duration(seconds=int(elapsed_s), nanos=int((elapsed_s % 1) * 1e9)))
        await self.emit(events_pb2.EVENT_KIND_STAGE, stage=STAGE_OF.get(node, events_pb2.STAGE_SUBAGENT), node=node, stage_info=info)

    async def tool(self, node: str, name: str, call_id: str, phase: int, *, message: str = "") -> None:
        await self.emit(events_pb2.EVENT_KIND_TOOL, stage=STAGE_OF.get(node, events_pb2.STAGE_SUBAGENT), node=node, tool=events_pb2.ToolCall(name=name, call_id=call_id, phase=phase, message=message))


async def publish_tolerant(sink, event: events_pb2.Event) -> bool:
    """Publish; a re-run's seq below the job's high-water mark that was never stored is dropped, not fatal."""
    from eco2.services.runtime.errors import FailedPrecondition

    try:
        return await sink.publish(event)
    except FailedPrecondition as exc:
        if exc.reason == "SEQ_NOT_INCREASING":
            return False
        raise


@dataclass
class ChatDeps:
    kb: KnowledgeBase
    llm: LLM
    policy: PolicyRunner
    places: Places | None = None
    characters: Characters | None = None
    weather: Weather | None = None
    web_search: WebSearch | None = None
    search_radius_m: int = 3000
    places_limit: int = 5
    summary_threshold_tokens: int = 0  # 0 = the model's threshold
    keep_recent_messages: int = 6
    summary_max_chars: int = 4000
    answer_max_tokens: int = 1024
    bulk_waste: BW.BulkWasteFees | None = None  # None: fee lookup not configured (ECO2_BULK_WASTE_API_KEY)
    bulk_waste_tool_iterations: int = 5
    intent_mode: str = "auto"  # rules | model | auto (model when a remote model is configured)
    intent_timeout_s: float = 5.0
    images: Images | None = None  # ImageService: photos to classify, generated pictures to store
    vision_llm: LLM | None = None  # None: photo recognition not configured (media.create_vision_llm)
    image_model: ImageModel | None = None  # None: image generation not configured
    media: M.MediaLimits = field(default_factory=M.MediaLimits)


@dataclass
class JobContext:
    deps: ChatDeps
    emitter: Emitter
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


def rt(runtime: Runtime[JobContext]) -> JobContext:
    return runtime.context


async def _run_node(name: str, state: ChatState, runtime: Runtime[JobContext], body, *, announce: bool = True) -> dict:
    ctx = rt(runtime)
    em = ctx.emitter
    if ctx.cancelled.is_set():
        raise asyncio.CancelledError("job cancelled")
    with span(f"node.{name}"):
        started = time.monotonic()
        if announce:
            await em.stage(name, events_pb2.STAGE_PHASE_STARTED)
        try:
            update = await ctx.deps.policy.run(name, body)
        except NodeFailed as failed:
            elapsed = time.monotonic() - started
            metrics.node_finished(name, "failed", elapsed)
            if announce:  # an unannounced step (waste_rag's character lookup) fails quietly: the policy logs it
                await em.stage(name, events_pb2.STAGE_PHASE_FAILED, elapsed_s=elapsed, message=failed.cause[:200])
            if failed.mode == FailMode.FAIL_CLOSE:
                raise
            update = {"failed": [name]}
        else:
            elapsed = time.monotonic() - started
            metrics.node_finished(name, "ok", elapsed)
            if announce:
                await em.stage(name, events_pb2.STAGE_PHASE_FINISHED, elapsed_s=elapsed)
    update = dict(update or {})
    update.setdefault("spans", {})
    update["spans"] = {**update["spans"], name: [started, time.monotonic()]}
    update["seq"] = em.seq
    await em.drain()  # the checkpoint of this update must not record a seq that was not published
    return update


# ---------------------------------------------------------------- nodes


def estimate_tokens(text: str) -> int:
    # Korean runs ~1 token per 1.5 characters in current tokenizers; a cheap, conservative estimate.
    return max(1, int(len(text) / 1.5))


async def summarize(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    deps = rt(runtime).deps
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
            prompt = [Message("user", "다음 대화를 핵심만 한국어로 요약해 주세요. 사용자가 물은 물건과 그 답(어디에, 어떻게 버리는지)은 빠뜨리지 마세요:\n"
                              + (f"이전 요약: {state['summary']}\n" if state.get("summary") else "") + "\n".join(f"{m['role']}: {m['text']}" for m in old))]
            summary = await deps.llm.generate(prompt, max_tokens=1024)
        upto = max((int(m.get("n") or 0) for m in old), default=0)
        return {"summary": summary, "new_summary": summary, "history": recent, "summary_upto": upto}

    return await _run_node("summarize", state, runtime, body)


_ASKED = re.compile(r"^- 물음: (.*?) → ", re.M)


def offline_summary(previous: str, messages: list[dict], *, limit: int = 4000) -> str:
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


def _combine(first: dict, then: dict) -> dict:
    """Two node updates as one (a superstep's update): the later wins, except the reducers' keys."""
    out = {**first, **then}
    for key, reduce in (("spans", merge), ("contexts", merge), ("seq", highest)):
        if key in first and key in then:
            out[key] = reduce(first[key], then[key])
    for key in ("citations", "failed"):
        if key in first and key in then:
            out[key] = first[key] + then[key]
    return out


async def understand(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    """The graph's first superstep: summarize (only when the history passes the threshold), intent,
    and — without a photo — the router's stage. One superstep, so one checkpoint instead of three:
    each superstep costs an `aput` + `aput_writes` (~4 ms of CPU here, ADR 0065)."""
    update = await summarize(state, runtime)
    if update:
        state = {**state, **{k: v for k, v in update.items() if k in ("summary", "history")}}  # intent reads the shorter history
    update = _combine(update, await intent(state, runtime))
    if not state.get("image_key"):
        update = _combine(update, await router(state, runtime))
    return update


async def intent(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    deps = rt(runtime).deps
    em = rt(runtime).emitter
    remote = deps.llm.info.provider != "offline" and "structured" in deps.llm.info.capabilities
    use_model = remote and deps.intent_mode in ("model", "auto")  # "rules": never; offline: always the rules

    async def body() -> dict:
        text = state["message"]
        c = None
        if use_model:  # the model's decomposition; the rules answer when it fails (intents.py)
            previous = next((m["text"] for m in reversed(state.get("history") or []) if m["role"] == "user"), "")
            c, why = await I.classify_with_model(deps.llm, text, deps.kb, timeout_s=deps.intent_timeout_s, previous=previous)
            if c is None:
                metrics.fallback_taken("intent_rules")
            note = f"모델 분류: {', '.join(c.intents)}" if c else f"모델 분류 실패({why}): 규칙으로 분류했어요"
            await em.stage("intent", events_pb2.STAGE_PHASE_PROGRESS, message=note[:200])
        language = None
        if c is None and Q.language(text) == "en":  # read as the Korean question it asks (english.py)
            t = E.translate(text)
            language = {"language": "en", "terms": [list(pair) for pair in t.terms], "understood": bool(t.korean)}
            text = t.korean or text
        c = c or I.classify(text, deps.kb, previous=next(iter(_earlier_user_turns(state)), ""))
        intents, queries = list(c.intents), dict(c.queries)
        if language is not None:
            return {"intents": intents, "queries": queries, "contexts": {"language_context": language}}
        # Multi-turn: a follow-up without its own subject ("그럼 뚜껑은?") inherits the last user turn's topic.
        if intents == [I.GENERAL] and state.get("history"):
            last_user = next((m["text"] for m in reversed(state["history"]) if m["role"] == "user"), "")
            if last_user:
                c2 = I.classify(f"{last_user} {text}", deps.kb)
                if c2.intents != (I.GENERAL,):
                    intents, queries = list(c2.intents), {k: f"{last_user} {text}" for k in c2.intents}
        return {"intents": intents, "queries": queries}

    return await _run_node("intent", state, runtime, body)


async def vision(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    ctx = rt(runtime)
    deps = ctx.deps

    async def body() -> dict:
        if deps.vision_llm is None or deps.images is None:  # offline: say so, never guess (answer.py)
            return {"contexts": {"vision_context": {"configured": False}}}
        return await M.classify_photo(state, deps, ctx.emitter)

    update = await _run_node("vision", state, runtime, body)
    if "vision" in update.get("failed", ()):  # FAIL_OPEN: the answer goes on from the text and says why
        update["contexts"] = {"vision_context": {"configured": True, "failed": True}}
    return _combine(update, await router(state, runtime))


async def router(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    """The router's stage events; its fan-out is the conditional edge `fan_out` (no superstep of its own)."""
    return await _run_node("router", state, runtime, _noop)


async def _noop() -> dict:
    return {}


def fan_out(state: ChatState) -> list[Send]:
    sends = []
    for i in state.get("intents") or [I.GENERAL]:
        sends.append(Send(NODE_OF[i], {**state, "query": (state.get("queries") or {}).get(i, state["message"])}))
    # Enrichment: a waste question with a known location also gets the weather (rainy day tips).
    # (Its category's Eco² character is attached by waste_rag itself: no branch of its own.)
    intents = state.get("intents") or []
    if I.WASTE in intents and state.get("location") and I.WEATHER not in intents:
        sends.append(Send("weather", {**state, "query": "", "enrichment": True}))
    return sends


def _rule_context(hits) -> tuple[list[dict], list[dict]]:
    docs, cites = [], []
    for hit in hits:
        for doc in hit.rule.docs:
            docs.append({"source_id": doc.source_id, "name": doc.name, "title": doc.title, "lines": list(doc.lines)})
            cites.append({"source_id": doc.source_id, "kind": chat_pb2.CITATION_KIND_RULE, "title": doc.title, "snippet": " / ".join(doc.lines)[:200]})
    return docs, cites


async def waste_rag(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    """What the rules say about each asked item (rules.py: the lines about it, the direct
    answer), and the Eco² character of its category (the answer's card): the character is
    looked up after the rules under the character node's own policy (timeout, breaker,
    FAIL_OPEN: no card, the rules still stand), in the same superstep — a branch of its own
    would cost a LangGraph task, its checkpoint writes and four events per answer."""
    deps = rt(runtime).deps
    category: list[str] = []

    async def body() -> dict:
        ctx = R.gather(deps.kb, state.get("query") or state["message"], previous=_earlier_user_turns(state))
        update: dict = {"contexts": {"waste_answers": ctx}}
        if ctx["findings"]:
            first = ctx["findings"][0]
            names = {r.file: r.name for r in deps.kb.rules}
            category[:] = [names.get((first["dest_files"] or [first["file"]])[0], first["name"])]
            docs, cites = R.context_docs(ctx)
            update["contexts"]["disposal_rules"] = docs
            update["citations"] = cites
        return update

    update = await _run_node("waste_rag", state, runtime, body)
    found_rules = category and "disposal_rules" in (update.get("contexts") or {})
    entry = _character_of(deps.kb, category[0]) if found_rules and I.CHARACTER not in (state.get("intents") or []) else None
    if entry is None:  # no rules, a category without a character (food waste), or the character branch runs anyway
        return update
    extra = await _run_node("character", state, runtime, lambda: _character_context(deps, entry, None), announce=False)
    return _combine(update, {k: v for k, v in extra.items() if k != "failed"})  # the card is optional


def _earlier_user_turns(state: ChatState) -> list[str]:
    """The user's earlier messages, newest first, then those the summary keeps (a follow-up's
    subject is in them)."""
    return [m["text"] for m in reversed(state.get("history") or []) if m["role"] == "user"] + asked_in_summary(state.get("summary", ""))


def _category_label(name: str) -> str:
    """A waste category as the characters' match labels spell it: "발포합성수지(스티로폼 등)" and
    "의류 및 원단" are the rule files' names of the labels "발포합성수지" and "의류및원단"."""
    return re.sub(r"\(.*?\)|\s+", "", name)


def _character_of(kb, category: str) -> dict | None:
    label = _category_label(category)
    return next((c for c in kb.characters if label and _category_label(c.get("match_label", "")) == label), None)


async def _character_context(deps: ChatDeps, entry: dict, emitter: Emitter | None) -> dict:
    """The character's context and citation: CharacterService's record (TOOL events when an
    emitter is given), else the knowledge base's entry."""
    found = None
    if deps.characters is not None:
        if emitter is not None:
            await emitter.tool("character", "character.get", f"character-{entry['code']}", events_pb2.TOOL_PHASE_STARTED)
        found = await deps.characters.get(entry["code"])
        if emitter is not None:
            await emitter.tool("character", "character.get", f"character-{entry['code']}", events_pb2.TOOL_PHASE_RESULT)
    ctx = found or {"code": entry["code"], "name": entry["name"], "match_label": entry.get("match_label", ""), "description": ""}
    cite = {"source_id": f"character:{ctx['code']}", "kind": chat_pb2.CITATION_KIND_CHARACTER, "title": ctx["name"], "snippet": ctx.get("description", "")[:200]}
    return {"contexts": {"character_context": ctx}, "citations": [cite]}


async def character(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    deps = rt(runtime).deps

    async def body() -> dict:
        text = state.get("query") or state["message"]
        entry = next((c for c in deps.kb.characters if c["name"] in text), None) if not I.asks_cast(text) else None
        if entry is None:  # "페트병 버리면 어떤 캐릭터?" → the character of the item's category
            found = R.gather(deps.kb, text)["findings"]
            names = {r.file: r.name for r in deps.kb.rules}
            entry = _character_of(deps.kb, names[(found[0]["dest_files"] or [found[0]["file"]])[0]]) if found else None
        if entry is None:  # "캐릭터 몇 개야?", "캐릭터 다 알려줘": the whole cast, from the knowledge base
            cast = [{"code": c["code"], "name": c["name"], "match_label": c.get("match_label", "")} for c in deps.kb.characters]
            cite = {"source_id": "character:catalog", "kind": chat_pb2.CITATION_KIND_CHARACTER, "title": "Eco² 캐릭터", "snippet": ", ".join(c["name"] for c in cast)}
            return {"contexts": {"character_context": {"cast": cast}}, "citations": [cite]}
        return await _character_context(deps, entry, rt(runtime).emitter)

    return await _run_node("character", state, runtime, body)


def _places_node(name: str):
    """A nearby search. Without a location it only says so (`needs_location`): the answer covers
    the other parts of the question first, then `ask_location` asks for it (NEEDS_INPUT) and
    this node runs again with the reply."""

    async def node(state: ChatState, runtime: Runtime[JobContext]) -> dict:
        deps = rt(runtime).deps
        key = f"{name}_context"

        async def body() -> dict:
            location = state.get("location")
            if not location:
                return {"contexts": {key: {"declined": True, "places": []} if state.get("located") else {"needs_location": True, "places": []}}}
            if deps.places is None:
                return {"contexts": {key: {"unavailable": True, "places": []}}}
            em = rt(runtime).emitter
            await em.tool(name, "location.search_nearby", f"{name}-nearby", events_pb2.TOOL_PHASE_STARTED)
            places = await deps.places.nearby(location["latitude"], location["longitude"], radius_m=deps.search_radius_m, limit=deps.places_limit, collection_points=name == "collection_point")
            await em.tool(name, "location.search_nearby", f"{name}-nearby", events_pb2.TOOL_PHASE_RESULT, message=f"{len(places)} places")
            cites = [{"source_id": f"place:{p['id']}", "kind": chat_pb2.CITATION_KIND_PLACE, "title": p["name"], "snippet": p.get("address", "")} for p in places]
            return {"contexts": {key: {"places": places}}, "citations": cites}

        return await _run_node(name, state, runtime, body)

    node.__name__ = name
    return node


def waiting_for_location(state: ChatState) -> list[str]:
    """The places intents that still need the user's location."""
    contexts = state.get("contexts") or {}
    return [i for i in state.get("intents") or [] if i in (I.LOCATION, I.COLLECTION_POINT) and (contexts.get(REQUIRED[i]) or {}).get("needs_location")]


async def ask_location(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    """Human in the loop: the graph stops here (NEEDS_INPUT) after answering what it could;
    ProvideInput resumes it with the location or `declined`. The one interrupt() of the node,
    outside any retry loop: LangGraph matches resume values to interrupt() calls by their order
    within the task."""
    reply = interrupt({"input_id": "location", "kind": "location", "prompt": "가까운 곳을 찾으려면 현재 위치가 필요해요. 위치를 공유해 주시겠어요?"})
    location = (reply or {}).get("location") if not (reply or {}).get("declined") else None
    return {"located": True, **({"location": location} if location else {})}


def after_ask(state: ChatState) -> list[Send]:
    return [Send(NODE_OF[i], {**state, "query": (state.get("queries") or {}).get(i, state["message"])}) for i in waiting_for_location(state)]


async def bulk_waste(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    ctx = rt(runtime)
    deps = ctx.deps
    # where the 시·군·구 and the item may be named: the branch's sub-query, the message, earlier turns
    texts = [state.get("query") or state["message"], state["message"], *(m["text"] for m in reversed(state.get("history") or []) if m["role"] == "user")]

    async def body() -> dict:
        return await BW.lookup(kb=deps.kb, llm=deps.llm, fees=deps.bulk_waste, texts=texts, emitter=ctx.emitter, iterations=deps.bulk_waste_tool_iterations)

    return await _run_node("bulk_waste", state, runtime, body)


def _price_context(kb, text: str, found) -> dict:
    """The price survey's rows for the items found, in the text's region, with the quantity asked ("10kg")."""
    region = kb.region_of(text)
    items = [
        {"name": p.name + (f"({p.form})" if p.form and p.form not in p.name else ""), "price": p.prices.get(region, p.prices.get("nationwide")), "region": region, "region_name": kb.regions[region]}
        for p in found
    ]
    kg = sum(n * {"kg": 1, "g": 0.001, "톤": 1000}[u] for n, u in Q.read_part(text).quantity if u in ("kg", "g", "톤"))
    return {"items": items, "survey": kb.price_info, "kg": kg}


async def recyclable_price(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    deps = rt(runtime).deps

    async def body() -> dict:
        text = state.get("query") or state["message"]
        ctx = _price_context(deps.kb, text, deps.kb.search_prices(text))
        info = deps.kb.price_info
        cites = [{"source_id": f"price:{info.get('date')}", "kind": chat_pb2.CITATION_KIND_PRICE, "title": f"{info.get('source')} ({info.get('date')})", "url": info.get("url", ""), "snippet": ", ".join(f"{i['name']} {i['price']}원/kg" for i in ctx["items"])}] if ctx["items"] else []
        return {"contexts": {"price_context": ctx}, "citations": cites}

    return await _run_node("recyclable_price", state, runtime, body)


async def weather(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    deps = rt(runtime).deps
    enrichment = bool(state.get("enrichment"))

    async def body() -> dict:
        loc = state.get("location")
        if deps.weather is None:
            return {"contexts": {"weather_context": {"configured": False}}} if not enrichment else {}
        if not loc:
            return {"contexts": {"weather_context": {"configured": True, "summary": ""}}}
        w = await deps.weather.current(loc["latitude"], loc["longitude"])
        ctx = {"configured": True, **w}
        if enrichment and w.get("precipitation_mm", 0) > 0:
            ctx["tip"] = "지금 비가 와요: 종이류는 젖지 않게 묶어서 배출해 주세요."
        cite = {"source_id": "weather:current", "kind": chat_pb2.CITATION_KIND_WEATHER, "title": "현재 날씨", "snippet": w.get("summary", "")}
        return {"contexts": {"weather_context": ctx}, "citations": [cite]}

    return await _run_node("weather", state, runtime, body)


async def web_search(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    deps = rt(runtime).deps

    async def body() -> dict:
        if deps.web_search is None:
            return {"contexts": {"web_search_context": {"configured": False}}}
        results = await deps.web_search.search(state.get("query") or state["message"], limit=3)
        cites = [{"source_id": f"web:{r['url']}", "kind": chat_pb2.CITATION_KIND_WEB, "title": r["title"], "url": r["url"], "snippet": r.get("snippet", "")[:200]} for r in results]
        return {"contexts": {"web_search_context": {"configured": True, "results": results}}, "citations": cites}

    return await _run_node("web_search", state, runtime, body)


async def image_generation(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    ctx = rt(runtime)
    deps = ctx.deps
    made: dict = {}  # the generated bytes survive a retried upload (same bytes → same key)

    async def body() -> dict:
        if deps.image_model is None or deps.images is None:  # ECO2_CHAT_IMAGE_MODEL empty
            return {"contexts": {"image_generation_context": {"configured": False}}}
        return await M.generate_and_store(state, deps, ctx.emitter, made)

    update = await _run_node("image_generation", state, runtime, body)
    if "image_generation" in update.get("failed", ()):
        update["contexts"] = {"image_generation_context": {"configured": True, "failed": True}}
    return update


async def general(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    return await _run_node("general", state, runtime, _noop)


def support(intent: str, contexts: dict) -> str:
    """How well the gathered context answers one intent: "ok", "weak" (part of it, or only what
    is not known) or "none" (nothing to answer from) — the grade that starts the fallback chain."""
    need = REQUIRED.get(intent)
    if need is None:
        return "ok"
    got = contexts.get(need)
    if intent == I.WASTE:
        ctx = contexts.get("waste_answers") or {}
        if not ctx.get("findings"):
            return "none"
        return "weak" if ctx.get("unknown") or ctx.get("local") else "ok"
    if intent == I.RECYCLABLE_PRICE:
        return "ok" if got and got.get("items") else "none"
    return "ok" if got else "none"


async def aggregator(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    """Checks each intent's context against the contract (REQUIRED) and grades its support;
    an intent without enough support goes down the fallback chain until one step answers it:
    1. retry: a rewritten query (the whole message and the previous user turn),
    2. web search (when configured), 3. an honest "not sure" answer that says what is not
    known and where to find it, 4. a clarifying question when the message names nothing."""
    deps = rt(runtime).deps

    async def body() -> dict:
        contexts = dict(state.get("contexts") or {})
        intents = list(state.get("intents") or [])
        update: dict = {}
        cites: list[dict] = []
        pending = set(waiting_for_location(state))
        for intent in intents:
            if intent in pending or support(intent, contexts) == "ok":
                continue
            if intent in (I.LOCATION, I.COLLECTION_POINT):  # the places branch failed (LocationService down): say so
                metrics.fallback_taken("places_unavailable")
                contexts[REQUIRED[intent]] = {"unavailable": True, "places": []}
            elif intent == I.BULK_WASTE:  # the fee API failed (FALLBACK): the general rule, honestly without fees
                metrics.fallback_taken("bulk_waste_unavailable")
                contexts["bulk_waste_context"], extra = BW.unavailable(deps.kb)
                cites += extra
            elif intent in (I.WASTE, I.RECYCLABLE_PRICE):
                step = await _fallback(intent, state, contexts, deps)
                metrics.fallback_taken(step)
                if step in ("unsure", "clarify"):
                    update[step] = True
                    if step == "clarify" and intent == I.WASTE:
                        contexts["waste_answers"] = {**(contexts.get("waste_answers") or {}), "clarify": True}
                if step == "web_search":
                    update["intents"] = [*intents, I.WEB_SEARCH] if I.WEB_SEARCH not in intents else intents
            else:
                continue
            update["fallback_used"] = True
        if update.get("fallback_used") or contexts != (state.get("contexts") or {}):
            update["contexts"] = contexts
        if cites or contexts.get("_cites"):
            update["citations"] = cites + contexts.pop("_cites", [])
        return update

    return await _run_node("aggregator", state, runtime, body)


async def _fallback(intent: str, state: ChatState, contexts: dict, deps: ChatDeps) -> str:
    """One intent down the chain; the name of the step that answered it (contexts updated)."""
    earlier = _earlier_user_turns(state)[:1]
    ctx = contexts.get("waste_answers") or {}
    # 1. retry with a rewritten query: the whole message, with the previous turn for a follow-up
    if intent == I.WASTE and ctx.get("unknown"):
        retried = R.retry(deps.kb, ctx, earlier)
        if retried is not None:
            contexts["waste_answers"] = retried
            docs, cites = R.context_docs(retried)
            contexts["disposal_rules"] = docs
            contexts["_cites"] = cites
            return "rules_retry"
    if intent == I.RECYCLABLE_PRICE:
        items = deps.kb.search_prices(" ".join([state["message"], *earlier]))
        if items:
            contexts["price_context"] = _price_context(deps.kb, state["message"], items)
            return "rules_retry"
    # 2. web search
    if deps.web_search is not None:
        results = await deps.web_search.search(state["message"], limit=3)
        if results:
            contexts["web_search_context"] = {"configured": True, "results": results}
            return "web_search"
    # 3. what is not known, said plainly; 4. or ask what the item is when nothing is named
    if intent == I.WASTE and ctx.get("clarify") and not ctx.get("findings") and not ctx.get("unknown"):
        return "clarify"
    return "unsure"


def answer_now(state: ChatState) -> list[str]:
    """The intents this answer covers: all but those answered already and those still waiting for the location."""
    done, pending = set(state.get("answered") or []), set(waiting_for_location(state))
    return [i for i in state.get("intents") or [I.GENERAL] if i not in done and i not in pending]


def grounding_of(state: ChatState, intents: list[str] | None = None) -> Grounding:
    history = [Message("user" if m["role"] == "user" else "assistant", m["text"]) for m in state.get("history") or []]
    return Grounding(
        question=state["message"], intents=intents if intents is not None else list(state.get("intents") or [I.GENERAL]), contexts=dict(state.get("contexts") or {}),
        history=history, summary=state.get("summary", ""), unsure=bool(state.get("unsure")), clarify=bool(state.get("clarify")),
    )


async def answer(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    ctx = rt(runtime)
    deps, em = ctx.deps, ctx.emitter
    now = answer_now(state)
    grounding = grounding_of(state, now)
    before = state.get("answer") or ""  # the part answered before a NEEDS_INPUT (same turn)
    emitted: list[str] = []

    async def stream_with(llm) -> None:
        # The model's pieces go straight to TOKEN events: no LangGraph stream writer/callbacks, no
        # await per token (the outbox sends them in batches). A fixed number of pieces per event,
        # never a time window: a re-run re-emits the same seqs for the same text.
        per_event = em.tokens_per_event
        buffer: list[str] = []
        outbox = em.outbox
        async for piece in llm.stream([], grounding=grounding, max_tokens=deps.answer_max_tokens):
            if ctx.cancelled.is_set():
                raise asyncio.CancelledError("job cancelled")
            buffer.append(piece)
            if len(buffer) >= per_event or not emitted:
                text = "".join(buffer)
                buffer.clear()
                emitted.append(text)
                if em.first_token_at is None:
                    em.first_token_at = time.monotonic()
                em.token(text)
                if outbox.backlog > outbox.high_water:  # Valkey is not keeping up: wait for it
                    await em.drain()
        if buffer:
            emitted.append("".join(buffer))
            em.token(emitted[-1])

    async def body() -> dict:
        if emitted:  # tokens went out: a retry would repeat them
            raise LLMError("answer stream broke after tokens were sent", retryable=False)
        if before:  # the rest of an answer begins on a line of its own
            emitted.append("\n")
            em.token("\n")
        await stream_with(deps.llm)
        return {}

    with span("node.answer"):
        started = time.monotonic()
        await em.stage("answer", events_pb2.STAGE_PHASE_STARTED)
        fallback = False
        try:
            await deps.policy.run("answer", body)
        except NodeFailed as failed:
            if deps.llm.info.provider == "offline" or emitted:
                metrics.node_finished("answer", "failed", time.monotonic() - started)
                await em.stage("answer", events_pb2.STAGE_PHASE_FAILED, message=failed.cause[:200])
                raise
            # Model fallback: the offline composer answers from the same grounding.
            fallback = True
            metrics.fallback_taken("offline_model")
            await em.stage("answer", events_pb2.STAGE_PHASE_PROGRESS, message="모델이 응답하지 않아 내장 지식으로 답할게요")
            await stream_with(metrics.MeteredLLM(OfflineLLM(compose)))
        elapsed = time.monotonic() - started
        metrics.node_finished("answer", "ok", elapsed)
        await em.stage("answer", events_pb2.STAGE_PHASE_FINISHED, elapsed_s=elapsed)
        await em.drain()
        update: dict = {"answer": before + "".join(emitted), "answered": [*(state.get("answered") or []), *now], "spans": {"answer": [started, time.monotonic()]}, "seq": em.seq}
        if fallback:
            update["fallback_used"] = True
        return update


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
    level = chat_pb2.GRADE_LEVEL_GOOD if score >= 0.8 else chat_pb2.GRADE_LEVEL_ACCEPTABLE if score >= 0.5 else chat_pb2.GRADE_LEVEL_POOR
    return {"level": level, "score": score, "grader": "rule", "reasons": reasons}


async def evaluate(state: ChatState, runtime: Runtime[JobContext]) -> dict:
    deps = rt(runtime).deps

    async def body() -> dict:
        grade = rule_grade(state)
        if deps.llm.info.provider != "offline" and "structured" in deps.llm.info.capabilities:
            prompt = [Message("user", f"질문: {state['message']}\n답변: {state.get('answer', '')}\n근거: {list((state.get('contexts') or {}).keys())}\n답변이 근거에 맞고 질문에 답하는지 0~1 점수와 이유를 주세요.")]
            try:
                llm = await deps.llm.structured(prompt, LLMGrade)
                grade["score"] = round((grade["score"] + llm.score) / 2, 3)
                grade["grader"] = f"rule+llm:{deps.llm.info.name}"
                grade["reasons"] = grade["reasons"] + llm.reasons[:3]
            except LLMError:
                grade["reasons"].append("LLM 평가 실패: 규칙 평가만 사용")
        return {"grade": grade}

    return await _run_node("evaluate", state, runtime, body)


def after_intent(state: ChatState) -> str | list[Send]:
    return "vision" if state.get("image_key") else fan_out(state)


def after_aggregator(state: ChatState) -> str:
    """Answer what can be answered now; ask for the location first only when nothing else can be."""
    if not answer_now(state) and waiting_for_location(state) and not state.get("located"):
        return "ask_location"
    return "answer"


def after_answer(state: ChatState) -> str:
    return "ask_location" if waiting_for_location(state) and not state.get("located") else "evaluate"


def build_graph() -> StateGraph:
    g = StateGraph(ChatState, context_schema=JobContext)
    g.add_node("intent", understand)
    g.add_node("vision", vision)
    for name, fn in {
        "waste_rag": waste_rag, "character": character, "location": _places_node("location"), "collection_point": _places_node("collection_point"),
        "bulk_waste": bulk_waste, "recyclable_price": recyclable_price, "weather": weather, "web_search": web_search,
        "image_generation": image_generation, "general": general,
    }.items():
        g.add_node(name, fn)
        g.add_edge(name, "aggregator")
    g.add_node("aggregator", aggregator)
    g.add_node("answer", answer)
    g.add_node("ask_location", ask_location)
    g.add_node("evaluate", evaluate)
    g.add_edge(START, "intent")
    g.add_conditional_edges("intent", after_intent, ["vision", *NODE_OF.values()])
    g.add_conditional_edges("vision", fan_out, [*NODE_OF.values()])
    g.add_conditional_edges("aggregator", after_aggregator, ["answer", "ask_location"])
    g.add_conditional_edges("answer", after_answer, ["ask_location", "evaluate"])
    g.add_conditional_edges("ask_location", after_ask, [NODE_OF[I.LOCATION], NODE_OF[I.COLLECTION_POINT]])
    g.add_edge("evaluate", END)
    return g


def citations_of(state: ChatState) -> list[chat_pb2.Citation]:
    seen, out = set(), []
    for c in state.get("citations") or []:
        if c["source_id"] in seen:
            continue
        seen.add(c["source_id"])
        out.append(chat_pb2.Citation(source_id=c["source_id"], kind=c["kind"], title=c.get("title", ""), snippet=c.get("snippet", ""), url=c.get("url", "")))
    return out


def result_of(state: ChatState, *, message_id: str) -> chat_pb2.ChatResult:
    from eco2.character.v1 import character_pb2
    from eco2.location.v1 import location_pb2

    grade = state.get("grade") or rule_grade(state)
    result = chat_pb2.ChatResult(
        conversation_id=state["conversation_id"], message_id=message_id, answer=state.get("answer", ""),
        intents=[INTENT_ENUM[i] for i in state.get("intents") or []], citations=citations_of(state),
        grade=chat_pb2.Grade(level=grade["level"], score=grade["score"], grader=grade["grader"], reasons=grade["reasons"]),
        fallback_used=bool(state.get("fallback_used")),
    )
    contexts = state.get("contexts") or {}
    result.image_key = (contexts.get("image_generation_context") or {}).get("image_key", "")
    ch = contexts.get("character_context")
    if ch and ch.get("pb"):
        result.character.CopyFrom(character_pb2.Character.FromString(base64.b64decode(ch["pb"])))
    for key in ("collection_point_context", "location_context"):
        for p in (contexts.get(key) or {}).get("places") or []:
            if p.get("pb"):
                result.places.append(location_pb2.PlaceHit.FromString(base64.b64decode(p["pb"])))
    return result
