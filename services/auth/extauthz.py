"""`envoy.service.auth.v3.Authorization/Check`: the mesh's front door.

Hot path, per request: read headers once (size limit, UTF-8, spoofed `x-eco2-*`), refuse a
non-canonical path, find the token, claims from the LRU (the ES256 signature is verified once
per token), revocation from the in-process RevocationCache, one Valkey call for the rate
limit, a prebuilt response that injects the caller's wristband (`x-eco2-identity`, minted
once per identity and reused for half its life).
Every failure, including our own bugs, ends in a DeniedHttpResponse: never an RPC error a
misconfigured Envoy (failure_mode_allow) could fail open on. A deny carries its gRPC status
(`grpc-status`, `grpc-message` headers) so Envoy answers a gRPC client with the right code
(RESOURCE_EXHAUSTED for a rate limit, not the UNAVAILABLE that HTTP 429 maps to), and a JSON
body in the gateway's error shape for everyone else.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, status_pb2
from prometheus_client import Counter

from eco2.mesh.routes import PublicPaths, canonical
from eco2.services.runtime.context import USER_ID_KEY
from eco2.services.runtime.identity import IDENTITY_KEY

from .domain import ACCESS, Claims, ClaimsCache, TokenError, TokenService
from .ports import RateLimiter, RevocationView
from .wristband import Wristbands

log = logging.getLogger("eco2.auth.extauthz")

SERVICE_NAME = "envoy.service.auth.v3.Authorization"
#: What an allow adds upstream: the wristband services act on, and the user id for access logs.
INJECTED = (IDENTITY_KEY, USER_ID_KEY)
_INJECTED_SET = frozenset(INJECTED)
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_OK_STATUS = status_pb2.Status(code=code_pb2.OK)

DECISIONS = Counter(
    "eco2_auth_check_decisions_total",
    "ext-authz Check decisions: allow (reason TOKEN or PUBLIC) or deny (reason as in the deny body)",
    ["decision", "reason"],
)
_decisions: dict[tuple[str, str], object] = {}


def _count(decision: str, reason: str) -> None:
    """DECISIONS{decision, reason} += 1, each labelled child looked up once."""
    child = _decisions.get((decision, reason))
    if child is None:
        child = _decisions[(decision, reason)] = DECISIONS.labels(decision, reason)
    child.inc()


@dataclass(frozen=True)
class CheckPolicy:
    #: the route table's public paths (mesh/routes.yaml), matched on canonical paths only
    public: PublicPaths
    cors_origins: frozenset[str]
    max_header_bytes: int
    cookie_name: str = "eco2_access"
    realm: str = "eco2"


class _Unparsable:
    """Stands in for CheckRequest bytes that did not parse (e.g. non-UTF-8 in a string field)."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


def parse_check_request(data: bytes):
    try:
        return external_auth_pb2.CheckRequest.FromString(data)
    except (DecodeError, ValueError, UnicodeDecodeError):
        return _Unparsable(len(data))


def serialize_check_response(response) -> bytes:
    """CheckResponse → bytes; prebuilt responses are already bytes."""
    return response if type(response) is bytes else response.SerializeToString()


class _Deny(Exception):
    def __init__(
        self,
        http: int,
        code: str,
        message: str,
        *,
        grpc_code: int,
        www: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.http, self.code, self.message, self.grpc_code, self.www, self.retry_after_s = (
            http,
            code,
            message,
            grpc_code,
            www,
            retry_after_s,
        )


def _hv(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE)


@dataclass(slots=True)
class _Allow:
    """The serialized allow response of one identity and when its wristband is renewed."""

    data: bytes
    renew_at: float


class ExtAuthz:
    def __init__(
        self,
        tokens: TokenService,
        cache: ClaimsCache,
        revocations: RevocationView,
        limiter: RateLimiter | None,
        policy: CheckPolicy,
        wristbands: Wristbands,
        reload_keys: Callable[[], Awaitable[None]] | None = None,
        reload_min_s: float = 1.0,
    ) -> None:
        self.tokens = tokens
        #: re-reads the signing keys from their store: a token of a kid this replica has not
        #: loaded yet (a sibling rotated a key in) is tried again once after it, at most every
        #: `reload_min_s` (a flood of made-up kids costs one store read a second)
        self.reload_keys = reload_keys
        self.reload_min_s = reload_min_s
        self._reloaded_at = float("-inf")
        self.cache = cache
        self.revocations = revocations
        self.limiter = limiter
        self.policy = policy
        self.wristbands = wristbands
        self.leeway = tokens.policy.leeway_s
        self._allow: dict[str, _Allow] = {}
        self._allow_max = max(1024, cache.max_entries)

    def handler(self) -> grpc.GenericRpcHandler:
        """Registered with a tolerant deserializer: unparsable bytes become a 400 deny. The
        serializer passes prebuilt (already serialized) allow responses through."""
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    self.Check,
                    request_deserializer=parse_check_request,
                    response_serializer=serialize_check_response,
                )
            },
        )

    async def Check(self, request, context) -> external_auth_pb2.CheckResponse | bytes:
        origin = None
        try:
            if isinstance(request, _Unparsable):
                raise _Deny(
                    400,
                    "MALFORMED_REQUEST",
                    f"the CheckRequest did not parse ({request.size} bytes)",
                    grpc_code=code_pb2.INVALID_ARGUMENT,
                )
            http = request.attributes.request.http
            headers = _headers(http)
            origin = headers.get("origin")
            return await self._check(request, http, headers)
        except _Deny as deny:
            _count("deny", deny.code)
            return self._denied(deny, origin)
        except Exception:  # fail closed, never an RPC error
            log.exception("ext-authz check failed; denying")
            _count("deny", "UNAVAILABLE")
            return self._denied(
                _Deny(
                    503,
                    "UNAVAILABLE",
                    "authorization is temporarily unavailable",
                    grpc_code=code_pb2.UNAVAILABLE,
                    retry_after_s=1,
                ),
                origin,
            )

    async def _check(self, request, http, headers) -> external_auth_pb2.CheckResponse | bytes:
        policy = self.policy
        limit = policy.max_header_bytes
        # No header key or value (nor the path) can be longer than the whole HttpRequest: when
        # that fits the limit, the per-header size checks are skipped.
        oversized = http.ByteSize() > limit
        spoofed: list[str] = []
        if oversized:
            for key, value in headers.items():
                if len(value) > limit or len(key) > limit:
                    raise _Deny(
                        431,
                        "HEADER_TOO_LARGE",
                        f"header {key[:64]!r} is larger than {limit} bytes",
                        grpc_code=code_pb2.INVALID_ARGUMENT,
                    )
                if key.startswith("x-eco2-"):
                    spoofed.append(key)
            if len(http.path) > limit:
                raise _Deny(
                    414, "URI_TOO_LONG", f"path is longer than {limit} bytes", grpc_code=code_pb2.INVALID_ARGUMENT
                )
        elif "x-eco2-" in "\n".join(headers):
            spoofed = [key for key in headers if key.startswith("x-eco2-")]

        if http.method == "OPTIONS" and "access-control-request-method" in headers:
            # A CORS preflight carries no credentials: the edge's CORS filter answers it for a
            # listed origin; any other origin is refused here, before it reaches a service.
            if headers.get("origin") in policy.cors_origins:
                return _public(spoofed)
            raise _Deny(
                403,
                "ORIGIN_NOT_ALLOWED",
                f"origin {str(headers.get('origin'))[:128]!r} may not call cross-origin (ECO2_AUTH_CORS_ORIGINS)",
                grpc_code=code_pb2.PERMISSION_DENIED,
            )
        path = http.path.partition("?")[0]
        if not canonical(path):
            # Envoy normalises paths before Check (normalize_path, merge_slashes); a path still
            # holding `..`, `//`, escapes or `;` is a trick, never matched against public prefixes.
            raise _Deny(
                400,
                "NON_CANONICAL_PATH",
                "the request path is not canonical: no '.' or '..' segments, '//', '%', ';', backslashes or control characters",
                grpc_code=code_pb2.INVALID_ARGUMENT,
            )
        public = path in policy.public

        token = _bearer(headers.get("authorization")) or _cookie(headers.get("cookie"), policy.cookie_name)
        if not token:
            if not public:
                raise _Deny(
                    401,
                    "UNAUTHENTICATED",
                    "sign in: no access token",
                    grpc_code=code_pb2.UNAUTHENTICATED,
                    www=f'Bearer realm="{policy.realm}"',
                )
            await self._limit(_client_ip(request))
            return _public(spoofed)

        now = time.time()
        claims = self.cache.get(token, now)
        if claims is None:
            try:
                claims = await self._verify(token)
            except TokenError as err:
                if public:
                    await self._limit(_client_ip(request))
                    return _public(spoofed)
                raise _Deny(
                    401,
                    err.reason,
                    err.message,
                    grpc_code=code_pb2.UNAUTHENTICATED,
                    www=f'Bearer realm="{policy.realm}", error="invalid_token", error_description="{err.reason}"',
                ) from None
            self.cache.put(token, claims)
        elif now < claims.nbf - self.leeway:
            raise _Deny(
                401,
                "TOKEN_NOT_YET_VALID",
                "the token is not valid yet",
                grpc_code=code_pb2.UNAUTHENTICATED,
                www=f'Bearer realm="{policy.realm}", error="invalid_token"',
            )

        revocations = self.revocations
        if not revocations.current:
            if public:
                await self._limit(_client_ip(request))
                return _public(spoofed)
            raise _Deny(
                503,
                "REVOCATIONS_NOT_CURRENT",
                "the revocation list is resynchronising; retry shortly",
                grpc_code=code_pb2.UNAVAILABLE,
                retry_after_s=1,
            )
        if revocations.is_revoked(claims):
            if public:
                await self._limit(_client_ip(request))
                return _public(spoofed)
            raise _Deny(
                403, "TOKEN_REVOKED", "the token was revoked (signed out)", grpc_code=code_pb2.PERMISSION_DENIED
            )

        limiter = self.limiter
        if limiter is not None:
            retry = await limiter.hit("u:" + claims.sub)
            if retry > 0:
                raise _Deny(
                    429,
                    "RATE_LIMITED",
                    f"too many requests; retry in {retry:.2f}s",
                    grpc_code=code_pb2.RESOURCE_EXHAUSTED,
                    retry_after_s=retry,
                )
        # Injected keys are overwritten (OVERWRITE_IF_EXISTS_OR_ADD), every other client-sent
        # x-eco2-* is removed; the injected ones are not listed, as Envoy removes after it sets.
        _count("allow", "TOKEN")
        remove = [k for k in spoofed if k not in _INJECTED_SET] if spoofed else None
        if remove:
            response = external_auth_pb2.CheckResponse()
            response.ParseFromString(self._allow_bytes(claims))
            response.ok_response.headers_to_remove.extend(remove)
            return response
        return self._allow_bytes(claims)

    async def _verify(self, token: str) -> Claims:
        try:
            return self.tokens.verify(token, ACCESS)
        except TokenError as err:
            now = time.monotonic()
            if (
                err.reason != "TOKEN_UNKNOWN_KID"
                or self.reload_keys is None
                or now - self._reloaded_at < self.reload_min_s
            ):
                raise
            self._reloaded_at = now
            try:
                await self.reload_keys()
            except Exception:  # noqa: BLE001 — the store is unreachable: the token's own error stands
                log.warning("re-reading the signing keys for an unknown kid failed", exc_info=True)
                raise err from None
            return self.tokens.verify(token, ACCESS)

    def _allow_bytes(self, claims: Claims) -> bytes:
        """The serialized allow response of one identity with its wristband, built once and
        kept (bounded) until half the wristband's life has passed."""
        key = f"{claims.sub}\0{claims.provider}\0{claims.roles_header}"
        now = time.time()
        entry = self._allow.get(key)
        if entry is None or now >= entry.renew_at:
            token, exp = self.wristbands.mint(
                sub=claims.sub, roles=claims.roles, provider=claims.provider, now=int(now)
            )
            response = external_auth_pb2.CheckResponse(status=_OK_STATUS)
            response.ok_response.headers.extend((_hv(IDENTITY_KEY, token), _hv(USER_ID_KEY, claims.sub)))
            entry = _Allow(response.SerializeToString(), now + (exp - now) / 2)
            if len(self._allow) >= self._allow_max:
                self._allow.clear()  # cheap bound; entries are rebuilt on demand
            self._allow[key] = entry
        return entry.data

    async def _limit(self, key: str) -> None:
        if self.limiter is None:
            return
        retry = await self.limiter.hit(key)
        if retry > 0:
            raise _Deny(
                429,
                "RATE_LIMITED",
                f"too many requests; retry in {retry:.2f}s",
                grpc_code=code_pb2.RESOURCE_EXHAUSTED,
                retry_after_s=retry,
            )

    def _denied(self, deny: _Deny, origin: str | None) -> external_auth_pb2.CheckResponse:
        headers = [
            _hv("content-type", "application/json"),
            _hv("grpc-status", str(deny.grpc_code)),
            _hv("grpc-message", grpc_message(deny.message)),
        ]
        if deny.www:
            headers.append(_hv("www-authenticate", deny.www))
        if deny.retry_after_s is not None:
            headers.append(_hv("retry-after", str(max(1, int(deny.retry_after_s + 0.999)))))
        if origin and origin in self.policy.cors_origins:
            headers += [
                _hv("access-control-allow-origin", origin),
                _hv("access-control-allow-credentials", "true"),
                _hv("access-control-expose-headers", "www-authenticate, retry-after"),
                _hv("vary", "Origin"),
            ]
        body = json.dumps(
            {"error": {"code": deny.http, "reason": deny.code, "message": deny.message}}, ensure_ascii=False
        )
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=deny.grpc_code, message=deny.message),
            denied_response=external_auth_pb2.DeniedHttpResponse(
                status=http_status_pb2.HttpStatus(code=deny.http), headers=headers, body=body
            ),
        )


def grpc_message(text: str) -> str:
    """`grpc-message` encoding: percent-encoded UTF-8 outside printable ASCII (and '%')."""
    return urllib.parse.quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


def _public(spoofed: Iterable[str]) -> external_auth_pb2.CheckResponse:
    """An anonymous allow (public path or CORS preflight): no identity injected."""
    _count("allow", "PUBLIC")
    response = external_auth_pb2.CheckResponse(status=_OK_STATUS)
    response.ok_response.headers_to_remove.extend(spoofed)
    if not response.HasField("ok_response"):
        response.ok_response.SetInParent()
    return response


def _headers(http):
    """Lower-case header map. Envoy sends `headers` (strings) or, with encode_raw_headers,
    `header_map` whose `raw_value` bytes may not be UTF-8: those are refused. Envoy already
    sends lower-case keys; then the protobuf map itself is used (no copy)."""
    if http.HasField("header_map"):
        out: dict[str, str] = {}
        for h in http.header_map.headers:
            value = h.value
            if h.raw_value:
                try:
                    value = h.raw_value.decode("utf-8")
                except UnicodeDecodeError:
                    raise _Deny(
                        400,
                        "HEADER_NOT_UTF8",
                        f"header {h.key[:64]!r} is not valid UTF-8",
                        grpc_code=code_pb2.INVALID_ARGUMENT,
                    ) from None
            key = h.key.lower()
            out[key] = f"{out[key]},{value}" if key in out else value
        return out
    headers = http.headers
    keys = "".join(headers)
    if keys.lower() == keys:
        return headers
    return {k.lower(): v for k, v in headers.items()}


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


def _cookie(header: str | None, name: str) -> str | None:
    if not header or name not in header:
        return None
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name and value:
            return value.strip('"')
    return None


def _client_ip(request) -> str:
    address = request.attributes.source.address.socket_address.address
    return "ip:" + (address or "unknown")
