"""OpenAI and Gemini adapters through their real SDKs (`openai`, `google-genai`) against fake
servers that speak the providers' wire formats over real HTTP on loopback; then the whole chat
stack on each provider: 429/500/timeouts retried under the node policy, then fallen back."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from eco2.chat.v1 import chat_pb2, chat_pb2_grpc
from eco2.events.v1 import events_pb2
from eco2.services.chat.nodes.evaluate import LLMGrade
from eco2.services.llm import create_llm
from eco2.services.llm.ports import Grounding, LLMError, Message, ToolSpec
from support.fake_llm import FakeModelServer, Script
from support.identity import as_user
from support.servers import env, running

SEARCH = ToolSpec(
    "search_rules",
    "분리배출 규정 검색",
    {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
)
GROUNDING = Grounding(
    question="투명 페트병은 어떻게 버려?",
    intents=["waste"],
    contexts={"disposal_rules": [{"title": "무색페트병", "lines": ["라벨 제거"]}]},
)


@pytest.fixture
async def fake():
    async with FakeModelServer(Script(tokens=["투명 ", "페트병은 ", "라벨을 ", "떼고 ", "압착해요."])) as server:
        yield server


def openai_llm(fake, timeout_s: float = 5.0):
    return create_llm("gpt-5-mini", openai_api_key="sk-test", openai_base_url=fake.openai_base_url, timeout_s=timeout_s)


def gemini_llm(fake, timeout_s: float = 5.0):
    return create_llm(
        "gemini-2.5-flash", gemini_api_key="g-test", gemini_base_url=fake.gemini_base_url, timeout_s=timeout_s
    )


@pytest.mark.parametrize("make", [openai_llm, gemini_llm], ids=["openai", "gemini"])
async def test_streaming_through_the_sdk(fake, make):
    llm = make(fake)
    pieces = [p async for p in llm.stream([], grounding=GROUNDING, max_tokens=300)]
    assert pieces == fake.script.tokens
    req = fake.requests[-1]
    if req["provider"] == "openai":
        body = req["body"]
        assert req["path"] == "/v1/chat/completions" and body["stream"] is True and body["model"] == "gpt-5-mini"
        assert body["max_completion_tokens"] == 300 and req["headers"]["Authorization"] == "Bearer sk-test"
        roles = [m["role"] for m in body["messages"]]
        assert roles[0] == "system" and roles[-1] == "user"
        assert "<user_message>투명 페트병은 어떻게 버려?</user_message>" in body["messages"][-1]["content"]
        assert any("라벨 제거" in m["content"] for m in body["messages"] if m["role"] == "system")  # the grounding
    else:
        assert (
            req["path"].endswith("/models/gemini-2.5-flash:streamGenerateContent") and req["query"].get("alt") == "sse"
        )
        body = req["body"]
        assert req["headers"]["x-goog-api-key"] == "g-test"
        assert (
            "이코" in body["systemInstruction"]["parts"][0]["text"]
            and "라벨 제거" in body["systemInstruction"]["parts"][0]["text"]
        )
        assert body["contents"][-1]["role"] == "user" and "투명 페트병" in body["contents"][-1]["parts"][0]["text"]
        assert body["generationConfig"]["maxOutputTokens"] == 300


@pytest.mark.parametrize("make", [openai_llm, gemini_llm], ids=["openai", "gemini"])
async def test_tool_calls_through_the_sdk(fake, make):
    fake.script.tool_args = {"query": "우유팩"}
    calls = await make(fake).tool_calls([Message("user", "우유팩 규정 찾아줘")], [SEARCH])
    assert [(c.name, c.arguments) for c in calls] == [("search_rules", {"query": "우유팩"})] and calls[0].id
    body = fake.requests[-1]["body"]
    if fake.requests[-1]["provider"] == "openai":
        assert body["tools"][0] == {
            "type": "function",
            "function": {"name": "search_rules", "description": SEARCH.description, "parameters": SEARCH.parameters},
        }
    else:
        decl = body["tools"][0]["functionDeclarations"][0]
        # proto3 JSON: the API accepts lowerCamel or the original snake_case field name (the SDK sends either)
        assert (
            decl["name"] == "search_rules"
            and (decl.get("parametersJsonSchema") or decl.get("parameters_json_schema")) == SEARCH.parameters
        )


@pytest.mark.parametrize("make", [openai_llm, gemini_llm], ids=["openai", "gemini"])
async def test_structured_output_through_the_sdk(fake, make):
    fake.script.structured = {"score": 0.75, "reasons": ["라벨 언급"]}
    grade = await make(fake).structured([Message("user", "평가해 주세요")], LLMGrade)
    assert grade == LLMGrade(score=0.75, reasons=["라벨 언급"])
    body = fake.requests[-1]["body"]
    if fake.requests[-1]["provider"] == "openai":
        assert (
            body["response_format"]["type"] == "json_schema"
            and body["response_format"]["json_schema"]["name"] == "LLMGrade"
        )
        assert body["response_format"]["json_schema"]["schema"]["properties"]["score"]["maximum"] == 1
    else:
        assert body["generationConfig"]["responseMimeType"] == "application/json"
        schema = body["generationConfig"].get("responseJsonSchema") or body["generationConfig"].get(
            "response_json_schema"
        )
        assert "score" in schema["properties"]
    # a reply that does not match the schema is a (retryable) model error, not a crash
    fake.script.structured = {"score": 7}
    with pytest.raises(LLMError) as err:
        await make(fake).structured([Message("user", "평가해 주세요")], LLMGrade)
    assert err.value.retryable


@pytest.mark.parametrize("make", [openai_llm, gemini_llm], ids=["openai", "gemini"])
@pytest.mark.parametrize("status,retryable", [(429, True), (500, True), (400, False)])
async def test_http_errors_become_typed_model_errors(fake, make, status, retryable):
    fake.faults = [status]
    with pytest.raises(LLMError) as err:
        _ = [p async for p in make(fake).stream([], grounding=GROUNDING)]
    assert (err.value.status, err.value.retryable) == (status, retryable)
    assert len(fake.requests) == 1, "the SDK must not retry on its own: retries belong to the policy table"


@pytest.mark.parametrize("make", [openai_llm, gemini_llm], ids=["openai", "gemini"])
async def test_a_hung_model_times_out(fake, make):
    fake.faults = [("delay", 5.0)]
    started = asyncio.get_running_loop().time()
    with pytest.raises(LLMError) as err:
        _ = [p async for p in make(fake, timeout_s=0.5).stream([], grounding=GROUNDING)]
    assert err.value.retryable and asyncio.get_running_loop().time() - started < 4.0


# ------------------------------------------------------------------ the whole stack on a remote model


@pytest.fixture(scope="module")
async def remote_stacks(service_env):
    """EventService + two ChatServices (OpenAI and Gemini models, each on its own job queue)."""
    from eco2.services.chat.app import create as create_chat
    from eco2.services.events.app import create as create_events

    async with FakeModelServer() as oa, FakeModelServer() as gm:
        with env(service_env):
            events_app = create_events()
        async with running(events_app, metrics=False) as events:
            base = {
                **service_env,
                "ECO2_EVENTS_ADDR": f"127.0.0.1:{events.port}",
                "ECO2_CHARACTER_ADDR": "127.0.0.1:1",
                "ECO2_LOCATION_ADDR": "127.0.0.1:1",
                "ECO2_IMAGES_ADDR": "127.0.0.1:1",
                "ECO2_CHAT_WORKERS": "4",
                "ECO2_CHAT_CLAIMERS": "1",
                "ECO2_CHAT_MODEL_TIMEOUT_S": "1",
                "ECO2_CHAT_INTENT_MODE": "rules",
            }  # these tests count the answer's model requests (model intents: test_chat_bulk_intent.py)
            with env(
                {
                    **base,
                    "ECO2_CHAT_MODEL": "gpt-5-mini",
                    "ECO2_OPENAI_API_KEY": "sk-test",
                    "ECO2_OPENAI_BASE_URL": oa.openai_base_url,
                    "ECO2_CHAT_JOB_KIND": f"chat-oa-{uuid.uuid4().hex[:6]}",
                }
            ):
                oa_app = create_chat()
            with env(
                {
                    **base,
                    "ECO2_CHAT_MODEL": "gemini-2.5-flash",
                    "ECO2_GEMINI_API_KEY": "g-test",
                    "ECO2_GEMINI_BASE_URL": gm.gemini_base_url,
                    "ECO2_CHAT_JOB_KIND": f"chat-gm-{uuid.uuid4().hex[:6]}",
                }
            ):
                gm_app = create_chat()
            async with running(oa_app, metrics=False) as oa_srv, running(gm_app, metrics=False) as gm_srv:
                async with (
                    grpc.aio.insecure_channel(f"127.0.0.1:{oa_srv.port}") as c1,
                    grpc.aio.insecure_channel(f"127.0.0.1:{gm_srv.port}") as c2,
                ):
                    yield {
                        "openai": (chat_pb2_grpc.ChatServiceStub(c1), oa, oa_app),
                        "gemini": (chat_pb2_grpc.ChatServiceStub(c2), gm, gm_app),
                    }


async def ask(stub, text: str) -> tuple[list[events_pb2.Event], chat_pb2.ChatResult]:
    events = [
        e
        async for e in stub.StreamChat(
            chat_pb2.StreamChatRequest(message=text), metadata=as_user(f"u-{uuid.uuid4().hex[:8]}"), timeout=60
        )
    ]
    assert events[-1].kind == events_pb2.EVENT_KIND_DONE, events[-1]
    result = chat_pb2.ChatResult()
    events[-1].done.result.Unpack(result)
    return events, result


def reset(fake: FakeModelServer, app) -> None:
    fake.requests.clear()
    fake.faults = []
    for breaker in app.workers.deps.policy.breakers.values():
        breaker.success()


@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_remote_model_answers_streamed_and_graded_by_the_llm(remote_stacks, provider):
    stub, fake, app = remote_stacks[provider]
    reset(fake, app)
    events, result = await ask(stub, "투명 페트병은 어떻게 버려?")
    tokens = [e.delta for e in events if e.kind == events_pb2.EVENT_KIND_TOKEN]
    # the first piece alone (time to first token), then ECO2_CHAT_TOKENS_PER_EVENT (4) pieces per event
    pieces = fake.script.tokens
    assert tokens == pieces[:1] + ["".join(pieces[i : i + 4]) for i in range(1, len(pieces), 4)]
    assert result.answer == "".join(pieces)
    assert not result.fallback_used
    assert result.grade.grader.startswith("rule+llm:") and "근거에 맞음" in result.grade.reasons
    assert "rule:재활용폐기물_무색페트병#배출방법_공통" in [c.source_id for c in result.citations]


@pytest.mark.parametrize("provider", ["openai", "gemini"])
@pytest.mark.parametrize("faults", [[429, 500], [("delay", 3.0)]], ids=["429-then-500", "timeout"])
async def test_model_errors_are_retried_then_answered(remote_stacks, provider, faults):
    stub, fake, app = remote_stacks[provider]
    reset(fake, app)
    fake.faults = list(faults)
    events, result = await ask(stub, "투명 페트병은 어떻게 버려?")
    streams = [r for r in fake.requests if r["body"].get("stream") or "streamGenerateContent" in r["path"]]
    assert len(streams) == len(faults) + 1, "each failure retried once more (answer policy: 2 retries)"
    assert result.answer == "".join(fake.script.tokens) and not result.fallback_used


@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_a_model_that_keeps_failing_falls_back_to_the_offline_composer(remote_stacks, provider):
    stub, fake, app = remote_stacks[provider]
    reset(fake, app)
    fake.faults = [429, 500, 503, 429]  # answer: 3 attempts fail; the LLM grader's call fails too
    events, result = await ask(stub, "투명 페트병은 어떻게 버려?")
    streams = [r for r in fake.requests if r["body"].get("stream") or "streamGenerateContent" in r["path"]]
    assert len(streams) == 3
    assert result.fallback_used
    for fact in ("내용물", "라벨", "압착", "뚜껑"):  # answered from the knowledge base instead
        assert fact in result.answer
    progress = [
        e.stage_info.message
        for e in events
        if e.node == "answer" and e.stage_info.phase == events_pb2.STAGE_PHASE_PROGRESS
    ]
    assert progress and "내장 지식" in progress[0]
    assert "LLM 평가 실패: 규칙 평가만 사용" in result.grade.reasons and result.grade.grader == "rule"
