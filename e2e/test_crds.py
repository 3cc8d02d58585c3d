"""The generated CRDs on a real API server: they install, `kubectl get` shows their columns,
every example is accepted, and every manifest of the invalid corpus is refused with a message
that names the field (the same corpus tests/ runs through the pydantic models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2e import harness
from specfleet import api
from tests import corpus


def _refusal(cluster: harness.Cluster, namespace: str, text: str) -> str:
    with pytest.raises(harness.CommandError) as refused:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=text)
    return refused.value.stderr


def test_crds_are_established_with_names_and_categories(crds: harness.Cluster) -> None:
    for name in ("inferencemodels.specfleet.dev", "routingpolicies.specfleet.dev"):
        crd = crds.kubectl_json("get", "crd", name)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == "True"
        assert conditions["NamesAccepted"] == "True"
        assert conditions.get("NonStructuralSchema") is None
    resources = crds.kubectl("api-resources", "--api-group=specfleet.dev", "-o", "wide")
    assert "inferencemodels" in resources and " im " in resources
    assert "routingpolicies" in resources and " rp " in resources
    assert resources.count("specfleet") >= 4  # group and category on both rows


def test_examples_are_accepted_and_listed_with_their_columns(
    crds: harness.Cluster, namespace: str
) -> None:
    for path in corpus.EXAMPLES:
        crds.kubectl("apply", "-n", namespace, "-f", str(path))
    models = crds.kubectl("get", "im", "-n", namespace)
    header = models.splitlines()[0].split()
    assert header == [
        "NAME",
        "MODEL",
        "GPUS",
        "REPLICAS",
        "LIMIT",
        "ACCEPTANCE",
        "P99",
        "LATENCY",
        "READY",
        "AGE",
    ]
    assert "meta-llama/Llama-3.1-70B-Instruct" in models
    policies = crds.kubectl("get", "rp", "-n", namespace)
    assert policies.splitlines()[0].split() == ["NAME", "TIERS", "BACKENDS", "READY", "AGE"]
    assert "assistant" in policies
    both = crds.kubectl("get", "specfleet", "-n", namespace, "-o", "name")
    assert set(both.split()) == {
        "inferencemodel.specfleet.dev/llama-3b",
        "inferencemodel.specfleet.dev/llama-8b",
        "inferencemodel.specfleet.dev/llama-70b",
        "routingpolicy.specfleet.dev/assistant",
    }


@pytest.mark.parametrize("path", corpus.EXAMPLES, ids=lambda p: Path(p).name)
def test_server_defaults_mean_what_the_models_mean(
    crds: harness.Cluster, namespace: str, path: Path
) -> None:
    crds.kubectl("apply", "-n", namespace, "-f", str(path))
    for local in api.load(path.read_text()):
        stored = json.loads(
            crds.kubectl("get", "-n", namespace, local.kind, local.metadata.name, "-o", "json")
        )
        # The API server filled in defaults; read back, the resource means the same thing.
        assert api.parse(stored).spec == local.spec


def test_server_fills_in_the_documented_defaults(crds: harness.Cluster, namespace: str) -> None:
    minimal = (
        "apiVersion: specfleet.dev/v1alpha1\nkind: InferenceModel\nmetadata: {name: minimal}\n"
        "spec:\n  model: {name: meta-llama/Llama-3.1-8B-Instruct}\n"
    )
    crds.kubectl("apply", "-n", namespace, "-f", "-", input=minimal)
    spec = crds.kubectl_json("get", "-n", namespace, "im", "minimal")["spec"]
    assert spec["gpu"] == {"product": "H100-80GB", "count": "auto"}
    assert spec["batching"] == {"min": 1, "max": 256, "averageTokens": 1024, "mode": "Live"}
    assert spec["autoscaling"]["acceptanceBands"] == {"high": 0.85, "low": 0.65}
    assert spec["quantization"] == "auto"


def test_scale_subresource_moves_spec_replicas(crds: harness.Cluster, namespace: str) -> None:
    crds.kubectl("apply", "-n", namespace, "-f", str(corpus.ROOT / "examples" / "llama-8b.yaml"))
    crds.kubectl("scale", "-n", namespace, "im", "llama-8b", "--replicas=3")
    assert crds.kubectl_json("get", "-n", namespace, "im", "llama-8b")["spec"]["replicas"] == 3


@pytest.mark.parametrize("case", corpus.invalid_manifests(), ids=lambda c: c.id)
def test_invalid_manifest_is_refused_naming_the_field(
    crds: harness.Cluster, namespace: str, case: corpus.Invalid
) -> None:
    message = _refusal(crds, namespace, case.text)
    for expected in case.expects:
        assert expected in message
    # A CEL rule that fails to evaluate is a bug in the rule, even when the object is refused.
    assert "evaluating rule" not in message
