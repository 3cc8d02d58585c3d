"""The closed loop, end to end, on real pods: the chart's operator pod reads a real Prometheus,
run by the real Prometheus Operator from the chart's PodMonitors (e2e/prometheus_operator.py),
that finds the model pods through the API server and scrapes their gate and vLLM (the vllm-sim
image); it decides, writes the limit into the gate's ConfigMap, the kubelet updates the gate's
volume, and the gate admits the new limit.

- Acceptance falling from 0.9 to 0.5 lowers the limit within a few intervals, and the gate in
  the pod enforces it, without a restart; Recommend mode records the same decisions but changes
  neither the ConfigMap nor the limit. Afterwards the applied file still matches the cluster
  (`kubectl diff`): the operator never writes a spec.
- A P99 breach with nothing waiting lowers the limit.
- With Prometheus gone (its pod scaled away) the limit holds and MetricsAvailable turns
  False; when it is back, decisions resume.
- Restart mode rolls the Deployment: the new pod's vLLM runs with `--max-num-seqs` at the new
  limit.
- A draft accepted far less than the planner assumed retunes the speculation schedule: the
  decision is applied, the Deployment rolls, and the new pod's vLLM runs the new schedule.

Autoscaling runs with short intervals and windows (seconds, not minutes) so each scenario
takes about a minute; the policy's rules are the same at any time scale. The simulator's knob
(its /admin/acceptance endpoint: what a harder mix of prompts would do to the draft) and the
load (e2e/traffic.py, through the model's Service) are the only things not a cluster's own.
"""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import harness, prometheus_operator
from e2e.release import Release, gate_limit, series, set_acceptance, sim_env, small_model
from e2e.traffic import Load
from specfleet import review
from specfleet.api.inferencemodel import DECISION_HISTORY_LIMIT

INTERVAL_SECONDS = 3
TIMEOUT = 120.0
"""A generous bound for what should take a few intervals, on a busy 2-core machine."""
INITIAL = 16
HIGH_ACCEPTANCE = 0.9
LOW_ACCEPTANCE = 0.5
P99_TARGET_SECONDS = 5
"""The P99 breach test's target: above its P99 on a busy machine, far below it with every step
40 times slower."""


def autoscaled(schedule: str = "fixed", **autoscaling: Any) -> dict[str, Any]:
    """Spec fields of an autoscaled model: a 1B draft, a limit between 2 and 64 starting at
    INITIAL, decisions every INTERVAL_SECONDS over a 15 s window. The speculation schedule is
    fixed unless asked for: an auto one would be retuned from the acceptance these tests move,
    and the rollout that follows would replace the pod under the limit's checks."""
    return {
        "draft": {"model": {"name": "meta-llama/Llama-3.2-1B-Instruct"}, "schedule": schedule},
        "batching": {"min": 2, "max": 64, "initial": INITIAL},
        "autoscaling": {
            "interval": f"{INTERVAL_SECONDS}s",
            "window": "15s",
            "cooldown": f"{INTERVAL_SECONDS}s",
            **autoscaling,
        },
    }


def model(
    name: str, acceptance: float = HIGH_ACCEPTANCE, schedule: str = "fixed", **autoscaling: Any
) -> dict[str, Any]:
    """An 8B target with a 1B draft on one of the real node's H100s, its simulator starting at
    ``acceptance``."""
    return small_model(
        name, **autoscaled(schedule, **autoscaling), env=sim_env(acceptance_rate=acceptance)
    )


class Loop:
    """The chart's operator, Prometheus and the load around one namespace."""

    def __init__(
        self,
        release: Release,
        prometheus: prometheus_operator.OperatedPrometheus,
        workdir: Path,
    ) -> None:
        self.cluster = release.cluster
        self.namespace = release.namespace
        self.release = release
        self.prometheus = prometheus
        self.load = Load()
        self.applied = workdir / "applied.yaml"

    def apply(self, *models: Mapping[str, Any]) -> None:
        self.applied.write_text(yaml.safe_dump_all(models, sort_keys=False))
        self.cluster.kubectl("apply", "-n", self.namespace, "-f", str(self.applied))

    def status(self, name: str) -> dict[str, Any]:
        return self.release.status(name)

    def condition(self, name: str, type: str) -> str | None:
        found: str | None = self.release.condition(name, type).get("status")
        return found

    def config_map_limit(self, name: str) -> int:
        return int(self.release.get("configmap", f"{name}-gate")["data"]["limit"])

    def serve(
        self, name: str, clients: int, max_tokens: tuple[int, int] = (32, 96)
    ) -> dict[str, Any]:
        """Wait for the model's pod and put steady load through its Service; the pod."""
        pod = self.release.serving_pod(name)
        self.load.set(self.release.service_url(name), name, clients, max_tokens)
        return pod

    def wait(self, check: Callable[[], object], what: str, name: str) -> None:
        harness.wait_for(
            check,
            timeout=TIMEOUT,
            what=what,
            interval=1.0,
            describe=lambda: (
                json.dumps(_summary(self.status(name)), indent=1)
                + "\n"
                + self.release.operator_log(30)
            ),
        )

    def replays(self, name: str) -> None:
        """`specfleet review --replay` gives back every decision the operator recorded for
        the model, field for field (while status still holds them from the first one)."""
        found = review.parse_model(self.release.get("inferencemodel", name))
        recorded = review.decisions(found)
        assert recorded, f"{name} recorded no decision"
        if len(recorded) < DECISION_HISTORY_LIMIT:
            assert review.replay(recorded, found) == recorded

    def diff(self) -> str:
        """`kubectl diff` of the applied file against the cluster: empty when they match."""
        argv = [str(self.cluster.bin_dir / "kubectl"), "diff", "-n", self.namespace]
        result = subprocess.run(
            [*argv, "-f", str(self.applied)],
            env=self.cluster.env(),
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode in (0, 1), result.stderr
        return result.stdout

    def close(self) -> None:
        self.load.stop()
        self.release.uninstall()
        self.prometheus.close()


def _summary(status: Mapping[str, Any]) -> dict[str, Any]:
    """What a failure message needs: limit, conditions and the last decisions."""
    return {
        "batchLimit": status.get("batchLimit"),
        "conditions": {c["type"]: c["status"] for c in status.get("conditions", [])},
        "decisions": [
            f"{d['from']}->{d['to']} {d['rule']} applied={d['applied']} {d.get('message', '')}"
            for d in status.get("decisions", [])[-6:]
        ],
    }


@pytest.fixture
def loop(monitoring_crds: harness.Cluster, namespace: str, tmp_path: Path) -> Iterator[Loop]:
    release = Release(monitoring_crds, namespace)
    try:
        # The chart first: Prometheus starts with its monitors (see chart_values).
        release.install(*prometheus_operator.chart_values(namespace))
        prometheus = prometheus_operator.start(monitoring_crds, namespace, tmp_path)
    except BaseException:
        release.uninstall()
        raise
    handle = Loop(release, prometheus, tmp_path)
    try:
        yield handle
    finally:
        handle.close()


def history(loop: Loop, name: str) -> list[dict[str, Any]]:
    decisions: list[dict[str, Any]] = loop.status(name).get("decisions", [])
    return decisions


def test_falling_acceptance_lowers_the_limit_and_recommend_only_records(loop: Loop) -> None:
    loop.apply(model("applied"), model("recommended", mode="Recommend"))
    pods = {name: loop.serve(name, clients=8) for name in ("applied", "recommended")}
    applied = pods["applied"]

    # Found through the API server and scraped: the gate and vLLM, by model.
    for metric in ("specfleet_gate_batch_limit", "vllm:spec_decode_num_draft_tokens_total"):
        harness.wait_for(
            functools.partial(series, loop.prometheus, metric, loop.namespace, "applied"),
            timeout=TIMEOUT,
            what=f"Prometheus to scrape {metric} of the pod",
            describe=lambda: json.dumps(loop.prometheus.active_targets())[-3000:],
        )

    # High acceptance: the band doubles the base; the gate admits what the ConfigMap says,
    # read from its volume as the kubelet updates it.
    loop.wait(
        lambda: loop.status("applied").get("batchLimit") == 2 * INITIAL, "band-high", "applied"
    )
    loop.wait(lambda: gate_limit(applied) == 2 * INITIAL, "the gate at 32", "applied")
    # Recommend mode makes the same decision and records it, unapplied. (Checked now: status
    # keeps the last 32 decisions, which a slow machine's later steps can outlast.)
    loop.wait(
        lambda: any(
            d["rule"] == "band-high" and d["to"] > d["from"] and not d["applied"]
            for d in history(loop, "recommended")
        ),
        "a recommendation to raise the limit",
        "recommended",
    )

    for pod in pods.values():
        set_acceptance(pod, acceptanceRate=LOW_ACCEPTANCE)
    loop.wait(
        lambda: loop.status("applied").get("batchLimit") == INITIAL // 2,
        "the low band to halve the base",
        "applied",
    )
    assert loop.config_map_limit("applied") == INITIAL // 2
    loop.wait(lambda: gate_limit(applied) == INITIAL // 2, "the gate at 8", "applied")
    rules = [d["rule"] for d in history(loop, "applied") if d["to"] != d["from"]]
    assert rules[-1] == "band-low", rules
    loop.wait(
        lambda: (
            series(loop.prometheus, "specfleet_gate_batch_limit", loop.namespace, "applied")
            == INITIAL // 2
        ),
        "Prometheus to see the gate at 8",
        "applied",
    )
    # The limit moved without a restart.
    (same,) = loop.release.model_pods("applied")
    assert same["metadata"]["uid"] == applied["metadata"]["uid"]
    assert all(c["restartCount"] == 0 for c in same["status"]["containerStatuses"])

    # Recommend: the same kind of decisions, recorded, none applied, nothing changed.
    loop.wait(
        lambda: any(
            d["rule"] == "band-low" and d["to"] < d["from"] for d in history(loop, "recommended")
        ),
        "a recommendation to lower the limit",
        "recommended",
    )
    decisions = history(loop, "recommended")
    assert not any(d["applied"] for d in decisions)
    assert loop.status("recommended")["batchLimit"] == INITIAL
    assert loop.config_map_limit("recommended") == INITIAL
    assert gate_limit(pods["recommended"]) == INITIAL

    events = loop.release.events("applied")
    assert "BatchLimitChanged" in {e["reason"] for e in events}
    assert loop.load.statuses.keys() == {200}, loop.load.statuses
    # After all those decisions, the specs are exactly what was applied.
    assert loop.diff() == ""
    for name in pods:
        loop.replays(name)


def test_a_p99_breach_lowers_the_limit(loop: Loop) -> None:
    # Mid-band acceptance keeps the base; fewer clients than the limit, so nothing waits. The
    # target leaves room for a loaded machine's P99 (the simulator runs in real time).
    loop.apply(model("slow", acceptance=0.75, p99Target=f"{P99_TARGET_SECONDS}s"))
    pod = loop.serve("slow", clients=4)
    loop.wait(lambda: loop.condition("slow", "MetricsAvailable") == "True", "metrics", "slow")
    assert loop.status("slow")["batchLimit"] == INITIAL

    # Every step 40 times slower: the P99 passes the target with nothing queued.
    set_acceptance(pod, latencyFactor=40)
    loop.wait(lambda: loop.status("slow")["batchLimit"] < INITIAL, "a shrink", "slow")
    first = next(d for d in history(loop, "slow") if d["to"] != d["from"])
    assert first["rule"] == "p99-breach" and first["from"] == INITIAL, first
    assert first["observation"]["p99Seconds"] > P99_TARGET_SECONDS
    loop.wait(lambda: (gate_limit(pod) or INITIAL) < INITIAL, "the gate to shrink", "slow")
    loop.replays("slow")


def test_a_prometheus_outage_holds_the_limit_and_recovery_resumes(loop: Loop) -> None:
    loop.apply(model("steady"))
    pod = loop.serve("steady", clients=8)
    loop.wait(lambda: loop.status("steady").get("batchLimit") == 2 * INITIAL, "band-high", "steady")

    # Prometheus goes away while the prompts get harder: no decision can see it.
    loop.prometheus.stop()
    set_acceptance(pod, acceptanceRate=LOW_ACCEPTANCE)
    loop.wait(
        lambda: loop.condition("steady", "MetricsAvailable") == "False", "MetricsMissing", "steady"
    )
    held = len(history(loop, "steady"))
    loop.wait(lambda: len(history(loop, "steady")) >= held + 2, "two more decisions", "steady")
    assert loop.status("steady")["batchLimit"] == 2 * INITIAL
    last = history(loop, "steady")[-1]
    assert last["rule"] == "hold-missing-metrics" and last["to"] == last["from"]
    missing = loop.release.condition("steady", "MetricsAvailable")
    url = prometheus_operator.service_url(loop.namespace)
    assert url in missing["message"] and "did not answer" in missing["message"]

    # Back at the same address (with empty storage, as a pod on an emptyDir comes back):
    # metrics again, and the limit follows the acceptance.
    loop.prometheus.start()
    loop.wait(
        lambda: loop.condition("steady", "MetricsAvailable") == "True", "MetricsRead", "steady"
    )
    loop.wait(lambda: loop.status("steady")["batchLimit"] == INITIAL // 2, "band-low", "steady")
    loop.replays("steady")


def test_restart_mode_rolls_vllm_with_the_new_limit(loop: Loop) -> None:
    rolling = model("rolling")
    rolling["spec"]["batching"]["mode"] = "Restart"
    loop.apply(rolling)
    first = loop.serve("rolling", clients=4)
    assert _max_num_seqs(first) == INITIAL

    # The decision rewrites vLLM's own --max-num-seqs: the Deployment rolls, and the kubelet
    # starts a new pod whose vLLM runs at the new limit.
    loop.wait(lambda: loop.status("rolling").get("batchLimit") == 2 * INITIAL, "32", "rolling")

    def rolled() -> bool:
        pod = loop.release.serving_pod("rolling")
        return pod["metadata"]["uid"] != first["metadata"]["uid"] and _max_num_seqs(pod) == 32

    loop.wait(rolled, "a new pod at --max-num-seqs 32", "rolling")
    reasons = {e["reason"] for e in loop.release.events("rolling")}
    assert {"BatchLimitChanged", "RolloutStarted"} <= reasons


def _max_num_seqs(pod: Mapping[str, Any]) -> int:
    (vllm,) = [c for c in pod["spec"]["containers"] if c["name"] == "vllm"]
    args = [str(a) for a in vllm["args"]]
    return int(args[args.index("--max-num-seqs") + 1])


def test_a_measured_draft_acceptance_retunes_the_schedule_by_a_rollout(loop: Loop) -> None:
    # The planner assumes a draft acceptance of 0.8; the simulator reports 0.2 (0.51 a token
    # at K=5), at which drafting one token pays and more do not.
    loop.apply(model("retuned", acceptance=0.2, schedule="auto"))
    first = loop.serve("retuned", clients=4)
    prior = _schedule(first)
    assert prior[0][2] > 1

    def retuned() -> bool:
        change = (loop.status("retuned").get("lastDecision") or {}).get("schedule")
        return bool(change and change["applied"])

    loop.wait(retuned, "an applied schedule-retune decision", "retuned")
    status = loop.status("retuned")
    assert abs(status["scheduleAcceptance"] - 0.51) <= 0.05
    assert status["plan"]["scheduleAcceptance"] == status["scheduleAcceptance"]

    # vLLM reads its schedule at start: the Deployment rolls, and the new pod's vLLM drafts
    # the new schedule's K.
    def rolled() -> bool:
        pod = loop.release.serving_pod("retuned")
        return pod["metadata"]["uid"] != first["metadata"]["uid"] and _schedule(pod) != prior

    loop.wait(rolled, "a new pod with the retuned schedule", "retuned")
    assert [k for _, _, k in _schedule(loop.release.serving_pod("retuned"))] == [1]
    reasons = {e["reason"] for e in loop.release.events("retuned")}
    assert "SpeculationScheduleChanged" in reasons
    loop.replays("retuned")


def _schedule(pod: Mapping[str, Any]) -> list[list[int]]:
    (vllm,) = [c for c in pod["spec"]["containers"] if c["name"] == "vllm"]
    args = [str(a) for a in vllm["args"]]
    config = json.loads(args[args.index("--speculative-config") + 1])
    schedule: list[list[int]] = config["num_speculative_tokens_per_batch_size"]
    return schedule
