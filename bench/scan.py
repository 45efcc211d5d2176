"""Benchmark of the scan pipeline: offline scans with hints through one scan process.

    python bench/scan.py [--scans 500] [--concurrency 50] [--client stream|subscribe]

Starts its own embedded data plane (temp dir under /tmp, mode 0755) and `eco2 serve` processes
for auth (job wristbands), events, character, images and scan on 127.0.0.1; every service
trusts this bench's wristband key (ECO2_IDENTITY_JWKS), as tests pin theirs. Each scan is a
distinct user with a photo uploaded beforehand (not timed) and one of 12 hints that name a
recyclable item, so every scan should earn its category's character. Prints one JSON line.

Measured:
    e2e          StreamScan (or SubmitScan + EventService.Subscribe) sent → DONE on the client,
                 `--concurrency` scans in flight at a time
    throughput   scans / wall time of the run, one scan process (its workers and its API)
    CPU per scan user+system CPU of each server process over the run / scans
    rewards      from the collection tables: every scan has exactly one grant (key = scan id)
                 and its user exactly one ownership of the expected character
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import grpc
import jwt
import psutil
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from chat import pct, serve  # noqa: E402
from grpc_ceiling import free_port, stop_process, wait_serving  # noqa: E402

from eco2.events.v1 import events_pb2, events_pb2_grpc  # noqa: E402
from eco2.images.v1 import images_pb2, images_pb2_grpc  # noqa: E402
from eco2.scan.v1 import scan_pb2, scan_pb2_grpc  # noqa: E402
from eco2.services.runtime.identity import IDENTITY_KEY  # noqa: E402
from support.fake_llm import png  # noqa: E402

#: hint → the character its category earns
HINTS = {
    "투명 생수병": "char-petty",
    "콜라 캔": "char-metally",
    "택배 상자": "char-paepy",
    "샴푸 통": "char-plea",
    "라면 봉지": "char-bini",
    "스티로폼": "char-foamy",
    "유리병": "char-glassy",
    "우유팩": "char-factory",
    "건전지": "char-battery",
    "형광등": "char-lighty",
    "헌 옷": "char-cotton",
    "고장난 선풍기": "char-eb7429f0523f",
}
KEY = ec.generate_private_key(ec.SECP256R1())
KID = "bench-scan"


def jwks() -> str:
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(KEY.public_key()))
    return json.dumps({"keys": [{**jwk, "kid": KID, "alg": "ES256", "use": "sig"}]})


def wristband(user: str) -> tuple[tuple[str, str], ...]:
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
    return ((IDENTITY_KEY, jwt.encode(claims, KEY, algorithm="ES256", headers={"kid": KID})),)


async def upload(stub, user: str, i: int) -> str:
    async def parts():
        yield images_pb2.UploadRequest(
            metadata=images_pb2.UploadMetadata(
                channel=images_pb2.IMAGE_CHANNEL_SCAN, content_type="image/png", filename="photo.png"
            )
        )
        yield images_pb2.UploadRequest(chunk=png(f"bench photo {i} {user}".encode()))

    return (await stub.Upload(parts(), metadata=wristband(user), timeout=60)).image.key


async def one_scan(scan, events, client: str, user: str, key: str, hint: str) -> dict:
    out: dict = {"ok": False}
    started = time.monotonic()
    metadata = wristband(user)
    try:
        if client == "stream":
            stream = scan.StreamScan(
                scan_pb2.StreamScanRequest(image_key=key, hint=hint, client_scan_id=f"bench-{user}"),
                metadata=metadata,
                timeout=300,
            )
        else:
            sent = await scan.SubmitScan(
                scan_pb2.SubmitScanRequest(image_key=key, hint=hint, client_scan_id=f"bench-{user}"),
                metadata=metadata,
                timeout=300,
            )
            stream = events.Subscribe(events_pb2.SubscribeRequest(job_id=sent.job_id), timeout=300)
        async for e in stream:
            if e.kind == events_pb2.EVENT_KIND_DONE:
                result = scan_pb2.ScanResult()
                e.done.result.Unpack(result)
                out.update(
                    ok=True,
                    e2e=time.monotonic() - started,
                    scan_id=result.scan_id,
                    character=result.reward.character.code,
                    outcome=result.reward.outcome,
                )
            elif e.kind in (events_pb2.EVENT_KIND_ERROR, events_pb2.EVENT_KIND_NEEDS_INPUT):
                out["error"] = e.error.reason or "NEEDS_INPUT"
            if e.kind in (events_pb2.EVENT_KIND_DONE, events_pb2.EVENT_KIND_ERROR, events_pb2.EVENT_KIND_NEEDS_INPUT):
                break
    except grpc.aio.AioRpcError as exc:
        out["error"] = exc.code().name
    return out


async def rewards(database_url: str, results: list[dict], users: list[str], hints: list[str]) -> dict:
    """Grants and ownerships as CharacterService stored them."""
    conn = await asyncpg.connect(database_url)
    try:
        grants = await conn.fetch(
            "SELECT user_id, idempotency_key, outcome FROM character_reward_grant WHERE user_id = ANY($1::text[])",
            users,
        )
        owned = await conn.fetch(
            "SELECT user_id, character_code FROM character_ownership WHERE user_id = ANY($1::text[]) AND source = 'SCAN'",
            users,
        )
    finally:
        await conn.close()
    by_user = {u: [g for g in grants if g["user_id"] == u] for u in users}
    ownership = {u: [o["character_code"] for o in owned if o["user_id"] == u] for u in users}
    exact = sum(
        1
        for u, h, r in zip(users, hints, results, strict=True)
        if r["ok"]
        and [(g["idempotency_key"], g["outcome"]) for g in by_user[u]] == [(r["scan_id"], "RECEIVED")]
        and ownership[u] == [HINTS[h]]
    )
    return {"grants": len(grants), "ownerships": len(owned), "rewarded_exactly_once": exact}


async def main(args: argparse.Namespace) -> dict:
    from eco2.services.dataplane.embedded import EmbeddedDataPlane

    root = Path(tempfile.mkdtemp(prefix="eco2-bench-scan-", dir="/tmp"))
    root.chmod(0o755)
    plane = EmbeddedDataPlane(root / "data")
    info = plane.start()
    procs: dict[str, subprocess.Popen] = {}
    try:
        base = {
            "DATABASE_URL": info.database_url,
            "REDIS_URL": info.redis_url,
            "ECO2_DEPLOYMENT": "embedded",
            "LC_ALL": "C.UTF-8",
            "ECO2_IDENTITY_JWKS": jwks(),
            "ECO2_DATA_DIR": str(root / "data"),
        }
        ports = {}
        for name in ("auth", "events", "character", "images", "scan"):
            ports[name] = free_port()
            base[f"ECO2_{name.upper()}_ADDR"] = f"127.0.0.1:{ports[name]}"
        for name in ("auth", "events", "character", "images"):
            procs[name] = serve(name, base, ports[name], root / f"{name}.log")
        procs["scan"] = serve(
            "scan",
            {**base, "ECO2_SCAN_WORKERS": str(max(64, args.concurrency)), "ECO2_SCAN_STREAM_TIMEOUT_S": "600"},
            ports["scan"],
            root / "scan.log",
        )
        for name, proc in procs.items():
            await wait_serving(ports[name], proc, timeout=120)
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{ports['scan']}") for _ in range(args.channels)]
        echannels = [grpc.aio.insecure_channel(f"127.0.0.1:{ports['events']}") for _ in range(args.channels)]
        scans = [scan_pb2_grpc.ScanServiceStub(c) for c in channels]
        events = [events_pb2_grpc.EventServiceStub(c) for c in echannels]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['images']}") as ich:
            images = images_pb2_grpc.ImageServiceStub(ich)
            run = uuid.uuid4().hex[:6]
            users = [f"bench-{run}-{i}" for i in range(args.scans)]
            hints = [list(HINTS)[i % len(HINTS)] for i in range(args.scans)]
            gate = asyncio.Semaphore(16)

            async def prepared(i: int) -> str:
                async with gate:
                    return await upload(images, users[i], i)

            keys = await asyncio.gather(*(prepared(i) for i in range(args.scans)))
            warm = f"bench-{run}-warm"
            await one_scan(
                scans[0], events[0], args.client, warm, await upload(images, warm, -1), "페트병"
            )  # imports, pools, first connections

            cpu = {name: psutil.Process(p.pid) for name, p in procs.items()}
            cpu0 = {name: sum(p.cpu_times()[:2]) for name, p in cpu.items()}
            client0 = sum(psutil.Process().cpu_times()[:2])
            inflight = asyncio.Semaphore(args.concurrency)

            async def bounded(i: int) -> dict:
                async with inflight:
                    return await one_scan(
                        scans[i % args.channels], events[i % args.channels], args.client, users[i], keys[i], hints[i]
                    )

            started = time.monotonic()
            results = await asyncio.gather(*(bounded(i) for i in range(args.scans)))
            wall = time.monotonic() - started
            cpu_ms = {
                f"{name}_cpu_ms_per_scan": round((sum(p.cpu_times()[:2]) - cpu0[name]) * 1000 / args.scans, 2)
                for name, p in cpu.items()
            }
            cpu_ms["client_cpu_ms_per_scan"] = round(
                (sum(psutil.Process().cpu_times()[:2]) - client0) * 1000 / args.scans, 2
            )
        for c in channels + echannels:
            await c.close()
        done = [r for r in results if r["ok"]]
        e2e = [r["e2e"] * 1000 for r in done]
        errors: dict[str, int] = {}
        for r in results:
            if not r["ok"]:
                errors[r.get("error", "no DONE")] = errors.get(r.get("error", "no DONE"), 0) + 1
        return {
            "bench": "scan",
            "machine": f"{platform.node()} {os.cpu_count()} cpu",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "scans": args.scans,
            "concurrency": args.concurrency,
            "client": args.client,
            "done": len(done),
            "errors": errors,
            "wall_s": round(wall, 2),
            "scans_per_s": round(len(done) / wall, 1),
            "e2e_ms_p50": pct(e2e, 50),
            "e2e_ms_p95": pct(e2e, 95),
            "e2e_ms_max": pct(e2e, 100),
            **cpu_ms,
            **await rewards(info.database_url, results, users, hints),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        for p in procs.values():
            stop_process(p)
        plane.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=500, help="scans in the run, each by a distinct user")
    parser.add_argument("--concurrency", type=int, default=50, help="scans in flight at a time")
    parser.add_argument("--channels", type=int, default=4, help="client gRPC channels")
    parser.add_argument(
        "--client",
        default="stream",
        choices=["stream", "subscribe"],
        help="StreamScan on scan, or SubmitScan + EventService.Subscribe",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (service logs)")
    print(json.dumps(asyncio.run(main(parser.parse_args())), ensure_ascii=False))
