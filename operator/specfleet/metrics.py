"""The operator's own Prometheus metrics, served by `specfleet run --metrics-port`.

Module-level collectors in prometheus-client's default registry; the modules that act
increment them (`kube` counts API writes, `engine` times passes).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

API_WRITES = Counter(
    "specfleet_operator_api_writes_total",
    "Writes the operator sent to the Kubernetes API, by kind of object and HTTP method.",
    ["kind", "method"],
)
RECONCILE_SECONDS = Histogram(
    "specfleet_operator_reconcile_seconds",
    "Time to reconcile one resource, by kind and outcome.",
    ["kind", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DECISIONS = Counter(
    "specfleet_operator_autoscaling_decisions_total",
    "Autoscaling decisions, by the rule that fired and whether they were applied.",
    ["rule", "applied"],
)
LIMIT_CHANGES = Counter(
    "specfleet_operator_batch_limit_changes_total",
    "Autoscaling decisions that changed a model's batch limit (applied), or would have "
    "(recommended only), by model.",
    ["namespace", "inferencemodel", "applied"],
)
