"""The Helm chart on the local control plane: it installs, upgrades to changed values and
uninstalls; and the operator, run with the chart's arguments and settings and authenticated as
the chart's ServiceAccount, reconciles the 70B example to Ready — so the chart's RBAC is
enough — while that identity cannot read a Secret.

Pods on kwok nodes do not execute, so the installed Deployment never runs the operator; the
test runs `specfleet run` beside the cluster instead, with a token of the chart's
ServiceAccount, the arguments and the SPECFLEET_* variables of the installed Deployment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from e2e import harness
from e2e.operator_process import Operator, service_account_kubeconfig
from tests.corpus import ROOT

CHART = ROOT / "charts" / "specfleet"
EXAMPLE = ROOT / "examples" / "llama-70b-speculative.yaml"
TIMEOUT = 90


def release_name(namespace: str) -> str:
    """Unique per test (the ClusterRole is named after it), and contains the chart's name so
    that objects are named after the release alone."""
    return f"specfleet-{namespace[-5:]}"


def helm_install(
    cluster: harness.Cluster, release: str, namespace: str, *values: str, upgrade: bool = False
) -> None:
    verb = ("upgrade", "--reuse-values") if upgrade else ("install",)
    cluster.helm(*verb, release, str(CHART), "--namespace", namespace, "--wait", "--timeout=120s",
                 *(f"--set={v}" for v in values))  # fmt: skip


def deployment(cluster: harness.Cluster, namespace: str, release: str) -> Any:
    return cluster.kubectl_json("get", "deployment", release, "-n", namespace)


def operator_container(cluster: harness.Cluster, namespace: str, release: str) -> Any:
    (container,) = deployment(cluster, namespace, release)["spec"]["template"]["spec"]["containers"]
    return container


def exists(cluster: harness.Cluster, *args: str) -> bool:
    out = cluster.kubectl("get", *args, "--ignore-not-found", "-o", "name")
    return bool(out.strip())


def test_install_upgrade_and_uninstall(crds: harness.Cluster, namespace: str) -> None:
    cluster, release = crds, release_name(namespace)
    helm_install(cluster, release, namespace)
    live = deployment(cluster, namespace, release)
    assert live["spec"]["replicas"] == 1
    assert live["status"]["readyReplicas"] == 1
    assert exists(cluster, "serviceaccount", release, "-n", namespace)
    assert exists(cluster, "clusterrole", release) and exists(
        cluster, "clusterrolebinding", release
    )
    env = {
        e["name"]: e.get("value") for e in operator_container(cluster, namespace, release)["env"]
    }
    assert env["SPECFLEET_RESYNC_SECONDS"] == "30"

    helm_install(
        cluster,
        release,
        namespace,
        "replicaCount=2",
        "ha.enabled=true",
        "settings.resyncSeconds=7",
        "networkPolicy.enabled=true",
        f"networkPolicy.modelNamespaces={{{namespace}}}",
        upgrade=True,
    )
    live = deployment(cluster, namespace, release)
    assert live["spec"]["replicas"] == 2 and live["status"]["readyReplicas"] == 2
    container = operator_container(cluster, namespace, release)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SPECFLEET_RESYNC_SECONDS"] == "7"
    assert f"--peering={release}" in container["args"]
    assert exists(cluster, "clusterkopfpeering", release)
    assert exists(cluster, "networkpolicy", f"{release}-model-servers", "-n", namespace)
    history = json.loads(cluster.helm("history", release, "-n", namespace, "-o", "json"))
    assert [h["revision"] for h in history] == [1, 2]

    cluster.helm("uninstall", release, "--namespace", namespace, "--wait")
    assert not exists(cluster, "deployment", release, "-n", namespace)
    assert not exists(cluster, "serviceaccount", release, "-n", namespace)
    assert not exists(cluster, "clusterrole", release)
    assert not exists(cluster, "clusterkopfpeering", release)
    # Helm leaves CRDs (and so every InferenceModel) in place on uninstall.
    assert exists(cluster, "crd", "inferencemodels.specfleet.dev")


def chart_operator(
    cluster: harness.Cluster, namespace: str, release: str, log_path: Path, kubeconfig: Path
) -> Operator:
    """`specfleet run` as the installed Deployment would run it, authenticated as its
    ServiceAccount; only the ports differ (loopback, free ones)."""
    container = operator_container(cluster, namespace, release)
    args = [a for a in container["args"] if not a.startswith(("--metrics-port", "--health-port"))]
    env = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("SPECFLEET_")}
    env["SPECFLEET_RESYNC_SECONDS"] = "2"  # a short resync keeps the test short
    env["KUBECONFIG"] = str(kubeconfig)
    return Operator(cluster, namespace, log_path, args=args, env=env)


def wait_until_no_namespace_terminates(cluster: harness.Cluster) -> None:
    def terminating() -> list[str]:
        namespaces = cluster.kubectl_json("get", "namespaces")["items"]
        return [n["metadata"]["name"] for n in namespaces if n["status"]["phase"] != "Active"]

    harness.wait_for(
        lambda: not terminating(),
        timeout=TIMEOUT,
        what="earlier tests' namespaces to be deleted",
        describe=lambda: ", ".join(terminating()),
    )


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_the_charts_identity_reconciles_the_example_and_reads_no_secret(
    crds: harness.Cluster, namespace: str, tmp_path: Path, mode: str
) -> None:
    cluster, release = crds, release_name(namespace)
    values = [f"watchNamespaces={{{namespace}}}"] if mode == "namespaced" else []
    helm_install(cluster, release, namespace, *values)
    try:
        kubeconfig = service_account_kubeconfig(
            cluster, namespace, release, tmp_path / "kubeconfig"
        )
        identity = f"system:serviceaccount:{namespace}:{release}"
        for verb in ("get", "list", "watch"):
            answer = cluster.kubectl(
                "auth", "can-i", verb, "secrets", "-n", namespace, "--as", identity, check=False
            )
            assert answer.strip() == "no", f"{identity} can {verb} secrets"
        cluster.kubectl(
            "create", "secret", "generic", "hf-token", "-n", namespace, "--from-literal=token=x"
        )
        denied = harness.run(
            [cluster.bin_dir / "kubectl", f"--kubeconfig={kubeconfig}", "get", "secret",
             "hf-token", "-n", namespace],
            check=False,
        )  # fmt: skip
        assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr

        if mode == "cluster-wide":
            # Earlier tests' namespaces may still be going: a write into one is refused with a
            # 403 (which the operator lets pass) that would blur the check for missing rules.
            wait_until_no_namespace_terminates(cluster)
        operator = chart_operator(
            cluster, namespace, release, tmp_path / "operator.log", kubeconfig
        )
        operator.start()
        try:
            cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
            harness.wait_for(
                lambda: ready(cluster, namespace, "llama-70b"),
                timeout=TIMEOUT,
                what="the example to turn Ready under the chart's ServiceAccount",
                describe=operator.log_tail,
            )
            # kopf degrades quietly without some permissions (a warning, a retry): none may show.
            log = operator.log_path.read_text().lower()
            assert "forbidden" not in log and '" 403 ' not in log, operator.log_tail(80)
            events = cluster.kubectl_json(
                "get",
                "events",
                "-n",
                namespace,
                "--field-selector",
                "involvedObject.name=llama-70b",
            )
            assert "RolloutStarted" in {e["reason"] for e in events["items"]}
        finally:
            operator.stop()
    finally:
        cluster.helm("uninstall", release, "--namespace", namespace, "--wait")


def ready(cluster: harness.Cluster, namespace: str, name: str) -> bool:
    status = cluster.kubectl_json("get", "im", name, "-n", namespace).get("status", {})
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
