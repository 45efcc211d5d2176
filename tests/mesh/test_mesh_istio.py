"""The Istio manifests (eco2.mesh.istio): valid for Istio's own CRD schemas, in step with the route
table and with the committed files, and their policies let exactly the route table's callers in."""

from __future__ import annotations

import re
import shutil
from functools import cache

import celpy
import jsonschema
import pytest
import yaml

from eco2.mesh import istio
from eco2.mesh.istio import GRPC_PORT, HTTP_PORT, POD_LABEL, Params, mesh_config, render
from eco2.mesh.routes import INGRESS, load, parse

TABLE = load()
# Every optional part switched on: TLS, CORS, an ingress of its own, another trust domain.
FULL = Params(
    namespace="shop",
    trust_domain="corp.example",
    hosts=("eco2.example.com", "www.eco2.example.com"),
    ingress_namespace="edge",
    ingress_selector={"istio": "eco2-ingress"},
    tls_credential_name="eco2-tls",
    cors_origins=("https://app.example.com", "https://admin.example.com"),
)
PARAMS = pytest.mark.parametrize("params", [Params(), FULL], ids=["default", "full"])


def _kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


# --- Istio's CRD schemas ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def crds(shared_dir) -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) → the version of Istio's CRD: `storage` and `schema` (openAPIV3Schema)."""
    path = shared_dir / "reference-data" / "istio" / "customresourcedefinitions.gen.yaml"
    versions = {}
    for crd in yaml.safe_load_all(path.read_text()):
        if crd:
            spec = crd["spec"]
            for version in spec["versions"]:
                versions[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = {
                    "storage": version["storage"],
                    "schema": version["schema"]["openAPIV3Schema"],
                }
    return versions


def _strict(schema: dict) -> dict:
    """The schema with unknown fields refused. The API server prunes them without a word, so a
    misspelt field would otherwise pass and then be missing in the cluster."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: _strict(sub) for name, sub in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(out["additionalProperties"])
    if "items" in out:
        out["items"] = _strict(out["items"])
    for key in ("oneOf", "anyOf", "allOf"):
        if key in out:
            out[key] = [_strict(sub) for sub in out[key]]
    return out


@cache
def _cel(rule: str):
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _cel_errors(schema: dict, value, where: str) -> list[str]:
    """The CRD's `x-kubernetes-validations` (CEL rules the API server enforces, which JSON
    Schema does not see) that `value` breaks, evaluated at every node the value has."""
    errors = []
    for validation in schema.get("x-kubernetes-validations", ()):
        result = _cel(validation["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        if not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            errors.append(f"{where}: {validation.get('message', validation['rule'])}")
    if isinstance(value, dict):
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                errors += _cel_errors(sub, item, f"{where}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors += _cel_errors(schema["items"], item, f"{where}[{index}]")
    return errors


def _schema_errors(crds, doc: dict) -> list[str]:
    version = crds.get((doc["apiVersion"], doc["kind"]))
    if version is None:
        return [f"{doc['apiVersion']} {doc['kind']}: no such CRD version"]
    if not version["storage"]:
        return [f"{doc['apiVersion']} {doc['kind']}: not the version Istio stores"]
    spec_schema = version["schema"]["properties"]["spec"]
    validator = jsonschema.Draft7Validator(_strict(spec_schema))
    errors = [f"spec.{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc["spec"])]
    return errors + _cel_errors(spec_schema, doc["spec"], "spec")


@PARAMS
def test_every_resource_validates_against_its_crd(crds, params):
    for doc in render(params):
        name = f"{doc['kind']} {doc['metadata']['name']}"
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}, name
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), name
        assert doc["metadata"]["namespace"] in (params.namespace, params.ingress_namespace), name
        assert _schema_errors(crds, doc) == [], name


def test_the_schema_check_refuses_a_misspelt_field_and_a_broken_rule(crds):
    """What the strict schema and the CEL rules catch; `timeout: 0s` is why no route sets one."""
    rule = next(d for d in render() if d["kind"] == "DestinationRule")
    rule["spec"]["trafficPolicy"]["connectionPool"]["http"]["h2UpgradePolicyy"] = "UPGRADE"
    assert any("h2UpgradePolicyy" in e for e in _schema_errors(crds, rule))

    edge = next(d for d in render() if d["kind"] == "VirtualService")
    edge["spec"]["http"][-1]["timeout"] = "0s"
    assert any("timeout" in e and "1ms" in e for e in _schema_errors(crds, edge))


# --- the committed files and the Helm template ---------------------------------------------------


@pytest.mark.parametrize(
    "path, args",
    [
        ("mesh/istio/eco2.yaml", []),
        ("mesh/istio/meshconfig.yaml", ["--mesh-config"]),
        ("helm/eco2/templates/istio.yaml", ["--helm"]),
    ],
)
def test_committed_files_are_a_fresh_render(repo_root, capsys, path, args):
    assert istio.main(args) == 0
    fresh = capsys.readouterr().out
    assert (repo_root / path).read_text() == fresh, (
        f"{path} is stale: python -m eco2.mesh.istio {' '.join(args)} > {path}"
    )


# The chart's values the template reads, at the defaults helm/eco2/values.yaml is to carry.
CHART_VALUES = {
    "mesh": {
        "istio": {"enabled": True},
        "trustDomain": "cluster.local",
        "hosts": ["*"],
        "ingressNamespace": "istio-system",
        "ingressSelector": {"istio": "ingressgateway"},
        "ingressPrincipal": "",
        "extAuthzProvider": "eco2-ext-authz",
        "tlsCredentialName": "",
        "corsOrigins": [],
    }
}


@pytest.fixture
def helm_render(tmp_path, repo_root):
    """Renders the committed template in a chart of its own with CHART_VALUES (+ overrides)."""
    from helm_python import Chart

    chart = tmp_path / "chart"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: eco2\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text(yaml.safe_dump(CHART_VALUES))
    shutil.copy(repo_root / "helm" / "eco2" / "templates" / "istio.yaml", chart / "templates" / "istio.yaml")

    def run(values: dict, namespace: str) -> list[dict]:
        out = Chart.load(chart).render(values, name="eco2", namespace=namespace, is_install=True)
        return [doc for text in out.values() for doc in yaml.safe_load_all(text) if doc]

    return run


def test_the_helm_template_renders_what_the_module_renders(helm_render):
    assert helm_render({}, "eco2") == render(Params())
    values = {
        "trustDomain": FULL.trust_domain,
        "hosts": list(FULL.hosts),
        "ingressNamespace": FULL.ingress_namespace,
        "ingressSelector": dict(FULL.ingress_selector),
        "tlsCredentialName": FULL.tls_credential_name,
        "corsOrigins": list(FULL.cors_origins),
    }
    assert helm_render({"mesh": values}, FULL.namespace) == render(FULL)
    principal = "cluster.local/ns/gw/sa/eco2-ingress"
    assert helm_render({"mesh": {"ingressPrincipal": principal}}, "eco2") == render(Params(ingress_principal=principal))


def test_the_helm_template_renders_nothing_when_istio_is_off(helm_render):
    assert helm_render({"mesh": {"istio": {"enabled": False}}}, "eco2") == []


# --- the edge's routes -----------------------------------------------------------------------------


def _string_match(match: dict, value: str) -> bool:
    ((kind, expected),) = match.items()
    if kind == "exact":
        return value == expected
    if kind == "prefix":
        return value.startswith(expected)
    assert kind == "regex", kind
    return re.fullmatch(expected, value) is not None


def _request_matches(match: dict, method: str, path: str, content_type: str, port: int) -> bool:
    assert set(match) <= {"method", "uri", "headers", "port"}, f"the evaluator does not know {set(match)}"
    headers = match.get("headers", {})
    assert set(headers) <= {"content-type"}, headers
    return (
        ("method" not in match or _string_match(match["method"], method))
        and ("uri" not in match or _string_match(match["uri"], path))
        and ("content-type" not in headers or _string_match(headers["content-type"], content_type))
        and match.get("port", port) == port
    )


def _route(
    docs: list[dict], path: str, content_type: str = "application/grpc", port: int = 80, method: str = "POST"
) -> dict:
    """The first http route of the edge's VirtualService that the request matches, as Istio picks."""
    (edge,) = _kind(docs, "VirtualService")
    for route in edge["spec"]["http"]:
        if any(_request_matches(m, method, path, content_type, port) for m in route["match"]):
            return route
    raise AssertionError(f"no route for {method} {path}")


def _destination(route: dict) -> tuple[str, int]:
    (target,) = route["route"]
    return target["destination"]["host"], target["destination"]["port"]["number"]


GRPC = ("application/grpc", "application/grpc+proto")
GRPC_WEB = ("application/grpc-web", "application/grpc-web+proto", "application/grpc-web-text")


@PARAMS
def test_grpc_of_every_edge_service_goes_straight_to_it(params):
    docs = render(params)
    gateway = (istio.host(params, "gateway"), HTTP_PORT)
    for service in TABLE.services.values():
        for prefix in service.grpc_prefixes:
            direct = (istio.host(params, service.name), GRPC_PORT)
            for content_type in GRPC:
                for port in (80, 443):
                    assert _destination(_route(docs, prefix + "Any", content_type, port)) == direct
            for content_type in GRPC_WEB:
                # Envoy translates gRPC-Web on port 80 (GRPC-WEB); over HTTPS the gateway does.
                assert _destination(_route(docs, prefix + "Any", content_type, 80)) == direct
                assert _destination(_route(docs, prefix + "Any", content_type, 443)) == gateway
            assert _destination(_route(docs, prefix + "Any", "application/json")) == gateway  # Connect JSON


@PARAMS
def test_internal_grpc_services_are_never_routed_from_the_edge(params):
    docs = render(params)
    internal = [(s, name) for s in TABLE.services.values() for name in s.internal]
    assert internal, "the route table names the ext-authz service as internal"
    for _service, name in internal:
        for content_type in (*GRPC, *GRPC_WEB, "application/json"):
            for port in (80, 443):
                route = _route(docs, f"/{name}/Check", content_type, port)
                assert "route" not in route and route["directResponse"] == {"status": 404}


@PARAMS
def test_public_paths_reach_their_own_service(params):
    docs = render(params)
    for service in TABLE.services.values():
        for public in service.public:
            path = public.removesuffix("*") + ("x" if public.endswith("*") else "")
            if service.grpc:
                want = (istio.host(params, service.name), GRPC_PORT)
                assert _destination(_route(docs, path, "application/grpc")) == want, path
            else:
                want = (istio.host(params, service.name), HTTP_PORT)
                assert _destination(_route(docs, path, "text/html", method="GET")) == want, path


@PARAMS
def test_every_preflight_is_answered_at_the_edge(params):
    docs = render(params)
    for path in ("/", "/v1/auth/dev-sign-in", *(p + "Any" for s in TABLE.services.values() for p in s.grpc_prefixes)):
        route = _route(docs, path, "", method="OPTIONS")
        assert route["directResponse"] == {"status": 204} and "route" not in route


def test_cors_follows_the_origins():
    assert "corsPolicy" not in yaml.safe_dump(render())
    (edge,) = _kind(render(FULL), "VirtualService")
    forwarding = [r for r in edge["spec"]["http"] if "route" in r or r["name"] == "cors-preflight"]
    for route in forwarding:
        assert [o["exact"] for o in route["corsPolicy"]["allowOrigins"]] == list(FULL.cors_origins), route["name"]


def test_cors_headers_are_the_gateways():
    from eco2.gateway.app import _ALLOW_HEADERS, _EXPOSE

    assert set(istio.CORS_ALLOW_HEADERS) == _ALLOW_HEADERS
    assert {h.strip() for h in _EXPOSE.decode().split(",")} <= set(istio.CORS_EXPOSE_HEADERS)


@PARAMS
def test_streams_are_not_cut_and_calls_are_not_replayed(params):
    (edge,) = _kind(render(params), "VirtualService")
    for route in edge["spec"]["http"]:
        assert "timeout" not in route, route["name"]  # Istio's default: no timeout
        if "route" in route:
            assert set(route["retries"]["retryOn"].split(",")) <= {"connect-failure", "refused-stream"}, route["name"]


@PARAMS
def test_every_destination_is_a_service_of_the_route_table(params):
    (edge,) = _kind(render(params), "VirtualService")
    known = {(istio.host(params, s.name), GRPC_PORT if s.grpc else HTTP_PORT) for s in TABLE.services.values()}
    destinations = {_destination(r) for r in edge["spec"]["http"] if "route" in r}
    assert destinations <= known
    assert edge["spec"]["gateways"] == [f"{params.namespace}/{istio.GATEWAY_NAME}"]


def test_the_gateway_serves_https_only_with_a_credential():
    (plain,) = _kind(render(), "Gateway")
    assert [(s["port"]["number"], s["port"]["protocol"]) for s in plain["spec"]["servers"]] == [(80, "GRPC-WEB")]
    (tls,) = _kind(render(FULL), "Gateway")
    assert [(s["port"]["number"], s["port"]["protocol"]) for s in tls["spec"]["servers"]] == [
        (80, "GRPC-WEB"),
        (443, "HTTPS"),
    ]
    assert tls["spec"]["servers"][1]["tls"] == {"mode": "SIMPLE", "credentialName": "eco2-tls"}
    assert tls["spec"]["selector"] == {"istio": "eco2-ingress"}
    assert all(s["hosts"] == list(FULL.hosts) for s in tls["spec"]["servers"])


# --- mTLS, traffic policy, ext-authz ---------------------------------------------------------------


@PARAMS
def test_mtls_is_strict_and_every_service_has_its_destination_rule(params):
    docs = render(params)
    (peer,) = _kind(docs, "PeerAuthentication")
    assert peer["metadata"]["namespace"] == params.namespace
    assert peer["spec"] == {"mtls": {"mode": "STRICT"}}  # no selector: the whole namespace
    rules = {d["spec"]["host"]: d["spec"]["trafficPolicy"] for d in _kind(docs, "DestinationRule")}
    assert set(rules) == {istio.host(params, name) for name in TABLE.services}
    for policy in rules.values():
        assert policy["tls"] == {"mode": "ISTIO_MUTUAL"}
        assert policy["connectionPool"]["http"]["h2UpgradePolicy"] == "UPGRADE"
        assert policy["outlierDetection"]["consecutiveGatewayErrors"] > 0


# The fields of Istio's MeshConfig.ExtensionProvider.EnvoyExternalAuthorizationGrpcProvider
# (istio/api mesh/v1alpha1/config.proto); the header lists belong to the HTTP provider only.
GRPC_PROVIDER_FIELDS = {
    "service",
    "port",
    "timeout",
    "failOpen",
    "clearRouteCache",
    "statusOnError",
    "includeRequestBodyInCheck",
}


@PARAMS
def test_the_ingress_sends_every_request_to_the_registered_provider_and_fails_closed(params):
    (provider,) = mesh_config(params)["meshConfig"]["extensionProviders"]
    grpc = provider["envoyExtAuthzGrpc"]
    assert set(grpc) <= GRPC_PROVIDER_FIELDS
    assert grpc["failOpen"] is False and grpc["statusOnError"] == "503"
    auth = next(s for s in TABLE.services.values() if istio.EXT_AUTHZ_GRPC in s.internal)
    assert (grpc["service"], grpc["port"]) == (istio.host(params, auth.name), GRPC_PORT)

    custom = [d for d in _kind(render(params), "AuthorizationPolicy") if d["spec"]["action"] == "CUSTOM"]
    assert len(custom) == 1
    spec = custom[0]["spec"]
    assert custom[0]["metadata"]["namespace"] == params.ingress_namespace
    assert spec["selector"] == {"matchLabels": dict(params.ingress_selector)}
    assert spec["provider"] == {"name": provider["name"]}
    assert spec["rules"] == [{}]  # every request, public paths too: Check passes those itself


# --- who may call whom -----------------------------------------------------------------------------


def _principal_matches(pattern: str, principal: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return principal.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return principal.endswith(pattern[1:])
    return principal == pattern


_path_matches = _principal_matches  # Istio matches paths the same way: exact, prefix*, *suffix


def _rule_matches(rule: dict, principal: str, path: str) -> bool:
    assert set(rule) <= {"from", "to"}, f"the evaluator does not know {set(rule)}"
    sources = [entry["source"] for entry in rule.get("from", [])]
    operations = [entry["operation"] for entry in rule.get("to", [])]
    for source in sources:
        assert set(source) <= {"principals"}, source
    for operation in operations:
        assert set(operation) <= {"paths"}, operation
    return (not sources or any(any(_principal_matches(p, principal) for p in s["principals"]) for s in sources)) and (
        not operations or any(any(_path_matches(p, path) for p in o["paths"]) for o in operations)
    )


def allowed(docs: list[dict], namespace: str, labels: dict, principal: str, path: str) -> bool:
    """Istio's ALLOW decision for a request reaching a pod: with no ALLOW policy selecting the
    pod (a policy without selector selects the whole namespace) it passes; with some, it passes
    only when a rule of one of them matches."""
    policies = [
        d
        for d in _kind(docs, "AuthorizationPolicy")
        if d["metadata"]["namespace"] == namespace
        and d["spec"]["action"] == "ALLOW"
        and d["spec"].get("selector", {}).get("matchLabels", {}).items() <= labels.items()
    ]
    return not policies or any(_rule_matches(rule, principal, path) for p in policies for rule in p["spec"]["rules"])


def _service_path(service) -> str:
    return (service.grpc_prefixes or service.http)[0] + "Any"


def _pod(service) -> dict:
    return {POD_LABEL: f"eco2-{service.name}", "pod-template-hash": "5d8f"}


@PARAMS
def test_each_service_admits_exactly_its_callers(params):
    docs = render(params)
    verdicts = {
        (caller, service.name): allowed(
            docs, params.namespace, _pod(service), params.principal(caller), _service_path(service)
        )
        for caller in (INGRESS, *TABLE.workloads())
        for service in TABLE.services.values()
    }
    wrong = sorted(pair for pair, ok in verdicts.items() if ok != (pair[0] in TABLE.services[pair[1]].callers))
    assert wrong == []
    assert not all(verdicts.values()) and any(verdicts.values())


def test_location_may_not_call_chat_but_the_gateway_may():
    docs, chat = render(), TABLE.services["chat"]
    assert not allowed(
        docs, "eco2", _pod(chat), "cluster.local/ns/eco2/sa/eco2-location", "/eco2.chat.v1.ChatService/StreamChat"
    )
    assert allowed(
        docs, "eco2", _pod(chat), "cluster.local/ns/eco2/sa/eco2-gateway", "/eco2.chat.v1.ChatService/StreamChat"
    )


def test_identities_are_bound_to_the_namespace_and_trust_domain():
    docs, chat = render(), TABLE.services["chat"]
    path = "/eco2.chat.v1.ChatService/StreamChat"
    assert not allowed(docs, "eco2", _pod(chat), "cluster.local/ns/other/sa/eco2-gateway", path)
    assert not allowed(docs, "eco2", _pod(chat), "evil.example/ns/eco2/sa/eco2-gateway", path)
    assert not allowed(docs, "eco2", _pod(chat), "", path)  # plaintext: no principal


def test_callers_reach_only_the_services_own_paths_and_health():
    docs, location = render(), TABLE.services["location"]
    gateway = "cluster.local/ns/eco2/sa/eco2-gateway"
    assert allowed(docs, "eco2", _pod(location), gateway, "/grpc.health.v1.Health/Check")
    assert not allowed(
        docs, "eco2", _pod(location), gateway, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
    )
    assert not allowed(docs, "eco2", _pod(location), gateway, "/eco2.chat.v1.ChatService/StreamChat")


def test_the_ingress_reaches_check_and_the_gateway_everywhere():
    docs, ingress = render(), Params().principal(INGRESS)
    auth, gateway = TABLE.services["auth"], TABLE.services["gateway"]
    assert allowed(docs, "eco2", _pod(auth), ingress, f"/{istio.EXT_AUTHZ_GRPC}/Check")
    assert allowed(docs, "eco2", _pod(gateway), ingress, "/v1/chat/jobs/42/events")
    assert not allowed(docs, "eco2", _pod(gateway), "cluster.local/ns/eco2/sa/eco2-chat", "/")


def test_a_service_without_callers_admits_no_one():
    table = parse("version: 1\nservices:\n  lonely:\n    grpc: [eco2.lonely.v1.LonelyService]\n")
    docs = render(Params(), table)
    (policy,) = [d for d in _kind(docs, "AuthorizationPolicy") if d["spec"]["action"] == "ALLOW"]
    assert policy["spec"]["rules"] == []
    pod = {POD_LABEL: "eco2-lonely"}
    assert not allowed(docs, "eco2", pod, Params().principal(INGRESS), "/eco2.lonely.v1.LonelyService/Get")


def test_the_evaluator_refuses_what_it_does_not_know():
    docs = render()
    allow = next(d for d in _kind(docs, "AuthorizationPolicy") if d["spec"]["action"] == "ALLOW")
    allow["spec"]["rules"][0]["when"] = [{"key": "request.headers[x]", "values": ["y"]}]
    with pytest.raises(AssertionError, match="does not know"):
        allowed(docs, "eco2", allow["spec"]["selector"]["matchLabels"], Params().principal(INGRESS), "/")


# --- the command line -------------------------------------------------------------------------------


def test_the_cli_takes_the_parameters(capsys):
    assert (
        istio.main(
            [
                "--namespace",
                "shop",
                "--host",
                "eco2.example.com",
                "--ingress-selector",
                "istio=eco2",
                "--tls-credential-name",
                "tls",
            ]
        )
        == 0
    )
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert docs == render(
        Params(
            namespace="shop", hosts=("eco2.example.com",), ingress_selector={"istio": "eco2"}, tls_credential_name="tls"
        )
    )


@pytest.mark.parametrize(
    "args", [["--helm", "--namespace", "shop"], ["--ingress-selector", "istio"], ["--helm", "--mesh-config"]]
)
def test_the_cli_refuses_what_it_cannot_honour(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        istio.main(args)
    assert exit_.value.code == 2


def test_istio_ingress_answers_denies_like_the_embedded_ingress():
    from eco2.mesh.envoy import deny_mappers

    (patch,) = _kind(render(), "EnvoyFilter")
    assert patch["metadata"]["namespace"] == "istio-system"
    assert patch["spec"]["workloadSelector"]["labels"] == {"istio": "ingressgateway"}
    (change,) = patch["spec"]["configPatches"]
    assert change["match"]["context"] == "GATEWAY" and change["patch"]["operation"] == "MERGE"
    mappers = change["patch"]["value"]["typed_config"]["local_reply_config"]["mappers"]
    assert mappers == deny_mappers()  # one source for both ingresses
    rate_limited = [
        m
        for m in mappers
        if {
            "status_code_filter": {
                "comparison": {"op": "EQ", "value": {"default_value": 429, "runtime_key": "ingress.deny_status"}}
            }
        }
        in m["filter"]["and_filter"]["filters"]
    ]
    assert any(
        h["header"] == {"key": "grpc-status", "value": "8"} for m in rate_limited for h in m.get("headers_to_add", [])
    )
