"""Composition root of the auth service: settings → adapters → AuthService + ext-authz Check."""

from __future__ import annotations

import asyncio
import logging
from importlib import resources
from pathlib import Path

import grpc
import httpx
import redis.asyncio
from pydantic import Field
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from eco2.auth.v1 import auth_pb2, auth_pb2_grpc
from eco2.mesh import routes
from eco2.services.dataplane.migrations import apply_migrations
from eco2.services.dataplane.resp import RespClient
from eco2.services.dataplane.urls import create_pg_pool, create_redis
from eco2.services.runtime.dependencies import postgres_check, redis_check
from eco2.services.runtime.settings import Deployment, RuntimeSettings

from .domain import ClaimsCache, KeyRing, TokenPolicy, TokenService
from .extauthz import SERVICE_NAME as AUTHZ_SERVICE
from .extauthz import CheckPolicy, ExtAuthz
from .oauth import HttpOAuthProvider, ProviderConfig
from .postgres import DirectoryKeyStore, PostgresKeyStore, PostgresRefreshTokens, PostgresUsers
from .service import AuthLimits, AuthServicer, MeshIdentityServicer
from .valkey import BatchedTokenBucket, RevocationCache, ValkeyOAuthStates, ValkeyRevocations
from .wristband import Wristbands

log = logging.getLogger("eco2.auth")


class AuthSettings(RuntimeSettings):
    auth_issuer: str = Field("eco2-auth", description="`iss` of issued tokens, required on verification")
    auth_audience: str = Field("eco2", description="`aud` of issued tokens, required on verification")
    auth_access_ttl_s: int = Field(900, ge=30, description="access token lifetime (seconds)")
    auth_refresh_ttl_s: int = Field(14 * 86400, ge=60, description="refresh token lifetime (seconds)")
    auth_leeway_s: float = Field(5.0, ge=0, le=300, description="clock skew allowed on exp/nbf/iat (seconds)")
    auth_keys_dir: Path | None = Field(
        None,
        description="directory of EC P-256 PEM signing keys, kid = file stem (required in production; embedded keeps keys in Postgres)",
    )
    auth_signing_kid: str = Field("", description="kid that signs new tokens (default: the newest key)")
    auth_keys_reload_s: float = Field(
        60.0, gt=0, description="how often signing keys are re-read (picks up rotated keys)"
    )
    auth_job_identity_ttl_s: int = Field(
        6 * 3600,
        ge=60,
        le=7 * 86400,
        description="lifetime of a queued job's wristband (MeshIdentityService.IssueJobIdentity): the longest a job may act for its user",
    )
    auth_claims_cache_size: int = Field(
        100_000, ge=0, description="verified access tokens kept in the ext-authz LRU (0 = verify every time)"
    )
    auth_cors_origins: list[str] = Field(
        default_factory=lambda: ["http://127.0.0.1:8080", "http://localhost:8080"],
        description="JSON list of browser origins that get CORS headers on deny responses",
    )
    auth_max_header_bytes: int = Field(
        8192, ge=256, description="largest single request header (and path) Check accepts; larger → 431"
    )
    auth_rate_limit_per_s: float = Field(
        20.0, ge=0, description="sustained requests/s per user (per IP when anonymous); 0 disables the limit"
    )
    auth_rate_limit_burst: int = Field(60, ge=1, description="token-bucket size: requests allowed in a burst")
    auth_rate_limit_in_flight: int = Field(
        2,
        ge=1,
        le=64,
        description="rate-limit round trips to Valkey in flight at once; the hits that arrive meanwhile share the next one (one EVALSHA for many Checks)",
    )
    auth_valkey_timeout_s: float = Field(
        0.5, gt=0, description="socket timeout of Valkey calls on the Check path (a timeout denies)"
    )
    auth_valkey_max_connections: int = Field(
        64,
        ge=1,
        description="Valkey connections per process (rate limit, revocation writes, OAuth state); callers beyond wait up to the timeout",
    )
    auth_revocation_channel: str = Field("auth:revocations", description="Pub/Sub channel of revocation broadcasts")
    auth_revocation_retry_s: float = Field(
        0.5, gt=0, description="pause before resubscribing after the revocation subscriber lost its connection"
    )
    auth_redirect_uris: list[str] = Field(
        default_factory=lambda: ["http://127.0.0.1:8080/oauth/callback", "http://localhost:8080/oauth/callback"],
        description="JSON list of OAuth redirect URIs accepted by StartOAuth (exact match)",
    )
    auth_oauth_state_ttl_s: int = Field(
        600, ge=30, le=3600, description="lifetime of a pending OAuth sign-in (state + PKCE verifier in Valkey)"
    )
    auth_oauth_timeout_s: float = Field(5.0, gt=0, description="timeout of each call to an OAuth provider")
    auth_display_name_max: int = Field(40, ge=1, le=200, description="longest display name (characters)")
    auth_token_max_bytes: int = Field(4096, ge=512, description="longest token / code accepted in a request field")
    auth_url_max: int = Field(2048, ge=64, description="longest URL accepted in a request field")
    auth_kakao_client_id: str = Field("", description="Kakao REST API key (empty = kakao sign-in off)")
    auth_kakao_client_secret: str = Field("", description="Kakao client secret")
    auth_kakao_authorize_url: str = Field(
        "https://kauth.kakao.com/oauth/authorize", description="Kakao authorization endpoint"
    )
    auth_kakao_token_url: str = Field("https://kauth.kakao.com/oauth/token", description="Kakao token endpoint")
    auth_kakao_userinfo_url: str = Field("https://kapi.kakao.com/v2/user/me", description="Kakao user-info endpoint")
    auth_kakao_scope: str = Field("profile_nickname profile_image account_email", description="Kakao scopes")
    auth_google_client_id: str = Field("", description="Google OAuth client id (empty = google sign-in off)")
    auth_google_client_secret: str = Field("", description="Google OAuth client secret")
    auth_google_authorize_url: str = Field(
        "https://accounts.google.com/o/oauth2/v2/auth", description="Google authorization endpoint"
    )
    auth_google_token_url: str = Field("https://oauth2.googleapis.com/token", description="Google token endpoint")
    auth_google_userinfo_url: str = Field(
        "https://openidconnect.googleapis.com/v1/userinfo", description="Google OIDC user-info endpoint"
    )
    auth_google_scope: str = Field("openid email profile", description="Google scopes")
    auth_naver_client_id: str = Field("", description="Naver client id (empty = naver sign-in off)")
    auth_naver_client_secret: str = Field("", description="Naver client secret")
    auth_naver_authorize_url: str = Field(
        "https://nid.naver.com/oauth2.0/authorize", description="Naver authorization endpoint"
    )
    auth_naver_token_url: str = Field("https://nid.naver.com/oauth2.0/token", description="Naver token endpoint")
    auth_naver_userinfo_url: str = Field("https://openapi.naver.com/v1/nid/me", description="Naver user-info endpoint")
    auth_naver_scope: str = Field("", description="Naver scopes")

    def provider_configs(self) -> list[ProviderConfig]:
        fields = ("client_id", "client_secret", "authorize_url", "token_url", "userinfo_url", "scope")
        return [
            ProviderConfig(name, *(getattr(self, f"auth_{name}_{f}") for f in fields))
            for name in ("kakao", "google", "naver")
        ]


class AuthApp:
    name = "auth"
    #: Check runs on every request of the mesh: it maps every failure to a deny itself, needs no
    #: caller and counts its own decisions, so it skips the runtime's per-call wrapper.
    bare_methods = frozenset({f"/{AUTHZ_SERVICE}/Check"})

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self.pool = None
        self.redis = None
        self.subscriber = None
        self.http: httpx.AsyncClient | None = None
        self.revocation_cache: RevocationCache | None = None
        self.tokens: TokenService | None = None
        self.key_store = None
        self.authz: ExtAuthz | None = None
        self.limiter_valkey: RespClient | None = None
        self._reload_task: asyncio.Task | None = None

    async def identity_keys(self):
        """The keys that verify wristbands, for this process's own runtime (no GetJwks to itself),
        re-read from the key store: the verifier asks on an unknown kid, e.g. one another replica
        signs with right after a rotation, before this one's periodic reload."""
        if self.tokens is None:
            return {}
        await self.reload_keys()
        return self.tokens.ring.public

    def service_names(self) -> list[str]:
        return [
            auth_pb2.DESCRIPTOR.services_by_name[name].full_name for name in ("AuthService", "MeshIdentityService")
        ] + [AUTHZ_SERVICE]

    async def migrate(self) -> list[str]:
        """Apply the pending schema migrations; the names of the files applied."""
        return await apply_migrations(self.settings.database_url, "auth", resources.files(__package__) / "migrations")

    def dependency_checks(self):
        return {"postgres": postgres_check(self.pool), "redis": redis_check(self.redis)}

    async def start(self, server: grpc.aio.Server) -> None:
        s = self.settings
        if s.deployment == Deployment.PRODUCTION and s.auth_keys_dir is None:
            raise RuntimeError("production needs ECO2_AUTH_KEYS_DIR (EC P-256 PEM signing keys)")
        if s.migrate_on_start:
            await self.migrate()
        self.pool = await create_pg_pool(s.database_url, max_size=s.db_pool_max, application_name="eco2-auth")
        # A blocking pool: a burst of Checks waits for a connection (up to the timeout) instead of
        # failing with "Too many connections" as the default pool does past its size.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            s.redis_url,
            max_connections=s.auth_valkey_max_connections,
            timeout=s.auth_valkey_timeout_s,
            socket_timeout=s.auth_valkey_timeout_s,
            socket_connect_timeout=s.auth_valkey_timeout_s * 4,
        )
        self.redis = redis.asyncio.Redis.from_pool(pool)
        # The subscriber never reconnects silently: a lost connection must be seen (fail closed + resync).
        self.subscriber = create_redis(
            s.redis_url, retry=Retry(NoBackoff(), 0), health_check_interval=5, client_name="eco2-auth-revocations"
        )
        self.key_store = DirectoryKeyStore(s.auth_keys_dir) if s.auth_keys_dir else PostgresKeyStore(self.pool)
        ring = KeyRing(await self.key_store.load(), s.auth_signing_kid)
        policy = TokenPolicy(s.auth_issuer, s.auth_audience, s.auth_access_ttl_s, s.auth_refresh_ttl_s, s.auth_leeway_s)
        self.tokens = TokenService(ring, policy)
        self.wristbands = Wristbands(
            ring, issuer=s.identity_issuer, audience=s.identity_audience, ttl_s=s.identity_ttl_s
        )

        self.revocation_cache = RevocationCache(
            self.subscriber, s.auth_revocation_channel, retry_s=s.auth_revocation_retry_s
        )
        await self.revocation_cache.start()  # SCAN done before SERVING

        self.http = httpx.AsyncClient(timeout=s.auth_oauth_timeout_s, follow_redirects=False)
        providers = {c.name: HttpOAuthProvider(c, self.http) for c in s.provider_configs() if c.configured}
        limits = AuthLimits(
            dev_sign_in=s.deployment == Deployment.EMBEDDED,
            display_name_max=s.auth_display_name_max,
            token_max_bytes=s.auth_token_max_bytes,
            url_max=s.auth_url_max,
            redirect_uris=frozenset(s.auth_redirect_uris),
            state_ttl_s=s.auth_oauth_state_ttl_s,
        )
        servicer = AuthServicer(
            tokens=self.tokens,
            users=PostgresUsers(self.pool),
            refresh=PostgresRefreshTokens(self.pool),
            revocations=ValkeyRevocations(self.redis, s.auth_revocation_channel),
            states=ValkeyOAuthStates(self.redis),
            providers=providers,
            limits=limits,
            reload_keys=self.reload_keys,
        )
        auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server)
        auth_pb2_grpc.add_MeshIdentityServiceServicer_to_server(
            MeshIdentityServicer(self.wristbands, s.auth_job_identity_ttl_s), server
        )
        limiter = None
        if s.auth_rate_limit_per_s > 0:
            # one pipelined connection of its own, to the server and with the timeouts of `redis`
            self.limiter_valkey = RespClient.like(self.redis, reply_timeout=s.auth_valkey_timeout_s)
            limiter = BatchedTokenBucket(
                self.limiter_valkey,
                rate_per_s=s.auth_rate_limit_per_s,
                burst=s.auth_rate_limit_burst,
                max_in_flight=s.auth_rate_limit_in_flight,
            )
        self.authz = ExtAuthz(
            self.tokens,
            ClaimsCache(s.auth_claims_cache_size, s.auth_leeway_s),
            self.revocation_cache,
            limiter,
            CheckPolicy(
                routes.PublicPaths(routes.load().public_paths()),
                frozenset(s.auth_cors_origins),
                s.auth_max_header_bytes,
            ),
            self.wristbands,
            reload_keys=self.reload_keys,
        )
        server.add_generic_rpc_handlers((self.authz.handler(),))
        self._reload_task = asyncio.create_task(self._reload_keys(), name="auth-key-reload")

    async def reload_keys(self) -> None:
        assert self.key_store is not None and self.tokens is not None
        self.tokens.ring.replace(await self.key_store.load(), self.settings.auth_signing_kid)

    async def _reload_keys(self) -> None:
        while True:
            await asyncio.sleep(self.settings.auth_keys_reload_s)
            try:
                await self.reload_keys()
            except Exception:  # keep the keys we have; try again next round
                log.exception("reloading signing keys failed")

    async def stop(self) -> None:
        if self._reload_task is not None:
            self._reload_task.cancel()
        if self.revocation_cache is not None:
            await self.revocation_cache.stop()
        if self.http is not None:
            await self.http.aclose()
        if self.limiter_valkey is not None:
            await self.limiter_valkey.aclose()
        for client in (self.redis, self.subscriber):
            if client is not None:
                await client.aclose()
        if self.pool is not None:
            await self.pool.close()


def create() -> AuthApp:
    return AuthApp(AuthSettings())
