"""The chart installed as a platform team installs it, on the real node: the operator runs as a
pod from its image, authenticated as the chart's ServiceAccount (so the API server enforces its
RBAC: a missing rule fails these tests), and the InferenceModels it serves run real pods: the
vllm-sim image takes the rendered `vllm serve` command line, the gate beside it reads the
batch limit from its ConfigMap volume as the kubelet updates it, and the model's Service
answers completions. Faults a platform team meets first (an image that cannot be pulled, GPUs
no node has, a vLLM that exits) each give a condition and a Warning Event that name the cause.
The closed loop runs here too (a Prometheus that finds the pods through the API server by the
chart's PodMonitors, read by the operator pod), as do a takeover between two operator pods and
an operator pod killed mid-rollout.
"""

from __future__ import annotations

import copy
import functools
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from e2e import harness, node
from e2e.operator_process import metric_total
from e2e.traffic import Load
from tests.corpus import ROOT

CHART = ROOT / "charts" / "specfleet"
EXAMPLE = ROOT / "examples" / "llama-70b-speculative.yaml"
TIMEOUT = 180
MISSING_IMAGE = "127.0.0.1:9/specfleet/no-such-image:0.1.0"
ON_THE_REAL_NODE = harness.ON_THE_REAL_NODE


def example_on_the_real_node(**changes: Any) -> dict[str, Any]:
    """The 70B example (draft, FP8, 4 x H100), one replica on the real node, no Secret."""
    model: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    spec = model["spec"]
    del spec["model"]["credentials"]
    spec["replicas"] = 1
    spec["gpu"].update(copy.deepcopy(ON_THE_REAL_NODE))
    spec.update(changes)
    return model


def small_model(name: str, **changes: Any) -> dict[str, Any]:
    """An 8B model on one of the real node's GPUs."""
    spec: dict[str, Any] = {
        "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
        "gpu": {"product": "H100-80GB", "count": 1, **copy.deepcopy(ON_THE_REAL_NODE)},
        "batching": {"max": 64},
        **changes,
    }
    return {
        "apiVersion": "specfleet.dev/v1alpha1",
        "kind": "InferenceModel",
        "metadata": {"name": name},
        "spec": spec,
    }


class Installed:
    """A release of the chart in one namespace, watching it, with its operator pod Running."""

    def __init__(self, cluster: harness.Cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.release = f"specfleet-{namespace[-5:]}"

    def install(self, *values: str) -> None:
        """``helm install``, watching the namespace, placed on the real node; ``values`` are
        more ``--set`` options."""
        placement = json.dumps(ON_THE_REAL_NODE["tolerations"])
        selector = json.dumps(ON_THE_REAL_NODE["nodeSelector"])
        self.cluster.helm(
            "install", self.release, str(CHART), "--namespace", self.namespace,
            f"--set=watchNamespaces={{{self.namespace}}}",
            f"--set=settings.vllmImage={harness.VLLM_SIM_IMAGE}",
            "--set=settings.prometheusUrl=",
            "--set=settings.resyncSeconds=2",
            "--set=verbose=true",
            f"--set-json=tolerations={placement}",
            f"--set-json=nodeSelector={selector}",
            *values,
            "--wait", "--timeout=180s",
        )  # fmt: skip

    def uninstall(self) -> None:
        self.cluster.helm("uninstall", self.release, "--namespace", self.namespace, "--wait")

    def operator_pods(self) -> list[dict[str, Any]]:
        """The release's operator pods that are not being deleted."""
        pods = self.get("pods", "-l", f"app.kubernetes.io/instance={self.release}")["items"]
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def operator_pod(self) -> dict[str, Any]:
        (pod,) = self.operator_pods()
        return pod

    def get(self, *args: str) -> Any:
        return self.cluster.kubectl_json("get", "-n", self.namespace, *args)

    def apply(self, manifest: dict[str, Any]) -> None:
        self.cluster.kubectl("apply", "-n", self.namespace, "-f", "-", input=json.dumps(manifest))

    def condition(self, name: str, type: str) -> dict[str, Any]:
        status = self.get("im", name).get("status", {})
        found: dict[str, Any] = {c["type"]: c for c in status.get("conditions", [])}.get(type, {})
        return found

    def wait_condition(self, name: str, type: str, status: str, reason: str) -> dict[str, Any]:
        def holds() -> dict[str, Any] | None:
            found = self.condition(name, type)
            return found if (found.get("status"), found.get("reason")) == (status, reason) else None

        return harness.wait_for(
            holds,
            timeout=TIMEOUT,
            what=f"InferenceModel {name} {type}={status} ({reason})",
            describe=lambda: (
                json.dumps(self.get("im", name).get("status"), indent=1)
                + "\n"
                + self.operator_log()
            ),
        )

    def events(self, name: str) -> list[dict[str, Any]]:
        found = self.get("events", "--field-selector", f"involvedObject.name={name}")
        items: list[dict[str, Any]] = found["items"]
        return items

    def model_pods(self, name: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get(
            "pods", "-l", f"specfleet.dev/inferencemodel={name}"
        )["items"]
        return items

    def operator_log(self) -> str:
        try:
            pod = self.operator_pod()["metadata"]["name"]
            return self.cluster.kubectl("logs", "-n", self.namespace, pod, "--tail=60")
        except (harness.HarnessError, ValueError) as exc:
            return f"(no operator log: {exc})"


@pytest.fixture
def installed(crds: harness.Cluster, namespace: str) -> Iterator[Installed]:
    release = Installed(crds, namespace)
    release.install()
    yield release
    release.uninstall()


def _http(url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        text = reply.read().decode()
    return json.loads(text) if text.startswith("{") else text


def _gate_limit(pod_ip: str) -> float | None:
    metrics = _http(f"http://{pod_ip}:8080/metrics")
    for line in str(metrics).splitlines():
        if line.startswith("specfleet_gate_batch_limit "):
            return float(line.split()[1])
    return None


def test_the_operator_pod_serves_the_example_on_real_pods(installed: Installed) -> None:
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
    answer = _http(url, {"model": "llama-70b", "prompt": "Hello", "max_tokens": 8})
    assert answer["model"] == "llama-70b" and answer["usage"]["completion_tokens"] == 8
    metrics = str(_http(f"http://{pod['status']['podIP']}:8000/metrics"))
    assert "vllm:spec_decode_num_draft_tokens_total" in metrics

    # A new limit reaches the gate through its ConfigMap volume, as the kubelet updates it.
    assert _gate_limit(pod["status"]["podIP"]) == 64
    installed.cluster.kubectl(
        "patch", "im", "llama-70b", "-n", installed.namespace, "--type=merge",
        "-p", json.dumps({"spec": {"batching": {"min": 100, "initial": 100}}}),
    )  # fmt: skip
    harness.wait_for(
        lambda: _gate_limit(pod["status"]["podIP"]) == 100,
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
    installed: Installed, changes: dict[str, Any], reason: str, words: list[str]
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


def _series(prometheus: harness.Prometheus, metric: str, namespace: str, name: str) -> float | None:
    """The value of ``metric`` for model ``name`` in Prometheus, by the labels the chart's
    PodMonitors give every series; None while it has none."""
    found = prometheus.query(f'{metric}{{namespace="{namespace}",inferencemodel="{name}"}}')
    return float(found[0]["value"][1]) if found else None


def test_the_closed_loop_on_real_pods(monitoring_crds: harness.Cluster, namespace: str) -> None:
    """Prometheus finds the model's pod through the API server by the chart's PodMonitors and
    scrapes its gate and vLLM; the operator pod reads it, decides, writes the ConfigMap; the
    kubelet updates the gate's volume and the gate admits the new limit."""
    cluster, name, initial = monitoring_crds, "looped", 16
    with harness.start_prometheus(host=node.GATEWAY) as prometheus:
        release = Installed(cluster, namespace)
        release.install(
            f"--set=settings.prometheusUrl={prometheus.url}",
            "--set=monitoring.podMonitor.enabled=true",
            # Scrapes a few times a window (15 s), as Prometheus must for rate().
            "--set=monitoring.podMonitor.interval=2s",
        )
        load = Load()
        try:
            for monitor in release.get("podmonitors")["items"]:
                for config in harness.pod_monitor_scrape_configs(monitor, cluster.kubeconfig):
                    prometheus.add_scrape_config(config)
            autoscaling = {"interval": "3s", "window": "15s", "cooldown": "3s"}
            release.apply(
                small_model(
                    name,
                    draft={"model": {"name": "meta-llama/Llama-3.2-1B-Instruct"}},
                    batching={"min": 2, "max": 64, "initial": initial},
                    autoscaling=autoscaling,
                )
            )
            release.wait_condition(name, "Ready", "True", "ReplicasReady")
            (pod,) = release.model_pods(name)
            # The simulator's knob (what a harder mix of prompts would do to the draft).
            admin = f"http://{pod['status']['podIP']}:8000/admin/acceptance"
            _http(admin, {"acceptanceRate": 0.9})
            service = release.get("service", name)["spec"]["clusterIP"]
            load.set(f"http://{service}", name, 8, (32, 96))

            def limit() -> int | None:
                found: int | None = release.get("im", name).get("status", {}).get("batchLimit")
                return found

            def describe() -> str:
                status = release.get("im", name).get("status", {})
                return json.dumps(status.get("decisions", [])[-4:]) + "\n" + release.operator_log()

            # Found through the API server and scraped: the gate and vLLM, by model.
            for metric in ("specfleet_gate_batch_limit", "vllm:spec_decode_num_draft_tokens_total"):
                harness.wait_for(
                    functools.partial(_series, prometheus, metric, namespace, name),
                    timeout=TIMEOUT,
                    what=f"Prometheus to scrape {metric} of the pod",
                    describe=lambda: json.dumps(prometheus.active_targets())[-3000:],
                )

            # High acceptance: the band doubles the base, and the gate in the pod follows.
            harness.wait_for(
                lambda: limit() == 2 * initial, timeout=TIMEOUT, what="band-high", describe=describe
            )
            harness.wait_for(
                lambda: _gate_limit(pod["status"]["podIP"]) == 2 * initial,
                timeout=TIMEOUT,
                what="the gate to read 32 from its ConfigMap volume",
            )
            # The prompts get harder: the low band halves the base.
            _http(admin, {"acceptanceRate": 0.5})
            harness.wait_for(
                lambda: limit() == initial // 2, timeout=TIMEOUT, what="band-low", describe=describe
            )
            harness.wait_for(
                lambda: (
                    _series(prometheus, "specfleet_gate_batch_limit", namespace, name)
                    == initial // 2
                ),
                timeout=TIMEOUT,
                what="Prometheus to see the gate at 8",
            )
            (same,) = release.model_pods(name)
            assert same["metadata"]["uid"] == pod["metadata"]["uid"]
            assert all(c["restartCount"] == 0 for c in same["status"]["containerStatuses"])
            assert load.statuses.keys() == {200}, load.statuses
        finally:
            load.stop()
            release.uninstall()


TAKEOVER_SECONDS = 30
"""What `ha.enabled` promises (a takeover within about 15 s: kopf peering's keep-alive
lifetime), with room for a relist on a busy machine, as e2e/test_ha.py allows."""
WRITES = "specfleet_operator_api_writes_total"


def _writes(pod: dict[str, Any]) -> float:
    """The API writes an operator pod made, from its metrics port (8080)."""
    return metric_total(f"http://{pod['status']['podIP']}:8080", WRITES)


def _acting(cluster: harness.Cluster, namespace: str, pod: dict[str, Any]) -> bool:
    """Whether the operator in ``pod`` acts: kopf starts paused and logs each change, so it
    acts when its last word on it is that it resumes."""
    log = cluster.kubectl("logs", "-n", namespace, pod["metadata"]["name"])
    said = [line for line in log.splitlines() if " operations" in line and "kopf." in line]
    return bool(said) and "Resuming operations" in said[-1]


def test_when_the_leaders_pod_is_deleted_the_standby_pod_acts_within_30s(
    crds: harness.Cluster, namespace: str
) -> None:
    release = Installed(crds, namespace)
    release.install("--set=ha.enabled=true", "--set=replicaCount=2")
    try:
        # Pods that start together may both act until their keep-alives meet (kopf peering);
        # then one acts and the other waits.
        harness.wait_for(
            lambda: (
                [_acting(crds, namespace, p) for p in release.operator_pods()]
                in (
                    [True, False],
                    [False, True],
                )
            ),
            timeout=TAKEOVER_SECONDS,
            what="one of the two operator pods to act and the other to wait",
        )
        pods = release.operator_pods()
        assert all(p["spec"]["nodeName"] == node.NODE_NAME for p in pods)
        (leader,) = [p for p in pods if _acting(crds, namespace, p)]
        (standby,) = [p for p in pods if p is not leader]
        waited = _writes(standby)
        release.apply(small_model("peered"))
        release.wait_condition("peered", "Ready", "True", "ReplicasReady")
        # Only the leader served the new model.
        assert _writes(leader) > 0 and _writes(standby) == waited

        # Deleted as a drain or a rollout does (SIGTERM, then its keep-alive stops); once the
        # pod is gone, a change is the standby's to apply (and a new pod's to wait behind it).
        crds.kubectl("delete", "pod", leader["metadata"]["name"], "-n", namespace)
        crds.kubectl(
            "patch", "im", "peered", "-n", namespace, "--type=merge",
            "-p", json.dumps({"spec": {"replicas": 2}}),
        )  # fmt: skip
        harness.wait_for(
            lambda: release.get("deployment", "peered")["spec"]["replicas"] == 2,
            timeout=TAKEOVER_SECONDS,
            what="the standby pod to take over and apply the change",
            describe=lambda: crds.kubectl(
                "logs", "-n", namespace, standby["metadata"]["name"], "--tail=40"
            ),
        )
        assert _writes(standby) > waited
        release.wait_condition("peered", "Ready", "True", "ReplicasReady")
    finally:
        release.uninstall()


def test_an_operator_pod_killed_mid_rollout_is_replaced_and_its_successor_converges(
    installed: Installed,
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
        lambda: _gate_limit(pod["status"]["podIP"]) == 100,
        timeout=TIMEOUT,
        what="the gate to read the limit the successor wrote",
    )
    for kind in ("deployment", "service", "configmap", "poddisruptionbudget"):
        items = installed.get(kind, "-l", "specfleet.dev/inferencemodel=llama-70b")["items"]
        assert len(items) == 1, (kind, [i["metadata"]["name"] for i in items])
