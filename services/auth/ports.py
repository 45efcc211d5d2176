"""What the auth core needs from outside the process."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from .domain import Claims, OAuthProfile


@dataclass(frozen=True)
class UserRecord:
    id: str
    display_name: str
    email: str
    profile_image_url: str
    roles: tuple[str, ...]
    linked_providers: tuple[str, ...]
    created_at: datetime


class UserRepository(Protocol):
    async def sign_in(self, provider: str, subject: str, profile: OAuthProfile) -> tuple[UserRecord, bool]:
        """The user linked to (provider, subject), created with `profile` if new; (user, created)."""
        ...

    async def get(self, user_id: str) -> UserRecord | None: ...

    async def update(self, user_id: str, changes: dict[str, str]) -> UserRecord | None: ...

    async def delete(self, user_id: str) -> bool: ...


class RefreshTokenStore(Protocol):
    async def add(self, claims: Claims) -> None: ...

    async def rotate(self, old: Claims, new: Claims) -> str:
        """Atomically mark `old` rotated and store `new`. Returns "ok", "reused" (old was already
        rotated: the family was revoked), "revoked" or "unknown"."""
        ...

    async def revoke_family(self, family: str) -> None: ...

    async def revoke_user(self, user_id: str) -> None: ...


class Revocations(Protocol):
    """Durable revocation entries plus a broadcast to every replica."""

    async def revoke_token(self, jti: str, exp: int) -> None: ...

    async def revoke_family(self, family: str, until: int) -> None: ...

    async def revoke_user(self, user_id: str, before: int, until: int) -> None: ...


class RevocationView(Protocol):
    """The local, in-process view that Check consults."""

    @property
    def current(self) -> bool: ...

    def is_revoked(self, claims: Claims) -> bool: ...


class OAuthStateStore(Protocol):
    async def put(self, state: str, value: dict, ttl_s: int) -> None: ...

    async def take(self, state: str) -> dict | None:
        """The value of `state`, deleting it (single use); None when unknown or used."""
        ...


class RateLimiter(Protocol):
    def hit(self, key: str) -> Awaitable[float]:
        """Resolves to 0.0 when allowed, else seconds until a request would be allowed; raises
        when the limit cannot be checked (the caller denies: fail closed)."""
        ...


class OAuthProvider(Protocol):
    name: str

    def authorization_url(self, *, state: str, redirect_uri: str, code_challenge: str) -> str: ...

    async def exchange(self, *, code: str, redirect_uri: str, code_verifier: str, state: str) -> OAuthProfile: ...
