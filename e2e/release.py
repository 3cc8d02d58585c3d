"""The chart installed as a platform team installs it, on the real node, for the e2e tests.

`Release` is one `helm install` of charts/specfleet in a test's namespace, watching it: the
operator runs as a pod from its image (authenticated as the chart's ServiceAccount, so the API
server enforces its RBAC) and the InferenceModels and RoutingPolicies it serves run real pods
on the real node (the vllm-sim image as their vLLM, the runtime image as gate and router). What
the tests read of it, they read as a user does: `kubectl get`, the pods' own ports, a Service's
ClusterIP (kube-proxy's rules reach it from this host too).
"""

from __future__ import annotations

import copy
import json
import urllib.request
from collections.abc import Mapping
from typing import Any, Protocol

import yaml

from e2e import harness
from tests.corpus import ROOT

CHART = ROOT / "charts" / "specfleet"
EXAMPLE = ROOT / "examples" / "llama-70b-speculative.yaml"
TIMEOUT = 180
"""A generous bound for what takes a few seconds alone, on a busy 2-core machine."""
ON_THE_REAL_NODE = harness.ON_THE_REAL_NODE
GATE_PORT = 8080
VLLM_PORT = 8000
OPERATOR_METRICS_PORT = 8080


PLACED_ON_THE_REAL_NODE = (
    f"--set-json=tolerations={json.dumps(ON_THE_REAL_NODE['tolerations'])}",
    f"--set-json=nodeSelector={json.dumps(ON_THE_REAL_NODE['nodeSelector'])}",
)
"""The chart's values that put its operator pods on the real node (kwok's pods never run)."""


def example_on_the_real_node(**changes: Any) -> dict[str, Any]:
    """The 70B example (draft, FP8, 4 x H100), one replica on the real node, no Secret."""
    model: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    spec = model["spec"]
    del spec["model"]["credentials"]
    spec["replicas"] = 1
    spec["gpu"].update(copy.deepcopy(ON_THE_REAL_NODE))
    spec.update(changes)
    return model


def small_model(
    name: str, model: str = "meta-llama/Llama-3.1-8B-Instruct", **changes: Any
) -> dict[str, Any]:
    """One replica of a small model (an 8B unless said) on one of the real node's GPUs."""
    spec: dict[str, Any] = {
        "model": {"name": model},
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


def sim_env(**values: float) -> list[dict[str, str]]:
    """A model's `spec.env` for the vllm-sim image: SPECFLEET_SIM_<NAME> for each value
    (acceptance_rate, time_factor, ...), what a vLLM command line cannot say."""
    return [{"name": f"SPECFLEET_SIM_{k.upper()}", "value": str(v)} for k, v in values.items()]


def http(url: str, body: Mapping[str, Any] | None = None, timeout: float = 30) -> Any:
    """GET ``url`` (POST ``body`` as JSON); the answer as JSON when it is an object."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        text = reply.read().decode()
    return json.loads(text) if text.startswith("{") else text


def gate_limit(pod: Mapping[str, Any]) -> float | None:
    """The batch limit the gate in ``pod`` admits now, from its own /metrics."""
    metrics = http(f"http://{pod['status']['podIP']}:{GATE_PORT}/metrics")
    for line in str(metrics).splitlines():
        if line.startswith("specfleet_gate_batch_limit "):
            return float(line.split()[1])
    return None


def set_acceptance(pod: Mapping[str, Any], **behaviour: float) -> None:
    """The simulator's knob in ``pod`` (what a harder mix of prompts does to the draft):
    acceptanceRate, latencyFactor."""
    http(f"http://{pod['status']['podIP']}:{VLLM_PORT}/admin/acceptance", behaviour)


class Queried(Protocol):
    """A Prometheus to query: the Prometheus Operator's (e2e/prometheus_operator.py) or one
    the harness runs on this host."""

    def query(self, promql: str) -> list[dict[str, Any]]: ...


def series(prometheus: Queried, metric: str, namespace: str, name: str) -> float | None:
    """The value of ``metric`` for model ``name`` in Prometheus, by the labels the chart's
    PodMonitors give every series; None while it has none."""
    found = prometheus.query(f'{metric}{{namespace="{namespace}",inferencemodel="{name}"}}')
    return float(found[0]["value"][1]) if found else None


class Release:
    """A release of the chart in one namespace, watching it, its operator on the real node."""

    def __init__(self, cluster: harness.Cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.release = f"specfleet-{namespace[-5:]}"

    def install(self, *values: str, cluster_wide: bool = False) -> None:
        """``helm install``, watching the namespace (every namespace if ``cluster_wide``),
        placed on the real node; ``values`` are more ``--set`` options."""
        watch = [] if cluster_wide else [f"--set=watchNamespaces={{{self.namespace}}}"]
        self.cluster.helm(
            "install", self.release, str(CHART), "--namespace", self.namespace,
            *watch,
            f"--set=settings.vllmImage={harness.VLLM_SIM_IMAGE}",
            "--set=settings.prometheusUrl=",
            "--set=settings.resyncSeconds=2",
            "--set=verbose=true",
            *PLACED_ON_THE_REAL_NODE,
            *values,
            "--wait", "--timeout=180s",
        )  # fmt: skip

    def uninstall(self) -> None:
        """``helm uninstall``, if there is a release (a failed install leaves one too)."""
        releases = self.cluster.helm("list", "--all", "--short", "--namespace", self.namespace)
        if self.release in releases.split():
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

    def apply(self, *manifests: Mapping[str, Any]) -> None:
        text = yaml.safe_dump_all([dict(m) for m in manifests], sort_keys=False)
        self.cluster.kubectl("apply", "-n", self.namespace, "-f", "-", input=text)

    def patch(self, kind: str, name: str, patch: Mapping[str, Any]) -> None:
        self.cluster.kubectl(
            "patch", kind, name, "-n", self.namespace, "--type=merge", "-p", json.dumps(patch)
        )

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.get("im", name).get("status", {})
        return status

    def condition(self, name: str, type: str) -> dict[str, Any]:
        conditions = self.status(name).get("conditions", [])
        found: dict[str, Any] = {c["type"]: c for c in conditions}.get(type, {})
        return found

    def wait_condition(self, name: str, type: str, status: str, reason: str) -> dict[str, Any]:
        def holds() -> dict[str, Any] | None:
            found = self.condition(name, type)
            return found if (found.get("status"), found.get("reason")) == (status, reason) else None

        return harness.wait_for(
            holds,
            timeout=TIMEOUT,
            what=f"InferenceModel {name} {type}={status} ({reason})",
            describe=lambda: json.dumps(self.status(name), indent=1) + "\n" + self.operator_log(),
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

    def serving_pod(self, name: str) -> dict[str, Any]:
        """The model's one pod, once every container in it is ready."""

        def ready() -> dict[str, Any] | None:
            pods = [p for p in self.model_pods(name) if not p["metadata"].get("deletionTimestamp")]
            statuses = [c for p in pods for c in p["status"].get("containerStatuses", [])]
            if len(pods) == 1 and statuses and all(c["ready"] for c in statuses):
                return pods[0]
            return None

        found: dict[str, Any] = harness.wait_for(
            ready,
            timeout=TIMEOUT,
            what=f"the pod of {name}, ready",
            describe=lambda: json.dumps([p["status"] for p in self.model_pods(name)])[-3000:],
        )
        return found

    def service_url(self, name: str) -> str:
        """The Service ``name`` by its ClusterIP: kube-proxy's rules route it from this host."""
        service = self.get("service", name)
        return f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"

    def operator_log(self, tail: int = 60) -> str:
        """The last ``tail`` lines of each operator pod's log (-1: all of it), each headed by
        its pod's name when there are several (with HA)."""
        try:
            names = [p["metadata"]["name"] for p in self.operator_pods()]
            logs = [
                self.cluster.kubectl("logs", "-n", self.namespace, name, f"--tail={tail}")
                for name in names
            ]
        except (harness.HarnessError, ValueError) as exc:
            return f"(no operator log: {exc})"
        if len(names) == 1:
            return logs[0]
        return "\n".join(f"--- {name}\n{log}" for name, log in zip(names, logs, strict=True))
