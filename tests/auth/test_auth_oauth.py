"""OAuth2 code + PKCE sign-in against a local provider speaking the real wire format (HTTP on
loopback), through httpx and the real auth server."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlsplit

import grpc
import httpx
import pytest

from eco2.auth.v1 import auth_pb2
from eco2.services.runtime.errors import status_details, unpack_details
from support.auth import AuthClient, allowed, auth_server, identity_of, injected
from support.fake_oauth import FakeOAuthProvider

REDIRECT = "https://app.eco2.example/oauth/callback"
PROVIDERS = [
    (auth_pb2.PROVIDER_KAKAO, "kakao"),
    (auth_pb2.PROVIDER_GOOGLE, "google"),
    (auth_pb2.PROVIDER_NAVER, "naver"),
]


@pytest.fixture(scope="module")
def fake():
    provider = FakeOAuthProvider().start()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
async def client(service_env, fake):
    extra = fake.env() | {"ECO2_AUTH_REDIRECT_URIS": f'["{REDIRECT}"]'}
    async with auth_server(service_env, **extra) as srv:
        c = AuthClient(srv.port)
        yield c
        await c.close()


async def _error(coro):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await coro
    status = status_details(err.value)
    return err.value.code(), (unpack_details(status) if status else {})


async def _consent(start: auth_pb2.StartOAuthResponse, user: str) -> dict[str, str]:
    """The browser's trip to the provider: the provider redirects back with code and state."""
    async with httpx.AsyncClient() as http:
        r = await http.get(start.authorization_url + f"&test_user={user}", follow_redirects=False)
    assert r.status_code == 302, r.text
    location = urlsplit(r.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    return {k: v[0] for k, v in parse_qs(location.query).items()}


async def _start(client, provider=auth_pb2.PROVIDER_KAKAO):
    return await client.auth.StartOAuth(auth_pb2.StartOAuthRequest(provider=provider, redirect_uri=REDIRECT))


@pytest.mark.parametrize("provider,name", PROVIDERS)
async def test_sign_in_with_each_provider_creates_then_finds_the_user(client, fake, provider, name):
    user = f"u{uuid.uuid4().hex[:8]}"
    start = await _start(client, provider)
    q = parse_qs(urlsplit(start.authorization_url).query)
    assert q["code_challenge_method"] == ["S256"] and len(q["code_challenge"][0]) == 43 and q["state"] == [start.state]
    back = await _consent(start, user)
    assert back["state"] == start.state
    done = await client.auth.CompleteOAuth(auth_pb2.CompleteOAuthRequest(code=back["code"], state=back["state"]))
    assert done.created and done.user.provider == provider and list(done.user.linked_providers) == [provider]
    assert user in done.user.display_name and done.user.email.startswith(user)
    # the provider saw the PKCE verifier and our client credentials
    form = fake.token_requests[-1]
    assert form["code_verifier"] and form["redirect_uri"] == REDIRECT and form["client_secret"] == fake.client_secret
    resp = await client.check(token=done.tokens.access_token)
    assert allowed(resp) and identity_of(resp)["provider"] == name and injected(resp)["x-eco2-user-id"] == done.user.id
    # second sign-in: same user, not created
    again_start = await _start(client, provider)
    again_back = await _consent(again_start, user)
    again = await client.auth.CompleteOAuth(
        auth_pb2.CompleteOAuthRequest(code=again_back["code"], state=again_back["state"])
    )
    assert not again.created and again.user.id == done.user.id


async def test_state_mismatch(client):
    start = await _start(client)
    back = await _consent(start, "mallory")
    code, details = await _error(
        client.auth.CompleteOAuth(auth_pb2.CompleteOAuthRequest(code=back["code"], state="forged-" + start.state[:20]))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details["ErrorInfo"].reason == "OAUTH_STATE_INVALID"
    assert details["BadRequest"].field_violations[0].field == "state"


async def test_state_reuse(client):
    start = await _start(client)
    back = await _consent(start, "alice")
    await client.auth.CompleteOAuth(auth_pb2.CompleteOAuthRequest(code=back["code"], state=back["state"]))
    second = await _consent(start, "alice")  # a new code, the old state
    code, details = await _error(
        client.auth.CompleteOAuth(auth_pb2.CompleteOAuthRequest(code=second["code"], state=start.state))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details["ErrorInfo"].reason == "OAUTH_STATE_INVALID"


async def test_code_reuse(client):
    start = await _start(client)
    back = await _consent(start, "bob")
    await client.auth.CompleteOAuth(auth_pb2.CompleteOAuthRequest(code=back["code"], state=back["state"]))
    replay = await _start(client)  # a fresh, valid state with the already-redeemed code
    code, details = await _error(
        client.auth.CompleteOAuth(auth_pb2.CompleteOAuthRequest(code=back["code"], state=replay.state))
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED and details["ErrorInfo"].reason == "OAUTH_CODE_REJECTED"
    assert details["ErrorInfo"].metadata["error"] == "invalid_grant"


async def test_wrong_pkce_verifier(client):
    # A code obtained in one flow, injected into another flow (whose verifier does not match).
    victim = await _start(client)
    back = await _consent(victim, "carol")
    attacker = await _start(client)
    code, details = await _error(
        client.auth.CompleteOAuth(auth_pb2.CompleteOAuthRequest(code=back["code"], state=attacker.state))
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED and details["ErrorInfo"].reason == "OAUTH_CODE_REJECTED"


async def test_redirect_uri_not_on_the_allowlist(client):
    code, details = await _error(
        client.auth.StartOAuth(
            auth_pb2.StartOAuthRequest(provider=auth_pb2.PROVIDER_GOOGLE, redirect_uri="https://evil.example/cb")
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details["BadRequest"].field_violations] == ["redirect_uri"]


@pytest.mark.parametrize("provider", [auth_pb2.PROVIDER_UNSPECIFIED, auth_pb2.PROVIDER_DEV, 99])
async def test_start_with_a_bad_provider(client, provider):
    code, details = await _error(
        client.auth.StartOAuth(auth_pb2.StartOAuthRequest(provider=provider, redirect_uri=REDIRECT))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details["BadRequest"].field_violations[0].field == "provider"


async def test_complete_with_empty_fields(client):
    code, details = await _error(client.auth.CompleteOAuth(auth_pb2.CompleteOAuthRequest()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(v.field for v in details["BadRequest"].field_violations) == ["code", "state"]


async def test_provider_down_is_unavailable_and_the_state_is_spent(client, fake):
    start = await _start(client)
    back = await _consent(start, "dave")
    fake.down = True
    try:
        code, details = await _error(
            client.auth.CompleteOAuth(auth_pb2.CompleteOAuthRequest(code=back["code"], state=back["state"]))
        )
    finally:
        fake.down = False
    assert code == grpc.StatusCode.UNAVAILABLE and "RetryInfo" in details


async def test_unconfigured_provider_is_failed_precondition(service_env):
    async with auth_server(service_env, ECO2_AUTH_REDIRECT_URIS=f'["{REDIRECT}"]') as srv:
        c = AuthClient(srv.port)
        try:
            code, details = await _error(
                c.auth.StartOAuth(auth_pb2.StartOAuthRequest(provider=auth_pb2.PROVIDER_NAVER, redirect_uri=REDIRECT))
            )
        finally:
            await c.close()
    assert code == grpc.StatusCode.FAILED_PRECONDITION and details["ErrorInfo"].reason == "PROVIDER_NOT_CONFIGURED"


async def test_state_is_kept_in_valkey_for_ten_minutes_only(client, dataplane):
    from eco2.services.dataplane.urls import create_redis

    start = await _start(client)
    valkey = create_redis(dataplane.redis_url)
    try:
        ttl = await valkey.ttl(f"auth:oauth:state:{start.state}")
    finally:
        await valkey.aclose()
    assert 590 <= ttl <= 600
    assert 590 <= start.expires_at.seconds - int(__import__("time").time()) <= 601
