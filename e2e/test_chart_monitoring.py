"""The chart's monitoring objects against the real Prometheus Operator CRDs: with every
monitoring option on, the API server accepts each ServiceMonitor, PodMonitor and PrometheusRule
under strict field validation, `helm install` creates them (and the dashboard ConfigMap), and
`helm uninstall` removes them.

The CRDs are the ones the pinned Prometheus Operator release ships (e2e/versions.env), which
e2e/build copies into the cache. Helm itself sends no field validation directive, so the API
server only warns about an unknown field and drops it: the chart's objects are therefore also
created with `kubectl create --dry-run=server --validate=strict`, which refuses them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import harness
from e2e.release import CHART
from e2e.test_helm import release_name

Manifest = dict[str, Any]

MONITORING_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")
# Every monitoring option on, with the extra labels a Prometheus' selectors would look for.
MONITORING: Manifest = {
    "monitoring": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "podMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
        "grafanaDashboard": {"enabled": True},
    }
}


def render(
    cluster: harness.Cluster, release: str, namespace: str, values_file: Path
) -> list[Manifest]:
    out = cluster.helm(
        "template", release, str(CHART), "--namespace", namespace, f"--values={values_file}"
    )
    return [d for d in yaml.safe_load_all(out) if d]


def create_strictly(cluster: harness.Cluster, namespace: str, objects: list[Manifest]) -> str:
    """Create ``objects`` as a server-side dry run with strict field validation; what the API
    server answers, its refusals included (nothing is stored either way)."""
    result = harness.run(
        [cluster.bin_dir / "kubectl", f"--kubeconfig={cluster.kubeconfig}", "create",
         "--dry-run=server", "--validate=strict", "--namespace", namespace, "--output=name",
         "--filename=-"],
        env=cluster.env(),
        input=yaml.safe_dump_all(objects),
        check=False,
    )  # fmt: skip
    return result.stdout + result.stderr


def monitoring_objects(cluster: harness.Cluster, namespace: str, release: str) -> set[str]:
    out = cluster.kubectl(
        "get",
        "servicemonitors,podmonitors,prometheusrules,configmaps",
        "--namespace",
        namespace,
        f"--selector=app.kubernetes.io/instance={release}",
        "--output=name",
    )
    return set(out.split())


def values_file(tmp_path: Path, values: Manifest) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize("scope", ["every namespace", "watched namespaces"])
def test_the_monitoring_objects_pass_strict_validation(
    monitoring_crds: harness.Cluster, namespace: str, tmp_path: Path, scope: str
) -> None:
    # Watched namespaces turn the PodMonitors' namespaceSelector from `any` into `matchNames`.
    values = MONITORING | ({"watchNamespaces": [namespace]} if scope != "every namespace" else {})
    cluster, release = monitoring_crds, release_name(namespace)
    objects = render(cluster, release, namespace, values_file(tmp_path, values))
    monitors = [o for o in objects if o["kind"] in MONITORING_KINDS]
    assert sorted(o["kind"] for o in monitors) == [
        "PodMonitor", "PodMonitor", "PodMonitor", "PrometheusRule", "ServiceMonitor"
    ]  # fmt: skip
    # The whole chart, so the monitors are checked as they are installed, beside their Service.
    answer = create_strictly(cluster, namespace, objects)
    for monitor in monitors:
        name = f"{monitor['kind'].lower()}.monitoring.coreos.com/{monitor['metadata']['name']}"
        assert name in answer.split(), answer
    assert "error" not in answer.lower() and "warning" not in answer.lower(), answer


def test_a_misspelt_field_is_refused(
    monitoring_crds: harness.Cluster, namespace: str, tmp_path: Path
) -> None:
    """The check above can fail: these CRDs have structural schemas that keep no unknown field."""
    cluster, release = monitoring_crds, release_name(namespace)
    objects = render(cluster, release, namespace, values_file(tmp_path, MONITORING))
    by_kind = {o["kind"]: o for o in objects if o["kind"] in MONITORING_KINDS}
    by_kind["ServiceMonitor"]["spec"]["endpoints"][0]["intervall"] = "30s"
    by_kind["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["relabellings"] = []
    by_kind["PrometheusRule"]["spec"]["groups"][0]["rules"][0]["expression"] = "up"
    answer = create_strictly(cluster, namespace, list(by_kind.values()))
    for field in (
        'unknown field "spec.endpoints[0].intervall"',
        'unknown field "spec.podMetricsEndpoints[0].relabellings"',
        'unknown field "spec.groups[0].rules[0].expression"',
    ):
        assert field in answer, answer


def test_install_creates_the_monitoring_objects_and_uninstall_removes_them(
    monitoring_crds: harness.Cluster, namespace: str, tmp_path: Path
) -> None:
    cluster, release = monitoring_crds, release_name(namespace)
    installed = harness.run(
        [cluster.bin_dir / "helm", f"--kubeconfig={cluster.kubeconfig}", "install", release,
         str(CHART), "--namespace", namespace, "--wait", "--timeout=120s",
         f"--values={values_file(tmp_path, MONITORING)}"],
        env=cluster.env(),
        timeout=180,
    )  # fmt: skip
    # client-go prints the API server's warnings (an unknown field it dropped, a deprecated
    # API) as "Warning: ..." on stderr; Helm's own are "WARNING: ...".
    assert "Warning:" not in installed.stderr, installed.stderr
    try:
        group = "monitoring.coreos.com"
        assert monitoring_objects(cluster, namespace, release) == {
            f"servicemonitor.{group}/{release}",
            f"podmonitor.{group}/{release}-gate",
            f"podmonitor.{group}/{release}-vllm",
            f"podmonitor.{group}/{release}-router",
            f"prometheusrule.{group}/{release}",
            f"configmap/{release}-dashboard",
        }
        rule = cluster.kubectl_json("get", "prometheusrule", release, "--namespace", namespace)
        alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
        assert alerts == {
            "SpecfleetSpeculativeAcceptanceLow",
            "SpecfleetP99OverTarget",
            "SpecfleetMetricsMissing",
            "SpecfleetOperatorDown",
        }
    finally:
        cluster.helm("uninstall", release, "--namespace", namespace, "--wait")
    assert monitoring_objects(cluster, namespace, release) == set()
