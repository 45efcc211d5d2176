"""The services `eco2 serve NAME` can run, in start order, and how to build each.

A name maps to "module:factory"; the factory reads its settings from the environment and
returns a runtime.server.ServiceApp. `eco2 up` starts every service listed here.
"""

from __future__ import annotations

import importlib

from .runtime.server import ServiceApp

#: The services `eco2 serve NAME` and `eco2 up` run: name → the factory of its app.
SERVICES: dict[str, str] = {
    "auth": "eco2.services.auth.app:create",
    "character": "eco2.services.character.app:create",
    "location": "eco2.services.location.app:create",
    "images": "eco2.services.images.app:create",
    "chat": "eco2.services.chat.app:create",
    "scan": "eco2.services.scan.app:create",
    "events": "eco2.services.events.app:create",
}

#: The services that own schema migrations (services/NAME/migrations/), in start order; each
#: app has `async migrate()`, run at its start or, in Kubernetes, by `eco2 migrate` beforehand.
MIGRATIONS = ("auth", "character", "location", "images", "chat", "scan")

#: HTTP apps (health: GET /healthz, endpoint http://host:port), started after the gRPC services.
#: Such an app has `protocol = "http"` and an `async serve()` that runs it until SIGTERM.
HTTP_APPS: dict[str, str] = {
    "gateway": "eco2.gateway.app:create",
}


def create(name: str) -> ServiceApp:
    try:
        target = SERVICES.get(name) or HTTP_APPS[name]
    except KeyError:
        known = ", ".join([*SERVICES, *HTTP_APPS]) or "none"
        raise SystemExit(f"unknown service {name!r}; available: {known}") from None
    module, _, factory = target.partition(":")
    return getattr(importlib.import_module(module), factory)()
