"""The mesh identity (wristband) on the real runtime: what a service accepts as its caller.

A service port reached directly — with grpcurl, or by a compromised neighbour — must not let
anyone act as anyone: only a wristband signed by auth, for the mesh audience, unexpired and
typed "identity" names a caller; a bare x-eco2-user-id names nobody.
"""

from __future__ import annotations

import json
import time

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from eco2.auth.v1 import auth_pb2, auth_pb2_grpc
from eco2.services.runtime.errors import status_details, unpack_details
from eco2.services.runtime.settings import RuntimeSettings
from support.auth import AuthClient, check_request, injected
from support.identity import TEST_JWKS, as_user, wristband
from support.probe import ProbeApp
from support.servers import running


def _probe(**kw) -> ProbeApp:
    return ProbeApp(RuntimeSettings(grpc_port=0, metrics_port=0, identity_jwks=TEST_JWKS, **kw))


@pytest.fixture(scope="module")
async def probe(session_auth):
    async with running(_probe(identity_jwks_from=session_auth), metrics=False) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            yield ch


async def _whoami(ch, metadata) -> dict:
    return json.loads(await ch.unary_unary("/eco2test.Probe/WhoAmI")(b"", metadata=metadata, timeout=5))


async def _refused(ch, metadata, reason: str, code=grpc.StatusCode.UNAUTHENTICATED) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _whoami(ch, metadata)
    assert err.value.code() == code, err.value
    assert unpack_details(status_details(err.value))["ErrorInfo"].reason == reason


async def test_a_valid_wristband_names_the_caller(probe):
    assert await _whoami(probe, as_user("u-1", roles=("user", "admin"), provider="kakao")) == {
        "user": "u-1",
        "roles": ["user", "admin"],
        "provider": "kakao",
        "job": "",
    }


async def test_a_bare_user_id_header_names_nobody(probe):
    await _refused(probe, (("x-eco2-user-id", "admin"), ("x-eco2-roles", "admin")), "NO_IDENTITY")
    await _refused(probe, (), "NO_IDENTITY")


@pytest.mark.parametrize(
    "case,reason",
    [
        ("forged", "IDENTITY_INVALID"),  # right kid, another key's signature
        ("unknown_kid", "IDENTITY_UNKNOWN_KEY"),
        ("expired", "IDENTITY_EXPIRED"),
        ("audience", "IDENTITY_AUDIENCE"),  # an access token's audience
        ("typ", "IDENTITY_TYPE"),  # an access token is not a wristband
        ("issuer", "IDENTITY_INVALID"),
        ("alg_none", "IDENTITY_MALFORMED"),
        ("garbage", "IDENTITY_MALFORMED"),
        ("exp_string", "IDENTITY_INVALID"),
        ("no_sub", "IDENTITY_INVALID"),
    ],
)
async def test_a_bad_wristband_is_refused(probe, case, reason):
    other = ec.generate_private_key(ec.SECP256R1())
    token = {
        "forged": lambda: wristband("u-1", key=other),
        "unknown_kid": lambda: wristband("u-1", key=other, kid="nobody-knows"),
        "expired": lambda: wristband("u-1", iat=int(time.time()) - 3600, exp=int(time.time()) - 600),
        "audience": lambda: wristband("u-1", aud="eco2"),
        "typ": lambda: wristband("u-1", typ="access"),
        "issuer": lambda: wristband("u-1", iss="someone-else"),
        "alg_none": lambda: jwt.encode(
            {"sub": "u-1", "typ": "identity"}, None, algorithm="none", headers={"kid": "tests-identity"}
        ),
        "garbage": lambda: "not-a-jwt",
        "exp_string": lambda: wristband("u-1", exp=str(int(time.time()) + 600)),
        "no_sub": lambda: wristband("u-1", sub=""),
    }[case]()
    await _refused(probe, (("x-eco2-identity", token),), reason)


async def test_a_bad_wristband_is_refused_even_where_no_caller_is_needed(probe):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await probe.unary_unary("/eco2test.Probe/Echo")(
            b"", metadata=(("x-eco2-identity", wristband("u-1", key=ec.generate_private_key(ec.SECP256R1()))),)
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_the_wristband_of_a_real_check_verifies_with_keys_fetched_from_auth(probe, session_auth):
    """Auth's own keys are not pinned: the probe fetches them with GetJwks on the unknown kid."""
    async with grpc.aio.insecure_channel(session_auth) as ch:
        session = await auth_pb2_grpc.AuthServiceStub(ch).DevSignIn(
            auth_pb2.DevSignInRequest(display_name="wristband-user")
        )
        client = AuthClient(int(session_auth.rsplit(":", 1)[1]))
        try:
            resp = await client.authz.Check(check_request(token=session.tokens.access_token))
        finally:
            await client.close()
    token = injected(resp)["x-eco2-identity"]
    assert (await _whoami(probe, (("x-eco2-identity", token),)))["user"] == session.user.id


async def test_keys_unreachable_is_unavailable_with_retry_info():
    async with running(_probe(identity_jwks_from="127.0.0.1:1"), metrics=False) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            token = wristband("u-1", key=ec.generate_private_key(ec.SECP256R1()), kid="rotated-in")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _whoami(ch, (("x-eco2-identity", token),))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            details = unpack_details(status_details(err.value))
            assert details["ErrorInfo"].reason == "IDENTITY_KEYS_UNAVAILABLE" and "RetryInfo" in details
            # pinned keys keep working while auth is unreachable
            assert (await _whoami(ch, as_user("u-2")))["user"] == "u-2"


async def test_the_wristband_propagates_downstream_and_is_verified_there(probe, session_auth):
    async with running(_probe(identity_jwks_from=session_auth), metrics=False) as back:
        front_app = ProbeApp(
            RuntimeSettings(grpc_port=0, metrics_port=0, identity_jwks=TEST_JWKS), downstream=f"127.0.0.1:{back.port}"
        )
        async with (
            running(front_app, metrics=False) as front,
            grpc.aio.insecure_channel(f"127.0.0.1:{front.port}") as ch,
        ):
            reply = json.loads(await ch.unary_unary("/eco2test.Probe/Forward")(b"", metadata=as_user("u-9"), timeout=5))
            assert reply["user"] == "u-9"
            # the bare header is not forwarded (nor trusted) downstream
            reply = json.loads(
                await ch.unary_unary("/eco2test.Probe/Forward")(b"", metadata=(("x-eco2-user-id", "u-9"),), timeout=5)
            )
            assert reply["user"] is None


async def test_job_identity_names_the_job_and_outlives_a_request_wristband(session_auth):
    async with grpc.aio.insecure_channel(session_auth) as ch:
        stub = auth_pb2_grpc.MeshIdentityServiceStub(ch)
        reply = await stub.IssueJobIdentity(
            auth_pb2.IssueJobIdentityRequest(job_id="chat-1"), metadata=as_user("u-7", provider="naver")
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.IssueJobIdentity(
                auth_pb2.IssueJobIdentityRequest(job_id="chat-1"), metadata=(("x-eco2-user-id", "u-7"),)
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.IssueJobIdentity(auth_pb2.IssueJobIdentityRequest(job_id=""), metadata=as_user("u-7"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    claims = jwt.decode(reply.identity, options={"verify_signature": False})
    assert claims["sub"] == "u-7" and claims["job"] == "chat-1" and claims["provider"] == "naver"
    assert claims["exp"] - time.time() > 3600 and reply.expires_at.seconds == claims["exp"]
    async with running(_probe(identity_jwks_from=session_auth), metrics=False) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            assert (await _whoami(ch, (("x-eco2-identity", reply.identity),)))["job"] == "chat-1"


async def test_mesh_identity_service_is_never_routed_from_the_edge():
    from eco2.mesh.routes import load

    table = load()
    edge = {prefix for prefix, _ in table.grpc_routes()}
    assert "/eco2.auth.v1.MeshIdentityService/" not in edge and "/envoy.service.auth.v3.Authorization/" not in edge
    assert {"eco2.auth.v1.MeshIdentityService", "envoy.service.auth.v3.Authorization"} <= set(
        table.services["auth"].internal
    )
