"""The caller's identity inside the mesh: the "wristband" services verify on every call.

After ext-authz `Check` allowed a request, the edge (the ingress Envoy, Istio's, or the gateway
on its own) forwards `x-eco2-identity`: a short-lived ES256 JWT signed by auth with the mesh
audience. A service acts only on that token, never on a bare `x-eco2-user-id`, so a caller
that reaches a service port directly cannot claim to be anyone. The contract is in
docs/identity.md; the decision in docs/adr/0074-mesh-identity.md.

A token's signature is verified once per process: verified tokens are kept until they expire,
so the per-call cost is a dictionary lookup. Verification keys come from `ECO2_IDENTITY_JWKS`
(pinned keys, optional) and from auth's `GetJwks`, fetched at first use, on an unknown key id
(at most once per `ECO2_IDENTITY_JWKS_MIN_REFRESH_S`) and every `ECO2_IDENTITY_JWKS_REFRESH_S`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import jwt

from eco2.auth.v1 import auth_pb2, auth_pb2_grpc  # auth's contract only, never its code

from .errors import Unauthenticated, Unavailable

log = logging.getLogger("eco2.identity")

#: The metadata key of the wristband, forwarded from every call to the calls it makes.
IDENTITY_KEY = "x-eco2-identity"
#: `typ` claim of a wristband (an access token has "access": it is never accepted here).
IDENTITY_TYP = "identity"
ALGORITHM = "ES256"
_REQUIRED = ["sub", "iat", "exp", "iss", "aud", "typ"]

PublicKeys = Mapping[str, Any]
#: Returns the verification keys by key id (auth's JWKS).
KeyFetch = Callable[[], Awaitable[PublicKeys]]


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    roles: tuple[str, ...]
    provider: str
    expires_at: int
    #: the job id when auth issued the token for queued work (IssueJobIdentity), else ""
    job: str = ""


def keys_from_jwks(jwks: str | Mapping | list) -> dict[str, Any]:
    """Public keys by kid from a JWKS: a JSON string, {"keys": [...]} or a list of JWKs."""
    data = json.loads(jwks) if isinstance(jwks, str) else jwks
    entries = data.get("keys", []) if isinstance(data, Mapping) else data
    out: dict[str, Any] = {}
    for jwk in entries:
        if jwk.get("kty") == "EC" and jwk.get("kid"):
            out[jwk["kid"]] = jwt.PyJWK(dict(jwk), algorithm=ALGORITHM).key
    return out


class IdentityVerifier:
    """Verifies wristbands; one per process (the runtime's interceptor holds it)."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        leeway_s: float = 5.0,
        cache_size: int = 10_000,
        pinned: PublicKeys | None = None,
        fetch: KeyFetch | None = None,
        refresh_s: float = 300.0,
        min_refresh_s: float = 1.0,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.leeway_s = leeway_s
        self.cache_size = cache_size
        self._pinned = dict(pinned or {})
        self._fetch = fetch
        self._refresh_s = refresh_s
        self._min_refresh_s = min_refresh_s
        self._fetched: dict[str, Any] = {}
        self._fetched_at = float("-inf")
        self._fetching: asyncio.Future | None = None
        self._verified: dict[str, Identity] = {}

    async def verify(self, token: str) -> Identity:
        """The identity of a valid wristband, or Unauthenticated (Unavailable when the keys
        cannot be fetched)."""
        identity = self._verified.get(token)
        now = time.time()
        if identity is not None and now <= identity.expires_at + self.leeway_s:
            return identity
        identity = await self._verify(token, now)
        if len(self._verified) >= self.cache_size:
            self._verified.clear()  # cheap bound: entries are re-verified on demand
        self._verified[token] = identity
        return identity

    async def _verify(self, token: str, now: float) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _refused("IDENTITY_MALFORMED", "the identity token is not a JWT") from None
        kid = header.get("kid")
        if header.get("alg") != ALGORITHM or not isinstance(kid, str):
            raise _refused("IDENTITY_MALFORMED", "the identity token must be ES256 with a key id")
        key = await self._key(kid, now)
        try:
            data = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": _REQUIRED},
            )
        except jwt.ExpiredSignatureError:
            raise _refused("IDENTITY_EXPIRED", "the identity token has expired") from None
        except jwt.InvalidAudienceError:
            raise _refused(
                "IDENTITY_AUDIENCE", f"the identity token is not meant for the mesh (audience {self.audience!r})"
            ) from None
        except jwt.PyJWTError as exc:
            raise _refused("IDENTITY_INVALID", f"the identity token does not verify: {exc}") from None
        sub, typ, exp = data.get("sub"), data.get("typ"), data.get("exp")
        roles, provider, job = data.get("roles", []), data.get("provider", ""), data.get("job", "")
        if typ != IDENTITY_TYP:
            raise _refused("IDENTITY_TYPE", f"a {typ!r} token is not an identity token")
        if not (
            isinstance(sub, str)
            and sub
            and type(exp) is int
            and isinstance(provider, str)
            and isinstance(job, str)
            and isinstance(roles, list)
            and all(isinstance(r, str) for r in roles)
        ):
            raise _refused("IDENTITY_INVALID", "the identity token's claims have the wrong types")
        return Identity(sub, tuple(roles), provider, exp, job)

    async def _key(self, kid: str, now: float) -> Any:
        key = self._pinned.get(kid) or self._fetched.get(kid)
        stale = now - self._fetched_at > self._refresh_s
        if key is not None and not stale:
            return key
        if self._fetch is not None and (stale or now - self._fetched_at >= self._min_refresh_s):
            try:
                await self._refresh(now)
            except Exception as exc:  # keep the keys we have; refuse only an unknown key
                if key is None:
                    log.warning("cannot fetch the identity keys", extra={"error": repr(exc)})
                    raise Unavailable(
                        "the mesh identity keys cannot be fetched from auth; retry",
                        reason="IDENTITY_KEYS_UNAVAILABLE",
                        retry_after_s=1.0,
                    ) from None
            key = self._pinned.get(kid) or self._fetched.get(kid)
        if key is None:
            raise _refused("IDENTITY_UNKNOWN_KEY", "the identity token was signed by an unknown key")
        return key

    async def _refresh(self, now: float) -> None:
        """One fetch at a time: concurrent callers wait for the same one."""
        if self._fetching is None:
            self._fetching = asyncio.ensure_future(self._fetch())  # type: ignore[misc]
            fetching = self._fetching
            try:
                self._fetched = dict(await asyncio.shield(fetching))
                self._fetched_at = now
            finally:
                self._fetching = None
        else:
            await asyncio.shield(self._fetching)


def _refused(reason: str, message: str) -> Unauthenticated:
    return Unauthenticated(message, reason=reason)


class JobIdentities:
    """Wristbands for queued jobs (`MeshIdentityService.IssueJobIdentity`, authorised by the
    current call's wristband): a worker acts for the job's user with one however long the job
    waits or is retried, where the request's own wristband lives minutes."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = auth_pb2_grpc.MeshIdentityServiceStub(channel)

    async def issue(self, job_id: str) -> str:
        """The job's wristband; UNAUTHENTICATED passes through, auth unreachable is Unavailable."""
        try:
            reply = await self.stub.IssueJobIdentity(auth_pb2.IssueJobIdentityRequest(job_id=job_id))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise
            raise Unavailable(
                f"auth cannot issue the job's identity: {exc.code().name}",
                reason="JOB_IDENTITY_UNAVAILABLE",
                retry_after_s=1.0,
            ) from None
        return reply.identity


async def fetch_auth_jwks(auth_addr: str) -> dict[str, Any]:
    """The verification keys auth publishes (`AuthService.GetJwks`, a public method)."""
    from .clients import channel  # clients → context → identity: imported when first used

    async with channel(auth_addr) as ch:
        reply = await auth_pb2_grpc.AuthServiceStub(ch).GetJwks(auth_pb2.GetJwksRequest(), timeout=5.0)
    return keys_from_jwks(
        [{"kty": k.kty, "crv": k.crv, "x": k.x, "y": k.y, "kid": k.kid, "alg": k.alg, "use": k.use} for k in reply.keys]
    )
