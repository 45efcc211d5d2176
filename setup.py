"""Maps the repository folders onto the single `eco2` import namespace (see docs/adr/0001)."""

import os

from setuptools import setup

ROOTS = {"eco2": "proto/eco2", "eco2.services": "services", "eco2.gateway": "gateway", "eco2.mesh": "mesh"}


def _packages() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    for prefix, root in ROOTS.items():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "__"))]
            if "__init__.py" not in filenames and dirpath != root:
                continue  # each root is a package; `eco2` (proto/eco2) is a namespace package
            rel = os.path.relpath(dirpath, root)
            packages.append(prefix if rel == "." else prefix + "." + rel.replace(os.sep, "."))
    return sorted(packages), dict(ROOTS)


packages, package_dir = _packages()
setup(packages=packages, package_dir=package_dir)
