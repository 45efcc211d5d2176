"""The Valkey keys the chat servicer and its workers share."""

from __future__ import annotations


def input_key(job_id: str) -> str:
    """The question a job waits on (NEEDS_INPUT): set by the worker, answered by ProvideInput."""
    return f"chat:input:{job_id}"
