"""The mesh's Istio manifests, rendered from the route table (mesh/routes.yaml).

`render(params)` gives the resources of one namespace:
- `Gateway` eco2-gateway, the browser edge on Istio's ingress gateway: HTTP on port 80 (protocol
  GRPC-WEB, so Envoy translates gRPC-Web there) and HTTPS on 443 when a TLS credential is named;
- `VirtualService` eco2-edge bound to it: gRPC of every edge service straight to its Kubernetes
  Service, the internal gRPC services (ext-authz `Check`) refused, CORS preflights answered at
  the edge, every other request to the gateway;
- a `DestinationRule` per service: Istio mTLS, HTTP/2 upstream, outlier detection;
- `PeerAuthentication` STRICT for the namespace;
- `AuthorizationPolicy` CUSTOM on the ingress gateway: every request goes to the eco2 ext-authz
  provider (auth's `Check`), public paths too: `Check` lets those through itself, and fails closed;
- an `AuthorizationPolicy` ALLOW per service: only the workloads the route table names as its
  callers, by mTLS principal, and only on the service's own paths and health.
`mesh_config(params)` gives the fragment of Istio's MeshConfig that registers the ext-authz
provider; it belongs to Istio's installation (istiod), not to the namespace.

`helm_template()` renders the same resources with Helm expressions in place of the parameters,
for the chart (helm/eco2/templates/istio.yaml).

Kubelet probes do not pass these policies: Istio rewrites a pod's probes to its sidecar agent,
which calls the app over localhost, outside the mesh's mTLS and authorization.

Regenerate the committed files after changing the route table or this module:
    python -m eco2.mesh.istio > mesh/istio/eco2.yaml
    python -m eco2.mesh.istio --mesh-config > mesh/istio/meshconfig.yaml
    python -m eco2.mesh.istio --helm > helm/eco2/templates/istio.yaml
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import yaml

from .envoy import deny_mappers
from .routes import INGRESS, RouteTable, Service, load

#: Kubernetes Service ports: every service serves gRPC on the port named `grpc`, the gateway
#: HTTP on the port named `http`.
GRPC_PORT = 50051
HTTP_PORT = 8080
#: The pods of service NAME carry the label POD_LABEL: eco2-NAME (its ALLOW policy selects them).
POD_LABEL = "app.kubernetes.io/name"
#: The gRPC service that Envoy's ext_authz filter calls.
EXT_AUTHZ_GRPC = "envoy.service.auth.v3.Authorization"
GATEWAY_NAME = "eco2-gateway"
#: The ServiceAccount of Istio's default ingress gateway.
INGRESS_SERVICE_ACCOUNT = "istio-ingressgateway-service-account"
EDGE_HTTP_PORT = 80
EDGE_HTTPS_PORT = 443

# Native gRPC (application/grpc, application/grpc+proto, ...); gRPC-Web is matched apart.
_GRPC_CONTENT_TYPE = r"application/grpc([+;].*)?"
_GRPC_WEB_CONTENT_TYPE = "application/grpc-web"
# Retry only when the request never reached a server, so no call or stream is replayed.
_RETRIES = {"attempts": 2, "retryOn": "connect-failure,refused-stream"}
# Eject a pod after consecutive gateway errors (502/503/504: UNAVAILABLE, unreachable); an
# application's own 5xx (INTERNAL) ejects nothing.
_OUTLIER_DETECTION = {
    "consecutiveGatewayErrors": 5,
    "consecutive5xxErrors": 0,
    "interval": "10s",
    "baseEjectionTime": "30s",
    "maxEjectionPercent": 50,
}
# The browser's CORS contract, the same as the gateway's own (gateway/app.py).
CORS_ALLOW_HEADERS = (
    "accept-language",
    "authorization",
    "connect-protocol-version",
    "connect-timeout-ms",
    "content-type",
    "grpc-timeout",
    "idempotency-key",
    "last-event-id",
    "traceparent",
    "tracestate",
    "x-grpc-web",
    "x-request-id",
    "x-user-agent",
)
CORS_EXPOSE_HEADERS = (
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "content-type",
    "www-authenticate",
    "retry-after",
)
CORS_MAX_AGE = "600s"

GENERATED = (
    "Generated from mesh/routes.yaml by eco2.mesh.istio (python -m eco2.mesh.istio --help): edit those, not this file."
)


@dataclass(frozen=True)
class Expr:
    """A Helm template expression standing in for a parameter, e.g. `.Values.mesh.hosts`.

    As a whole value it renders as `{{ toJson EXPR }}`, a pipeline in parentheses (JSON is YAML,
    so lists and maps work too); inside a longer string (`f"eco2-auth.{namespace}"`) as `{{ EXPR }}`.
    """

    text: str

    def __str__(self) -> str:
        return "{{ " + self.text + " }}"


@dataclass(frozen=True, eq=False)
class _Block:
    """A Helm action around list items or mapping entries: `{{- ACTION }}` … `{{- end }}`."""

    action: str
    body: list | dict


def _optional(when, body: list | dict) -> list | dict:
    """`body` (list items or mapping entries) when `when` is set; for an Expr, Helm decides."""
    if isinstance(when, Expr):
        block = _Block(f"if {when.text}", body)
        return [block] if isinstance(body, list) else {block: None}
    return body if when else type(body)()


def _each(values, item: Callable[[object], object]) -> list:
    """`item` of every value; for an Expr, a Helm range over it."""
    if isinstance(values, Expr):
        return [_Block(f"range {values.text}", [item(Expr("."))])]
    return [item(value) for value in values]


@dataclass(frozen=True)
class Params:
    """Where the mesh is deployed. Every field may be an Expr (see `HELM`)."""

    namespace: str | Expr = "eco2"
    trust_domain: str | Expr = "cluster.local"
    #: hosts the browser edge answers for ("*": any)
    hosts: tuple[str, ...] | Expr = ("*",)
    #: the namespace and pod labels of Istio's ingress gateway
    ingress_namespace: str | Expr = "istio-system"
    ingress_selector: Mapping[str, str] | Expr = field(default_factory=lambda: {"istio": "ingressgateway"})
    #: the ingress gateway's mTLS principal; "" means Istio's default ingress gateway account
    ingress_principal: str | Expr = ""
    #: the name the MeshConfig gives the ext-authz provider
    ext_authz_provider: str | Expr = "eco2-ext-authz"
    #: how long the ingress waits for `Check` before failing closed (the mesh config only)
    ext_authz_timeout: str = "2s"
    #: the Kubernetes TLS Secret of the HTTPS server; "" serves HTTP only
    tls_credential_name: str | Expr = ""
    #: browser origins allowed cross-origin; none: same-origin only
    cors_origins: tuple[str, ...] | Expr = ()

    def principal(self, workload: str) -> str:
        """The mTLS principal a workload of the route table calls with."""
        if workload == INGRESS:
            return (
                self.ingress_principal
                or f"{self.trust_domain}/ns/{self.ingress_namespace}/sa/{INGRESS_SERVICE_ACCOUNT}"
            )
        return f"{self.trust_domain}/ns/{self.namespace}/sa/eco2-{workload}"


#: The chart's parameters: its release namespace and `.Values.mesh.*`.
HELM = Params(
    namespace=Expr(".Release.Namespace"),
    trust_domain=Expr(".Values.mesh.trustDomain"),
    hosts=Expr(".Values.mesh.hosts"),
    ingress_namespace=Expr(".Values.mesh.ingressNamespace"),
    ingress_selector=Expr(".Values.mesh.ingressSelector"),
    ingress_principal=Expr(
        ".Values.mesh.ingressPrincipal | default (printf"
        f' "%s/ns/%s/sa/{INGRESS_SERVICE_ACCOUNT}" .Values.mesh.trustDomain .Values.mesh.ingressNamespace)'
    ),
    ext_authz_provider=Expr(".Values.mesh.extAuthzProvider"),
    tls_credential_name=Expr(".Values.mesh.tlsCredentialName"),
    cors_origins=Expr(".Values.mesh.corsOrigins"),
)


def _data(value):
    """A parameter as YAML data: tuples as lists, mappings as dicts, an Expr as it is."""
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def host(params: Params, service: str) -> str:
    """The cluster DNS name of a service's Kubernetes Service."""
    return f"eco2-{service}.{params.namespace}.svc.cluster.local"


def _resource(api_version: str, kind: str, name: str, namespace, spec: dict) -> dict:
    metadata = {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "eco2"}}
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": spec}


def render(params: Params = Params(), table: RouteTable | None = None) -> list[dict]:
    """Every Istio resource of the mesh, in apply order."""
    table = table or load()
    services = table.services.values()
    return [
        gateway(params),
        virtual_service(params, table),
        *(destination_rule(params, s) for s in services),
        peer_authentication(params),
        ext_authz_policy(params),
        deny_replies(params),
        *(allow_policy(params, s, table) for s in services),
    ]


def gateway(params: Params) -> dict:
    """Port 80 speaks protocol GRPC-WEB, Istio's only way to put Envoy's grpc_web filter on a
    gateway (HTTP/1.1 and h2c pass as with HTTP); port 443 terminates TLS as HTTPS, without it."""
    http = {"port": {"number": EDGE_HTTP_PORT, "name": "http", "protocol": "GRPC-WEB"}, "hosts": _data(params.hosts)}
    https = {
        "port": {"number": EDGE_HTTPS_PORT, "name": "https", "protocol": "HTTPS"},
        "hosts": _data(params.hosts),
        "tls": {"mode": "SIMPLE", "credentialName": params.tls_credential_name},
    }
    spec = {
        "selector": _data(params.ingress_selector),
        "servers": [http, *_optional(params.tls_credential_name, [https])],
    }
    return _resource("networking.istio.io/v1", "Gateway", GATEWAY_NAME, params.namespace, spec)


def virtual_service(params: Params, table: RouteTable) -> dict:
    """The edge's routes, first match wins.

    No route sets `timeout`: Istio's default is none, so server streams (Subscribe, StreamChat,
    SSE) are never cut, while the CRD refuses `0s` (its rule wants at least 1ms).
    """
    cors = _optional(params.cors_origins, {"corsPolicy": _cors_policy(params)})
    # Envoy's CORS filter answers an allowed origin's preflight from the matched route's policy;
    # any other preflight ends here, so it never reaches a service.
    routes = [
        {
            "name": "cors-preflight",
            "match": [{"method": {"exact": "OPTIONS"}}],
            "directResponse": {"status": 204},
            **cors,
        }
    ]
    # Internal gRPC services are refused (404 becomes UNIMPLEMENTED for a gRPC client) before
    # the gateway's catch-all could see them.
    for s in table.services.values():
        for name in s.internal:
            routes.append(
                {
                    "name": f"{s.name}:/{name}/",
                    "match": [{"uri": {"prefix": f"/{name}/"}}],
                    "directResponse": {"status": 404},
                }
            )
    # gRPC straight to the service; gRPC-Web too on port 80, where the Gateway's GRPC-WEB protocol
    # has Envoy translate it. Connect JSON and gRPC-Web over HTTPS go to the gateway.
    for s in table.services.values():
        for prefix in s.grpc_prefixes:
            routes.append(
                {
                    "name": f"{s.name}:{prefix}",
                    "match": [
                        {"uri": {"prefix": prefix}, "headers": {"content-type": {"regex": _GRPC_CONTENT_TYPE}}},
                        {
                            "uri": {"prefix": prefix},
                            "headers": {"content-type": {"prefix": _GRPC_WEB_CONTENT_TYPE}},
                            "port": EDGE_HTTP_PORT,
                        },
                    ],
                    "route": [{"destination": {"host": host(params, s.name), "port": {"number": GRPC_PORT}}}],
                    "retries": _RETRIES,
                    **cors,
                }
            )
    for prefix, name in table.http_routes():
        routes.append(
            {
                "name": f"{name}:{prefix}",
                "match": [{"uri": {"prefix": prefix}}],
                "route": [{"destination": {"host": host(params, name), "port": {"number": HTTP_PORT}}}],
                "retries": _RETRIES,
                **cors,
            }
        )
    spec = {"hosts": _data(params.hosts), "gateways": [f"{params.namespace}/{GATEWAY_NAME}"], "http": routes}
    return _resource("networking.istio.io/v1", "VirtualService", "eco2-edge", params.namespace, spec)


def _cors_policy(params: Params) -> dict:
    return {
        "allowOrigins": _each(params.cors_origins, lambda origin: {"exact": origin}),
        "allowMethods": ["GET", "POST", "OPTIONS"],
        "allowHeaders": list(CORS_ALLOW_HEADERS),
        "exposeHeaders": list(CORS_EXPOSE_HEADERS),
        "maxAge": CORS_MAX_AGE,
    }


def destination_rule(params: Params, service: Service) -> dict:
    spec = {
        "host": host(params, service.name),
        "trafficPolicy": {
            "tls": {"mode": "ISTIO_MUTUAL"},
            "connectionPool": {"http": {"h2UpgradePolicy": "UPGRADE"}},
            "outlierDetection": _OUTLIER_DETECTION,
        },
    }
    return _resource("networking.istio.io/v1", "DestinationRule", f"eco2-{service.name}", params.namespace, spec)


def peer_authentication(params: Params) -> dict:
    return _resource(
        "security.istio.io/v1", "PeerAuthentication", "default", params.namespace, {"mtls": {"mode": "STRICT"}}
    )


def ext_authz_policy(params: Params) -> dict:
    """Every request on the ingress gateway goes to `Check` (the empty rule matches all), so a
    gateway that also fronts other apps needs its own selector (`ingress_selector`)."""
    spec = {
        "selector": {"matchLabels": _data(params.ingress_selector)},
        "action": "CUSTOM",
        "provider": {"name": params.ext_authz_provider},
        "rules": [{}],
    }
    return _resource("security.istio.io/v1", "AuthorizationPolicy", "eco2-ext-authz", params.ingress_namespace, spec)


def deny_replies(params: Params) -> dict:
    """The embedded ingress's local-reply mappers (mesh/envoy.py `deny_mappers`) on Istio's
    ingress gateway: an ext-authz deny reaches a gRPC or gRPC-Web client with the deny's own
    gRPC status and message (RESOURCE_EXHAUSTED for a rate limit, not the UNAVAILABLE Envoy
    derives from HTTP 429), and a Connect client with a Connect error body."""
    hcm = "envoy.filters.network.http_connection_manager"
    spec = {
        "workloadSelector": {"labels": _data(params.ingress_selector)},
        "configPatches": [
            {
                "applyTo": "NETWORK_FILTER",
                "match": {"context": "GATEWAY", "listener": {"filterChain": {"filter": {"name": hcm}}}},
                "patch": {
                    "operation": "MERGE",
                    "value": {
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "local_reply_config": {"mappers": deny_mappers()},
                        }
                    },
                },
            }
        ],
    }
    return _resource(
        "networking.istio.io/v1alpha3", "EnvoyFilter", "eco2-ext-authz-deny-replies", params.ingress_namespace, spec
    )


def allow_policy(params: Params, service: Service, table: RouteTable) -> dict:
    """Only the route table's callers of `service`, on its own paths and health. A service
    without callers gets no rule, which Istio reads as deny-all (an empty `principals` would
    read as anyone)."""
    paths = [
        f"{prefix}*" for prefix in (*service.grpc_prefixes, *(f"/{name}/" for name in service.internal), *service.http)
    ]
    paths += table.public_everywhere
    rules = (
        [
            {
                "from": [{"source": {"principals": [params.principal(c) for c in service.callers]}}],
                "to": [{"operation": {"paths": paths}}],
            }
        ]
        if service.callers
        else []
    )
    spec = {"selector": {"matchLabels": {POD_LABEL: f"eco2-{service.name}"}}, "action": "ALLOW", "rules": rules}
    return _resource("security.istio.io/v1", "AuthorizationPolicy", f"eco2-{service.name}", params.namespace, spec)


def mesh_config(params: Params = Params(), table: RouteTable | None = None) -> dict:
    """The MeshConfig fragment registering the ext-authz provider, as istiod's Helm values
    (`meshConfig:`; for istioctl it goes under the IstioOperator's `spec.meshConfig`).

    Istio's gRPC provider has no header lists (those are the HTTP provider's): Envoy sends every
    request header in the CheckRequest, applies `Check`'s OkHttpResponse headers (the injected
    `x-eco2-*` identity, spoofed ones removed) upstream and its DeniedHttpResponse headers
    (content-type, www-authenticate, retry-after, access-control-*) downstream.
    `statusOnError: 503` makes auth being unreachable UNAVAILABLE for gRPC clients, not 403.
    """
    table = table or load()
    auth = next(s for s in table.services.values() if EXT_AUTHZ_GRPC in s.internal)
    provider = {
        "service": host(params, auth.name),
        "port": GRPC_PORT,
        "timeout": params.ext_authz_timeout,
        "failOpen": False,
        "statusOnError": "503",
    }
    return {"meshConfig": {"extensionProviders": [{"name": params.ext_authz_provider, "envoyExtAuthzGrpc": provider}]}}


def to_yaml(docs: list[dict], header: str | None = GENERATED) -> str:
    """Multi-document YAML under a `# header` comment; Exprs and blocks become Helm template text.

    Each Expr or block edge is dumped as a marker (`__helm_expr_N__`, a `__helm_block_N__`
    line), then the marker is replaced by its template text.
    """
    texts: list[str] = []

    def marker(kind: str, text: str) -> str:
        texts.append(text)
        return f"__helm_{kind}_{len(texts) - 1}__"

    def lower(node):
        if isinstance(node, Expr):
            return marker("expr", "{{ toJson " + (f"({node.text})" if " " in node.text else node.text) + " }}")
        if isinstance(node, Mapping):
            out = {}
            for key, value in node.items():
                if isinstance(key, _Block):
                    out[marker("block", "{{- " + key.action + " }}")] = None
                    out.update(lower(key.body))
                    out[marker("block", "{{- end }}")] = None
                else:
                    out[key] = lower(value)
            return out
        if isinstance(node, list):
            out = []
            for value in node:
                if isinstance(value, _Block):
                    out += [
                        marker("block", "{{- " + value.action + " }}"),
                        *lower(value.body),
                        marker("block", "{{- end }}"),
                    ]
                else:
                    out.append(lower(value))
            return out
        return node

    text = "".join(
        "---\n" + yaml.safe_dump(lower(doc), sort_keys=False, width=1 << 16, allow_unicode=True) for doc in docs
    )
    text = re.sub(r"(?m)^ *(?:- )?__helm_block_(\d+)__(?:: null)?$", lambda m: texts[int(m[1])], text)
    text = re.sub(r"__helm_expr_(\d+)__", lambda m: texts[int(m[1])], text)
    return text if header is None else f"# {header}\n{text}"


def helm_template(table: RouteTable | None = None) -> str:
    """helm/eco2/templates/istio.yaml: the resources for `.Values.mesh.istio.enabled`."""
    body = to_yaml(render(HELM, table), header=None)
    return "{{- /* " + GENERATED + " */}}\n{{- if .Values.mesh.istio.enabled }}\n" + body + "{{- end }}\n"


def main(argv: list[str] | None = None) -> int:
    defaults = Params()
    parser = argparse.ArgumentParser(
        prog="python -m eco2.mesh.istio", description="Print the mesh's Istio manifests (multi-document YAML)."
    )
    parser.add_argument("--namespace", help=f"the mesh's namespace (default {defaults.namespace})")
    parser.add_argument("--trust-domain", help=f"the mesh's trust domain (default {defaults.trust_domain})")
    parser.add_argument(
        "--host", action="append", dest="hosts", help="a host the edge answers for, repeatable (default *)"
    )
    parser.add_argument(
        "--ingress-namespace", help=f"the ingress gateway's namespace (default {defaults.ingress_namespace})"
    )
    parser.add_argument(
        "--ingress-selector",
        action="append",
        metavar="KEY=VALUE",
        help="an ingress gateway pod label, repeatable (default istio=ingressgateway)",
    )
    parser.add_argument(
        "--ingress-principal", help="the ingress gateway's principal (default: Istio's ingress gateway account)"
    )
    parser.add_argument(
        "--ext-authz-provider", help=f"the ext-authz provider's name (default {defaults.ext_authz_provider})"
    )
    parser.add_argument(
        "--ext-authz-timeout", help=f"how long the ingress waits for Check (default {defaults.ext_authz_timeout})"
    )
    parser.add_argument("--tls-credential-name", help="the TLS Secret of an HTTPS server on 443 (default: HTTP only)")
    parser.add_argument(
        "--cors-origin", action="append", dest="cors_origins", help="a browser origin allowed cross-origin, repeatable"
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--mesh-config", action="store_true", help="print the MeshConfig fragment registering the ext-authz provider"
    )
    output.add_argument(
        "--helm", action="store_true", help="print the Helm template (its parameters are the chart's values)"
    )
    args = vars(parser.parse_args(argv))
    mesh_config_only, helm = args.pop("mesh_config"), args.pop("helm")
    given = {key: value for key, value in args.items() if value is not None}
    if helm:
        if given:
            parser.error("--helm takes its parameters from the chart's values, not from options")
        sys.stdout.write(helm_template())
        return 0
    for key in ("hosts", "cors_origins"):
        if key in given:
            given[key] = tuple(given[key])
    if "ingress_selector" in given:
        pairs = [item.partition("=") for item in given["ingress_selector"]]
        if any(not key or not sep for key, sep, _ in pairs):
            parser.error("--ingress-selector takes KEY=VALUE")
        given["ingress_selector"] = {key: value for key, _, value in pairs}
    params = Params(**given)
    sys.stdout.write(to_yaml([mesh_config(params)] if mesh_config_only else render(params)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
