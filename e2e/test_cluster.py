"""The local control plane itself: versions, node pools, scheduling onto GPU pools, Prometheus.

If these fail, every other e2e test would fail for reasons that have nothing to do with
specfleet, so they come first.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from e2e import harness
from e2e.node import BRIDGE

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}

# What each pool must look like, written out rather than read from nodepools.yaml, so that
# editing the data file in a way that breaks these expectations fails here.
EXPECTED_POOLS: dict[str, dict[str, Any]] = {
    "h100-a": {"product": H100, "memory": "81559", "gpus": "8", "taints": [GPU_TAINT]},
    "h100-b": {"product": H100, "memory": "81559", "gpus": "8", "taints": [GPU_TAINT]},
    "a100": {"product": A100, "memory": "81920", "gpus": "8", "taints": [GPU_TAINT]},
    "cpu": {"product": None, "memory": None, "gpus": None, "taints": []},
}


def own_taints(node: dict[str, Any]) -> list[dict[str, str]]:
    """Taints from the pool definition, without the transient node.kubernetes.io/* ones."""
    taints = node["spec"].get("taints") or []
    return [
        {"key": t["key"], "value": t.get("value", ""), "effect": t["effect"]}
        for t in taints
        if not t["key"].startswith("node.kubernetes.io/")
    ]


def gpu_pod(name: str, namespace: str, *, tolerate_gpu_taint: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "nodeSelector": {"nvidia.com/gpu.product": H100},
        "containers": [
            {
                "name": "server",
                "image": "specfleet/fake-server:0",  # kwok runs no containers; never pulled
                "resources": {
                    "limits": {"nvidia.com/gpu": "2"},
                    "requests": {"nvidia.com/gpu": "2"},
                },
            }
        ],
    }
    if tolerate_gpu_taint:
        spec["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    metadata = {"name": name, "namespace": namespace}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def get_pod(cluster: harness.Cluster, namespace: str, name: str) -> dict[str, Any]:
    pod: dict[str, Any] = cluster.kubectl_json("get", "pod", name, "-n", namespace)
    return pod


def condition(pod: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            found: dict[str, Any] = cond
            return found
    return None


def test_api_server_reports_the_pinned_kubernetes_version(cluster: harness.Cluster) -> None:
    pinned = harness.read_versions()["KUBERNETES_VERSION"]
    version = cluster.get_raw("/version")
    assert pinned == "v1.36.3"
    assert version["gitVersion"] == pinned
    assert (version["major"], version["minor"]) == ("1", "36")


def test_kubectl_is_the_pinned_version(cluster: harness.Cluster) -> None:
    client = json.loads(cluster.kubectl("version", "--client", "-o", "json"))["clientVersion"]
    assert client["gitVersion"] == harness.read_versions()["KUBERNETES_VERSION"]


@pytest.mark.parametrize("pool", sorted(EXPECTED_POOLS))
def test_every_pool_has_ready_nodes_with_gfd_labels_taints_and_gpus(
    cluster: harness.Cluster, pool: str
) -> None:
    expected = EXPECTED_POOLS[pool]
    nodes = cluster.kubectl_json("get", "nodes", "-l", f"{harness.NODE_POOL_LABEL}={pool}")["items"]
    declared = {p.name: p for p in harness.load_node_pools()}[pool]

    assert sorted(n["metadata"]["name"] for n in nodes) == declared.node_names()
    assert len(nodes) >= 1
    for node in nodes:
        labels = node["metadata"]["labels"]
        status = node["status"]
        assert node["metadata"]["annotations"].get("kwok.x-k8s.io/node") == "fake"
        assert harness.node_is_ready(node), f"{node['metadata']['name']} is not Ready"
        assert own_taints(node) == expected["taints"]
        assert labels.get("nvidia.com/gpu.product") == expected["product"]
        assert labels.get("nvidia.com/gpu.memory") == expected["memory"]
        assert labels.get("nvidia.com/gpu.count") == expected["gpus"]
        assert status["capacity"].get("nvidia.com/gpu") == expected["gpus"]
        assert status["allocatable"].get("nvidia.com/gpu") == expected["gpus"]
        if expected["gpus"]:
            assert labels["nvidia.com/gpu.present"] == "true"
        # kwok's default (1k cpus) would mean our capacity did not stick.
        assert status["allocatable"]["cpu"] == declared.resources["cpu"]


def test_up_restores_a_node_capacity_that_drifted(cluster: harness.Cluster) -> None:
    # Status is only settable through the status subresource once a Node exists; this is the
    # path `e2e/cluster up` takes on a reused cluster whose nodes were changed.
    drifted = json.dumps({"status": {"capacity": {"nvidia.com/gpu": "1"}}})
    cluster.kubectl(
        "patch", "node", "h100-b-0", "--subresource=status", "--type=merge", "-p", drifted
    )
    assert (
        cluster.kubectl_json("get", "node", "h100-b-0")["status"]["capacity"]["nvidia.com/gpu"]
        == "1"
    )

    harness.ensure_node_pools(cluster, harness.load_node_pools())

    status = cluster.kubectl_json("get", "node", "h100-b-0")["status"]
    assert status["capacity"]["nvidia.com/gpu"] == "8"
    assert status["allocatable"]["nvidia.com/gpu"] == "8"


def test_gpu_pod_with_toleration_runs_on_an_h100_node(
    cluster: harness.Cluster, namespace: str
) -> None:
    cluster.apply([gpu_pod("tolerates", namespace, tolerate_gpu_taint=True)])

    def ready() -> dict[str, Any] | None:
        pod = get_pod(cluster, namespace, "tolerates")
        ready_condition = condition(pod, "Ready")
        return pod if ready_condition and ready_condition["status"] == "True" else None

    pod = harness.wait_for(
        ready,
        timeout=60,
        what="the pod to become Ready",
        describe=lambda: json.dumps(get_pod(cluster, namespace, "tolerates").get("status")),
    )
    assert pod["status"]["phase"] == "Running"
    node = cluster.kubectl_json("get", "node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == H100
    assert node["metadata"]["labels"][harness.NODE_POOL_LABEL] in ("h100-a", "h100-b")


def test_gpu_pod_without_toleration_stays_pending_because_of_the_taint(
    cluster: harness.Cluster, namespace: str
) -> None:
    cluster.apply([gpu_pod("intolerant", namespace, tolerate_gpu_taint=False)])

    def unschedulable() -> dict[str, Any] | None:
        scheduled = condition(get_pod(cluster, namespace, "intolerant"), "PodScheduled")
        return scheduled if scheduled and scheduled.get("reason") == "Unschedulable" else None

    scheduled = harness.wait_for(
        unschedulable, timeout=60, what="the scheduler to give up on the pod"
    )
    pod = get_pod(cluster, namespace, "intolerant")
    assert scheduled["status"] == "False"
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")
    # Since 1.36 the scheduler no longer names the taint in the message ("N node(s) had
    # untolerated taint(s)"), so tie it to ours by count: exactly the nodes carrying the
    # nvidia.com/gpu taint (H100 and A100 pools) were refused for it.
    refused = re.search(r"(\d+) node\(s\) had untolerated taint", scheduled["message"])
    assert refused, scheduled["message"]
    gpu_tainted = [
        n for n in cluster.nodes() if any(t["key"] == "nvidia.com/gpu" for t in own_taints(n))
    ]
    assert int(refused.group(1)) == len(gpu_tainted) > 0


def test_helm_is_the_pinned_version_and_reaches_the_cluster(cluster: harness.Cluster) -> None:
    assert cluster.helm("version", "--short").startswith(harness.read_versions()["HELM_VERSION"])
    assert json.loads(cluster.helm("list", "--all-namespaces", "--output", "json")) == []


def test_kwokctl_ran_only_the_local_binaries(cluster: harness.Cluster) -> None:
    # kwokctl links each binary it runs into the cluster's bin/; anything it downloads goes to
    # its cache directory first. So: only links to our builds, and no download cache at all.
    linked = {p.name: p.resolve() for p in (cluster.workdir / "bin").iterdir()}
    assert set(linked) == {
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok-controller",
    }
    assert all(
        target.is_relative_to(harness.cache_dir().resolve() / "bin") for target in linked.values()
    )
    assert not (harness.kwok_workdir() / "cache").exists()


def test_control_plane_is_reachable_from_this_host_and_its_node_only(
    cluster: harness.Cluster,
) -> None:
    processes = cluster.processes()
    assert {p.component for p in processes} >= {
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok-controller",
    }
    port = harness.apiserver_port(cluster)
    for proc in processes:
        assert proc.alive, f"{proc.component} (pid {proc.pid}) is not running"
        assert proc.listening, f"{proc.component} listens on nothing"
        exposed = [a for a in proc.listening if not harness.is_loopback(a)]
        if proc.component == "kube-apiserver":
            # The real node's pods dial it at the bridge's address, so it takes every address;
            # a firewall chain keeps that port to loopback and the bridge.
            assert {a.rsplit(":", 1)[1] for a in exposed} <= {str(port)}, exposed
        else:
            assert not exposed, f"{proc.component} listens beyond loopback: {exposed}"
    for command in harness.IPTABLES:
        assert _admits_only_loopback_and_bridge(command, port), f"{command} leaves {port} open"


def _admits_only_loopback_and_bridge(command: str, port: int) -> bool:
    """Whether INPUT sends ``port`` to a chain that returns for loopback and the real node's
    bridge and drops the rest, with no ACCEPT before that jump."""
    chain = f"{harness.APISERVER_CHAIN}-{port}"
    listing = harness.run([command, "-w", "-S", "INPUT"]).stdout.splitlines()
    jump = f"-A INPUT -p tcp -m tcp --dport {port} -j {chain}"
    if jump not in listing:
        return False
    before = listing[: listing.index(jump)]
    rules = harness.run([command, "-w", "-S", chain]).stdout.splitlines()[1:]
    return not any(line.endswith("-j ACCEPT") for line in before) and rules == [
        f"-A {chain} -i lo -j RETURN",
        f"-A {chain} -i {BRIDGE} -j RETURN",
        f"-A {chain} -j DROP",
    ]


def test_prometheus_scrapes_a_target_added_after_start(prometheus: harness.Prometheus) -> None:
    target = prometheus.url.removeprefix("http://")
    assert harness.is_loopback(target)
    prometheus.add_targets("self", [target], labels={"suite": "e2e"})

    up = harness.wait_for(
        lambda: prometheus.query('up{job="self",suite="e2e"} == 1') or None,
        timeout=60,
        what="Prometheus to scrape the target added by reload",
        describe=lambda: json.dumps(prometheus.active_targets()),
    )
    assert up[0]["metric"]["instance"] == target
