"""Faults under load and the fuzz of every RPC: the figures of docs/benchmarks.md "faults".

    python bench/faults.py [--rounds 3] [--clients 4] [--fuzz-examples 40] [--skip-fuzz]

Faults: starts a private `eco2 up` (its own data dir and embedded data plane under /tmp, no
Envoy), runs `--clients` concurrent chat users (each sends a message, follows its job's events
to DONE or ERROR, sends the next), and `--rounds` times SIGKILLs each of PostgreSQL, Valkey,
events, chat and auth in turn while turns stream (tests/support/faults.py, the code of
tests/system/test_faults.py). Per kill: the time until every service is SERVING again (a new process
or server in place), and until the first chat turn sent after the kill completes (DONE). Over
the run: turns, DONE, ERROR, events lost and duplicated (each job's whole history from
EventService against what its client received across reconnects), orphans (stored user
messages whose job never ended).

Fuzz: runs tests/system/test_fuzz_rpc.py with ECO2_FUZZ_EXAMPLES random cases per method (plus its
fixed extremes) and reports the cases run and the status codes they got.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from support.faults import Load, UpStack, account, fault  # noqa: E402

VICTIMS = ("postgres", "valkey", "events", "chat", "auth")


async def faults(rounds: int, clients: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="eco2-bench-faults-", dir="/tmp"))
    root.chmod(0o755)  # as root, PostgreSQL runs as an unprivileged user that must reach it
    try:
        started = time.monotonic()
        async with UpStack(root / "data") as stack:
            up_s = time.monotonic() - started
            recoveries = []
            async with Load(stack, clients=clients) as load:
                for _ in range(rounds):
                    for victim in VICTIMS:
                        recoveries.append(await fault(stack, load, victim))
            audit = await account(stack, load.turns)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    by_victim = {}
    for victim in VICTIMS:
        mine = [r for r in recoveries if r.victim == victim]
        by_victim[victim] = {
            "to_serving_s": [r.to_serving_s for r in mine],
            "to_first_done_s": [r.to_first_done_s for r in mine],
            "to_serving_median_s": round(statistics.median(r.to_serving_s for r in mine), 2),
            "to_first_done_median_s": round(statistics.median(r.to_first_done_s for r in mine), 2),
            "streaming_at_kill": [r.streaming for r in mine],
            "probe_errors": sum(len(r.probe_errors) for r in mine),
        }
    summary = asdict(audit)
    for key in ("unfinished", "terminals_not_one", "orphans", "messages_not_one", "send_failed", "bugs_logged"):
        summary[key] = len(summary[key])
    return {"up_s": round(up_s, 1), "clients": clients, "rounds": rounds, "recovery": by_victim, "turns": summary}


def fuzz(examples: int) -> dict:
    report = Path(tempfile.mkdtemp(prefix="eco2-bench-fuzz-")) / "fuzz.json"
    env = {**os.environ, "ECO2_FUZZ_EXAMPLES": str(examples), "ECO2_FUZZ_REPORT": str(report)}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/system/test_fuzz_rpc.py"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    took = time.monotonic() - started
    codes = json.loads(report.read_text())["codes"] if report.exists() else {}
    shutil.rmtree(report.parent, ignore_errors=True)
    totals: dict[str, int] = {}
    for seen in codes.values():
        for code, n in seen.items():
            totals[code] = totals.get(code, 0) + n
    return {
        "examples_per_method": examples,
        "methods": len(codes),
        "cases": sum(totals.values()),
        "codes": dict(sorted(totals.items())),
        "passed": proc.returncode == 0,
        "result": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:],
        "duration_s": round(took, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="times each part is killed")
    parser.add_argument("--clients", type=int, default=4, help="concurrent chat users")
    parser.add_argument("--fuzz-examples", type=int, default=40, help="random cases per RPC method")
    parser.add_argument("--skip-fuzz", action="store_true")
    args = parser.parse_args()
    out = {
        "bench": "faults",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", "bench/faults.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": [round(x, 1) for x in os.getloadavg()],
        },
    }
    out["faults"] = asyncio.run(faults(args.rounds, args.clients))
    if not args.skip_fuzz:
        out["fuzz"] = fuzz(args.fuzz_examples)
    out["machine"]["load_after"] = [round(x, 1) for x in os.getloadavg()]
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
