"""The chart's monitoring objects as the real Prometheus Operator reads them: the operator
(e2e/prometheus_operator.py) turns the release's PodMonitors, ServiceMonitor and PrometheusRule
into the configuration of a Prometheus it runs as a pod on the real node, which finds a model's
pod through the API server and scrapes its gate and vLLM with the labels the PodMonitors set,
scrapes the chart's operator through the ServiceMonitor, and evaluates the chart's alerts; the
chart's operator, a pod too, reads it at its Service's address as its autoscaler would.

What e2e/test_chart_monitoring.py cannot show (the API server accepting the objects is not
Prometheus understanding them): that the job names the operator gives the monitors are those
the chart's alerts read, and that every alert's PromQL evaluates.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e import harness, prometheus_operator
from e2e.release import Release, small_model

MODEL = "watched"
OPERATOR_READ = """
import json, sys
from specfleet.prometheus import Source
observation, missing = Source(sys.argv[1]).observe(sys.argv[2], sys.argv[3], 10)
print(json.dumps({"scraped": observation.time is not None, "missing": missing}))
"""
"""What the operator's autoscaler reads of a model (argv: URL, namespace, name), as JSON."""


@pytest.fixture
def prometheus(
    monitoring_crds: harness.Cluster, namespace: str, tmp_path: Path, release: Release
) -> Iterator[prometheus_operator.OperatedPrometheus]:
    """Started after the chart: it starts with the chart's monitors and rules."""
    with prometheus_operator.start(monitoring_crds, namespace, tmp_path) as handle:
        yield handle


@pytest.fixture
def release(monitoring_crds: harness.Cluster, namespace: str) -> Iterator[Release]:
    handle = Release(monitoring_crds, namespace)
    try:
        handle.install(
            *prometheus_operator.chart_values(namespace),
            "--set=monitoring.serviceMonitor.enabled=true",
            "--set=monitoring.serviceMonitor.interval=2s",
            "--set=monitoring.prometheusRule.enabled=true",
        )
        yield handle
    finally:
        handle.uninstall()


def wait_series(
    prometheus: prometheus_operator.OperatedPrometheus, promql: str, what: str
) -> dict[str, Any]:
    """The one series ``promql`` selects, once Prometheus has it."""

    def one() -> dict[str, Any] | None:
        found = prometheus.query(promql)
        return found[0] if len(found) == 1 else None

    series: dict[str, Any] = harness.wait_for(
        one,
        timeout=prometheus_operator.TIMEOUT,
        what=what,
        describe=lambda: f"{prometheus.active_targets()}\n{prometheus.describe()}",
    )
    return series


def test_the_operator_configures_prometheus_from_the_chart(
    prometheus: prometheus_operator.OperatedPrometheus, release: Release, namespace: str
) -> None:
    draft = {"model": {"name": "meta-llama/Llama-3.2-1B-Instruct"}}
    release.apply(small_model(MODEL, draft=draft))
    pod = release.serving_pod(MODEL)["metadata"]["name"]
    monitors = {m["metadata"]["name"] for m in release.get("podmonitors")["items"]}
    fullname = release.release  # the release's name holds the chart's, so it is used as is

    for metric, monitor in (
        ("specfleet_gate_batch_limit", f"{fullname}-gate"),
        ("vllm:spec_decode_num_draft_tokens_total", f"{fullname}-vllm"),
    ):
        assert monitor in monitors, monitors
        found = wait_series(
            prometheus,
            f'{metric}{{namespace="{namespace}",inferencemodel="{MODEL}"}}',
            f"{metric} of {MODEL} in the Prometheus the operator runs",
        )
        labels = found["metric"]
        # The job is what the chart's SpecfleetMetricsMissing alert matches.
        assert (labels["pod"], labels["job"]) == (pod, f"{namespace}/{monitor}"), labels

    # The chart's operator, in its pod, reads the model from this Prometheus with its own
    # client at the URL its settings name (the autoscaler's read, without waiting for one).
    read = json.loads(
        release.cluster.kubectl(
            "exec", "-n", namespace, release.operator_pod()["metadata"]["name"], "--",
            "python", "-c", OPERATOR_READ, prometheus.url, namespace, MODEL,
        )
    )  # fmt: skip
    assert read["scraped"] and "did not answer" not in read["missing"], read

    wait_series(
        prometheus,
        f'up{{job="{fullname}-metrics",namespace="{namespace}"}} == 1',
        "the chart's operator scraped through its ServiceMonitor",
    )

    # The PrometheusRule: loaded, and every alert's expression evaluated without an error.
    def evaluated() -> list[dict[str, Any]] | None:
        groups = [g for g in prometheus.rule_groups() if g["name"] == "specfleet"]
        rules: list[dict[str, Any]] = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r["health"] == "ok" for r in rules) else None

    rules = harness.wait_for(
        evaluated,
        timeout=prometheus_operator.TIMEOUT,
        what="the chart's rules loaded and evaluated",
        describe=lambda: str(prometheus.rule_groups()),
    )
    assert {r["name"] for r in rules} == {
        "SpecfleetSpeculativeAcceptanceLow",
        "SpecfleetP99OverTarget",
        "SpecfleetMetricsMissing",
        "SpecfleetOperatorDown",
    }

    # SpecfleetMetricsMissing's selector (its expression without `== 0`) finds the model's gate
    # and vLLM by the job names the operator gave the PodMonitors.
    missing = next(r for r in rules if r["name"] == "SpecfleetMetricsMissing")
    selector = missing["query"].removesuffix(" == 0")
    assert selector != missing["query"], missing["query"]
    jobs = {(s["metric"]["job"], s["metric"]["pod"]) for s in prometheus.query(selector)}
    assert jobs == {(f"{namespace}/{fullname}-{m}", pod) for m in ("gate", "vllm")}, jobs

    # Both alerts that read `up` see healthy targets (at the next evaluation after the scrape).
    def up_alerts() -> dict[str, str]:
        return {r["name"]: r["state"] for r in evaluated() or [] if "up{" in r["query"]}

    harness.wait_for(
        lambda: (
            up_alerts()
            == {"SpecfleetMetricsMissing": "inactive", "SpecfleetOperatorDown": "inactive"}
        ),
        timeout=prometheus_operator.TIMEOUT,
        what="SpecfleetMetricsMissing and SpecfleetOperatorDown inactive",
        describe=lambda: str(up_alerts()),
    )
