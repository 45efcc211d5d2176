"""Auth at the edge: the same ext-authz `Check` contract Envoy uses, called by the gateway.

Edge mode (`eco2 up`): client-sent `x-eco2-*` headers are dropped, `Check` sees the rest
of the request, an allow adds the headers it injected (x-eco2-user-id, x-eco2-roles,
x-eco2-provider) and removes `headers_to_remove`; a deny answers with its status, headers
and body. Any failure to get an answer denies (fail closed, 503).
Mesh mode: Istio's Envoy already ran `Check`; its `x-eco2-*` headers are trusted as sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import grpc
from envoy.config.core.v3 import address_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc

from .http import Request
from .settings import AuthMode, GatewaySettings

log = logging.getLogger("eco2.gateway.authz")
IDENTITY_PREFIX = "x-eco2-"


@dataclass(slots=True)
class Decision:
    allowed: bool
    #: headers to forward upstream (allow), as (lowercase name, value)
    headers: list[tuple[str, str]] = field(default_factory=list)
    removed: set[str] = field(default_factory=set)
    #: deny: HTTP status, headers and body for the client
    status: int = 200
    deny_headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    reason: str = ""


class Authorizer:
    def __init__(self, settings: GatewaySettings, channel_for) -> None:
        self.settings = settings
        self.mode = settings.gateway_auth_mode
        self._channel_for = channel_for
        self._stub = None

    def is_public(self, path: str) -> bool:
        for p in self.settings.gateway_public_paths:
            if path == p or (p.endswith("*") and path.startswith(p[:-1])):
                return True
        return False

    def _stub_(self):
        if self._stub is None:
            self._stub = external_auth_pb2_grpc.AuthorizationStub(self._channel_for(self.settings.auth_addr))
        return self._stub

    async def check(self, req: Request) -> Decision:
        if self.mode == AuthMode.MESH:
            return Decision(True, headers=[(k, v) for k, v in req.headers.items() if k.startswith(IDENTITY_PREFIX)])
        if self.is_public(req.path):
            return Decision(True)
        headers = {k: v for k, v in req.headers.items() if not k.startswith(IDENTITY_PREFIX)}
        host = headers.get("host") or headers.get(":authority", "")
        headers.update({":method": req.method, ":path": req.scope.get("raw_path", req.path.encode()).decode("latin-1"), ":authority": host})
        client = req.scope.get("client") or ("", 0)
        attrs = attribute_context_pb2.AttributeContext(
            source=attribute_context_pb2.AttributeContext.Peer(
                address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=str(client[0]), port_value=int(client[1] or 0)))
            ),
            request=attribute_context_pb2.AttributeContext.Request(
                http=attribute_context_pb2.AttributeContext.HttpRequest(
                    method=req.method,
                    path=headers[":path"],
                    host=host,
                    scheme=req.scope.get("scheme", "http"),
                    protocol=f"HTTP/{req.scope.get('http_version', '1.1')}",
                    headers=headers,
                )
            ),
        )
        try:
            reply = await self._stub_().Check(external_auth_pb2.CheckRequest(attributes=attrs), timeout=self.settings.gateway_authz_timeout_s)
        except grpc.aio.AioRpcError as exc:
            log.warning("ext-authz Check failed: %s %s", exc.code().name, exc.details())
            return Decision(False, status=503, body=b'{"error":{"code":503,"reason":"AUTHZ_UNAVAILABLE","message":"authorization service unavailable"}}',
                            deny_headers=[("content-type", "application/json")], reason="AUTHZ_UNAVAILABLE")
        if reply.status.code == 0 and reply.HasField("ok_response"):
            ok = reply.ok_response
            return Decision(
                True,
                headers=[(h.header.key.lower(), h.header.value or h.header.raw_value.decode("latin-1")) for h in ok.headers],
                removed={k.lower() for k in ok.headers_to_remove},
            )
        if reply.status.code == 0:
            return Decision(True)
        denied = reply.denied_response
        status = denied.status.code or (401 if reply.status.code == 16 else 403)
        return Decision(
            False,
            status=int(status),
            deny_headers=[(h.header.key.lower(), h.header.value) for h in denied.headers],
            body=denied.body.encode(),
            reason=reply.status.message or "DENIED",
        )
