"""What verifying the caller's wristband costs a service (issue 12: ≤ 30 µs CPU per call).

Two measurements in one run:
  - server_cpu: the runtime's no-op server (bench/grpc_ceiling.py, `eco2 serve`'s interceptor)
    driven with and without an `x-eco2-identity` wristband, interleaved rounds; the difference
    of server CPU per call is what the identity costs on the wire path (metadata, cache lookup,
    context);
  - verifier: `IdentityVerifier.verify` in this process, per call for a cached token and for a
    token seen the first time (the ES256 signature check).

    python bench/identity.py [--seconds 4] [--rounds 3] [--concurrency 64]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpc_ceiling import UNARY, ServerCpu, spawn_noop_server, stop_process, unary_load  # noqa: E402

from eco2.services.runtime.identity import IDENTITY_KEY, IdentityVerifier, keys_from_jwks  # noqa: E402

KEY = ec.generate_private_key(ec.SECP256R1())
KID = "bench"


def jwks() -> str:
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(KEY.public_key()))
    return json.dumps({"keys": [{**jwk, "kid": KID, "alg": "ES256", "use": "sig"}]})


def wristband(user: str) -> str:
    now = int(time.time())
    claims = {
        "iss": "eco2-auth",
        "aud": "eco2-mesh",
        "typ": "identity",
        "sub": user,
        "roles": ["user"],
        "provider": "dev",
        "iat": now,
        "exp": now + 3600,
    }
    return jwt.encode(claims, KEY, algorithm="ES256", headers={"kid": KID})


async def server_cpu(seconds: float, rounds: int, concurrency: int) -> dict:
    os.environ["ECO2_IDENTITY_JWKS"] = jwks()  # the no-op server process inherits it
    proc, target = spawn_noop_server("runtime")
    metadata = ((IDENTITY_KEY, wristband("bench-user")),)
    per_call: dict[str, list[float]] = {"without": [], "with": []}
    rps: dict[str, list[float]] = {"without": [], "with": []}
    try:
        for _ in range(rounds):
            for name, md in (("without", None), ("with", metadata)):
                cpu = ServerCpu(proc.pid)
                result = await unary_load(target, UNARY, b"", seconds=seconds, concurrency=concurrency, metadata=md)
                assert result["errors"] == 0, result
                per_call[name].append(cpu.per(result["calls"]))
                rps[name].append(result["rps"])
    finally:
        stop_process(proc)
    without, with_ = min(per_call["without"]), min(per_call["with"])
    return {
        "rounds": rounds,
        "server_cpu_us_per_call_without": per_call["without"],
        "server_cpu_us_per_call_with": per_call["with"],
        "rps_without": rps["without"],
        "rps_with": rps["with"],
        "identity_cpu_us_per_call": round(with_ - without, 1),
        "cpu_ratio_with_vs_without": round(without / with_, 3),
    }


async def verifier(n: int = 100_000) -> dict:
    v = IdentityVerifier(issuer="eco2-auth", audience="eco2-mesh", pinned=keys_from_jwks(jwks()), cache_size=n + 10)
    token = wristband("cached")
    await v.verify(token)
    started = time.process_time()
    for _ in range(n):
        await v.verify(token)
    cached = (time.process_time() - started) / n * 1e6
    fresh_tokens = [wristband(f"u{i}") for i in range(500)]
    started = time.process_time()
    for t in fresh_tokens:
        await v.verify(t)
    first = (time.process_time() - started) / len(fresh_tokens) * 1e6
    return {"cached_us_per_call": round(cached, 2), "first_verification_us": round(first, 1)}


async def main(args) -> None:
    out = {
        "bench": "identity",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, CPython {platform.python_version()}",
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    out["verifier"] = await verifier()
    out["server_cpu"] = await server_cpu(args.seconds, args.rounds, args.concurrency)
    print(json.dumps(out))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    asyncio.run(main(parser.parse_args()))
