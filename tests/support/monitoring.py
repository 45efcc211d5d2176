"""What the chart's dashboards and alerts query, and what a /metrics scrape exports."""

from __future__ import annotations

import json
from pathlib import Path

import promql_parser
from prometheus_client.parser import text_string_to_metric_families

CHART = Path(__file__).resolve().parents[2] / "helm" / "eco2"
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
#: Grafana's variables as Prometheus sees them once Grafana has substituted them.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
#: The sample names a metric family of each type exposes (prometheus_client's text format).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
    "summary": ("_count", "_sum", "_created"),
}


def dashboard_queries(dashboard: dict) -> list[str]:
    """Every PromQL query of a dashboard's panels, as Prometheus gets it from Grafana."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", ()):
            query = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                query = query.replace(variable, value)
            out.append(query)
    return out


def all_dashboard_queries() -> dict[str, list[str]]:
    return {path.stem: dashboard_queries(json.loads(path.read_text())) for path in DASHBOARDS}


def metric_names(query: str) -> set[str]:
    """The metric names a PromQL expression selects (raises ValueError when it does not parse)."""
    names: set[str] = set()

    def visit(node) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(query), visit)
    return names


def exported_names(text: str) -> set[str]:
    """Every sample name a /metrics body exports or declares: the samples it has, and the names
    each declared family (# TYPE) would expose, even with no labelled child yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) → value of a /metrics body."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scrape: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float | None:
    """The sum of the samples `name` whose labels include `labels`; None when there is none."""
    want = set(labels.items())
    found = [v for (n, ls), v in scrape.items() if n == name and want <= ls]
    return sum(found) if found else None
