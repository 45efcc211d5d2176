"""The route table (`routes.yaml`) as typed values, and the path rules every reader of it shares.

Readers: the auth service's ext-authz `Check` (public paths), the gateway (public paths), the
embedded Envoy bootstrap (routes to clusters) and the Istio manifests (routes and the callers
each workload accepts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

#: The workload name of the edge Envoy (embedded ingress or Istio's ingress gateway).
INGRESS = "ingress"


@dataclass(frozen=True)
class Service:
    name: str
    #: full names of the gRPC services it serves, e.g. "eco2.chat.v1.ChatService"
    grpc: tuple[str, ...]
    #: gRPC services it serves to the mesh only (never routed from the edge)
    internal: tuple[str, ...]
    #: HTTP path prefixes it serves besides gRPC (the gateway: "/")
    http: tuple[str, ...]
    #: workloads allowed to call it
    callers: tuple[str, ...]
    #: paths that pass ext-authz without a token ("*" suffix = prefix)
    public: tuple[str, ...]

    @property
    def grpc_prefixes(self) -> tuple[str, ...]:
        return tuple(f"/{name}/" for name in self.grpc)


@dataclass(frozen=True)
class RouteTable:
    services: dict[str, Service]
    public_everywhere: tuple[str, ...]

    def public_paths(self) -> tuple[str, ...]:
        """Every path that passes `Check` without a token, in table order, without repeats."""
        out: list[str] = []
        for service in self.services.values():
            out += service.public
        out += self.public_everywhere
        return tuple(dict.fromkeys(out))

    def grpc_routes(self) -> list[tuple[str, str]]:
        """(path prefix "/pkg.Service/", service name) for every gRPC service of the mesh."""
        return [(prefix, s.name) for s in self.services.values() for prefix in s.grpc_prefixes]

    def http_routes(self) -> list[tuple[str, str]]:
        """(path prefix, service name) of the non-gRPC routes, longest prefix first."""
        routes = [(prefix, s.name) for s in self.services.values() for prefix in s.http]
        return sorted(routes, key=lambda r: -len(r[0]))

    def workloads(self) -> tuple[str, ...]:
        return tuple(self.services)


def parse(text: str) -> RouteTable:
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or data.get("version") != 1:
        raise ValueError("routes.yaml: expected a mapping with `version: 1`")
    services: dict[str, Service] = {}
    for name, spec in (data.get("services") or {}).items():
        spec = spec or {}
        services[name] = Service(
            name=name,
            grpc=tuple(spec.get("grpc", ())),
            internal=tuple(spec.get("internal", ())),
            http=tuple(spec.get("http", ())),
            callers=tuple(spec.get("callers", ())),
            public=tuple(spec.get("public", ())),
        )
    table = RouteTable(services, tuple(data.get("public_everywhere", ())))
    _check(table)
    return table


def _check(table: RouteTable) -> None:
    known = {*table.services, INGRESS}
    for s in table.services.values():
        if unknown := sorted(set(s.callers) - known):
            raise ValueError(f"routes.yaml: {s.name} names unknown callers {unknown}")
        for path in s.public:
            if not canonical(path.removesuffix("*")):
                raise ValueError(f"routes.yaml: public path {path!r} of {s.name} is not canonical")


@cache
def load() -> RouteTable:
    """The route table shipped with the package (mesh/routes.yaml)."""
    return parse((resources.files(__package__) / "routes.yaml").read_text(encoding="utf-8"))


# A canonical request path: starts with "/", no empty, "." or ".." segments, no percent-escapes,
# backslashes, semicolons (path parameters) or control characters. Anything else is refused
# by `Check` before public prefixes are matched, so "/static/../x" is never "public".
_NON_CANONICAL = re.compile(r"//|/\.\.?(?:/|$)|[%\\;\x00-\x20\x7f]")


def canonical(path: str) -> bool:
    """True when `path` (without its query) is in canonical form."""
    return path.startswith("/") and not _NON_CANONICAL.search(path)


class PublicPaths:
    """Exact paths and prefixes that pass without a token, matched on canonical paths only."""

    def __init__(self, entries: tuple[str, ...] | list[str]) -> None:
        self.exact = frozenset(p for p in entries if not p.endswith("*"))
        self.prefixes = tuple(p[:-1] for p in entries if p.endswith("*"))

    def __contains__(self, path: str) -> bool:
        return path in self.exact or (bool(self.prefixes) and path.startswith(self.prefixes))
