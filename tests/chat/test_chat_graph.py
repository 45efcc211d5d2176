"""The chat graph itself on the real checkpointer (the product's TurnCheckpointer on the session's embedded
PostgreSQL): resume after interrupt when the branch's tool fails once, multi-intent branches that
run concurrently (two slow tools over real HTTP), summarisation past the threshold."""

from __future__ import annotations

import time
import uuid

import pytest
from langgraph.types import Command

from eco2.events.v1 import events_pb2
from eco2.services.chat.answer import compose
from eco2.services.chat.checkpoints import TurnCheckpointer, open_pool
from eco2.services.chat.deps import ChatDeps, JobContext
from eco2.services.chat.emitter import Emitter
from eco2.services.chat.graph import build_graph
from eco2.services.chat.grpc_clients import GrpcCharacters, GrpcPlaces
from eco2.services.chat.policy import PolicyRunner
from eco2.services.chat.result import result_of
from eco2.services.chat.state import checkpoint_serializer
from eco2.services.chat.tools.http import OpenMeteoWeather, TavilySearch
from eco2.services.knowledge import kb
from eco2.services.llm.offline import OfflineLLM
from support.fake_tools import FakeTools
from support.servers import channel, env, running


class Recorder:
    """The event sink: keeps what the graph published (the product's sink is EventPublisher)."""

    def __init__(self) -> None:
        self.events: list[events_pb2.Event] = []

    async def publish(self, event: events_pb2.Event) -> bool:
        self.events.append(event)
        return True


@pytest.fixture(scope="module")
async def graph(service_env):
    pool = await open_pool(service_env["DATABASE_URL"], max_size=4)
    saver = TurnCheckpointer(pool, serde=checkpoint_serializer())  # the product's: safe types only
    await saver.setup()
    yield saver.compile(build_graph())
    await pool.close()


def state(message: str, **extra) -> dict:
    job = f"chat-{uuid.uuid4().hex}"
    return {
        "job_id": job,
        "user_id": "u",
        "conversation_id": str(uuid.uuid4()),
        "message": message,
        "image_key": "",
        "location": None,
        "history": [],
        "summary": "",
        **extra,
    }


class FlakyOnce:
    """The real GrpcPlaces behind a link that drops the first call (a network blip)."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0

    async def nearby(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            raise ConnectionResetError("link dropped")
        return await self.inner.nearby(*args, **kwargs)


async def test_resume_uses_the_answer_even_when_the_branch_retries(graph, service_env):
    """The bug of the first version: the policy retried the node body, which called interrupt()
    a second time; LangGraph matches resume values to interrupt() calls by their order in the
    task, found none for the second call and asked the user again. The question is now its own
    node (ask_location), and the branch that searches retries without asking again."""
    from eco2.services.location.app import create as create_location

    with env(service_env):
        location_app = create_location()
    async with running(location_app, metrics=False) as location:
        async with channel(location) as ch:
            places = FlakyOnce(GrpcPlaces(ch))
            deps = ChatDeps(kb=kb.load(), llm=OfflineLLM(compose), policy=PolicyRunner(), places=places)
            s = state("근처 수거함 알려줘")
            config = {"configurable": {"thread_id": s["job_id"]}}
            sink = Recorder()
            out = await graph.ainvoke(s, config, context=JobContext(deps, Emitter(sink, s["job_id"], 1)))
            asked = out["__interrupt__"]
            assert [i.value["input_id"] for i in asked] == ["location"]
            snapshot = await graph.aget_state(config)
            assert snapshot.next == ("ask_location",) and [i.id for i in snapshot.interrupts] == [asked[0].id]
            out = await graph.ainvoke(
                Command(resume={"location": {"latitude": 37.5663, "longitude": 126.9779}}),
                config,
                context=JobContext(deps, Emitter(sink, s["job_id"], 100)),
            )
    assert "__interrupt__" not in out, "asked again instead of using the answer"
    assert places.calls == 2  # failed once, retried under the policy with the same answer
    found = out["contexts"]["collection_point_context"]["places"]
    assert found and found[0]["name"] in out["answer"] and found[0]["name"].startswith("[샘플]")
    assert out["location"] == {"latitude": 37.5663, "longitude": 126.9779}


async def test_two_slow_tools_run_concurrently(graph):
    delay = 1.0
    async with FakeTools(delay_s=delay) as tools:
        weather, search = OpenMeteoWeather(tools.base_url), TavilySearch(tools.base_url, "tvly-test")
        try:
            deps = ChatDeps(
                kb=kb.load(), llm=OfflineLLM(compose), policy=PolicyRunner(), weather=weather, web_search=search
            )
            s = state(
                "오늘 날씨 어때? 그리고 최신 재활용 뉴스 검색해줘",
                location={"latitude": 37.5663, "longitude": 126.9779},
            )
            sink = Recorder()
            started = time.monotonic()
            out = await graph.ainvoke(
                s, {"configurable": {"thread_id": s["job_id"]}}, context=JobContext(deps, Emitter(sink, s["job_id"], 1))
            )
            total = time.monotonic() - started
        finally:
            await weather.aclose()
            await search.aclose()
    assert out["intents"] == ["weather", "web_search"]
    assert "현재 날씨: 비" in out["answer"] and "재활용 뉴스 0" in out["answer"]
    (p1, s1, e1), (p2, s2, e2) = sorted(tools.calls)
    assert {p1, p2} == {"/search", "/v1/forecast"}
    # both requests were in flight at the same time (sequential: the second starts after the first ends)
    assert max(s1, s2) < min(e1, e2), tools.calls
    w, ws = out["spans"]["weather"], out["spans"]["web_search"]
    assert max(w[0], ws[0]) < min(w[1], ws[1])
    # the whole turn ≈ the slower tool, not the sum (generous margin for a busy machine)
    assert delay <= total < 2 * delay - 0.2, total


async def test_history_past_the_threshold_is_summarised(graph):
    history = []
    for q, a in [
        ("우유팩 어떻게 버려?", "종이팩으로 배출해요."),
        ("캔은?", "캔류로 배출해요."),
        ("유리병은?", "유리병류로 배출해요."),
        ("건전지는?", "전지 수거함에 넣어요."),
        ("스티로폼은?", "발포합성수지로 배출해요."),
    ]:
        history += [{"role": "user", "text": q}, {"role": "assistant", "text": a}]
    deps = ChatDeps(
        kb=kb.load(),
        llm=OfflineLLM(compose),
        policy=PolicyRunner(),
        summary_threshold_tokens=20,
        keep_recent_messages=4,
    )
    s = state("투명 페트병은 어떻게 버려?", history=history)
    sink = Recorder()
    out = await graph.ainvoke(
        s, {"configurable": {"thread_id": s["job_id"]}}, context=JobContext(deps, Emitter(sink, s["job_id"], 1))
    )
    # the six oldest messages are folded into the summary, the four newest are kept as they are;
    # the summary keeps each question with its answer's direct answer, whole
    assert out["history"] == history[-4:]
    for old in (
        "우유팩 어떻게 버려? → 종이팩으로 배출해요.",
        "캔은? → 캔류로 배출해요.",
        "유리병은? → 유리병류로 배출해요.",
    ):
        assert old in out["new_summary"], out["new_summary"]
    assert "건전지는?" not in out["new_summary"]
    stages = [(e.node, e.stage_info.phase) for e in sink.events if e.kind == events_pb2.EVENT_KIND_STAGE]
    assert ("summarize", events_pb2.STAGE_PHASE_FINISHED) in stages
    assert "압착" in out["answer"]
    # below the threshold nothing is summarised
    deps.summary_threshold_tokens = 100_000
    s = state("투명 페트병은 어떻게 버려?", history=history)
    out = await graph.ainvoke(
        s, {"configurable": {"thread_id": s["job_id"]}}, context=JobContext(deps, Emitter(Recorder(), s["job_id"], 1))
    )
    assert not out.get("new_summary") and out["history"] == history


async def test_a_waste_answer_stands_when_the_character_lookup_fails(graph, service_env):
    """waste_rag attaches its category's character under the character policy (FAIL_OPEN): with
    CharacterService unreachable the rules are answered, with no card and no failed stage."""
    from eco2.services.character.app import create as create_character
    from eco2.services.runtime.clients import channel as grpc_channel

    ch = grpc_channel("127.0.0.1:1", default_timeout_s=1.0)  # nothing listens there: UNAVAILABLE
    try:
        deps = ChatDeps(
            kb=kb.load(), llm=OfflineLLM(compose), policy=PolicyRunner(), characters=GrpcCharacters(ch, cache_s=300)
        )
        s = state("투명 페트병은 어떻게 버려?")
        sink = Recorder()
        out = await graph.ainvoke(
            s, {"configurable": {"thread_id": s["job_id"]}}, context=JobContext(deps, Emitter(sink, s["job_id"], 1))
        )
    finally:
        await ch.close()
    assert "압착" in out["answer"] and "Eco² 캐릭터" not in out["answer"]
    assert "character_context" not in out["contexts"] and not out.get("failed")
    assert not [
        e
        for e in sink.events
        if e.kind == events_pb2.EVENT_KIND_STAGE and e.stage_info.phase == events_pb2.STAGE_PHASE_FAILED
    ]
    # and with CharacterService answering, the card is there
    with env(service_env):
        character_app = create_character()
    async with running(character_app, metrics=False) as character, channel(character) as cch:
        deps = ChatDeps(kb=kb.load(), llm=OfflineLLM(compose), policy=PolicyRunner(), characters=GrpcCharacters(cch))
        s = state("투명 페트병은 어떻게 버려?")
        out = await graph.ainvoke(
            s,
            {"configurable": {"thread_id": s["job_id"]}},
            context=JobContext(deps, Emitter(Recorder(), s["job_id"], 1)),
        )
    assert out["contexts"]["character_context"]["code"] == "char-petty"
    assert "이 품목을 맡은 Eco² 캐릭터: 페티 (무색페트병)" in out["answer"]


async def test_the_card_and_the_places_come_back_from_the_checkpoint(graph, service_env):
    """The character card (waste_rag, before the location question) and the places (after it)
    are plain typed values in the state: a second process resumes the turn from the Postgres
    checkpoint alone (a fresh graph on its own pool, the product's strict serializer) and the
    result carries them as the contract's messages."""
    from eco2.location.v1 import location_pb2
    from eco2.services.character.app import create as create_character
    from eco2.services.location.app import create as create_location

    with env(service_env):
        character_app, location_app = create_character(), create_location()
    async with running(character_app, metrics=False) as character, running(location_app, metrics=False) as location:
        async with channel(character) as cch, channel(location) as lch:
            deps = ChatDeps(
                kb=kb.load(),
                llm=OfflineLLM(compose),
                policy=PolicyRunner(),
                places=GrpcPlaces(lch),
                characters=GrpcCharacters(cch),
            )
            s = state("투명 페트병 어떻게 버려? 근처 수거함도 알려줘")
            config = {"configurable": {"thread_id": s["job_id"]}}
            out = await graph.ainvoke(s, config, context=JobContext(deps, Emitter(Recorder(), s["job_id"], 1)))
            assert out["__interrupt__"] and out["card"]["code"] == "char-petty"
            pool = await open_pool(service_env["DATABASE_URL"], max_size=2, min_size=1)
            try:
                other = TurnCheckpointer(pool, serde=checkpoint_serializer()).compile(build_graph())
                saved = (await other.aget_state(config)).values
                assert saved["card"]["name"] == "페티" and not saved.get("places")
                out = await other.ainvoke(
                    Command(resume={"location": {"latitude": 37.5663, "longitude": 126.9779}}),
                    config,
                    context=JobContext(deps, Emitter(Recorder(), s["job_id"], 100)),
                )
            finally:
                await pool.close()
    assert "__interrupt__" not in out
    result = result_of(out, message_id="m")
    assert (
        result.character.code == "char-petty"
        and result.character.name == "페티"
        and result.character.match_label == "무색페트병"
    )
    assert result.places and result.places[0].place.name in result.answer
    assert all(p.place.source == location_pb2.PLACE_SOURCE_SAMPLE and p.distance_text for p in result.places)
    assert [c.source_id for c in result.citations].count("character:char-petty") == 1
