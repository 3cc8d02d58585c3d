"""High availability, on the real node: two operator pods peered as the chart runs them
(`ha.enabled`, `replicaCount=2`: the chart's ServiceAccount and KopfPeering), of which only one
acts. When the leader's pod goes (deleted as a drain does, or killed at once as when its node
fails), the other acts within 30 s on what changed meanwhile; with autoscaling on, only the
leader decides, and the standby carries the decision history on without losing any.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from e2e import harness, node, prometheus_operator
from e2e.operator_process import metric_total
from e2e.release import OPERATOR_METRICS_PORT, Release, set_acceptance, sim_env, small_model
from e2e.test_autoscale import INITIAL, INTERVAL_SECONDS, autoscaled
from e2e.traffic import Load

TAKEOVER_SECONDS = 30
"""What `ha.enabled` promises (a takeover within about 15 s: kopf peering's keep-alive
lifetime), with room for a relist on a busy machine."""
WRITES = "specfleet_operator_api_writes_total"
DECISIONS = "specfleet_operator_autoscaling_decisions_total"


def _metric(pod: dict[str, Any], name: str) -> float:
    """A counter of an operator pod, from its metrics port."""
    return metric_total(f"http://{pod['status']['podIP']}:{OPERATOR_METRICS_PORT}", name)


def _acting(release: Release, pod: dict[str, Any]) -> bool:
    """Whether the operator in ``pod`` acts: kopf starts paused and logs each change, so it
    acts when its last word on it is that it resumes."""
    log = release.cluster.kubectl("logs", "-n", release.namespace, pod["metadata"]["name"])
    said = [line for line in log.splitlines() if " operations" in line and "kopf." in line]
    return bool(said) and "Resuming operations" in said[-1]


def _leader_and_standby(release: Release) -> tuple[dict[str, Any], dict[str, Any]]:
    """Once pods that started together settle (both may act until their keep-alives meet),
    the one that acts and the one that waits."""
    harness.wait_for(
        lambda: sorted(_acting(release, p) for p in release.operator_pods()) == [False, True],
        timeout=TAKEOVER_SECONDS,
        what="one of the two operator pods to act and the other to wait",
    )
    pods = release.operator_pods()
    assert all(p["spec"]["nodeName"] == node.NODE_NAME for p in pods)
    (leader,) = [p for p in pods if _acting(release, p)]
    (standby,) = [p for p in pods if p is not leader]
    return leader, standby


@pytest.fixture
def peered(crds: harness.Cluster, namespace: str) -> Iterator[Release]:
    release = Release(crds, namespace)
    yield release
    release.uninstall()


def test_when_the_leaders_pod_is_deleted_the_standby_pod_acts_within_30s(
    peered: Release,
) -> None:
    peered.install("--set=ha.enabled=true", "--set=replicaCount=2")
    leader, standby = _leader_and_standby(peered)
    waited = _metric(standby, WRITES)
    peered.apply(small_model("peered"))
    peered.wait_condition("peered", "Ready", "True", "ReplicasReady")
    # Only the leader served the new model.
    assert _metric(leader, WRITES) > 0 and _metric(standby, WRITES) == waited

    # Deleted as a drain or a rollout does (SIGTERM, then its keep-alive stops); once the pod
    # is gone, a change is the standby's to apply (and a new pod's to wait behind it).
    peered.cluster.kubectl("delete", "pod", leader["metadata"]["name"], "-n", peered.namespace)
    peered.patch("im", "peered", {"spec": {"replicas": 2}})
    harness.wait_for(
        lambda: peered.get("deployment", "peered")["spec"]["replicas"] == 2,
        timeout=TAKEOVER_SECONDS,
        what="the standby pod to take over and apply the change",
        describe=lambda: peered.cluster.kubectl(
            "logs", "-n", peered.namespace, standby["metadata"]["name"], "--tail=40"
        ),
    )
    assert _metric(standby, WRITES) > waited
    peered.wait_condition("peered", "Ready", "True", "ReplicasReady")


def test_decisions_go_on_across_a_killed_leader_and_none_is_lost(
    monitoring_crds: harness.Cluster, peered: Release, tmp_path: Path
) -> None:
    """The standby decides nothing while the leader acts; after the leader's pod is killed
    (no grace: SIGKILL, its keep-alive left to expire), the standby continues the same history
    (every decision the leader recorded is still there) and acts on what changed meanwhile."""
    load = Load()
    # The chart first: Prometheus starts with its monitors (see chart_values).
    peered.install(
        *prometheus_operator.chart_values(peered.namespace),
        "--set=ha.enabled=true",
        "--set=replicaCount=2",
    )
    with prometheus_operator.start(monitoring_crds, peered.namespace, tmp_path):
        try:
            leader, standby = _leader_and_standby(peered)
            peered.apply(small_model("shared", **autoscaled(), env=sim_env(acceptance_rate=0.9)))
            pod = peered.serving_pod("shared")
            load.set(peered.service_url("shared"), "shared", 8, (32, 96))

            def limit() -> int | None:
                found: int | None = peered.status("shared").get("batchLimit")
                return found

            def history() -> list[dict[str, Any]]:
                decisions: list[dict[str, Any]] = peered.status("shared").get("decisions", [])
                return decisions

            harness.wait_for(lambda: limit() == 2 * INITIAL, timeout=120, what="band-high")
            harness.wait_for(lambda: len(history()) >= 6, timeout=120, what="six decisions")
            assert _metric(standby, DECISIONS) == 0

            peered.cluster.kubectl(
                "delete", "pod", leader["metadata"]["name"], "-n", peered.namespace,
                "--grace-period=0", "--force", "--wait=false",
            )  # fmt: skip
            before = history()
            set_acceptance(pod, acceptanceRate=0.5)
            harness.wait_for(
                lambda: limit() == INITIAL // 2,
                timeout=120,
                what="the standby to take over and follow the acceptance",
                describe=lambda: peered.cluster.kubectl(
                    "logs", "-n", peered.namespace, standby["metadata"]["name"], "--tail=40"
                ),
            )
            assert _metric(standby, DECISIONS) > 0
            after = history()
            # Nothing the leader recorded is lost (the history keeps the newest 32).
            kept = [d["time"] for d in after]
            assert [d["time"] for d in before if d["time"] >= kept[0]] == [
                t for t in kept if t <= before[-1]["time"]
            ]
            # One decider at a time: no two decisions closer than the interval allows.
            times = [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in kept]
            gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
            assert min(gaps) >= INTERVAL_SECONDS - 1, gaps
            assert load.statuses.keys() == {200}, load.statuses
        finally:
            load.stop()
