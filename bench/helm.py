"""Helm chart benchmark: how long rendering helm/eco2 and validating what it renders take.

Loads the chart with the Helm v4 SDK (helm-python-sdk, no helm binary), renders it `--rounds`
times with the default values and with examples/values-production.yaml, and validates every
rendered Kubernetes object with kubernetes-validate (strict, the version tests/helm/test_helm.py pins).
KEDA and Istio objects are counted, not validated (their schemas are in ../shared, tests do it).

    python bench/helm.py [--rounds 20]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import helm_python
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "eco2"
KUBERNETES = "1.33.0"


def is_custom_resource(obj: dict) -> bool:
    group = obj["apiVersion"].rpartition("/")[0]
    return group in ("keda.sh", "monitoring.coreos.com") or group.endswith("istio.io")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    helm_python.disable_logging()
    variants = {
        "default": None,
        "production": helm_python.values_from_yaml((CHART / "examples" / "values-production.yaml").read_text()),
    }
    start = time.perf_counter()
    chart = helm_python.Chart.load(CHART)
    load_ms = (time.perf_counter() - start) * 1000
    out: dict = {
        "bench": "helm",
        "python": platform.python_version(),
        "load_ms": round(load_ms, 1),
        "rounds": args.rounds,
    }
    with chart:
        for name, values in variants.items():
            render_ms, validate_ms = [], []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                manifests = chart.render(values, name="eco2", namespace="eco2", is_install=True)
                t1 = time.perf_counter()
                objects = [
                    d
                    for path, text in manifests.items()
                    if not path.endswith("NOTES.txt")
                    for d in yaml.safe_load_all(text)
                    if d
                ]
                for obj in objects:
                    if not is_custom_resource(obj):
                        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
                t2 = time.perf_counter()
                render_ms.append((t1 - t0) * 1000)
                validate_ms.append((t2 - t1) * 1000)
            out[name] = {
                "objects": len(objects),
                "render_ms_median": round(statistics.median(render_ms), 1),
                "parse_validate_ms_median": round(statistics.median(validate_ms), 1),
            }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
