"""One chat message followed end to end, as an operator sees it: the browser's request through
the gateway, the chat API, the job queue, a worker, the event router and SSE is one trace (spans
recorded by OpenTelemetry's in-memory exporter); the /metrics of every service show the turn;
and every metric the chart's dashboards and alerts query is one the services export.

Real servers in-process (auth, events, character, chat, the gateway) on the session's data
plane, with span recording on (ECO2_OTEL_TRACES_EXPORTER). In-process servers share one
Prometheus registry: each server's /metrics is scraped, and their union is what the services
export (the gateway's counters included: it serves no /metrics of its own in-process).
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from types import SimpleNamespace

import helm_python
import httpx
import pytest
import yaml
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from eco2.services.runtime import telemetry
from support.gateway import gateway
from support.monitoring import (
    CHART,
    all_dashboard_queries,
    exported_names,
    metric_names,
    samples,
    value,
)
from support.servers import env, running

#: Metrics the alerts read that other exporters provide (kube-state-metrics), not the services.
EXTERNAL = {"kube_pod_status_ready"}
NODES = ("intent", "router", "waste_rag", "aggregator", "answer", "evaluate")


@pytest.fixture(scope="module")
async def stack(service_env):
    from eco2.services.auth.app import create as create_auth
    from eco2.services.character.app import create as create_character
    from eco2.services.chat.app import create as create_chat
    from eco2.services.events.app import create as create_events

    spans = InMemorySpanExporter()
    telemetry.configure_tracing("tests", span_exporter=spans)  # installed first: the servers record into it
    kind = f"chat-obs-{uuid.uuid4().hex[:6]}"
    base = {
        **service_env,
        "ECO2_OTEL_TRACES_EXPORTER": "console",
        "ECO2_EVENTS_QUEUE_SAMPLE_S": "0.2",
        "ECO2_CHAT_JOB_KIND": kind,
        "ECO2_AUTH_RATE_LIMIT_PER_S": "0",
        "ECO2_CHAT_CHARACTER_CACHE_S": "0",
    }
    try:
        with env(base):
            apps = {"auth": create_auth(), "events": create_events(), "character": create_character()}
        async with (
            running(apps["auth"]) as auth,
            running(apps["events"]) as events,
            running(apps["character"]) as character,
        ):
            addrs = {
                "auth": f"127.0.0.1:{auth.port}",
                "events": f"127.0.0.1:{events.port}",
                "character": f"127.0.0.1:{character.port}",
                "pump": "127.0.0.1:1",
            }
            chat_env = {
                **base,
                "ECO2_AUTH_ADDR": addrs["auth"],
                "ECO2_EVENTS_ADDR": addrs["events"],
                "ECO2_CHARACTER_ADDR": addrs["character"],
                "ECO2_LOCATION_ADDR": "127.0.0.1:1",
                "ECO2_IMAGES_ADDR": "127.0.0.1:1",
                "ECO2_CHAT_WORKERS": "4",
            }
            with env(chat_env):
                chat_app = create_chat()
            async with (
                running(chat_app) as chat,
                gateway(addrs, ECO2_CHAT_ADDR=f"127.0.0.1:{chat.port}") as (_app, port),
            ):
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                    token = (await client.post("/v1/auth/dev-sign-in", json={"displayName": "observability"})).json()[
                        "tokens"
                    ]["accessToken"]
                    client.headers["authorization"] = f"Bearer {token}"
                    yield SimpleNamespace(
                        client=client,
                        spans=spans,
                        kind=kind,
                        metrics={
                            name: s.metrics_port
                            for name, s in (
                                ("auth", auth),
                                ("events", events),
                                ("character", character),
                                ("chat", chat),
                            )
                        },
                    )
    finally:
        telemetry.shutdown_tracing()


async def chat_turn(client: httpx.AsyncClient, message: str, headers: dict | None = None) -> list[dict]:
    """Send a message through the gateway and read its events over SSE to the terminal one:
    each event as {"event": kind, "id": seq, "data": the Event as JSON}."""
    sent = await client.post("/v1/chat/messages", json={"message": message}, headers=headers or {})
    assert sent.status_code == 200, sent.text
    events: list[dict] = []
    async with client.stream("GET", sent.json()["eventsUrl"]) as stream:
        block: dict = {}
        async for line in stream.aiter_lines():
            if line and not line.startswith(":"):
                key, _, val = line.partition(": ")
                block[key] = val
            elif not line and block:
                if "data" in block:  # not the `retry:` advice
                    events.append({**block, "data": json.loads(block["data"])})
                    if events[-1]["event"] in ("done", "error"):
                        break
                block = {}
    return events


async def wait_until(predicate, what: str, timeout: float = 20.0):
    """Poll `predicate()` (sync or async) until it returns something truthy; return that."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = predicate()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def scrape(port: int) -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            return r.read().decode()

    return await asyncio.to_thread(get)


async def scrape_all(stack) -> dict[str, str]:
    return {name: await scrape(port) for name, port in stack.metrics.items()}


# -- one trace ---------------------------------------------------------------------------------


async def test_one_chat_turn_from_the_browser_is_one_trace(stack):
    trace_id, browser_span = uuid.uuid4().hex, "00f067aa0ba902b7"
    stack.spans.clear()
    events = await chat_turn(
        stack.client, "투명 페트병은 어떻게 버려?", {"traceparent": f"00-{trace_id}-{browser_span}-01"}
    )
    assert events[-1]["event"] == "done", events[-1]
    # every event the browser got over SSE names the browser's trace
    parents = [e["data"]["traceparent"].split("-") for e in events]
    assert {p[1] for p in parents} == {trace_id}

    def finished() -> list:
        spans = [s for s in stack.spans.get_finished_spans() if s.context.trace_id == int(trace_id, 16)]
        names = {s.name for s in spans}
        return spans if {"chat.turn", "/eco2.chat.v1.ChatService/SendMessage", "node.evaluate"} <= names else []

    spans = await wait_until(finished, "the turn's spans")
    by_id = {s.context.span_id: s for s in spans}

    def one(name: str, kind: SpanKind | None = None):
        found = [s for s in spans if s.name == name and (kind is None or s.kind == kind)]
        assert len(found) == 1, (name, [(s.name, s.kind) for s in spans])
        return found[0]

    def ancestors(span) -> list[str]:
        out = []
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            out.append(span.name)
        return out

    send = one("/eco2.chat.v1.ChatService/SendMessage", SpanKind.SERVER)
    assert send.parent.span_id == int(browser_span, 16)  # the browser's span, through the gateway
    issue = one("/eco2.auth.v1.MeshIdentityService/IssueJobIdentity", SpanKind.CLIENT)
    assert issue.parent.span_id == send.context.span_id
    turn = one("chat.turn")
    assert turn.parent.span_id == send.context.span_id  # across the job queue
    for node in NODES:
        assert one(f"node.{node}").parent.span_id == turn.context.span_id, node
    stream = one("model.stream")
    assert stream.parent.span_id == one("node.answer").context.span_id and stream.attributes["eco2.pieces"] > 10
    # the character of the answer: chat's call and CharacterService's span of it, inside the turn
    call = one("/eco2.character.v1.CharacterService/MatchCharacter", SpanKind.CLIENT)
    assert "chat.turn" in ancestors(call)
    assert (
        one("/eco2.character.v1.CharacterService/MatchCharacter", SpanKind.SERVER).parent.span_id
        == call.context.span_id
    )
    # the queued event names the API's span, every event of the worker the turn's
    assert int(parents[0][2], 16) == send.context.span_id
    assert {int(p[2], 16) for p in parents[1:]} == {turn.context.span_id}
    # nothing of the turn went to another trace
    ours = [s for s in stack.spans.get_finished_spans() if s.name.startswith(("chat.", "node.", "model."))]
    assert {s.context.trace_id for s in ours} == {int(trace_id, 16)}


# -- metrics -----------------------------------------------------------------------------------


async def test_a_scrape_of_every_service_after_a_chat_turn_shows_it(stack):
    before = {name: samples(text) for name, text in (await scrape_all(stack)).items()}
    b = before["chat"]
    events = await chat_turn(stack.client, "다 쓴 건전지는 어디에 버려?")
    assert events[-1]["event"] == "done", events[-1]
    tokens = sum(1 for e in events if e["event"] == "token")
    kind = stack.kind

    async def settled() -> dict | None:
        """A scrape in which the queue sampler has seen the job acked and the stream ended."""
        now = {name: samples(text) for name, text in (await scrape_all(stack)).items()}
        c = now["chat"]
        ready = (
            (value(c, "eco2_jobs_total", kind=kind, outcome="acked") or 0)
            > (value(b, "eco2_jobs_total", kind=kind, outcome="acked") or 0)
            and value(c, "eco2_jobs_depth", kind=kind) == 0
            and value(c, "eco2_jobs_pending", kind=kind) == 0
            and value(c, "eco2_chat_turns_active") == 0
        )
        return now if ready else None

    after = await wait_until(settled, "the queue sampled after the ack")
    for name in ("auth", "events", "character", "chat"):  # every server answers its /metrics
        assert value(after[name], "eco2_grpc_server_handled_total") is not None, name
    a = after["chat"]

    def moved(name: str, **labels) -> float:
        return (value(a, name, **labels) or 0) - (value(b, name, **labels) or 0)

    # chat
    assert moved("eco2_chat_turn_seconds_count", outcome="done") == 1
    assert moved("eco2_chat_time_to_first_token_seconds_count") == 1
    assert moved("eco2_chat_turn_seconds_sum", outcome="done") >= moved("eco2_chat_time_to_first_token_seconds_sum") > 0
    for node in NODES:
        assert moved("eco2_chat_node_seconds_count", node=node, outcome="ok") == 1, node
    assert moved("eco2_chat_model_calls_total", provider="offline", call="stream", outcome="ok") == 1
    assert moved("eco2_chat_tokens_streamed_total", provider="offline") >= tokens > 10
    assert value(a, "eco2_chat_streams_active") == 0
    assert (
        moved("eco2_grpc_server_handled_total", grpc_method="/eco2.chat.v1.ChatService/SendMessage", grpc_code="OK")
        == 1
    )
    # the job queue (the router's sampler) and the bus
    for outcome in ("enqueued", "claimed", "acked"):
        assert moved("eco2_jobs_total", kind=kind, outcome=outcome) == 1, outcome
    assert (
        value(a, "eco2_jobs_dead_letters", kind=kind) == 0 and value(a, "eco2_jobs_oldest_age_seconds", kind=kind) == 0
    )
    assert moved("eco2_events_routed_total", outcome="published") >= len(events)
    assert moved("eco2_events_fanout_lag_seconds_count") >= 1
    assert value(a, "eco2_events_subscribers") is not None
    # auth: the gateway's Check of the send and of the SSE request; the revocation cache in sync
    assert moved("eco2_auth_check_decisions_total", decision="allow", reason="TOKEN") >= 2
    assert 0 <= value(a, "eco2_auth_revocation_cache_age_seconds") < 10
    assert value(a, "eco2_auth_revocation_cache_entries") is not None
    # the edge
    assert moved("eco2_gateway_requests_total") >= 2


async def test_every_metric_the_dashboards_and_alerts_query_is_one_the_services_export(stack):
    events = await chat_turn(stack.client, "우유팩은 어떻게 버려?")  # every family has moved at least once
    assert events[-1]["event"] == "done"
    exported: set[str] = set()
    for text in (await scrape_all(stack)).values():
        exported |= exported_names(text)
    with helm_python.Chart.load(CHART) as chart:
        manifests = chart.render(
            {"monitoring": {"prometheusRule": {"enabled": True}}}, name="eco2", namespace="eco2", is_install=True
        )
    (rule,) = [d for d in yaml.safe_load_all(manifests["eco2/templates/alerts.yaml"]) if d]
    queries = {f"alert {r['alert']}": [r["expr"]] for g in rule["spec"]["groups"] for r in g["rules"]}
    queries |= {f"dashboard {name}": qs for name, qs in all_dashboard_queries().items()}
    assert len(queries) == 6 + 5
    for where, exprs in queries.items():
        for expr in exprs:
            names = metric_names(expr)
            assert names, f"{where}: {expr} reads no metric"
            unknown = names - exported - EXTERNAL
            assert not unknown, f"{where} queries {sorted(unknown)}, which no service exports: {expr}"
