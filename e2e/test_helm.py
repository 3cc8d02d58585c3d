"""The Helm chart on the local control plane: it installs, upgrades to changed values and
uninstalls, its operator pods running on the real node; and the operator pod, authenticated as
the chart's ServiceAccount, reconciles the 70B example to Ready — so the chart's RBAC is enough,
watching one namespace or all — while that identity cannot read a Secret.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from e2e import harness
from e2e.operator_process import service_account_kubeconfig
from e2e.release import CHART, EXAMPLE, PLACED_ON_THE_REAL_NODE, Release

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
                 *PLACED_ON_THE_REAL_NODE, *(f"--set={v}" for v in values))  # fmt: skip


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
    cluster, release = crds, Release(crds, namespace)
    if mode == "cluster-wide":
        # Earlier tests' namespaces may still be going: a write into one is refused with a
        # 403 (which the operator lets pass) that would blur the check for missing rules.
        wait_until_no_namespace_terminates(cluster)
    try:
        release.install(cluster_wide=mode == "cluster-wide")
        kubeconfig = service_account_kubeconfig(
            cluster, namespace, release.release, tmp_path / "kubeconfig"
        )
        identity = f"system:serviceaccount:{namespace}:{release.release}"
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

        # The example's pods go to the kwok pools; the operator pod reconciles it from the
        # real node.
        cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
        release.wait_condition("llama-70b", "Ready", "True", "ReplicasReady")
        # kopf degrades quietly without some permissions (a warning, a retry): none may show.
        log = release.operator_log(-1).lower()
        assert "forbidden" not in log and '" 403 ' not in log, release.operator_log(80)
        assert "RolloutStarted" in {e["reason"] for e in release.events("llama-70b")}
    finally:
        release.uninstall()


def ready(cluster: harness.Cluster, namespace: str, name: str) -> bool:
    status = cluster.kubectl_json("get", "im", name, "-n", namespace).get("status", {})
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
