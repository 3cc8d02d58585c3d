"""High availability: two operators peered as the chart runs them (`ha.enabled`, the chart's
ServiceAccount and KopfPeering), of which only one writes; SIGKILL the active one, and the
other takes over within 30 s and reconciles the spec change made while nobody was acting; with
autoscaling on (the local fleet and Prometheus of e2e/test_autoscale.py), only the active one
decides, and the standby carries the decision history on without losing any.
"""

from __future__ import annotations

import itertools
from datetime import datetime
from pathlib import Path

from e2e import harness
from e2e.operator_process import Operator, service_account_kubeconfig
from e2e.test_autoscale import (
    HIGH_ACCEPTANCE,
    INITIAL,
    INTERVAL_SECONDS,
    LOW_ACCEPTANCE,
    Loop,
    history,
    model,
)
from e2e.test_helm import EXAMPLE, chart_operator, helm_install, release_name

TAKEOVER_SECONDS = 30
"""The promise: kopf peering with specfleet's 15 s keep-alive lifetime, plus a relist."""
WRITES = "specfleet_operator_api_writes_total"


def _deployment_replicas(op: Operator) -> int | None:
    live = op.cluster.kubectl_json("get", "deployment", "llama-70b", "-n", op.namespace)
    replicas: int = live["spec"]["replicas"]
    return replicas


def test_a_standby_takes_over_within_30s_without_double_writes(
    crds: harness.Cluster, namespace: str, tmp_path: Path
) -> None:
    cluster, release = crds, release_name(namespace)
    helm_install(
        cluster, release, namespace, f"watchNamespaces={{{namespace}}}", "ha.enabled=true",
        "replicaCount=2",
    )  # fmt: skip
    kubeconfig = service_account_kubeconfig(cluster, namespace, release, tmp_path / "kubeconfig")
    first = chart_operator(cluster, namespace, release, tmp_path / "first.log", kubeconfig)
    second = chart_operator(cluster, namespace, release, tmp_path / "second.log", kubeconfig)
    assert f"--peering={release}" in first.args
    try:
        first.start()
        second.start()  # started later, so lower priority: it waits
        cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
        harness.wait_for(
            lambda: _deployment_replicas(first) == 2 if _exists(first) else None,
            timeout=90,
            what="the acting operator to roll out the example",
            describe=lambda: first.log_tail() + "\n---\n" + second.log_tail(),
        )
        # Several resyncs with both running: only the first writes.
        passes = first.metric("specfleet_operator_reconcile_seconds_count")
        harness.wait_for(
            lambda: first.metric("specfleet_operator_reconcile_seconds_count") >= passes + 3,
            timeout=60,
            what="three more reconciles by the acting operator",
        )
        assert first.metric(WRITES) > 0
        assert second.metric(WRITES) == 0, second.log_tail(80)
        assert second.metric("specfleet_operator_reconcile_seconds_count") == 0

        first.stop(kill=True)
        # Changed while nobody acts: the standby must not lose it when it takes over.
        cluster.kubectl(
            "patch", "im", "llama-70b", "-n", namespace, "--type=merge",
            "-p", '{"spec": {"replicas": 3}}',
        )  # fmt: skip
        harness.wait_for(
            lambda: _deployment_replicas(second) == 3,
            timeout=TAKEOVER_SECONDS,
            what="the standby to take over and apply the change made after the kill",
            describe=second.log_tail,
        )
        assert second.metric(WRITES) > 0
    finally:
        first.stop()
        second.stop()
        cluster.helm("uninstall", release, "--namespace", namespace, "--wait")


def _exists(op: Operator) -> bool:
    out = op.cluster.kubectl(
        "get", "deployment", "llama-70b", "-n", op.namespace, "--ignore-not-found", "-o", "name"
    )
    return bool(out.strip())


DECISIONS = "specfleet_operator_autoscaling_decisions_total"


def test_decisions_go_on_across_a_takeover_and_none_is_lost(
    crds: harness.Cluster, namespace: str, tmp_path: Path
) -> None:
    """Autoscaling across a takeover: the standby decides nothing while the first acts; after
    the first is killed, the standby continues the same history (every decision the first
    recorded is still there) and acts on what changed meanwhile."""
    cluster, release = crds, release_name(namespace)
    helm_install(
        cluster, release, namespace, f"watchNamespaces={{{namespace}}}", "ha.enabled=true",
        "replicaCount=2",
    )  # fmt: skip
    loop = Loop(cluster, namespace, tmp_path, HIGH_ACCEPTANCE)
    kubeconfig = service_account_kubeconfig(cluster, namespace, release, tmp_path / "kubeconfig")
    first = chart_operator(cluster, namespace, release, tmp_path / "first.log", kubeconfig)
    second = chart_operator(cluster, namespace, release, tmp_path / "second.log", kubeconfig)
    for operator in (first, second):
        operator.env["SPECFLEET_PROMETHEUS_URL"] = loop.prometheus.url
    try:
        first.start()
        second.start()
        loop.fleet.start()
        loop.apply(model("shared"))
        loop.serve("shared", clients=8)
        loop.wait(lambda: loop.status("shared").get("batchLimit") == 2 * INITIAL, "32", "shared")
        loop.wait(lambda: len(history(loop, "shared")) >= 6, "six decisions", "shared")
        assert second.metric(DECISIONS) == 0, second.log_tail(80)

        first.stop(kill=True)
        before = history(loop, "shared")
        loop.fleet.set_behaviour("shared", acceptanceRate=LOW_ACCEPTANCE)
        loop.wait(
            lambda: loop.status("shared")["batchLimit"] == INITIAL // 2,
            "the standby to take over and follow the acceptance",
            "shared",
        )
        assert second.metric(DECISIONS) > 0
        after = history(loop, "shared")
        # Nothing the first recorded is lost (the history keeps the newest 32).
        kept = [d["time"] for d in after]
        assert [d["time"] for d in before if d["time"] >= kept[0]] == [
            t for t in kept if t <= before[-1]["time"]
        ]
        # One decider at a time: no two decisions closer than the interval allows.
        times = [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in kept]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        assert min(gaps) >= INTERVAL_SECONDS - 1, gaps
    finally:
        loop.close()
        first.stop()
        second.stop()
        cluster.helm("uninstall", release, "--namespace", namespace, "--wait")
