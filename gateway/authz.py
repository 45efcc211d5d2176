"""Auth at the edge: the same ext-authz `Check` contract Envoy uses, called by the gateway.

Edge mode (the gateway on its own): client-sent `x-eco2-*` headers are dropped, `Check` sees
the rest of the request, an allow adds the headers it injected (the `x-eco2-identity`
wristband services verify, x-eco2-user-id for logs) and removes `headers_to_remove`; a deny
answers with its status, headers and body. Any failure to get an answer denies (fail closed,
503). Public paths are the route table's (mesh/routes.yaml), matched on canonical paths only.
Mesh mode: an Envoy in front (the embedded ingress, or Istio's) already ran `Check`; its
`x-eco2-*` headers are forwarded as sent — services verify the wristband, so a caller that
skips the Envoy gains nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import grpc
from envoy.config.core.v3 import address_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc

from eco2.mesh.routes import PublicPaths, canonical, load

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
    #: deny: HTTP status, gRPC status code, headers and body for the client
    status: int = 200
    grpc_code: int = 0
    deny_headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    reason: str = ""


class Authorizer:
    def __init__(self, settings: GatewaySettings, channel_for) -> None:
        self.settings = settings
        self.mode = settings.gateway_auth_mode
        self._channel_for = channel_for
        self._stub = None
        self.public = PublicPaths(load().public_paths())

    def is_public(self, req: Request) -> bool:
        """A public path of the route table, judged on the raw path as sent: `/static/../x`
        is not under /static/ (Check refuses such a path outright)."""
        raw = req.scope.get("raw_path", req.path.encode()).decode("latin-1")
        return canonical(raw) and req.path in self.public

    def _stub_(self):
        if self._stub is None:
            self._stub = external_auth_pb2_grpc.AuthorizationStub(self._channel_for(self.settings.auth_addr))
        return self._stub

    async def check(self, req: Request) -> Decision:
        if self.mode == AuthMode.MESH:
            return Decision(True, headers=[(k, v) for k, v in req.headers.items() if k.startswith(IDENTITY_PREFIX)])
        if self.is_public(req):
            return Decision(True)
        headers = {k: v for k, v in req.headers.items() if not k.startswith(IDENTITY_PREFIX)}
        host = headers.get("host") or headers.get(":authority", "")
        headers.update(
            {
                ":method": req.method,
                ":path": req.scope.get("raw_path", req.path.encode()).decode("latin-1"),
                ":authority": host,
            }
        )
        client = req.scope.get("client") or ("", 0)
        attrs = attribute_context_pb2.AttributeContext(
            source=attribute_context_pb2.AttributeContext.Peer(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address=str(client[0]), port_value=int(client[1] or 0))
                )
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
            reply = await self._stub_().Check(
                external_auth_pb2.CheckRequest(attributes=attrs), timeout=self.settings.gateway_authz_timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("ext-authz Check failed: %s %s", exc.code().name, exc.details())
            return Decision(
                False,
                status=503,
                grpc_code=14,
                body=b'{"error":{"code":503,"reason":"AUTHZ_UNAVAILABLE","message":"authorization service unavailable"}}',
                deny_headers=[("content-type", "application/json"), ("retry-after", "1")],
                reason="authorization service unavailable",
            )
        if reply.status.code == 0 and reply.HasField("ok_response"):
            ok = reply.ok_response
            return Decision(
                True,
                headers=[
                    (h.header.key.lower(), h.header.value or h.header.raw_value.decode("latin-1")) for h in ok.headers
                ],
                removed={k.lower() for k in ok.headers_to_remove},
            )
        if reply.status.code == 0:
            return Decision(True)
        denied = reply.denied_response
        status = denied.status.code or (401 if reply.status.code == 16 else 403)
        headers = [(h.header.key.lower(), h.header.value) for h in denied.headers]
        return Decision(
            False,
            status=int(status),
            grpc_code=reply.status.code or 7,
            # grpc-status/grpc-message are for Envoy's gRPC answer; the gateway writes its own
            deny_headers=[(k, v) for k, v in headers if k not in ("grpc-status", "grpc-message")],
            body=denied.body.encode(),
            reason=reply.status.message or "denied",
        )
