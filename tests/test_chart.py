"""The Helm chart, rendered with `helm template` for a set of values and checked as data: RBAC
grants exactly what the operator uses and never Secrets, the pod runs locked down, every
operator setting has a value, optional features render what they promise, wrong values are
refused with a message that names them, and the generated parts (CRDs, README values table)
are current. Alert rules are checked and unit-tested with promtool, every dashboard query
parses, and every metric an alert or panel reads is one that something in the repository exports.

Needs the pinned helm that e2e/build compiles (skipped, saying so, when it is not built).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from specfleet import crdgen
from specfleet import metrics as operator_metrics
from specfleet.config import Config
from specfleet_runtime.gate import metrics as gate_metrics
from specfleet_runtime.sim import vllm_metrics
from tests.corpus import ROOT

CHART = ROOT / "charts" / "specfleet"
BUILD = ROOT / "e2e" / "build"
RELEASE, NAMESPACE = "sf", "specfleet-system"
FULLNAME = "sf-specfleet"

Manifest = dict[str, Any]

ALL_FEATURES: Manifest = {
    "replicaCount": 2,
    "ha": {"enabled": True},
    "watchNamespaces": ["ml", "research"],
    "monitoring": {
        "serviceMonitor": {"enabled": True},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
    },
    "networkPolicy": {"enabled": True, "allowedNamespaces": ["apps"]},
}
VARIANTS: dict[str, Manifest] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["ml", "research"]},
    "ha": {"replicaCount": 2, "ha": {"enabled": True}},
    "all-features": ALL_FEATURES,
}


def _helm_binary() -> Path:
    found = subprocess.run([str(BUILD), "--check"], capture_output=True, check=False)
    if found.returncode != 0:
        pytest.skip("helm is not built: run e2e/build (or make setup)")
    out = subprocess.run(
        [str(BUILD), "--print-bin-dir"], capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip()) / "helm"


def helm(*args: str, values: Mapping[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [str(_helm_binary()), *args]
    if values is not None:
        argv += ["--values", "-"]
    return subprocess.run(
        argv, input=json.dumps(values or {}), capture_output=True, text=True, check=False
    )


def render(values: Mapping[str, Any]) -> list[Manifest]:
    result = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, values=values)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def of_kind(documents: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in documents if d["kind"] == kind]


def operator_container(documents: list[Manifest]) -> Manifest:
    (deployment,) = of_kind(documents, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    result: Manifest = container
    return result


def rules(documents: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    for role in documents:
        if role["kind"] in ("ClusterRole", "Role"):
            where = f"{role['kind']} {role['metadata'].get('namespace', '')}"
            for rule in role["rules"]:
                yield where, rule


def granted(documents: list[Manifest]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every rule of every role."""
    return {
        (group, resource, verb)
        for _, rule in rules(documents)
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_chart_lints(variant: str) -> None:
    result = helm("lint", "--strict", str(CHART), values=VARIANTS[variant])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_rbac_never_grants_secrets_wildcards_or_deletes_beyond_cronjobs(variant: str) -> None:
    for where, rule in rules(render(VARIANTS[variant])):
        assert "secrets" not in rule["resources"], where
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"{where}: wildcard in {field}"
        assert not set(rule["verbs"]) & {"update", "deletecollection", "*"}, where
        # Delete only what the operator makes and may need gone while its owner lives.
        assert "delete" not in rule["verbs"] or rule["resources"] == ["cronjobs"], where


# What `specfleet run` needs, as found by running it as the chart's ServiceAccount (the e2e
# test does on every run) and by taking each verb away in turn. The chart's README explains
# each line; a change here needs a reason there.
NAMESPACED = {
    *{
        ("specfleet.dev", r, v)
        for r in ("inferencemodels", "routingpolicies")
        for v in ("list", "watch", "patch")
    },
    ("specfleet.dev", "inferencemodels/status", "patch"),
    ("specfleet.dev", "routingpolicies/status", "patch"),
    *{
        (g, r, v)
        for g, r in (
            ("", "configmaps"),
            ("", "services"),
            ("apps", "deployments"),
            ("policy", "poddisruptionbudgets"),
        )
        for v in ("get", "list", "watch", "create", "patch")
    },
    *{("batch", "cronjobs", v) for v in ("get", "list", "watch", "create", "patch", "delete")},
    ("", "pods", "list"),
    ("", "events", "create"),
}
CRD_OBSERVATION = {
    ("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")
}


def test_cluster_wide_rbac_is_exactly_what_the_operator_uses() -> None:
    documents = render({})
    assert granted(documents) == NAMESPACED | CRD_OBSERVATION
    assert of_kind(documents, "Role") == [] and of_kind(documents, "RoleBinding") == []
    (binding,) = of_kind(documents, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
    ]


def test_watching_namespaces_grants_roles_there_and_nothing_cluster_scoped() -> None:
    documents = render({"watchNamespaces": ["ml", "research"], "ha": {"enabled": True}})
    assert of_kind(documents, "ClusterRole") == []
    assert of_kind(documents, "ClusterRoleBinding") == []
    roles = of_kind(documents, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml", "research"]
    peering = {("kopf.dev", "kopfpeerings", v) for v in ("get", "list", "watch", "patch")}
    for role in roles:
        assert granted([role]) == NAMESPACED | peering
    bindings = of_kind(documents, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml", "research"]
    assert all(b["subjects"][0]["namespace"] == NAMESPACE for b in bindings)
    args = operator_container(documents)["args"]
    assert "--namespace=ml" in args and "--namespace=research" in args
    peerings = of_kind(documents, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["ml", "research"]


def test_the_operator_pod_is_locked_down_and_probed() -> None:
    documents = render({})
    (deployment,) = of_kind(documents, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["serviceAccountName"] == FULLNAME
    container = operator_container(documents)
    assert container["securityContext"] == {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["command"] == ["specfleet", "run"]
    assert container["args"] == ["--metrics-port=8080", "--health-port=8081"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "health": 8081}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["image"] == "specfleet/operator:0.1.0"
    # Standalone: a rollout must not overlap two operators.
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_pod_placement_values_reach_the_pod() -> None:
    values = {
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "system", "operator": "Exists"}],
        "affinity": {"nodeAffinity": {"x": 1}},
        "priorityClassName": "system-cluster-critical",
        "image": {"repository": "mirror/specfleet", "tag": "dev", "pullPolicy": "Always"},
        "resources": {"limits": {"memory": "1Gi"}},
    }
    documents = render(values)
    (deployment,) = of_kind(documents, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["tolerations"] == values["tolerations"]
    assert pod["affinity"] == values["affinity"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    container = operator_container(documents)
    assert (container["image"], container["imagePullPolicy"]) == ("mirror/specfleet:dev", "Always")
    assert container["resources"]["limits"] == {"memory": "1Gi"}


def _env(documents: list[Manifest]) -> dict[str, str]:
    env = operator_container(documents)["env"]
    return {e["name"]: e["value"] for e in env if e["name"].startswith("SPECFLEET_")}


def test_every_operator_setting_is_a_value_with_the_operators_default() -> None:
    env = _env(render({}))
    assert set(env) == {f"SPECFLEET_{f.name.upper()}" for f in fields(Config)}, (
        "every field of specfleet.config.Config needs a value under `settings` in the chart "
        "(values.yaml and values.schema.json)"
    )
    assert Config.from_env(env) == Config()


def test_changed_settings_reach_the_operator() -> None:
    settings = {
        "prometheusUrl": "http://prometheus.obs.svc:9090",
        "gateMaxQueue": 64,
        "gateQueueTimeoutSeconds": 2.5,
        "resyncSeconds": 10,
    }
    config = Config.from_env(_env(render({"settings": settings})))
    assert config.prometheus_url == "http://prometheus.obs.svc:9090"
    assert (config.gate_max_queue, config.gate_queue_timeout_seconds) == (64, 2.5)
    assert config.resync_seconds == 10


def test_the_schema_describes_every_setting() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    settings = schema["properties"]["settings"]["properties"]
    camel = {_camel(f.name) for f in fields(Config)}
    assert set(settings) == camel
    for name, node in settings.items():
        assert node.get("description"), f"settings.{name} has no description"


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.capitalize() for part in rest)


def test_every_object_carries_the_recommended_labels() -> None:
    for document in render(ALL_FEATURES):
        labels = document["metadata"]["labels"]
        where = f"{document['kind']} {document['metadata']['name']}"
        assert labels["helm.sh/chart"] == "specfleet-0.1.0", where
        assert labels["app.kubernetes.io/name"] == "specfleet", where
        assert labels["app.kubernetes.io/instance"] == RELEASE, where
        assert labels["app.kubernetes.io/managed-by"] == "Helm", where
        assert labels["app.kubernetes.io/version"] == "0.1.0", where
        assert labels["app.kubernetes.io/part-of"] == "specfleet", where


def test_high_availability_runs_peered_replicas_apart() -> None:
    documents = render({"replicaCount": 2, "ha": {"enabled": True}})
    (deployment,) = of_kind(documents, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert "strategy" not in deployment["spec"]
    container = operator_container(documents)
    assert f"--peering={FULLNAME}" in container["args"]
    pod_id = next(e for e in container["env"] if e["name"] == "POD_ID")
    assert pod_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    (peering,) = of_kind(documents, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == FULLNAME
    assert {
        ("kopf.dev", "clusterkopfpeerings", v) for v in ("get", "list", "watch", "patch")
    } <= granted(documents)
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"][
        "topologyKey"
    ] == ("kubernetes.io/hostname")


def test_optional_features_are_off_by_default() -> None:
    kinds = {d["kind"] for d in render({})}
    assert kinds == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment"}


def test_monitors_scrape_the_operator_gates_vllm_and_routers() -> None:
    documents = render(ALL_FEATURES)
    (service_monitor,) = of_kind(documents, "ServiceMonitor")
    assert service_monitor["spec"]["endpoints"][0]["port"] == "http"
    (service,) = of_kind(documents, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    monitors = {m["metadata"]["name"]: m["spec"] for m in of_kind(documents, "PodMonitor")}
    ports = {name: spec["podMetricsEndpoints"][0]["port"] for name, spec in monitors.items()}
    assert ports == {
        f"{FULLNAME}-gate": "http",
        f"{FULLNAME}-vllm": "vllm",
        f"{FULLNAME}-router": "http",
    }
    for spec in monitors.values():
        assert spec["namespaceSelector"] == {"matchNames": ["ml", "research"]}
        assert spec["podMetricsEndpoints"][0]["path"] == "/metrics"


def test_network_policies_let_clients_in_only_through_the_gate() -> None:
    documents = render(ALL_FEATURES)
    policies = {
        (p["metadata"]["namespace"], p["metadata"]["name"]): p["spec"]
        for p in of_kind(documents, "NetworkPolicy")
    }
    monitoring = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    for namespace in ("ml", "research"):
        spec = policies[(namespace, f"{FULLNAME}-model-servers")]
        assert spec["policyTypes"] == ["Ingress"]
        by_port = {rule["ports"][0]["port"]: rule["from"] for rule in spec["ingress"]}
        assert set(by_port) == {"http", "vllm"}
        assert by_port["vllm"] == [monitoring]
        assert monitoring in by_port["http"]
        assert {"podSelector": {"matchLabels": {
            "app.kubernetes.io/managed-by": "specfleet", "app.kubernetes.io/component": "router"
        }}} in by_port["http"]  # fmt: skip
        allowed = [
            f for f in by_port["http"] if "matchExpressions" in f.get("namespaceSelector", {})
        ]
        assert allowed[0]["namespaceSelector"]["matchExpressions"][0]["values"] == ["apps"]
    operator = policies[(NAMESPACE, f"{FULLNAME}-operator")]
    assert operator["ingress"] == [
        {"from": [monitoring], "ports": [{"port": "http", "protocol": "TCP"}]}
    ]


def test_the_dashboard_shows_what_on_call_needs() -> None:
    (config_map,) = of_kind(render(ALL_FEATURES), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["specfleet.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "vllm:spec_decode_num_accepted_tokens_total",
        "vllm:spec_decode_num_draft_tokens_total",
        "specfleet_gate_e2e_request_latency_seconds_bucket",
        "specfleet_gate_batch_limit",
        "specfleet_gate_requests_in_flight",
        "specfleet_gate_requests_queued",
        "specfleet_gate_queue_wait_seconds_bucket",
    ):
        assert metric in exprs, f"no panel shows {metric}"
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Speculative acceptance", "P99 end-to-end latency", "Batch limit"} <= titles


BAD_VALUES: dict[str, tuple[Manifest, list[str]]] = {
    "a string replica count": ({"replicaCount": "two"}, ["/replicaCount", "want integer"]),
    "an unknown pull policy": (
        {"image": {"repository": "x", "pullPolicy": "Sometimes"}},
        ["/image/pullPolicy", "'Always', 'IfNotPresent', 'Never'"],
    ),
    "a misspelt value": ({"replicas": 2}, ["'replicas' not allowed"]),
    "an unknown setting": ({"settings": {"gateMaxQueu": 5}}, ["'gateMaxQueu' not allowed"]),
    "a negative queue": ({"settings": {"gateMaxQueue": -1}}, ["/settings/gateMaxQueue", "minimum"]),
    "a Prometheus URL without scheme": (
        {"settings": {"prometheusUrl": "prometheus:9090"}},
        ["/settings/prometheusUrl", "does not match pattern"],
    ),
    "a bad namespace name": ({"watchNamespaces": ["ML_team"]}, ["/watchNamespaces/0"]),
    "two replicas without peering": (
        {"replicaCount": 2},
        ["replicaCount: 2 needs ha.enabled: true", "set ha.enabled=true or replicaCount=1"],
    ),
    "network policies without namespaces": (
        {"networkPolicy": {"enabled": True}},
        ["set networkPolicy.modelNamespaces (or watchNamespaces)"],
    ),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_wrong_values_are_refused_with_a_message_naming_them(case: str) -> None:
    values, messages = BAD_VALUES[case]
    result = helm("template", RELEASE, str(CHART), values=values)
    assert result.returncode != 0, f"{case} was accepted"
    for message in messages:
        assert message in result.stderr


def test_the_charts_crds_are_a_fresh_generation() -> None:
    committed = {p.name: p.read_text() for p in (CHART / "crds").glob("*.yaml")}
    assert committed == crdgen.chart_files(), (
        "charts/specfleet/crds is stale: run `make crds` "
        "(specfleet crds --write crds --chart charts/specfleet)"
    )


def test_the_peering_crds_are_what_kopf_looks_for() -> None:
    by_kind = {d["spec"]["names"]["kind"]: d["spec"] for d in crdgen.PEERING_CRDS.values()}
    assert by_kind["ClusterKopfPeering"]["scope"] == "Cluster"
    assert by_kind["KopfPeering"]["scope"] == "Namespaced"
    for spec in by_kind.values():
        assert spec["group"] == "kopf.dev"
        (version,) = spec["versions"]
        assert version["name"] == "v1"
        # No status subresource: kopf then writes keep-alives with a plain patch, the verb
        # the chart grants.
        assert "subresources" not in version
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True


def test_the_readme_values_table_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chart_values_table.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed: apt-get install prometheus")
    return promtool


def _prometheus_rules(tmp_path: Path, values: Mapping[str, Any] = ALL_FEATURES) -> Path:
    (rule,) = of_kind(render(values), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    return path


def _check_rules(promtool: str, rules_file: Path) -> None:
    check = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


RULE_VARIANTS: dict[str, Manifest] = {
    "with the monitors": ALL_FEATURES,
    # Without the monitors the alerts that read `up` are left out; other thresholds and delays.
    "alone": {
        "monitoring": {
            "prometheusRule": {
                "enabled": True,
                "acceptanceThreshold": 0.35,
                "p99TargetSeconds": 2.5,
                "for": "1h",
            }
        }
    },
}


@pytest.mark.parametrize("variant", RULE_VARIANTS)
def test_the_prometheus_rules_pass_promtool(variant: str, tmp_path: Path) -> None:
    """The PrometheusRule's groups as Prometheus loads them: PromQL, durations, templates."""
    _check_rules(_promtool(), _prometheus_rules(tmp_path, RULE_VARIANTS[variant]))


# --------------------------------------------------------------------------------------------
# Dashboard queries and the metric names alerts and panels read.

PROMETHEUS_SERIES = frozenset({"up"})
"""Series Prometheus itself writes for every target."""
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}
"""The samples a Prometheus client library serves for a family of each type."""
GRAFANA_INTERVALS = re.compile(r"\$__(?:rate_interval|interval|range)\b")
GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
LABEL_VALUES = re.compile(r"^\s*label_values\((.+),\s*\w+\s*\)\s*$")

# Enough of PromQL's lexical structure to find the metric names of an expression: strings,
# label matchers, ranges and label lists go first; what is left that is a name, not a keyword
# and not called like a function is a metric.
_PROMQL_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_PROMQL_MATCHERS = re.compile(r"\{[^}]*\}")
_PROMQL_RANGE = re.compile(r"\[[^\]]*\]")
_PROMQL_LABEL_LIST = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_PROMQL_NAME = re.compile(r"(?<![\w:.])[a-zA-Z_:][\w:]*(?![\w:])(?!\s*\()")
_PROMQL_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    for pattern in (_PROMQL_STRING, _PROMQL_MATCHERS, _PROMQL_RANGE, _PROMQL_LABEL_LIST):
        expr = pattern.sub(" ", expr)
    return {n for n in _PROMQL_NAME.findall(expr) if n.lower() not in _PROMQL_KEYWORDS}


def exported_metric_names() -> set[str]:
    """Every sample name the gate, the operator and vLLM (as the simulator mirrors it) serve."""
    families: list[tuple[str, str]] = [
        (family.name, family.kind)
        for family in (*vllm_metrics.ENGINE_FAMILIES, *vllm_metrics.SPEC_DECODE_FAMILIES)
    ]
    gate = gate_metrics.GateMetrics(limit=lambda: 0.0, in_flight=lambda: 0.0, queued=lambda: 0.0)
    operator = [m for m in vars(operator_metrics).values() if isinstance(m, MetricWrapperBase)]
    assert operator, "specfleet.metrics defines no metric"
    for metric in [*gate.registry.collect(), *(m for c in operator for m in c.collect())]:
        families.append((metric.name, metric.type))
    served = {name + suffix for name, kind in families for suffix in SAMPLE_SUFFIXES[kind]}
    return served | PROMETHEUS_SERIES


def _dashboard(documents: list[Manifest]) -> Manifest:
    (config_map,) = of_kind(documents, "ConfigMap")
    dashboard: Manifest = json.loads(config_map["data"]["specfleet.json"])
    return dashboard


def _panels(panels: list[Manifest]) -> Iterator[Manifest]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a row's collapsed panels


def dashboard_queries(dashboard: Manifest) -> dict[str, str]:
    """Every PromQL query of the dashboard, Grafana's variables still in, by where it is."""
    queries = {
        f"panel {panel['title']!r} query {target['refId']}": target["expr"]
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
    }
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            match = LABEL_VALUES.match(text)
            if match:
                queries[f"variable ${variable['name']}"] = match.group(1)
    return queries


def substitute_variables(expr: str, dashboard: Manifest) -> str:
    """``expr`` as Grafana sends it: its intervals and every dashboard variable filled in."""
    defined = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in defined, f"${name} in {expr!r} is no variable of the dashboard"
        return ".*"  # what an All selection of a multi-value variable sends

    return GRAFANA_VARIABLE.sub(value, GRAFANA_INTERVALS.sub("5m", expr))


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    dashboard = _dashboard(render(ALL_FEATURES))
    panels = [p for p in _panels(dashboard["panels"]) if p["type"] != "row"]
    assert panels and all(p.get("targets") for p in panels), "a panel without a query"
    queries = dashboard_queries(dashboard)
    # promtool has no command that only parses a query; recording rules made of the queries
    # are parsed by `check rules`, which names the rule (and so the panel) that fails.
    records = [
        {"record": "dashboard:" + re.sub(r"\W+", "_", where).strip("_"),
         "expr": substitute_variables(expr, dashboard)}
        for where, expr in queries.items()
    ]  # fmt: skip
    rules_file = tmp_path / "dashboard.rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    _check_rules(_promtool(), rules_file)


def test_alerts_and_panels_read_only_metrics_that_are_exported() -> None:
    """A misspelt metric name is no error to Prometheus: the alert never fires, the panel is
    empty. So every name must be one the gate, the operator or vLLM serves (or ``up``)."""
    documents = render(ALL_FEATURES)
    (rule,) = of_kind(documents, "PrometheusRule")
    queries = {
        f"alert {r['alert']}": r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]
    } | dashboard_queries(_dashboard(documents))
    assert {w.split()[0] for w in queries} == {"alert", "panel", "variable"}, queries
    exported = exported_metric_names()
    problems = []
    for where, expr in queries.items():
        used = metric_names(expr)
        if not used:
            problems.append(f"{where}: found no metric name in {expr!r}")
        for name in sorted(used - exported):
            problems.append(f"{where} reads {name}, which nothing in the repository exports")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le) (rate(a_bucket{job=~"x|y"}[5m] offset 1h))', {"a_bucket"}),
        ('absent(up{job="a"} == 1) or vector(0)', {"up"}),
        ("x:y / on (ns) group_left (pod) z_total > bool 1e3", {"x:y", "z_total"}),
    ],
)
def test_metric_names_finds_every_metric_and_nothing_else(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_the_alerts_fire_when_they_should(tmp_path: Path) -> None:
    promtool = _promtool()
    rules_file = _prometheus_rules(tmp_path)
    # Two models for 40 minutes: one accepts half its draft tokens and answers slowly, the
    # other accepts 90% quickly; the gate of a third cannot be scraped.
    accepted, drafted = (
        "vllm:spec_decode_num_accepted_tokens_total",
        ("vllm:spec_decode_num_draft_tokens_total"),
    )
    bucket = "specfleet_gate_e2e_request_latency_seconds_bucket"
    series = [
        (f'{accepted}{{namespace="ml", model_name="slow"}}', "0+50x40"),
        (f'{drafted}{{namespace="ml", model_name="slow"}}', "0+100x40"),
        (f'{accepted}{{namespace="ml", model_name="fast"}}', "0+90x40"),
        (f'{drafted}{{namespace="ml", model_name="fast"}}', "0+100x40"),
        (f'{bucket}{{namespace="ml", inferencemodel="slow", le="5"}}', "0+10x40"),
        (f'{bucket}{{namespace="ml", inferencemodel="slow", le="30"}}', "0+100x40"),
        (f'{bucket}{{namespace="ml", inferencemodel="slow", le="+Inf"}}', "0+100x40"),
        (f'{bucket}{{namespace="ml", inferencemodel="fast", le="5"}}', "0+100x40"),
        (f'{bucket}{{namespace="ml", inferencemodel="fast", le="+Inf"}}', "0+100x40"),
        (f'up{{job="{NAMESPACE}/{FULLNAME}-gate", namespace="ml", pod="broken-0"}}', "0x40"),
        (f'up{{job="{FULLNAME}-metrics", namespace="{NAMESPACE}"}}', "1x40"),
    ]
    tests = {
        "rule_files": [str(rules_file)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "alert_rule_test": [
                    {
                        "eval_time": "30m",
                        "alertname": "SpecfleetSpeculativeAcceptanceLow",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "namespace": "ml",
                                    "model_name": "slow",
                                },
                                "exp_annotations": {
                                    "summary": "Speculative acceptance of slow is under 60%",
                                    "description": "Only 50% of the draft model's tokens are "
                                    "accepted in namespace ml: speculation costs more than it "
                                    "saves. Check the draft model (same tokenizer and family?) "
                                    "and numSpeculativeTokens; consider serving this model "
                                    "without a draft.",
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "30m",
                        "alertname": "SpecfleetP99OverTarget",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "namespace": "ml",
                                    "inferencemodel": "slow",
                                },
                                "exp_annotations": {
                                    "summary": "P99 latency of slow is over 8s",
                                    "description": "P99 end-to-end latency, queueing at the gate "
                                    "included, is 29.72s in namespace ml. Look at the batch limit "
                                    "and queue panels, and at the model's decision history "
                                    "(kubectl describe im).",
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "30m",
                        "alertname": "SpecfleetMetricsMissing",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "job": f"{NAMESPACE}/{FULLNAME}-gate",
                                    "namespace": "ml",
                                    "pod": "broken-0",
                                },
                                "exp_annotations": {
                                    "summary": "No metrics from broken-0 in ml",
                                    "description": "Prometheus cannot scrape a gate or vLLM "
                                    "server; without metrics the autoscaler holds the batch limit "
                                    "(MetricsAvailable=False). Check the pod and any "
                                    "NetworkPolicy between it and Prometheus.",
                                },
                            }
                        ],
                    },
                    {"eval_time": "30m", "alertname": "SpecfleetOperatorDown", "exp_alerts": []},
                    {
                        # The operator's series ends at 40m and goes stale 5m later.
                        "eval_time": "55m",
                        "alertname": "SpecfleetOperatorDown",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "critical"},
                                "exp_annotations": {
                                    "summary": "The specfleet operator is down",
                                    "description": f"No specfleet operator in namespace "
                                    f"{NAMESPACE} has answered a scrape for 5 minutes: models "
                                    "keep serving, but nothing is reconciled or autoscaled. "
                                    f"Check kubectl -n {NAMESPACE} get pods -l "
                                    f"app.kubernetes.io/instance={RELEASE}.",
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    }
    test_file = tmp_path / "tests.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
