"""Helpers for the auth tests: an auth server on a free port, Istio-shaped CheckRequests."""

from __future__ import annotations

import contextlib
import json
import urllib.parse
import uuid
from collections.abc import AsyncIterator

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from eco2.auth.v1 import auth_pb2, auth_pb2_grpc
from support.servers import env, running

PROTECTED_PATH = "/eco2.character.v1.CharacterService/ListCharacters"


@contextlib.asynccontextmanager
async def auth_server(service_env: dict[str, str], **extra: str) -> AsyncIterator:
    from eco2.services.auth.app import create

    with env({**service_env, **extra}):
        app = create()
    async with running(app, metrics=False) as server:
        server.app = app
        yield server


class AuthClient:
    """Stubs for AuthService and Authorization on one channel."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        self.authz = external_auth_pb2_grpc.AuthorizationStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def sign_in(self, name: str | None = None) -> auth_pb2.DevSignInResponse:
        return await self.auth.DevSignIn(
            auth_pb2.DevSignInRequest(display_name=name or f"tester-{uuid.uuid4().hex[:8]}")
        )

    async def check(self, **kwargs) -> external_auth_pb2.CheckResponse:
        return await self.authz.Check(check_request(**kwargs))


def check_request(
    *,
    token: str | None = None,
    path: str = PROTECTED_PATH,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    source: str = "10.1.2.3",
) -> external_auth_pb2.CheckRequest:
    """What Istio's Envoy sends for a gRPC-Web call through the ingress gateway."""
    req = external_auth_pb2.CheckRequest()
    attrs = req.attributes
    attrs.source.address.socket_address.address = source
    attrs.source.address.socket_address.port_value = 53422
    attrs.source.principal = ""
    attrs.destination.address.socket_address.address = "10.0.0.10"
    attrs.destination.address.socket_address.port_value = 8443
    attrs.destination.principal = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
    attrs.request.time.GetCurrentTime()
    http = attrs.request.http
    http.id = str(uuid.uuid4().int % 10**19)
    http.method = method
    http.path = path
    http.host = "eco2.example"
    http.scheme = "https"
    http.protocol = "HTTP/2"
    http.headers.update(
        {
            ":authority": "eco2.example",
            ":method": method,
            ":path": path,
            ":scheme": "https",
            "content-type": "application/grpc-web+proto",
            "x-grpc-web": "1",
            "user-agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
            "accept": "application/grpc-web+proto",
            "x-forwarded-for": source,
            "x-forwarded-proto": "https",
            "x-request-id": str(uuid.uuid4()),
            "x-envoy-external-address": source,
        }
    )
    if token is not None:
        http.headers["authorization"] = f"Bearer {token}"
    http.headers.update(headers or {})
    req.attributes.context_extensions["route"] = "api"
    return req


def allowed(resp: external_auth_pb2.CheckResponse) -> bool:
    return resp.status.code == 0 and resp.HasField("ok_response")


def injected(resp: external_auth_pb2.CheckResponse) -> dict[str, str]:
    return {h.header.key: h.header.value for h in resp.ok_response.headers}


def identity_of(resp: external_auth_pb2.CheckResponse) -> dict:
    """The claims of the wristband an allow injects (its signature is the services' to check)."""
    import jwt

    return jwt.decode(injected(resp)["x-eco2-identity"], options={"verify_signature": False})


def denied(resp: external_auth_pb2.CheckResponse) -> tuple[int, dict, dict[str, str]]:
    """(http status, the body's error object {code, reason, message}, headers) of a deny,
    checked for the shape every deny has: the gateway's JSON error body, and the gRPC status
    as `grpc-status`/`grpc-message` headers for Envoy to answer gRPC clients with."""
    assert resp.HasField("denied_response"), resp
    d = resp.denied_response
    headers = {h.header.key: h.header.value for h in d.headers}
    body = json.loads(d.body)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "reason", "message"}, body
    error = body["error"]
    assert error["code"] == d.status.code
    assert headers["grpc-status"] == str(resp.status.code) and resp.status.code != 0
    assert urllib.parse.unquote(headers["grpc-message"]) == error["message"] == resp.status.message
    return d.status.code, error, headers
