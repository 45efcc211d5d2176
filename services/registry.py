"""The services `eco2 serve NAME` can run, in start order, and how to build each.

A name maps to "module:factory"; the factory reads its settings from the environment and
returns a runtime.server.ServiceApp. `eco2 up` starts every service listed here.
"""

from __future__ import annotations

import importlib

from .runtime.server import ServiceApp

#: Every service of the mesh, as in endpoints.json and the Helm chart.
ALL_SERVICES = ("auth", "character", "location", "images", "chat", "scan", "events", "gateway")

#: The services that exist today (others are added as their issues land).
SERVICES: dict[str, str] = {
    "character": "eco2.services.character.app:create",
}


def create(name: str) -> ServiceApp:
    try:
        target = SERVICES[name]
    except KeyError:
        known = ", ".join(SERVICES) or "none"
        raise SystemExit(f"unknown service {name!r}; available: {known}") from None
    module, _, factory = target.partition(":")
    return getattr(importlib.import_module(module), factory)()
