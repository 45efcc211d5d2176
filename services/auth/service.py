"""gRPC surface of `eco2.auth.v1.AuthService` and `MeshIdentityService`."""

from __future__ import annotations

import logging
import secrets
import time
import unicodedata
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from google.protobuf import timestamp_pb2

from eco2.auth.v1 import auth_pb2, auth_pb2_grpc
from eco2.services.runtime.context import caller, caller_id, metadata_value, verified_identity
from eco2.services.runtime.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from eco2.services.runtime.validation import Validator

from .domain import ACCESS, REFRESH, Claims, OAuthProfile, TokenError, TokenService, pkce_pair
from .oauth import OAuthRejected, OAuthUnavailable
from .ports import OAuthProvider, OAuthStateStore, RefreshTokenStore, Revocations, UserRecord, UserRepository
from .wristband import Wristbands

log = logging.getLogger("eco2.auth")

PROVIDER_NAMES = {
    auth_pb2.PROVIDER_KAKAO: "kakao",
    auth_pb2.PROVIDER_GOOGLE: "google",
    auth_pb2.PROVIDER_NAVER: "naver",
    auth_pb2.PROVIDER_DEV: "dev",
}
PROVIDER_ENUMS = {v: k for k, v in PROVIDER_NAMES.items()}
ROLE_ENUMS = {"user": auth_pb2.ROLE_USER, "admin": auth_pb2.ROLE_ADMIN}
UPDATABLE = ("display_name", "profile_image_url")


@dataclass(frozen=True)
class AuthLimits:
    dev_sign_in: bool
    display_name_max: int
    token_max_bytes: int
    url_max: int
    redirect_uris: frozenset[str]
    state_ttl_s: int


def _ts(epoch: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=epoch)


def user_proto(user: UserRecord, provider: str = "") -> auth_pb2.User:
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(user.created_at)
    return auth_pb2.User(
        id=user.id,
        display_name=user.display_name,
        email=user.email,
        profile_image_url=user.profile_image_url,
        provider=PROVIDER_ENUMS.get(provider, auth_pb2.PROVIDER_UNSPECIFIED),
        linked_providers=[PROVIDER_ENUMS[p] for p in user.linked_providers if p in PROVIDER_ENUMS],
        roles=[ROLE_ENUMS[r] for r in user.roles if r in ROLE_ENUMS],
        created_at=created,
    )


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(
        self,
        *,
        tokens: TokenService,
        users: UserRepository,
        refresh: RefreshTokenStore,
        revocations: Revocations,
        states: OAuthStateStore,
        providers: dict[str, OAuthProvider],
        limits: AuthLimits,
        reload_keys: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.tokens = tokens
        #: re-reads the signing keys from their store (GetJwks answers with the store's keys)
        self.reload_keys = reload_keys
        self.users = users
        self.refresh = refresh
        self.revocations = revocations
        self.states = states
        self.providers = providers
        self.limits = limits

    # -- tokens -----------------------------------------------------------------------
    async def _issue(
        self, user: UserRecord, provider: str, fam: str | None = None
    ) -> tuple[auth_pb2.TokenPair, Claims]:
        fam = fam or uuid.uuid4().hex
        access = self.tokens.issue(sub=user.id, typ=ACCESS, roles=user.roles, provider=provider, fam=fam)
        refresh = self.tokens.issue(sub=user.id, typ=REFRESH, roles=user.roles, provider=provider, fam=fam)
        pair = auth_pb2.TokenPair(
            access_token=access.token,
            refresh_token=refresh.token,
            token_type="Bearer",
            access_expires_at=_ts(access.claims.exp),
            refresh_expires_at=_ts(refresh.claims.exp),
        )
        return pair, refresh.claims

    def _verify(self, token: str, typ: str, field: str) -> Claims:
        try:
            return self.tokens.verify(token, typ)
        except TokenError as err:
            raise Unauthenticated(f"{field}: {err.message}", reason=err.reason) from None

    # -- sign-in ----------------------------------------------------------------------
    async def DevSignIn(self, request, context):
        if not self.limits.dev_sign_in:
            raise PermissionDenied("DevSignIn is only available in embedded deployments", reason="DEV_SIGN_IN_DISABLED")
        v = Validator()
        name = unicodedata.normalize("NFC", request.display_name.strip())
        v.text("display_name", name, min_len=1, max_len=self.limits.display_name_max, single_line=True)
        v.raise_if_invalid()
        user, _ = await self.users.sign_in("dev", name, OAuthProfile("dev", name, display_name=name))
        pair, refresh = await self._issue(user, "dev")
        await self.refresh.add(refresh)
        return auth_pb2.DevSignInResponse(tokens=pair, user=user_proto(user, "dev"))

    async def StartOAuth(self, request, context):
        v = Validator()
        v.enum("provider", request.provider, auth_pb2.Provider)
        name = PROVIDER_NAMES.get(request.provider)
        if request.provider == auth_pb2.PROVIDER_DEV:
            v.add("provider", "PROVIDER_DEV has no OAuth flow; use DevSignIn")
        v.text("redirect_uri", request.redirect_uri, min_len=1, max_len=self.limits.url_max, single_line=True)
        if request.redirect_uri and request.redirect_uri not in self.limits.redirect_uris:
            v.add("redirect_uri", "is not on the allowlist (ECO2_AUTH_REDIRECT_URIS)")
        v.raise_if_invalid()
        provider = self.providers.get(name or "")
        if provider is None:
            raise FailedPrecondition(
                f"sign-in with {name} is not configured on this server",
                reason="PROVIDER_NOT_CONFIGURED",
                metadata={"provider": name or ""},
            )
        state = secrets.token_urlsafe(32)
        verifier, challenge = pkce_pair()
        ttl = self.limits.state_ttl_s
        await self.states.put(state, {"p": name, "r": request.redirect_uri, "v": verifier}, ttl)
        url = provider.authorization_url(state=state, redirect_uri=request.redirect_uri, code_challenge=challenge)
        return auth_pb2.StartOAuthResponse(authorization_url=url, state=state, expires_at=_ts(int(time.time()) + ttl))

    async def CompleteOAuth(self, request, context):
        v = Validator()
        v.text("code", request.code, min_len=1, max_len=self.limits.token_max_bytes, single_line=True)
        v.text("state", request.state, min_len=1, max_len=256, single_line=True)
        v.raise_if_invalid()
        flow = await self.states.take(request.state)
        if flow is None:
            raise InvalidArgument(
                "state is unknown, expired or already used: start the sign-in again",
                reason="OAUTH_STATE_INVALID",
                violations=[_violation("state", "is not a pending sign-in (unknown, expired or already used)")],
            )
        provider = self.providers.get(flow["p"])
        if provider is None:
            raise FailedPrecondition(
                f"sign-in with {flow['p']} is not configured on this server", reason="PROVIDER_NOT_CONFIGURED"
            )
        try:
            profile = await provider.exchange(
                code=request.code, redirect_uri=flow["r"], code_verifier=flow["v"], state=request.state
            )
        except OAuthRejected as err:
            raise Unauthenticated(
                f"{flow['p']} refused the authorization code: {err.error}",
                reason="OAUTH_CODE_REJECTED",
                metadata={"provider": flow["p"], "error": err.error},
            ) from None
        except OAuthUnavailable as err:
            raise Unavailable(
                f"{flow['p']} is unreachable: {err}", reason="OAUTH_PROVIDER_UNAVAILABLE", retry_after_s=2.0
            ) from None
        profile.display_name = profile.display_name[: self.limits.display_name_max]
        user, created = await self.users.sign_in(flow["p"], profile.subject, profile)
        pair, refresh = await self._issue(user, flow["p"])
        await self.refresh.add(refresh)
        return auth_pb2.CompleteOAuthResponse(tokens=pair, user=user_proto(user, flow["p"]), created=created)

    # -- sessions ---------------------------------------------------------------------
    async def Refresh(self, request, context):
        v = Validator()
        v.text("refresh_token", request.refresh_token, min_len=1, max_len=self.limits.token_max_bytes, single_line=True)
        v.raise_if_invalid()
        old = self._verify(request.refresh_token, REFRESH, "refresh_token")
        user = await self.users.get(old.sub)
        if user is None:
            raise Unauthenticated("the account no longer exists", reason="USER_DELETED")
        pair, new = await self._issue(user, old.provider, fam=old.fam)
        outcome = await self.refresh.rotate(old, new)
        if outcome == "reused":
            await self.revocations.revoke_family(old.fam, old.exp)
            log.warning("refresh token reuse: family revoked", extra={"user_id": old.sub})
            raise Unauthenticated(
                "this refresh token was already used; every session of this sign-in is revoked",
                reason="REFRESH_TOKEN_REUSED",
            )
        if outcome != "ok":
            raise Unauthenticated("this refresh token is revoked", reason="REFRESH_TOKEN_REVOKED")
        return auth_pb2.RefreshResponse(tokens=pair)

    async def SignOut(self, request, context):
        v = Validator()
        v.text("refresh_token", request.refresh_token, max_len=self.limits.token_max_bytes, single_line=True)
        v.raise_if_invalid()
        identity = verified_identity()
        user_id = identity.user_id if identity is not None else None
        access = _bearer(metadata_value(context, "authorization"))
        access_claims = self._verify(access, ACCESS, "authorization") if access else None
        if access_claims is not None:
            if user_id and user_id != access_claims.sub:
                raise PermissionDenied("the access token belongs to another user", reason="TOKEN_USER_MISMATCH")
            user_id = access_claims.sub
        if not user_id:
            raise Unauthenticated(
                "sign out needs the caller's identity (x-eco2-identity or a bearer token)", reason="NO_IDENTITY"
            )
        refresh_claims = (
            self._verify(request.refresh_token, REFRESH, "refresh_token") if request.refresh_token else None
        )
        if refresh_claims is not None and refresh_claims.sub != user_id:
            raise PermissionDenied("the refresh token belongs to another user", reason="TOKEN_USER_MISMATCH")
        now = int(time.time())
        if request.all_sessions:
            await self.refresh.revoke_user(user_id)
            await self.revocations.revoke_user(user_id, now, now + self.tokens.policy.refresh_ttl_s)
        if access_claims is not None:
            await self.revocations.revoke_token(access_claims.jti, access_claims.exp)
        if refresh_claims is not None:
            await self.refresh.revoke_family(refresh_claims.fam)
            await self.revocations.revoke_family(refresh_claims.fam, refresh_claims.exp)
        return auth_pb2.SignOutResponse()

    # -- me ---------------------------------------------------------------------------
    async def GetMe(self, request, context):
        user_id = caller_id(context)
        user = await self.users.get(user_id)
        if user is None:
            raise NotFound("the caller's account does not exist", reason="USER_NOT_FOUND")
        return auth_pb2.GetMeResponse(user=user_proto(user, caller(context).provider))

    async def UpdateProfile(self, request, context):
        user_id = caller_id(context)
        v = Validator()
        paths = list(request.update_mask.paths)
        v.check(bool(paths), "update_mask", f"is required; allowed paths: {', '.join(UPDATABLE)}")
        changes: dict[str, str] = {}
        for path in paths:
            if path not in UPDATABLE:
                v.add("update_mask", f"path {path[:64]!r} cannot be updated; allowed: {', '.join(UPDATABLE)}")
            elif path == "display_name":
                name = unicodedata.normalize("NFC", request.user.display_name.strip())
                if v.text("user.display_name", name, min_len=1, max_len=self.limits.display_name_max, single_line=True):
                    changes[path] = name
            else:
                url = request.user.profile_image_url.strip()
                if v.text("user.profile_image_url", url, max_len=self.limits.url_max, single_line=True):
                    if url and not url.startswith(("https://", "http://")):
                        v.add("user.profile_image_url", "must be an http(s) URL or empty")
                    changes[path] = url
        v.raise_if_invalid()
        user = await self.users.update(user_id, changes)
        if user is None:
            raise NotFound("the caller's account does not exist", reason="USER_NOT_FOUND")
        return auth_pb2.UpdateProfileResponse(user=user_proto(user, caller(context).provider))

    async def DeleteAccount(self, request, context):
        user_id = caller_id(context)
        v = Validator()
        v.check(request.confirm_user_id == user_id, "confirm_user_id", "must equal the caller's user id")
        v.raise_if_invalid()
        if await self.users.get(user_id) is None:
            raise NotFound("the caller's account does not exist", reason="USER_NOT_FOUND")
        # Revoke (and broadcast) first: if anything below fails, no token outlives the request.
        now = int(time.time())
        await self.revocations.revoke_user(user_id, now, now + self.tokens.policy.refresh_ttl_s)
        await self.refresh.revoke_user(user_id)
        await self.users.delete(user_id)
        return auth_pb2.DeleteAccountResponse()

    async def GetJwks(self, request, context):
        # Re-read first: right after a rotation another replica may already sign with a key this
        # one would only load at its next periodic reload, and services ask here for that kid.
        if self.reload_keys is not None:
            try:
                await self.reload_keys()
            except Exception:  # noqa: BLE001 — the store is unreachable: publish the keys we have
                log.warning("re-reading the signing keys failed; publishing the loaded ones", exc_info=True)
        return auth_pb2.GetJwksResponse(keys=[auth_pb2.Jwk(**k) for k in self.tokens.ring.jwks()])


def _violation(field: str, description: str) -> FieldViolation:
    return FieldViolation(field, description)


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class MeshIdentityServicer(auth_pb2_grpc.MeshIdentityServiceServicer):
    """Wristbands for queued work (the route table keeps this service off the edge)."""

    def __init__(self, wristbands: Wristbands, job_ttl_s: int) -> None:
        self.wristbands = wristbands
        self.job_ttl_s = job_ttl_s

    async def IssueJobIdentity(self, request, context):
        who = caller(context)
        v = Validator()
        v.text("job_id", request.job_id, min_len=1, max_len=128, single_line=True)
        v.raise_if_invalid()
        token, exp = self.wristbands.mint(
            sub=who.user_id, roles=who.roles, provider=who.provider, ttl_s=self.job_ttl_s, job=request.job_id
        )
        return auth_pb2.IssueJobIdentityResponse(identity=token, expires_at=_ts(exp))
