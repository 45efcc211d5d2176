"""Where a `/package.Service/Method` goes, and channels to it (one per address, reused).

Messages cross the gateway as bytes: the channel's serializers are the identity, so no
code per method is needed. Descriptors (from the generated contracts in `eco2.*.v1`) are
used only to tell unary from server streaming where known, and for Connect JSON.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor

from .settings import GatewaySettings

_PATH = re.compile(r"^/([A-Za-z_][A-Za-z0-9_.]*)\.([A-Za-z_][A-Za-z0-9_]*)/([A-Za-z_][A-Za-z0-9_]*)$")
_ECO2_PACKAGE = re.compile(r"^eco2\.([a-z][a-z0-9_]*)\.v[0-9]+$")
#: Never reachable from a browser: the edge's own authorisation check.
_INTERNAL_PACKAGES = ("envoy.", "grpc.health.", "grpc.reflection.")


def _identity(data: bytes) -> bytes:
    return data


#: Bound on cached multicallables (routes are a closed set; this guards against path churn).
MAX_CACHED_CALLABLES = 10_000


@dataclass(frozen=True, slots=True)
class Route:
    path: str
    service: str  # package.Service
    method: str
    address: str
    descriptor: MethodDescriptor | None

    @property
    def server_streaming(self) -> bool | None:
        return None if self.descriptor is None else self.descriptor.server_streaming

    @property
    def client_streaming(self) -> bool:
        return bool(self.descriptor is not None and self.descriptor.client_streaming)


class UnknownRoute(LookupError):
    pass


def load_contracts() -> None:
    """Import every generated `eco2.<svc>.v<N>` module so its descriptors are in the pool."""
    import eco2

    for info in pkgutil.walk_packages(eco2.__path__, "eco2."):
        if re.match(r"^eco2\.[a-z0-9_]+\.v[0-9]+\.[a-z0-9_]+_pb2$", info.name):
            importlib.import_module(info.name)


class Upstreams:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._channels: dict[str, grpc.aio.Channel] = {}
        #: multicallables per (path, address, kind), made once rather than on every call
        self._callables: dict[tuple[str, str, str], object] = {}
        self._routes: dict[str, Route] = {}
        self._pool = descriptor_pool.Default()

    def _address(self, service: str) -> str | None:
        routes = self.settings.gateway_routes
        if service in routes:
            return routes[service]
        package = service.rsplit(".", 1)[0]
        for prefix, address in routes.items():
            if service.startswith(prefix + ".") or package == prefix:
                return address
        if service.startswith(_INTERNAL_PACKAGES):
            return None
        m = _ECO2_PACKAGE.match(package)
        if m and hasattr(self.settings, f"{m.group(1)}_addr"):
            return self.settings.address_of(m.group(1))
        return None

    def route(self, path: str) -> Route:
        cached = self._routes.get(path)
        if cached is not None:
            return cached
        m = _PATH.match(path)
        if not m:
            raise UnknownRoute(f"{path!r} is not a /package.Service/Method path")
        service = f"{m.group(1)}.{m.group(2)}"
        address = self._address(service)
        if address is None:
            raise UnknownRoute(f"no upstream serves {service}")
        try:
            descriptor = self._pool.FindMethodByName(f"{service}.{m.group(3)}")
        except KeyError:
            descriptor = None
            try:
                self._pool.FindServiceByName(service)
            except KeyError:
                pass
            else:  # a known contract without that method
                raise UnknownRoute(f"{service} has no method {m.group(3)}") from None
        route = Route(path, service, m.group(3), address, descriptor)
        if len(self._routes) < 10_000:
            self._routes[path] = route
        return route

    def channel(self, address: str) -> grpc.aio.Channel:
        ch = self._channels.get(address)
        if ch is None:
            # A plain channel: the gateway sets deadlines and metadata per call itself, and
            # client interceptors would cost a large share of a pass-through call.
            limit = self.settings.max_message_bytes
            ch = grpc.aio.insecure_channel(
                address,
                options=[
                    ("grpc.max_receive_message_length", limit),
                    ("grpc.max_send_message_length", limit),
                    ("grpc.keepalive_time_ms", 30_000),
                    ("grpc.keepalive_timeout_ms", 10_000),
                ],
            )
            self._channels[address] = ch
        return ch

    def unary(self, route: Route):
        return self._callable(route, "unary_unary")

    def stream(self, route: Route):
        return self._callable(route, "unary_stream")

    def _callable(self, route: Route, kind: str):
        """The channel's multicallable for (method, address, kind), made once; bounded cache."""
        key = (route.path, route.address, kind)
        mc = self._callables.get(key)
        if mc is None:
            factory = getattr(self.channel(route.address), kind)
            mc = factory(route.path, request_serializer=_identity, response_deserializer=_identity)
            if len(self._callables) < MAX_CACHED_CALLABLES:
                self._callables[key] = mc
        return mc

    async def close(self) -> None:
        self._callables.clear()
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
