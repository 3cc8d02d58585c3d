"""Prometheus as the Prometheus Operator runs it, for one test namespace.

`start` runs the operator (built by e2e/build from its Go module at the version
e2e/versions.env pins) as a process on this host, scoped to the namespace and authenticated
with the cluster's admin kubeconfig, and asks it for a `Prometheus` there: one replica on the
real node, running the Prometheus and config-reloader images scripts/prometheus-images builds
from e2e/build's binaries. The operator turns the PodMonitors, ServiceMonitors and
PrometheusRules that carry the handle's labels into Prometheus' configuration and rule files,
as it does in production; Prometheus, a pod, finds the targets through the API server as the
ServiceAccount this module gives it. Nothing here translates a monitor by hand (compare
`harness.pod_monitor_scrape_configs`).

`start(..., everywhere=True, detach=True)` is the CLI's (`e2e/cluster up --prometheus`, for the
demo): the operator watches every namespace, Prometheus takes the monitors and rules of every
namespace and discovers pods anywhere, and the operator outlives the caller until
`e2e/cluster down` stops it.

The handle has the shape of `harness.Prometheus` for reading (`url`, `query`,
`active_targets`) and a Prometheus outage (`stop`, then `start`: the `Prometheus` scaled to
no replica and back, at the same URL, the Service's ClusterIP, which kube-proxy routes from
this host and from pods alike). `close` removes what `start` created and stops the operator.
Called by the e2e tests; needs the CRDs of `harness.prometheus_operator_crds` (the
``monitoring_crds`` fixture) and the real node.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from e2e import harness

IMAGES_SCRIPT = harness.E2E_DIR.parent / "scripts" / "prometheus-images"
NAME = "prometheus"
"""The `Prometheus` resource, its ServiceAccount and its Service (a test namespace holds one)."""
PORT = 9090
CLUSTER_NAMESPACE = "monitoring"
"""Where `serve_cluster` runs the CLI's Prometheus."""
IN_CLUSTER_URL = f"http://{NAME}.{CLUSTER_NAMESPACE}.svc:{PORT}"  # service_url's
"""The CLI's Prometheus by its Service's name, as pods (the chart's operator) reach it."""
SCRAPE_INTERVAL = "2s"
"""The chart's PodMonitors in these tests scrape every 2 s; rules are evaluated as often."""
TIMEOUT = 180.0
"""A generous bound for a pod to start on a busy 2-core machine (the first start includes
scheduling, two image mounts and the init container that writes the first configuration)."""

Manifest = dict[str, Any]


def load_images(cluster: harness.Cluster) -> tuple[str, str]:
    """The Prometheus and config-reloader images, built if needed (progress on stderr) and
    imported into the real node's containerd; their references."""
    loaded = subprocess.run(
        [str(IMAGES_SCRIPT), "--load", str(harness.real_node(cluster).layout.containerd_socket)],
        env={**os.environ, "CTR": str(cluster.bin_dir / "ctr")},
        check=False,
    )
    if loaded.returncode != 0:
        raise harness.HarnessError("scripts/prometheus-images failed: see its output above")
    server, reloader = harness.run([IMAGES_SCRIPT, "--print-refs"]).stdout.split()
    return server, reloader


# --------------------------------------------------------------------------------------------
# Pure: the manifests.


DEFAULT_SELECTOR = {"prometheus": NAME}


def service_url(namespace: str) -> str:
    """The Prometheus `start` runs in ``namespace``, by its Service's name, as pods reach it."""
    return f"http://{NAME}.{namespace}.svc:{PORT}"


def chart_values(namespace: str) -> tuple[str, ...]:
    """`helm install` options that make the chart's monitors and rules carry the labels the
    Prometheus `start` runs in ``namespace`` selects, its PodMonitors scrape every 2 s and its
    operator read that Prometheus by its Service's name. Install the chart before `start`:
    Prometheus then starts with the monitors in its first configuration, rather than waiting
    for its config reloader to notice them (which, on a fresh node, once took longer than
    two minutes)."""
    labels = [
        f"--set=monitoring.{kind}.labels.{key}={value}"
        for kind in ("podMonitor", "serviceMonitor", "prometheusRule")
        for key, value in DEFAULT_SELECTOR.items()
    ]
    return (
        f"--set=settings.prometheusUrl={service_url(namespace)}",
        "--set=monitoring.podMonitor.enabled=true",
        f"--set=monitoring.podMonitor.interval={SCRAPE_INTERVAL}",
        *labels,
    )


def cluster_role_name(namespace: str) -> str:
    """The ClusterRole (and its binding) of the Prometheus in ``namespace`` that looks
    everywhere: cluster-scoped, so named after its namespace."""
    return f"{NAME}-{namespace}"


def manifests(
    namespace: str,
    image: str,
    version: str,
    selector: Mapping[str, str],
    *,
    everywhere: bool = False,
) -> list[Manifest]:
    """Prometheus' ServiceAccount with what its discovery reads in ``namespace`` (in every
    namespace if ``everywhere``), the `Prometheus` selecting the monitors and rules labelled
    ``selector`` there (an empty one selects all), and a Service with a ClusterIP in front of
    it (the operator's own, prometheus-operated, is headless)."""
    selects = {"matchLabels": dict(selector)}
    role, binding = ("ClusterRole", "ClusterRoleBinding") if everywhere else ("Role", "RoleBinding")
    role_name = cluster_role_name(namespace) if everywhere else NAME
    # Monitors and rules of every namespace, not only the Prometheus' own.
    anywhere: Manifest = (
        {f"{kind}NamespaceSelector": {} for kind in ("podMonitor", "serviceMonitor", "rule")}
        if everywhere
        else {}
    )
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": NAME}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": role,
            "metadata": {"name": role_name},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods", "services", "endpoints"],
                    "verbs": ["get", "list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["get", "list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": binding,
            "metadata": {"name": role_name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role, "name": role_name},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": namespace}],
        },
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "Prometheus",
            "metadata": {"name": NAME},
            "spec": {
                "image": image,
                "version": version,
                # The image exists only in the node's containerd: a missing one should fail
                # loudly (ErrImageNeverPull), not try a registry.
                "imagePullPolicy": "Never",
                "replicas": 1,
                "serviceAccountName": NAME,
                "scrapeInterval": SCRAPE_INTERVAL,
                "evaluationInterval": SCRAPE_INTERVAL,
                "podMonitorSelector": selects,
                "serviceMonitorSelector": selects,
                "ruleSelector": selects,
                **anywhere,
                **json.loads(json.dumps(harness.ON_THE_REAL_NODE)),
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": NAME},
            "spec": {
                "selector": {"operator.prometheus.io/name": NAME},
                "ports": [{"name": "web", "port": PORT, "targetPort": "web"}],
            },
        },
    ]


def operator_argv(binary: Path, namespace: str | None, reloader: str, port: int) -> list[str]:
    """The operator's command line: only ``namespace`` (every one if None), its metrics on
    loopback."""
    return [
        str(binary),
        *([f"--namespaces={namespace}"] if namespace else []),
        f"--prometheus-config-reloader={reloader}",
        # Its default 10m CPU limit stretches each reload to seconds on a busy 2-core machine.
        "--config-reloader-cpu-limit=0",
        f"--web.listen-address={harness.LOOPBACK}:{port}",
    ]


# --------------------------------------------------------------------------------------------
# The handle.


@dataclass
class OperatedPrometheus(harness.PrometheusApi):
    """A Prometheus the Prometheus Operator runs in ``namespace``, and the operator."""

    cluster: harness.Cluster
    namespace: str
    url: str
    selector: Mapping[str, str]
    operator: subprocess.Popen[bytes]
    operator_log: Path
    everywhere: bool = False

    def rule_groups(self) -> list[Manifest]:
        groups: list[Manifest] = self.api("rules")["groups"]
        return groups

    def pods(self) -> list[Manifest]:
        found: list[Manifest] = self.cluster.kubectl_json(
            "get", "pods", "-n", self.namespace, "-l", f"operator.prometheus.io/name={NAME}"
        )["items"]
        return found

    def describe(self) -> str:
        """What a failure message needs: the pods' states, the operator's last lines."""
        states = [
            {"pod": p["metadata"]["name"], "phase": p["status"].get("phase"), **_waiting(p)}
            for p in self.pods()
        ]
        return f"pods: {json.dumps(states)}\noperator log:\n{self.operator_log_tail()}"

    def operator_log_tail(self, lines: int = 30) -> str:
        text = self.operator_log.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _scale(self, replicas: int) -> None:
        patch = json.dumps({"spec": {"replicas": replicas}})
        self.cluster.kubectl(
            "patch", "prometheus", NAME, "-n", self.namespace, "--type=merge", "-p", patch
        )

    def stop(self) -> None:
        """An outage: no Prometheus pod until `start` (the operator and the URL stay)."""
        self._scale(0)
        harness.wait_for(
            lambda: not self.pods(),
            timeout=TIMEOUT,
            what=f"the Prometheus pod in {self.namespace} to be gone",
            describe=self.describe,
        )

    def start(self) -> None:
        """Back after `stop`, at the same URL, with empty storage (the pod's is an emptyDir);
        returns once it answers /-/ready."""
        self._check_operator()
        self._scale(1)
        self.wait_ready()

    def wait_ready(self) -> None:
        def ready() -> bool:
            self._check_operator()
            return self.ready()

        harness.wait_for(
            ready,
            timeout=TIMEOUT,
            what=f"the Prometheus the operator runs in {self.namespace} to answer at {self.url}",
            describe=self.describe,
        )

    def _check_operator(self) -> None:
        if self.operator.poll() is not None:
            raise harness.HarnessError(
                f"the Prometheus Operator exited with {self.operator.returncode}; "
                f"log {self.operator_log}:\n{self.operator_log_tail()}"
            )

    def close(self) -> None:
        """Delete the `Prometheus` (its StatefulSet, pods, configuration and rule files go with
        it), wait for its pods to be gone, remove the rest and stop the operator."""
        try:
            if self.operator.poll() is None:
                self.cluster.kubectl(
                    "delete", "prometheus", NAME, "-n", self.namespace, "--ignore-not-found"
                )
                harness.wait_for(
                    lambda: not self.pods(),
                    timeout=TIMEOUT,
                    what=f"the Prometheus pods in {self.namespace} to be gone",
                    describe=self.describe,
                )
            for kind in ("service", "rolebinding", "role", "serviceaccount"):
                self.cluster.kubectl(
                    "delete", kind, NAME, "-n", self.namespace, "--ignore-not-found"
                )
            if self.everywhere:
                for kind in ("clusterrolebinding", "clusterrole"):
                    name = cluster_role_name(self.namespace)
                    self.cluster.kubectl("delete", kind, name, "--ignore-not-found")
        finally:
            harness.terminate(self.operator)

    def __enter__(self) -> OperatedPrometheus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _waiting(pod: Mapping[str, Any]) -> dict[str, str]:
    """Why each container of ``pod`` is not running yet, by container."""
    statuses = [
        *(pod["status"].get("initContainerStatuses") or []),
        *(pod["status"].get("containerStatuses") or []),
    ]
    return {
        s["name"]: f"{w.get('reason')}: {w.get('message', '')}"
        for s in statuses
        if (w := (s.get("state") or {}).get("waiting"))
    }


def start(
    cluster: harness.Cluster,
    namespace: str,
    workdir: Path,
    *,
    selector: Mapping[str, str] | None = None,
    everywhere: bool = False,
    detach: bool = False,
) -> OperatedPrometheus:
    """Run the Prometheus Operator for ``namespace`` (every namespace if ``everywhere``) and a
    Prometheus it manages in ``namespace``, selecting the monitors and rules labelled
    ``selector`` (default ``prometheus: NAME``); returns once Prometheus answers at its URL.
    The operator logs to ``workdir``; ``detach`` starts it in its own session, to outlive the
    caller (the CLI), with its pid and the URL in ``detached_dir``."""
    binary = cluster.bin_dir / "prometheus-operator"
    if not binary.exists():
        raise harness.HarnessError(f"prometheus-operator not found at {binary}: run e2e/build")
    selector = dict(DEFAULT_SELECTOR if selector is None else selector)
    server, reloader = load_images(cluster)
    # The server's image is tagged with its release, which the operator writes flags for.
    version = server.rsplit(":", 1)[1]
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "prometheus-operator.log"
    started = time.monotonic()
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            operator_argv(binary, None if everywhere else namespace, reloader, harness.free_port()),
            env=cluster.env(),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=detach,
        )
    try:
        objects = manifests(namespace, server, version, selector, everywhere=everywhere)
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))
        service = cluster.kubectl_json("get", "service", NAME, "-n", namespace)
        url = f"http://{service['spec']['clusterIP']}:{PORT}"
        handle = OperatedPrometheus(
            cluster, namespace, url, selector, process, log_path, everywhere=everywhere
        )
    except BaseException:
        process.terminate()
        process.wait()
        raise
    try:
        handle.wait_ready()
    except BaseException:
        handle.close()
        raise
    harness.log(
        f"Prometheus {version} by the Prometheus Operator in {namespace} at {url}, "
        f"ready in {time.monotonic() - started:.0f}s"
    )
    if detach:
        directory = detached_dir(cluster.name)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "pid").write_text(f"{process.pid}\n")
        (directory / "url").write_text(f"{url}\n")
    return handle


def detached_dir(name: str) -> Path:
    """Where the detached operator of cluster ``name`` leaves its pid, Prometheus' URL and its
    log (harness.stop_detached stops it, as `e2e/cluster down` does)."""
    return harness.state_dir(name) / harness.PROMETHEUS_OPERATOR


def serve_cluster(cluster: harness.Cluster, *, real_node: bool = True) -> str:
    """The CLI's Prometheus (`e2e/cluster up --prometheus`): the Prometheus Operator's CRDs,
    the operator watching every namespace, detached, and a Prometheus in CLUSTER_NAMESPACE on
    the real node taking every namespace's monitors and rules; its URL (from this host)."""
    if not real_node:
        raise harness.HarnessError("--prometheus runs Prometheus as a pod: it needs the real node")
    harness.stop_detached(cluster.name, harness.PROMETHEUS_OPERATOR)
    paths = harness.prometheus_operator_crds()
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", *(f"--filename={p}" for p in paths)
    )
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/prometheuses.monitoring.coreos.com", "crd/podmonitors.monitoring.coreos.com",
    )  # fmt: skip
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CLUSTER_NAMESPACE}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(namespace))
    handle = start(
        cluster,
        CLUSTER_NAMESPACE,
        detached_dir(cluster.name),
        selector={},
        everywhere=True,
        detach=True,
    )
    return handle.url
