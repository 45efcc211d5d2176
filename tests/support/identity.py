"""Call metadata that acts as a user, the way the edge does after ext-authz allowed a call."""

from __future__ import annotations

from eco2.services.runtime.context import USER_ID_KEY


def as_user(user_id: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata that identifies `user_id` to a service."""
    return ((USER_ID_KEY, user_id),)
