"""The specfleet operator as a local process against the e2e cluster.

Pods on kwok nodes do not run, so the operator runs beside the cluster, as a person would run
`specfleet run` from a laptop: same binary, same kubeconfig handling. Used by the `operator`
fixture in e2e/conftest.py; a test can kill it and start it again.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from e2e import harness

SPECFLEET = Path(sys.executable).parent / "specfleet"


class Operator:
    """One `specfleet run` process watching one namespace (or, with `args`, what they say).

    `args` replace `--namespace NAMESPACE` (for instance a chart's `--namespace` and
    `--peering` flags); `env` is added to the environment (a chart's SPECFLEET_* settings, or
    a KUBECONFIG that authenticates as another identity)."""

    def __init__(
        self,
        cluster: harness.Cluster,
        namespace: str,
        log_path: Path,
        resync_seconds: float = 2.0,
        *,
        args: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.log_path = log_path
        self.resync_seconds = resync_seconds
        self.args = list(args) if args is not None else ["--namespace", namespace]
        self.env = dict(env or {})
        self.metrics_port = harness.free_port()
        self.health_port = harness.free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **self.cluster.env(),
            "SPECFLEET_RESYNC_SECONDS": str(self.resync_seconds),
            # No Prometheus unless a test gives one: autoscaling off, so no decision lands
            # in a test that counts writes.
            "SPECFLEET_PROMETHEUS_URL": "",
            **self.env,
        }
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    str(SPECFLEET),
                    "run",
                    *self.args,
                    "--verbose",
                    "--metrics-address",
                    harness.LOOPBACK,
                    "--metrics-port",
                    str(self.metrics_port),
                    "--health-port",
                    str(self.health_port),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        harness.wait_for(
            self._healthy, timeout=60, what="the operator to start", describe=self.log_tail
        )

    def _healthy(self) -> bool:
        if self._process is None or self._process.poll() is not None:
            raise harness.HarnessError(f"the operator exited:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(
                f"http://{harness.LOOPBACK}:{self.health_port}/healthz", timeout=2
            ) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False

    @property
    def pid(self) -> int:
        if self._process is None:
            raise harness.HarnessError("the operator is not running")
        return self._process.pid

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM and wait; `kill` is SIGKILL, as when a node dies under the operator."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples whose labels include `labels`."""
        return metric_total(f"http://{harness.LOOPBACK}:{self.metrics_port}", name, **labels)


def metric_total(url: str, name: str, **labels: str) -> float:
    """The sum of the samples of metric ``name`` at ``url``/metrics whose labels include
    ``labels``."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def service_account_kubeconfig(
    cluster: harness.Cluster, namespace: str, name: str, path: Path
) -> Path:
    """A kubeconfig for the cluster that authenticates as ServiceAccount `namespace/name`, with
    a short-lived token (`kubectl create token`), as a pod of that ServiceAccount would."""
    token = cluster.kubectl("create", "token", name, "-n", namespace, "--duration=1h").strip()
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    (entry,) = config["clusters"]
    user = f"system:serviceaccount:{namespace}:{name}"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [entry],
                "users": [{"name": user, "user": {"token": token}}],
                "contexts": [{"name": user, "context": {"cluster": entry["name"], "user": user}}],
                "current-context": user,
            }
        )
    )
    return path
