"""A developer's wristband on the embedded stack, for `eco2 chat` and `eco2 identity`.

Services accept only an `x-eco2-identity` wristband (docs/identity.md). On one machine a
developer gets one the way the edge does: dev sign-in for a display name (embedded only), then
auth's ext-authz `Check` with that access token, which injects the wristband. Contracts only:
this talks to auth over gRPC like any client.
"""

from __future__ import annotations

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from eco2.auth.v1 import auth_pb2, auth_pb2_grpc
from eco2.services.runtime.identity import IDENTITY_KEY


class NoIdentity(Exception):
    """The stack would not issue a wristband (the message says why)."""


async def dev_wristband(auth_addr: str, display_name: str, timeout_s: float = 10.0) -> str:
    async with grpc.aio.insecure_channel(auth_addr) as ch:
        try:
            session = await auth_pb2_grpc.AuthServiceStub(ch).DevSignIn(
                auth_pb2.DevSignInRequest(display_name=display_name), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise NoIdentity(f"dev sign-in failed: {exc.code().name}: {exc.details()}") from None
        request = external_auth_pb2.CheckRequest()
        http = request.attributes.request.http
        http.method, http.path = "POST", "/eco2.auth.v1.AuthService/GetMe"
        http.headers["authorization"] = f"Bearer {session.tokens.access_token}"
        try:
            reply = await external_auth_pb2_grpc.AuthorizationStub(ch).Check(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise NoIdentity(f"ext-authz Check failed: {exc.code().name}: {exc.details()}") from None
    for option in reply.ok_response.headers:
        if option.header.key == IDENTITY_KEY:
            return option.header.value
    raise NoIdentity(f"ext-authz did not allow the dev user: {reply.status.message or 'no wristband injected'}")
