"""AuthService over real gRPC: dev sign-in, JWKS, refresh rotation with family revocation,
sign-out, profile, account deletion, keys that survive a restart, production rules."""

from __future__ import annotations

import time
import uuid

import grpc
import jwt
import pytest
from google.protobuf import field_mask_pb2

from eco2.auth.v1 import auth_pb2
from eco2.services.runtime.errors import status_details, unpack_details
from support.auth import AuthClient, allowed, auth_server, denied
from support.identity import as_user


@pytest.fixture(scope="module")
async def server(service_env):
    async with auth_server(service_env) as srv:
        yield srv


@pytest.fixture(scope="module")
async def client(server):
    c = AuthClient(server.port)
    yield c
    await c.close()


def _md(session) -> tuple[tuple[str, str], ...]:
    """What ext-authz injects plus the original authorization header, as Envoy forwards them."""
    return (*as_user(session.user.id), ("authorization", f"Bearer {session.tokens.access_token}"))


async def _error(coro):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await coro
    status = status_details(err.value)
    return err.value.code(), (unpack_details(status) if status else {})


async def test_dev_sign_in_issues_es256_tokens_with_the_claims(client, server):
    r = await client.sign_in("에코 테스터")
    assert r.user.display_name == "에코 테스터" and r.user.provider == auth_pb2.PROVIDER_DEV
    assert list(r.user.roles) == [auth_pb2.ROLE_USER] and r.tokens.token_type == "Bearer"
    header = jwt.get_unverified_header(r.tokens.access_token)
    assert header["alg"] == "ES256" and header["kid"] == server.app.tokens.ring.signer.kid
    claims = jwt.decode(r.tokens.access_token, options={"verify_signature": False})
    assert {"sub", "jti", "iat", "exp", "iss", "aud", "typ", "roles", "provider"} <= set(claims)
    assert claims["typ"] == "access" and claims["sub"] == r.user.id and claims["provider"] == "dev"
    assert claims["exp"] - claims["iat"] == server.app.settings.auth_access_ttl_s
    assert r.tokens.access_expires_at.seconds == claims["exp"]


async def test_same_display_name_is_the_same_user(client):
    name = f"same-{uuid.uuid4().hex[:6]}"
    a, b = await client.sign_in(name), await client.sign_in(name)
    assert a.user.id == b.user.id and a.tokens.access_token != b.tokens.access_token


@pytest.mark.parametrize(
    "name,why",
    [
        ("", "is required"),
        ("x" * 41, "at most 40"),
        ("a\nb", "single line"),
        ("a\x00b", "control"),
        ("   ", "is required"),
    ],
)
async def test_dev_sign_in_bad_display_name(client, name, why):
    code, details = await _error(client.auth.DevSignIn(auth_pb2.DevSignInRequest(display_name=name)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = details["BadRequest"].field_violations
    assert violation.field == "display_name" and why in violation.description


async def test_jwks_verifies_issued_tokens_with_an_independent_client(client, server):
    r = await client.sign_in()
    jwks = await client.auth.GetJwks(auth_pb2.GetJwksRequest())
    keys = {k.kid: k for k in jwks.keys}
    kid = jwt.get_unverified_header(r.tokens.access_token)["kid"]
    k = keys[kid]
    assert (k.kty, k.crv, k.alg, k.use) == ("EC", "P-256", "ES256", "sig")
    public = jwt.PyJWK({"kty": k.kty, "crv": k.crv, "x": k.x, "y": k.y, "kid": k.kid, "alg": k.alg}).key
    s = server.app.settings
    claims = jwt.decode(
        r.tokens.access_token, public, algorithms=["ES256"], audience=s.auth_audience, issuer=s.auth_issuer
    )
    assert claims["sub"] == r.user.id


async def test_get_me_and_update_profile(client):
    r = await client.sign_in()
    me = await client.auth.GetMe(auth_pb2.GetMeRequest(), metadata=_md(r))
    assert me.user.id == r.user.id and list(me.user.linked_providers) == [auth_pb2.PROVIDER_DEV]
    updated = await client.auth.UpdateProfile(
        auth_pb2.UpdateProfileRequest(
            user=auth_pb2.User(
                display_name="새 이름", profile_image_url="https://img.example/a.png", email="ignored@x"
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name", "profile_image_url"]),
        ),
        metadata=_md(r),
    )
    assert (
        updated.user.display_name == "새 이름"
        and updated.user.profile_image_url == "https://img.example/a.png"
        and updated.user.email == ""
    )


async def test_get_me_without_identity_is_unauthenticated(client):
    code, details = await _error(client.auth.GetMe(auth_pb2.GetMeRequest()))
    assert code == grpc.StatusCode.UNAUTHENTICATED and details["ErrorInfo"].reason == "NO_IDENTITY"


@pytest.mark.parametrize(
    "user,paths,field",
    [
        (auth_pb2.User(display_name="x"), [], "update_mask"),
        (auth_pb2.User(email="a@b"), ["email"], "update_mask"),
        (auth_pb2.User(display_name=""), ["display_name"], "user.display_name"),
        (auth_pb2.User(profile_image_url="javascript:alert(1)"), ["profile_image_url"], "user.profile_image_url"),
    ],
)
async def test_update_profile_bad_input(client, user, paths, field):
    r = await client.sign_in()
    code, details = await _error(
        client.auth.UpdateProfile(
            auth_pb2.UpdateProfileRequest(user=user, update_mask=field_mask_pb2.FieldMask(paths=paths)), metadata=_md(r)
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [v.field for v in details["BadRequest"].field_violations]


async def test_thousands_of_bad_paths_get_a_bounded_error_the_client_can_read(client):
    """Each bad path is a violation; all 5000 made a 450 KB trailer, over gRPC clients' 16 KiB
    metadata limit: the client got RESOURCE_EXHAUSTED "Stream removed", never the error
    (found by tests/system/test_fuzz_rpc.py). The runtime sends the first violations and a count."""
    from eco2.services.runtime.errors import MAX_VIOLATIONS

    r = await client.sign_in()
    paths = [f"no_such_field_{i}_" + "x" * 60 for i in range(5000)]
    code, details = await _error(
        client.auth.UpdateProfile(
            auth_pb2.UpdateProfileRequest(update_mask=field_mask_pb2.FieldMask(paths=paths)), metadata=_md(r)
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    violations = details["BadRequest"].field_violations
    assert len(violations) == MAX_VIOLATIONS + 1
    assert violations[0].field == "update_mask" and "no_such_field_0_" in violations[0].description
    assert violations[-1].description == f"and {5000 - MAX_VIOLATIONS} more violations"


async def test_refresh_rotates_and_reuse_revokes_the_family(client):
    r = await client.sign_in()
    first = await client.auth.Refresh(auth_pb2.RefreshRequest(refresh_token=r.tokens.refresh_token))
    assert first.tokens.refresh_token != r.tokens.refresh_token
    assert allowed(await client.check(token=first.tokens.access_token))
    second = await client.auth.Refresh(auth_pb2.RefreshRequest(refresh_token=first.tokens.refresh_token))
    # replaying the first (already rotated) refresh token: theft detected
    code, details = await _error(client.auth.Refresh(auth_pb2.RefreshRequest(refresh_token=r.tokens.refresh_token)))
    assert code == grpc.StatusCode.UNAUTHENTICATED and details["ErrorInfo"].reason == "REFRESH_TOKEN_REUSED"
    # the whole family is dead: the newest refresh token and every access token of the family
    code, details = await _error(
        client.auth.Refresh(auth_pb2.RefreshRequest(refresh_token=second.tokens.refresh_token))
    )
    assert details["ErrorInfo"].reason == "REFRESH_TOKEN_REVOKED"
    for access in (r.tokens.access_token, first.tokens.access_token, second.tokens.access_token):
        status, body, _ = denied(await client.check(token=access))
        assert (status, body["reason"]) == (403, "TOKEN_REVOKED")


@pytest.mark.parametrize("token,reason", [("", None), ("garbage", "TOKEN_MALFORMED")])
async def test_refresh_bad_token(client, token, reason):
    code, details = await _error(client.auth.Refresh(auth_pb2.RefreshRequest(refresh_token=token)))
    if reason is None:
        assert (
            code == grpc.StatusCode.INVALID_ARGUMENT
            and details["BadRequest"].field_violations[0].field == "refresh_token"
        )
    else:
        assert code == grpc.StatusCode.UNAUTHENTICATED and details["ErrorInfo"].reason == reason


async def test_refresh_with_an_access_token_is_refused(client):
    r = await client.sign_in()
    code, details = await _error(client.auth.Refresh(auth_pb2.RefreshRequest(refresh_token=r.tokens.access_token)))
    assert code == grpc.StatusCode.UNAUTHENTICATED and details["ErrorInfo"].reason == "TOKEN_TYPE"


async def test_sign_out_revokes_access_and_refresh(client):
    r = await client.sign_in()
    other = await client.sign_in()  # another session of someone else stays valid
    await client.auth.SignOut(auth_pb2.SignOutRequest(refresh_token=r.tokens.refresh_token), metadata=_md(r))
    status, body, _ = denied(await client.check(token=r.tokens.access_token))
    assert (status, body["reason"]) == (403, "TOKEN_REVOKED")
    code, _ = await _error(client.auth.Refresh(auth_pb2.RefreshRequest(refresh_token=r.tokens.refresh_token)))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert allowed(await client.check(token=other.tokens.access_token))


async def test_sign_out_all_sessions(client):
    name = f"multi-{uuid.uuid4().hex[:6]}"
    a, b = await client.sign_in(name), await client.sign_in(name)
    await client.auth.SignOut(auth_pb2.SignOutRequest(all_sessions=True), metadata=_md(a))
    for s in (a, b):
        assert denied(await client.check(token=s.tokens.access_token))[0] == 403
        code, _ = await _error(client.auth.Refresh(auth_pb2.RefreshRequest(refresh_token=s.tokens.refresh_token)))
        assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_sign_out_with_someone_elses_refresh_token_is_permission_denied(client):
    a, b = await client.sign_in(), await client.sign_in()
    code, _ = await _error(
        client.auth.SignOut(auth_pb2.SignOutRequest(refresh_token=b.tokens.refresh_token), metadata=_md(a))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert allowed(await client.check(token=b.tokens.access_token))


async def test_sign_out_without_identity(client):
    code, _ = await _error(client.auth.SignOut(auth_pb2.SignOutRequest()))
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_delete_account(client):
    r = await client.sign_in()
    code, details = await _error(
        client.auth.DeleteAccount(auth_pb2.DeleteAccountRequest(confirm_user_id="someone-else"), metadata=_md(r))
    )
    assert (
        code == grpc.StatusCode.INVALID_ARGUMENT
        and details["BadRequest"].field_violations[0].field == "confirm_user_id"
    )
    await client.auth.DeleteAccount(auth_pb2.DeleteAccountRequest(confirm_user_id=r.user.id), metadata=_md(r))
    assert denied(await client.check(token=r.tokens.access_token))[0] == 403
    code, _ = await _error(client.auth.GetMe(auth_pb2.GetMeRequest(), metadata=_md(r)))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = await _error(client.auth.Refresh(auth_pb2.RefreshRequest(refresh_token=r.tokens.refresh_token)))
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_tokens_survive_a_restart_and_rotation_keeps_old_keys(service_env, server, client):
    from eco2.services.auth.domain import generate_key

    r = await client.sign_in()
    old_kid = server.app.tokens.ring.signer.kid
    # rotation: a new key is added to the store; a fresh process signs with it (created a second
    # later than any key of this session: the store keeps whole seconds and the newest signs)
    await server.app.key_store.add(generate_key(now=time.time() + 1))
    async with auth_server(service_env) as second:
        c2 = AuthClient(second.port)
        try:
            assert allowed(await c2.check(token=r.tokens.access_token))  # old key still verifies
            jwks = await c2.auth.GetJwks(auth_pb2.GetJwksRequest())
            assert len(jwks.keys) >= 2 and old_kid in {k.kid for k in jwks.keys}
            fresh = await c2.sign_in()
            assert jwt.get_unverified_header(fresh.tokens.access_token)["kid"] != old_kid
        finally:
            await c2.close()
    # before its periodic reload, the first server's Check accepts a token of the new kid (it
    # re-reads the keys for a kid it does not know) ...
    assert allowed(await client.check(token=fresh.tokens.access_token))
    # ... and publishes the new key (services ask GetJwks for a kid they do not know: the one the
    # fresh process signs wristbands with)
    new_kid = jwt.get_unverified_header(fresh.tokens.access_token)["kid"]
    assert new_kid in {k.kid for k in (await client.auth.GetJwks(auth_pb2.GetJwksRequest())).keys}


async def test_production_refuses_dev_sign_in_and_reads_keys_from_a_directory(service_env, session_dir):
    from eco2.services.auth.domain import generate_key

    keys = session_dir / f"keys-{uuid.uuid4().hex[:6]}"
    keys.mkdir()
    key = generate_key()
    (keys / f"{key.kid}.pem").write_text(key.private_pem())
    async with auth_server(service_env, ECO2_DEPLOYMENT="production", ECO2_AUTH_KEYS_DIR=str(keys)) as prod:
        c = AuthClient(prod.port)
        try:
            code, details = await _error(c.sign_in())
            assert code == grpc.StatusCode.PERMISSION_DENIED and details["ErrorInfo"].reason == "DEV_SIGN_IN_DISABLED"
            jwks = await c.auth.GetJwks(auth_pb2.GetJwksRequest())
            assert [k.kid for k in jwks.keys] == [key.kid]
        finally:
            await c.close()


async def test_production_without_keys_refuses_to_start(service_env):
    with pytest.raises(RuntimeError, match="ECO2_AUTH_KEYS_DIR"):
        async with auth_server(service_env, ECO2_DEPLOYMENT="production"):
            pass
