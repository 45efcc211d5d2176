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
import hashlib
import json
import logging
import time
from collections.abc import Awaitable

import redis.asyncio
from prometheus_client import Gauge
from redis.exceptions import RedisError

from eco2.services.dataplane.resp import RespClient

from .domain import Claims

log = logging.getLogger("eco2.auth.revocations")

REV_PREFIX = "auth:rev:"

# Read at scrape time from the process's RevocationCache (RevocationCache.start installs them).
CACHE_AGE = Gauge(
    "eco2_auth_revocation_cache_age_seconds",
    "Seconds since the revocation cache was last known in sync (a full load, or a healthy read of its subscription); grows while it is not (Check then fails closed)",
)
CACHE_ENTRIES = Gauge(
    "eco2_auth_revocation_cache_entries", "Revocations (tokens, families, users) held by the revocation cache"
)


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
    `synced_at` (monotonic) is the last moment the view was known current: the SCAN's end, or a
    read of the subscription that raised nothing.
    """

    def __init__(
        self, redis_client: redis.asyncio.Redis, channel: str, *, retry_s: float = 0.5, scan_count: int = 1000
    ) -> None:
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
        self.synced_at = time.monotonic()

    def age_s(self) -> float:
        """Seconds since the view was last known current."""
        return time.monotonic() - self.synced_at

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
                    kind, _, ident = name[len(REV_PREFIX) :].partition(":")
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
        self.synced_at = time.monotonic()

    async def start(self) -> None:
        await self._sync()
        CACHE_AGE.set_function(self.age_s)
        CACHE_ENTRIES.set_function(self.__len__)
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
                if self.current:
                    self.synced_at = time.monotonic()
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


# Token buckets, many keys at once (hash fields t = last refill, k = tokens). KEYS: buckets; ARGV: rate, burst, then for each key the
# number of hits n. Equivalent to n single hits at the same instant: the first
# min(n, floor(tokens)) are allowed, the rest get the retry time of the first missing token.
# Returns {allowed_1, retry_1, allowed_2, retry_2, ...} (retries as strings).
_TOKEN_BUCKET_BATCH = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local ttl = math.ceil(burst / rate * 1000) + 1000
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
for i, key in ipairs(KEYS) do
  local n = tonumber(ARGV[i + 2])
  local v = redis.call('HMGET', key, 't', 'k')
  local last = tonumber(v[1])
  local tokens = tonumber(v[2])
  if last == nil or tokens == nil then
    tokens = burst
    last = now
  end
  tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
  local allowed = math.max(0, math.min(n, math.floor(tokens)))
  tokens = tokens - allowed
  local retry = 0
  if allowed < n then
    retry = (1 - tokens) / rate
  end
  redis.call('HSET', key, 't', tostring(now), 'k', tostring(tokens))
  redis.call('PEXPIRE', key, ttl)
  out[2 * i - 1] = allowed
  out[2 * i] = tostring(retry)
end
return out
"""


class BatchedTokenBucket:
    """The Valkey token bucket with the hits of one event-loop tick sent together (ADR 0032).

    `hit` only queues the key and returns a future; a callback scheduled for the end of the
    tick sends every queued key in one EVALSHA (hits on the same key counted, not repeated)
    over the lean RESP client (dataplane/resp.py), so N concurrent Checks cost one round trip.
    While `max_in_flight` batches are on the wire, new hits wait for the next batch (that is
    what makes batches grow under load). Exact and shared by every replica: the buckets live in
    Valkey. A Valkey error or timeout fails every hit of that batch (→ 503 deny); the client's
    reply timeout bounds how long a batch can wait.
    """

    def __init__(
        self,
        valkey: RespClient,
        *,
        rate_per_s: float,
        burst: int,
        prefix: str = "auth:rl:",
        max_in_flight: int = 2,
        max_keys: int = 256,
    ) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self.prefix = prefix
        self.max_in_flight = max_in_flight
        self.max_keys = max_keys
        self.valkey = valkey
        self._sha = hashlib.sha1(_TOKEN_BUCKET_BATCH.encode()).hexdigest()
        self._args = (repr(float(rate_per_s)), str(int(burst)))
        self._pending: dict[str, list[asyncio.Future]] = {}
        self._scheduled = False
        self._in_flight = 0
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0  # round trips made (for tests and metrics)

    def hit(self, key: str) -> Awaitable[float]:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut = loop.create_future()
        waiters = self._pending.get(key)
        if waiters is None:
            self._pending[key] = [fut]
        else:
            waiters.append(fut)
        if not self._scheduled and self._in_flight < self.max_in_flight:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        pending = self._pending
        if not pending or self._in_flight >= self.max_in_flight:
            return
        if len(pending) <= self.max_keys:
            batch, self._pending = pending, {}
        else:  # the rest goes in the next batch
            keys = list(pending)
            batch = {k: pending.pop(k) for k in keys[: self.max_keys]}
        self._in_flight += 1
        self.batches += 1
        task = self._loop.create_task(self._send(batch))  # type: ignore[union-attr]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._pending and self._in_flight < self.max_in_flight:
            self._scheduled = True
            self._loop.call_soon(self._flush)  # type: ignore[union-attr]

    async def _send(self, batch: dict[str, list[asyncio.Future]]) -> None:
        prefix = self.prefix
        try:
            keys = [prefix + k for k in batch]
            args = [*self._args, *(len(w) for w in batch.values())]
            (reply,) = await self.valkey.evalsha_many(self._sha, _TOKEN_BUCKET_BATCH, [(keys, args)])
            if isinstance(reply, Exception):
                raise reply
        except BaseException as exc:
            for waiters in batch.values():
                for fut in waiters:
                    if not fut.done():
                        fut.set_exception(
                            exc if isinstance(exc, Exception) else RedisError("rate limit call cancelled")
                        )
            if not isinstance(exc, Exception):
                raise
        else:
            i = 0
            for waiters in batch.values():
                allowed = int(reply[i])
                retry = None
                for j, fut in enumerate(waiters):
                    if fut.done():  # the Check was cancelled; its token is spent all the same
                        continue
                    if j < allowed:
                        fut.set_result(0.0)
                    else:
                        if retry is None:
                            retry = max(float(reply[i + 1]), 0.001)
                        fut.set_result(retry)
                i += 2
        finally:
            self._in_flight -= 1
            if self._pending and not self._scheduled:
                self._scheduled = True
                self._loop.call_soon(self._flush)  # type: ignore[union-attr]
