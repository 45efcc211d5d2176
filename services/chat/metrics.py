"""Prometheus metrics of the chat service (docs/operations.md lists them), and the LLM port
with its calls counted.

Every labelled child is looked up once and kept (`_child`): a node run or a model call costs a
dict lookup and an add, not prometheus_client's label check and lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from opentelemetry.trace import Status, StatusCode
from prometheus_client import Counter, Gauge, Histogram

from eco2.services.runtime.telemetry import open_span, span

#: Seconds, from a fast offline answer to a slow remote model's.
_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120)
_NODE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

TIME_TO_FIRST_TOKEN = Histogram(
    "eco2_chat_time_to_first_token_seconds",
    "From the message queued to the first token of its answer",
    buckets=_BUCKETS,
)
TURN_SECONDS = Histogram(
    "eco2_chat_turn_seconds",
    "From the message queued to the end of the worker's turn, by outcome: done, needs_input, error (an ERROR event), cancelled, failed (retried or dead-lettered)",
    ["outcome"],
    buckets=_BUCKETS,
)
NODE_SECONDS = Histogram(
    "eco2_chat_node_seconds",
    "One run of a graph node, by node and outcome (ok, failed)",
    ["node", "outcome"],
    buckets=_NODE_BUCKETS,
)
TOKENS_STREAMED = Counter(
    "eco2_chat_tokens_streamed_total", "Answer pieces the model streamed, by provider", ["provider"]
)
MODEL_CALLS = Counter(
    "eco2_chat_model_calls_total",
    "Calls of the LLM port, by provider, call (stream, generate, structured, tool_calls, classify_image) and outcome (ok, error, cancelled)",
    ["provider", "call", "outcome"],
)
FALLBACKS = Counter(
    "eco2_chat_fallbacks_total",
    "Fallbacks taken: offline_model (the model failed, the offline composer answered), intent_rules, rules_retry, web_search, unsure, clarify, places_unavailable, bulk_waste_unavailable",
    ["fallback"],
)
STREAMS_ACTIVE = Gauge("eco2_chat_streams_active", "StreamChat streams open on this process")
TURNS_ACTIVE = Gauge("eco2_chat_turns_active", "Turns this process's workers are running")

_children: dict[tuple, Any] = {}


def _child(metric, *labels: str):
    key = (metric, labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def node_finished(node: str, outcome: str, seconds: float) -> None:
    _child(NODE_SECONDS, node, outcome).observe(seconds)


def turn_finished(outcome: str, seconds: float) -> None:
    _child(TURN_SECONDS, outcome).observe(seconds)


def fallback_taken(kind: str) -> None:
    _child(FALLBACKS, kind).inc()


class MeteredLLM:
    """The LLM port (llm/ports.py) around another: each call counted by provider, call and
    outcome, the streamed pieces counted, and with spans on a `model.<call>` span per call."""

    def __init__(self, llm) -> None:
        self.llm = llm
        self.info = llm.info
        self._attributes = {"eco2.model": llm.info.name, "eco2.provider": llm.info.provider}

    def _count(self, call: str, outcome: str) -> None:
        _child(MODEL_CALLS, self.info.provider, call, outcome).inc()

    async def _call(self, call: str, *args, **kwargs):
        with span(f"model.{call}", attributes=self._attributes):
            try:
                result = await getattr(self.llm, call)(*args, **kwargs)
            except asyncio.CancelledError:  # the node's timeout, or the job cancelled
                self._count(call, "cancelled")
                raise
            except Exception:
                self._count(call, "error")
                raise
        self._count(call, "ok")
        return result

    async def generate(self, messages, **kwargs) -> str:
        return await self._call("generate", messages, **kwargs)

    async def structured(self, messages, schema):
        return await self._call("structured", messages, schema)

    async def tool_calls(self, messages, tools):
        return await self._call("tool_calls", messages, tools)

    async def classify_image(self, messages, image: bytes, mime_type: str, schema):
        return await self._call("classify_image", messages, image, mime_type, schema)

    async def stream(self, messages, **kwargs) -> AsyncIterator[str]:
        # The span is not made current: the pieces are yielded into the consumer's context.
        trace_span = open_span("model.stream", attributes=self._attributes)
        pieces = 0
        outcome = "cancelled"  # unless the stream ends or fails: the consumer stopped reading
        try:
            async for piece in self.llm.stream(messages, **kwargs):
                pieces += 1
                yield piece
            outcome = "ok"
        except Exception as exc:
            outcome = "error"
            if trace_span is not None:
                trace_span.record_exception(exc)
                trace_span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            self._count("stream", outcome)
            if pieces:
                _child(TOKENS_STREAMED, self.info.provider).inc(pieces)
            if trace_span is not None:
                trace_span.set_attribute("eco2.pieces", pieces)
                trace_span.end()
