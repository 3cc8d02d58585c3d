"""The closed loop, end to end: the operator on the local control plane reads a real Prometheus
that scrapes simulators behind real gates (e2e/fleet.py runs each model Deployment locally and
projects the gate's ConfigMap into the gate's limit file), decides, writes the limit, and the
gates admit the new limit.

- Acceptance falling from 0.9 to 0.5 lowers the limit within a few intervals, and the gate in
  front of the simulator enforces it; Recommend mode records the same decisions but changes
  neither the ConfigMap nor the limit. Afterwards the applied files still match the cluster
  (`kubectl diff`): the operator never writes a spec.
- A P99 breach with nothing waiting lowers the limit.
- With Prometheus gone the limit holds and MetricsAvailable turns False; when it is back,
  decisions resume.

Autoscaling runs with short intervals and windows (seconds, not minutes) so each scenario
takes about a minute; the policy's rules are the same at any time scale.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from e2e import harness
from e2e.fleet import Fleet
from e2e.operator_process import Operator
from e2e.traffic import Load

INTERVAL_SECONDS = 3
TIMEOUT = 120.0
"""A generous bound for what should take a few intervals, on a busy 2-core machine."""
INITIAL = 16
HIGH_ACCEPTANCE = 0.9
LOW_ACCEPTANCE = 0.5


def model(name: str, **autoscaling: Any) -> dict[str, Any]:
    """An 8B target with a 1B draft on one H100: a fast simulator."""
    return {
        "apiVersion": "specfleet.dev/v1alpha1",
        "kind": "InferenceModel",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
            "draft": {"model": {"name": "meta-llama/Llama-3.2-1B-Instruct"}},
            "gpu": {"product": "H100-80GB", "count": 1},
            "batching": {"min": 2, "max": 64, "initial": INITIAL},
            "autoscaling": {
                "interval": f"{INTERVAL_SECONDS}s",
                "window": "15s",
                "cooldown": f"{INTERVAL_SECONDS}s",
                **autoscaling,
            },
        },
    }


class Loop:
    """The operator, the local fleet and Prometheus around one namespace."""

    def __init__(
        self, cluster: harness.Cluster, namespace: str, workdir: Path, acceptance: float
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.workdir = workdir
        self.acceptance = acceptance
        self.prometheus_port = harness.free_port()
        self.prometheus = self._start_prometheus()
        self.fleet = Fleet(
            cluster,
            namespace,
            self.prometheus,
            workdir / "fleet",
            sim_flags=lambda _name: ("--acceptance-rate", str(self.acceptance)),
        )
        self.operator = Operator(
            cluster,
            namespace,
            workdir / "operator.log",
            env={"SPECFLEET_PROMETHEUS_URL": self.prometheus.url},
        )
        self.load = Load()
        self.applied = workdir / "applied.yaml"

    def _start_prometheus(self) -> harness.Prometheus:
        """Prometheus on the same port and data each time, as a restarted server."""
        return harness.start_prometheus(
            data_dir=self.workdir / "prometheus", port=self.prometheus_port
        )

    def restart_prometheus(self) -> None:
        """Prometheus back after an outage, scraping what the fleet runs."""
        self.prometheus = self._start_prometheus()
        self.fleet.prometheus = self.prometheus
        for scrape_config in self.fleet.scrape_configs():
            self.prometheus.add_scrape_config(scrape_config)

    def apply(self, *models: Mapping[str, Any]) -> None:
        self.applied.write_text(yaml.safe_dump_all(models, sort_keys=False))
        self.cluster.kubectl("apply", "-n", self.namespace, "-f", str(self.applied))

    def get(self, *args: str) -> Any:
        return self.cluster.kubectl_json("get", "-n", self.namespace, *args)

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.get("im", name).get("status", {})
        return status

    def condition(self, name: str, type: str) -> str | None:
        found = [c for c in self.status(name).get("conditions", []) if c["type"] == type]
        return found[0]["status"] if found else None

    def config_map_limit(self, name: str) -> int:
        return int(self.get("configmap", f"{name}-gate")["data"]["limit"])

    def gate_limit(self, name: str) -> float:
        """What the gate in front of the simulator admits now, from its own /metrics."""
        url = f"{self.fleet.urls()[name]['gate']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            if family.name == "specfleet_gate_batch_limit":
                return float(family.samples[0].value)
        raise AssertionError(f"no specfleet_gate_batch_limit at {url}")

    def serve(self, name: str, clients: int, max_tokens: tuple[int, int] = (32, 96)) -> None:
        """Wait for the model's local pod and put steady load through its gate."""
        harness.wait_for(
            lambda: name in self.fleet.urls(),
            timeout=TIMEOUT,
            what=f"the local pod of {name}",
            describe=lambda: json.dumps(self.fleet.errors),
        )
        self.load.set(self.fleet.urls()[name]["gate"], name, clients, max_tokens)

    def wait(self, check: Callable[[], object], what: str, name: str) -> None:
        harness.wait_for(
            check,
            timeout=TIMEOUT,
            what=what,
            interval=1.0,
            describe=lambda: json.dumps(_summary(self.status(name)), indent=1),
        )

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
        self.operator.stop()
        self.fleet.stop()
        self.prometheus.stop()


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
def loop(crds: harness.Cluster, namespace: str, tmp_path: Path) -> Iterator[Loop]:
    handle = Loop(crds, namespace, tmp_path, HIGH_ACCEPTANCE)
    handle.operator.start()
    handle.fleet.start()
    yield handle
    handle.close()


def history(loop: Loop, name: str) -> list[dict[str, Any]]:
    decisions: list[dict[str, Any]] = loop.status(name).get("decisions", [])
    return decisions


def test_falling_acceptance_lowers_the_limit_and_recommend_only_records(loop: Loop) -> None:
    applied, recommended = model("applied"), model("recommended", mode="Recommend")
    loop.apply(applied, recommended)
    for name in ("applied", "recommended"):
        loop.serve(name, clients=8)

    # High acceptance: the band doubles the base; the gate admits what the ConfigMap says.
    loop.wait(
        lambda: loop.status("applied").get("batchLimit") == 2 * INITIAL, "band-high", "applied"
    )
    loop.wait(lambda: loop.gate_limit("applied") == 2 * INITIAL, "the gate at 32", "applied")

    loop.fleet.set_behaviour("applied", acceptanceRate=LOW_ACCEPTANCE)
    loop.fleet.set_behaviour("recommended", acceptanceRate=LOW_ACCEPTANCE)
    loop.wait(
        lambda: loop.status("applied").get("batchLimit") == INITIAL // 2,
        "the low band to halve the base",
        "applied",
    )
    assert loop.config_map_limit("applied") == INITIAL // 2
    loop.wait(lambda: loop.gate_limit("applied") == INITIAL // 2, "the gate at 8", "applied")
    rules = [d["rule"] for d in history(loop, "applied") if d["to"] != d["from"]]
    assert rules[-1] == "band-low", rules

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
    assert any(d["rule"] == "band-high" and d["to"] > d["from"] for d in decisions)
    assert loop.status("recommended")["batchLimit"] == INITIAL
    assert loop.config_map_limit("recommended") == INITIAL
    assert loop.gate_limit("recommended") == INITIAL

    events = loop.get("events", "--field-selector", "involvedObject.name=applied")["items"]
    assert "BatchLimitChanged" in {e["reason"] for e in events}
    assert loop.load.statuses.keys() == {200}, loop.load.statuses
    # After all those decisions, the specs are exactly what was applied.
    assert loop.diff() == ""


def test_a_p99_breach_lowers_the_limit(loop: Loop) -> None:
    # Mid-band acceptance keeps the base; fewer clients than the limit, so nothing waits.
    loop.acceptance = 0.75
    loop.apply(model("slow", p99Target="2s"))
    loop.serve("slow", clients=4)
    loop.wait(lambda: loop.condition("slow", "MetricsAvailable") == "True", "metrics", "slow")
    assert loop.status("slow")["batchLimit"] == INITIAL

    # Every step 40 times slower: the P99 passes the target with nothing queued.
    loop.fleet.set_behaviour("slow", latencyFactor=40)
    loop.wait(lambda: loop.status("slow")["batchLimit"] < INITIAL, "a shrink", "slow")
    first = next(d for d in history(loop, "slow") if d["to"] != d["from"])
    assert first["rule"] == "p99-breach" and first["from"] == INITIAL, first
    assert first["observation"]["p99Seconds"] > 2.0
    loop.wait(lambda: loop.gate_limit("slow") < INITIAL, "the gate to shrink", "slow")


def test_a_prometheus_outage_holds_the_limit_and_recovery_resumes(loop: Loop) -> None:
    loop.apply(model("steady"))
    loop.serve("steady", clients=8)
    loop.wait(lambda: loop.status("steady").get("batchLimit") == 2 * INITIAL, "band-high", "steady")

    # Prometheus goes away while the prompts get harder: no decision can see it.
    loop.prometheus.stop()
    loop.fleet.set_behaviour("steady", acceptanceRate=LOW_ACCEPTANCE)
    loop.wait(
        lambda: loop.condition("steady", "MetricsAvailable") == "False", "MetricsMissing", "steady"
    )
    held = len(history(loop, "steady"))
    loop.wait(lambda: len(history(loop, "steady")) >= held + 2, "two more decisions", "steady")
    assert loop.status("steady")["batchLimit"] == 2 * INITIAL
    last = history(loop, "steady")[-1]
    assert last["rule"] == "hold-missing-metrics" and last["to"] == last["from"]
    (missing,) = [c for c in loop.status("steady")["conditions"] if c["type"] == "MetricsAvailable"]
    assert loop.prometheus.url in missing["message"] and "did not answer" in missing["message"]

    # Back (same address, same data): metrics again, and the limit follows the acceptance.
    loop.restart_prometheus()
    loop.wait(
        lambda: loop.condition("steady", "MetricsAvailable") == "True", "MetricsRead", "steady"
    )
    loop.wait(lambda: loop.status("steady")["batchLimit"] == INITIAL // 2, "band-low", "steady")


def test_restart_mode_rolls_vllm_with_the_new_limit(loop: Loop) -> None:
    rolling = model("rolling")
    rolling["spec"]["batching"]["mode"] = "Restart"
    loop.apply(rolling)
    loop.serve("rolling", clients=4)
    first = loop.fleet.pods["rolling"][0]
    assert _max_num_seqs(first.sim.process.args) == INITIAL

    # The decision rewrites vLLM's own --max-num-seqs: the Deployment rolls, and the local
    # kubelet starts a new pod whose simulator runs at the new limit.
    loop.wait(lambda: loop.status("rolling").get("batchLimit") == 2 * INITIAL, "32", "rolling")
    loop.wait(
        lambda: (
            _max_num_seqs(loop.fleet.pods.get("rolling", [first])[0].sim.process.args)
            == 2 * INITIAL
        ),
        "a new pod at --max-num-seqs 32",
        "rolling",
    )
    events = loop.get("events", "--field-selector", "involvedObject.name=rolling")["items"]
    assert {"BatchLimitChanged", "RolloutStarted"} <= {e["reason"] for e in events}


def _max_num_seqs(argv: Any) -> int:
    args = [str(a) for a in argv]
    return int(args[args.index("--max-num-seqs") + 1])
