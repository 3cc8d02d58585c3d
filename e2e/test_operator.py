"""The operator on the local control plane: the 70B example rolls out onto H100 nodes and
turns Ready; spec changes roll; infeasible specs are refused; deletion collects the
children; a resync with nothing to do writes nothing; a killed operator converges."""

from __future__ import annotations

import json
from typing import Any

from e2e import harness
from e2e.operator_process import Operator
from tests.corpus import ROOT

EXAMPLE = ROOT / "examples" / "llama-70b-speculative.yaml"
H100 = "NVIDIA-H100-80GB-HBM3"
CHILD_KINDS = ("deployment", "service", "configmap", "poddisruptionbudget")
TIMEOUT = 90


def _get(op: Operator, *args: str) -> Any:
    return op.cluster.kubectl_json("get", "-n", op.namespace, *args)


def _patch(op: Operator, name: str, patch: str, kind: str = "im") -> None:
    op.cluster.kubectl("patch", "-n", op.namespace, kind, name, "--type=merge", "-p", patch)


def _condition(op: Operator, name: str, type: str) -> dict[str, Any] | None:
    status = _get(op, "im", name).get("status", {})
    return next((c for c in status.get("conditions", []) if c["type"] == type), None)


def _wait_ready(op: Operator, name: str, generation: int = 1) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        model: dict[str, Any] = _get(op, "im", name)
        status = model.get("status", {})
        conditions = {c["type"]: c for c in status.get("conditions", [])}
        ok = (
            status.get("observedGeneration") == generation
            and conditions.get("Ready", {}).get("status") == "True"
            and conditions["Ready"].get("observedGeneration") == generation
        )
        return model if ok else None

    return harness.wait_for(
        ready,
        timeout=TIMEOUT,
        what=f"InferenceModel {name} Ready",
        describe=lambda: json.dumps(_get(op, "im", name).get("status")),
    )


def _children(op: Operator, name: str) -> dict[str, list[dict[str, Any]]]:
    selector = f"specfleet.dev/inferencemodel={name}"
    return {kind: _get(op, kind, "-l", selector)["items"] for kind in CHILD_KINDS}


def test_the_70b_example_runs_on_h100s_with_its_plan(operator: Operator) -> None:
    operator.cluster.kubectl("apply", "-n", operator.namespace, "-f", str(EXAMPLE))
    model = _wait_ready(operator, "llama-70b")
    plan = model["status"]["plan"]
    assert plan["tensorParallelSize"] == 4 and plan["quantization"] == "fp8"
    assert model["status"]["readyReplicas"] == 2
    pods = _get(operator, "pods", "-l", "specfleet.dev/inferencemodel=llama-70b")["items"]
    assert len(pods) == 2
    for pod in pods:
        node = operator.cluster.kubectl_json("get", "node", pod["spec"]["nodeName"])
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == H100
        (server,) = [c for c in pod["spec"]["containers"] if c["name"] == "vllm"]
        assert server["resources"]["limits"]["nvidia.com/gpu"] == "4"
        assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
    table = operator.cluster.kubectl("get", "im", "-n", operator.namespace, "llama-70b")
    assert table.split("\n")[1].split()[2:4] == ["4", "2"]  # GPUS, REPLICAS
    events = _get(operator, "events", "--field-selector", "involvedObject.name=llama-70b")
    assert "RolloutStarted" in {e["reason"] for e in events["items"]}


def test_a_spec_change_rolls_the_deployment(operator: Operator) -> None:
    operator.cluster.kubectl("apply", "-n", operator.namespace, "-f", str(EXAMPLE))
    _wait_ready(operator, "llama-70b")
    before = _get(operator, "deployment", "llama-70b")
    _patch(operator, "llama-70b", '{"spec": {"draft": {"numSpeculativeTokens": 3}}}')
    _wait_ready(operator, "llama-70b", generation=2)
    after = _get(operator, "deployment", "llama-70b")
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    (server,) = [c for c in after["spec"]["template"]["spec"]["containers"] if c["name"] == "vllm"]
    speculation = json.loads(server["args"][server["args"].index("--speculative-config") + 1])
    assert speculation["num_speculative_tokens"] == 3


def test_an_infeasible_spec_gets_a_condition_and_no_deployment(operator: Operator) -> None:
    manifest = (
        "apiVersion: specfleet.dev/v1alpha1\nkind: InferenceModel\nmetadata: {name: too-big}\n"
        "spec:\n  model: {name: meta-llama/Llama-3.1-405B-Instruct}\n  quantization: none\n"
        "  gpu: {count: 4}\n"
    )
    operator.cluster.kubectl("apply", "-n", operator.namespace, "-f", "-", input=manifest)
    degraded = harness.wait_for(
        lambda: _condition(operator, "too-big", "Degraded"),
        timeout=TIMEOUT,
        what="the Degraded condition",
    )
    assert (degraded["status"], degraded["reason"]) == ("True", "Infeasible")
    assert "needs" in degraded["message"] and "4 x H100-80GB" in degraded["message"]
    events = _get(operator, "events", "--field-selector", "involvedObject.name=too-big")["items"]
    assert any(e["reason"] == "Infeasible" and e["type"] == "Warning" for e in events)
    assert all(items == [] for items in _children(operator, "too-big").values())


def _policy(name: str, pattern: str) -> str:
    return (
        f"apiVersion: specfleet.dev/v1alpha1\nkind: RoutingPolicy\nmetadata: {{name: {name}}}\n"
        "spec:\n  tiers: [{name: all, model: llama-8b}]\n"
        f"  overrides: [{{match: {{pattern: '{pattern}'}}, model: llama-8b}}]\n"
    )


def _invalid_spec_event(operator: Operator, name: str) -> dict[str, Any]:
    def refused() -> dict[str, Any] | None:
        events = _get(operator, "events", "--field-selector", f"involvedObject.name={name}")
        return next((e for e in events["items"] if e["reason"] == "InvalidSpec"), None)

    event: dict[str, Any] = harness.wait_for(refused, timeout=TIMEOUT, what="an InvalidSpec Event")
    assert event["type"] == "Warning"
    return event


def _router_children(operator: Operator, name: str) -> list[dict[str, Any]]:
    selector = f"specfleet.dev/routingpolicy={name}"
    items: list[dict[str, Any]] = _get(operator, "deployments,configmaps", "-l", selector)["items"]
    return items


def test_a_policy_only_the_operator_can_refuse_gets_a_warning_and_keeps_its_last_router(
    operator: Operator,
) -> None:
    # The API server cannot check Python's regular expressions, so it takes both policies.
    ns = operator.namespace
    operator.cluster.kubectl("apply", "-n", ns, "-f", "-", input=_policy("typo", "SELECT ("))
    event = _invalid_spec_event(operator, "typo")
    assert (
        "spec.overrides[0].match.pattern: 'SELECT (' is not a regular expression"
        in (event["message"])
    )
    assert _router_children(operator, "typo") == []

    # A policy that served, changed to a broken pattern, keeps its last good configuration.
    operator.cluster.kubectl("apply", "-n", ns, "-f", "-", input=_policy("fine", r"SELECT \("))
    harness.wait_for(
        lambda: len(_router_children(operator, "fine")) == 2, timeout=TIMEOUT, what="the router"
    )
    served = operator.cluster.kubectl("get", "configmap", "fine-router", "-n", ns, "-o", "yaml")
    operator.cluster.kubectl("apply", "-n", ns, "-f", "-", input=_policy("fine", "SELECT ("))
    _invalid_spec_event(operator, "fine")
    assert operator.cluster.kubectl("get", "configmap", "fine-router", "-n", ns, "-o", "yaml") == (
        served
    )


def test_deleting_the_model_removes_every_child_even_without_the_operator(
    operator: Operator,
) -> None:
    operator.cluster.kubectl("apply", "-n", operator.namespace, "-f", str(EXAMPLE))
    _wait_ready(operator, "llama-70b")
    assert all(len(items) == 1 for items in _children(operator, "llama-70b").values())
    assert not _get(operator, "im", "llama-70b")["metadata"].get("finalizers")
    # No finalizer: an uninstalled or crashed operator never blocks deleting a model.
    operator.stop()
    operator.cluster.kubectl("delete", "-n", operator.namespace, "im", "llama-70b", timeout=30)
    harness.wait_for(
        lambda: all(items == [] for items in _children(operator, "llama-70b").values()),
        timeout=TIMEOUT,
        what="the garbage collector to remove the children",
        describe=lambda: json.dumps(
            {k: len(v) for k, v in _children(operator, "llama-70b").items()}
        ),
    )


def _versions(op: Operator, name: str) -> dict[str, str]:
    versions = {"im": _get(op, "im", name)["metadata"]["resourceVersion"]}
    for kind, items in _children(op, name).items():
        versions[kind] = items[0]["metadata"]["resourceVersion"]
    return versions


def test_a_resync_with_nothing_to_do_writes_nothing(operator: Operator) -> None:
    operator.cluster.kubectl("apply", "-n", operator.namespace, "-f", str(EXAMPLE))
    _wait_ready(operator, "llama-70b")
    # Let status settle (Ready arrives one resync after the Deployment is ready).
    harness.wait_for(
        lambda: (
            operator.metric("specfleet_operator_reconcile_seconds_count", outcome="unchanged") >= 1
        ),
        timeout=TIMEOUT,
        what="a reconcile that changed nothing",
    )
    versions = _versions(operator, "llama-70b")
    writes = operator.metric("specfleet_operator_api_writes_total")
    passes = operator.metric("specfleet_operator_reconcile_seconds_count", outcome="unchanged")
    harness.wait_for(
        lambda: (
            operator.metric("specfleet_operator_reconcile_seconds_count", outcome="unchanged")
            >= passes + 3
        ),
        timeout=TIMEOUT,
        what="three more resyncs",
    )
    assert operator.metric("specfleet_operator_api_writes_total") == writes
    assert _versions(operator, "llama-70b") == versions


def test_an_outside_edit_to_an_owned_field_is_reverted_and_others_are_kept(
    operator: Operator,
) -> None:
    operator.cluster.kubectl("apply", "-n", operator.namespace, "-f", str(EXAMPLE))
    _wait_ready(operator, "llama-70b")
    edit = '{"metadata": {"annotations": {"team": "ml"}}, "data": {"limit": "999"}}'
    _patch(operator, "llama-70b-gate", edit, kind="configmap")
    harness.wait_for(
        lambda: _get(operator, "configmap", "llama-70b-gate")["data"]["limit"] == "64",
        timeout=TIMEOUT,
        what="the operator to put the batch limit back",
    )
    kept = _get(operator, "configmap", "llama-70b-gate")["metadata"]["annotations"]
    assert kept["team"] == "ml"


def test_an_operator_killed_mid_rollout_converges_without_duplicates(operator: Operator) -> None:
    operator.cluster.kubectl("apply", "-n", operator.namespace, "-f", str(EXAMPLE))
    harness.wait_for(
        lambda: _children(operator, "llama-70b")["deployment"],
        timeout=TIMEOUT,
        what="the Deployment",
    )
    operator.stop(kill=True)
    _patch(operator, "llama-70b", '{"spec": {"replicas": 3}}')
    operator.start()
    model = _wait_ready(operator, "llama-70b", generation=2)
    assert model["status"]["readyReplicas"] == 3
    children = _children(operator, "llama-70b")
    assert {kind: len(items) for kind, items in children.items()} == dict.fromkeys(CHILD_KINDS, 1)
    assert children["deployment"][0]["spec"]["replicas"] == 3


def test_the_applied_specs_stay_exactly_as_applied(operator: Operator) -> None:
    """GitOps owns spec: after the operator reconciled every example and resynced a few
    times, diffing the manifests against the cluster shows nothing (Argo CD would show the
    application in sync). Its children's stability is the resync test above; its reverting
    of outside edits, the one after it."""
    examples = str(EXAMPLE.parent)
    operator.cluster.kubectl("apply", "-n", operator.namespace, "-f", examples)
    for name in ("llama-3b", "llama-8b", "llama-70b"):
        _wait_ready(operator, name)
    passes = operator.metric("specfleet_operator_reconcile_seconds_count")
    harness.wait_for(
        lambda: operator.metric("specfleet_operator_reconcile_seconds_count") >= passes + 6,
        timeout=TIMEOUT,
        what="two more resyncs of the three models",
    )
    diff = harness.run(
        [operator.cluster.bin_dir / "kubectl", f"--kubeconfig={operator.cluster.kubeconfig}",
         "diff", "-n", operator.namespace, "-f", examples],
        env=operator.cluster.env(),
        check=False,
    )  # fmt: skip
    assert (diff.returncode, diff.stdout) == (0, ""), diff.stdout + diff.stderr
