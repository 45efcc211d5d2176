"""Valkey adapters: revocation entries + broadcast, the local revocation cache, single-use
OAuth state, and the token-bucket rate limit.

Revocation layout (prefix `auth:rev:`):
  auth:rev:j:<jti>  one access or refresh token          value ""       expires with the token
  auth:rev:f:<fam>  a whole refresh family (a session)  value ""       expires with the family
  auth:rev:u:<sub>  every token of a user issued before value <epoch>  expires with the last one
Every write is followed, in the same MULTI, by a PUBLISH on the revocation channel of
"<kind> <id> <until> [<before>]", which every replica's RevocationCache applies at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import redis.asyncio
from redis.exceptions import RedisError

from .domain import Claims

log = logging.getLogger("eco2.auth.revocations")

REV_PREFIX = "auth:rev:"


class ValkeyRevocations:
    def __init__(self, redis_client: redis.asyncio.Redis, channel: str) -> None:
        self.redis = redis_client
        self.channel = channel

    async def _write(self, kind: str, ident: str, until: int, value: str = "") -> None:
        until = max(until, int(time.time()) + 1)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(f"{REV_PREFIX}{kind}:{ident}", value, exat=until)
            pipe.publish(self.channel, f"{kind} {ident} {until} {value}".rstrip())
            await pipe.execute()

    async def revoke_token(self, jti: str, exp: int) -> None:
        await self._write("j", jti, exp)

    async def revoke_family(self, family: str, until: int) -> None:
        await self._write("f", family, until)

    async def revoke_user(self, user_id: str, before: int, until: int) -> None:
        await self._write("u", user_id, until, str(before))


class RevocationCache:
    """The in-process revocation set Check consults (no I/O on the hot path).

    Built before the server reports SERVING: SUBSCRIBE first, then SCAN the durable entries,
    so nothing published in between is lost; then `current` is True. A lost subscriber
    connection makes it False (Check fails closed) until a fresh subscribe + SCAN completes.
    """

    def __init__(self, redis_client: redis.asyncio.Redis, channel: str, *, retry_s: float = 0.5, scan_count: int = 1000) -> None:
        self.redis = redis_client
        self.channel = channel
        self.retry_s = retry_s
        self.scan_count = scan_count
        self.current = False
        self.resyncs = 0
        self._entries: dict[str, float] = {}  # "j:<jti>" / "f:<fam>" -> until
        self._users: dict[str, tuple[int, float]] = {}  # sub -> (before, until)
        self._task: asyncio.Task | None = None
        self._pubsub = None
        self._stopping = False
        self._confirmed = False

    # -- hot path -------------------------------------------------------------------
    def is_revoked(self, claims: Claims) -> bool:
        entries = self._entries
        if entries:
            if "j:" + claims.jti in entries or (claims.fam and "f:" + claims.fam in entries):
                return True
        if self._users:
            cut = self._users.get(claims.sub)
            if cut is not None and claims.iat <= cut[0]:
                return True
        return False

    def __len__(self) -> int:
        return len(self._entries) + len(self._users)

    # -- maintenance ----------------------------------------------------------------
    def apply(self, message: str) -> None:
        parts = message.split(" ")
        if len(parts) < 3:
            return
        kind, ident, until = parts[0], parts[1], float(parts[2])
        if kind in ("j", "f"):
            self._entries[f"{kind}:{ident}"] = until
        elif kind == "u" and len(parts) >= 4:
            before = int(parts[3])
            old = self._users.get(ident)
            if old is None or before >= old[0]:
                self._users[ident] = (before, until)

    def prune(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for key in [k for k, until in self._entries.items() if until < now]:
            del self._entries[key]
        for key in [k for k, (_, until) in self._users.items() if until < now]:
            del self._users[key]

    async def _sync(self) -> None:
        """Subscribe, then load every durable entry; on return the view is current."""
        if self._pubsub is not None:
            await self._close_pubsub()
        pubsub = self.redis.pubsub()
        self._pubsub = pubsub  # closed by _close_pubsub if anything below fails
        await pubsub.subscribe(self.channel)
        self._confirmed = False
        entries: dict[str, float] = {}
        users: dict[str, tuple[int, float]] = {}
        now = time.time()
        cursor = 0
        while True:
            cursor, keys = await self.redis.scan(cursor, match=REV_PREFIX + "*", count=self.scan_count)
            if keys:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.get(key)
                        pipe.expiretime(key)
                    replies = await pipe.execute()
                for i, key in enumerate(keys):
                    value, exp = replies[2 * i], replies[2 * i + 1]
                    if value is None:
                        continue
                    name = key.decode() if isinstance(key, bytes) else key
                    kind, _, ident = name[len(REV_PREFIX):].partition(":")
                    until = float(exp) if exp and exp > 0 else now + 86400
                    if kind in ("j", "f"):
                        entries[f"{kind}:{ident}"] = until
                    elif kind == "u":
                        users[ident] = (int(value), until)
            if cursor == 0:
                break
        # Messages published during the SCAN wait in the subscription and are applied next.
        self._entries = entries
        self._users = users
        self.current = True
        self.resyncs += 1

    async def start(self) -> None:
        await self._sync()
        self._task = asyncio.create_task(self._listen(), name="auth-revocation-listener")

    async def _listen(self) -> None:
        last_prune = time.monotonic()
        while not self._stopping:
            try:
                if self._pubsub is None:
                    await self._sync()
                message = await self._pubsub.get_message(timeout=1.0)
                if message is not None:
                    kind = message.get("type")
                    if kind == "message":
                        data = message["data"]
                        self.apply(data.decode() if isinstance(data, bytes) else data)
                    elif kind == "subscribe":
                        if self._confirmed:
                            # The client reconnected and re-subscribed by itself: messages
                            # may have been missed in between, so rebuild from the SCAN.
                            raise ConnectionError("subscriber reconnected")
                        self._confirmed = True
                if time.monotonic() - last_prune > 30:
                    self.prune()
                    last_prune = time.monotonic()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ValueError) as exc:
                if self._stopping:
                    return
                self.current = False
                log.warning("revocation subscriber lost; failing closed until resynced", extra={"error": repr(exc)})
                await self._close_pubsub()
                await asyncio.sleep(self.retry_s)

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except Exception:  # the connection is already gone
                pass

    async def stop(self) -> None:
        self._stopping = True
        self.current = False
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        await self._close_pubsub()


class ValkeyOAuthStates:
    def __init__(self, redis_client: redis.asyncio.Redis, prefix: str = "auth:oauth:state:") -> None:
        self.redis = redis_client
        self.prefix = prefix

    async def put(self, state: str, value: dict, ttl_s: int) -> None:
        await self.redis.set(self.prefix + state, json.dumps(value, separators=(",", ":")), ex=ttl_s)

    async def take(self, state: str) -> dict | None:
        raw = await self.redis.getdel(self.prefix + state)
        return None if raw is None else json.loads(raw)


# KEYS[1] bucket; ARGV rate (tokens/s), burst. Returns {allowed, retry_after_s as string}.
_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local v = redis.call('HMGET', KEYS[1], 't', 'k')
local last = tonumber(v[1])
local tokens = tonumber(v[2])
if last == nil or tokens == nil then
  tokens = burst
  last = now
end
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local allowed = 0
local retry = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 't', tostring(now), 'k', tostring(tokens))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(retry)}
"""


class ValkeyTokenBucket:
    """Per-key token bucket: one EVALSHA per request."""

    def __init__(self, redis_client: redis.asyncio.Redis, *, rate_per_s: float, burst: int, prefix: str = "auth:rl:") -> None:
        self.rate = rate_per_s
        self.burst = burst
        self.prefix = prefix
        self._script = redis_client.register_script(_TOKEN_BUCKET)
        self._args = (repr(float(rate_per_s)), str(int(burst)))

    async def hit(self, key: str) -> float:
        allowed, retry = await self._script(keys=(self.prefix + key,), args=self._args)
        return 0.0 if allowed == 1 else max(float(retry), 0.001)
