"""The chart installed as a platform team installs it, on the real node: the operator runs as a
pod from its image, authenticated as the chart's ServiceAccount (so the API server enforces its
RBAC: a missing rule fails these tests), and the InferenceModels it serves run real pods: the
vllm-sim image takes the rendered `vllm serve` command line, the gate beside it reads the
batch limit from its ConfigMap volume as the kubelet updates it, and the model's Service
answers completions. Faults a platform team meets first (an image that cannot be pulled, GPUs
no node has, a vLLM that exits, an operator pod killed mid-rollout) each give a condition and
a Warning Event that name the cause, or converge. The closed loop on real pods is in
e2e/test_autoscale.py, takeovers between operator pods in e2e/test_ha.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from e2e import harness, node
from e2e.release import (
    ON_THE_REAL_NODE,
    TIMEOUT,
    Release,
    example_on_the_real_node,
    gate_limit,
    http,
    small_model,
)

MISSING_IMAGE = "127.0.0.1:9/specfleet/no-such-image:0.1.0"


@pytest.fixture
def installed(crds: harness.Cluster, namespace: str) -> Iterator[Release]:
    release = Release(crds, namespace)
    release.install()
    yield release
    release.uninstall()


def test_the_operator_pod_serves_the_example_on_real_pods(installed: Release) -> None:
    operator = installed.operator_pod()
    assert operator["spec"]["nodeName"] == node.NODE_NAME
    (container,) = operator["status"]["containerStatuses"]
    assert container["image"].endswith(harness.OPERATOR_IMAGE)
    assert container["ready"] and container["restartCount"] == 0

    installed.apply(example_on_the_real_node())
    installed.wait_condition("llama-70b", "Ready", "True", "ReplicasReady")
    (pod,) = installed.model_pods("llama-70b")
    assert pod["spec"]["nodeName"] == node.NODE_NAME
    statuses = {c["name"]: c for c in pod["status"]["containerStatuses"]}
    assert statuses["vllm"]["image"].endswith(harness.VLLM_SIM_IMAGE)
    assert all(c["ready"] and c["restartCount"] == 0 for c in statuses.values())
    # The stand-in took the rendered command line as it is: draft, K and FP8 included.
    (server,) = [c for c in pod["spec"]["containers"] if c["name"] == "vllm"]
    assert server["command"] == ["vllm", "serve"]
    speculative = json.loads(server["args"][server["args"].index("--speculative-config") + 1])
    assert speculative["model"] == "meta-llama/Llama-3.2-3B-Instruct"

    # A completion through the model's Service (kube-proxy) and its gate.
    service = installed.get("service", "llama-70b")
    url = f"http://{service['spec']['clusterIP']}/v1/completions"
    answer = http(url, {"model": "llama-70b", "prompt": "Hello", "max_tokens": 8})
    assert answer["model"] == "llama-70b" and answer["usage"]["completion_tokens"] == 8
    metrics = str(http(f"http://{pod['status']['podIP']}:8000/metrics"))
    assert "vllm:spec_decode_num_draft_tokens_total" in metrics

    # A new limit reaches the gate through its ConfigMap volume, as the kubelet updates it.
    assert gate_limit(pod) == 64
    installed.cluster.kubectl(
        "patch", "im", "llama-70b", "-n", installed.namespace, "--type=merge",
        "-p", json.dumps({"spec": {"batching": {"min": 100, "initial": 100}}}),
    )  # fmt: skip
    harness.wait_for(
        lambda: gate_limit(pod) == 100,
        timeout=TIMEOUT,
        what="the gate to read the limit 100 from its ConfigMap volume",
    )
    # The limit moved without a restart.
    (same,) = installed.model_pods("llama-70b")
    assert same["metadata"]["uid"] == pod["metadata"]["uid"]

    # Deleting the model stops its pod (and frees the node's GPUs for the next test).
    installed.cluster.kubectl("delete", "im", "llama-70b", "-n", installed.namespace)
    harness.wait_for(
        lambda: not installed.model_pods("llama-70b"),
        timeout=TIMEOUT,
        what="the model's pod to be gone",
    )

    # All along, the kubelet probed the operator's liveness and found it alive.
    later = installed.operator_pod()
    assert later["metadata"]["uid"] == operator["metadata"]["uid"]
    assert later["status"]["containerStatuses"][0]["restartCount"] == 0
    name = later["metadata"]["name"]
    assert not [e for e in installed.events(name) if e["reason"] == "Unhealthy"]


@pytest.mark.parametrize(
    ("changes", "reason", "words"),
    [
        pytest.param(
            # A registry on loopback that is not there: the pull fails at once, and no
            # traffic leaves this machine.
            {"image": MISSING_IMAGE},
            "ImagePullFailed",
            [MISSING_IMAGE, "container vllm"],
            id="missing-image",
        ),
        pytest.param(
            # Two replicas of all the node's GPUs: the second has nowhere to go.
            {
                "gpu": {"product": "H100-80GB", "count": int(node.GPUS), **ON_THE_REAL_NODE},
                "replicas": 2,
            },
            "Unschedulable",
            ["cannot be scheduled", "Insufficient nvidia.com/gpu"],
            id="too-many-gpus",
        ),
        pytest.param(
            {"extraArgs": ["--enforce-eager"]},
            "CrashLooping",
            ["container vllm exited with code 2", "--enforce-eager"],
            id="crash-loop",
        ),
    ],
)
def test_a_model_whose_pods_cannot_run_names_the_cause(
    installed: Release, changes: dict[str, Any], reason: str, words: list[str]
) -> None:
    installed.apply(small_model("broken", **changes))
    degraded = installed.wait_condition("broken", "Degraded", "True", reason)
    ready = installed.condition("broken", "Ready")
    assert (ready["status"], ready["reason"]) == ("False", reason)
    for word in words:
        assert word in degraded["message"]
    warnings = [e for e in installed.events("broken") if e["reason"] == reason]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
    assert all(word in warnings[0]["message"] for word in words)
    installed.cluster.kubectl("delete", "im", "broken", "-n", installed.namespace)


def test_an_operator_pod_killed_mid_rollout_is_replaced_and_its_successor_converges(
    installed: Release,
) -> None:
    installed.apply(example_on_the_real_node())
    harness.wait_for(
        lambda: installed.model_pods("llama-70b") or None,
        timeout=TIMEOUT,
        what="the rollout to start a pod",
    )
    killed = installed.operator_pod()
    # No grace: the process gets SIGKILL mid-rollout, as when its node fails.
    installed.cluster.kubectl(
        "delete", "pod", killed["metadata"]["name"], "-n", installed.namespace,
        "--grace-period=0", "--force", "--wait=false",
    )  # fmt: skip
    installed.cluster.kubectl(
        "patch", "im", "llama-70b", "-n", installed.namespace, "--type=merge",
        "-p", json.dumps({"spec": {"batching": {"min": 100, "initial": 100}}}),
    )  # fmt: skip
    harness.wait_for(
        lambda: (
            [
                p
                for p in installed.operator_pods()
                if p["metadata"]["uid"] != killed["metadata"]["uid"]
                and all(
                    c["ready"] for c in p["status"].get("containerStatuses", [{"ready": False}])
                )
            ]
            or None
        ),
        timeout=TIMEOUT,
        what="the chart's Deployment to replace the operator pod",
    )
    ready = installed.wait_condition("llama-70b", "Ready", "True", "ReplicasReady")
    assert ready["observedGeneration"] == 2
    # The change made while no operator ran reached the pod; one of each child, no duplicate.
    (pod,) = [p for p in installed.model_pods("llama-70b") if p["status"].get("podIP")]
    harness.wait_for(
        lambda: gate_limit(pod) == 100,
        timeout=TIMEOUT,
        what="the gate to read the limit the successor wrote",
    )
    for kind in ("deployment", "service", "configmap", "poddisruptionbudget"):
        items = installed.get(kind, "-l", "specfleet.dev/inferencemodel=llama-70b")["items"]
        assert len(items) == 1, (kind, [i["metadata"]["name"] for i in items])
