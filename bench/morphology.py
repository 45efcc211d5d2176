"""Reading questions by morphology (kiwipiepy) against the substring cues and whole-message
character n-grams it replaced, on the answer sets; and the analyser's start-up cost.

    python bench/morphology.py [--sets eval,heldout,fresh] [--startups 3]

No stack is started: both readers are pure functions over the same knowledge base.

- **cues + n-grams** (before commit 3fa7c2a): `intents.classify` of its parent commit, read from
  git (substring cues per clause, a retrieval hit makes a waste question), and the rule file the
  waste branch cited first: BM25 over character n-grams of the whole message (`kb.search`).
- **morphology** (now): `intents.classify` (question.py's reading) and the rule file of the first
  item `rules.gather` finds (where the item goes, else its file).

Per set: routing right (a place intent exactly when the case expects a location question; the
price intent for price cases; the character intent for character cases; waste or bulk waste for
rule cases), the rule file right (top-1 among the case's `file`s, rule cases only), CPU per
question of each reader. English cases are left out (the old reader had no English). Start-up:
`morph.warm()` in a fresh interpreter, wall and CPU seconds and RSS added, median of runs.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BEFORE = "3fa7c2a^"  # the parent of the commit that brought the analyser
PLACES = ("location", "collection_point")

STARTUP = """
import json, re, time
from eco2.services.knowledge import morph

def rss_mb():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024

rss = rss_mb()
wall, cpu = time.perf_counter(), time.process_time()
morph.warm()
loaded = time.perf_counter()
morph.analyse("쇼파버릴라면 어케해")
print(json.dumps({"wall_s": loaded - wall, "cpu_s": time.process_time() - cpu, "first_question_ms": (time.perf_counter() - loaded) * 1000,
                  "rss_added_mb": rss_mb() - rss}))
"""


def old_intents() -> types.ModuleType:
    source = subprocess.run(
        ["git", "show", f"{BEFORE}:services/chat/intents.py"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    module = types.ModuleType("intents_before_morphology")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, "intents_before_morphology.py", "exec"), module.__dict__)  # noqa: S102 - the project's own earlier code
    return module


class OldKnowledgeBase:
    """The knowledge base as the old reader knew it: it then held the characters, which
    CharacterService serves now (the old `classify` reads their names from it)."""

    def __init__(self, kb) -> None:
        self._kb = kb
        source = subprocess.run(
            ["git", "show", f"{BEFORE}:services/knowledge/characters.yaml"],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        self.characters = yaml.safe_load(source)["characters"]

    def __getattr__(self, name: str):
        return getattr(self._kb, name)


def routing_right(case: dict, intents: tuple[str, ...]) -> bool:
    place = case.get("ask") == "location"
    if place != any(i in PLACES for i in intents):
        return False
    if (
        case["cat"] == "시세"
        and any("원/kg" in str(f) for f in case.get("must") or [])
        and "recyclable_price" not in intents
    ):
        return False
    if case["cat"] == "캐릭터" and "character" not in intents:
        return False
    return not case.get("file") or "waste" in intents or "bulk_waste" in intents


def files_of(case: dict) -> list[str]:
    f = case.get("file") or []
    return [f] if isinstance(f, str) else list(f)


def measure(cases: list[dict], old, kb, old_kb) -> dict:
    from eco2.services.chat import intents as I
    from eco2.services.chat import rules as R

    out = {
        "cases": 0,
        "routing": {"cues": 0, "morphology": 0},
        "rule_cases": 0,
        "rule_file": {"ngrams": 0, "morphology": 0},
        "cpu_ms": {"cues": 0.0, "morphology": 0.0},
    }
    for case in cases:
        if case["cat"] == "영어":
            continue
        q = case["q"]
        out["cases"] += 1
        t = time.process_time()
        before = old.classify(q, old_kb)
        hits = kb.search(q, limit=1)
        out["cpu_ms"]["cues"] += (time.process_time() - t) * 1000
        t = time.process_time()
        now = I.classify(q, kb)
        found = R.gather(kb, q)["findings"]
        out["cpu_ms"]["morphology"] += (time.process_time() - t) * 1000
        out["routing"]["cues"] += routing_right(case, before.intents)
        out["routing"]["morphology"] += routing_right(case, now.intents)
        files = files_of(case)
        if files:
            out["rule_cases"] += 1
            out["rule_file"]["ngrams"] += bool(hits) and hits[0].rule.file in files
            out["rule_file"]["morphology"] += bool(found) and (
                (found[0]["dest_files"] or [found[0]["file"]])[0] in files or found[0]["file"] in files
            )
    n, r = max(1, out["cases"]), max(1, out["rule_cases"])
    return {
        "cases": out["cases"],
        "rule_cases": out["rule_cases"],
        "routing_right": {k: round(v / n, 3) for k, v in out["routing"].items()},
        "rule_file_right": {k: round(v / r, 3) for k, v in out["rule_file"].items()},
        "cpu_ms_per_question": {k: round(v / n, 2) for k, v in out["cpu_ms"].items()},
    }


def startup(runs: int) -> dict:
    got = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", STARTUP], cwd=REPO, check=True, capture_output=True, text=True)
        got.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {k: round(statistics.median(g[k] for g in got), 3) for k in got[0]} | {"runs": runs}


def main(args) -> dict:
    from eco2.services.knowledge import kb as K
    from eco2.services.knowledge import morph

    morph.warm()  # the readers are compared warm: the load is measured apart
    kb, old = K.load(), old_intents()
    sets = {}
    for name in args.sets.split(","):
        cases = yaml.safe_load((REPO / "tests" / "data" / f"answers_{name}.yaml").read_text(encoding="utf-8"))["cases"]
        sets[name] = measure(cases, old, kb, OldKnowledgeBase(kb))
    return {
        "bench": "morphology",
        "machine": f"{platform.node()} {os.cpu_count()} cpu",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "before": BEFORE,
        "sets": sets,
        "analyser_startup": startup(args.startups),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="eval,heldout,fresh", help="answer sets under tests/data (answers_NAME.yaml)")
    parser.add_argument("--startups", type=int, default=3, help="fresh interpreters that load the analyser")
    print(json.dumps(main(parser.parse_args()), ensure_ascii=False))
