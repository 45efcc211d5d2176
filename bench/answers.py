"""The offline chat's answers on the evaluation set: pass rate per category and time to DONE.

    python bench/answers.py [--eval tests/data/answers_eval.yaml] [--fast] [--show-failures]

Starts an embedded data plane (temp dir under /tmp, mode 0755) and, in this process, the auth,
events, character, location (SAMPLE places) and chat services with the offline model; sends
every case of the set (tests/data/answers_eval.yaml) one at a time as its own user, answers a
location question when the case says so, grades the answer (tests/support/answer_grading.py)
and prints one JSON line: pass rate overall and per category, p50/p95 of send → DONE for the
cases answered in one turn (a warm stack: one warm-up turn first), the analyser's load time in
this process, machine and date. --show-failures prints each failed case to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support import answer_grading as G  # noqa: E402
from support.chat_stack import chat_stack  # noqa: E402
from support.identity import TEST_JWKS  # noqa: E402


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))] * 1000, 1)


async def evaluate(service_env: dict, cases: list[dict], show: bool) -> dict:
    from eco2.services.knowledge import morph

    async with chat_stack(service_env) as stack:
        await G.run_case(stack, {"q": "캔은 어떻게 버려?"})  # warm-up: pools, caches
        outcomes = [await G.run_case(stack, c) for c in cases]
    per: dict[str, dict] = {}
    for o in outcomes:
        row = per.setdefault(o.case["cat"], {"n": 0, "passed": 0})
        row["n"] += 1
        row["passed"] += o.passed
        if show and not o.passed:
            print(
                json.dumps(
                    {"q": o.case["q"], "cat": o.case["cat"], "problems": o.problems, "answer": o.answer[:400]},
                    ensure_ascii=False,
                ),
                file=sys.stderr,
            )
    times = [o.seconds for o in outcomes if o.seconds is not None]
    passed = sum(o.passed for o in outcomes)
    return {
        "cases": len(outcomes),
        "passed": passed,
        "pass_rate": round(passed / max(1, len(outcomes)), 4),
        "per_category": {k: {**v, "rate": round(v["passed"] / v["n"], 3)} for k, v in sorted(per.items())},
        "done_ms_p50": pct(times, 50),
        "done_ms_p95": pct(times, 95),
        "timed_turns": len(times),
        "analyser_load_s": round(morph.LOAD.get("wall_s", 0.0), 2),
        "targets": {"pass_rate": 0.95, "done_ms_p50": 300},
    }


async def main(args) -> dict:
    from eco2.services.auth.app import create as create_auth
    from eco2.services.dataplane.embedded import EmbeddedDataPlane
    from support.servers import env, running

    root = Path(tempfile.mkdtemp(prefix="eco2-bench-answers-", dir="/tmp"))
    root.chmod(0o755)
    plane = EmbeddedDataPlane(root / "data")
    info = plane.start()
    try:
        base = {
            "DATABASE_URL": info.database_url,
            "REDIS_URL": info.redis_url,
            "ECO2_DEPLOYMENT": "embedded",
            "ECO2_GRPC_PORT": "0",
            "ECO2_METRICS_PORT": "0",
            "ECO2_LOG_LEVEL": "ERROR",
            "ECO2_IDENTITY_JWKS": TEST_JWKS,
            "LC_ALL": "C.UTF-8",
        }
        with env(base):
            auth = create_auth()
        async with running(auth, metrics=False) as server:
            cases = (
                G.cases(fast_only=args.fast)
                if not args.eval
                else [c for c in __import__("yaml").safe_load(Path(args.eval).read_text(encoding="utf-8"))["cases"]]
            )
            out = await evaluate({**base, "ECO2_AUTH_ADDR": f"127.0.0.1:{server.port}"}, cases, args.show_failures)
        return {
            "bench": "answers",
            "machine": f"{platform.node()} {os.cpu_count()} cpu",
            "date": time.strftime("%Y-%m-%d"),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            **out,
        }
    finally:
        plane.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval", default="", help="another evaluation set in the same format")
    parser.add_argument("--fast", action="store_true", help="only the cases marked fast (the normal suite's subset)")
    parser.add_argument("--show-failures", action="store_true", help="print each failed case to stderr")
    print(json.dumps(asyncio.run(main(parser.parse_args())), ensure_ascii=False))
